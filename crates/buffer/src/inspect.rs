//! Read-only inspection of a buffer directory, for `ioc-gateway buffer stats|export`.
//!
//! A technician wants to know what a gateway holds (how much, how old, whether anything is
//! damaged) and to take it away as plain line protocol, on a box where the gateway may be
//! running right now. So nothing here writes, renames, truncates or locks anything in the
//! directory: segments are opened read-only and scanned with the same [`SegmentScanner`] the
//! gateway uses (same CRC checks, same resynchronisation), the ack cursor is decoded without
//! the clean-up [`cursor::load`](super::cursor) does, and the lock file is only read for its
//! pid. What a running gateway does meanwhile shows up as it would to any reader: a record
//! being written is reported as a torn tail (recovery would drop it if the power went now), a
//! segment deleted after an ack is counted as vanished, and nothing fails because of it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cursor::{self, Pos, CURSOR_LEN};
use super::lock::read_lock_pid;
use super::record::RecordMeta;
use super::segment::{list_segments, SegmentScanner, Step};
use super::state::class_dir_name;
use ioc_model::Priority;

/// Largest uncompressed size of one record believed (records hold at most 512 KiB of line
/// protocol, or one line of up to 4 MiB).
const MAX_RECORD_RAW: u32 = 64 << 20;

/// Classes in the order the gateway sends them (and export writes them).
pub const CLASSES: [Priority; 2] = [Priority::Urgent, Priority::Normal];

/// Why an inspection failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{}: no such directory", .0.display())]
    NotFound(PathBuf),
    #[error(
        "{}: no buffer here (expected its urgent/ and normal/ directories, or a buffer/ directory holding them)",
        .0.display()
    )]
    NoBuffer(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the export: {0}")]
    Write(#[source] io::Error),
}

impl InspectError {
    fn read(path: &Path, source: io::Error) -> Self {
        InspectError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Finds the buffer in `dir`: either a gateway's `data_dir` (holding `buffer/`) or the buffer
/// directory itself (holding `urgent/` and `normal/`).
pub fn locate_buffer(dir: &Path) -> Result<PathBuf, InspectError> {
    if !dir.is_dir() {
        return Err(InspectError::NotFound(dir.to_path_buf()));
    }
    let holds_classes = |d: &Path| CLASSES.iter().any(|p| d.join(class_dir_name(*p)).is_dir());
    let nested = dir.join("buffer");
    if holds_classes(&nested) {
        return Ok(nested);
    }
    if holds_classes(dir) {
        return Ok(dir.to_path_buf());
    }
    Err(InspectError::NoBuffer(dir.to_path_buf()))
}

// ---- the ack cursor, decoded read-only -------------------------------------------------------
// With `cursor::decode`, not `cursor::load` (which removes a leftover temp file): inspection must
// not change anything.

/// The state of a class's ack cursor. With several consumers (outputs) this is the cursor of
/// the one furthest behind: "unsent" means not yet acknowledged by at least one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CursorState {
    /// Nothing was ever acknowledged in this class (or everything acked was deleted before a
    /// cursor existed).
    Missing,
    /// Everything before `offset` in segment `segment` (and every lower segment) is acked.
    Valid { segment: u64, offset: u64 },
    /// Unreadable: the gateway will re-send everything on disk in this class.
    Corrupt,
}

impl CursorState {
    fn pos(self) -> Pos {
        match self {
            CursorState::Valid { segment, offset } => Pos { segment, offset },
            CursorState::Missing | CursorState::Corrupt => Pos::default(),
        }
    }
}

fn read_one_cursor(path: &Path) -> Result<CursorState, InspectError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(CursorState::Missing),
        Err(e) => return Err(InspectError::read(path, e)),
    };
    let mut bytes = Vec::with_capacity(CURSOR_LEN + 1);
    file.take(CURSOR_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InspectError::read(path, e))?;
    Ok(match cursor::decode(&bytes) {
        Some(Pos { segment, offset }) => CursorState::Valid { segment, offset },
        None => CursorState::Corrupt,
    })
}

