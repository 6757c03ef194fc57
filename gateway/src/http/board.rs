//! The live board: what the live page and `/api/sensors` show, kept in the server.
//!
//! A task takes the line protocol the [`LiveFeed`](crate::status::LiveFeed) collected while
//! someone watches, a few times a second, and records it into a bounded map of sensors
//! (latest value per field plus a short ring of numeric values for the sparklines) and a short
//! list of the newest camera events. A browser never has to replay history: it loads the board
//! once and then follows `/api/live`. Memory is bounded: at most `max_sensors` sensors (the
//! stalest is forgotten when a new one arrives at the cap), [`HISTORY_LEN`] values per field,
//! [`CAMERA_EVENTS_KEPT`] camera events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use crate::model::{FieldValue, Reading};

/// Numeric values kept per field for the sparkline.
pub const HISTORY_LEN: usize = 30;
/// Camera events kept for the top of the live page.
pub const CAMERA_EVENTS_KEPT: usize = 20;
/// The measurement name of camera events.
pub const CAMERA_EVENT_MEASUREMENT: &str = "camera_event";

/// Tags that are not shown per sensor (they are the same on every reading of the gateway).
const HIDDEN_TAGS: [&str; 1] = ["gateway"];

/// How a sensor is identified on the board: its `sensor_id` tag, else its `camera` tag (camera
/// events carry label and event type as tags, which must not split a camera into many rows),
/// else its whole tag set; then the measurement, so one device with two measurements shows as
/// two rows.
pub fn sensor_key(reading: &Reading) -> String {
    match reading
        .tags
        .get("sensor_id")
        .or_else(|| reading.tags.get("camera"))
    {
        Some(id) => format!("{id}/{}", reading.measurement),
        None => {
            let tags: Vec<String> = reading
                .tags
                .iter()
                .filter(|(k, _)| !HIDDEN_TAGS.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if tags.is_empty() {
                reading.measurement.clone()
            } else {
                format!("{}/{}", tags.join(","), reading.measurement)
            }
        }
    }
}

/// A field value as JSON (strings stay strings, numbers numbers).
pub fn field_json(value: &FieldValue) -> Value {
    match value {
        FieldValue::Float(v) => serde_json::Number::from_f64(*v)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        FieldValue::Int(v) => Value::from(*v),
        FieldValue::UInt(v) => Value::from(*v),
        FieldValue::Bool(v) => Value::Bool(*v),
        FieldValue::Str(v) => Value::String(v.clone()),
    }
}

fn field_number(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::Float(v) => Some(*v),
        FieldValue::Int(v) => Some(*v as f64),
        FieldValue::UInt(v) => Some(*v as f64),
        FieldValue::Bool(v) => Some(if *v { 1.0 } else { 0.0 }),
        FieldValue::Str(_) => None,
    }
}

fn shown_tags(reading: &Reading) -> BTreeMap<String, String> {
    reading
        .tags
        .iter()
        .filter(|(k, _)| !HIDDEN_TAGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One reading as the live page receives it (also the `/api/live` event payload).
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    pub key: String,
    pub sensor_id: Option<String>,
    pub measurement: String,
    pub input: String,
    pub tags: BTreeMap<String, String>,
    /// The reading's own timestamp (Unix ms).
    pub ts_ms: i64,
    /// When the gateway accepted it (Unix ms); ages on the page count from here.
    pub received_ms: u64,
    pub fields: BTreeMap<String, Value>,
}

impl LiveEvent {
    pub fn from_reading(input: &str, r: &Reading, received_ms: u64) -> Self {
        LiveEvent {
            key: sensor_key(r),
            sensor_id: r.tags.get("sensor_id").cloned(),
            measurement: r.measurement.clone(),
            input: input.to_owned(),
            tags: shown_tags(r),
            ts_ms: r.timestamp_ns.div_euclid(1_000_000),
            received_ms,
            fields: r
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), field_json(v)))
                .collect(),
        }
    }
}

