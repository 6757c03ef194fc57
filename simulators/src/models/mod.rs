//! Device models: what each kind of city sensor would publish at a given simulated instant.
//!
//! A model owns its device's slowly varying state (an AR(1) noise term, live tracked objects)
//! and turns "device X reports at time T" into MQTT messages plus the manifest entry that
//! describes each message's expected store contents. Models draw randomness only from the
//! [`SimRng`](crate::rng::SimRng) they are handed, so the output is a function of the seed.

pub mod camera;
pub mod env;
pub mod traffic;

use crate::manifest::Entry;
use crate::profile::{local_hour, traffic_intensity, Window};

/// One MQTT message and what the store should show for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// MQTT topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Index of the device that sent it (routes it to a client connection, keeping a
    /// device's messages in order on one connection).
    pub device: usize,
    /// The manifest entry to record once the broker acknowledges the message.
    pub entry: Entry,
    /// Further entries recorded with it (a vendor payload that carries several readings).
    pub also: Vec<Entry>,
    /// Publish without waiting for the rate limiter (part of a burst).
    pub burst: bool,
    /// Simulated instant the device produced it (Unix ms; set by the generator), which real-time
    /// publishing waits for.
    pub due_ms: i64,
}

/// City-wide conditions the models share.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Offset of local time from UTC in hours.
    pub utc_offset_hours: f64,
    /// Road incidents.
    pub incidents: Vec<Window>,
    /// Rain spells.
    pub rain: Vec<Window>,
}

impl World {
    /// Local hour of the day.
    pub fn hour(&self, ts_ms: i64) -> f64 {
        local_hour(ts_ms, self.utc_offset_hours)
    }

    /// Relative traffic in `district` at `ts_ms`, in `[0.05, 1]`.
    pub fn traffic(&self, ts_ms: i64) -> f64 {
        traffic_intensity(self.hour(ts_ms))
    }

    /// Whether an incident is under way in `district`.
    pub fn incident(&self, ts_ms: i64, district: &str) -> bool {
        self.incidents.iter().any(|w| w.covers(ts_ms, district))
    }

    /// Rain strength in `district`, in `[0, 1]`.
    pub fn rain(&self, ts_ms: i64, district: &str) -> f64 {
        self.rain
            .iter()
            .filter(|w| w.covers(ts_ms, district))
            .map(|w| w.strength(ts_ms))
            .fold(0.0, f64::max)
    }
}
