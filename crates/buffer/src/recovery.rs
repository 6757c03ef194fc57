//! Recovery on open: rebuild the in-memory picture from whatever the disk holds after a crash.
//!
//! Every segment is scanned record by record. Complete records with a good CRC are kept; a damaged
//! range in the middle (flipped bits) is skipped by resynchronising on the next valid record, and
//! whatever follows it is kept; bytes after the last valid record (a torn write at power loss)
//! are truncated away. Nothing in any file can make this panic. The ack cursor is then restored;
//! if it is missing or corrupt, everything on disk counts as unsent (re-sent rather than lost).

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use super::cursor::{self, LoadedCursor, Pos};
use super::segment::{fsync_dir, list_segments, SegmentScanner, Step};
use super::state::{class_dir_name, class_index, delete_files, ClassState, SegMeta, State};
use super::{BufferError, RecoveryReport};
use ioc_model::Priority;

/// The result of recovery: the state to start from and the id the next new segment gets.
pub(crate) struct Recovered {
    pub state: State,
    pub report: RecoveryReport,
    pub next_segment_id: u64,
}

/// What scanning one segment found.
struct ScannedSegment {
    meta: SegMeta,
    /// Lines of the records before `lines_before` offset (for the cursor's segment).
    lines_before_cursor: u64,
    dropped_bytes: u64,
    damaged_ranges: u64,
}

fn scan_segment(path: &Path, cursor_offset: Option<u64>) -> io::Result<ScannedSegment> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let truncate_handle = file.try_clone()?;
    let mut scanner = SegmentScanner::new(file, len);
    let mut scanned = ScannedSegment {
        meta: SegMeta::default(),
        lines_before_cursor: 0,
        dropped_bytes: 0,
        damaged_ranges: 0,
    };
    let mut offset = 0;
    let mut valid_end = 0;
    loop {
        match scanner.next(offset)? {
            Step::Record { offset: at, meta } => {
                scanned
                    .meta
                    .add_record(at, meta.record_len(), meta.lines, meta.append_ms);
                if cursor_offset.is_some_and(|c| at < c) {
                    scanned.lines_before_cursor += u64::from(meta.lines);
                }
                offset = at + meta.record_len();
                valid_end = offset;
            }
            Step::Skipped { from, to } => {
                tracing::warn!(
                    segment = %path.display(),
                    from,
                    to,
                    "buffer recovery: skipping damaged bytes"
                );
                scanned.dropped_bytes += to - from;
                scanned.damaged_ranges += 1;
                offset = to;
            }
            Step::End => break,
        }
    }
    if valid_end < len {
        // A torn or damaged tail: cut it off so appends and readers never see it again.
        truncate_handle.set_len(valid_end)?;
        truncate_handle.sync_all()?;
    }
    scanned.meta.size = valid_end;
    scanned.meta.sealed = true;
    Ok(scanned)
}

fn io_err(path: &Path, source: io::Error) -> BufferError {
    BufferError::io(path, source)
}

fn recover_class(
    root: &Path,
    priority: Priority,
    report: &mut RecoveryReport,
) -> Result<ClassState, BufferError> {
    let dir = root.join(class_dir_name(priority));
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let mut class = ClassState::new(dir.clone());

    let cursor = match cursor::load(&dir).map_err(|e| io_err(&dir, e))? {
        LoadedCursor::Valid(pos) => Some(pos),
        LoadedCursor::Missing => None,
        LoadedCursor::Corrupt => {
            tracing::warn!(
                class = class_dir_name(priority),
                "buffer ack cursor is corrupt: re-sending everything still on disk"
            );
            report.cursor_fallbacks += 1;
            None
        }
    };
    class.ack = cursor.unwrap_or_default();

    let mut removed_empty = Vec::new();
    for (id, path) in list_segments(&dir).map_err(|e| io_err(&dir, e))? {
        let cursor_offset = cursor.filter(|c| c.segment == id).map(|c| c.offset);
        let scanned = scan_segment(&path, cursor_offset).map_err(|e| io_err(&path, e))?;
        report.dropped_bytes += scanned.dropped_bytes;
        report.dropped_records_hint += scanned.damaged_ranges;
        if cursor_offset.is_some() {
            class.ack_lines_in_segment = scanned.lines_before_cursor;
        }
        if scanned.meta.records == 0 {
            removed_empty.push(path);
            continue;
        }
        class.segments.insert(id, scanned.meta);
    }
    // Data before the cursor may go now; empty segments too.
    let mut to_delete = class.take_acked_segments();
    to_delete.extend(removed_empty);
    delete_files(&dir, &to_delete).map_err(|e| io_err(&dir, e))?;
    fsync_dir(&dir).map_err(|e| io_err(&dir, e))?;
    report.segments += class.segments.len();
    report.records += class.segments.values().map(|m| m.records).sum::<u64>();
    report.lines += class.segments.values().map(|m| m.lines).sum::<u64>();
    report.unsent_lines += class.unsent_lines();
    Ok(class)
}

/// Scans `root` (creating it and the class directories if needed) and rebuilds the state.
pub(crate) fn recover(root: &Path) -> Result<Recovered, BufferError> {
    std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
    let mut report = RecoveryReport::default();
    let normal = recover_class(root, Priority::Normal, &mut report)?;
    let urgent = recover_class(root, Priority::Urgent, &mut report)?;
    // New segment ids must stay above every id on disk and every id a cursor names, or a new
    // segment could be mistaken for acknowledged data.
    let next_segment_id = [&normal, &urgent]
        .iter()
        .flat_map(|c| {
            let last = c.segments.keys().next_back().copied().unwrap_or(0);
            [last, c.ack.segment]
        })
        .max()
        .unwrap_or(0)
        + 1;
    let mut classes = [normal, urgent];
    // Keep the array in `class_index` order whatever the recovery order above.
    if class_index(Priority::Normal) != 0 {
        classes.swap(0, 1);
    }
    if report.dropped_bytes > 0 {
        metrics::counter!("buffer_recovery_dropped_bytes_total").increment(report.dropped_bytes);
        tracing::warn!(
            dropped_bytes = report.dropped_bytes,
            damaged_ranges = report.dropped_records_hint,
            "buffer recovery dropped damaged data"
        );
    }
    let state = State {
        classes,
        dropped_oldest_lines: 0,
        dropped_oldest_segments: 0,
        recovery_dropped_bytes: report.dropped_bytes,
        append_errors: 0,
    };
    tracing::info!(
        segments = report.segments,
        records = report.records,
        lines = report.lines,
        unsent_lines = report.unsent_lines,
        "buffer recovered"
    );
    Ok(Recovered {
        state,
        report,
        next_segment_id,
    })
}

/// Start position of a class's reader: the cursor (segments before it are gone).
pub(crate) fn start_position(class: &ClassState) -> Pos {
    class.ack
}
