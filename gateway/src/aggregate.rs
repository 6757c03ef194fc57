//! Edge aggregation: for high-rate sensors on a metered 4G uplink, forward `mean`, `min`, `max`
//! and `count` per field and time window instead of every raw reading.
//!
//! Windows are tumbling and aligned to the epoch (`[k·w, (k+1)·w)`), one per series
//! (measurement + tags). A window is closed, and its aggregate emitted, by [`Aggregator::flush_due`]
//! once the clock passes its end plus a grace period (late readings within the grace still count).
//! The aggregate reading keeps the measurement and tags, adds tag `agg=<w>s`, is stamped with the
//! window start, and has fields `<f>_mean`, `<f>_min`, `<f>_max`, `<f>_count` for every numeric
//! field `f` (bool and string fields, NaN and infinities are not aggregated).
//!
//! # Bounds
//! Readings reach the aggregator from the network, so its memory and disk are bounded
//! ([`Tuning`]): at most `max_windows` open windows and `max_readings` readings counted in them,
//! and no window that starts more than `max_ahead` after the `now` given to
//! [`Aggregator::add_at`] (a far-future timestamp would otherwise hold a window open for ever).
//! Beyond a bound a reading is refused with a typed [`AggregateError`] whose
//! [`label`](AggregateError::label) the caller counts.
//!
//! # Durability
//! The open windows are part of what an input acknowledges, so they are saved
//! ([`Aggregator::save`]) before the raw messages are acked, and loaded on start: a window that
//! spans a gateway restart still aggregates every reading of it. Saving costs what changed, not
//! what is held:
//! - **journal** (`<state>.journal`): a header (magic `IOCJ`, version, generation, CRC32) and then
//!   one record per change (`len u32 LE`, `crc32 u32 LE` over the length bytes and the payload,
//!   payload): a reading added (series, timestamp, numeric fields as f64 bits) or windows closed
//!   (the `now` they were closed at). Changes are collected in memory; `save()` appends them in
//!   one write and `fdatasync`s.
//! - **snapshot** (`<state>`, JSON, written to a temporary file, fsync'd, renamed, directory
//!   fsync'd): the whole state and the generation of the journal that follows it. Written only
//!   when the journal has grown past a bound (twice the last snapshot, clamped to
//!   `journal_min_bytes..=journal_max_bytes`: amortised, a snapshot costs less than the journal
//!   bytes it replaces), when it is older than `snapshot_interval`, or once the input has gone
//!   quiet; the journal then starts again, empty, with the next generation.
//!
//! Recovery on open is snapshot + journal replay. A journal whose generation is not the
//! snapshot's predates it (a crash between the rename and the journal reset) and is ignored. A
//! torn or damaged journal tail (power cut mid-append) is detected by its CRC, dropped with a log
//! line and cut off, so later appends are not hidden behind it. Sums, minima and maxima are kept
//! as f64 bit patterns on disk, so means are exact across a restart.
//!
//! An aggregate that was emitted but whose close was not yet saved is emitted again after a
//! crash, with the same series, timestamp and values: the store keeps one point.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::{FieldValue, Reading};

/// Running statistics of one field in one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FieldStats {
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
}

impl FieldStats {
    fn new(v: f64) -> Self {
        FieldStats {
            sum: v,
            min: v,
            max: v,
            count: 1,
        }
    }
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.count += 1;
    }
}

/// One open window of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub measurement: String,
    pub tags: BTreeMap<String, String>,
    pub start_ns: i64,
    pub fields: BTreeMap<String, FieldStats>,
    /// Timestamps already counted: a redelivered reading (same series and time, as after a crash
    /// between saving the windows and acking) is not counted twice, as the store would keep one.
    #[serde(default)]
    pub seen: BTreeSet<i64>,
}

/// Why a reading was refused, or the state could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("aggregation state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The reading's window was already closed and forwarded: folding it in would overwrite the
    /// forwarded aggregate with a partial one.
    #[error(
        "reading at {timestamp_ns} ns is too late: its window was already closed and forwarded"
    )]
    Late { timestamp_ns: i64 },
    /// The reading's window starts too far after the gateway's clock.
    #[error("reading at {timestamp_ns} ns is in a window more than {max_ahead_s} s in the future (now {now_ns} ns)")]
    TooFarAhead {
        timestamp_ns: i64,
        now_ns: i64,
        max_ahead_s: u64,
    },
    /// Opening its window would exceed the bound on open windows.
    #[error(
        "{limit} aggregation windows are open already; reading for a new series or window refused"
    )]
    TooManyWindows { limit: usize },
    /// Counting it would exceed the bound on readings held in open windows.
    #[error("{limit} readings are held in open aggregation windows already; reading refused")]
    TooManyReadings { limit: usize },
    /// No numeric, finite field: there is nothing to aggregate.
    #[error("reading has no finite numeric field to aggregate")]
    NothingToAggregate,
    /// The reading is larger than one journal record may be.
    #[error("reading needs {bytes} bytes in the aggregation journal, more than {limit}")]
    TooLarge { bytes: usize, limit: usize },
    /// Changes not yet saved exceed their bound (saving has been failing): refused until a save
    /// succeeds.
    #[error("{bytes} bytes of aggregation changes are not saved yet (is the disk failing?); reading refused")]
    Unsaved { bytes: usize },
}

impl AggregateError {
    /// A short, stable label for the rejection counter (`late_for_window`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            AggregateError::Io { .. } => "aggregate_io",
            AggregateError::Late { .. } => "late_for_window",
            AggregateError::TooFarAhead { .. } => "window_in_future",
            AggregateError::TooManyWindows { .. } => "too_many_windows",
            AggregateError::TooManyReadings { .. } => "too_many_window_readings",
            AggregateError::NothingToAggregate => "nothing_to_aggregate",
            AggregateError::TooLarge { .. } => "too_large_to_aggregate",
            AggregateError::Unsaved { .. } => "aggregate_unsaved",
        }
    }
}

/// Bounds and persistence policy. [`Default`] is what [`Aggregator::open`] uses.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Open windows (series × window) at most.
    pub max_windows: usize,
    /// Readings counted in open windows at most (each keeps its timestamp for deduplication).
    pub max_readings: usize,
    /// A window may start at most this long after the `now` given to [`Aggregator::add_at`].
    pub max_ahead: Duration,
    /// The journal is compacted into a snapshot once it exceeds twice the last snapshot, but not
    /// below this size...
    pub journal_min_bytes: u64,
    /// ...and always above this size.
    pub journal_max_bytes: u64,
    /// A journal with records is compacted at the latest this long after the last snapshot.
    pub snapshot_interval: Duration,
    /// A journal with records is compacted when `save()` finds nothing new this long after the
    /// last append (the input went quiet), if its records are at least a quarter of the last
    /// snapshot's size. `None`: never.
    pub idle_snapshot_after: Option<Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_windows: 20_000,
            max_readings: 1_000_000,
            max_ahead: Duration::from_secs(60),
            journal_min_bytes: 1 << 20,
            journal_max_bytes: 64 << 20,
            snapshot_interval: Duration::from_secs(300),
            idle_snapshot_after: Some(Duration::from_secs(1)),
        }
    }
}

/// Bytes written by saving so far, for measuring what a save costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// Journal bytes written (headers and records).
    pub journal_bytes: u64,
    /// Snapshot bytes written.
    pub snapshot_bytes: u64,
    /// Snapshots completed.
    pub snapshots: u64,
    /// Current length of the journal on disk.
    pub journal_len: u64,
}

