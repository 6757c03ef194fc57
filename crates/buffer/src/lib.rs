//! The durable local buffer: every acknowledged reading lives here until the store confirms it.
//!
//! Inputs call [`BufferWriter::append`] and acknowledge their source only when it resolves: the
//! bytes are then written and fsync'd. Each output is a *consumer* with its own
//! [`BufferReader`]: it pulls [`Batch`]es with [`BufferReader::next_batch`] (urgent class first)
//! and calls [`BufferReader::ack`] once its store has confirmed a batch; a segment is deleted
//! only once every consumer has acknowledged it. A crash at any moment loses nothing that was
//! acknowledged, and re-sends to each consumer (byte for byte the same) what was sent to it but
//! not acknowledged, so replays are idempotent at the store. Consumers are independent: one
//! whose store is down keeps its data on disk while the others carry on.
//!
//! # On disk
//!
//! ```text
//! <dir>/normal/00000000000000000042.seg   append-only segments, one log per priority class
//! <dir>/normal/ack.cursor                 how far consumer `default` has confirmed this class
//! <dir>/normal/ack.<name>.cursor          the same for consumer <name>
//! <dir>/urgent/...                        the same for the urgent class
//! <dir>/LOCK                              flock'd by the gateway using the buffer; holds its pid
//! ```
//!
//! Segment ids are global and increasing (a new segment always gets an id above every id on disk
//! and every id a cursor names). A segment is a plain concatenation of records, no file header.
//!
//! ## Record layout (little-endian, 32-byte header + payload)
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! | 0      | 4    | magic / sync marker `"IOCR"`                                   |
//! | 4      | 4    | CRC32 (crc32fast, IEEE) of bytes `8 .. 32 + payload_len`       |
//! | 8      | 4    | `payload_len`: bytes of payload (≤ 8 MiB, else corrupt)        |
//! | 12     | 4    | `lines`: line-protocol lines in the payload                    |
//! | 16     | 8    | `append_ms`: group-commit wall-clock time, ms since Unix epoch |
//! | 24     | 4    | `raw_len`: uncompressed payload size                           |
//! | 28     | 1    | format version, `1`                                            |
//! | 29     | 1    | flags: bit 0 urgent class, bit 1 gzip (always set)             |
//! | 30     | 2    | reserved, zero                                                 |
//! | 32     | n    | payload: one gzip member (flate2, fast level) of the lines     |
//! |        |      | of one group commit, newline-terminated                        |
//!
//! Because every payload is a complete gzip member, a batch body is just the payloads of
//! consecutive records concatenated: a valid multi-member gzip stream that the HTTP stores decode
//! with `Content-Encoding: gzip`, with no recompression on the send path.
//!
//! A cursor file is 28 bytes: `"IOCA"`, version `1`, 3 zero bytes, segment id `u64`, offset
//! `u64`, CRC32 of the first 24 bytes. It is replaced by write-temp + fsync + rename + fsync-dir.
//!
//! # Consumers
//!
//! [`open_consumers`] takes the list of consumers (one per output, by name); [`open`] is the
//! single consumer [`DEFAULT_CONSUMER`], whose cursor file `ack.cursor` is the one the buffer had
//! before it had several consumers, so an upgraded gateway neither re-sends nor loses anything.
//! A consumer with no cursor file yet starts at the end of the buffered data
//! ([`ConsumerStart::End`], what Telegraf and Vector do for a new output) unless it asks for
//! [`ConsumerStart::Oldest`] (an archive that wants everything still on disk); `default`, and
//! every consumer of a buffer no one has a cursor in yet, start at the oldest data. The new
//! cursor is written before `open` returns. The cursor file of a consumer no longer in the list
//! is deleted (and logged): it no longer holds data back. At run time
//! [`BufferReader::add_consumer`] and [`BufferReader::remove`] do the same for a reload.
//!
//! # Policies
//!
//! - **Group commit**: one dedicated std thread owns the segment files. It takes every append
//!   waiting in a bounded channel (up to 4 MiB of line protocol), writes one record per class
//!   (split at 512 KiB of line protocol) and calls `sync_data` once per class file touched;
//!   then every waiting `append` resolves. A full channel makes `append` wait (backpressure).
//! - **Recovery** ([`open`]): every segment is scanned and CRC-checked; torn tails are truncated, damaged middles are
//!   skipped by resynchronising on the marker + CRC, and the [`RecoveryReport`] says what was
//!   dropped.
//! - **Reading**: urgent class first whenever it has data. Within a class, once more than
//!   256 KiB (compressed) waits unread, a second "live" lane starts at the end of the committed
//!   data and its batches alternate with the backlog's, so readings arriving during a drain
//!   after an outage go out within a batch or two; when the backlog lane reaches the live
//!   lane's start they merge. The persisted cursor only passes a contiguous prefix of acked
//!   batches, so live batches acked ahead of the backlog are re-sent after a crash (never lost).
//! - **Deletion** only after every consumer's ack, except when the disk bound `max_disk_bytes`
//!   would be exceeded: then the oldest segments are dropped even if unsent: normal class first,
//!   oldest first, and urgent segments only when no normal segment is left; never the data being
//!   appended. The bound is for the whole buffer; the lines each consumer lost (that it had not
//!   acknowledged) are counted per consumer (`buffer_dropped_oldest_lines_total{output}`) and
//!   logged with their time span.
//! - **Disk errors** on append (ENOSPC, EIO): the callers of that group get an error (their
//!   sources will redeliver), the half-written tail is cut back, the segment is sealed, one oldest
//!   segment is dropped to make room if the disk is full, and the next append starts afresh.
//! - **A filesystem smaller than the bound** (`max_disk_bytes` above what the disk can hold, the
//!   usual misconfiguration on a small SD card): at open the writer compares the bound with the
//!   free space (statvfs), warns, and sizes segments from the space really there; after a "disk
//!   full" it shrinks them further, so each drop loses a part of the buffer, never all of it.
//! - **Ack cursor on a full disk**: if the cursor cannot be written, delivered segments are
//!   deleted first and the write retried; if it still fails the ack stands (with a warning) and a
//!   later ack writes the cursor. An older cursor on disk after a crash only re-sends, never loses.
//!
//! # Metrics
//!
//! `buffer_bytes`, `buffer_readings{class}` (unsent lines of the consumer furthest behind),
//! `buffer_appended_lines_total{class}`,
//! `buffer_acked_lines_total{class,output}`, `buffer_fsyncs_total`, `buffer_append_errors_total`,
//! `buffer_dropped_oldest_lines_total{output}`, `buffer_dropped_oldest_segments_total`,
//! `buffer_recovery_dropped_bytes_total`.

