//! The reader: hands out batches of committed records, urgent class first, and persists acks.
//!
//! Each class has a read position (how far batches have been handed out) and an ack cursor (how
//! far the store has confirmed). Batches may be acknowledged out of order; the persisted cursor
//! only ever advances over a contiguous prefix of acknowledged batches, so a crash re-sends
//! whatever was not confirmed (the same records, byte for byte) and loses nothing.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::cursor::{self, Pos};
use super::segment::{SegmentScanner, Step};
use super::state::{class_dir_name, class_index, delete_files, Shared, CLASSES_URGENT_FIRST};
use super::{BufferError, BufferStats};
use crate::model::Priority;

/// A batch body stops growing past this many compressed bytes (one record may exceed it).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Whole records of one class, ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    pub priority: Priority,
    pub lines: u32,
    /// Concatenated gzip members: a valid multi-member gzip stream (send it as is with
    /// `Content-Encoding: gzip`).
    pub body_gz: Vec<u8>,
    id: u64,
    segment: u64,
    start: u64,
    end: u64,
}

impl Batch {
    /// The line protocol of the batch, uncompressed (for splitting a batch the store rejected).
    pub fn line_protocol(&self) -> Result<Vec<u8>, BufferError> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(self.body_gz.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| BufferError::io(std::path::Path::new("batch body"), e))?;
        Ok(out)
    }

    /// Where the batch lies: `(segment id, start offset, end offset)`, for logs.
    pub fn position(&self) -> (u64, u64, u64) {
        (self.segment, self.start, self.end)
    }
}

/// A batch handed out and not yet part of the persisted cursor.
#[derive(Debug)]
struct Inflight {
    id: u64,
    end: Pos,
    lines: u64,
    acked: bool,
}

#[derive(Debug)]
struct ReaderClass {
    read: Pos,
    inflight: VecDeque<Inflight>,
}

/// The output side of the buffer (one per gateway).
#[derive(Debug)]
pub struct BufferReader {
    pub(super) shared: Arc<Shared>,
    committed: watch::Receiver<u64>,
    /// Indexed by `class_index`.
    classes: [ReaderClass; 2],
    next_batch_id: u64,
}

/// What to read next in one class.
struct ReadPlan {
    path: PathBuf,
    segment: u64,
    offset: u64,
    limit: u64,
}

enum ReadOutcome {
    Records {
        end: u64,
        body: Vec<u8>,
        lines: u32,
        records: u32,
    },
    /// The segment file is gone (dropped to make room, or deleted behind our back).
    Vanished,
}

fn read_records(plan: &ReadPlan, max_lines: u32) -> io::Result<ReadOutcome> {
    let file = match File::open(&plan.path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome::Vanished),
        Err(e) => return Err(e),
    };
    let mut scanner = SegmentScanner::new(file, plan.limit);
    let mut offset = plan.offset;
    let mut body = Vec::new();
    let mut lines = 0u32;
    let mut records = 0u32;
    loop {
        match scanner.next(offset)? {
            Step::Record { offset: at, meta } => {
                if records > 0
                    && (lines.saturating_add(meta.lines) > max_lines
                        || body.len() + meta.payload_len as usize > MAX_BATCH_BYTES)
                {
                    break;
                }
                body.extend_from_slice(&scanner.payload(at, &meta)?);
                lines = lines.saturating_add(meta.lines);
                records += 1;
                offset = at + meta.record_len();
            }
            Step::Skipped { from, to } => {
                tracing::warn!(
                    segment = %plan.path.display(),
                    from,
                    to,
                    "buffer reader skipped damaged bytes"
                );
                offset = to;
            }
            Step::End => break,
        }
    }
    Ok(ReadOutcome::Records {
        end: offset,
        body,
        lines,
        records,
    })
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, (io::Error, &'static str)> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err((e, what)),
        Err(join) => Err((io::Error::other(join.to_string()), what)),
    }
}

impl BufferReader {
    pub(crate) fn new(shared: Arc<Shared>, start: [Pos; 2]) -> Self {
        let committed = shared.committed.subscribe();
        BufferReader {
            shared,
            committed,
            classes: start.map(|read| ReaderClass {
                read,
                inflight: VecDeque::new(),
            }),
            next_batch_id: 0,
        }
    }

    /// Waits until unsent data exists and returns the next batch of whole records of one class,
    /// up to about `max_lines` lines (at least one record). Urgent data comes first whenever
    /// both classes have some. Batches handed out but not acked are not handed out again in
    /// this process; after a restart they are.
    pub async fn next_batch(&mut self, max_lines: u32) -> Result<Batch, BufferError> {
        let max_lines = max_lines.max(1);
        loop {
            self.committed.borrow_and_update();
            for priority in CLASSES_URGENT_FIRST {
                if let Some(batch) = self.read_class(priority, max_lines).await? {
                    return Ok(batch);
                }
            }
            if self.committed.changed().await.is_err() {
                return Err(BufferError::Closed);
            }
        }
    }