/// Largest journal record payload; a reading needing more is refused, and recovery treats a
/// larger length field as damage (which also bounds what a corrupt length makes it read).
const MAX_RECORD: usize = 1 << 20;
/// Unsaved changes at most, in bytes.
const MAX_PENDING: usize = 64 << 20;
const JOURNAL_MAGIC: [u8; 4] = *b"IOCJ";
const JOURNAL_VERSION: u8 = 1;
/// magic 4, version 1, reserved 3, generation u64 LE 8, crc32 of the 16 bytes before it 4.
const JOURNAL_HEADER_LEN: usize = 20;
/// len u32 LE, crc32 u32 LE.
const RECORD_HEADER_LEN: usize = 8;
const KIND_ADD: u8 = 1;
const KIND_CLOSE: u8 = 2;
/// Snapshot format written by this code (format 1: the older JSON state without generation).
const SNAPSHOT_FORMAT: u32 = 2;

/// The aggregation state of one input.
///
/// `Send + 'static`: it can be moved into `tokio::task::spawn_blocking` for [`Aggregator::save`],
/// which blocks on disk I/O.
#[derive(Debug)]
pub struct Aggregator {
    window_ns: i64,
    grace_ns: i64,
    tuning: Tuning,
    /// Keyed by series (measurement + sorted tags) and window start.
    open: BTreeMap<(String, i64), Window>,
    /// Every window ending (plus grace) at or before this was emitted.
    closed_before_ns: i64,
    /// Readings counted in open windows (sum of their `seen` sets).
    readings: usize,
    store: Option<Store>,
}

/// Where and how the state is persisted.
#[derive(Debug)]
struct Store {
    path: PathBuf,
    journal_path: PathBuf,
    tmp_path: PathBuf,
    /// Generation of the current snapshot; the journal that follows it carries the same one.
    generation: u64,
    /// The journal file on disk has a valid header of `generation` and `journal_len` valid bytes.
    journal_ok: bool,
    /// The journal file may hold bytes past `journal_len` (a failed append): cut them first.
    tail_dirty: bool,
    journal: Option<File>,
    journal_len: u64,
    /// Encoded records not yet appended.
    pending: Vec<u8>,
    /// A snapshot was renamed into place but not made durable: the journal on disk may be stale,
    /// so nothing may be appended to it until a snapshot completes.
    needs_snapshot: bool,
    last_snapshot_len: u64,
    last_snapshot_at: Instant,
    last_append_at: Instant,
    stats: PersistStats,
}

const _: fn() = || {
    fn send_static<T: Send + 'static>() {}
    send_static::<Aggregator>();
};

fn series_key(measurement: &str, tags: &BTreeMap<String, String>) -> String {
    let mut k = measurement.to_owned();
    for (t, v) in tags {
        k.push('\u{1f}');
        k.push_str(t);
        k.push('=');
        k.push_str(v);
    }
    k
}

fn numeric(v: &FieldValue) -> Option<f64> {
    let f = match v {
        FieldValue::Float(f) => *f,
        FieldValue::Int(i) => *i as f64,
        FieldValue::UInt(u) => *u as f64,
        FieldValue::Bool(_) | FieldValue::Str(_) => return None,
    };
    f.is_finite().then_some(f)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

// ------------------------------------------------------------------------------------------------
// Journal encoding.
// ------------------------------------------------------------------------------------------------

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Lengths are bounded by MAX_RECORD before a record is kept; saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn journal_header(generation: u64) -> [u8; JOURNAL_HEADER_LEN] {
    let mut h = [0u8; JOURNAL_HEADER_LEN];
    h[0..4].copy_from_slice(&JOURNAL_MAGIC);
    h[4] = JOURNAL_VERSION;
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn parse_journal_header(b: &[u8]) -> Option<u64> {
    let h = b.get(0..JOURNAL_HEADER_LEN)?;
    if h[0..4] != JOURNAL_MAGIC || h[4] != JOURNAL_VERSION || h[5..8] != [0, 0, 0] {
        return None;
    }
    let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
    if crc32fast::hash(&h[0..16]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(h[8..16].try_into().ok()?))
}

/// Starts a record in `out`; returns where it starts, for [`finish_record`].
fn begin_record(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    out.push(kind);
    start
}

/// Fills in length and CRC of the record begun at `start`, or removes it and returns its size if
/// it is larger than [`MAX_RECORD`].
fn finish_record(out: &mut Vec<u8>, start: usize) -> Result<(), usize> {
    let payload_len = out.len() - start - RECORD_HEADER_LEN;
    let Ok(len) = u32::try_from(payload_len) else {
        out.truncate(start);
        return Err(payload_len);
    };
    if payload_len > MAX_RECORD {
        out.truncate(start);
        return Err(payload_len);
    }
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start..start + 4]);
    h.update(&out[start + RECORD_HEADER_LEN..]);
    let crc = h.finalize();
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A change, as replayed from the journal.
#[derive(Debug, PartialEq)]
enum Op {
    Add {
        measurement: String,
        tags: BTreeMap<String, String>,
        timestamp_ns: i64,
        fields: Vec<(String, f64)>,
    },
    Close {
        now_ns: i64,
    },
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(*self.take(1)?.first()?)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).ok()
    }
    /// A count of items each at least `min_item` bytes long: bounded by what is left.
    fn count(&mut self, min_item: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.saturating_mul(min_item) <= self.0.len()).then_some(n)
    }
}

fn decode_op(payload: &[u8]) -> Option<Op> {
    let mut c = Cursor(payload);
    let op = match c.u8()? {
        KIND_ADD => {
            let timestamp_ns = c.i64()?;
            let measurement = c.str()?;
            let ntags = c.count(8)?;
            let mut tags = BTreeMap::new();
            for _ in 0..ntags {
                let k = c.str()?;
                let v = c.str()?;
                tags.insert(k, v);
            }
            let nfields = c.count(12)?;
            let mut fields = Vec::with_capacity(nfields);
            for _ in 0..nfields {
                let name = c.str()?;
                let v = f64::from_bits(c.u64()?);
                fields.push((name, v));
            }
            Op::Add {
                measurement,
                tags,
                timestamp_ns,
                fields,
            }
        }
        KIND_CLOSE => Op::Close { now_ns: c.i64()? },
        _ => return None,
    };
    c.0.is_empty().then_some(op)
}

/// Parses the records after the header: the operations of every complete, intact record, and the
/// offset (from the start of `records`) where the valid part ends.
fn parse_records(records: &[u8]) -> (Vec<Op>, usize) {
    let mut ops = Vec::new();
    let mut at = 0;
    while let Some(head) = records.get(at..at + RECORD_HEADER_LEN) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = records.get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + len)
        else {
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&head[0..4]);
        h.update(payload);
        if h.finalize() != crc {
            break;
        }
        let Some(op) = decode_op(payload) else {
            break;
        };
        ops.push(op);
        at += RECORD_HEADER_LEN + len;
    }
    (ops, at)
}

// ------------------------------------------------------------------------------------------------
// Snapshot (JSON; floats also as bit patterns, so values are exact).
// ------------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct SnapStats {
    /// For people reading the file (`null` for an infinite sum); `bits` is what is loaded.
    #[serde(default)]
    sum: Option<f64>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    count: u64,
    /// `[sum, min, max]` as `f64::to_bits`; absent in format 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bits: Option<[u64; 3]>,
}

