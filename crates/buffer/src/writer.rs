//! The writer: a dedicated std thread that owns the segment files and group-commits appends.
//!
//! Appends from every input go through one bounded channel. The thread takes whatever is waiting
//! (up to [`GROUP_MAX_RAW`] bytes), compresses it into one record per class, writes, calls
//! `sync_data` once per file, and only then resolves every append in the group. Blocking file IO
//! therefore never runs on a tokio worker, many appends share one fsync, and a slow disk pushes
//! back on the inputs through the full channel instead of growing memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::record;
use super::segment::fsync_dir;
use super::state::{
    class_dir_name, class_index, delete_files, unix_ms, Actor, SegMeta, Shared,
    CLASSES_URGENT_FIRST,
};
use super::{BufferError, BufferStats};
use ioc_model::Priority;

/// Appends waiting for the writer thread; a full channel makes `append` wait.
const CHANNEL_CAPACITY: usize = 1024;
/// Most line protocol one group commit takes.
const GROUP_MAX_RAW: usize = 4 << 20;
/// A record is closed once it holds this much line protocol (more records, same fsync).
const RECORD_MAX_RAW: usize = 512 << 10;
/// Largest single append accepted; larger appends are split over several records at line ends.
pub(crate) const APPEND_MAX_RAW: usize = 32 << 20;
/// Longest single line accepted (its record must stay under the header's payload bound).
pub(crate) const LINE_MAX_RAW: usize = 4 << 20;

/// Size limits the writer enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterLimits {
    pub max_disk_bytes: u64,
    pub segment_bytes: u64,
}

struct AppendRequest {
    priority: Priority,
    lines: u32,
    lp: Vec<u8>,
    done: oneshot::Sender<Result<(), BufferError>>,
}

enum Command {
    Append(AppendRequest),
    Shutdown(oneshot::Sender<()>),
}

/// The input side of the buffer. Cheap to clone: one per input task.
#[derive(Clone)]
pub struct BufferWriter {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// Joined by `shutdown`, so files are closed when it returns.
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for BufferWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferWriter").finish_non_exhaustive()
    }
}

impl BufferWriter {
    /// Adds a consumer (an output added by a reload) and returns its reader; see
    /// [`BufferReader::add_consumer`].
    pub async fn add_consumer(
        &self,
        name: &str,
        start: crate::ConsumerStart,
    ) -> Result<crate::BufferReader, BufferError> {
        crate::reader::add_consumer_to(&self.shared, name, start).await
    }

    /// Appends newline-terminated line-protocol bytes holding `lines` lines (a missing final
    /// newline is added). Resolves once the data is written and fsync'd; concurrent appends
    /// share one fsync. Waits while the writer is busy and its queue is full.
    ///
    /// Appends over 512 KiB are split into several records at line ends (their line counts
    /// then come from counting newlines). [`BufferError::TooLarge`] (over 32 MiB, or one line
    /// over 4 MiB, or more than `max_disk_bytes`) is permanent: retrying cannot help.
    pub async fn append(
        &self,
        priority: Priority,
        lines: u32,
        mut lp: Vec<u8>,
    ) -> Result<(), BufferError> {
        if lp.is_empty() {
            return Ok(());
        }
        if lp.len() > APPEND_MAX_RAW {
            return Err(BufferError::TooLarge {
                bytes: lp.len(),
                limit: APPEND_MAX_RAW,
            });
        }
        if lp.len() > LINE_MAX_RAW {
            if let Some(longest) = lp.split(|b| *b == b'\n').map(<[u8]>::len).max() {
                if longest > LINE_MAX_RAW {
                    return Err(BufferError::TooLarge {
                        bytes: longest,
                        limit: LINE_MAX_RAW,
                    });
                }
            }
        }
        if lp.last() != Some(&b'\n') {
            lp.push(b'\n');
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Append(AppendRequest {
                priority,
                lines,
                lp,
                done,
            }))
            .await
            .map_err(|_| BufferError::Closed)?;
        wait.await.map_err(|_| BufferError::Closed)?
    }

