//! In-memory picture of the buffer shared by the writer thread and the reader.
//!
//! It holds, per priority class, what each segment on disk contains (size, lines, times), where
//! the persisted ack cursor stands, and the counters behind [`BufferStats`]. The writer adds to
//! it after each fsync, the reader moves the cursor after each ack, and whichever of them
//! removes a segment from this map is the one that deletes its file, so a segment is never
//! deleted twice or read after being forgotten.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::cursor::Pos;
use super::segment::segment_file_name;
use super::BufferStats;
use ioc_model::Priority;

/// Granularity of the per-segment time index used for "age of the oldest unsent record".
const TIME_INDEX_STEP: u64 = 64 * 1024;

/// Both classes, in the order the reader serves them.
pub(crate) const CLASSES_URGENT_FIRST: [Priority; 2] = [Priority::Urgent, Priority::Normal];

/// Index of a class in per-class arrays.
pub(crate) fn class_index(priority: Priority) -> usize {
    match priority {
        Priority::Normal => 0,
        Priority::Urgent => 1,
    }
}

/// Directory name of a class under the buffer's root.
pub(crate) fn class_dir_name(priority: Priority) -> &'static str {
    match priority {
        Priority::Normal => "normal",
        Priority::Urgent => "urgent",
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What one segment holds (only its valid records count).
#[derive(Debug, Clone, Default)]
pub(crate) struct SegMeta {
    /// Bytes of the segment that are committed (fsync'd) and may be read.
    pub size: u64,
    pub records: u64,
    pub lines: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// `(offset, append_ms)` of the first record at or after every 64 KiB step.
    pub time_index: Vec<(u64, u64)>,
    /// No more appends will go to this segment.
    pub sealed: bool,
}

impl SegMeta {
    /// Accounts for a valid record at `offset`.
    pub fn add_record(&mut self, offset: u64, record_len: u64, lines: u32, append_ms: u64) {
        if self.records == 0 {
            self.first_ms = append_ms;
        }
        self.last_ms = self.last_ms.max(append_ms);
        let next_step = self
            .time_index
            .last()
            .map_or(0, |(o, _)| (o / TIME_INDEX_STEP + 1) * TIME_INDEX_STEP);
        if self.time_index.is_empty() || offset >= next_step {
            self.time_index.push((offset, append_ms));
        }
        self.records += 1;
        self.lines += u64::from(lines);
        self.size = self.size.max(offset + record_len);
    }

    /// Append time of the record at `offset`, or of the nearest indexed record before it (an
    /// upper bound of the age, off by at most 64 KiB of appends).
    fn ms_at(&self, offset: u64) -> Option<u64> {
        let i = self.time_index.partition_point(|(o, _)| *o <= offset);
        match i.checked_sub(1).and_then(|j| self.time_index.get(j)) {
            Some((_, ms)) => Some(*ms),
            None => self.time_index.first().map(|(_, ms)| *ms),
        }
    }
}

/// One consumer's (output's) position in one class's log.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerCursor {
    pub name: String,
    /// The persisted ack cursor.
    pub ack: Pos,
    /// Lines of the records of `ack.segment` that lie before `ack.offset`.
    pub ack_lines_in_segment: u64,
}

impl ConsumerCursor {
    pub fn new(name: &str, ack: Pos, ack_lines_in_segment: u64) -> Self {
        ConsumerCursor {
            name: name.to_string(),
            ack,
            ack_lines_in_segment,
        }
    }

    /// Lines of segment `id` this consumer has not acknowledged.
    pub fn unsent_lines_in(&self, id: u64, meta: &SegMeta) -> u64 {
        if id > self.ack.segment {
            meta.lines
        } else if id == self.ack.segment {
            meta.lines.saturating_sub(self.ack_lines_in_segment)
        } else {
            0
        }
    }
}

/// Consumer handle: an index into every class's consumer map (never reused within a process).
pub(crate) type ConsumerId = u32;

/// One class's log.
#[derive(Debug)]
pub(crate) struct ClassState {
    pub dir: PathBuf,
    pub segments: BTreeMap<u64, SegMeta>,
    /// Every consumer's cursor in this class; a segment lives until all of them passed it.
    pub consumers: BTreeMap<ConsumerId, ConsumerCursor>,
}