mod cursor;
pub mod inspect;
mod lock;
mod reader;
mod record;
mod recovery;
mod segment;
mod state;
mod writer;

#[cfg(test)]
mod consumer_tests;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cursor::{valid_consumer_name, DEFAULT_CONSUMER, MAX_CONSUMER_NAME};
pub use lock::{read_lock_pid, LOCK_FILE};
pub use reader::{Batch, BufferReader};
pub use state::ConsumerStats;
pub use writer::filesystem_free_bytes;
pub use writer::BufferWriter;

/// Where the buffer lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    pub dir: PathBuf,
    /// Upper bound of the segment files' total size.
    pub max_disk_bytes: u64,
    /// Size at which a new segment is started; `0` means [`default_segment_bytes`].
    pub segment_bytes: u64,
}

impl BufferConfig {
    /// A config with the default segment size for `max_disk_bytes`.
    pub fn new(dir: impl Into<PathBuf>, max_disk_bytes: u64) -> Self {
        BufferConfig {
            dir: dir.into(),
            max_disk_bytes,
            segment_bytes: default_segment_bytes(max_disk_bytes),
        }
    }
}

/// `clamp(max / 16, 1 MiB, 32 MiB)`, but never more than a quarter of `max` (at least 4 KiB), so
/// that dropping the oldest segment under a small bound never throws away most of the data.
pub fn default_segment_bytes(max_disk_bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    (max_disk_bytes / 16)
        .clamp(MIB, 32 * MIB)
        .min(max_disk_bytes / 4)
        .max(4096)
}

