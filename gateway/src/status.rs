//! What the gateway knows about itself right now, for `/readyz`, the live page and `status`.
//!
//! Inputs report their connection state here; [`crate::pipeline::Ingest`] offers the line
//! protocol it commits to the live feed ([`LiveFeed`]) while someone watches. Both are cheap
//! and never block an input: the live feed costs one atomic load per message while nobody
//! watches, and then a bounded copy that skips (and counts) what the board cannot take.
//!
//! MQTT connections and serial ports report into the same [`StatusRegistry`] (the one the
//! pipeline's [`crate::pipeline::Ingest`] carries): an MQTT input as an [`InputState`], a serial
//! port as a [`SerialPortStatus`] with its frame counts. [`StatusRegistry::snapshot`] folds the
//! ports into the per-input map ([`merge_serial_ports`]), so readiness, `/api/sensors`, the live
//! page and `status` see both alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Kind of input, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Mqtt,
    Serial,
    /// A webhook input (`[[inputs.http]]`): up while it listens.
    Http,
}

/// Connection state of one input (an MQTT connection or a serial port).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputState {
    pub kind: InputKind,
    /// Broker URL or port path.
    pub target: String,
    pub up: bool,
    /// When it last went up or down (Unix ms).
    pub since_ms: u64,
    /// Last error, in words a technician can act on.
    pub last_error: Option<String>,
    /// Frame counts, for serial ports (absent for MQTT inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialCounts>,
    /// Set while the input receives messages but none are committed (a stall), in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<String>,
}

/// What is known about one serial port, for health pages and `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialPortStatus {
    /// The `port` label: the input's name, else its device path.
    pub port: String,
    pub path: PathBuf,
    pub up: bool,
    /// When the port went down (or, if it never opened, when the input started).
    pub down_since: Option<SystemTime>,
    /// When the port was last opened, while up.
    pub up_since: Option<SystemTime>,
    /// The last open/read error, while down.
    pub last_error: Option<String>,
    /// Frames (or Modbus answers) decoded since start.
    pub good_frames: u64,
    /// Bad frames / failed Modbus requests since start.
    pub bad_frames: u64,
    /// The same by reason: a frame reason label (`checksum`, `noise`, ...), or for Modbus
    /// `slave=<id>,reason=<label>`.
    pub bad_by_reason: BTreeMap<String, u64>,
}

/// What a serial port has decoded since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SerialCounts {
    /// The device path (also the input's `target`).
    pub path: String,
    /// Frames (or Modbus answers) decoded.
    pub frames_good: u64,
    /// Bad frames, noise runs and failed Modbus requests.
    pub frames_bad: u64,
    /// The same by reason (`checksum`, `noise`, … or, for Modbus, `slave=<id>,reason=<label>`).
    pub bad_by_reason: BTreeMap<String, u64>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Adds each serial port of `ports` to `inputs` as a [`InputKind::Serial`] input keyed by its
/// port label (the input's name, else its device path). A port registered in the
/// [`StatusRegistry`] under the same name is replaced by the port's own, fresher state; should an
/// MQTT input carry the same name, the port is keyed `serial:<label>` so neither hides the other.
pub fn merge_serial_ports(
    inputs: &mut BTreeMap<String, InputState>,
    ports: &[SerialPortStatus],
    now_ms: u64,
) {
    for p in ports {
        let since = if p.up { p.up_since } else { p.down_since };
        let state = InputState {
            kind: InputKind::Serial,
            target: p.path.display().to_string(),
            up: p.up,
            since_ms: since.map_or(now_ms, unix_ms),
            last_error: if p.up { None } else { p.last_error.clone() },
            stalled: None,
            serial: Some(SerialCounts {
                path: p.path.display().to_string(),
                frames_good: p.good_frames,
                frames_bad: p.bad_frames,
                bad_by_reason: p.bad_by_reason.clone(),
            }),
        };
        let key = match inputs.get(&p.port) {
            Some(existing) if existing.kind != InputKind::Serial => format!("serial:{}", p.port),
            _ => p.port.clone(),
        };
        inputs.insert(key, state);
    }
}

