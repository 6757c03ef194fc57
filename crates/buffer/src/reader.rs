//! The reader: one per consumer (output); hands out batches of committed records, urgent class
//! first, and persists that consumer's acks.
//!
//! Each reader has, per class, its own read lanes (how far batches have been handed out) and its
//! own ack cursor (how far its store has confirmed); readers never wait for one another. Batches may be acknowledged out of order; the persisted cursor
//! only ever advances over a contiguous prefix of acknowledged batches, so a crash re-sends
//! whatever was not confirmed (the same records, byte for byte) and loses nothing.
//!
//! A segment is deleted once every consumer's persisted cursor has passed it, with one exception: when the
//! cursor cannot be written (a full disk has no room even for it), wholly delivered segments are
//! deleted first to make room. That is safe: after a crash the older cursor on disk only makes
//! the segments after it be sent again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::cursor::{self, Pos};
use super::segment::{SegmentScanner, Step};
use super::state::{
    class_dir_name, class_index, delete_files, Actor, ConsumerCursor, ConsumerId, Shared,
    CLASSES_URGENT_FIRST,
};
use super::{check_consumer_names, BufferError, BufferStats, ConsumerStart, ConsumerStats};
use ioc_model::Priority;

/// A batch body stops growing past this many compressed bytes (one record may exceed it).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Unread bytes (compressed, ~20 bytes a reading) behind which a class starts interleaving its
/// newest data with the backlog.
pub(super) const LIVE_LANE_MIN_BACKLOG: u64 = 256 * 1024;

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

/// A reading position within a class's log.
#[derive(Debug, Clone, Copy)]
struct Lane {
    /// Where the next read starts.
    pos: Pos,
    /// End of the last batch this lane handed out (or the lane's start): the `from` of its
    /// next batch, so the batches of a lane chain without gaps.
    chain: Pos,
}