impl ClassState {
    pub fn new(dir: PathBuf) -> Self {
        ClassState {
            dir,
            segments: BTreeMap::new(),
            consumers: BTreeMap::new(),
        }
    }

    pub fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_file_name(id))
    }

    /// Consumer `id`'s cursor (a consumer that is gone has acked nothing: callers only ask
    /// for consumers they hold).
    pub fn consumer(&self, id: ConsumerId) -> Option<&ConsumerCursor> {
        self.consumers.get(&id)
    }

    /// The position every consumer has passed: data before it is needed by none.
    /// With no consumer at all nothing is released (the data waits for whoever comes).
    pub fn released(&self) -> Pos {
        self.consumers
            .values()
            .map(|c| c.ack)
            .min()
            .unwrap_or_default()
    }

    /// The end of the committed log: where a consumer that starts "at the end" starts.
    pub fn end(&self) -> Pos {
        match self.segments.iter().next_back() {
            Some((&segment, meta)) => Pos {
                segment,
                offset: meta.size,
            },
            None => Pos::default(),
        }
    }

    /// Lines of segment `id` not acknowledged by at least one consumer (the most behind one).
    pub fn unsent_lines_in_any(&self, id: u64, meta: &SegMeta) -> u64 {
        self.consumers
            .values()
            .map(|c| c.unsent_lines_in(id, meta))
            .max()
            .unwrap_or(meta.lines)
    }

    pub fn unsent_lines(&self, consumer: &ConsumerCursor) -> u64 {
        self.segments
            .iter()
            .map(|(id, meta)| consumer.unsent_lines_in(*id, meta))
            .sum()
    }

    pub fn unsent_bytes(&self, consumer: &ConsumerCursor) -> u64 {
        let ack = consumer.ack;
        self.segments
            .iter()
            .map(|(id, meta)| {
                if *id > ack.segment {
                    meta.size
                } else if *id == ack.segment {
                    meta.size.saturating_sub(ack.offset)
                } else {
                    0
                }
            })
            .sum()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|m| m.size).sum()
    }

    /// Append time of the oldest record `consumer` has not acknowledged.
    pub fn oldest_unsent_ms(&self, consumer: &ConsumerCursor) -> Option<u64> {
        let ack = consumer.ack;
        for (id, meta) in self.segments.range(ack.segment..) {
            if meta.records == 0 {
                continue;
            }
            if *id == ack.segment {
                if ack.offset < meta.size {
                    return meta.ms_at(ack.offset);
                }
                continue;
            }
            return Some(meta.first_ms);
        }
        None
    }

    /// Removes from the map every sealed segment wholly before every consumer's ack cursor;
    /// returns the paths of the files to delete.
    pub fn take_acked_segments(&mut self) -> Vec<PathBuf> {
        if self.consumers.is_empty() {
            return Vec::new();
        }
        let ack = self.released();
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(id, meta)| {
                **id < ack.segment
                    || (**id == ack.segment && meta.sealed && ack.offset >= meta.size)
            })
            .map(|(id, _)| *id)
            .collect();
        done.into_iter()
            .map(|id| {
                self.segments.remove(&id);
                self.segment_path(id)
            })
            .collect()
    }
}

/// What one consumer has still to send, for `/metrics`, health and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    pub name: String,
    /// Lines this consumer has not acknowledged (both classes).
    pub unsent_lines: u64,
    /// Of which urgent.
    pub urgent_unsent_lines: u64,
    pub unsent_bytes: u64,
    /// Age of the oldest record this consumer has not acknowledged.
    pub oldest_unsent_age_ms: Option<u64>,
    /// Lines dropped at the disk bound before this consumer had them, since open.
    pub dropped_oldest_lines: u64,
}

/// Everything the writer and reader share.
#[derive(Debug)]
pub(crate) struct State {
    /// Indexed by [`class_index`]. Both classes hold the same consumer ids.
    pub classes: [ClassState; 2],
    /// The next [`ConsumerId`] to hand out.
    pub next_consumer: ConsumerId,
    /// Per consumer: lines dropped at the disk bound that it had not acknowledged.
    pub consumer_dropped: BTreeMap<ConsumerId, u64>,
    /// Lines dropped at the disk bound that at least one consumer had not acknowledged.
    pub dropped_oldest_lines: u64,
    pub dropped_oldest_segments: u64,
    pub recovery_dropped_bytes: u64,
    pub append_errors: u64,
}