impl SnapStats {
    fn of(s: &FieldStats) -> Self {
        SnapStats {
            sum: Some(s.sum),
            min: Some(s.min),
            max: Some(s.max),
            count: s.count,
            bits: Some([s.sum.to_bits(), s.min.to_bits(), s.max.to_bits()]),
        }
    }
    fn stats(&self) -> Option<FieldStats> {
        let (sum, min, max) = match self.bits {
            Some([s, lo, hi]) => (f64::from_bits(s), f64::from_bits(lo), f64::from_bits(hi)),
            None => (self.sum?, self.min?, self.max?),
        };
        Some(FieldStats {
            sum,
            min,
            max,
            count: self.count,
        })
    }
}

#[derive(Serialize)]
struct SnapWindowRef<'a> {
    measurement: &'a str,
    tags: &'a BTreeMap<String, String>,
    start_ns: i64,
    fields: BTreeMap<&'a str, SnapStats>,
    seen: &'a BTreeSet<i64>,
}

#[derive(Serialize)]
struct SnapStateRef<'a> {
    format: u32,
    generation: u64,
    closed_before_ns: i64,
    windows: Vec<SnapWindowRef<'a>>,
}

#[derive(Deserialize)]
struct SnapWindow {
    measurement: String,
    tags: BTreeMap<String, String>,
    start_ns: i64,
    fields: BTreeMap<String, SnapStats>,
    #[serde(default)]
    seen: BTreeSet<i64>,
}

#[derive(Deserialize)]
struct SnapState {
    #[serde(default)]
    generation: u64,
    closed_before_ns: i64,
    windows: Vec<SnapWindow>,
}

impl Aggregator {
    /// An aggregator with windows of `window_s` seconds and `grace_s` seconds for late readings,
    /// keeping its state in `path` (if any) and resuming from it, with the default [`Tuning`].
    pub fn open(
        window_s: u64,
        grace_s: u64,
        path: Option<PathBuf>,
    ) -> Result<Self, AggregateError> {
        Self::open_with(window_s, grace_s, path, Tuning::default())
    }

    /// As [`Aggregator::open`], with explicit bounds and persistence policy.
    ///
    /// Damaged state never stops the start: an unreadable snapshot starts empty (logged), a
    /// damaged journal tail is dropped (logged). Only an I/O error reading the files fails.
    pub fn open_with(
        window_s: u64,
        grace_s: u64,
        path: Option<PathBuf>,
        tuning: Tuning,
    ) -> Result<Self, AggregateError> {
        let mut a = Aggregator {
            window_ns: (window_s.max(1) as i64).saturating_mul(1_000_000_000),
            grace_ns: (grace_s as i64).saturating_mul(1_000_000_000),
            tuning,
            open: BTreeMap::new(),
            closed_before_ns: i64::MIN,
            readings: 0,
            store: None,
        };
        if let Some(path) = path {
            a.recover(path)?;
        }
        Ok(a)
    }