/// Where a consumer with no cursor file yet starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumerStart {
    /// At the end of what is buffered: it gets what is committed from now on.
    #[default]
    End,
    /// At the oldest data still on disk (everything not yet deleted).
    Oldest,
}

/// One consumer of the buffer (an output): its name, and where it starts if it is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// 1 to 64 of `A-Z a-z 0-9 _ -` ([`valid_consumer_name`]); unique.
    pub name: String,
    pub start: ConsumerStart,
}

impl ConsumerSpec {
    pub fn new(name: impl Into<String>, start: ConsumerStart) -> Self {
        ConsumerSpec {
            name: name.into(),
            start,
        }
    }
}

fn check_consumer_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), BufferError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !valid_consumer_name(name) {
            return Err(BufferError::Config(format!(
                "consumer name {name:?} must be 1 to {MAX_CONSUMER_NAME} of A-Z a-z 0-9 _ -"
            )));
        }
        if !seen.insert(name) {
            return Err(BufferError::Config(format!(
                "consumer name {name:?} is given twice"
            )));
        }
    }
    Ok(())
}

/// What recovery found on open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments kept.
    pub segments: usize,
    /// Valid records kept (acked or not).
    pub records: u64,
    /// Lines in the kept records.
    pub lines: u64,
    /// Lines after the ack cursor of at least one consumer (to be sent).
    pub unsent_lines: u64,
    /// Lines to be sent, per consumer name.
    pub unsent_lines_by_consumer: std::collections::BTreeMap<String, u64>,
    /// Bytes that held no valid record (torn tails and damaged ranges).
    pub dropped_bytes: u64,
    /// Number of damaged ranges found; each lost at least one record.
    pub dropped_records_hint: u64,
    /// Cursors (class × consumer) that were corrupt, so everything on disk is re-sent to
    /// that consumer.
    pub cursor_fallbacks: u32,
}

/// A snapshot of the buffer for `/metrics`, health and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Total size of the segment files.
    pub disk_bytes: u64,
    pub segments: usize,
    /// Lines not yet acknowledged by the consumer furthest behind (both classes).
    pub unsent_lines: u64,
    /// Of which urgent (again the consumer furthest behind in that class).
    pub urgent_unsent_lines: u64,
    /// Bytes on disk not yet acknowledged by the consumer furthest behind.
    pub unsent_bytes: u64,
    /// Age of the oldest record some consumer has not acknowledged (an upper bound, exact to
    /// 64 KiB of appends).
    pub oldest_unsent_age_ms: Option<u64>,
    /// Lines dropped because the disk bound was reached that at least one consumer had not
    /// acknowledged, since open.
    pub dropped_oldest_lines: u64,
    pub dropped_oldest_segments: u64,
    /// Bytes recovery dropped on open.
    pub recovery_dropped_bytes: u64,
    /// Appends that failed with a disk error since open.
    pub append_errors: u64,
    /// Whether the latest append failed (the disk is failing now).
    pub disk_failing: bool,
    /// fsyncs of segment data (group commits and segment creations) since open.
    pub data_fsyncs: u64,
    /// fsyncs for ack cursors and deletions since open.
    pub meta_fsyncs: u64,
    /// Each consumer's own figures, by the order they were opened or added.
    pub consumers: Vec<ConsumerStats>,
}

impl BufferStats {
    /// The figures of consumer `name`.
    pub fn consumer(&self, name: &str) -> Option<&ConsumerStats> {
        self.consumers.iter().find(|c| c.name == name)
    }
}