/// Shared registry of input states: MQTT inputs keyed by input name, serial ports by port label.
#[derive(Debug, Clone, Default)]
pub struct StatusRegistry {
    inputs: Arc<Mutex<BTreeMap<String, InputState>>>,
    ports: Arc<Mutex<BTreeMap<String, SerialPortStatus>>>,
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

impl StatusRegistry {
    /// Registers an input as down (not yet connected).
    pub fn register(&self, name: &str, kind: InputKind, target: &str) {
        if let Ok(mut map) = self.inputs.lock() {
            map.insert(
                name.to_owned(),
                InputState {
                    kind,
                    target: target.to_owned(),
                    up: false,
                    since_ms: now_ms(),
                    last_error: None,
                    serial: None,
                    stalled: None,
                },
            );
        }
    }

    /// Forgets an input that stopped (at shutdown, or removed or restarted by a reload).
    pub fn unregister(&self, name: &str) {
        if let Ok(mut map) = self.inputs.lock() {
            map.remove(name);
        }
    }

    /// Forgets a serial port whose input stopped.
    pub fn unregister_port(&self, port: &str) {
        let mut map = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(port);
    }

    /// Marks an input up or down; `since_ms` changes only when the state flips.
    pub fn set(&self, name: &str, up: bool, error: Option<String>) {
        if let Ok(mut map) = self.inputs.lock() {
            if let Some(s) = map.get_mut(name) {
                if s.up != up {
                    s.up = up;
                    s.since_ms = now_ms();
                }
                if error.is_some() || up {
                    s.last_error = error;
                }
            }
        }
    }

    /// Marks an input stalled (`Some(why)`) or flowing again (`None`).
    pub fn set_stalled(&self, name: &str, stalled: Option<String>) {
        if let Ok(mut map) = self.inputs.lock() {
            if let Some(s) = map.get_mut(name) {
                s.stalled = stalled;
            }
        }
    }

    /// Registers a serial port as down since `now` (not yet opened), with no frames counted.
    pub fn register_port(&self, port: &str, path: &Path, now: SystemTime) {
        let mut map = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(
            port.to_owned(),
            SerialPortStatus {
                port: port.to_owned(),
                path: path.to_path_buf(),
                up: false,
                down_since: Some(now),
                up_since: None,
                last_error: None,
                good_frames: 0,
                bad_frames: 0,
                bad_by_reason: BTreeMap::new(),
            },
        );
    }

    /// Applies `f` to a registered serial port's state (nothing if `port` is not registered).
    pub fn update_port(&self, port: &str, f: impl FnOnce(&mut SerialPortStatus)) {
        let mut map = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(port) {
            f(s);
        }
    }

    /// Every serial port's state, ordered by port label.
    pub fn serial_ports(&self) -> Vec<SerialPortStatus> {
        let map = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// A copy of every input's state, serial ports included ([`merge_serial_ports`]).
    pub fn snapshot(&self) -> BTreeMap<String, InputState> {
        let mut inputs = self.inputs.lock().map(|m| m.clone()).unwrap_or_default();
        merge_serial_ports(&mut inputs, &self.serial_ports(), now_ms());
        inputs
    }
}

/// How long the live feed stays armed after the last request of a watcher (the live page,
/// `/api/sensors`, `ioc-gateway status`); an open `/api/live` stream keeps it armed.
pub const LIVE_WATCH_HOLD: Duration = Duration::from_secs(300);
/// Line protocol bytes the feed holds between two takes of the board; what arrives beyond it
/// until the next take is not shown (counted as sampled out), never queued.
pub const LIVE_PENDING_MAX_BYTES: usize = 128 * 1024;

/// The hand-over of accepted readings from the ingest path to the live board.
///
/// It costs one relaxed atomic load per ingested message while nobody watches: the board and
/// the live page then see nothing, and nothing is cloned, allocated or locked. Once armed (by
/// [`LiveFeed::watch`], or always with [`LiveFeed::set_always`]), the ingest path copies the
/// line protocol it already encoded (one `memcpy` per message, no per-reading work) into a
/// bounded buffer, which the board's task takes a few times a second and parses at its own pace:
/// what arrives while the buffer is full is skipped and counted ([`LiveFeed::sampled_out`]), so
/// a viewer's cost is bounded by [`LIVE_PENDING_MAX_BYTES`] per take, whatever the input rate.
#[derive(Debug, Clone)]
pub struct LiveFeed {
    inner: Arc<LiveFeedInner>,
}

#[derive(Debug)]
struct LiveFeedInner {
    armed: AtomicBool,
    always: AtomicBool,
    /// Unix ms until which the feed stays armed without an open stream.
    watched_until_ms: AtomicU64,
    /// When the feed was last armed after being idle (Unix ms; 0 never).
    armed_since_ms: AtomicU64,
    pending: Mutex<LiveBatch>,
    max_bytes: usize,
    sampled_out: AtomicU64,
}

/// Line protocol offered by the inputs since the last take, as chunks of one message each.
#[derive(Debug, Default)]
pub struct LiveBatch {
    pub bytes: Vec<u8>,
    pub chunks: Vec<LiveChunk>,
}

/// One input's lines in a [`LiveBatch`]: `bytes[previous end..end]`.
#[derive(Debug, Clone)]
pub struct LiveChunk {
    pub input: Arc<str>,
    pub end: usize,
    /// When the gateway accepted them (Unix ms).
    pub received_ms: u64,
}

impl LiveBatch {
    /// Each chunk's input, acceptance time and line protocol.
    pub fn chunks(&self) -> impl Iterator<Item = (&LiveChunk, &[u8])> {
        let mut start = 0;
        self.chunks.iter().map(move |c| {
            let lines = self.bytes.get(start..c.end).unwrap_or_default();
            start = c.end;
            (c, lines)
        })
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.chunks.clear();
    }
}

impl LiveFeed {
    /// A feed holding at most `max_bytes` between takes; idle (unarmed) until watched.
    pub fn new(max_bytes: usize) -> Self {
        LiveFeed {
            inner: Arc::new(LiveFeedInner {
                armed: AtomicBool::new(false),
                always: AtomicBool::new(false),
                watched_until_ms: AtomicU64::new(0),
                armed_since_ms: AtomicU64::new(0),
                pending: Mutex::default(),
                max_bytes: max_bytes.max(1),
                sampled_out: AtomicU64::new(0),
            }),
        }
    }

