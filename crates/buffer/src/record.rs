//! The on-disk record: one group commit of one priority class, gzip'd, behind a checksummed header.
//!
//! This file is the only place that knows the byte layout (documented in the module docs of
//! [`crate`]); everything else goes through [`encode`] and [`parse_header`]/[`crc_ok`].

use ioc_model::Priority;

/// Sync marker at the start of every record; recovery resynchronises on it after corruption.
pub(crate) const MAGIC: [u8; 4] = *b"IOCR";
/// Fixed header size in bytes.
pub(crate) const HEADER_LEN: usize = 32;
/// Record format version written by this code.
pub(crate) const VERSION: u8 = 1;
/// Flag bit: the record belongs to the urgent class.
pub(crate) const FLAG_URGENT: u8 = 0x01;
/// Flag bit: the payload is a gzip member (always set by this version).
pub(crate) const FLAG_GZIP: u8 = 0x02;
/// Largest payload a header may announce; anything larger is treated as corruption, which also
/// bounds how much memory a corrupt length field can make recovery read.
pub(crate) const MAX_PAYLOAD: u32 = 8 << 20;

/// The decoded, validated header of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    pub payload_len: u32,
    pub lines: u32,
    /// Wall-clock time of the group commit, milliseconds since the Unix epoch.
    pub append_ms: u64,
    /// Size of the uncompressed line protocol.
    pub raw_len: u32,
    pub flags: u8,
}

impl RecordMeta {
    /// Total bytes the record occupies on disk.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at + 4)?;
    let arr: [u8; 4] = slice.try_into().ok()?;
    Some(u32::from_le_bytes(arr))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at + 8)?;
    let arr: [u8; 8] = slice.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

/// Checks magic, version, flags, reserved bytes and the length bound of a header. The CRC is
/// checked separately by [`crc_ok`] once the payload is at hand.
pub(crate) fn parse_header(header: &[u8]) -> Option<RecordMeta> {
    if header.get(0..4)? != MAGIC {
        return None;
    }
    let payload_len = u32_at(header, 8)?;
    let lines = u32_at(header, 12)?;
    let append_ms = u64_at(header, 16)?;
    let raw_len = u32_at(header, 24)?;
    let version = *header.get(28)?;
    let flags = *header.get(29)?;
    let reserved = header.get(30..32)?;
    if version != VERSION
        || flags & !(FLAG_URGENT | FLAG_GZIP) != 0
        || flags & FLAG_GZIP == 0
        || reserved != [0, 0]
        || payload_len > MAX_PAYLOAD
    {
        return None;
    }
    Some(RecordMeta {
        payload_len,
        lines,
        append_ms,
        raw_len,
        flags,
    })
}

/// Whether `record` (header + payload, exactly) carries a matching CRC32.
pub(crate) fn crc_ok(record: &[u8]) -> bool {
    let (Some(stored), Some(covered)) = (u32_at(record, 4), record.get(8..)) else {
        return false;
    };
    crc32fast::hash(covered) == stored
}

/// Gzips `raw` (one complete gzip member, fast level) with a compressor of its own; the writer
/// keeps one [`Gzipper`] instead.
#[cfg(test)]
pub(crate) fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    Gzipper::new().gzip_into(raw, &mut out)?;
    Ok(out)
}

/// libdeflate's level 1, its fastest that compresses (its level 0 only stores).
const GZIP_LEVEL: i32 = 1;

/// A gzip compressor reused for every record, at libdeflate's fastest compressing level.
///
/// Why it exists: a deflate state is a few hundred KiB of tables that a new encoder allocates and
/// clears; the writer gzips one record per class per group commit, thousands a second in a
/// burst, so a fresh encoder per record cost more than the compressing itself. libdeflate
/// compresses a whole buffer at once (no stream state to reset), and its level 1 gives records
/// as small as zlib's level 1 in about half the time (README "Dependencies").
pub(crate) struct Gzipper {
    compressor: libdeflater::Compressor,
}

impl Gzipper {
    pub(crate) fn new() -> Self {
        Gzipper {
            compressor: libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(GZIP_LEVEL)
                    .unwrap_or_else(|_| libdeflater::CompressionLvl::default()),
            ),
        }
    }

    /// Appends `raw` gzip'd (one complete gzip member) to `out`.
    pub(crate) fn gzip_into(&mut self, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let start = out.len();
        out.resize(start + self.compressor.gzip_compress_bound(raw.len()), 0);
        match self.compressor.gzip_compress(raw, &mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(std::io::Error::other(format!("gzip: {e:?}")))
            }
        }
    }
}

