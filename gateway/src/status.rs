//! What the gateway knows about itself right now, for `/readyz`, the live page and `status`.
//!
//! Inputs report their connection state here; [`crate::pipeline::Ingest`] publishes every
//! accepted reading to the live feed ([`LiveFeed`]). Both are cheap and never block an input:
//! the live feed is a bounded broadcast channel that drops for slow watchers.
//!
//! MQTT connections and serial ports report into the same [`StatusRegistry`] (the one the
//! pipeline's [`crate::pipeline::Ingest`] carries): an MQTT input as an [`InputState`], a serial
//! port as a [`SerialPortStatus`] with its frame counts. [`StatusRegistry::snapshot`] folds the
//! ports into the per-input map ([`merge_serial_ports`]), so readiness, `/api/sensors`, the live
//! page and `status` see both alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::model::Reading;

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

/// A reading as accepted, with the input it came from.
#[derive(Debug, Clone)]
pub struct LiveReading {
    pub input: Arc<str>,
    pub reading: Reading,
}

/// Broadcast of accepted readings for the live page. Watchers that fall behind lose the oldest
/// messages (they see `Lagged`), inputs never wait.
#[derive(Debug, Clone)]
pub struct LiveFeed {
    tx: broadcast::Sender<Arc<LiveReading>>,
}

impl LiveFeed {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        LiveFeed { tx }
    }

    /// Publishes a reading if anyone watches (cheap when no one does).
    pub fn publish(&self, input: &Arc<str>, reading: &Reading) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(LiveReading {
                input: input.clone(),
                reading: reading.clone(),
            }));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveReading>> {
        self.tx.subscribe()
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
}

/// Shared, updated by the forwarder.
#[derive(Debug, Clone, Default)]
pub struct StoreState {
    inner: Arc<Mutex<StoreSnapshot>>,
}

impl StoreState {
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

/// Everything the HTTP server and `status` read; cloned into the server.
#[derive(Debug, Clone)]
pub struct Observers {
    pub gateway_id: String,
    pub live: LiveFeed,
    pub inputs: StatusRegistry,
    pub store: StoreState,
    /// For buffer statistics (`BufferWriter::stats`).
    pub buffer: crate::buffer::BufferWriter,
    pub started_ms: u64,
}

impl Observers {
    pub fn new(gateway_id: String, buffer: crate::buffer::BufferWriter) -> Self {
        Observers {
            gateway_id,
            live: LiveFeed::new(4096),
            inputs: StatusRegistry::default(),
            store: StoreState::default(),
            buffer,
            started_ms: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