/// Why a buffer operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BufferError {
    #[error("buffer I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("the buffer has been shut down")]
    Closed,
    #[error("an append of {bytes} bytes exceeds the buffer's limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("invalid buffer configuration: {0}")]
    Config(String),
    #[error(
        "buffer directory {} is in use by another ioc-gateway ({}): stop it, or give this gateway another data_dir",
        dir.display(),
        pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p} holds {LOCK_FILE}"))
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
}

impl BufferError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        BufferError::Io {
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    /// Whether this is a "disk full" error (ENOSPC or quota).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BufferError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
    }
}

/// Opens (creating) the buffer in `cfg.dir` for the single consumer [`DEFAULT_CONSUMER`],
/// recovers it, and starts the writer thread. See [`open_consumers`].
pub fn open(
    cfg: BufferConfig,
) -> Result<(BufferWriter, BufferReader, RecoveryReport), BufferError> {
    let (writer, mut readers, report) = open_consumers(
        cfg,
        &[ConsumerSpec::new(DEFAULT_CONSUMER, ConsumerStart::Oldest)],
    )?;
    let reader = readers
        .pop()
        .ok_or_else(|| BufferError::Config("no consumer".into()))?;
    Ok((writer, reader, report))
}

/// Opens (creating) the buffer in `cfg.dir`, recovers it, and starts the writer thread; returns
/// one reader per consumer, in the order given (at least one consumer; names unique).
///
/// Takes an exclusive lock on `<dir>/LOCK` first: a second gateway on the same directory gets
/// [`BufferError::InUse`] naming the holder's pid.
///
/// Blocking (it scans every segment): call it before the runtime gets busy, or from
/// `spawn_blocking`. The readers' methods need a tokio runtime.
pub fn open_consumers(
    cfg: BufferConfig,
    consumers: &[ConsumerSpec],
) -> Result<(BufferWriter, Vec<BufferReader>, RecoveryReport), BufferError> {
    if cfg.max_disk_bytes == 0 {
        return Err(BufferError::Config("max_disk_bytes must be above 0".into()));
    }
    if consumers.is_empty() {
        return Err(BufferError::Config(
            "the buffer needs at least one consumer".into(),
        ));
    }
    check_consumer_names(consumers.iter().map(|c| c.name.as_str()))?;
    let segment_bytes = if cfg.segment_bytes == 0 {
        default_segment_bytes(cfg.max_disk_bytes)
    } else {
        cfg.segment_bytes
    };
    // One gateway per directory: lock before recovery touches anything.
    std::fs::create_dir_all(&cfg.dir).map_err(|e| BufferError::io(&cfg.dir, e))?;
    let dir_lock = lock::acquire(&cfg.dir)?;
    let recovered = recovery::recover(&cfg.dir, consumers)?;
    let report = recovered.report.clone();
    let starts: Vec<(state::ConsumerId, String, [cursor::Pos; 2])> = recovered.state.classes[0]
        .consumers
        .iter()
        .map(|(id, c)| {
            (
                *id,
                c.name.clone(),
                [
                    recovery::start_position(&recovered.state.classes[0], *id),
                    recovery::start_position(&recovered.state.classes[1], *id),
                ],
            )
        })
        .collect();
    // The lock lives in the shared state: released once the writer thread, the writers and the
    // readers are all gone.
    let shared = Arc::new(state::Shared::new(recovered.state, Some(dir_lock)));
    shared.publish_gauges();
    let writer = writer::start(
        Arc::clone(&shared),
        writer::WriterLimits {
            max_disk_bytes: cfg.max_disk_bytes,
            segment_bytes,
        },
        recovered.next_segment_id,
    )?;
    let readers = starts
        .into_iter()
        .map(|(id, name, start)| BufferReader::new(Arc::clone(&shared), id, name, start))
        .collect();
    Ok((writer, readers, report))
}
