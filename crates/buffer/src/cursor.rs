//! The ack cursors: how far each consumer's store has confirmed a class's log, persisted
//! crash-safely.
//!
//! One small file per class and consumer (`<class>/ack.<name>.cursor`; the consumer named
//! [`DEFAULT_CONSUMER`] keeps the file name of the single-output buffer, `<class>/ack.cursor`, so
//! an upgraded gateway carries on where it stood), replaced atomically (write a temp file, fsync
//! it, rename it over the old one, fsync the directory). A torn or corrupt cursor reads as
//! "nothing acked", so the buffer re-sends rather than loses.
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

/// The consumer whose cursor is the single-output buffer's `ack.cursor`.
pub const DEFAULT_CONSUMER: &str = "default";

/// Longest consumer name (it becomes part of a file name).
pub const MAX_CONSUMER_NAME: usize = 64;

/// Whether `name` can name a consumer: 1 to 64 of `A-Z a-z 0-9 _ -`, so that it is safe in a
/// file name, a metric label and a log line.
pub fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CONSUMER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The cursor file of consumer `name` in a class directory.
pub(crate) fn file_name(name: &str) -> String {
    if name == DEFAULT_CONSUMER {
        CURSOR_FILE.to_string()
    } else {
        format!("ack.{name}.cursor")
    }
}

fn tmp_name(name: &str) -> String {
    format!("{}.tmp", file_name(name))
}

/// The consumer a file in a class directory is the cursor of, if it is one (`ack.cursor` is
/// [`DEFAULT_CONSUMER`]'s).
pub(crate) fn consumer_of_file(file: &str) -> Option<&str> {
    if file == CURSOR_FILE {
        return Some(DEFAULT_CONSUMER);
    }
    let name = file.strip_prefix("ack.")?.strip_suffix(".cursor")?;
    // `ack.default.cursor` is not a name this code writes: not a cursor.
    (valid_consumer_name(name) && name != DEFAULT_CONSUMER).then_some(name)
}

/// The consumers that have a cursor file in `dir`, sorted; leftover temp files are removed.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(base) = file.strip_suffix(".tmp") {
            if consumer_of_file(base).is_some() {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            continue;
        }
        if let Some(name) = consumer_of_file(&file) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes consumer `name`'s cursor file (and its temp file) from `dir`, durably.
pub(crate) fn remove(dir: &Path, name: &str) -> io::Result<()> {
    for file in [file_name(name), tmp_name(name)] {
        match std::fs::remove_file(dir.join(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    fsync_dir(dir)
}

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

/// Reads consumer `name`'s cursor of the class stored in `dir`; removes a leftover temp file.
pub(crate) fn load(dir: &Path, name: &str) -> io::Result<LoadedCursor> {
    match std::fs::remove_file(dir.join(tmp_name(name))) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = match File::open(dir.join(file_name(name))) {
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

/// Durably replaces consumer `name`'s cursor of the class stored in `dir`. Returns the number of
/// fsyncs done.
pub(crate) fn store(dir: &Path, name: &str, pos: Pos) -> io::Result<u64> {
    let tmp = dir.join(tmp_name(name));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(&encode(pos))?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(file_name(name)))?;
    fsync_dir(dir)?;
    Ok(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load(dir.path(), DEFAULT_CONSUMER).unwrap(),
            LoadedCursor::Missing
        );
        let pos = Pos {
            segment: 7,
            offset: 12345,
        };
        store(dir.path(), DEFAULT_CONSUMER, pos).unwrap();
        assert_eq!(
            load(dir.path(), DEFAULT_CONSUMER).unwrap(),
            LoadedCursor::Valid(pos)
        );
        assert!(dir.path().join("ack.cursor").exists());
        // Each consumer has its own file; the default one keeps the single-output name.
        let other = Pos {
            segment: 9,
            offset: 1,
        };
        store(dir.path(), "archive", other).unwrap();
        assert!(dir.path().join("ack.archive.cursor").exists());
        assert_eq!(
            load(dir.path(), "archive").unwrap(),
            LoadedCursor::Valid(other)
        );
        assert_eq!(
            load(dir.path(), DEFAULT_CONSUMER).unwrap(),
            LoadedCursor::Valid(pos)
        );
        std::fs::write(dir.path().join("ack.vm.cursor.tmp"), b"torn").unwrap();
        std::fs::write(dir.path().join("ack.default.cursor"), b"not ours").unwrap();
        std::fs::write(dir.path().join("ack.bad name.cursor"), b"not ours").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec!["archive", "default"]);
        assert!(!dir.path().join("ack.vm.cursor.tmp").exists());
        remove(dir.path(), "archive").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec!["default"]);
    }

    #[test]
    fn consumer_names_are_safe_file_name_parts() {
        for good in ["default", "vm", "national-platform_2", &"a".repeat(64)] {
            assert!(valid_consumer_name(good), "{good}");
        }
        for bad in ["", "a b", "../x", "a.b", "é", &"a".repeat(65)] {
            assert!(!valid_consumer_name(bad), "{bad}");
        }
        assert_eq!(consumer_of_file("ack.cursor"), Some(DEFAULT_CONSUMER));
        assert_eq!(consumer_of_file("ack.vm.cursor"), Some("vm"));
        assert_eq!(consumer_of_file("ack.default.cursor"), None);
        assert_eq!(consumer_of_file("ack.cursor.tmp"), None);
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