    fn recover(&mut self, path: PathBuf) -> Result<(), AggregateError> {
        let io = |p: &Path, source| AggregateError::Io {
            path: p.to_path_buf(),
            source,
        };
        let now = Instant::now();
        let mut store = Store {
            journal_path: with_suffix(&path, ".journal"),
            tmp_path: with_suffix(&path, ".tmp"),
            path,
            generation: 0,
            journal_ok: false,
            tail_dirty: false,
            journal: None,
            journal_len: 0,
            pending: Vec::new(),
            needs_snapshot: false,
            last_snapshot_len: 0,
            last_snapshot_at: now,
            last_append_at: now,
            stats: PersistStats::default(),
        };
        // Snapshot.
        let mut snapshot_trusted = true;
        match std::fs::read(&store.path) {
            Ok(bytes) => {
                store.last_snapshot_len = bytes.len() as u64;
                match serde_json::from_slice::<SnapState>(&bytes) {
                    Ok(state) => {
                        store.generation = state.generation;
                        self.closed_before_ns = state.closed_before_ns;
                        for w in state.windows {
                            let mut fields = BTreeMap::new();
                            for (name, s) in w.fields {
                                if let Some(s) = s.stats() {
                                    fields.insert(name, s);
                                }
                            }
                            self.readings += w.seen.len();
                            let key = (series_key(&w.measurement, &w.tags), w.start_ns);
                            self.open.insert(
                                key,
                                Window {
                                    measurement: w.measurement,
                                    tags: w.tags,
                                    start_ns: w.start_ns,
                                    fields,
                                    seen: w.seen,
                                },
                            );
                        }
                    }
                    Err(e) => {
                        // Whatever follows it cannot be trusted either; the next save writes a
                        // fresh snapshot, or nothing saved from now on would be recovered.
                        snapshot_trusted = false;
                        store.needs_snapshot = true;
                        tracing::error!(
                            path = %store.path.display(),
                            "aggregation snapshot unreadable ({e}); starting with empty windows"
                        );
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io(&store.path, source)),
        }
        // Journal.
        let journal = match std::fs::read(&store.journal_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(io(&store.journal_path, source)),
        };
        if let Some(bytes) = journal {
            match parse_journal_header(&bytes) {
                None => {
                    if !bytes.is_empty() {
                        tracing::warn!(path = %store.journal_path.display(), bytes = bytes.len(),
                            "aggregation journal header torn or damaged; ignoring the journal");
                    }
                }
                Some(generation) if !snapshot_trusted || generation > store.generation => {
                    tracing::warn!(path = %store.journal_path.display(), journal = generation,
                        snapshot = store.generation,
                        "aggregation journal does not follow the snapshot; ignoring it");
                }
                Some(generation) if generation < store.generation => {
                    // A crash after a snapshot, before its journal was restarted: all in it.
                    tracing::info!(path = %store.journal_path.display(), journal = generation,
                        snapshot = store.generation,
                        "aggregation journal predates the snapshot; ignoring it");
                }
                Some(_) => {
                    let records = &bytes[JOURNAL_HEADER_LEN..];
                    let (ops, valid) = parse_records(records);
                    let n = ops.len();
                    for op in ops {
                        self.replay(op);
                    }
                    store.journal_ok = true;
                    store.journal_len = (JOURNAL_HEADER_LEN + valid) as u64;
                    if valid < records.len() {
                        tracing::warn!(path = %store.journal_path.display(), records = n,
                            dropped_bytes = records.len() - valid,
                            "aggregation journal has a torn or damaged tail; dropped it");
                        store.tail_dirty = true;
                        if let Err(e) = store.cut_tail() {
                            tracing::warn!(path = %store.journal_path.display(),
                                "cannot cut the aggregation journal's damaged tail yet: {e}");
                        }
                    }
                }
            }
        }
        self.store = Some(store);
        Ok(())
    }

    fn replay(&mut self, op: Op) {
        match op {
            Op::Add {
                measurement,
                tags,
                timestamp_ns,
                fields,
            } => {
                let start = self.window_start(timestamp_ns);
                if self.window_due(start) <= self.closed_before_ns {
                    return;
                }
                let key = (series_key(&measurement, &tags), start);
                let fields: Vec<(&str, f64)> =
                    fields.iter().map(|(n, v)| (n.as_str(), *v)).collect();
                self.apply_add(key, &measurement, &tags, timestamp_ns, &fields);
            }
            Op::Close { now_ns } => {
                let _ = self.close_due(now_ns);
            }
        }
    }

    /// Start of the window that holds `ts_ns`.
    pub fn window_start(&self, ts_ns: i64) -> i64 {
        ts_ns.div_euclid(self.window_ns) * self.window_ns
    }

    fn window_due(&self, start_ns: i64) -> i64 {
        start_ns
            .saturating_add(self.window_ns)
            .saturating_add(self.grace_ns)
    }

    /// [`Aggregator::add_at`] with the gateway's clock as `now`.
    pub fn add(&mut self, reading: &Reading) -> Result<(), AggregateError> {
        self.add_at(reading, crate::clock::now_ns())
    }

    /// Adds a reading to its window, `now_ns` being the gateway's clock. Refused (the caller
    /// counts [`AggregateError::label`]): a reading whose window was already closed and forwarded,
    /// whose window starts more than `max_ahead` after `now_ns`, that would exceed the bound on
    /// open windows or held readings, or that has no finite numeric field. A reading whose
    /// series and timestamp were already counted is accepted and ignored.
    ///
    /// Changes are kept in memory until [`Aggregator::save`].
    pub fn add_at(&mut self, reading: &Reading, now_ns: i64) -> Result<(), AggregateError> {
        let ts = reading.timestamp_ns;
        let start = self.window_start(ts);
        if self.window_due(start) <= self.closed_before_ns {
            return Err(AggregateError::Late { timestamp_ns: ts });
        }
        let max_ahead_ns = i64::try_from(self.tuning.max_ahead.as_nanos()).unwrap_or(i64::MAX);
        if start > now_ns.saturating_add(max_ahead_ns) {
            return Err(AggregateError::TooFarAhead {
                timestamp_ns: ts,
                now_ns,
                max_ahead_s: self.tuning.max_ahead.as_secs(),
            });
        }
        let fields: Vec<(&str, f64)> = reading
            .fields
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), numeric(v)?)))
            .collect();
        if fields.is_empty() {
            return Err(AggregateError::NothingToAggregate);
        }
        let key = (series_key(&reading.measurement, &reading.tags), start);
        match self.open.get(&key) {
            Some(w) if w.seen.contains(&ts) => return Ok(()),
            Some(_) => {}
            None if self.open.len() >= self.tuning.max_windows => {
                return Err(AggregateError::TooManyWindows {
                    limit: self.tuning.max_windows,
                })
            }
            None => {}
        }
        if self.readings >= self.tuning.max_readings {
            return Err(AggregateError::TooManyReadings {
                limit: self.tuning.max_readings,
            });
        }
        if let Some(store) = &mut self.store {
            if store.pending.len() >= MAX_PENDING {
                return Err(AggregateError::Unsaved {
                    bytes: store.pending.len(),
                });
            }
            let out = &mut store.pending;
            let at = begin_record(out, KIND_ADD);
            out.extend_from_slice(&ts.to_le_bytes());
            put_str(out, &reading.measurement);
            out.extend_from_slice(&(reading.tags.len() as u32).to_le_bytes());
            for (k, v) in &reading.tags {
                put_str(out, k);
                put_str(out, v);
            }
            out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
            for (name, v) in &fields {
                put_str(out, name);
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            if let Err(bytes) = finish_record(out, at) {
                return Err(AggregateError::TooLarge {
                    bytes,
                    limit: MAX_RECORD,
                });
            }
        }
        self.apply_add(key, &reading.measurement, &reading.tags, ts, &fields);
        Ok(())
    }

    fn apply_add(
        &mut self,
        key: (String, i64),
        measurement: &str,
        tags: &BTreeMap<String, String>,
        ts: i64,
        fields: &[(&str, f64)],
    ) {
        let start = key.1;
        let w = self.open.entry(key).or_insert_with(|| Window {
            measurement: measurement.to_owned(),
            tags: tags.clone(),
            start_ns: start,
            fields: BTreeMap::new(),
            seen: BTreeSet::new(),
        });
        if !w.seen.insert(ts) {
            return;
        }
        self.readings += 1;
        for (name, v) in fields {
            match w.fields.get_mut(*name) {
                Some(s) => s.add(*v),
                None => {
                    w.fields.insert((*name).to_owned(), FieldStats::new(*v));
                }
            }
        }
    }

    /// Closes every window whose end plus grace is at or before `now_ns` (the gateway's clock),
    /// and returns their aggregates. The close is recorded for the next [`Aggregator::save`].
    pub fn flush_due(&mut self, now_ns: i64) -> Vec<Reading> {
        let out = self.close_due(now_ns);
        if !out.is_empty() {
            if let Some(store) = &mut self.store {
                let at = begin_record(&mut store.pending, KIND_CLOSE);
                store.pending.extend_from_slice(&now_ns.to_le_bytes());
                // Nine bytes: cannot exceed MAX_RECORD.
                let _ = finish_record(&mut store.pending, at);
            }
        }
        out
    }

    fn close_due(&mut self, now_ns: i64) -> Vec<Reading> {
        let due: Vec<(String, i64)> = self
            .open
            .iter()
            .filter(|(_, w)| self.window_due(w.start_ns) <= now_ns)
            .map(|(k, _)| k.clone())
            .collect();
        if now_ns > self.closed_before_ns {
            self.closed_before_ns = now_ns;
        }
        let mut out = Vec::with_capacity(due.len());
        for k in due {
            if let Some(w) = self.open.remove(&k) {
                self.readings = self.readings.saturating_sub(w.seen.len());
                out.push(self.emit(&w));
            }
        }
        out
    }

    fn emit(&self, w: &Window) -> Reading {
        let mut r = Reading::new(w.measurement.clone(), w.start_ns);
        r.tags = w.tags.clone();
        r.tags
            .insert("agg".into(), format!("{}s", self.window_ns / 1_000_000_000));
        for (name, s) in &w.fields {
            r.fields.insert(
                format!("{name}_mean"),
                FieldValue::Float(s.sum / s.count as f64),
            );
            r.fields
                .insert(format!("{name}_min"), FieldValue::Float(s.min));
            r.fields
                .insert(format!("{name}_max"), FieldValue::Float(s.max));
            r.fields
                .insert(format!("{name}_count"), FieldValue::Int(s.count as i64));
        }
        r
    }

    /// Open windows, for inspection.
    pub fn windows(&self) -> impl Iterator<Item = &Window> {
        self.open.values()
    }

    /// Number of open windows.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Bytes written by saving so far (zero without a path).
    pub fn persist_stats(&self) -> PersistStats {
        self.store
            .as_ref()
            .map(|s| PersistStats {
                journal_len: s.journal_len,
                ..s.stats
            })
            .unwrap_or_default()
    }

    /// Makes every change since the last save durable. **Blocks** on disk I/O (`fdatasync`, and
    /// now and then a snapshot): call it from `tokio::task::spawn_blocking`, not on the runtime.
    ///
    /// When it returns `Ok`, every reading added so far survives a crash, and windows already
    /// returned by [`Aggregator::flush_due`] are not emitted again after a restart. Its cost is
    /// one append of the records of what changed since the previous save (nothing at all when
    /// nothing changed), plus, now and then, a snapshot of the whole state (see the module docs).
    /// Call it also on an idle clock tick: that is when a quiet input's journal is compacted.
    pub fn save(&mut self) -> Result<(), AggregateError> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        if store.needs_snapshot {
            return self.snapshot();
        }
        let has_records = store.journal_ok && store.journal_len > JOURNAL_HEADER_LEN as u64;
        if store.pending.is_empty() {
            let idle_due = store.idle_due(&self.tuning);
            if has_records && idle_due {
                if let Err(e) = self.snapshot() {
                    tracing::warn!("cannot compact the aggregation journal: {e}");
                }
            }
            return Ok(());
        }
        store.append()?;
        let limit = (store.last_snapshot_len.saturating_mul(2)).clamp(
            self.tuning.journal_min_bytes,
            self.tuning.journal_max_bytes.max(1),
        );
        if store.journal_len >= limit
            || store.last_snapshot_at.elapsed() >= self.tuning.snapshot_interval
        {
            // What was just appended is durable already; a failed snapshot is retried later.
            if let Err(e) = self.snapshot() {
                tracing::warn!("cannot compact the aggregation journal: {e}");
            }
        }
        Ok(())
    }

    /// Writes the whole state as the next generation's snapshot and starts its journal empty.
    fn snapshot(&mut self) -> Result<(), AggregateError> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let generation = store.generation + 1;
        let state = SnapStateRef {
            format: SNAPSHOT_FORMAT,
            generation,
            closed_before_ns: self.closed_before_ns,
            windows: self
                .open
                .values()
                .map(|w| SnapWindowRef {
                    measurement: &w.measurement,
                    tags: &w.tags,
                    start_ns: w.start_ns,
                    fields: w
                        .fields
                        .iter()
                        .map(|(n, s)| (n.as_str(), SnapStats::of(s)))
                        .collect(),
                    seen: &w.seen,
                })
                .collect(),
        };
        let path = store.path.clone();
        let io = |p: &Path, source| AggregateError::Io {
            path: p.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec(&state).map_err(|e| io(&path, e.into()))?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        {
            let mut f = File::create(&store.tmp_path).map_err(|e| io(&store.tmp_path, e))?;
            f.write_all(&bytes).map_err(|e| io(&store.tmp_path, e))?;
            f.sync_all().map_err(|e| io(&store.tmp_path, e))?;
        }
        store.stats.snapshot_bytes += bytes.len() as u64;
        std::fs::rename(&store.tmp_path, &path).map_err(|e| io(&path, e))?;
        // From here the journal on disk may be older than the snapshot: nothing more is appended
        // to it until the snapshot is durable and the journal restarted.
        store.generation = generation;
        store.journal_ok = false;
        store.needs_snapshot = true;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&dir, e))?;
        store.needs_snapshot = false;
        store.pending.clear();
        store.last_snapshot_len = bytes.len() as u64;
        store.last_snapshot_at = Instant::now();
        store.stats.snapshots += 1;
        // The snapshot holds everything; a journal that cannot be restarted now is restarted by
        // the next save.
        store.reset_journal()
    }
}