/// The cursor of the consumer furthest behind among every `ack*.cursor` in `class_dir`: corrupt
/// if any is, missing if there is none.
fn read_cursor(class_dir: &Path) -> Result<CursorState, InspectError> {
    let entries = match std::fs::read_dir(class_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(CursorState::Missing),
        Err(e) => return Err(InspectError::read(class_dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| InspectError::read(class_dir, e))?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| cursor::consumer_of_file(n).is_some())
        {
            files.push(entry.path());
        }
    }
    files.sort();
    let mut lowest: Option<Pos> = None;
    for path in files {
        match read_one_cursor(&path)? {
            CursorState::Corrupt => return Ok(CursorState::Corrupt),
            CursorState::Missing => {}
            CursorState::Valid { segment, offset } => {
                let pos = Pos { segment, offset };
                lowest = Some(lowest.map_or(pos, |l| l.min(pos)));
            }
        }
    }
    Ok(match lowest {
        Some(Pos { segment, offset }) => CursorState::Valid { segment, offset },
        None => CursorState::Missing,
    })
}

// ---- walking one class's log -----------------------------------------------------------------

/// One class's log as found on disk: its cursor and its segment files.
#[derive(Debug)]
struct ClassLog {
    cursor: CursorState,
    /// `(id, path, length when listed)`, by id.
    segments: Vec<(u64, PathBuf, u64)>,
}

impl ClassLog {
    fn open(root: &Path, priority: Priority) -> Result<Self, InspectError> {
        let dir = root.join(class_dir_name(priority));
        if !dir.is_dir() {
            return Ok(ClassLog {
                cursor: CursorState::Missing,
                segments: Vec::new(),
            });
        }
        // The cursor first: if an ack moves it while we list, we see more as unsent, never less.
        let cursor = read_cursor(&dir)?;
        let mut segments = Vec::new();
        for (id, path) in list_segments(&dir).map_err(|e| InspectError::read(&dir, e))? {
            match std::fs::metadata(&path) {
                Ok(meta) => segments.push((id, path, meta.len())),
                // Deleted between listing and now (acked or dropped by a running gateway).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(InspectError::read(&path, e)),
            }
        }
        Ok(ClassLog { cursor, segments })
    }

    /// The segments a walk visits: all, or only those holding unacked data.
    fn segments_from(&self, include_acked: bool) -> impl Iterator<Item = &(u64, PathBuf, u64)> {
        let first = if include_acked {
            0
        } else {
            self.cursor.pos().segment
        };
        self.segments.iter().filter(move |(id, _, _)| *id >= first)
    }
}

/// Something found while walking a class's log in order.
#[derive(Debug)]
enum Found<'a> {
    Record {
        meta: &'a RecordMeta,
        acked: bool,
        /// Present when the visitor asked for it.
        payload: Option<Vec<u8>>,
    },
    /// `bytes` of a segment hold no valid record; `tail` when nothing valid follows them.
    Damaged { bytes: u64, tail: bool },
    /// The segment was deleted before we could open it.
    Vanished,
}

/// Walks the valid records and damaged ranges of `log` in order. `want_payload(acked)` says
/// which records' payloads to load; `progress` gets the bytes scanned as they go by.
fn walk(
    log: &ClassLog,
    include_acked: bool,
    want_payload: impl Fn(bool) -> bool,
    progress: &mut dyn FnMut(u64),
    mut visit: impl FnMut(u64, Found<'_>) -> Result<(), InspectError>,
) -> Result<(), InspectError> {
    let cursor = log.cursor.pos();
    for (id, path, _) in log.segments_from(include_acked) {
        let id = *id;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                visit(id, Found::Vanished)?;
                continue;
            }
            Err(e) => return Err(InspectError::read(path, e)),
        };
        // Scan what the file holds now; bytes appended after this are not part of the picture.
        let len = file
            .metadata()
            .map_err(|e| InspectError::read(path, e))?
            .len();
        let mut scanner = SegmentScanner::new(file, len);
        let mut offset = 0;
        loop {
            let step = match scanner.next(offset) {
                Ok(step) => step,
                // The file shrank under us (a running gateway cut back a failed append).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Step::Skipped {
                    from: offset,
                    to: len,
                },
                Err(e) => return Err(InspectError::read(path, e)),
            };
            match step {
                Step::Record { offset: at, meta } => {
                    let acked = id < cursor.segment || (id == cursor.segment && at < cursor.offset);
                    let next = at + meta.record_len();
                    if !acked || include_acked {
                        let payload = if want_payload(acked) {
                            match scanner.payload(at, &meta) {
                                Ok(payload) => Some(payload),
                                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                                    visit(
                                        id,
                                        Found::Damaged {
                                            bytes: len - at,
                                            tail: true,
                                        },
                                    )?;
                                    progress(len - offset);
                                    break;
                                }
                                Err(e) => return Err(InspectError::read(path, e)),
                            }
                        } else {
                            None
                        };
                        visit(
                            id,
                            Found::Record {
                                meta: &meta,
                                acked,
                                payload,
                            },
                        )?;
                    }
                    progress(next - offset);
                    offset = next;
                }
                Step::Skipped { from, to } => {
                    let acked =
                        id < cursor.segment || (id == cursor.segment && to <= cursor.offset);
                    if !acked || include_acked {
                        visit(
                            id,
                            Found::Damaged {
                                bytes: to - from,
                                tail: to >= len,
                            },
                        )?;
                    }
                    progress(to - offset);
                    offset = to;
                }
                Step::End => break,
            }
        }
    }
    Ok(())
}

