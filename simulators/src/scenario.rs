//! Scenario files: which devices a simulated city has, when things happen, which faults to inject.
//!
//! A scenario is a TOML file (see `config/scenarios/*.toml`, whose header comment documents the
//! schema). Loading validates it completely, so a typo fails before any message is sent.

use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::civil_time::{parse_rfc3339_ms, InstantError};
use crate::profile::Window;

/// Why a scenario could not be used.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not match the schema (message includes line and column).
    #[error("scenario {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// The `start` instant is not RFC 3339 UTC.
    #[error("scenario key `start`: {0}")]
    Start(#[from] InstantError),
    /// A value is out of range.
    #[error("scenario key `{key}`: {reason}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A whole simulated city, as written in a scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in client ids and the manifest header.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Simulated clock at the first message, RFC 3339 UTC (`2026-11-24T00:30:00Z`).
    pub start: String,
    /// Offset of local time from UTC, for the daily cycles (default 7, Ho Chi Minh City).
    #[serde(default = "default_utc_offset")]
    pub utc_offset_hours: f64,
    /// District names; devices are spread over them round-robin.
    pub districts: Vec<String>,
    /// Default number of messages to send (`--messages` overrides).
    #[serde(default)]
    pub messages: Option<u64>,
    /// Default wall-clock duration in seconds (`--duration` overrides).
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// Default publish rate in messages per second, 0 = as fast as the broker takes (`--rate`).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Default MQTT QoS (`--qos`).
    #[serde(default)]
    pub qos: Option<u8>,
    /// Default number of MQTT client connections (`--clients`).
    #[serde(default)]
    pub clients: Option<usize>,
    /// Environment stations.
    #[serde(default)]
    pub env: Option<EnvGroup>,
    /// Traffic counters.
    #[serde(default)]
    pub traffic: Option<TrafficGroup>,
    /// AI cameras.
    #[serde(default)]
    pub cameras: Option<CameraGroup>,
    /// Road incidents: speed drops, occupancy and PM rise, cameras burst.
    #[serde(default)]
    pub incident: Vec<TimedEvent>,
    /// Rain: PM washes out, humidity rises, temperature drops.
    #[serde(default)]
    pub rain: Vec<TimedEvent>,
    /// Faults to inject.
    #[serde(default)]
    pub faults: Faults,
}

/// Finite and above zero (false for NaN).
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Finite and not below zero (false for NaN).
fn non_negative(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

fn default_utc_offset() -> f64 {
    7.0
}

/// `[env]`: environment stations on `city/<district>/env/<sensor_id>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvGroup {
    /// How many stations (`env-0001` …).
    pub count: usize,
    /// Simulated seconds between two readings of one station.
    #[serde(default = "default_env_interval")]
    pub interval_s: f64,
}

fn default_env_interval() -> f64 {
    10.0
}

/// `[traffic]`: traffic counters on `city/<district>/traffic/<site>`, one device per lane and direction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficGroup {
    /// How many sites (`site-01` …).
    pub sites: usize,
    /// Lanes per direction (`"1"`, `"2"` …).
    #[serde(default = "default_lanes")]
    pub lanes: usize,
    /// Directions per site.
    #[serde(default = "default_directions")]
    pub directions: Vec<String>,
    /// Simulated seconds per counting interval.
    #[serde(default = "default_traffic_interval")]
    pub interval_s: f64,
}

fn default_lanes() -> usize {
    1
}
fn default_directions() -> Vec<String> {
    vec!["nb".into(), "sb".into()]
}
fn default_traffic_interval() -> f64 {
    60.0
}

/// `[cameras]`: Frigate cameras on `frigate/events`, plate reads on `city/<district>/lpr/<camera>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraGroup {
    /// How many cameras (`cam-01` …).
    pub count: usize,
    /// Simulated seconds between two looks at a camera's tracked objects.
    #[serde(default = "default_camera_interval")]
    pub interval_s: f64,
    /// New tracked objects per minute at full traffic (multiplied by 6 during an incident).
    #[serde(default = "default_events_per_min")]
    pub events_per_min: f64,
    /// Share of vehicle events that end with a plate-recognition message.
    #[serde(default = "default_lpr_share")]
    pub lpr_share: f64,
}

fn default_camera_interval() -> f64 {
    2.0
}
fn default_events_per_min() -> f64 {
    4.0
}
fn default_lpr_share() -> f64 {
    0.4
}

/// `[[incident]]` / `[[rain]]`: something that happens for a while, in one district or all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimedEvent {
    /// Minutes of simulated time after `start`.
    pub at_min: f64,
    /// How long it lasts, in simulated minutes.
    pub duration_min: f64,
    /// The district it affects; absent: all.
    #[serde(default)]
    pub district: Option<String>,
}