impl State {
    pub fn class(&self, priority: Priority) -> &ClassState {
        &self.classes[class_index(priority)]
    }

    pub fn class_mut(&mut self, priority: Priority) -> &mut ClassState {
        &mut self.classes[class_index(priority)]
    }

    pub fn disk_bytes(&self) -> u64 {
        self.classes.iter().map(ClassState::disk_bytes).sum()
    }

    /// Every consumer's id and name, by id.
    pub fn consumer_names(&self) -> Vec<(ConsumerId, String)> {
        self.classes[0]
            .consumers
            .iter()
            .map(|(id, c)| (*id, c.name.clone()))
            .collect()
    }

    /// What consumer `id` has still to send.
    pub fn consumer_stats(&self, id: ConsumerId, now: u64) -> Option<ConsumerStats> {
        let urgent = self.class(Priority::Urgent);
        let normal = self.class(Priority::Normal);
        let (u, n) = (urgent.consumer(id)?, normal.consumer(id)?);
        let urgent_unsent = urgent.unsent_lines(u);
        let oldest = [urgent.oldest_unsent_ms(u), normal.oldest_unsent_ms(n)]
            .into_iter()
            .flatten()
            .min();
        Some(ConsumerStats {
            name: n.name.clone(),
            unsent_lines: urgent_unsent + normal.unsent_lines(n),
            urgent_unsent_lines: urgent_unsent,
            unsent_bytes: urgent.unsent_bytes(u) + normal.unsent_bytes(n),
            oldest_unsent_age_ms: oldest.map(|ms| now.saturating_sub(ms)),
            dropped_oldest_lines: self.consumer_dropped.get(&id).copied().unwrap_or(0),
        })
    }

    /// Every consumer's stats, by id.
    pub fn all_consumer_stats(&self, now: u64) -> Vec<ConsumerStats> {
        self.consumer_names()
            .into_iter()
            .filter_map(|(id, _)| self.consumer_stats(id, now))
            .collect()
    }
}

/// The shared handle: state behind a mutex, counters, and the commit signal for the reader.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Data fsyncs of segment files (group commits plus the rare segment creation).
    pub data_fsyncs: AtomicU64,
    /// Fsyncs done to persist ack cursors and deletions.
    pub meta_fsyncs: AtomicU64,
    /// Bumped after every commit; the reader waits on it when it has nothing to send.
    pub committed: watch::Sender<u64>,
    /// Bumped on every commit of urgent data.
    pub urgent_committed: watch::Sender<u64>,
    /// Whether the last append failed with a disk error (cleared by the next good append), so
    /// readiness reports a disk that is failing now, not one that failed a minute ago.
    pub disk_failing: std::sync::atomic::AtomicBool,
    /// Which disk operations are in progress, and since when (for a supervisor's watchdog).
    pub activity: DiskActivity,
    /// The directory lock: released when the writer thread, the writers and the reader are all
    /// gone (they share this value).
    _dir_lock: Option<super::lock::DirLock>,
    /// Test hook: the next this-many segment writes fail as if the disk were full. Compiled
    /// only into this crate's unit tests and builds with the `fault-injection` feature.
    #[cfg(any(test, feature = "fault-injection"))]
    pub injected_write_faults: AtomicU64,
}

impl Shared {
    pub fn new(state: State, dir_lock: Option<super::lock::DirLock>) -> Self {
        let (committed, _) = watch::channel(0);
        let (urgent_committed, _) = watch::channel(0);
        Shared {
            state: Mutex::new(state),
            data_fsyncs: AtomicU64::new(0),
            meta_fsyncs: AtomicU64::new(0),
            committed,
            urgent_committed,
            disk_failing: std::sync::atomic::AtomicBool::new(false),
            activity: DiskActivity::default(),
            _dir_lock: dir_lock,
            #[cfg(any(test, feature = "fault-injection"))]
            injected_write_faults: AtomicU64::new(0),
        }
    }