impl Store {
    fn io(&self, source: std::io::Error) -> AggregateError {
        AggregateError::Io {
            path: self.journal_path.clone(),
            source,
        }
    }

    fn idle_due(&self, tuning: &Tuning) -> bool {
        let Some(after) = tuning.idle_snapshot_after else {
            return false;
        };
        let records = self.journal_len.saturating_sub(JOURNAL_HEADER_LEN as u64);
        (self.last_append_at.elapsed() >= after && records >= self.last_snapshot_len / 4)
            || self.last_snapshot_at.elapsed() >= tuning.snapshot_interval
    }

    fn file(&mut self) -> std::io::Result<&mut File> {
        if self.journal.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.journal_path)?;
            self.journal = Some(f);
        }
        self.journal
            .as_mut()
            .ok_or_else(|| std::io::Error::other("journal not open"))
    }

    fn cut_tail(&mut self) -> std::io::Result<()> {
        let len = self.journal_len;
        let f = self.file()?;
        f.set_len(len)?;
        f.sync_data()?;
        self.tail_dirty = false;
        Ok(())
    }

    /// Truncates the journal to a header of the current generation (creating it if needed).
    fn reset_journal(&mut self) -> Result<(), AggregateError> {
        if let Some(dir) = self.journal_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let existed = self.journal_path.exists();
        let header = journal_header(self.generation);
        let r = self.file().and_then(|f| {
            f.set_len(0)?;
            write_at(f, 0, &header)
        });
        if let Err(e) = r {
            self.journal = None;
            return Err(self.io(e));
        }
        self.stats.journal_bytes += header.len() as u64;
        if !existed {
            if let Some(dir) = self.journal_path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| self.io(e))?;
            }
        }
        self.journal_len = header.len() as u64;
        self.journal_ok = true;
        self.tail_dirty = false;
        Ok(())
    }

    /// Appends the pending records in one write and `fdatasync`s.
    fn append(&mut self) -> Result<(), AggregateError> {
        if !self.journal_ok {
            self.reset_journal()?;
        }
        if self.tail_dirty {
            self.cut_tail().map_err(|e| self.io(e))?;
        }
        let at = self.journal_len;
        let pending = std::mem::take(&mut self.pending);
        let r = self.file().and_then(|f| write_at(f, at, &pending));
        match r {
            Ok(()) => {
                self.stats.journal_bytes += pending.len() as u64;
                self.journal_len += pending.len() as u64;
                self.last_append_at = Instant::now();
                // Keep the allocation for the next changes.
                self.pending = pending;
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                // Keep the changes for the next save, which first cuts whatever part was written.
                self.pending = pending;
                self.tail_dirty = true;
                self.journal = None;
                Err(self.io(e))
            }
        }
    }
}

