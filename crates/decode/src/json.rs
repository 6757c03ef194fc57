//! JSON payloads (environment stations, traffic counters) to readings.
//!
//! The mapping, as configured on an MQTT input:
//! - numbers become float fields, booleans bool fields, strings string fields, unless the key is
//!   in `tag_keys` (then the value becomes a tag); `null` is skipped;
//! - nested objects are flattened with `_` (`{"wind":{"speed":3}}` → `wind_speed`), arrays by
//!   index (`vals_0`);
//! - the `timestamp_field` (a number, or a string holding one, in `timestamp_unit`) gives the
//!   time and is not a field; without one, the time of receipt is used;
//! - tags also come from topic levels (`topic_tags = "_/district/_/sensor_id"`) and from static
//!   config tags;
//! - a payload may be one object or an array of objects (one reading each).
//!
//! Anything else is a [`JsonError`] with a stable [`label`](JsonError::label) for metrics.

use std::collections::BTreeMap;

use serde_json::Value;

use ioc_model::{FieldValue, InvalidReading, Reading};

/// The unit of a numeric timestamp in a payload (`timestamp_unit` in an input's config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    S,
    #[default]
    Ms,
    Us,
    Ns,
}

impl TimestampUnit {
    /// Nanoseconds in one unit.
    pub fn nanos(self) -> i64 {
        match self {
            TimestampUnit::S => 1_000_000_000,
            TimestampUnit::Ms => 1_000_000,
            TimestampUnit::Us => 1_000,
            TimestampUnit::Ns => 1,
        }
    }
}

/// How one input maps its JSON payloads; built once from the input's config (by the MQTT
/// input).
#[derive(Debug, Clone)]
pub struct JsonMapping {
    pub measurement: String,
    /// Tag name per topic level; `None` skips the level.
    pub topic_tags: Vec<Option<String>>,
    pub timestamp_field: Option<String>,
    pub timestamp_unit: TimestampUnit,
    pub tag_keys: Vec<String>,
    pub static_tags: BTreeMap<String, String>,
}

/// Parses a Telegraf-style `a/_/b` pattern: `_` (or an empty level) skips that topic level.
pub fn parse_topic_tags(pattern: &str) -> Vec<Option<String>> {
    if pattern.is_empty() {
        return Vec::new();
    }
    pattern
        .split('/')
        .map(|p| (!p.is_empty() && p != "_").then(|| p.to_owned()))
        .collect()
}

/// Why a JSON payload was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload is JSON but not an object (or array of objects)")]
    NotAnObject,
    #[error("topic {topic:?} has fewer levels than topic_tags needs ({needed})")]
    TopicMismatch { topic: String, needed: usize },
    #[error("timestamp field {0:?} is missing")]
    MissingTimestamp(String),
    #[error("timestamp field {field:?} is not a usable number: {value}")]
    BadTimestamp { field: String, value: String },
    #[error("payload has no usable field")]
    NoFields,
    #[error("number in {field:?} is not finite")]
    NonFinite { field: String },
    #[error(transparent)]
    Invalid(#[from] InvalidReading),
}

impl JsonError {
    pub fn label(&self) -> &'static str {
        match self {
            JsonError::NotJson(_) => "not_json",
            JsonError::NotAnObject => "not_an_object",
            JsonError::TopicMismatch { .. } => "topic_mismatch",
            JsonError::MissingTimestamp(_) => "missing_timestamp",
            JsonError::BadTimestamp { .. } => "bad_timestamp",
            JsonError::NoFields => "no_fields",
            JsonError::NonFinite { .. } => "non_finite",
            JsonError::Invalid(e) => e.label(),
        }
    }
}

/// Decodes one MQTT message. `received_ns` is the time of receipt, used when the mapping has no
/// timestamp field. Every returned reading has passed [`Reading::validate`].
pub fn decode(
    mapping: &JsonMapping,
    topic: &str,
    payload: &[u8],
    received_ns: i64,
) -> Result<Vec<Reading>, JsonError> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| JsonError::NotJson(e.to_string()))?;
    let base_tags = topic_and_static_tags(mapping, topic)?;
    from_value(mapping, &base_tags, value, received_ns)
}

/// The same as [`decode`] with the topic and static tags already worked out (see
/// [`topic_and_static_tags`]), for callers that need them for other formats too.
pub fn decode_with_tags(
    mapping: &JsonMapping,
    base_tags: &BTreeMap<String, String>,
    payload: &[u8],
    received_ns: i64,
) -> Result<Vec<Reading>, JsonError> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| JsonError::NotJson(e.to_string()))?;
    from_value(mapping, base_tags, value, received_ns)
}