/// The line protocol of one record's payload, or `None` if it does not decompress to exactly
/// the size its header announces (a CRC-valid record that is still unusable).
fn decompress(meta: &RecordMeta, payload: &[u8]) -> Option<Vec<u8>> {
    // The writer never puts more than a few MiB of line protocol in one record; a larger claim
    // is corruption that happens to pass the CRC, and must not make us allocate gigabytes.
    if meta.raw_len > MAX_RECORD_RAW {
        return None;
    }
    let expected = usize::try_from(meta.raw_len).ok()?;
    let mut out = Vec::with_capacity(expected);
    flate2::read::MultiGzDecoder::new(payload)
        .take(u64::from(meta.raw_len) + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() == expected).then_some(out)
}

/// The timestamp of a line-protocol line (the last space-separated token, when it is an
/// integer), in the line's precision (nanoseconds for this gateway).
pub fn line_timestamp(line: &[u8]) -> Option<i64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let at = line.iter().rposition(|b| *b == b' ')?;
    let token = line.get(at + 1..)?;
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

// ---- stats -----------------------------------------------------------------------------------

/// What `buffer stats` reports for one class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClassStats {
    /// Segment files.
    pub segments: usize,
    /// Their total size, damaged bytes included.
    pub disk_bytes: u64,
    /// Valid records (acked or not) and their lines.
    pub records: u64,
    pub lines: u64,
    pub unsent: UnsentStats,
    /// Acknowledged by the store but still on disk (their segment is not finished yet).
    pub acked_not_deleted: AckedStats,
    pub damage: DamageStats,
    pub cursor: CursorStateView,
    /// Segments deleted while we read (a running gateway acked or dropped them).
    pub vanished_segments: u64,
}

/// The ack cursor, flattened for JSON (`{"state": "valid", "segment": 3, "offset": 96}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CursorStateView(pub CursorState);

impl Default for CursorStateView {
    fn default() -> Self {
        CursorStateView(CursorState::Missing)
    }
}

/// Records the store has not confirmed yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnsentStats {
    pub records: u64,
    /// Lines as counted in the record headers (what the gateway's metrics say).
    pub lines: u64,
    /// Bytes of those records on disk (compressed, with headers).
    pub disk_bytes: u64,
    /// Bytes of line protocol they hold (what `buffer export` writes).
    pub line_protocol_bytes: u64,
    /// Oldest and newest reading time among the unsent lines, from their line-protocol
    /// timestamps (nanoseconds since the Unix epoch), and their age when inspected.
    pub oldest_reading_ns: Option<i64>,
    pub newest_reading_ns: Option<i64>,
    pub oldest_reading_utc: Option<String>,
    pub newest_reading_utc: Option<String>,
    pub oldest_reading_age_ms: Option<i64>,
    pub newest_reading_age_ms: Option<i64>,
    /// Lines with no timestamp of their own (the store would stamp them on arrival).
    pub lines_without_timestamp: u64,
    /// When the oldest unsent record was appended (ms since the Unix epoch): how long the
    /// buffer has been holding data back.
    pub oldest_append_ms: Option<u64>,
    pub oldest_append_age_ms: Option<i64>,
}

/// Records the store confirmed that are still on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AckedStats {
    pub records: u64,
    pub lines: u64,
    pub disk_bytes: u64,
}