impl Lane {
    fn at(pos: Pos) -> Self {
        Lane { pos, chain: pos }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneKind {
    /// Oldest unsent data first.
    Backlog,
    /// Data committed after the backlog was noticed.
    Live,
}

#[derive(Debug)]
struct ReaderClass {
    backlog: Lane,
    /// While a large backlog drains, the newest data is read by this second lane, batch about
    /// batch with the backlog; the backlog lane stops at `live_start`, then the lanes merge.
    live: Option<Lane>,
    live_start: Pos,
    live_turn: bool,
    /// Handed-out batches by their `from` position.
    inflight: BTreeMap<Pos, Inflight>,
    /// End of the contiguous prefix of acknowledged batches.
    cursor: Pos,
}

impl ReaderClass {
    fn new(start: Pos) -> Self {
        ReaderClass {
            backlog: Lane::at(start),
            live: None,
            live_start: start,
            live_turn: false,
            inflight: BTreeMap::new(),
            cursor: start,
        }
    }

    fn lane_mut(&mut self, kind: LaneKind) -> Option<&mut Lane> {
        match kind {
            LaneKind::Backlog => Some(&mut self.backlog),
            LaneKind::Live => self.live.as_mut(),
        }
    }

    /// Moves the cursor over acknowledged batches that start exactly where it stands; returns
    /// the `(segment, lines)` of each batch passed.
    fn advance_cursor(&mut self) -> Vec<(u64, u64)> {
        let mut passed = Vec::new();
        while let Some(entry) = self.inflight.first_entry() {
            if *entry.key() != self.cursor || !entry.get().acked {
                break;
            }
            let done = entry.remove();
            self.cursor = done.end;
            passed.push((done.end.segment, done.lines));
        }
        passed
    }
}

/// The output side of the buffer: one per consumer (output).
#[derive(Debug)]
pub struct BufferReader {
    pub(super) shared: Arc<Shared>,
    consumer: ConsumerId,
    name: String,
    committed: watch::Receiver<u64>,
    urgent_committed: watch::Receiver<u64>,
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

/// Runs disk work `f` on the blocking pool, marked as the reader's disk activity while it runs.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    what: &'static str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, (io::Error, &'static str)> {
    let shared = Arc::clone(shared);
    let task = move || {
        let _busy = shared.activity.begin(Actor::Reader);
        f()
    };
    match tokio::task::spawn_blocking(task).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err((e, what)),
        Err(join) => Err((io::Error::other(join.to_string()), what)),
    }
}

/// What [`BufferReader::plan`] found for a lane.
enum Planned {
    Read(ReadPlan),
    /// Nothing committed to read yet.
    Nothing,
    /// The backlog lane has read everything before the live lane's start.
    ReachedStop,
}

impl BufferReader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        consumer: ConsumerId,
        name: String,
        start: [Pos; 2],
    ) -> Self {
        let committed = shared.committed.subscribe();
        let urgent_committed = shared.urgent_committed.subscribe();
        BufferReader {
            shared,
            consumer,
            name,
            committed,
            urgent_committed,
            classes: start.map(ReaderClass::new),
            next_batch_id: 0,
        }
    }

    /// Waits until unsent data exists and returns the next batch of whole records of one class,
    /// up to about `max_lines` lines (at least one record). Urgent data comes first whenever
    /// both classes have some. Within a class, once more than 256 KiB (compressed) is waiting,
    /// batches of data committed since then alternate with batches of the backlog, so the
    /// live feed stays fresh during a drain. Batches handed out but not acked are not handed out
    /// again in this process; after a restart they are.
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

    /// [`BufferReader::next_batch`] of one class only: the forwarder's urgent lane, which
    /// sends urgent data while a normal batch is in retry, and its share for normal data
    /// under a steady urgent stream. Cancel-safe, as `next_batch` is.
    pub async fn next_batch_of(
        &mut self,
        priority: Priority,
        max_lines: u32,
    ) -> Result<Batch, BufferError> {
        let max_lines = max_lines.max(1);
        loop {
            self.committed.borrow_and_update();
            if let Some(batch) = self.read_class(priority, max_lines).await? {
                return Ok(batch);
            }
            if self.committed.changed().await.is_err() {
                return Err(BufferError::Closed);
            }
        }
    }

    /// Resolves at the next commit of urgent data after the last call (at once when one came
    /// since): what lets a forwarder that waits for a batch to fill send urgent data at once.
    pub async fn urgent_committed(&mut self) -> Result<(), BufferError> {
        self.urgent_committed
            .changed()
            .await
            .map_err(|_| BufferError::Closed)
    }

    /// Opens a live lane at the end of committed data if the backlog lane is far behind.
    fn maybe_start_live_lane(&mut self, priority: Priority) {
        let reader = &mut self.classes[class_index(priority)];
        if reader.live.is_some() {
            return;
        }
        let state = self.shared.lock();
        let class = state.class(priority);
        let from = reader.backlog.pos;
        let unread: u64 = class
            .segments
            .range(from.segment..)
            .map(|(id, meta)| {
                if *id == from.segment {
                    meta.size.saturating_sub(from.offset)
                } else {
                    meta.size
                }
            })
            .sum();
        if unread <= LIVE_LANE_MIN_BACKLOG {
            return;
        }
        let Some((&last, meta)) = class.segments.iter().next_back() else {
            return;
        };
        let start = Pos {
            segment: last,
            offset: meta.size,
        };
        tracing::info!(
            class = class_dir_name(priority),
            backlog_bytes = unread,
            "buffer backlog: interleaving the newest data with the drain"
        );
        reader.live_start = start;
        reader.live = Some(Lane::at(start));
        reader.live_turn = true;
    }

    /// The next committed, unread range of a lane.
    fn plan(&mut self, priority: Priority, kind: LaneKind) -> Planned {
        let state = self.shared.lock();
        let class = state.class(priority);
        let reader = &mut self.classes[class_index(priority)];
        let stop = match kind {
            LaneKind::Backlog => reader.live.map(|_| reader.live_start),
            LaneKind::Live => None,
        };
        let Some(lane) = reader.lane_mut(kind) else {
            return Planned::Nothing;
        };
        let nothing = if stop.is_some() {
            Planned::ReachedStop
        } else {
            Planned::Nothing
        };
        loop {
            let Some((&id, meta)) = class.segments.range(lane.pos.segment..).next() else {
                return nothing;
            };
            if id != lane.pos.segment {
                // The segment we were in is gone (acked, or dropped to make room): go on.
                lane.pos = Pos {
                    segment: id,
                    offset: 0,
                };
            }
            let mut limit = meta.size;
            if let Some(stop) = stop {
                if lane.pos >= stop {
                    return Planned::ReachedStop;
                }
                if id == stop.segment {
                    limit = limit.min(stop.offset);
                }
            }
            if lane.pos.offset < limit {
                return Planned::Read(ReadPlan {
                    path: class.segment_path(id),
                    segment: id,
                    offset: lane.pos.offset,
                    limit,
                });
            }
            if !meta.sealed {
                return nothing;
            }
            let Some((&next, _)) = class.segments.range(id + 1..).next() else {
                return nothing;
            };
            lane.pos = Pos {
                segment: next,
                offset: 0,
            };
        }
    }

    /// The backlog lane is done: the live lane becomes the only lane.
    fn merge_lanes(&mut self, priority: Priority) {
        let reader = &mut self.classes[class_index(priority)];
        let Some(live) = reader.live.take() else {
            return;
        };
        // Everything in [backlog.chain, live_start) was handed out: bridge the gap so the
        // cursor can pass once those batches are acked.
        if reader.backlog.chain < reader.live_start {
            reader.inflight.insert(
                reader.backlog.chain,
                Inflight {
                    id: u64::MAX,
                    end: reader.live_start,
                    lines: 0,
                    acked: true,
                },
            );
        }
        reader.backlog = live;
        tracing::info!(
            class = class_dir_name(priority),
            "buffer backlog drained: back to one lane"
        );
    }

    async fn read_class(
        &mut self,
        priority: Priority,
        max_lines: u32,
    ) -> Result<Option<Batch>, BufferError> {
        self.maybe_start_live_lane(priority);
        let reader = &self.classes[class_index(priority)];
        let order = if reader.live.is_some() && reader.live_turn {
            [LaneKind::Live, LaneKind::Backlog]
        } else {
            [LaneKind::Backlog, LaneKind::Live]
        };
        for kind in order {
            if let Some(batch) = self.read_lane(priority, kind, max_lines).await? {
                let reader = &mut self.classes[class_index(priority)];
                reader.live_turn = kind == LaneKind::Backlog;
                return Ok(Some(batch));
            }
        }
        // Merging may have made the live lane's data readable through the backlog lane.
        match self
            .read_lane(priority, LaneKind::Backlog, max_lines)
            .await?
        {
            Some(batch) => Ok(Some(batch)),
            None => Ok(None),
        }
    }

    async fn read_lane(
        &mut self,
        priority: Priority,
        kind: LaneKind,
        max_lines: u32,
    ) -> Result<Option<Batch>, BufferError> {
        loop {
            let plan = match self.plan(priority, kind) {
                Planned::Read(plan) => plan,
                Planned::Nothing => return Ok(None),
                Planned::ReachedStop => {
                    self.merge_lanes(priority);
                    return Ok(None);
                }
            };
            let plan = Arc::new(plan);
            let reading = Arc::clone(&plan);
            let outcome = blocking(&self.shared, "read", move || {
                read_records(&reading, max_lines)
            })
            .await
            .map_err(|(e, _)| BufferError::io(&plan.path, e))?;
            let id = self.next_batch_id;
            let reader = &mut self.classes[class_index(priority)];
            let Some(lane) = reader.lane_mut(kind) else {
                return Ok(None);
            };
            match outcome {
                ReadOutcome::Vanished => {
                    lane.pos = Pos {
                        segment: plan.segment + 1,
                        offset: 0,
                    };
                }
                ReadOutcome::Records {
                    end, records: 0, ..
                } => {
                    // Only damaged bytes: step over them.
                    lane.pos.offset = end.max(plan.offset + 1);
                }
                ReadOutcome::Records {
                    end, body, lines, ..
                } => {
                    self.next_batch_id += 1;
                    let end_pos = Pos {
                        segment: plan.segment,
                        offset: end,
                    };
                    let from = lane.chain;
                    lane.pos = end_pos;
                    lane.chain = end_pos;
                    reader.inflight.insert(
                        from,
                        Inflight {
                            id,
                            end: end_pos,
                            lines: u64::from(lines),
                            acked: false,
                        },
                    );
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
    }

    /// The store confirmed `batch`: persist the ack (write temp, fsync, rename, fsync dir) and
    /// delete segments that are wholly acked. Acking a batch twice is harmless. The persisted
    /// cursor only passes batches whose predecessors are all acked, so a batch acked early is
    /// re-sent after a crash if an earlier one was not acked.
    pub async fn ack(&mut self, batch: &Batch) -> Result<(), BufferError> {
        let priority = batch.priority;
        let reader = &mut self.classes[class_index(priority)];
        let Some(entry) = reader.inflight.values_mut().find(|e| e.id == batch.id) else {
            return Ok(());
        };
        entry.acked = true;
        let passed = reader.advance_cursor();
        if passed.is_empty() {
            return Ok(());
        }
        let pos = reader.cursor;
        let dir = {
            let mut state = self.shared.lock();
            let class = state.class_mut(priority);
            let Some(consumer) = class.consumers.get_mut(&self.consumer) else {
                // Removed: nothing of ours is persisted any more.
                return Ok(());
            };
            if pos > consumer.ack {
                let in_new_segment: u64 = passed
                    .iter()
                    .filter(|(segment, _)| *segment == pos.segment)
                    .map(|(_, lines)| lines)
                    .sum();
                if pos.segment == consumer.ack.segment {
                    consumer.ack_lines_in_segment += in_new_segment;
                } else {
                    consumer.ack_lines_in_segment = in_new_segment;
                }
                consumer.ack = pos;
            }
            class.dir.clone()
        };
        let total: u64 = passed.iter().map(|(_, lines)| lines).sum();
        metrics::counter!(
            "buffer_acked_lines_total",
            "class" => class_dir_name(priority),
            "output" => self.name.clone()
        )
        .increment(total);

        let cursor_dir = dir.clone();
        let name = self.name.clone();
        let stored = blocking(&self.shared, "store cursor", move || {
            cursor::store(&cursor_dir, &name, pos)
        })
        .await;
        let fsyncs = match stored {
            Ok(fsyncs) => fsyncs,
            Err((e, _)) => {
                // On a full disk not even the small cursor file can be written, and waiting for
                // it would keep every delivered segment on disk. Deleting wholly delivered
                // segments first is safe: after a crash, the older cursor on disk only makes
                // the segments after it be sent again, and none of those is lost. Then retry
                // once in the room freed.
                tracing::warn!(
                    error = %e,
                    dir = %dir.display(),
                    "cannot persist the ack cursor; deleting delivered segments to make room"
                );
                self.delete_acked_segments(priority, &dir).await?;
                let cursor_dir = dir.clone();
                let name = self.name.clone();
                match blocking(&self.shared, "store cursor", move || {
                    cursor::store(&cursor_dir, &name, pos)
                })
                .await
                {
                    Ok(fsyncs) => fsyncs,
                    Err((e, _)) => {
                        let error = BufferError::io(&dir, e);
                        if !error.is_disk_full() {
                            return Err(error);
                        }
                        // Still full: the batch is acked in memory (its segment goes once it
                        // is wholly acked, freeing room) and a later ack persists the cursor.
                        // Waiting here would only slow the drain that frees the disk.
                        tracing::warn!(
                            "{error}: the ack cursor stays behind until there is room (a crash \
                             now would re-send, not lose, the delivered batches after it)"
                        );
                        self.shared.publish_gauges();
                        return Ok(());
                    }
                }
            }
        };
        self.shared.meta_fsyncs.fetch_add(fsyncs, Ordering::Relaxed);

        // Only once the cursor is durable may the data before it go (see above for the one
        // exception).
        self.delete_acked_segments(priority, &dir).await?;
        self.shared.publish_gauges();
        Ok(())
    }

    /// Deletes the class's sealed segments that lie wholly before every consumer's (in-memory)
    /// ack cursor.
    async fn delete_acked_segments(
        &self,
        priority: Priority,
        dir: &std::path::Path,
    ) -> Result<(), BufferError> {
        let to_delete = self.shared.lock().class_mut(priority).take_acked_segments();
        if to_delete.is_empty() {
            return Ok(());
        }
        let delete_dir = dir.to_path_buf();
        let fsyncs = blocking(&self.shared, "delete segments", move || {
            delete_files(&delete_dir, &to_delete)
        })
        .await
        .map_err(|(e, _)| BufferError::io(dir, e))?;
        self.shared.meta_fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        self.shared.publish_gauges();
        Ok(())
    }

    /// Bytes on disk, unsent lines and bytes, age of the oldest unsent record, drop counters,
    /// for the whole buffer (the unsent figures of the consumer furthest behind) and per
    /// consumer. Lines of batches acked ahead of the cursor (live lane) count as unsent until
    /// it passes.
    pub fn stats(&self) -> BufferStats {
        self.shared.stats()
    }

    /// This consumer's own figures.
    pub fn consumer_stats(&self) -> ConsumerStats {
        self.shared
            .lock()
            .consumer_stats(self.consumer, super::state::unix_ms())
            .unwrap_or_else(|| ConsumerStats {
                name: self.name.clone(),
                ..ConsumerStats::default()
            })
    }

    /// The consumer's name (its output's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of every consumer of the buffer, in the order they were opened or added.
    pub fn consumer_names(&self) -> Vec<String> {
        self.shared
            .lock()
            .consumer_names()
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    }

    /// Adds a consumer at run time (an output added by a reload): it starts at the end of
    /// the committed data or at the oldest data on disk, as `start` says; its cursor file is
    /// written before this returns. Fails if the name is invalid or taken. (Also on
    /// [`crate::BufferWriter::add_consumer`].)
    pub async fn add_consumer(
        &self,
        name: &str,
        start: ConsumerStart,
    ) -> Result<BufferReader, BufferError> {
        add_consumer_to(&self.shared, name, start).await
    }

    fn forget_consumer(&self, id: ConsumerId) {
        forget_consumer(&self.shared, id);
    }

    /// Removes this consumer (an output removed by a reload): its cursor files are deleted and
    /// it no longer holds data on disk; segments every remaining consumer has passed go now.
    /// The last consumer cannot be removed (the data would have no one to wait for).
    pub async fn remove(self) -> Result<(), BufferError> {
        let dirs: Vec<std::path::PathBuf> = {
            let state = self.shared.lock();
            if state.classes[0].consumers.len() <= 1 {
                return Err(BufferError::Config(format!(
                    "consumer {:?} is the buffer's last one and cannot be removed",
                    self.name
                )));
            }
            state.classes.iter().map(|c| c.dir.clone()).collect()
        };
        self.forget_consumer(self.consumer);
        let name = self.name.clone();
        let removing = dirs.clone();
        blocking(&self.shared, "remove cursor", move || {
            for dir in &removing {
                cursor::remove(dir, &name)?;
            }
            Ok(())
        })
        .await
        .map_err(|(e, _)| BufferError::io(&dirs[0], e))?;
        tracing::info!(
            output = %self.name,
            "buffer: output removed; its ack cursor is deleted and it no longer holds data on disk"
        );
        for priority in CLASSES_URGENT_FIRST {
            let dir = self.shared.lock().class(priority).dir.clone();
            self.delete_acked_segments(priority, &dir).await?;
        }
        self.shared.publish_gauges();
        Ok(())
    }
}

/// Adds a consumer at run time (an output added by a reload): it starts at the end of
/// the committed data or at the oldest data on disk, as `start` says; its cursor file is
/// written before this returns. Fails if the name is invalid or taken.
pub(crate) async fn add_consumer_to(
    shared: &Arc<Shared>,
    name: &str,
    start: ConsumerStart,
) -> Result<BufferReader, BufferError> {
    let mut names: Vec<String> = shared
        .lock()
        .consumer_names()
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    names.push(name.to_string());
    check_consumer_names(names.iter().map(String::as_str))?;
    let (id, starts, dirs) = {
        let mut state = shared.lock();
        let id = state.next_consumer;
        state.next_consumer = id.saturating_add(1);
        let mut starts = [Pos::default(); 2];
        let mut dirs = Vec::new();
        for (i, class) in state.classes.iter_mut().enumerate() {
            let cursor = match start {
                ConsumerStart::Oldest => ConsumerCursor::new(name, Pos::default(), 0),
                ConsumerStart::End => {
                    let end = class.end();
                    let lines = class.segments.get(&end.segment).map_or(0, |m| m.lines);
                    ConsumerCursor::new(name, end, lines)
                }
            };
            starts[i] = cursor.ack;
            dirs.push((class.dir.clone(), cursor.ack));
            class.consumers.insert(id, cursor);
        }
        (id, starts, dirs)
    };
    let cursor_name = name.to_string();
    let stored = blocking(shared, "store cursor", move || {
        let mut fsyncs = 0;
        for (dir, pos) in &dirs {
            fsyncs += cursor::store(dir, &cursor_name, *pos)?;
        }
        Ok(fsyncs)
    })
    .await;
    match stored {
        Ok(fsyncs) => {
            shared.meta_fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        }
        Err((e, _)) => {
            let dir = shared.lock().classes[0].dir.clone();
            forget_consumer(shared, id);
            return Err(BufferError::io(&dir, e));
        }
    }
    tracing::info!(
        output = %name,
        start = match start {
            ConsumerStart::End => "end",
            ConsumerStart::Oldest => "oldest",
        },
        "buffer: output added"
    );
    shared.publish_gauges();
    Ok(BufferReader::new(
        Arc::clone(shared),
        id,
        name.to_string(),
        starts,
    ))
}

fn forget_consumer(shared: &Shared, id: ConsumerId) {
    let mut state = shared.lock();
    for class in &mut state.classes {
        class.consumers.remove(&id);
    }
    state.consumer_dropped.remove(&id);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{open, BufferConfig};
    use ioc_model::Priority;

    fn lines(range: std::ops::Range<u32>) -> Vec<u8> {
        range
            .map(|i| format!("m,t=a f={}i {i}\n", i.wrapping_mul(2_654_435_761)))
            .collect::<String>()
            .into_bytes()
    }

    fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(dir.join("normal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        found.sort();
        found
    }

    #[tokio::test]
    async fn delivered_segments_go_even_when_the_cursor_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BufferConfig {
            dir: dir.path().to_path_buf(),
            max_disk_bytes: 64 << 20,
            segment_bytes: 512,
        };
        let (writer, mut reader, _) = open(cfg.clone()).unwrap();
        // Every append is larger than a 512-byte segment: each starts a new one.
        for k in 0..3 {
            writer
                .append(Priority::Normal, 100, lines(k * 100..k * 100 + 100))
                .await
                .unwrap();
        }
        assert_eq!(segments(dir.path()).len(), 3);
        // The cursor cannot be written (its temp file's name is taken by a directory).
        let blocker = dir.path().join("normal").join("ack.cursor.tmp");
        std::fs::create_dir(&blocker).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), reader.next_batch(100))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.lines, 100);
        let second = tokio::time::timeout(Duration::from_secs(5), reader.next_batch(100))
            .await
            .unwrap()
            .unwrap();
        let err = reader.ack(&first).await.unwrap_err();
        assert!(!err.is_disk_full(), "{err}");
        // The first segment was wholly delivered: gone, though no cursor says so.
        assert_eq!(segments(dir.path()).len(), 2);
        // The cursor still says "nothing acked" (as written at open).
        let on_disk = std::fs::read(dir.path().join("normal").join("ack.cursor")).unwrap();
        assert_eq!(super::cursor::decode(&on_disk), Some(super::Pos::default()));
        drop(second);
        writer.shutdown().await;
        drop(reader);

        // After a crash: nothing lost, the rest is sent again.
        std::fs::remove_dir(&blocker).unwrap();
        let (_writer, _reader, report) = open(cfg).unwrap();
        assert_eq!((report.segments, report.unsent_lines), (2, 200));
    }
}