fn from_value(
    mapping: &JsonMapping,
    base_tags: &BTreeMap<String, String>,
    value: Value,
    received_ns: i64,
) -> Result<Vec<Reading>, JsonError> {
    match value {
        Value::Object(obj) => Ok(vec![one(mapping, base_tags, obj, received_ns)?]),
        Value::Array(items) if !items.is_empty() => items
            .into_iter()
            .map(|item| match item {
                Value::Object(obj) => one(mapping, base_tags, obj, received_ns),
                _ => Err(JsonError::NotAnObject),
            })
            .collect(),
        _ => Err(JsonError::NotAnObject),
    }
}

/// The tags that come from the topic levels and the input's static tags.
pub fn topic_and_static_tags(
    mapping: &JsonMapping,
    topic: &str,
) -> Result<BTreeMap<String, String>, JsonError> {
    let mut tags = mapping.static_tags.clone();
    if mapping.topic_tags.is_empty() {
        return Ok(tags);
    }
    let levels: Vec<&str> = topic.split('/').collect();
    if levels.len() < mapping.topic_tags.len() {
        return Err(JsonError::TopicMismatch {
            topic: topic.to_owned(),
            needed: mapping.topic_tags.len(),
        });
    }
    for (name, level) in mapping.topic_tags.iter().zip(levels) {
        if let Some(name) = name {
            tags.insert(name.clone(), level.to_owned());
        }
    }
    Ok(tags)
}

fn one(
    mapping: &JsonMapping,
    base_tags: &BTreeMap<String, String>,
    obj: serde_json::Map<String, Value>,
    received_ns: i64,
) -> Result<Reading, JsonError> {
    let mut reading = Reading::new(mapping.measurement.clone(), received_ns);
    reading.tags = base_tags.clone();
    let mut timestamp: Option<Value> = None;
    let mut flat = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        if mapping.timestamp_field.as_deref() == Some(key.as_str()) {
            timestamp = Some(value);
        } else {
            flatten(key, value, &mut flat);
        }
    }
    if let Some(field) = &mapping.timestamp_field {
        let value = timestamp.ok_or_else(|| JsonError::MissingTimestamp(field.clone()))?;
        reading.timestamp_ns =
            to_nanos(&value, mapping.timestamp_unit).ok_or_else(|| JsonError::BadTimestamp {
                field: field.clone(),
                value: truncate(&value.to_string(), 64),
            })?;
    }
    for (key, value) in flat {
        if mapping.tag_keys.contains(&key) {
            let text = match value {
                Value::String(s) => s,
                Value::Null => continue,
                other => other.to_string(),
            };
            reading.tags.insert(key, text);
            continue;
        }
        let field = match value {
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => FieldValue::Float(f),
                _ => return Err(JsonError::NonFinite { field: key }),
            },
            Value::Bool(b) => FieldValue::Bool(b),
            Value::String(s) => FieldValue::Str(s),
            _ => continue,
        };
        reading.fields.insert(key, field);
    }
    if reading.fields.is_empty() {
        return Err(JsonError::NoFields);
    }
    reading.validate()?;
    Ok(reading)
}