/// Bytes that hold no usable record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DamageStats {
    /// Damaged ranges followed by valid records (flipped bits, bad sectors).
    pub damaged_bytes: u64,
    pub damaged_ranges: u64,
    /// Trailing bytes of a segment with no complete record (a power cut mid-write, or a write
    /// in progress right now if a gateway is running).
    pub torn_tail_bytes: u64,
    pub torn_tails: u64,
    /// What the gateway's recovery would cut away if it started now.
    pub would_drop_on_recovery_bytes: u64,
    /// Unsent records whose checksum is fine but whose payload does not decompress (never
    /// seen in practice; counted so that export's skips add up).
    pub undecodable_records: u64,
}

/// What `buffer stats` reports for a whole buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BufferStatsReport {
    pub dir: PathBuf,
    /// When it was taken (ms since the Unix epoch) and the same in UTC.
    pub now_ms: u64,
    pub now_utc: String,
    pub segments: usize,
    pub disk_bytes: u64,
    /// The configured bound (`[buffer] max_disk_mb`), when a config was given.
    pub max_disk_bytes: Option<u64>,
    /// `disk_bytes` as a share of the bound, in per mille (1000 = full).
    pub disk_used_permille: Option<u64>,
    /// Pid written in `LOCK` by the last gateway that opened the buffer.
    pub lock_pid: Option<u32>,
    /// Whether a process holds the lock right now (a gateway is running on this buffer).
    pub lock: LockState,
    pub urgent: ClassStats,
    pub normal: ClassStats,
}

impl BufferStatsReport {
    pub fn class(&self, priority: Priority) -> &ClassStats {
        match priority {
            Priority::Urgent => &self.urgent,
            Priority::Normal => &self.normal,
        }
    }
}

fn utc(ns: i128) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok()?;
    let t = t.replace_nanosecond(0).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn age_ms(now_ms: u64, then_ms: i128) -> i64 {
    let age = i128::from(now_ms) - then_ms;
    i64::try_from(age).unwrap_or(if age < 0 { i64::MIN } else { i64::MAX })
}

/// Whether the buffer's lock is held, seen without taking it (taking it, even for a moment,
/// could make a gateway that starts at that instant fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LockState {
    /// Held by `pid` (as the kernel reports it).
    Held {
        pid: Option<u32>,
    },
    Free,
    /// `/proc/locks` could not be read (not Linux, or no /proc).
    Unknown,
}

/// Looks the lock file's inode up in `/proc/locks` (Linux), whose lines read
/// `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF` (waiters have `->` after the number).
fn lock_state(root: &Path) -> LockState {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(root.join(super::lock::LOCK_FILE)) else {
        return LockState::Free; // never opened by a gateway
    };
    let Ok(table) = std::fs::read_to_string("/proc/locks") else {
        return LockState::Unknown;
    };
    held_in_proc_locks(&table, meta.ino()).map_or(LockState::Free, |pid| LockState::Held { pid })
}

/// The holder of a `FLOCK` on inode `ino` in a `/proc/locks` table: `Some(pid)` if held.
fn held_in_proc_locks(table: &str, ino: u64) -> Option<Option<u32>> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let inode = fields.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        (inode == ino).then(|| fields.get(4).and_then(|pid| pid.parse().ok()))
    })
}