    /// `[http] live_board = "always"`: the board is fed whether or not anyone watches.
    pub fn set_always(&self, always: bool) {
        self.inner.always.store(always, Ordering::Relaxed);
        if always {
            self.arm(now_ms());
        }
    }

    /// Whether the ingest path should offer its lines (one relaxed load).
    #[inline]
    pub fn is_armed(&self) -> bool {
        self.inner.armed.load(Ordering::Relaxed)
    }

    /// Someone looks: keep the feed armed for [`LIVE_WATCH_HOLD`] from now.
    pub fn watch(&self) {
        let now = now_ms();
        self.inner
            .watched_until_ms
            .store(now + LIVE_WATCH_HOLD.as_millis() as u64, Ordering::Relaxed);
        self.arm(now);
    }

    fn arm(&self, now: u64) {
        if !self.inner.armed.swap(true, Ordering::Relaxed) {
            self.inner.armed_since_ms.store(now, Ordering::Relaxed);
        }
    }

    /// When the feed was armed after being idle (Unix ms), while it is armed.
    pub fn armed_since_ms(&self) -> Option<u64> {
        self.is_armed()
            .then(|| self.inner.armed_since_ms.load(Ordering::Relaxed))
    }

    /// Offers the line protocol `input` just committed (no-op unless armed). Skipped and counted
    /// when the pending bytes would pass the bound.
    pub fn offer(&self, input: &str, lines: &[u8]) {
        if lines.is_empty() || !self.is_armed() {
            return;
        }
        let Ok(mut pending) = self.inner.pending.lock() else {
            return;
        };
        if pending.bytes.len() + lines.len() > self.inner.max_bytes {
            drop(pending);
            self.inner.sampled_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(lines);
        let end = pending.bytes.len();
        pending.chunks.push(LiveChunk {
            input: Arc::from(input),
            end,
            received_ms: now_ms(),
        });
    }

    /// The board's tick: swaps what was offered into `into` (cleared first), and disarms the
    /// feed when nobody watched for [`LIVE_WATCH_HOLD`] and no stream (`streams`) is open.
    pub fn take(&self, streams: usize, into: &mut LiveBatch) {
        self.take_at(streams, now_ms(), into);
    }

    fn take_at(&self, streams: usize, now: u64, into: &mut LiveBatch) {
        into.clear();
        if let Ok(mut pending) = self.inner.pending.lock() {
            std::mem::swap(&mut *pending, into);
        }
        let idle = streams == 0
            && !self.inner.always.load(Ordering::Relaxed)
            && now >= self.inner.watched_until_ms.load(Ordering::Relaxed);
        if idle {
            self.inner.armed.store(false, Ordering::Relaxed);
        }
    }

    /// Messages the board did not see because the pending bytes were at their bound.
    pub fn sampled_out(&self) -> u64 {
        self.inner.sampled_out.load(Ordering::Relaxed)
    }
}

/// The store as the forwarder sees it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreSnapshot {
    /// When a batch was last confirmed by the store (Unix ms).
    pub last_success_ms: Option<u64>,
    /// When the current delivery attempt began, if one is in progress (Unix ms).
    pub sending_since_ms: Option<u64>,
    /// Last error the forwarder saw, if the last attempt failed.
    pub last_error: Option<String>,
    pub batches_sent: u64,
    pub lines_sent: u64,
    /// `host:port` of the store URL in use, once the output has several (`urls`) and moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Shared, updated by the forwarder.
#[derive(Debug, Clone, Default)]
pub struct StoreState {
    inner: Arc<Mutex<StoreSnapshot>>,
}

impl StoreState {
    /// The output moved to another of its URLs.
    pub fn set_endpoint(&self, endpoint: String) {
        if let Ok(mut s) = self.inner.lock() {
            s.endpoint = Some(endpoint);
        }
    }
    pub fn sending(&self) {
        if let Ok(mut s) = self.inner.lock() {
            s.sending_since_ms.get_or_insert_with(now_ms);
        }
    }
    pub fn delivered(&self, lines: u32) {
        if let Ok(mut s) = self.inner.lock() {
            s.last_success_ms = Some(now_ms());
            s.sending_since_ms = None;
            s.last_error = None;
            s.batches_sent += 1;
            s.lines_sent += u64::from(lines);
        }
    }
    pub fn failed(&self, error: String) {
        if let Ok(mut s) = self.inner.lock() {
            s.last_error = Some(error);
        }
    }
    pub fn snapshot(&self) -> StoreSnapshot {
        self.inner.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Every output's [`StoreState`], by name in config order: what `/readyz`, `/api/status`, the
/// live page, `STATUS=` and the health reading show per output.
#[derive(Debug, Clone, Default)]
pub struct OutputStates {
    inner: Arc<Mutex<Vec<(String, StoreState)>>>,
}

impl OutputStates {
    /// The state of output `name`, created on first use (a reload that keeps an output keeps
    /// its figures).
    pub fn register(&self, name: &str) -> StoreState {
        let Ok(mut all) = self.inner.lock() else {
            return StoreState::default();
        };
        if let Some((_, s)) = all.iter().find(|(n, _)| n == name) {
            return s.clone();
        }
        let state = StoreState::default();
        all.push((name.to_owned(), state.clone()));
        state
    }

    /// Forgets an output a reload removed.
    pub fn unregister(&self, name: &str) {
        if let Ok(mut all) = self.inner.lock() {
            all.retain(|(n, _)| n != name);
        }
    }

    /// Each output's name and snapshot, in config order.
    pub fn snapshots(&self) -> Vec<(String, StoreSnapshot)> {
        self.inner
            .lock()
            .map(|all| all.iter().map(|(n, s)| (n.clone(), s.snapshot())).collect())
            .unwrap_or_default()
    }

    /// The output that has gone longest without a confirmed batch (never confirmed first),
    /// with its name: what one-line summaries (STATUS=, the health reading) report.
    pub fn worst(&self) -> Option<(String, StoreSnapshot)> {
        Self::worst_of(&self.snapshots()).cloned()
    }

    /// [`worst`](Self::worst) among snapshots already taken (e.g. redacted for the API), so
    /// that one page's summary and its per-output list agree.
    pub fn worst_of(snapshots: &[(String, StoreSnapshot)]) -> Option<&(String, StoreSnapshot)> {
        snapshots
            .iter()
            .min_by_key(|(_, s)| s.last_success_ms.unwrap_or(0))
    }
}

/// Everything the HTTP server and `status` read; cloned into the server.
#[derive(Debug, Clone)]
pub struct Observers {
    pub gateway_id: String,
    pub live: LiveFeed,
    pub inputs: StatusRegistry,
    /// Each output's view of its store.
    pub outputs: OutputStates,
    /// For buffer statistics (`BufferWriter::stats`).
    pub buffer: crate::buffer::BufferWriter,
    pub started_ms: u64,
}

impl Observers {
    pub fn new(gateway_id: String, buffer: crate::buffer::BufferWriter) -> Self {
        Observers {
            gateway_id,
            live: LiveFeed::new(LIVE_PENDING_MAX_BYTES),
            inputs: StatusRegistry::default(),
            outputs: OutputStates::default(),
            buffer,
            started_ms: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_feed_costs_nothing_unwatched_and_is_bounded_when_watched() {
        let feed = LiveFeed::new(64);
        let mut batch = LiveBatch::default();
        // Nobody watches: nothing is kept.
        feed.offer("mqtt-0", b"m,s=1 v=1 1\n");
        feed.take(0, &mut batch);
        assert!(batch.bytes.is_empty() && !feed.is_armed());
        assert_eq!(feed.armed_since_ms(), None);

        feed.watch();
        assert!(feed.armed_since_ms().is_some());
        feed.offer("mqtt-0", b"m,s=1 v=1 1\n");
        feed.offer("serial", b"m,s=2 v=2 2\nm,s=3 v=3 3\n");
        // Past the 64-byte bound: skipped and counted, not queued.
        feed.offer("mqtt-0", &[b'x'; 40]);
        assert_eq!(feed.sampled_out(), 1);
        feed.take(0, &mut batch);
        let chunks: Vec<(&str, &[u8])> = batch.chunks().map(|(c, l)| (&*c.input, l)).collect();
        assert_eq!(
            chunks,
            [
                ("mqtt-0", &b"m,s=1 v=1 1\n"[..]),
                ("serial", &b"m,s=2 v=2 2\nm,s=3 v=3 3\n"[..])
            ]
        );
        // Still within the hold: armed; the next take is empty.
        assert!(feed.is_armed());
        feed.take(0, &mut batch);
        assert!(batch.chunks.is_empty());

        // After the hold with no stream open it disarms; an open stream keeps it armed.
        let later = now_ms() + LIVE_WATCH_HOLD.as_millis() as u64 + 1;
        feed.take_at(1, later, &mut batch);
        assert!(feed.is_armed());
        feed.take_at(0, later, &mut batch);
        assert!(!feed.is_armed());
        feed.offer("mqtt-0", b"m,s=1 v=1 1\n");
        feed.take(0, &mut batch);
        assert!(batch.bytes.is_empty());

        // `always` never disarms.
        feed.set_always(true);
        feed.take_at(0, later + 1_000_000, &mut batch);
        assert!(feed.is_armed());
    }
    use std::time::Duration;

    fn port(label: &str, up: bool) -> SerialPortStatus {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        SerialPortStatus {
            port: label.to_owned(),
            path: "/dev/ttyUSB0".into(),
            up,
            down_since: (!up).then_some(t),
            up_since: up.then_some(t + Duration::from_secs(5)),
            last_error: Some("cannot open /dev/ttyUSB0: No such file or directory".into()),
            good_frames: 12,
            bad_frames: 3,
            bad_by_reason: BTreeMap::from([("checksum".to_owned(), 3)]),
        }
    }

    #[test]
    fn serial_ports_join_the_inputs_with_their_counts() {
        let registry = StatusRegistry::default();
        registry.register("pm", InputKind::Mqtt, "mqtt://broker:1883");
        let mut inputs = registry.snapshot();
        merge_serial_ports(&mut inputs, &[port("pm", false), port("dust", true)], 42);
        let keys: Vec<&str> = inputs.keys().map(String::as_str).collect();
        assert_eq!(keys, ["dust", "pm", "serial:pm"]);
        let down = &inputs["serial:pm"];
        assert_eq!(
            (down.kind, down.up, down.since_ms, down.target.as_str()),
            (InputKind::Serial, false, 1_700_000_000_000, "/dev/ttyUSB0")
        );
        assert_eq!(
            down.last_error.as_deref(),
            Some("cannot open /dev/ttyUSB0: No such file or directory")
        );
        let up = &inputs["dust"];
        assert_eq!(
            (up.up, up.since_ms, up.last_error.as_deref()),
            (true, 1_700_000_005_000, None)
        );
        assert_eq!(
            up.serial,
            Some(SerialCounts {
                path: "/dev/ttyUSB0".into(),
                frames_good: 12,
                frames_bad: 3,
                bad_by_reason: BTreeMap::from([("checksum".to_owned(), 3)]),
            })
        );
        assert_eq!(inputs["pm"].kind, InputKind::Mqtt, "the MQTT input stays");
    }
}
