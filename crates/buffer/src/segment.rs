//! Segment files: naming, listing, and a scanner that walks the records of one segment.
//!
//! The scanner is shared by recovery and by the reader, so both treat damaged bytes the same way:
//! a record counts only if its header is well formed and its CRC matches; anything else is
//! skipped by resynchronising on the next [`MAGIC`](super::record::MAGIC) that starts a valid
//! record. The scanner reads through a bounded window, so memory stays small whatever the file
//! holds, and never panics on any content.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, RecordMeta, HEADER_LEN, MAGIC};

/// Suffix of segment files.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// How much the scanner reads at a time when no record demands more.
const WINDOW: usize = 256 * 1024;

/// File name of segment `id`: 20 zero-padded digits, so names sort like ids.
pub(crate) fn segment_file_name(id: u64) -> String {
    format!("{id:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name back to its id; `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, sorted by id.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            found.push((id, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(id, _)| *id);
    Ok(found)
}

/// Makes a create, rename or delete in `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What the scanner found at a position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A valid record starts at `offset`; the next position is `offset + meta.record_len()`.
    Record { offset: u64, meta: RecordMeta },
    /// Bytes `[from, to)` hold no valid record; scanning continues at `to` (which is the end of
    /// the scanned range when nothing valid follows).
    Skipped { from: u64, to: u64 },
    /// Nothing more before the scan limit.
    End,
}

/// Walks the records of one segment up to a byte limit, through a bounded read window.
pub(crate) struct SegmentScanner {
    file: File,
    limit: u64,
    window: Vec<u8>,
    window_start: u64,
}

impl SegmentScanner {
    /// Scans `file` up to `limit` bytes (the file's length for recovery, the committed size for
    /// the reader).
    pub fn new(file: File, limit: u64) -> Self {
        SegmentScanner {
            file,
            limit,
            window: Vec::new(),
            window_start: 0,
        }
    }

    /// The bytes `[offset, offset + len)`, or `None` if they reach past the limit.
    fn bytes(&mut self, offset: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let Some(end) = offset.checked_add(len as u64) else {
            return Ok(None);
        };
        if end > self.limit {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if offset < self.window_start || end > window_end {
            let want = (len.max(WINDOW) as u64).min(self.limit - offset);
            // `want` ≤ max(len, WINDOW), both of which fit in usize.
            let want = usize::try_from(want).unwrap_or(len);
            self.window.clear();
            self.window.resize(want, 0);
            self.window_start = offset;
            if let Err(e) = self.file.read_exact_at(&mut self.window, offset) {
                self.window.clear();
                return Err(e);
            }
        }
        // Both bounds lie inside the window now.
        let from = usize::try_from(offset - self.window_start).unwrap_or(usize::MAX);
        Ok(self.window.get(from..from.saturating_add(len)))
    }

    /// The valid record starting exactly at `offset`, if there is one.
    fn record_at(&mut self, offset: u64) -> io::Result<Option<RecordMeta>> {
        let Some(header) = self.bytes(offset, HEADER_LEN)? else {
            return Ok(None);
        };
        let Some(meta) = record::parse_header(header) else {
            return Ok(None);
        };
        let total = HEADER_LEN + meta.payload_len as usize;
        match self.bytes(offset, total)? {
            Some(whole) if record::crc_ok(whole) => Ok(Some(meta)),
            _ => Ok(None),
        }
    }

    /// The payload of a record returned by [`next`](Self::next) at `offset`.
    pub fn payload(&mut self, offset: u64, meta: &RecordMeta) -> io::Result<Vec<u8>> {
        let total = HEADER_LEN + meta.payload_len as usize;
        match self.bytes(offset, total)? {
            Some(whole) => Ok(whole.get(HEADER_LEN..).unwrap_or_default().to_vec()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "record extends past the segment's scan limit",
            )),
        }
    }

    /// What lies at `offset`: a record, a damaged range to skip, or the end.
    pub fn next(&mut self, offset: u64) -> io::Result<Step> {
        if offset >= self.limit {
            return Ok(Step::End);
        }
        if let Some(meta) = self.record_at(offset)? {
            return Ok(Step::Record { offset, meta });
        }
        // Damaged: look for the next marker that starts a valid record.
        let mut probe = offset + 1;
        loop {
            if probe + HEADER_LEN as u64 > self.limit {
                return Ok(Step::Skipped {
                    from: offset,
                    to: self.limit,
                });
            }
            let avail = usize::try_from((self.limit - probe).min(WINDOW as u64)).unwrap_or(WINDOW);
            let hit = match self.bytes(probe, avail)? {
                Some(bytes) => bytes.windows(MAGIC.len()).position(|w| w == MAGIC),
                None => None,
            };
            match hit {
                Some(at) => {
                    let candidate = probe + at as u64;
                    if self.record_at(candidate)?.is_some() {
                        return Ok(Step::Skipped {
                            from: offset,
                            to: candidate,
                        });
                    }
                    probe = candidate + 1;
                }
                // A marker may straddle the window's end: step back by its length minus one.
                None => probe += (avail.saturating_sub(MAGIC.len() - 1)).max(1) as u64,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_model::Priority;
    use std::io::Write;

    #[test]
    fn names_round_trip_and_foreign_names_are_ignored() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("cursor"), None);
    }

    #[test]
    fn scanner_skips_garbage_between_records() {
        let mut bytes = Vec::new();
        record::encode(&mut bytes, Priority::Normal, 1, 1, 3, b"abc");
        let first_len = bytes.len() as u64;
        bytes.extend_from_slice(b"garbage IOCR more garbage");
        let second = bytes.len() as u64;
        record::encode(&mut bytes, Priority::Normal, 2, 2, 3, b"def");
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let mut scanner = SegmentScanner::new(file, bytes.len() as u64);
        let Step::Record { offset: 0, meta } = scanner.next(0).unwrap() else {
            panic!("first record expected");
        };
        assert_eq!(meta.lines, 1);
        assert_eq!(scanner.payload(0, &meta).unwrap(), b"abc");
        assert_eq!(
            scanner.next(first_len).unwrap(),
            Step::Skipped {
                from: first_len,
                to: second
            }
        );
        let Step::Record { offset, meta } = scanner.next(second).unwrap() else {
            panic!("second record expected");
        };
        assert_eq!((offset, meta.lines), (second, 2));
        assert_eq!(scanner.next(second + meta.record_len()).unwrap(), Step::End);
    }
}