fn class_stats(
    log: &ClassLog,
    now_ms: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<ClassStats, InspectError> {
    let mut stats = ClassStats {
        segments: log.segments.len(),
        disk_bytes: log.segments.iter().map(|(_, _, len)| len).sum(),
        cursor: CursorStateView(log.cursor),
        ..ClassStats::default()
    };
    let mut oldest: Option<i64> = None;
    let mut newest: Option<i64> = None;
    walk(
        log,
        true,
        |acked| !acked,
        progress,
        |_, found| {
            match found {
                Found::Record {
                    meta,
                    acked,
                    payload,
                } => {
                    stats.records += 1;
                    stats.lines += u64::from(meta.lines);
                    if acked {
                        stats.acked_not_deleted.records += 1;
                        stats.acked_not_deleted.lines += u64::from(meta.lines);
                        stats.acked_not_deleted.disk_bytes += meta.record_len();
                        return Ok(());
                    }
                    let unsent = &mut stats.unsent;
                    unsent.records += 1;
                    unsent.lines += u64::from(meta.lines);
                    unsent.disk_bytes += meta.record_len();
                    if unsent.oldest_append_ms.is_none() {
                        unsent.oldest_append_ms = Some(meta.append_ms);
                    }
                    let Some(lp) = payload.and_then(|p| decompress(meta, &p)) else {
                        stats.damage.undecodable_records += 1;
                        return Ok(());
                    };
                    unsent.line_protocol_bytes += lp.len() as u64;
                    for line in lp.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        match line_timestamp(line) {
                            Some(ts) => {
                                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
                                newest = Some(newest.map_or(ts, |n| n.max(ts)));
                            }
                            None => unsent.lines_without_timestamp += 1,
                        }
                    }
                }
                Found::Damaged { bytes, tail, .. } => {
                    if tail {
                        stats.damage.torn_tail_bytes += bytes;
                        stats.damage.torn_tails += 1;
                    } else {
                        stats.damage.damaged_bytes += bytes;
                        stats.damage.damaged_ranges += 1;
                    }
                    stats.damage.would_drop_on_recovery_bytes += bytes;
                }
                Found::Vanished => stats.vanished_segments += 1,
            }
            Ok(())
        },
    )?;
    let unsent = &mut stats.unsent;
    unsent.oldest_reading_ns = oldest;
    unsent.newest_reading_ns = newest;
    unsent.oldest_reading_utc = oldest.and_then(|ns| utc(i128::from(ns)));
    unsent.newest_reading_utc = newest.and_then(|ns| utc(i128::from(ns)));
    unsent.oldest_reading_age_ms = oldest.map(|ns| age_ms(now_ms, i128::from(ns) / 1_000_000));
    unsent.newest_reading_age_ms = newest.map(|ns| age_ms(now_ms, i128::from(ns) / 1_000_000));
    unsent.oldest_append_age_ms = unsent
        .oldest_append_ms
        .map(|ms| age_ms(now_ms, i128::from(ms)));
    Ok(stats)
}

/// Total size of the segment files in the buffer in `root` (for a progress bar).
pub fn segment_bytes(root: &Path) -> Result<u64, InspectError> {
    let mut total = 0;
    for priority in CLASSES {
        let log = ClassLog::open(root, priority)?;
        total += log.segments.iter().map(|(_, _, len)| len).sum::<u64>();
    }
    Ok(total)
}

/// Inspects the buffer in `root` (the directory holding `urgent/` and `normal/`; see
/// [`locate_buffer`]) as of `now_ms`. Read-only; safe while a gateway runs on it. Every unsent
/// record is decompressed (for the readings' time span); `progress` gets the bytes scanned.
pub fn stats(
    root: &Path,
    max_disk_bytes: Option<u64>,
    now_ms: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<BufferStatsReport, InspectError> {
    if !root.is_dir() {
        return Err(InspectError::NotFound(root.to_path_buf()));
    }
    let urgent = class_stats(&ClassLog::open(root, Priority::Urgent)?, now_ms, progress)?;
    let normal = class_stats(&ClassLog::open(root, Priority::Normal)?, now_ms, progress)?;
    let disk_bytes = urgent.disk_bytes + normal.disk_bytes;
    let lock_pid = read_lock_pid(root);
    Ok(BufferStatsReport {
        dir: root.to_path_buf(),
        now_ms,
        now_utc: utc(i128::from(now_ms) * 1_000_000).unwrap_or_default(),
        segments: urgent.segments + normal.segments,
        disk_bytes,
        max_disk_bytes,
        disk_used_permille: max_disk_bytes.filter(|max| *max > 0).map(|max| {
            u64::try_from(u128::from(disk_bytes) * 1000 / u128::from(max)).unwrap_or(u64::MAX)
        }),
        lock_pid,
        lock: lock_state(root),
        urgent,
        normal,
    })
}

// ---- export ----------------------------------------------------------------------------------

/// What `buffer export` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// Lines and bytes of line protocol written.
    pub lines: u64,
    pub bytes: u64,
    /// Records written, and the segments they came from.
    pub records: u64,
    pub segments: u64,
    /// Bytes skipped because they hold no valid record, in how many ranges; of which torn
    /// tails (possibly a write in progress).
    pub skipped_damaged_bytes: u64,
    pub skipped_damaged_ranges: u64,
    pub torn_tail_bytes: u64,
    /// Records with a good checksum that would not decompress, and their size on disk.
    pub skipped_corrupt_records: u64,
    pub skipped_corrupt_bytes: u64,
    /// Segments deleted by a running gateway before we could read them.
    pub vanished_segments: u64,
}