/// Writes `bytes` at offset `at` and `fdatasync`s.
fn write_at(f: &mut File, at: u64, bytes: &[u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(at))?;
    f.write_all(bytes)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    /// The gateway's clock in most tests: after every reading's window, so none is "ahead".
    const NOW: i64 = 1_700_001_000 * S;

    fn read_all(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_default()
    }

    fn r(sensor: &str, ts_s: f64, pm: f64) -> Reading {
        Reading::new("environment", (ts_s * S as f64) as i64)
            .tag("sensor_id", sensor)
            .field("pm2_5", FieldValue::Float(pm))
            .field("ok", FieldValue::Bool(true))
    }

    fn field(r: &Reading, name: &str) -> FieldValue {
        r.fields[name].clone()
    }

    /// Everything that defines the state (for comparing a recovered aggregator with the original).
    fn state(a: &Aggregator) -> (i64, Vec<Window>) {
        (a.closed_before_ns, a.windows().cloned().collect())
    }

    /// No automatic compaction: the journal holds every change.
    fn journal_only() -> Tuning {
        Tuning {
            journal_min_bytes: u64::MAX,
            journal_max_bytes: u64::MAX,
            snapshot_interval: Duration::from_secs(1 << 30),
            idle_snapshot_after: None,
            ..Tuning::default()
        }
    }

    #[test]
    fn windows_give_exact_mean_min_max_count() {
        let mut a = Aggregator::open(60, 5, None).unwrap();
        let t0 = 1_700_000_040; // window [1_700_000_040, 1_700_000_100)
        assert_eq!(t0 % 60, 0);
        let now = t0 * S;
        a.add_at(&r("s1", 1_700_000_040.0, 10.0), now).unwrap();
        a.add_at(&r("s1", 1_700_000_099.9, 30.0), now).unwrap();
        a.add_at(&r("s2", 1_700_000_050.0, 7.5), now).unwrap();
        a.add_at(&r("s1", 1_700_000_045.0, 20.0), now).unwrap();
        a.add_at(&r("s1", 1_700_000_101.0, 99.0), now).unwrap(); // next window
        assert!(a.flush_due((t0 + 64) * S).is_empty(), "grace not over yet");
        a.add_at(&r("s1", 1_700_000_098.0, 0.5), now).unwrap(); // late, but within grace
        let mut out = a.flush_due((t0 + 65) * S);
        out.sort_by(|x, y| x.tags["sensor_id"].cmp(&y.tags["sensor_id"]));
        assert_eq!(out.len(), 2);
        let c = &out[0];
        assert_eq!(c.timestamp_ns, t0 * S);
        assert_eq!(c.tags["agg"], "60s");
        assert_eq!(c.tags["sensor_id"], "s1");
        assert_eq!(field(c, "pm2_5_mean"), FieldValue::Float(15.125));
        assert_eq!(field(c, "pm2_5_min"), FieldValue::Float(0.5));
        assert_eq!(field(c, "pm2_5_max"), FieldValue::Float(30.0));
        assert_eq!(field(c, "pm2_5_count"), FieldValue::Int(4));
        assert!(
            !c.fields.contains_key("ok_mean"),
            "bools are not aggregated"
        );
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(field(&out[1], "pm2_5_mean"), FieldValue::Float(7.5));
        assert_eq!(field(&out[1], "pm2_5_count"), FieldValue::Int(1));

        // Too late: that window is gone.
        let e = a.add_at(&r("s1", 1_700_000_050.0, 1.0), now).unwrap_err();
        assert_eq!(e.label(), "late_for_window");
        // The next window is still open and closes later.
        let out = a.flush_due((t0 + 60 + 65) * S);
        assert_eq!(out.len(), 1);
        assert_eq!(field(&out[0], "pm2_5_mean"), FieldValue::Float(99.0));
    }

    #[test]
    fn a_window_spans_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agg").join("env.state");
        {
            let mut a = Aggregator::open(60, 5, Some(path.clone())).unwrap();
            a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
            a.add_at(&r("s1", 1_700_000_042.0, 5.0), NOW).unwrap();
            a.save().unwrap();
            // dropped without flushing: a crash or restart
        }
        let mut a = Aggregator::open(60, 5, Some(path)).unwrap();
        a.add_at(&r("s1", 1_700_000_043.0, 6.0), NOW).unwrap();
        let out = a.flush_due(1_700_000_200 * S);
        assert_eq!(out.len(), 1);
        assert_eq!(field(&out[0], "pm2_5_mean"), FieldValue::Float(4.0));
        assert_eq!(field(&out[0], "pm2_5_min"), FieldValue::Float(1.0));
        assert_eq!(field(&out[0], "pm2_5_max"), FieldValue::Float(6.0));
        assert_eq!(field(&out[0], "pm2_5_count"), FieldValue::Int(3));
    }

    #[test]
    fn a_redelivered_reading_is_counted_once() {
        let mut a = Aggregator::open(60, 5, None).unwrap();
        a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
        a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
        a.add_at(&r("s1", 1_700_000_042.0, 3.0), NOW).unwrap();
        let out = a.flush_due(1_700_000_200 * S);
        assert_eq!(field(&out[0], "pm2_5_count"), FieldValue::Int(2));
        assert_eq!(field(&out[0], "pm2_5_mean"), FieldValue::Float(2.0));
    }

    #[test]
    fn corrupt_snapshot_starts_empty_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        std::fs::write(&path, b"{not json").unwrap();
        let mut a = Aggregator::open(60, 5, Some(path.clone())).unwrap();
        assert_eq!(a.windows().count(), 0);
        // And it saves and recovers normally from there.
        a.add_at(&r("s1", 1_700_000_041.0, 2.0), NOW).unwrap();
        a.save().unwrap();
        let b = Aggregator::open(60, 5, Some(path)).unwrap();
        assert_eq!(state(&b), state(&a));
    }

    #[test]
    fn a_format_1_state_file_is_still_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        let start = 1_700_000_040 * S;
        std::fs::write(
            &path,
            format!(
                r#"{{"closed_before_ns":5,"windows":[{{"measurement":"environment","tags":{{"sensor_id":"s1"}},"start_ns":{start},"fields":{{"pm2_5":{{"sum":3.0,"min":1.0,"max":2.0,"count":2}}}},"seen":[{},{}]}}]}}"#,
                start + 1,
                start + 2
            ),
        )
        .unwrap();
        let mut a = Aggregator::open(60, 5, Some(path)).unwrap();
        a.add_at(&r("s1", 1_700_000_043.0, 6.0), NOW).unwrap();
        let out = a.flush_due(1_700_000_200 * S);
        assert_eq!(field(&out[0], "pm2_5_count"), FieldValue::Int(3));
        assert_eq!(field(&out[0], "pm2_5_mean"), FieldValue::Float(3.0));
        assert_eq!(field(&out[0], "pm2_5_max"), FieldValue::Float(6.0));
    }

    #[test]
    fn open_windows_are_bounded() {
        let tuning = Tuning {
            max_windows: 3,
            ..Tuning::default()
        };
        let mut a = Aggregator::open_with(60, 5, None, tuning).unwrap();
        for s in ["s1", "s2", "s3"] {
            a.add_at(&r(s, 1_700_000_041.0, 1.0), NOW).unwrap();
        }
        // A fourth series, or a new window of a known series, is refused...
        let e = a.add_at(&r("s4", 1_700_000_041.0, 1.0), NOW).unwrap_err();
        assert!(
            matches!(e, AggregateError::TooManyWindows { limit: 3 }),
            "{e}"
        );
        assert_eq!(e.label(), "too_many_windows");
        let e = a.add_at(&r("s1", 1_700_000_101.0, 1.0), NOW).unwrap_err();
        assert!(matches!(e, AggregateError::TooManyWindows { .. }), "{e}");
        // ...but the open windows still take readings.
        a.add_at(&r("s1", 1_700_000_042.0, 3.0), NOW).unwrap();
        assert_eq!(a.open_windows(), 3);
        // Once windows close there is room again.
        assert_eq!(a.flush_due(1_700_000_200 * S).len(), 3);
        a.add_at(&r("s4", 1_700_000_241.0, 1.0), 1_700_000_200 * S)
            .unwrap();
        assert_eq!(a.open_windows(), 1);
    }

    #[test]
    fn held_readings_are_bounded() {
        let tuning = Tuning {
            max_readings: 4,
            ..Tuning::default()
        };
        let mut a = Aggregator::open_with(60, 5, None, tuning).unwrap();
        for i in 0..4 {
            a.add_at(&r("s1", 1_700_000_041.0 + i as f64, 1.0), NOW)
                .unwrap();
        }
        let e = a.add_at(&r("s2", 1_700_000_041.0, 1.0), NOW).unwrap_err();
        assert!(
            matches!(e, AggregateError::TooManyReadings { limit: 4 }),
            "{e}"
        );
        // A duplicate is not a new reading: still accepted (and ignored).
        a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
        let out = a.flush_due(1_700_000_200 * S);
        assert_eq!(field(&out[0], "pm2_5_count"), FieldValue::Int(4));
        a.add_at(&r("s2", 1_700_000_241.0, 1.0), 1_700_000_200 * S)
            .unwrap();
    }

    #[test]
    fn a_window_far_in_the_future_is_refused() {
        let mut a = Aggregator::open(10, 2, None).unwrap();
        let now = 1_700_000_000 * S;
        // Its window starts 60 s after now: at the bound, accepted.
        a.add_at(&r("s1", 1_700_000_060.0, 1.0), now).unwrap();
        // Window [now+70, now+80) starts 70 s after now: refused.
        let e = a.add_at(&r("s1", 1_700_000_070.0, 1.0), now).unwrap_err();
        assert!(
            matches!(
                e,
                AggregateError::TooFarAhead {
                    max_ahead_s: 60,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.label(), "window_in_future");
        // A year ahead: refused, and no window is held open by it.
        let e = a
            .add_at(&r("s2", 1_700_000_000.0 + 365.0 * 86400.0, 1.0), now)
            .unwrap_err();
        assert!(matches!(e, AggregateError::TooFarAhead { .. }), "{e}");
        assert_eq!(a.open_windows(), 1);
        // The accepted one closes when its time comes.
        assert_eq!(a.flush_due(now + 72 * S).len(), 1);
        assert_eq!(a.open_windows(), 0);
    }

    #[test]
    fn no_numeric_field_or_non_finite_values_are_not_aggregated() {
        let mut a = Aggregator::open(60, 5, None).unwrap();
        let only_bool = Reading::new("environment", NOW + S).field("ok", FieldValue::Bool(true));
        assert!(matches!(
            a.add_at(&only_bool, NOW),
            Err(AggregateError::NothingToAggregate)
        ));
        let nan = Reading::new("environment", NOW + S).field("pm", FieldValue::Float(f64::NAN));
        assert!(matches!(
            a.add_at(&nan, NOW),
            Err(AggregateError::NothingToAggregate)
        ));
        let mixed = Reading::new("environment", NOW + 2 * S)
            .field("pm", FieldValue::Float(f64::INFINITY))
            .field("t", FieldValue::Int(4));
        a.add_at(&mixed, NOW).unwrap();
        let out = a.flush_due(NOW + 1000 * S);
        assert!(!out[0].fields.contains_key("pm_count"));
        assert_eq!(field(&out[0], "t_mean"), FieldValue::Float(4.0));
    }

    /// A series of operations with a save after each (one save holds two records and a
    /// duplicate); returns (journal length once a record is on disk, state after that record) for
    /// every record, and the journal length after each save.
    #[allow(clippy::type_complexity)]
    fn run_ops(a: &mut Aggregator) -> (Vec<(u64, (i64, Vec<Window>))>, Vec<u64>) {
        let mut points = Vec::new();
        let mut saves = Vec::new();
        let end = |a: &Aggregator| {
            let s = a.store.as_ref().unwrap();
            s.journal_len.max(JOURNAL_HEADER_LEN as u64) + s.pending.len() as u64
        };
        let base = 1_700_000_040.0;
        let values = [0.1, 7.3, -2.25, 1e-9, 3.3, 12345.678, 0.7, 2.0 / 3.0];
        for (i, v) in values.iter().enumerate() {
            let sensor = ["s1", "s2", "s\u{e9}3"][i % 3];
            // The last two go to the next window, after the first one was closed.
            let ts = base + i as f64 * 3.1 + if i >= 6 { 60.0 } else { 0.0 };
            a.add_at(&r(sensor, ts, *v), NOW).unwrap();
            points.push((end(a), state(a)));
            if i == 3 {
                // Two readings and a duplicate in one save.
                a.add_at(&r("s1", base + 0.5, 9.75), NOW).unwrap();
                points.push((end(a), state(a)));
                a.add_at(&r("s1", base + 0.5, 9.75), NOW).unwrap();
                assert_eq!(end(a), points.last().unwrap().0, "a duplicate is no record");
            }
            if i == 5 {
                // First window closes; its close is a record too.
                assert!(!a.flush_due(((base as i64) + 65) * S).is_empty());
                points.push((end(a), state(a)));
            }
            a.save().unwrap();
            assert_eq!(a.persist_stats().journal_len, points.last().unwrap().0);
            saves.push(a.persist_stats().journal_len);
        }
        (points, saves)
    }

    #[test]
    fn a_crash_at_every_journal_offset_recovers_the_last_complete_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        let mut a = Aggregator::open_with(60, 5, Some(path.clone()), journal_only()).unwrap();
        // The empty state, once the journal exists.
        a.save().unwrap();
        let (points, saves) = run_ops(&mut a);
        assert_eq!(points.len(), 10);
        assert_eq!(saves.len(), 8);
        let journal = read_all(&with_suffix(&path, ".journal"));
        assert_eq!(journal.len() as u64, points.last().unwrap().0);
        assert!(!path.exists(), "no snapshot with journal_only tuning");
        let empty: (i64, Vec<Window>) = (i64::MIN, Vec::new());
        let crash = dir.path().join("crash");
        std::fs::create_dir_all(&crash).unwrap();
        let cpath = crash.join("env.state");
        let cjournal = with_suffix(&cpath, ".journal");
        let mut distinct = BTreeSet::new();
        for cut in 0..=journal.len() {
            std::fs::write(&cjournal, &journal[..cut]).unwrap();
            let b = Aggregator::open_with(60, 5, Some(cpath.clone()), journal_only()).unwrap();
            let expected = points
                .iter()
                .rev()
                .find(|(len, _)| *len as usize <= cut)
                .map(|(_, s)| s)
                .unwrap_or(&empty);
            assert_eq!(&state(&b), expected, "journal cut at byte {cut}");
            distinct.insert(format!("{:?}", state(&b)));
        }
        assert_eq!(
            distinct.len(),
            points.len() + 1,
            "every record is a distinct state"
        );
    }

    #[test]
    fn appends_after_a_torn_tail_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        let jpath = with_suffix(&path, ".journal");
        let mut a = Aggregator::open_with(60, 5, Some(path.clone()), journal_only()).unwrap();
        a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
        a.save().unwrap();
        let good = read_all(&jpath).len();
        a.add_at(&r("s1", 1_700_000_042.0, 2.0), NOW).unwrap();
        a.save().unwrap();
        drop(a);
        // Power cut in the middle of the second record; then garbage on a later sector.
        let mut j = read_all(&jpath);
        j.truncate(good + 5);
        j.extend_from_slice(&[0xAB; 40]);
        std::fs::write(&jpath, &j).unwrap();
        let mut b = Aggregator::open_with(60, 5, Some(path.clone()), journal_only()).unwrap();
        assert_eq!(b.windows().next().unwrap().fields["pm2_5"].count, 1);
        assert_eq!(read_all(&jpath).len(), good, "damaged tail cut on open");
        b.add_at(&r("s1", 1_700_000_043.0, 4.0), NOW).unwrap();
        b.save().unwrap();
        let c = Aggregator::open_with(60, 5, Some(path), journal_only()).unwrap();
        let w = c.windows().next().unwrap();
        assert_eq!(w.fields["pm2_5"].count, 2);
        assert_eq!(w.fields["pm2_5"].sum, 5.0);
    }

    #[test]
    fn save_cost_does_not_grow_with_the_number_of_open_series() {
        // Bytes written by 50 saves of one reading each, with `n` open series held.
        fn bytes_per_save(n: usize) -> (Vec<u64>, PersistStats) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("env.state");
            let mut a = Aggregator::open(60, 5, Some(path)).unwrap();
            for i in 0..n {
                a.add_at(&r(&format!("s{i:05}"), 1_700_000_041.0, 1.0), NOW)
                    .unwrap();
            }
            a.save().unwrap();
            assert_eq!(a.open_windows(), n);
            let mut costs = Vec::new();
            for k in 0..50 {
                let before = a.persist_stats();
                let sensor = format!("s{:05}", k % n);
                a.add_at(&r(&sensor, 1_700_000_042.0 + k as f64 * 0.01, 2.0), NOW)
                    .unwrap();
                a.save().unwrap();
                let after = a.persist_stats();
                costs.push(
                    after.journal_bytes + after.snapshot_bytes
                        - before.journal_bytes
                        - before.snapshot_bytes,
                );
            }
            (costs, a.persist_stats())
        }
        let (small, small_stats) = bytes_per_save(10);
        let (large, large_stats) = bytes_per_save(10_000);
        assert_eq!(
            small, large,
            "bytes per save differ with 10 vs 10,000 series"
        );
        assert!(small.iter().all(|&b| b == small[0] && b < 128), "{small:?}");
        assert_eq!(small_stats.snapshots, 0);
        assert_eq!(large_stats.snapshots, 0);
        // And nothing is written when nothing changed.
        let dir = tempfile::tempdir().unwrap();
        let mut a = Aggregator::open(60, 5, Some(dir.path().join("s"))).unwrap();
        a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
        a.save().unwrap();
        let before = a.persist_stats();
        assert!(a.flush_due(1_700_000_050 * S).is_empty());
        a.save().unwrap();
        assert_eq!(a.persist_stats(), before);
    }

    #[test]
    fn compaction_keeps_the_journal_bounded_and_the_state_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        let tuning = Tuning {
            journal_min_bytes: 4096,
            journal_max_bytes: 8192,
            idle_snapshot_after: None,
            ..Tuning::default()
        };
        let mut a = Aggregator::open_with(5, 2, Some(path.clone()), tuning.clone()).unwrap();
        let mut emitted: BTreeMap<(String, i64), Reading> = BTreeMap::new();
        let mut max_journal = 0;
        let mut snapshots = 0;
        for i in 0..2000i64 {
            let ts = 1_700_000_000.0 + i as f64 * 0.05;
            let sensor = format!("s{}", i % 7);
            a.add_at(&r(&sensor, ts, (i % 13) as f64 * 0.3), (ts as i64) * S)
                .unwrap();
            for w in a.flush_due((ts as i64 - 1) * S) {
                let key = (w.tags["sensor_id"].clone(), w.timestamp_ns);
                assert!(emitted.insert(key, w).is_none(), "emitted twice");
            }
            a.save().unwrap();
            max_journal = max_journal.max(a.persist_stats().journal_len);
            if i % 97 == 0 {
                // Restart: the recovered state is exactly the saved one.
                let b = Aggregator::open_with(5, 2, Some(path.clone()), tuning.clone()).unwrap();
                // Windows exactly; `closed_before` is saved only when a close emitted something.
                assert_eq!(state(&b).1, state(&a).1, "after {i} readings");
                snapshots += a.persist_stats().snapshots;
                a = b;
            }
        }
        snapshots += a.persist_stats().snapshots;
        assert!(snapshots >= 10, "{snapshots} snapshots");
        assert!(max_journal < 8192 + 200, "journal grew to {max_journal}");
        // Every reading is in exactly one emitted or open window.
        let counted: i64 = emitted
            .values()
            .map(|w| match w.fields["pm2_5_count"] {
                FieldValue::Int(c) => c,
                _ => 0,
            })
            .sum::<i64>()
            + a.windows()
                .map(|w| w.fields["pm2_5"].count as i64)
                .sum::<i64>();
        assert_eq!(counted, 2000);
    }

    #[test]
    fn exact_mean_min_max_count_across_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        // Values whose sum is inexact in f64: the sum must survive bit for bit.
        let values = [
            0.1,
            0.2,
            0.30000000000000004,
            1e16,
            -1e16,
            2.0 / 3.0,
            1e-300,
        ];
        let mut reference = Aggregator::open(60, 5, None).unwrap();
        for (i, v) in values.iter().enumerate() {
            let reading = r("s1", 1_700_000_041.0 + i as f64, *v);
            reference.add_at(&reading, NOW).unwrap();
            let mut a = Aggregator::open(60, 5, Some(path.clone())).unwrap();
            a.add_at(&reading, NOW).unwrap();
            a.save().unwrap();
            if i == 3 {
                // A snapshot in between: floats go through JSON.
                a.snapshot().unwrap();
            }
        }
        let mut a = Aggregator::open(60, 5, Some(path)).unwrap();
        assert_eq!(state(&a).1, state(&reference).1);
        let got = a.flush_due(1_700_000_200 * S);
        let want = reference.flush_due(1_700_000_200 * S);
        assert_eq!(got, want);
        let sum: f64 = values.iter().sum();
        assert_eq!(
            field(&got[0], "pm2_5_mean"),
            FieldValue::Float(sum / values.len() as f64)
        );
        assert_eq!(field(&got[0], "pm2_5_min"), FieldValue::Float(-1e16));
        assert_eq!(field(&got[0], "pm2_5_max"), FieldValue::Float(1e16));
        assert_eq!(field(&got[0], "pm2_5_count"), FieldValue::Int(7));
    }

    #[test]
    fn a_journal_older_than_the_snapshot_is_ignored() {
        // Crash after the snapshot rename, before the journal was restarted: the old journal's
        // records are all in the snapshot and must not be applied again.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        let jpath = with_suffix(&path, ".journal");
        let mut a = Aggregator::open_with(60, 5, Some(path.clone()), journal_only()).unwrap();
        a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
        a.add_at(&r("s1", 1_700_000_042.0, 2.0), NOW).unwrap();
        a.save().unwrap();
        let old_journal = read_all(&jpath);
        // Close the window, then snapshot: the old journal would re-open it.
        assert_eq!(a.flush_due(1_700_000_200 * S).len(), 1);
        a.snapshot().unwrap();
        std::fs::write(&jpath, &old_journal).unwrap();
        let b = Aggregator::open_with(60, 5, Some(path), journal_only()).unwrap();
        assert_eq!(b.open_windows(), 0);
        assert_eq!(state(&b), state(&a));
    }

    #[test]
    fn a_quiet_input_gets_its_journal_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        let tuning = Tuning {
            idle_snapshot_after: Some(Duration::from_millis(50)),
            ..Tuning::default()
        };
        let mut a = Aggregator::open_with(60, 5, Some(path.clone()), tuning).unwrap();
        a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
        a.save().unwrap();
        assert_eq!(a.persist_stats().snapshots, 0);
        a.save().unwrap(); // not idle long enough yet
        assert_eq!(a.persist_stats().snapshots, 0);
        std::thread::sleep(Duration::from_millis(60));
        a.save().unwrap();
        assert_eq!(a.persist_stats().snapshots, 1);
        assert_eq!(a.persist_stats().journal_len, JOURNAL_HEADER_LEN as u64);
        // The snapshot is readable JSON with the window in it.
        let v: serde_json::Value = serde_json::from_slice(&read_all(&path)).unwrap();
        assert_eq!(v["windows"][0]["fields"]["pm2_5"]["count"], 1);
        assert_eq!(v["windows"][0]["tags"]["sensor_id"], "s1");
    }

    #[test]
    fn the_aggregator_can_be_moved_to_a_blocking_thread() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Aggregator::open(60, 5, Some(dir.path().join("s"))).unwrap();
        a.add_at(&r("s1", 1_700_000_041.0, 1.0), NOW).unwrap();
        let (a, saved) = std::thread::spawn(move || {
            let res = a.save();
            (a, res)
        })
        .join()
        .unwrap();
        saved.unwrap();
        assert_eq!(a.open_windows(), 1);
    }
}