/// One field of a sensor: its latest value and the last numeric values.
#[derive(Debug, Clone, Serialize)]
pub struct FieldState {
    pub value: Value,
    /// Oldest first; at most [`HISTORY_LEN`].
    pub history: VecDeque<f64>,
}

/// One sensor row of the board.
#[derive(Debug, Clone, Serialize)]
pub struct SensorState {
    pub key: String,
    pub sensor_id: Option<String>,
    pub measurement: String,
    pub input: String,
    pub tags: BTreeMap<String, String>,
    pub ts_ms: i64,
    pub received_ms: u64,
    pub readings: u64,
    pub fields: BTreeMap<String, FieldState>,
}

#[derive(Debug, Default)]
struct BoardInner {
    sensors: HashMap<String, SensorState>,
    camera_events: VecDeque<LiveEvent>,
    /// Sensors forgotten because the board was at its cap.
    evicted: u64,
    /// Messages the board did not see: the live feed was at its bound between two takes.
    lagged: u64,
}

/// The shared board. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Board {
    inner: Arc<Mutex<BoardInner>>,
    max_sensors: usize,
}

/// A copy of the board for `/api/sensors`.
#[derive(Debug, Clone, Serialize)]
pub struct BoardSnapshot {
    /// Sorted by key.
    pub sensors: Vec<SensorState>,
    /// Newest first.
    pub camera_events: Vec<LiveEvent>,
    pub sensors_evicted: u64,
    pub live_feed_lagged: u64,
    pub max_sensors: usize,
}

impl Board {
    pub fn new(max_sensors: usize) -> Self {
        Board {
            inner: Arc::default(),
            max_sensors: max_sensors.max(1),
        }
    }

    /// Records one accepted reading (as its live event).
    pub fn record(&self, event: &LiveEvent, reading: &Reading) {
        let Ok(mut b) = self.inner.lock() else {
            return;
        };
        if event.measurement == CAMERA_EVENT_MEASUREMENT {
            b.camera_events.push_front(event.clone());
            b.camera_events.truncate(CAMERA_EVENTS_KEPT);
        }
        if !b.sensors.contains_key(&event.key) && b.sensors.len() >= self.max_sensors {
            let stalest = b
                .sensors
                .values()
                .min_by_key(|s| s.received_ms)
                .map(|s| s.key.clone());
            if let Some(k) = stalest {
                b.sensors.remove(&k);
                b.evicted += 1;
            }
        }
        let sensor = b
            .sensors
            .entry(event.key.clone())
            .or_insert_with(|| SensorState {
                key: event.key.clone(),
                sensor_id: event.sensor_id.clone(),
                measurement: event.measurement.clone(),
                input: event.input.clone(),
                tags: event.tags.clone(),
                ts_ms: event.ts_ms,
                received_ms: event.received_ms,
                readings: 0,
                fields: BTreeMap::new(),
            });
        sensor.input.clone_from(&event.input);
        sensor.tags.clone_from(&event.tags);
        sensor.ts_ms = event.ts_ms;
        sensor.received_ms = event.received_ms;
        sensor.readings += 1;
        for (name, value) in &reading.fields {
            let json = event.fields.get(name).cloned().unwrap_or(Value::Null);
            let f = sensor
                .fields
                .entry(name.clone())
                .or_insert_with(|| FieldState {
                    value: Value::Null,
                    history: VecDeque::with_capacity(HISTORY_LEN),
                });
            f.value = json;
            if let Some(n) = field_number(value) {
                if f.history.len() >= HISTORY_LEN {
                    f.history.pop_front();
                }
                f.history.push_back(n);
            }
        }
    }

    /// Counts messages the board did not see (the live feed's bound between two takes).
    pub fn lagged(&self, n: u64) {
        if let Ok(mut b) = self.inner.lock() {
            b.lagged += n;
        }
    }

    pub fn sensor_count(&self) -> usize {
        self.inner.lock().map(|b| b.sensors.len()).unwrap_or(0)
    }

