//! The on-disk record: one group commit of one priority class, gzip'd, behind a checksummed header.
//!
//! This file is the only place that knows the byte layout (documented in the module docs of
//! [`crate`]); everything else goes through [`encode`] and [`parse_header`]/[`crc_ok`].

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

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

/// Gzips `raw` (one complete gzip member, fast level).
pub(crate) fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), Compression::fast());
    encoder.write_all(raw)?;
    encoder.finish()
}

/// Appends one record (header + `payload_gz`) to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    priority: Priority,
    lines: u32,
    append_ms: u64,
    raw_len: u32,
    payload_gz: &[u8],
) {
    let start = out.len();
    let flags = FLAG_GZIP
        | match priority {
            Priority::Urgent => FLAG_URGENT,
            Priority::Normal => 0,
        };
    // Callers bound payloads far below u32::MAX (MAX_PAYLOAD); saturate rather than wrap.
    let payload_len = u32::try_from(payload_gz.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]); // CRC, filled below
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&lines.to_le_bytes());
    out.extend_from_slice(&append_ms.to_le_bytes());
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload_gz);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
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