/// Flattens nested objects with `_` and arrays by index; leaves scalars as they are.
pub(crate) fn flatten(key: String, value: Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj {
                flatten(format!("{key}_{k}"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.into_iter().enumerate() {
                flatten(format!("{key}_{i}"), v, out);
            }
        }
        Value::Null => {}
        scalar => out.push((key, scalar)),
    }
}

/// A JSON timestamp (integer, decimal with a fraction, or a string holding either) in `unit`, as
/// nanoseconds, exact to the digits written; `None` if it is not a number or overflows.
fn to_nanos(value: &Value, unit: TimestampUnit) -> Option<i64> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    crate::timefmt::decimal_to_ns(&text, unit.nanos())
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_mapping() -> JsonMapping {
        JsonMapping {
            measurement: "environment".into(),
            topic_tags: parse_topic_tags("_/district/_/sensor_id"),
            timestamp_field: Some("ts".into()),
            timestamp_unit: TimestampUnit::Ms,
            tag_keys: vec![],
            static_tags: BTreeMap::new(),
        }
    }

    #[test]
    fn environment_payload_maps_exactly() {
        let payload = br#"{"ts":1764059400123,"pm2_5":12.5,"pm10":30.25,"temperature":-3.5,"humidity":81,"noise_db":65.1}"#;
        let r = decode(&env_mapping(), "city/dong-xoai/env/s-0001", payload, 7).unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.measurement, "environment");
        assert_eq!(r.timestamp_ns, 1_764_059_400_123_000_000);
        assert_eq!(r.tags.len(), 2);
        assert_eq!(r.tags["district"], "dong-xoai");
        assert_eq!(r.tags["sensor_id"], "s-0001");
        assert_eq!(r.fields.len(), 5);
        assert_eq!(r.fields["pm2_5"], FieldValue::Float(12.5));
        assert_eq!(r.fields["humidity"], FieldValue::Float(81.0));
        assert_eq!(r.fields["temperature"], FieldValue::Float(-3.5));
    }

    #[test]
    fn nested_tags_bools_strings_and_nulls() {
        let mut m = env_mapping();
        m.tag_keys = vec!["lane".into(), "meta_site".into()];
        m.timestamp_field = None;
        let payload = br#"{"lane":2,"meta":{"site":"ng-hue","ok":true},"wind":{"speed":3.5},"note":"x","gone":null,"vals":[1,2]}"#;
        let r = &decode(&m, "city/d/env/s", payload, 99).unwrap()[0];
        assert_eq!(r.timestamp_ns, 99);
        assert_eq!(r.tags["lane"], "2");
        assert_eq!(r.tags["meta_site"], "ng-hue");
        assert_eq!(r.fields["meta_ok"], FieldValue::Bool(true));
        assert_eq!(r.fields["wind_speed"], FieldValue::Float(3.5));
        assert_eq!(r.fields["note"], FieldValue::Str("x".into()));
        assert_eq!(r.fields["vals_1"], FieldValue::Float(2.0));
        assert!(!r.fields.contains_key("gone"));
    }

    #[test]
    fn timestamp_units_and_forms() {
        let mut m = env_mapping();
        for (unit, ts, expect) in [
            (TimestampUnit::S, "1700000000", 1_700_000_000_000_000_000i64),
            (TimestampUnit::S, "1700000000.25", 1_700_000_000_250_000_000),
            (
                TimestampUnit::Us,
                "\"1700000000000001\"",
                1_700_000_000_000_001_000,
            ),
            (
                TimestampUnit::Ns,
                "1700000000000000001",
                1_700_000_000_000_000_001,
            ),
        ] {
            m.timestamp_unit = unit;
            let payload = format!("{{\"ts\":{ts},\"v\":1}}");
            let r = &decode(&m, "a/b/c/d", payload.as_bytes(), 0).unwrap()[0];
            assert_eq!(r.timestamp_ns, expect, "{ts}");
        }
    }

    #[test]
    fn arrays_of_objects_give_several_readings() {
        let payload = br#"[{"ts":1,"v":1},{"ts":2,"v":2}]"#;
        let r = decode(&env_mapping(), "a/b/c/d", payload, 0).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].timestamp_ns, 2_000_000);
    }

    #[test]
    fn bad_payloads_are_rejected_with_reasons() {
        let m = env_mapping();
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "not_json"),
            (b"{\"ts\":1,\"pm2_5\":NaN}", "not_json"),
            (b"\xff\xfe{}", "not_json"),
            (b"{\"ts\":1,\"v\":\"\xff\"}", "not_json"),
            (b"42", "not_an_object"),
            (b"[]", "not_an_object"),
            (b"{\"ts\":1}", "no_fields"),
            (b"{\"pm2_5\":1}", "missing_timestamp"),
            (b"{\"ts\":\"soon\",\"v\":1}", "bad_timestamp"),
            (b"{\"ts\":1e300,\"v\":1}", "bad_timestamp"),
            (b"{\"ts\":1,\"v\":1e999}", "not_json"),
            (b"{\"ts\":1,\"time\":1}", "reserved_key"),
            (b"{\"ts\":1,\"note\":\"a\\nb\"}", "control_character"),
        ];
        for (payload, label) in cases {
            let e = decode(&m, "city/d/env/s", payload, 0).expect_err(label);
            assert_eq!(e.label(), label, "{}", String::from_utf8_lossy(payload));
        }
        let e = decode(&m, "city/d", b"{\"ts\":1,\"v\":1}", 0).unwrap_err();
        assert_eq!(e.label(), "topic_mismatch");
    }

    #[test]
    fn hostile_tag_values_are_kept_or_refused_never_garbled() {
        let mut m = env_mapping();
        m.tag_keys = vec!["site".into()];
        let ok = br#"{"ts":1,"v":1,"site":"Le Loi, \"gate\" = 2"}"#;
        let r = &decode(&m, "a/b/c/d", ok, 0).unwrap()[0];
        assert_eq!(r.tags["site"], "Le Loi, \"gate\" = 2");
        let bad = br#"{"ts":1,"v":1,"site":"a\nb"}"#;
        assert_eq!(
            decode(&m, "a/b/c/d", bad, 0).unwrap_err().label(),
            "control_character"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&env_mapping(), "city/d/env/s", &bytes, 0);
        }
    }
}