    /// Commits everything queued before this call, then stops the writer thread; appends through
    /// any other clone fail with [`BufferError::Closed`] afterwards.
    pub async fn shutdown(self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            // The thread has answered and is returning: this join is short.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Same as [`BufferReader::stats`](super::BufferReader::stats).
    pub fn stats(&self) -> BufferStats {
        self.shared.stats()
    }

    /// How long the buffer's oldest disk operation still in progress (a group commit of the
    /// writer thread, or a read, ack-cursor write or deletion of the reader) has been running;
    /// `None` while none is. A value that keeps growing means the disk blocks (a wedged SD
    /// card, a frozen file system): what a watchdog should notice.
    pub fn disk_stuck_for(&self) -> Option<std::time::Duration> {
        self.shared.activity.stuck_for()
    }

    /// Test hook, only with the `fault-injection` feature (which only this crate's own
    /// dev-dependency turns on): the next `writes` segment writes fail as if the disk were full
    /// (`ErrorKind::StorageFull`), and the buffer then does what it does on a real full disk.
    /// Replaces any count armed before. Not part of the buffer's API.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_write_faults(&self, writes: u64) {
        self.shared
            .injected_write_faults
            .store(writes, Ordering::Relaxed);
    }
}

/// Starts the writer thread.
pub(crate) fn start(
    shared: Arc<Shared>,
    limits: WriterLimits,
    next_segment_id: u64,
) -> Result<BufferWriter, BufferError> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let limits = fit_to_filesystem(&shared, limits);
    let thread = WriterThread {
        shared: Arc::clone(&shared),
        rx,
        limits,
        next_segment_id,
        active: [None, None],
        gzipper: record::Gzipper::new(),
    };
    let handle = std::thread::Builder::new()
        .name("buffer-writer".into())
        .spawn(move || thread.run())
        .map_err(|e| BufferError::io(std::path::Path::new("buffer-writer thread"), e))?;
    Ok(BufferWriter {
        tx,
        shared,
        thread: Arc::new(std::sync::Mutex::new(Some(handle))),
    })
}

/// Bytes the filesystem holding `dir` still gives an unprivileged writer, if it can be asked.
// `fsblkcnt_t` and `c_ulong` are u64 here but u32 on 32-bit ARM boards: keep the conversions.
#[allow(clippy::useless_conversion)]
pub fn filesystem_free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(u64::from(stats.blocks_available()).saturating_mul(u64::from(stats.fragment_size())))
}

/// When the filesystem cannot hold `max_disk_bytes` (the bound is larger than the disk, or
/// other files use it), the disk fills before the bound: appends fail with "no space" and the
/// oldest segment is dropped to make room. A segment sized from the bound could then be the
/// only one, and that drop would lose the whole buffer; so segments are sized from the room
/// there really is, and the operator is told to lower the bound.
fn fit_to_filesystem(shared: &Shared, mut limits: WriterLimits) -> WriterLimits {
    let (dir, buffered) = {
        let state = shared.lock();
        (
            state.class(Priority::Normal).dir.clone(),
            state.disk_bytes(),
        )
    };
    let Some(free) = filesystem_free_bytes(&dir) else {
        return limits;
    };
    let room = free.saturating_add(buffered);
    if room >= limits.max_disk_bytes {
        return limits;
    }
    let fitted = super::default_segment_bytes(room).min(limits.segment_bytes);
    tracing::warn!(
        max_disk_bytes = limits.max_disk_bytes,
        filesystem_free_bytes = free,
        buffered_bytes = buffered,
        segment_bytes = fitted,
        dir = %dir.display(),
        "buffer.max_disk_mb is more than the filesystem can hold: it will fill before the bound, \
         appends will fail with 'no space' and the oldest segment will be dropped; set max_disk_mb \
         below the free space. Segments are kept small so that a drop loses only a part"
    );
    limits.segment_bytes = fitted;
    limits
}

/// The segment a class is appending to.
struct ActiveSegment {
    id: u64,
    file: File,
    /// Bytes written and fsync'd.
    committed: u64,
}

struct WriterThread {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    limits: WriterLimits,
    next_segment_id: u64,
    /// Indexed by `class_index`.
    active: [Option<ActiveSegment>; 2],
    /// Compresses every record of every group.
    gzipper: record::Gzipper,
}

/// Records built from one class's share of a group.
struct EncodedRecords {
    bytes: Vec<u8>,
    /// `(offset within bytes, record length, lines)`.
    records: Vec<(u64, u64, u32)>,
    lines: u64,
    /// Commit time shared by every record of the group.
    append_ms: u64,
}