/// Appends one record of `raw` line protocol, gzip'd by `gzipper` straight into `out`.
pub(crate) fn encode_raw(
    out: &mut Vec<u8>,
    gzipper: &mut Gzipper,
    priority: Priority,
    lines: u32,
    append_ms: u64,
    raw: &[u8],
) -> std::io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = gzipper.gzip_into(raw, out) {
        out.truncate(start);
        return Err(e);
    }
    let payload_len = out.len() - start - HEADER_LEN;
    let raw_len = u32::try_from(raw.len()).unwrap_or(u32::MAX);
    write_header(out, start, priority, lines, append_ms, raw_len, payload_len);
    Ok(())
}

/// Appends one record (header + `payload_gz`) to `out`: for tests that build records by hand.
#[cfg(test)]
pub(crate) fn encode(
    out: &mut Vec<u8>,
    priority: Priority,
    lines: u32,
    append_ms: u64,
    raw_len: u32,
    payload_gz: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(payload_gz);
    write_header(
        out,
        start,
        priority,
        lines,
        append_ms,
        raw_len,
        payload_gz.len(),
    );
}

/// Fills the header of the record at `out[start..]`, whose payload follows it to the end of
/// `out`, CRC included.
fn write_header(
    out: &mut [u8],
    start: usize,
    priority: Priority,
    lines: u32,
    append_ms: u64,
    raw_len: u32,
    payload_len: usize,
) {
    let flags = FLAG_GZIP
        | match priority {
            Priority::Urgent => FLAG_URGENT,
            Priority::Normal => 0,
        };
    // Callers bound payloads far below u32::MAX (MAX_PAYLOAD); saturate rather than wrap.
    let payload_len = u32::try_from(payload_len).unwrap_or(u32::MAX);
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&payload_len.to_le_bytes());
    header[12..16].copy_from_slice(&lines.to_le_bytes());
    header[16..24].copy_from_slice(&append_ms.to_le_bytes());
    header[24..28].copy_from_slice(&raw_len.to_le_bytes());
    header[28] = VERSION;
    header[29] = flags;
    let record = &mut out[start..];
    record[..HEADER_LEN].copy_from_slice(&header);
    let crc = crc32fast::hash(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_round_trips() {
        let gz = gzip(b"m f=1 1\n").unwrap();
        let mut out = Vec::new();
        encode(&mut out, Priority::Urgent, 1, 1_700_000_000_123, 8, &gz);
        assert_eq!(out.len(), HEADER_LEN + gz.len());
        let meta = parse_header(&out[..HEADER_LEN]).unwrap();
        assert_eq!(
            meta,
            RecordMeta {
                payload_len: gz.len() as u32,
                lines: 1,
                append_ms: 1_700_000_000_123,
                raw_len: 8,
                flags: FLAG_GZIP | FLAG_URGENT,
            }
        );
        assert!(crc_ok(&out));
        out[HEADER_LEN + 3] ^= 0x10;
        assert!(!crc_ok(&out));
    }

    #[test]
    fn records_are_compressed_and_decompress_to_their_lines() {
        let mut raw = Vec::new();
        for i in 0..1000 {
            raw.extend_from_slice(
                format!(
                    "environment,sensor_id=s{} pm2_5={}.5,pm10=31.2 {i}\n",
                    i % 8,
                    i % 50
                )
                .as_bytes(),
            );
        }
        let mut gzipper = Gzipper::new();
        let mut out = Vec::new();
        for _ in 0..2 {
            out.clear();
            encode_raw(&mut out, &mut gzipper, Priority::Normal, 1000, 7, &raw).unwrap();
            let meta = parse_header(&out[..HEADER_LEN]).unwrap();
            assert!(crc_ok(&out));
            assert_eq!(meta.raw_len as usize, raw.len());
            // Line protocol compresses well; a stored (level 0) record would be larger than raw.
            assert!(
                (meta.payload_len as usize) < raw.len() / 4,
                "{} of {}",
                meta.payload_len,
                raw.len()
            );
            let mut text = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&out[HEADER_LEN..]),
                &mut text,
            )
            .unwrap();
            assert_eq!(text, raw);
        }
    }

    #[test]
    fn header_rejects_bad_magic_version_and_length() {
        let mut out = Vec::new();
        encode(&mut out, Priority::Normal, 3, 5, 10, b"xx");
        let good = out[..HEADER_LEN].to_vec();
        assert!(parse_header(&good).is_some());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(parse_header(&bad).is_none());
        let mut bad = good.clone();
        bad[28] = 9;
        assert!(parse_header(&bad).is_none());
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(parse_header(&bad).is_none());
        assert!(parse_header(&good[..20]).is_none());
    }
}