/// A planned export: the logs as listed, and how many bytes of segments it will scan.
#[derive(Debug)]
pub struct ExportPlan {
    logs: Vec<ClassLog>,
    include_acked: bool,
    /// Bytes of segment files to scan (for a progress bar).
    pub scan_bytes: u64,
    /// Segment files to scan.
    pub scan_segments: usize,
}

/// Lists what an export of `classes` (in that order) from the buffer in `root` will read.
pub fn plan_export(
    root: &Path,
    classes: &[Priority],
    include_acked: bool,
) -> Result<ExportPlan, InspectError> {
    if !root.is_dir() {
        return Err(InspectError::NotFound(root.to_path_buf()));
    }
    let logs = classes
        .iter()
        .map(|p| ClassLog::open(root, *p))
        .collect::<Result<Vec<_>, _>>()?;
    let scanned = || logs.iter().flat_map(|l| l.segments_from(include_acked));
    let scan_bytes = scanned().map(|(_, _, len)| len).sum();
    let scan_segments = scanned().count();
    Ok(ExportPlan {
        logs,
        include_acked,
        scan_bytes,
        scan_segments,
    })
}

impl ExportPlan {
    /// Writes the planned records as plain line protocol to `out`, oldest first per class:
    /// exactly the bytes the gateway would send (decompressed). Damaged bytes and records that
    /// do not decompress are skipped and counted. `progress` gets the bytes scanned.
    pub fn run(
        &self,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ExportSummary, InspectError> {
        let mut summary = ExportSummary::default();
        for log in &self.logs {
            let mut last_segment = None;
            walk(
                log,
                self.include_acked,
                |_| true,
                progress,
                |segment, found| {
                    match found {
                        Found::Record { meta, payload, .. } => {
                            match payload.and_then(|p| decompress(meta, &p)) {
                                Some(lp) => {
                                    out.write_all(&lp).map_err(InspectError::Write)?;
                                    summary.lines +=
                                        lp.iter().filter(|b| **b == b'\n').count() as u64;
                                    summary.bytes += lp.len() as u64;
                                    summary.records += 1;
                                    if last_segment != Some(segment) {
                                        summary.segments += 1;
                                        last_segment = Some(segment);
                                    }
                                }
                                None => {
                                    summary.skipped_corrupt_records += 1;
                                    summary.skipped_corrupt_bytes += meta.record_len();
                                }
                            }
                        }
                        Found::Damaged { bytes, tail, .. } => {
                            summary.skipped_damaged_bytes += bytes;
                            summary.skipped_damaged_ranges += 1;
                            if tail {
                                summary.torn_tail_bytes += bytes;
                            }
                        }
                        Found::Vanished => summary.vanished_segments += 1,
                    }
                    Ok(())
                },
            )?;
        }
        out.flush().map_err(InspectError::Write)?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record;
    use crate::segment::segment_file_name;

    #[test]
    fn cursor_decoding_matches_what_the_gateway_stores() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cursor(dir.path()).unwrap(), CursorState::Missing);
        cursor::store(
            dir.path(),
            cursor::DEFAULT_CONSUMER,
            Pos {
                segment: 7,
                offset: 4242,
            },
        )
        .unwrap();
        assert_eq!(
            read_cursor(dir.path()).unwrap(),
            CursorState::Valid {
                segment: 7,
                offset: 4242
            }
        );
        let path = dir.path().join(cursor::CURSOR_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_cursor(dir.path()).unwrap(), CursorState::Corrupt);
    }

    #[test]
    fn proc_locks_lines_name_the_holder_of_an_inode() {
        let table = "1: POSIX  ADVISORY  WRITE 77 00:2f:555 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4300 08:01:1234567 0 EOF\n";
        assert_eq!(held_in_proc_locks(table, 1_234_567), Some(Some(4242)));
        assert_eq!(
            held_in_proc_locks(table, 555),
            None,
            "POSIX locks are not ours"
        );
        assert_eq!(held_in_proc_locks(table, 1), None);
        assert_eq!(held_in_proc_locks("", 1), None);
    }