    pub fn snapshot(&self) -> BoardSnapshot {
        let Ok(b) = self.inner.lock() else {
            return BoardSnapshot {
                sensors: Vec::new(),
                camera_events: Vec::new(),
                sensors_evicted: 0,
                live_feed_lagged: 0,
                max_sensors: self.max_sensors,
            };
        };
        let mut sensors: Vec<SensorState> = b.sensors.values().cloned().collect();
        drop(b);
        sensors.sort_by(|a, b| a.key.cmp(&b.key));
        let b = self.inner.lock();
        let (camera_events, evicted, lagged) = match b {
            Ok(b) => (
                b.camera_events.iter().cloned().collect(),
                b.evicted,
                b.lagged,
            ),
            Err(_) => (Vec::new(), 0, 0),
        };
        BoardSnapshot {
            sensors,
            camera_events,
            sensors_evicted: evicted,
            live_feed_lagged: lagged,
            max_sensors: self.max_sensors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(sensor: &str, v: f64) -> Reading {
        Reading::new("air_quality", 1_700_000_000_123_456_789)
            .tag("sensor_id", sensor)
            .tag("gateway", "gw-1")
            .field("pm25", FieldValue::Float(v))
            .field("status", FieldValue::Str("ok".into()))
    }

    fn feed(board: &Board, r: &Reading, at: u64) {
        board.record(&LiveEvent::from_reading("mqtt-0", r, at), r);
    }

    #[test]
    fn keeps_latest_value_and_bounded_history() {
        let board = Board::new(10);
        for i in 0..40 {
            feed(
                &board,
                &live("s1", f64::from(i)),
                1000 + u64::try_from(i).unwrap(),
            );
        }
        let snap = board.snapshot();
        assert_eq!(snap.sensors.len(), 1);
        let s = &snap.sensors[0];
        assert_eq!(s.key, "s1/air_quality");
        assert_eq!(s.readings, 40);
        assert_eq!(s.ts_ms, 1_700_000_000_123);
        assert_eq!(s.received_ms, 1039);
        assert!(!s.tags.contains_key("gateway"));
        let pm = &s.fields["pm25"];
        assert_eq!(pm.value, serde_json::json!(39.0));
        assert_eq!(pm.history.len(), HISTORY_LEN);
        assert_eq!(pm.history.front(), Some(&10.0));
        assert_eq!(pm.history.back(), Some(&39.0));
        assert_eq!(s.fields["status"].value, serde_json::json!("ok"));
        assert!(s.fields["status"].history.is_empty());
    }

    #[test]
    fn forgets_the_stalest_sensor_at_the_cap() {
        let board = Board::new(3);
        feed(&board, &live("a", 1.0), 10);
        feed(&board, &live("b", 1.0), 5);
        feed(&board, &live("c", 1.0), 20);
        feed(&board, &live("d", 1.0), 30);
        let snap = board.snapshot();
        let keys: Vec<&str> = snap.sensors.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["a/air_quality", "c/air_quality", "d/air_quality"]);
        assert_eq!(snap.sensors_evicted, 1);
    }

    #[test]
    fn camera_events_newest_first_and_bounded() {
        let board = Board::new(10);
        for i in 0..25 {
            let r = Reading::new(CAMERA_EVENT_MEASUREMENT, i * 1_000_000)
                .tag("camera", "cam-1")
                .field("label", FieldValue::Str(format!("car-{i}")));
            board.record(&LiveEvent::from_reading("frigate", &r, 1), &r);
        }
        let snap = board.snapshot();
        assert_eq!(snap.camera_events.len(), CAMERA_EVENTS_KEPT);
        assert_eq!(
            snap.camera_events[0].fields["label"],
            serde_json::json!("car-24")
        );
        assert_eq!(snap.sensors[0].key, "cam-1/camera_event");
        let untagged = Reading::new("traffic", 0)
            .tag("site", "x1")
            .tag("lane", "2")
            .tag("gateway", "gw")
            .field("count", FieldValue::Int(3));
        assert_eq!(sensor_key(&untagged), "lane=2,site=x1/traffic");
    }
}