fn encode_records(
    gzipper: &mut record::Gzipper,
    priority: Priority,
    requests: &[AppendRequest],
    append_ms: u64,
) -> io::Result<EncodedRecords> {
    let mut out = EncodedRecords {
        bytes: Vec::new(),
        records: Vec::new(),
        lines: 0,
        append_ms,
    };
    let mut raw = Vec::new();
    let mut raw_lines = 0u32;
    let mut flush = |raw: &mut Vec<u8>, raw_lines: &mut u32, out: &mut EncodedRecords| {
        if raw.is_empty() {
            return Ok::<(), io::Error>(());
        }
        let start = out.bytes.len();
        record::encode_raw(
            &mut out.bytes,
            gzipper,
            priority,
            *raw_lines,
            append_ms,
            raw,
        )?;
        out.records
            .push((start as u64, (out.bytes.len() - start) as u64, *raw_lines));
        out.lines += u64::from(*raw_lines);
        raw.clear();
        *raw_lines = 0;
        Ok(())
    };
    for request in requests {
        if request.lp.len() > RECORD_MAX_RAW {
            // A big append: split it at line ends, counting the lines of each piece.
            flush(&mut raw, &mut raw_lines, &mut out)?;
            for line in request.lp.split_inclusive(|b| *b == b'\n') {
                if !raw.is_empty() && raw.len() + line.len() > RECORD_MAX_RAW {
                    flush(&mut raw, &mut raw_lines, &mut out)?;
                }
                raw.extend_from_slice(line);
                raw_lines = raw_lines.saturating_add(1);
            }
            flush(&mut raw, &mut raw_lines, &mut out)?;
            continue;
        }
        if !raw.is_empty() && raw.len() + request.lp.len() > RECORD_MAX_RAW {
            flush(&mut raw, &mut raw_lines, &mut out)?;
        }
        raw.extend_from_slice(&request.lp);
        raw_lines = raw_lines.saturating_add(request.lines);
    }
    flush(&mut raw, &mut raw_lines, &mut out)?;
    Ok(out)
}