    #[test]
    fn timestamps_are_the_last_integer_token() {
        assert_eq!(
            line_timestamp(b"m,t=a f=1i 1700000000000000001"),
            Some(1_700_000_000_000_000_001)
        );
        assert_eq!(line_timestamp(b"m f=-1 -5"), Some(-5));
        assert_eq!(line_timestamp(b"m f=1i"), None);
        assert_eq!(line_timestamp(b"m s=\"a 12\""), None);
        assert_eq!(line_timestamp(b"m f=1 "), None);
        assert_eq!(line_timestamp(b"m f=1 12a"), None);
        assert_eq!(line_timestamp(b"m f=1 -"), None);
        assert_eq!(line_timestamp(b""), None);
    }

    /// Writes a normal-class segment with the given records (lines) and a valid cursor, reads it
    /// while it is being "written" (a torn tail) and after a bit flip.
    #[test]
    fn stats_and_export_count_damage_and_acks_exactly() {
        let root = tempfile::tempdir().unwrap();
        let normal = root.path().join("normal");
        std::fs::create_dir_all(&normal).unwrap();
        let texts: [&[u8]; 4] = [
            b"a f=1i 1000000000\n",
            b"b f=2i 3000000000\nb f=3i 2000000000\n",
            b"c f=4i 4000000000\n",
            b"e f=6i 6000000000\n",
        ];
        let mut seg = Vec::new();
        let mut ends = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let gz = record::gzip(text).unwrap();
            let lines = text.iter().filter(|b| **b == b'\n').count() as u32;
            record::encode(
                &mut seg,
                Priority::Normal,
                lines,
                500 + i as u64,
                text.len() as u32,
                &gz,
            );
            ends.push(seg.len() as u64);
        }
        // Record 0 acked; record 2's checksum broken; the start of a record at the end.
        seg[ends[1] as usize + 40] ^= 0x08;
        let torn = record::gzip(b"d f=5i 5\n").unwrap();
        let mut tail = Vec::new();
        record::encode(&mut tail, Priority::Normal, 1, 9, 9, &torn);
        seg.extend_from_slice(&tail[..20]);
        std::fs::write(normal.join(segment_file_name(3)), &seg).unwrap();
        cursor::store(
            &normal,
            cursor::DEFAULT_CONSUMER,
            Pos {
                segment: 3,
                offset: ends[0],
            },
        )
        .unwrap();

        let mut scanned = 0;
        let report = stats(root.path(), Some(1 << 20), 5_000, &mut |n| scanned += n).unwrap();
        assert_eq!(scanned, seg.len() as u64, "progress covers every byte once");
        assert_eq!(segment_bytes(root.path()).unwrap(), seg.len() as u64);
        let n = &report.normal;
        assert_eq!((n.segments, n.disk_bytes), (1, seg.len() as u64));
        assert_eq!((n.records, n.lines), (3, 4));
        assert_eq!(
            n.acked_not_deleted,
            AckedStats {
                records: 1,
                lines: 1,
                disk_bytes: ends[0]
            }
        );
        assert_eq!((n.unsent.records, n.unsent.lines), (2, 3));
        assert_eq!(n.unsent.disk_bytes, ends[1] - ends[0] + ends[3] - ends[2]);
        assert_eq!(
            n.unsent.line_protocol_bytes,
            (texts[1].len() + texts[3].len()) as u64
        );
        assert_eq!(n.unsent.oldest_reading_ns, Some(2_000_000_000));
        assert_eq!(n.unsent.newest_reading_ns, Some(6_000_000_000));
        assert_eq!(n.unsent.oldest_reading_age_ms, Some(3_000));
        assert_eq!(n.unsent.oldest_append_ms, Some(501));
        assert_eq!(n.damage.damaged_bytes, ends[2] - ends[1]);
        assert_eq!((n.damage.damaged_ranges, n.damage.torn_tails), (1, 1));
        assert_eq!(n.damage.torn_tail_bytes, 20);
        assert_eq!(
            n.damage.would_drop_on_recovery_bytes,
            ends[2] - ends[1] + 20
        );
        assert_eq!(report.urgent, ClassStats::default());