    /// A simulated write error, if a test asked for one (never outside test builds).
    pub fn take_injected_fault(&self) -> Option<std::io::Error> {
        #[cfg(any(test, feature = "fault-injection"))]
        {
            let left = self.injected_write_faults.load(Ordering::Relaxed);
            if left > 0 {
                self.injected_write_faults
                    .store(left - 1, Ordering::Relaxed);
                return Some(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
        }
        None
    }

    /// Locks the state. A panic while holding the lock cannot leave it half-updated in a way
    /// that matters for safety (disk is the truth), so a poisoned lock is simply taken over.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the readers: data was committed (or a segment sealed); `urgent` when some of
    /// it is urgent, which also wakes a forwarder waiting for a batch to fill.
    pub fn notify_commit(&self, urgent: bool) {
        self.committed.send_modify(|generation| *generation += 1);
        if urgent {
            self.urgent_committed
                .send_modify(|generation| *generation += 1);
        }
    }

    /// Snapshot of the counters. The buffer-wide unsent figures are those of the consumer
    /// furthest behind (the one that holds the most data on disk); `consumers` has each one's.
    pub fn stats(&self) -> BufferStats {
        let state = self.lock();
        let now = unix_ms();
        let consumers = state.all_consumer_stats(now);
        let worst = |f: fn(&ConsumerStats) -> u64| consumers.iter().map(f).max().unwrap_or(0);
        let stats = BufferStats {
            disk_bytes: state.disk_bytes(),
            segments: state.classes.iter().map(|c| c.segments.len()).sum(),
            unsent_lines: worst(|c| c.unsent_lines),
            urgent_unsent_lines: worst(|c| c.urgent_unsent_lines),
            unsent_bytes: worst(|c| c.unsent_bytes),
            oldest_unsent_age_ms: consumers
                .iter()
                .filter_map(|c| c.oldest_unsent_age_ms)
                .max(),
            dropped_oldest_lines: state.dropped_oldest_lines,
            dropped_oldest_segments: state.dropped_oldest_segments,
            recovery_dropped_bytes: state.recovery_dropped_bytes,
            append_errors: state.append_errors,
            disk_failing: self.disk_failing.load(Ordering::Relaxed),
            data_fsyncs: self.data_fsyncs.load(Ordering::Relaxed),
            meta_fsyncs: self.meta_fsyncs.load(Ordering::Relaxed),
            consumers,
        };
        drop(state);
        stats
    }

    /// Updates the gauges from the current state (called after commits, acks and drops):
    /// `buffer_readings{class}` is for the consumer furthest behind (per-consumer figures are
    /// in [`BufferStats::consumers`]).
    pub fn publish_gauges(&self) {
        let state = self.lock();
        let disk = state.disk_bytes();
        let mut worst = [0u64; 2];
        for priority in CLASSES_URGENT_FIRST {
            let class = state.class(priority);
            for consumer in class.consumers.values() {
                let unsent = class.unsent_lines(consumer);
                let w = &mut worst[class_index(priority)];
                *w = (*w).max(unsent);
            }
        }
        drop(state);
        metrics::gauge!("buffer_bytes").set(disk as f64);
        metrics::gauge!("buffer_readings", "class" => "urgent")
            .set(worst[class_index(Priority::Urgent)] as f64);
        metrics::gauge!("buffer_readings", "class" => "normal")
            .set(worst[class_index(Priority::Normal)] as f64);
    }
}

/// Deletes segment files already removed from the state, then makes that durable. Missing files
/// are fine (they are gone either way). Returns the number of fsyncs done.
pub(crate) fn delete_files(dir: &Path, paths: &[PathBuf]) -> std::io::Result<u64> {
    if paths.is_empty() {
        return Ok(0);
    }
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    super::segment::fsync_dir(dir)?;
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_index_gives_an_upper_bound_of_age() {
        let mut meta = SegMeta::default();
        meta.add_record(0, 40_000, 1, 100);
        meta.add_record(40_000, 40_000, 1, 200); // below 64 KiB: not indexed
        meta.add_record(80_000, 40_000, 1, 300); // first at/after 64 KiB
        assert_eq!(meta.time_index, vec![(0, 100), (80_000, 300)]);
        assert_eq!(meta.ms_at(0), Some(100));
        assert_eq!(meta.ms_at(40_000), Some(100));
        assert_eq!(meta.ms_at(80_000), Some(300));
        assert_eq!((meta.lines, meta.records, meta.size), (3, 3, 120_000));
        assert_eq!((meta.first_ms, meta.last_ms), (100, 300));
    }

    #[test]
    fn unsent_counts_respect_the_cursor() {
        let mut class = ClassState::new(PathBuf::from("/nonexistent"));
        let mut a = SegMeta::default();
        a.add_record(0, 100, 10, 1);
        a.add_record(100, 100, 5, 2);
        a.sealed = true;
        let mut b = SegMeta::default();
        b.add_record(0, 50, 7, 3);
        class.segments.insert(1, a);
        class.segments.insert(2, b);
        let at = |offset, lines| ConsumerCursor::new("x", Pos { segment: 1, offset }, lines);
        class.consumers.insert(0, at(100, 10));
        let c = class.consumers[&0].clone();
        assert_eq!(class.unsent_lines(&c), 12);
        assert_eq!(class.unsent_bytes(&c), 150);
        assert!(class.take_acked_segments().is_empty());
        class.consumers.insert(0, at(200, 15));
        let c = class.consumers[&0].clone();
        assert_eq!(class.oldest_unsent_ms(&c), Some(3));
        // A second consumer still behind holds the segment.
        class.consumers.insert(1, at(0, 0));
        assert_eq!(class.released(), at(0, 0).ack);
        assert_eq!(class.unsent_lines_in_any(1, &class.segments[&1]), 15);
        assert!(class.take_acked_segments().is_empty());
        class.consumers.insert(1, at(200, 15));
        let gone = class.take_acked_segments();
        assert_eq!(gone.len(), 1);
        assert_eq!(class.unsent_lines(&c), 7);
    }
}

/// Who does a disk operation: the writer thread (group commits, segment creation, drops) or
/// the reader (batch reads, ack cursors, deletions).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Actor {
    Writer = 0,
    Reader = 1,
}

/// When each actor's current disk operation began (milliseconds since `base`, plus one; 0 while
/// it does none), so a supervisor can tell a disk that blocks (a wedged SD card, a frozen file
/// system) from one that is merely idle: an idle buffer is never "stuck", one write that does
/// not return is.
#[derive(Debug)]
pub(crate) struct DiskActivity {
    base: std::time::Instant,
    since: [AtomicU64; 2],
}

impl Default for DiskActivity {
    fn default() -> Self {
        DiskActivity {
            base: std::time::Instant::now(),
            since: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

impl DiskActivity {
    /// Marks `actor` busy until the guard is dropped.
    pub fn begin(&self, actor: Actor) -> ActivityGuard<'_> {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.since[actor as usize].store(now.saturating_add(1), Ordering::Relaxed);
        ActivityGuard {
            activity: self,
            actor,
        }
    }

    /// How long the oldest disk operation still in progress has been running; `None` when no
    /// operation is in progress.
    pub fn stuck_for(&self) -> Option<std::time::Duration> {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.since
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s != 0)
            .map(|s| std::time::Duration::from_millis(now.saturating_add(1).saturating_sub(s)))
            .max()
    }
}

/// Clears its actor's busy mark on drop.
pub(crate) struct ActivityGuard<'a> {
    activity: &'a DiskActivity,
    actor: Actor,
}

impl Drop for ActivityGuard<'_> {
    fn drop(&mut self) {
        self.activity.since[self.actor as usize].store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod activity_tests {
    use super::{Actor, DiskActivity};

    #[test]
    fn an_operation_in_progress_is_seen_and_an_idle_buffer_is_never_stuck() {
        let activity = DiskActivity::default();
        assert_eq!(activity.stuck_for(), None);
        {
            let _writing = activity.begin(Actor::Writer);
            std::thread::sleep(std::time::Duration::from_millis(20));
            let _reading = activity.begin(Actor::Reader);
            let stuck = activity.stuck_for().expect("two operations in progress");
            // The older of the two counts.
            assert!(stuck >= std::time::Duration::from_millis(20), "{stuck:?}");
        }
        assert_eq!(activity.stuck_for(), None);
    }
}