impl WriterThread {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut group = Vec::new();
            let mut raw = 0usize;
            let mut shutdown = None;
            match first {
                Command::Append(request) => {
                    raw += request.lp.len();
                    group.push(request);
                }
                Command::Shutdown(done) => shutdown = Some(done),
            }
            while shutdown.is_none() && raw < GROUP_MAX_RAW {
                match self.rx.try_recv() {
                    Ok(Command::Append(request)) => {
                        raw += request.lp.len();
                        group.push(request);
                    }
                    Ok(Command::Shutdown(done)) => shutdown = Some(done),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                let shared = Arc::clone(&self.shared);
                let _busy = shared.activity.begin(Actor::Writer);
                self.commit(group);
            }
            if let Some(done) = shutdown {
                let _ = done.send(());
                break;
            }
        }
        tracing::debug!("buffer writer stopped");
    }

    fn commit(&mut self, group: Vec<AppendRequest>) {
        let append_ms = unix_ms();
        let (urgent, normal): (Vec<_>, Vec<_>) = group
            .into_iter()
            .partition(|r| r.priority == Priority::Urgent);
        let mut by_class = [normal, urgent];
        for priority in CLASSES_URGENT_FIRST {
            let requests = std::mem::take(&mut by_class[class_index(priority)]);
            if requests.is_empty() {
                continue;
            }
            let result = match encode_records(&mut self.gzipper, priority, &requests, append_ms) {
                Ok(encoded) => self.write_class(priority, &encoded),
                Err(e) => Err(BufferError::io(std::path::Path::new("gzip"), e)),
            };
            for request in requests {
                let _ = request.done.send(result.clone());
            }
        }
        self.shared.publish_gauges();
    }

    fn write_class(
        &mut self,
        priority: Priority,
        encoded: &EncodedRecords,
    ) -> Result<(), BufferError> {
        let total = encoded.bytes.len() as u64;
        self.make_room(total)?;
        if let Err((path, e)) = self.ensure_active(priority, total) {
            return Err(self.append_failed(&path, e));
        }
        let idx = class_index(priority);
        let Some(active) = self.active[idx].as_mut() else {
            return Err(BufferError::Closed);
        };
        let path = self.shared.lock().class(priority).segment_path(active.id);
        let offset = active.committed;
        let written = self.shared.take_injected_fault().map_or_else(
            || {
                active.file.write_all_at(&encoded.bytes, offset)?;
                active.file.sync_data()
            },
            Err,
        );
        self.shared.data_fsyncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("buffer_fsyncs_total").increment(1);
        match written {
            Ok(()) => {
                active.committed += total;
                let id = active.id;
                {
                    let mut state = self.shared.lock();
                    let meta = state.class_mut(priority).segments.entry(id).or_default();
                    for (at, len, lines) in &encoded.records {
                        meta.add_record(offset + at, *len, *lines, encoded.append_ms);
                    }
                }
                metrics::counter!("buffer_appended_lines_total", "class" => class_dir_name(priority))
                    .increment(encoded.lines);
                self.shared.disk_failing.store(false, Ordering::Relaxed);
                self.shared.notify_commit(priority == Priority::Urgent);
                Ok(())
            }
            Err(e) => {
                // Cut back whatever part reached the file and start a new segment next time.
                let _ = active.file.set_len(offset);
                self.seal(priority);
                Err(self.append_failed(&path, e))
            }
        }
    }

    /// Counts and logs a failed append; on a full disk, drops the oldest segment to make room
    /// for the retry the source will make.
    fn append_failed(&mut self, path: &std::path::Path, e: io::Error) -> BufferError {
        let disk_full = matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        );
        self.shared.lock().append_errors += 1;
        self.shared.disk_failing.store(true, Ordering::Relaxed);
        metrics::counter!("buffer_append_errors_total").increment(1);
        tracing::error!(error = %e, path = %path.display(), "buffer append failed");
        if disk_full {
            // The filesystem holds less than the bound: keep segments small against what
            // fitted, so that this drop and the next ones each lose only a part of the buffer.
            let fitted = super::default_segment_bytes(self.shared.lock().disk_bytes());
            if fitted < self.limits.segment_bytes {
                tracing::warn!(
                    segment_bytes = fitted,
                    "disk full below buffer.max_disk_mb: using smaller segments from now on"
                );
                self.limits.segment_bytes = fitted;
            }
            self.drop_oldest_segment();
        }
        BufferError::io(path, e)
    }

    /// Stops appending to the class's current segment.
    fn seal(&mut self, priority: Priority) {
        if let Some(active) = self.active[class_index(priority)].take() {
            let mut state = self.shared.lock();
            if let Some(meta) = state.class_mut(priority).segments.get_mut(&active.id) {
                meta.sealed = true;
                meta.size = active.committed;
            }
            drop(state);
            self.shared.notify_commit(false);
        }
    }

    /// Makes sure the class has a segment with room for `incoming` bytes (a segment that is
    /// still empty takes any size).
    fn ensure_active(
        &mut self,
        priority: Priority,
        incoming: u64,
    ) -> Result<(), (std::path::PathBuf, io::Error)> {
        let idx = class_index(priority);
        if let Some(active) = &self.active[idx] {
            if active.committed == 0 || active.committed + incoming <= self.limits.segment_bytes {
                return Ok(());
            }
            self.seal(priority);
        }
        let id = self.next_segment_id;
        let (dir, path) = {
            let state = self.shared.lock();
            let class = state.class(priority);
            (class.dir.clone(), class.segment_path(id))
        };
        // Never reuse an id, even if creating this one fails half-way.
        self.next_segment_id += 1;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| (path.clone(), e))?;
        fsync_dir(&dir).map_err(|e| (dir.clone(), e))?;
        self.shared.meta_fsyncs.fetch_add(1, Ordering::Relaxed);
        self.shared
            .lock()
            .class_mut(priority)
            .segments
            .insert(id, SegMeta::default());
        self.active[idx] = Some(ActiveSegment {
            id,
            file,
            committed: 0,
        });
        Ok(())
    }

    /// Drops oldest segments until `incoming` more bytes fit under the disk bound.
    fn make_room(&mut self, incoming: u64) -> Result<(), BufferError> {
        let max = self.limits.max_disk_bytes;
        let too_large = || BufferError::TooLarge {
            bytes: usize::try_from(incoming).unwrap_or(usize::MAX),
            limit: usize::try_from(max).unwrap_or(usize::MAX),
        };
        if incoming > max {
            // Dropping everything would not help: refuse without losing anything.
            return Err(too_large());
        }
        loop {
            let disk = self.shared.lock().disk_bytes();
            if disk + incoming <= max {
                return Ok(());
            }
            if !self.drop_oldest_segment() {
                return Err(too_large());
            }
        }
    }

    /// Drops the oldest segment (normal class first), even if unsent. Returns false if there is
    /// no segment to drop.
    fn drop_oldest_segment(&mut self) -> bool {
        let victim = [Priority::Normal, Priority::Urgent]
            .into_iter()
            .find_map(|priority| {
                let state = self.shared.lock();
                let first = state.class(priority).segments.keys().next().copied();
                first.map(|id| (priority, id))
            });
        let Some((priority, id)) = victim else {
            return false;
        };
        if self.active[class_index(priority)]
            .as_ref()
            .is_some_and(|a| a.id == id)
        {
            self.seal(priority);
        }
        let (dir, path, meta, unsent, lost) = {
            let mut state = self.shared.lock();
            let class = state.class_mut(priority);
            let Some(meta) = class.segments.remove(&id) else {
                return false;
            };
            let unsent = class.unsent_lines_in_any(id, &meta);
            // What each consumer had not acknowledged of it.
            let lost: Vec<(u32, String, u64)> = class
                .consumers
                .iter()
                .map(|(cid, c)| (*cid, c.name.clone(), c.unsent_lines_in(id, &meta)))
                .collect();
            let dir = class.dir.clone();
            let path = class.segment_path(id);
            state.dropped_oldest_lines += unsent;
            state.dropped_oldest_segments += 1;
            for (cid, _, lines) in &lost {
                *state.consumer_dropped.entry(*cid).or_default() += lines;
            }
            (dir, path, meta, unsent, lost)
        };
        match delete_files(&dir, std::slice::from_ref(&path)) {
            Ok(fsyncs) => {
                self.shared.meta_fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "could not delete dropped buffer segment");
            }
        }
        for (_, name, lines) in &lost {
            metrics::counter!("buffer_dropped_oldest_lines_total", "output" => name.clone())
                .increment(*lines);
        }
        metrics::counter!("buffer_dropped_oldest_segments_total").increment(1);
        let per_output = lost
            .iter()
            .filter(|(_, _, lines)| *lines > 0)
            .map(|(_, name, lines)| format!("{name}={lines}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::warn!(
            class = class_dir_name(priority),
            segment = id,
            readings = unsent,
            unsent_per_output = %per_output,
            oldest_ms = meta.first_ms,
            newest_ms = meta.last_ms,
            span_s = meta.last_ms.saturating_sub(meta.first_ms) / 1000,
            "buffer full: dropped the oldest segment, including unsent readings"
        );
        self.shared.publish_gauges();
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::{open, BufferConfig};
    use ioc_model::Priority;

    /// `count` lines of line protocol that gzip cannot shrink much (pseudo-random digits).
    fn noisy_lines(from: u64, count: u64) -> Vec<u8> {
        let mut x = from.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = String::new();
        for i in from..from + count {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push_str(&format!("m,t=a f={x},g={} {i}\n", x.rotate_left(29)));
        }
        out.into_bytes()
    }

    fn segment_count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir.join("normal"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    }

    #[tokio::test]
    async fn after_a_full_disk_segments_are_sized_from_what_fitted() {
        let dir = tempfile::tempdir().unwrap();
        // A 4 MiB segment size (from the 64 MiB bound) on a disk that turns out to hold less.
        let (writer, reader, _) = open(BufferConfig::new(dir.path(), 64 << 20)).unwrap();
        for k in 0..3 {
            writer
                .append(Priority::Normal, 5000, noisy_lines(k * 5000, 5000))
                .await
                .unwrap();
        }
        assert_eq!(segment_count(dir.path()), 1);
        let fitted = reader.stats().disk_bytes;
        reader
            .shared
            .injected_write_faults
            .store(1, Ordering::Relaxed);
        let err = writer
            .append(Priority::Normal, 5000, noisy_lines(15_000, 5000))
            .await
            .unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        // The only segment went to make room; what follows goes into segments of a quarter of
        // what fitted, so the next drop loses a part, not everything.
        assert_eq!(reader.stats().dropped_oldest_lines, 15_000);
        for k in 4..7 {
            writer
                .append(Priority::Normal, 5000, noisy_lines(k * 5000, 5000))
                .await
                .unwrap();
        }
        let stats = reader.stats();
        assert_eq!(stats.unsent_lines, 15_000);
        assert_eq!(
            segment_count(dir.path()),
            3,
            "3 appends of ~{} bytes each after {fitted} bytes fitted",
            stats.disk_bytes / 3
        );
        writer.shutdown().await;
    }
}
