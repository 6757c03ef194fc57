//! The ack cursor: how far the store has confirmed a class's log, persisted crash-safely.
//!
//! One small file per class (`<class>/ack.cursor`), replaced atomically (write a temp file,
//! fsync it, rename it over the old one, fsync the directory). A missing, torn or corrupt cursor
//! reads as "nothing acked", so the buffer re-sends rather than loses.
//!
//! Layout (28 bytes, little-endian): `"IOCA"` | version `1` | 3 zero bytes | segment id `u64` |
//! byte offset `u64` | CRC32 of the 24 bytes before it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use super::segment::fsync_dir;

const CURSOR_MAGIC: [u8; 4] = *b"IOCA";
const CURSOR_VERSION: u8 = 1;
pub(crate) const CURSOR_LEN: usize = 28;
pub(crate) const CURSOR_FILE: &str = "ack.cursor";
const CURSOR_TMP: &str = "ack.cursor.tmp";

/// A position in a class's log: everything before `offset` in segment `segment`, and in all
/// lower segments, is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub segment: u64,
    pub offset: u64,
}

fn encode(pos: Pos) -> [u8; CURSOR_LEN] {
    let mut out = [0u8; CURSOR_LEN];
    out[0..4].copy_from_slice(&CURSOR_MAGIC);
    out[4] = CURSOR_VERSION;
    out[8..16].copy_from_slice(&pos.segment.to_le_bytes());
    out[16..24].copy_from_slice(&pos.offset.to_le_bytes());
    let crc = crc32fast::hash(&out[0..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a cursor file's bytes; `None` unless they are exactly one valid cursor. Shared with the
/// read-only inspector (`buffer stats|export`), which must not use [`load`] (it deletes a leftover
/// temp file).
pub(crate) fn decode(bytes: &[u8]) -> Option<Pos> {
    if bytes.len() != CURSOR_LEN || bytes.get(0..4)? != CURSOR_MAGIC {
        return None;
    }
    if *bytes.get(4)? != CURSOR_VERSION || bytes.get(5..8)? != [0, 0, 0] {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(24..28)?.try_into().ok()?);
    if crc32fast::hash(bytes.get(0..24)?) != crc {
        return None;
    }
    Some(Pos {
        segment: u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?),
        offset: u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?),
    })
}

/// What was found on disk for a class's cursor.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LoadedCursor {
    Missing,
    Valid(Pos),
    /// Present but unreadable: the caller falls back to "nothing acked".
    Corrupt,
}

/// Reads the cursor of the class stored in `dir`; removes a leftover temp file.
pub(crate) fn load(dir: &Path) -> io::Result<LoadedCursor> {
    match std::fs::remove_file(dir.join(CURSOR_TMP)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = match File::open(dir.join(CURSOR_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadedCursor::Missing),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::with_capacity(CURSOR_LEN);
    // Read one byte more than a cursor holds: a longer file is corrupt, not truncated.
    file.take(CURSOR_LEN as u64 + 1).read_to_end(&mut bytes)?;
    Ok(match decode(&bytes) {
        Some(pos) => LoadedCursor::Valid(pos),
        None => LoadedCursor::Corrupt,
    })
}

/// Durably replaces the cursor of the class stored in `dir`. Returns the number of fsyncs done.
pub(crate) fn store(dir: &Path, pos: Pos) -> io::Result<u64> {
    let tmp = dir.join(CURSOR_TMP);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(&encode(pos))?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(CURSOR_FILE))?;
    fsync_dir(dir)?;
    Ok(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), LoadedCursor::Missing);
        let pos = Pos {
            segment: 7,
            offset: 12345,
        };
        store(dir.path(), pos).unwrap();
        assert_eq!(load(dir.path()).unwrap(), LoadedCursor::Valid(pos));
    }

    #[test]
    fn every_truncation_and_bit_flip_reads_as_corrupt() {
        let good = encode(Pos {
            segment: 3,
            offset: 99,
        });
        for len in 0..CURSOR_LEN {
            assert_eq!(decode(&good[..len]), None, "truncated to {len}");
        }
        for byte in 0..CURSOR_LEN {
            for bit in 0..8 {
                let mut bad = good;
                bad[byte] ^= 1 << bit;
                assert_eq!(decode(&bad), None, "flip byte {byte} bit {bit}");
            }
        }
        let mut longer = good.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), None);
    }
}