        let mut out = Vec::new();
        let mut scanned = 0;
        let plan = plan_export(root.path(), &CLASSES, true).unwrap();
        assert_eq!(plan.scan_bytes, seg.len() as u64);
        let summary = plan.run(&mut out, &mut |n| scanned += n).unwrap();
        assert_eq!(scanned, seg.len() as u64);
        assert_eq!(out, [texts[0], texts[1], texts[3]].concat());
        assert_eq!(
            (summary.lines, summary.records, summary.segments),
            (4, 3, 1)
        );
        assert_eq!(summary.skipped_damaged_bytes, ends[2] - ends[1] + 20);
        assert_eq!(
            (summary.skipped_damaged_ranges, summary.torn_tail_bytes),
            (2, 20)
        );
        let mut out = Vec::new();
        plan_export(root.path(), &[Priority::Normal], false)
            .unwrap()
            .run(&mut out, &mut |_| {})
            .unwrap();
        assert_eq!(out, [texts[1], texts[3]].concat());
    }

    #[test]
    fn a_record_with_a_good_checksum_that_does_not_decompress_is_skipped_and_counted() {
        let root = tempfile::tempdir().unwrap();
        let urgent = root.path().join("urgent");
        std::fs::create_dir_all(&urgent).unwrap();
        let good = b"u f=1i 7000000\n";
        let mut seg = Vec::new();
        record::encode(&mut seg, Priority::Urgent, 1, 1, 9, b"not gzip");
        let bad_len = seg.len() as u64;
        let gz = record::gzip(good).unwrap();
        record::encode(&mut seg, Priority::Urgent, 1, 2, good.len() as u32, &gz);
        std::fs::write(urgent.join(segment_file_name(1)), &seg).unwrap();

        let report = stats(root.path(), None, 0, &mut |_| {}).unwrap();
        let u = &report.urgent;
        assert_eq!((u.unsent.records, u.unsent.lines), (2, 2));
        assert_eq!(u.damage.undecodable_records, 1);
        assert_eq!(u.unsent.line_protocol_bytes, good.len() as u64);
        assert_eq!(u.unsent.oldest_reading_age_ms, Some(-7));
        let mut out = Vec::new();
        let summary = plan_export(root.path(), &CLASSES, false)
            .unwrap()
            .run(&mut out, &mut |_| {})
            .unwrap();
        assert_eq!(out, good);
        assert_eq!(
            (
                summary.skipped_corrupt_records,
                summary.skipped_corrupt_bytes
            ),
            (1, bad_len)
        );
        assert_eq!(summary.skipped_damaged_bytes, 0);
    }

    mod arbitrary_bytes {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Whatever a segment and a cursor hold, inspection never panics, and stats and
            /// export agree on what is unsent.
            #[test]
            fn stats_and_export_agree_on_any_bytes(
                garbage in proptest::collection::vec(any::<u8>(), 0..600),
                cut in 0usize..600,
                cursor_bytes in proptest::collection::vec(any::<u8>(), 0..40),
                keep_cursor in any::<bool>(),
            ) {
                let root = tempfile::tempdir().unwrap();
                let normal = root.path().join("normal");
                std::fs::create_dir_all(&normal).unwrap();
                let mut seg = Vec::new();
                for (i, text) in [&b"a f=1i 1\n"[..], b"b f=2i 2\nb f=3i 3\n"].iter().enumerate() {
                    let gz = record::gzip(text).unwrap();
                    let lines = text.iter().filter(|b| **b == b'\n').count() as u32;
                    record::encode(&mut seg, Priority::Normal, lines, i as u64, text.len() as u32, &gz);
                }
                seg.extend_from_slice(&garbage);
                let mut tail = seg.clone();
                tail.truncate(cut.min(seg.len()));
                seg.extend_from_slice(&tail);
                std::fs::write(normal.join(segment_file_name(5)), &seg).unwrap();
                if keep_cursor {
                    std::fs::write(normal.join(cursor::CURSOR_FILE), &cursor_bytes).unwrap();
                }
                let report = stats(root.path(), Some(1), 0, &mut |_| {}).unwrap();
                let mut out = Vec::new();
                let summary = plan_export(root.path(), &CLASSES, false)
                    .unwrap()
                    .run(&mut out, &mut |_| {})
                    .unwrap();
                let n = &report.normal;
                prop_assert_eq!(summary.bytes, n.unsent.line_protocol_bytes);
                prop_assert_eq!(out.len() as u64, summary.bytes);
                prop_assert_eq!(summary.records + summary.skipped_corrupt_records, n.unsent.records);
                prop_assert_eq!(
                    n.damage.would_drop_on_recovery_bytes,
                    n.damage.damaged_bytes + n.damage.torn_tail_bytes
                );
                prop_assert!(n.disk_bytes == seg.len() as u64);
            }
        }
    }
}