/// `[faults]`: what goes wrong in the field. Probabilities are per message (0 = never).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// A payload cut short or garbled (not JSON: the gateway must reject it).
    #[serde(default)]
    pub malformed_json: f64,
    /// A field written as the bare token `NaN` (not JSON: the gateway must reject it).
    #[serde(default)]
    pub nan_token: f64,
    /// The same message published twice in a row.
    #[serde(default)]
    pub duplicate: f64,
    /// A message held back and published after the same device's next message.
    #[serde(default)]
    pub out_of_order: f64,
    /// How many devices (the first N environment stations) have a wrong clock.
    #[serde(default)]
    pub clock_skew_devices: usize,
    /// Their clock error in seconds (positive: ahead).
    #[serde(default)]
    pub clock_skew_s: f64,
    /// Every this many messages, a burst starts (0 = no bursts).
    #[serde(default)]
    pub burst_every: u64,
    /// Messages in a burst, published ignoring the rate limit.
    #[serde(default)]
    pub burst_len: u64,
    /// Each client drops its connection after every this many acknowledged messages (0 = never).
    #[serde(default)]
    pub disconnect_every: u64,
    /// How long a dropped client stays away, in wall-clock milliseconds.
    #[serde(default = "default_disconnect_ms")]
    pub disconnect_ms: u64,
}

fn default_disconnect_ms() -> u64 {
    1000
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// The simulated start instant in Unix milliseconds.
    pub fn start_ms(&self) -> Result<i64, ScenarioError> {
        Ok(parse_rfc3339_ms(&self.start)?)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |key: &str, reason: &str| {
            Err(ScenarioError::Invalid {
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
        };
        self.start_ms()?;
        if self.districts.is_empty() {
            return invalid("districts", "needs at least one district");
        }
        for d in &self.districts {
            if d.is_empty() || d.contains(['/', '+', '#']) {
                return invalid(
                    "districts",
                    "a district name must be non-empty without / + #",
                );
            }
        }
        if let Some(env) = &self.env {
            if !positive(env.interval_s) {
                return invalid("env.interval_s", "must be > 0");
            }
        }
        if let Some(t) = &self.traffic {
            if !positive(t.interval_s) {
                return invalid("traffic.interval_s", "must be > 0");
            }
            if t.lanes == 0 || t.directions.is_empty() {
                return invalid("traffic", "needs at least one lane and one direction");
            }
        }
        if let Some(c) = &self.cameras {
            if !positive(c.interval_s) {
                return invalid("cameras.interval_s", "must be > 0");
            }
            if !(0.0..=1.0).contains(&c.lpr_share) || !non_negative(c.events_per_min) {
                return invalid("cameras", "lpr_share in [0, 1], events_per_min >= 0");
            }
        }
        let devices = self.env.as_ref().map_or(0, |e| e.count)
            + self.traffic.as_ref().map_or(0, |t| t.sites)
            + self.cameras.as_ref().map_or(0, |c| c.count);
        if devices == 0 {
            return invalid("env/traffic/cameras", "the scenario has no devices");
        }
        let f = &self.faults;
        for (key, p) in [
            ("faults.malformed_json", f.malformed_json),
            ("faults.nan_token", f.nan_token),
            ("faults.duplicate", f.duplicate),
            ("faults.out_of_order", f.out_of_order),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return invalid(key, "a probability must be within [0, 1]");
            }
        }
        if let Some(q) = self.qos {
            if q > 1 {
                return invalid("qos", "0 or 1");
            }
        }
        for (key, events) in [("incident", &self.incident), ("rain", &self.rain)] {
            for e in events {
                if !positive(e.duration_min) || !non_negative(e.at_min) {
                    return invalid(key, "at_min >= 0 and duration_min > 0");
                }
            }
        }
        Ok(())
    }

    /// Converts `[[incident]]` or `[[rain]]` entries to absolute windows.
    pub fn windows(&self, events: &[TimedEvent]) -> Result<Vec<Window>, ScenarioError> {
        let start = self.start_ms()?;
        Ok(events
            .iter()
            .map(|e| Window {
                start_ms: start + (e.at_min * 60_000.0) as i64,
                end_ms: start + ((e.at_min + e.duration_min) * 60_000.0) as i64,
                district: e.district.clone(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
start = "2026-11-24T00:30:00Z"
districts = ["d1"]
[env]
count = 2
"#;

    #[test]
    fn minimal_scenario_gets_defaults() {
        let s = Scenario::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(s.utc_offset_hours, 7.0);
        assert_eq!(s.env.as_ref().unwrap().interval_s, 10.0);
        assert_eq!(s.start_ms().unwrap(), 1_795_480_200_000);
        assert_eq!(s.faults.malformed_json, 0.0);
    }

    #[test]
    fn unknown_key_is_located() {
        let text = format!("{MINIMAL}colour = 3\n");
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("t.toml") && err.contains("colour"), "{err}");
    }

    #[test]
    fn bad_probability_rejected() {
        let text = format!("{MINIMAL}[faults]\nduplicate = 1.5\n");
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("faults.duplicate"), "{err}");
    }

    #[test]
    fn shipped_scenarios_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios");
        for name in [
            "district-rush-hour.toml",
            "load-1000.toml",
            "faulty-field.toml",
        ] {
            Scenario::load(&dir.join(name)).unwrap();
        }
    }
}
