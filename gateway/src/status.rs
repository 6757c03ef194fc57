//! What the gateway knows about itself right now, for `/readyz`, the live page and `status`.
//!
//! Inputs report their connection state here; [`crate::pipeline::Ingest`] publishes every
//! accepted reading to the live feed ([`LiveFeed`]). Both are cheap and never block an input:
//! the live feed is a bounded broadcast channel that drops for slow watchers.

use std::collections::BTreeMap;
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
}

/// Shared registry of input states, keyed by input name.
#[derive(Debug, Clone, Default)]
pub struct StatusRegistry {
    inputs: Arc<Mutex<BTreeMap<String, InputState>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

    /// A copy of every input's state.
    pub fn snapshot(&self) -> BTreeMap<String, InputState> {
        self.inputs.lock().map(|m| m.clone()).unwrap_or_default()
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
