//! Recovery on open: rebuild the in-memory picture from whatever the disk holds after a crash.
//!
//! Every segment is scanned record by record. Complete records with a good CRC are kept; a damaged
//! range in the middle (flipped bits) is skipped by resynchronising on the next valid record, and
//! whatever follows it is kept; bytes after the last valid record (a torn write at power loss)
//! are truncated away. Nothing in any file can make this panic.
//!
//! Then each consumer's ack cursor is restored: a corrupt one falls back to "nothing acked"
//! (re-sent rather than lost). A consumer without a cursor file is new and starts where its
//! [`ConsumerStart`] says, except that the [`DEFAULT_CONSUMER`] (whose file is the single-output
//! buffer's `ack.cursor`) and every consumer of a class no cursor file exists for at all (a
//! fresh buffer, or one written but never acknowledged) start at the oldest data, as a
//! single-output buffer always did. The new cursors are written before [`open`](super::open)
//! returns, so a crash right after cannot move a new consumer's start. Cursor files of
//! consumers no longer configured are deleted (logged): they stop holding data on disk.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use std::collections::BTreeMap;

use super::cursor::{self, LoadedCursor, Pos, DEFAULT_CONSUMER};
use super::segment::{fsync_dir, list_segments, SegmentScanner, Step};
use super::state::{
    class_dir_name, class_index, delete_files, ClassState, ConsumerCursor, ConsumerId, SegMeta,
    State,
};
use super::{BufferError, ConsumerSpec, ConsumerStart, RecoveryReport};
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
    /// For each offset asked about: lines of the records that start before it.
    lines_before: Vec<u64>,
    dropped_bytes: u64,
    damaged_ranges: u64,
}