    /// The next committed, unread position of a class, or `None` if it has nothing unread.
    fn plan(&mut self, priority: Priority) -> Option<ReadPlan> {
        let state = self.shared.lock();
        let class = state.class(priority);
        let reader = &mut self.classes[class_index(priority)];
        loop {
            let (&id, meta) = class.segments.range(reader.read.segment..).next()?;
            if id != reader.read.segment {
                // The segment we were in is gone (acked, or dropped to make room): go on.
                reader.read = Pos {
                    segment: id,
                    offset: 0,
                };
            }
            if reader.read.offset < meta.size {
                return Some(ReadPlan {
                    path: class.segment_path(id),
                    segment: id,
                    offset: reader.read.offset,
                    limit: meta.size,
                });
            }
            if !meta.sealed {
                return None;
            }
            let (&next, _) = class.segments.range(id + 1..).next()?;
            reader.read = Pos {
                segment: next,
                offset: 0,
            };
        }
    }

    async fn read_class(
        &mut self,
        priority: Priority,
        max_lines: u32,
    ) -> Result<Option<Batch>, BufferError> {
        while let Some(plan) = self.plan(priority) {
            let plan = Arc::new(plan);
            let reading = Arc::clone(&plan);
            let outcome = blocking("read", move || read_records(&reading, max_lines))
                .await
                .map_err(|(e, _)| BufferError::io(&plan.path, e))?;
            let reader = &mut self.classes[class_index(priority)];
            match outcome {
                ReadOutcome::Vanished => {
                    reader.read = Pos {
                        segment: plan.segment + 1,
                        offset: 0,
                    };
                }
                ReadOutcome::Records {
                    end, records: 0, ..
                } => {
                    // Only damaged bytes: step over them.
                    reader.read.offset = end.max(plan.offset + 1);
                }
                ReadOutcome::Records {
                    end, body, lines, ..
                } => {
                    let id = self.next_batch_id;
                    self.next_batch_id += 1;
                    let end_pos = Pos {
                        segment: plan.segment,
                        offset: end,
                    };
                    reader.read = end_pos;
                    reader.inflight.push_back(Inflight {
                        id,
                        end: end_pos,
                        lines: u64::from(lines),
                        acked: false,
                    });
                    return Ok(Some(Batch {
                        priority,
                        lines,
                        body_gz: body,
                        id,
                        segment: plan.segment,
                        start: plan.offset,
                        end,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The store confirmed `batch`: persist the ack (write temp, fsync, rename, fsync dir) and
    /// delete segments that are wholly acked. Acking a batch twice is harmless; a batch acked
    /// before an earlier one is persisted once the earlier one is acked too.
    pub async fn ack(&mut self, batch: &Batch) -> Result<(), BufferError> {
        let priority = batch.priority;
        let reader = &mut self.classes[class_index(priority)];
        let Some(entry) = reader.inflight.iter_mut().find(|e| e.id == batch.id) else {
            return Ok(());
        };
        entry.acked = true;
        let mut new_ack = None;
        let mut acked: Vec<(u64, u64)> = Vec::new();
        while reader.inflight.front().is_some_and(|e| e.acked) {
            if let Some(done) = reader.inflight.pop_front() {
                new_ack = Some(done.end);
                acked.push((done.end.segment, done.lines));
            }
        }
        let Some(pos) = new_ack else {
            return Ok(());
        };
        let dir = {
            let mut state = self.shared.lock();
            let class = state.class_mut(priority);
            if pos > class.ack {
                let in_new_segment: u64 = acked
                    .iter()
                    .filter(|(segment, _)| *segment == pos.segment)
                    .map(|(_, lines)| lines)
                    .sum();
                if pos.segment == class.ack.segment {
                    class.ack_lines_in_segment += in_new_segment;
                } else {
                    class.ack_lines_in_segment = in_new_segment;
                }
                class.ack = pos;
            }
            class.dir.clone()
        };
        let total: u64 = acked.iter().map(|(_, lines)| lines).sum();
        metrics::counter!("buffer_acked_lines_total", "class" => class_dir_name(priority))
            .increment(total);

        let cursor_dir = dir.clone();
        let fsyncs = blocking("store cursor", move || cursor::store(&cursor_dir, pos))
            .await
            .map_err(|(e, _)| BufferError::io(&dir, e))?;
        self.shared.meta_fsyncs.fetch_add(fsyncs, Ordering::Relaxed);

        // Only once the cursor is durable may the data before it go.
        let to_delete = self.shared.lock().class_mut(priority).take_acked_segments();
        if !to_delete.is_empty() {
            let delete_dir = dir.clone();
            let fsyncs = blocking("delete segments", move || {
                delete_files(&delete_dir, &to_delete)
            })
            .await
            .map_err(|(e, _)| BufferError::io(&dir, e))?;
            self.shared.meta_fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        }
        self.shared.publish_gauges();
        Ok(())
    }

    /// Bytes on disk, unsent lines and bytes, age of the oldest unsent record, drop counters.
    pub fn stats(&self) -> BufferStats {
        self.shared.stats()
    }
}