fn scan_segment(path: &Path, cursor_offsets: &[u64]) -> io::Result<ScannedSegment> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let truncate_handle = file.try_clone()?;
    let mut scanner = SegmentScanner::new(file, len);
    let mut scanned = ScannedSegment {
        meta: SegMeta::default(),
        lines_before: vec![0; cursor_offsets.len()],
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
                for (c, lines) in cursor_offsets.iter().zip(&mut scanned.lines_before) {
                    if at < *c {
                        *lines += u64::from(meta.lines);
                    }
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

/// A consumer's cursor as found on disk, before the scan.
enum Found {
    At(Pos),
    /// No file (or a corrupt one, which is counted and logged): decided after the scan.
    New {
        corrupt: bool,
    },
}

fn recover_class(
    root: &Path,
    priority: Priority,
    consumers: &[(ConsumerId, ConsumerSpec)],
    report: &mut RecoveryReport,
) -> Result<ClassState, BufferError> {
    let dir = root.join(class_dir_name(priority));
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let mut class = ClassState::new(dir.clone());

    // Cursor files of consumers no longer configured: they stop holding data.
    let on_disk = cursor::list(&dir).map_err(|e| io_err(&dir, e))?;
    let any_cursor = !on_disk.is_empty();
    for name in &on_disk {
        if !consumers.iter().any(|(_, spec)| spec.name == *name) {
            tracing::info!(
                class = class_dir_name(priority),
                output = %name,
                "buffer: output no longer configured; its ack cursor is deleted and it no longer \
                 holds data on disk"
            );
            cursor::remove(&dir, name).map_err(|e| io_err(&dir, e))?;
        }
    }

    let mut found = Vec::with_capacity(consumers.len());
    for (_, spec) in consumers {
        found.push(
            match cursor::load(&dir, &spec.name).map_err(|e| io_err(&dir, e))? {
                LoadedCursor::Valid(pos) => Found::At(pos),
                LoadedCursor::Missing => Found::New { corrupt: false },
                LoadedCursor::Corrupt => {
                    tracing::warn!(
                        class = class_dir_name(priority),
                        output = %spec.name,
                        "buffer ack cursor is corrupt: re-sending everything still on disk to \
                         this output"
                    );
                    report.cursor_fallbacks += 1;
                    Found::New { corrupt: true }
                }
            },
        );
    }
    let known: Vec<Pos> = found
        .iter()
        .filter_map(|f| match f {
            Found::At(pos) => Some(*pos),
            Found::New { .. } => None,
        })
        .collect();

    let mut lines_before: Vec<u64> = vec![0; known.len()];
    let mut removed_empty = Vec::new();
    for (id, path) in list_segments(&dir).map_err(|e| io_err(&dir, e))? {
        let offsets: Vec<u64> = known
            .iter()
            .map(|pos| if pos.segment == id { pos.offset } else { 0 })
            .collect();
        let scanned = scan_segment(&path, &offsets).map_err(|e| io_err(&path, e))?;
        report.dropped_bytes += scanned.dropped_bytes;
        report.dropped_records_hint += scanned.damaged_ranges;
        for ((pos, lines), before) in known
            .iter()
            .zip(&mut lines_before)
            .zip(&scanned.lines_before)
        {
            if pos.segment == id {
                *lines = *before;
            }
        }
        if scanned.meta.records == 0 {
            removed_empty.push(path);
            continue;
        }
        class.segments.insert(id, scanned.meta);
    }

    // Place the new consumers, and write their cursors now.
    let end = class.end();
    let end_lines = class
        .segments
        .get(&end.segment)
        .map_or(0, |meta| meta.lines);
    let mut known_lines = lines_before.into_iter();
    for ((id, spec), found) in consumers.iter().zip(found) {
        let cursor = match found {
            Found::At(pos) => ConsumerCursor::new(&spec.name, pos, known_lines.next().unwrap_or(0)),
            Found::New { corrupt } => {
                let oldest = corrupt
                    || !any_cursor
                    || spec.name == DEFAULT_CONSUMER
                    || spec.start == ConsumerStart::Oldest;
                let cursor = if oldest {
                    ConsumerCursor::new(&spec.name, Pos::default(), 0)
                } else {
                    ConsumerCursor::new(&spec.name, end, end_lines)
                };
                if !corrupt && any_cursor {
                    tracing::info!(
                        class = class_dir_name(priority),
                        output = %spec.name,
                        start = if oldest { "oldest" } else { "end" },
                        "buffer: new output; it starts at the {} of the buffered data",
                        if oldest { "oldest" } else { "end" }
                    );
                }
                cursor::store(&dir, &spec.name, cursor.ack).map_err(|e| io_err(&dir, e))?;
                cursor
            }
        };
        class.consumers.insert(*id, cursor);
    }

    // Data before every cursor may go now; empty segments too.
    let mut to_delete = class.take_acked_segments();
    to_delete.extend(removed_empty);
    delete_files(&dir, &to_delete).map_err(|e| io_err(&dir, e))?;
    fsync_dir(&dir).map_err(|e| io_err(&dir, e))?;
    report.segments += class.segments.len();
    report.records += class.segments.values().map(|m| m.records).sum::<u64>();
    report.lines += class.segments.values().map(|m| m.lines).sum::<u64>();
    // Unsent for at least one consumer.
    report.unsent_lines += class
        .segments
        .iter()
        .map(|(id, meta)| class.unsent_lines_in_any(*id, meta))
        .sum::<u64>();
    for cursor in class.consumers.values() {
        *report
            .unsent_lines_by_consumer
            .entry(cursor.name.clone())
            .or_default() += class.unsent_lines(cursor);
    }
    Ok(class)
}

/// Scans `root` (creating it and the class directories if needed) and rebuilds the state.
pub(crate) fn recover(root: &Path, consumers: &[ConsumerSpec]) -> Result<Recovered, BufferError> {
    std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
    let mut report = RecoveryReport::default();
    let ids: Vec<(ConsumerId, ConsumerSpec)> = (0..).zip(consumers.iter().cloned()).collect();
    let normal = recover_class(root, Priority::Normal, &ids, &mut report)?;
    let urgent = recover_class(root, Priority::Urgent, &ids, &mut report)?;
    // New segment ids must stay above every id on disk and every id a cursor names, or a new
    // segment could be mistaken for acknowledged data.
    let next_segment_id = [&normal, &urgent]
        .iter()
        .flat_map(|c| {
            let last = c.segments.keys().next_back().copied().unwrap_or(0);
            let cursors = c
                .consumers
                .values()
                .map(|k| k.ack.segment)
                .max()
                .unwrap_or(0);
            [last, cursors]
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
        next_consumer: ConsumerId::try_from(ids.len()).unwrap_or(ConsumerId::MAX),
        consumer_dropped: BTreeMap::new(),
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

/// Start position of consumer `id`'s reader in a class: its cursor.
pub(crate) fn start_position(class: &ClassState, id: ConsumerId) -> Pos {
    class.consumer(id).map(|c| c.ack).unwrap_or_default()
}
