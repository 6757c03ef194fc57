//! AI camera events to readings: Frigate's `frigate/events` messages (`format = "frigate"`) and
//! plate-recognition payloads (`format = "lpr"`).
//!
//! Both map to measurement `camera_event` (or the input's configured measurement) with tags
//! `camera`, `label`, `event_type` and, for Frigate, `zones` (the object's current zones, sorted,
//! comma-joined; entered zones when it has left them all). Fields:
//! - Frigate: `score`, `top_score`, `event_id` (string), `stationary` (bool), `sub_label` and
//!   `plate` (strings, where present; Frigate ≥ 0.13 sends `sub_label` as `[name, score]`, then
//!   `sub_label_score` too; ≥ 0.16 sends `recognized_license_plate`), `duration_s` on `end`.
//!   Time: `start_time` for `new`, `frame_time` for `update`, `end_time` for `end`.
//! - Plate reads: `{"plate":"51F-123.45","confidence":0.93,"camera":"cam-03",
//!   "time":"2026-11-24T00:31:02.123Z","event_id":"…"}` → tags `label=license_plate`,
//!   `event_type=plate`, fields `plate`, `score` (the confidence) and `event_id` when present.
//!   `time` is RFC 3339 (any offset) or Unix seconds; without it, the time of receipt.
//!
//! Event times keep their sub-second digits exactly: Frigate's float seconds are converted from
//! their decimal text, not through a float multiplication. Unknown keys are ignored; a payload
//! missing what the format needs is rejected with the name of the missing key.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use ioc_model::{FieldValue, InvalidReading, Reading};

// The crate's one reader of each time form (see `timefmt`), kept under their old names here.
pub use crate::timefmt::{decimal_to_ns, rfc3339_to_ns};

/// Why a camera payload was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CameraError {
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload is not a JSON object")]
    NotAnObject,
    #[error("missing or invalid {0:?}")]
    Missing(&'static str),
    #[error("event type {0:?} is not new, update or end")]
    UnknownType(String),
    #[error("time {0:?} is not RFC 3339 or Unix seconds")]
    BadTime(String),
    #[error(transparent)]
    Invalid(#[from] InvalidReading),
}

impl CameraError {
    pub fn label(&self) -> &'static str {
        match self {
            CameraError::NotJson(_) => "not_json",
            CameraError::NotAnObject => "not_an_object",
            CameraError::Missing(_) => "missing_key",
            CameraError::UnknownType(_) => "unknown_event_type",
            CameraError::BadTime(_) => "bad_timestamp",
            CameraError::Invalid(e) => e.label(),
        }
    }
}

fn object(payload: &[u8]) -> Result<Map<String, Value>, CameraError> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(CameraError::NotAnObject),
        Err(e) => Err(CameraError::NotJson(e.to_string())),
    }
}

/// Seconds as a JSON number → nanoseconds, exact to the digits written.
pub fn seconds_to_ns(v: &Value) -> Option<i64> {
    decimal_to_ns(&v.as_number()?.to_string(), 1_000_000_000)
}

fn str_of<'a>(o: &'a Map<String, Value>, key: &'static str) -> Result<&'a str, CameraError> {
    o.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(CameraError::Missing(key))
}

/// Decodes one `frigate/events` message.
pub fn decode_frigate(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    payload: &[u8],
) -> Result<Reading, CameraError> {
    let msg = object(payload)?;
    let kind = str_of(&msg, "type")?;
    if !matches!(kind, "new" | "update" | "end") {
        return Err(CameraError::UnknownType(kind.to_owned()));
    }
    let after = msg
        .get("after")
        .and_then(Value::as_object)
        .ok_or(CameraError::Missing("after"))?;
    let time_key = match kind {
        "new" => "start_time",
        "update" => "frame_time",
        _ => "end_time",
    };
    let ts = after
        .get(time_key)
        .and_then(seconds_to_ns)
        .or_else(|| after.get("frame_time").and_then(seconds_to_ns))
        .ok_or(CameraError::Missing(time_key))?;
    let mut r = Reading::new(measurement, ts);
    r.tags = static_tags.clone();
    r.tags
        .insert("camera".into(), str_of(after, "camera")?.to_owned());
    r.tags
        .insert("label".into(), str_of(after, "label")?.to_owned());
    r.tags.insert("event_type".into(), kind.to_owned());
    let zones = |key| -> Vec<&str> {
        let mut z: Vec<&str> = after
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        z.sort_unstable();
        z.dedup();
        z
    };
    let mut z = zones("current_zones");
    if z.is_empty() {
        z = zones("entered_zones");
    }
    if !z.is_empty() {
        r.tags.insert("zones".into(), z.join(","));
    }
    r.fields.insert(
        "event_id".into(),
        FieldValue::Str(str_of(after, "id")?.to_owned()),
    );
    for key in ["score", "top_score"] {
        if let Some(v) = after.get(key).and_then(Value::as_f64) {
            r.fields.insert(key.into(), FieldValue::Float(v));
        }
    }
    if let Some(b) = after.get("stationary").and_then(Value::as_bool) {
        r.fields.insert("stationary".into(), FieldValue::Bool(b));
    }
    match after.get("sub_label") {
        Some(Value::String(s)) if !s.is_empty() => {
            r.fields
                .insert("sub_label".into(), FieldValue::Str(s.clone()));
        }
        Some(Value::Array(a)) => {
            if let Some(s) = a.first().and_then(Value::as_str) {
                r.fields
                    .insert("sub_label".into(), FieldValue::Str(s.to_owned()));
            }
            if let Some(score) = a.get(1).and_then(Value::as_f64) {
                r.fields
                    .insert("sub_label_score".into(), FieldValue::Float(score));
            }
        }
        _ => {}
    }
    match after.get("recognized_license_plate") {
        Some(Value::String(p)) if !p.is_empty() => {
            r.fields.insert("plate".into(), FieldValue::Str(p.clone()));
        }
        Some(Value::Array(a)) => {
            if let Some(p) = a.first().and_then(Value::as_str) {
                r.fields
                    .insert("plate".into(), FieldValue::Str(p.to_owned()));
            }
        }
        _ => {}
    }
    if let Some(s) = after
        .get("recognized_license_plate_score")
        .and_then(Value::as_f64)
    {
        r.fields.insert("plate_score".into(), FieldValue::Float(s));
    }
    if kind == "end" {
        if let (Some(start), Some(end)) = (
            after.get("start_time").and_then(seconds_to_ns),
            after.get("end_time").and_then(seconds_to_ns),
        ) {
            r.fields.insert(
                "duration_s".into(),
                FieldValue::Float((end - start) as f64 / 1e9),
            );
        }
    }
    r.validate()?;
    Ok(r)
}

/// Decodes one plate-recognition payload; `received_ns` is used when it has no time.
pub fn decode_lpr(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    payload: &[u8],
    received_ns: i64,
) -> Result<Reading, CameraError> {
    let msg = object(payload)?;
    let plate = str_of(&msg, "plate")?;
    let camera = str_of(&msg, "camera")?;
    let score = msg
        .get("confidence")
        .or_else(|| msg.get("score"))
        .and_then(Value::as_f64)
        .ok_or(CameraError::Missing("confidence"))?;
    let ts = match msg.get("time").or_else(|| msg.get("timestamp")) {
        None | Some(Value::Null) => received_ns,
        Some(Value::String(s)) => {
            rfc3339_to_ns(s).ok_or_else(|| CameraError::BadTime(s.clone()))?
        }
        Some(v @ Value::Number(_)) => {
            seconds_to_ns(v).ok_or_else(|| CameraError::BadTime(v.to_string()))?
        }
        Some(v) => return Err(CameraError::BadTime(v.to_string())),
    };
    let mut r = Reading::new(measurement, ts);
    r.tags = static_tags.clone();
    r.tags.insert("camera".into(), camera.to_owned());
    r.tags.insert("label".into(), "license_plate".into());
    r.tags.insert("event_type".into(), "plate".into());
    r.fields
        .insert("plate".into(), FieldValue::Str(plate.to_owned()));
    r.fields.insert("score".into(), FieldValue::Float(score));
    if let Some(id) = msg.get("event_id").and_then(Value::as_str) {
        r.fields
            .insert("event_id".into(), FieldValue::Str(id.to_owned()));
    }
    r.validate()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Frigate's documented `frigate/events` message (0.14 docs), `update`.
    const FRIGATE_UPDATE: &str = r#"{
      "type": "update",
      "before": {
        "id": "1607123955.475377-mxklsc", "camera": "front_door", "frame_time": 1607123961.837752,
        "snapshot": {"frame_time": 1607123961.837752, "box": [415, 489, 528, 700], "area": 12728,
                     "region": [260, 446, 660, 846], "score": 0.77546, "attributes": []},
        "label": "person", "sub_label": null, "top_score": 0.958984375, "false_positive": false,
        "start_time": 1607123955.475377, "end_time": null, "score": 0.7890625,
        "box": [424, 500, 536, 712], "area": 23744, "ratio": 2.113207, "region": [264, 450, 667, 853],
        "current_zones": ["driveway"], "entered_zones": ["yard", "driveway"], "thumbnail": null,
        "has_snapshot": false, "has_clip": false, "stationary": false, "motionless_count": 0,
        "position_changes": 2, "attributes": {"face": 0.64}, "current_attributes": []
      },
      "after": {
        "id": "1607123955.475377-mxklsc", "camera": "front_door", "frame_time": 1607123962.082975,
        "snapshot": {"frame_time": 1607123961.837752, "box": [415, 489, 528, 700], "area": 12728,
                     "region": [260, 446, 660, 846], "score": 0.77546, "attributes": []},
        "label": "person", "sub_label": ["Bob", 0.87], "top_score": 0.958984375, "false_positive": false,
        "start_time": 1607123955.475377, "end_time": null, "score": 0.87890625,
        "box": [432, 496, 544, 854], "area": 40096, "ratio": 1.251397, "region": [218, 440, 693, 915],
        "current_zones": ["yard", "driveway"], "entered_zones": ["yard", "driveway"], "thumbnail": null,
        "has_snapshot": false, "has_clip": false, "stationary": false, "motionless_count": 0,
        "position_changes": 2, "attributes": {"face": 0.86}, "current_attributes": []
      }
    }"#;

    #[test]
    fn frigate_update_maps_exactly() {
        let r =
            decode_frigate("camera_event", &BTreeMap::new(), FRIGATE_UPDATE.as_bytes()).unwrap();
        assert_eq!(r.measurement, "camera_event");
        assert_eq!(r.timestamp_ns, 1_607_123_962_082_975_000);
        assert_eq!(r.tags["camera"], "front_door");
        assert_eq!(r.tags["label"], "person");
        assert_eq!(r.tags["event_type"], "update");
        assert_eq!(r.tags["zones"], "driveway,yard");
        assert_eq!(r.fields["score"], FieldValue::Float(0.87890625));
        assert_eq!(r.fields["top_score"], FieldValue::Float(0.958984375));
        assert_eq!(
            r.fields["event_id"],
            FieldValue::Str("1607123955.475377-mxklsc".into())
        );
        assert_eq!(r.fields["sub_label"], FieldValue::Str("Bob".into()));
        assert_eq!(r.fields["sub_label_score"], FieldValue::Float(0.87));
        assert_eq!(r.fields["stationary"], FieldValue::Bool(false));
        assert!(!r.fields.contains_key("duration_s"));
    }

    #[test]
    fn frigate_new_and_end_use_their_own_times() {
        let new = FRIGATE_UPDATE.replace("\"type\": \"update\"", "\"type\": \"new\"");
        let r = decode_frigate("camera_event", &BTreeMap::new(), new.as_bytes()).unwrap();
        assert_eq!(r.timestamp_ns, 1_607_123_955_475_377_000);
        assert_eq!(r.tags["event_type"], "new");

        let end = FRIGATE_UPDATE
            .replace("\"type\": \"update\"", "\"type\": \"end\"")
            .replace(
                "\"start_time\": 1607123955.475377, \"end_time\": null, \"score\": 0.87890625",
                "\"start_time\": 1607123955.475377, \"end_time\": 1607123967.1, \"score\": 0.87890625",
            )
            .replace("\"sub_label\": [\"Bob\", 0.87]", "\"sub_label\": null")
            .replace("\"current_zones\": [\"yard\", \"driveway\"]", "\"current_zones\": []");
        let r = decode_frigate("camera_event", &BTreeMap::new(), end.as_bytes()).unwrap();
        assert_eq!(r.timestamp_ns, 1_607_123_967_100_000_000);
        assert_eq!(
            r.tags["zones"], "driveway,yard",
            "falls back to entered zones"
        );
        assert_eq!(r.fields["duration_s"], FieldValue::Float(11.624623));
        assert!(!r.fields.contains_key("sub_label"));
    }

    #[test]
    fn frigate_plate_and_string_sub_label() {
        let p = FRIGATE_UPDATE
            .replace("\"sub_label\": [\"Bob\", 0.87]", "\"sub_label\": \"delivery\", \"recognized_license_plate\": \"51F-123.45\", \"recognized_license_plate_score\": 0.91");
        let r = decode_frigate("camera_event", &BTreeMap::new(), p.as_bytes()).unwrap();
        assert_eq!(r.fields["sub_label"], FieldValue::Str("delivery".into()));
        assert_eq!(r.fields["plate"], FieldValue::Str("51F-123.45".into()));
        assert_eq!(r.fields["plate_score"], FieldValue::Float(0.91));
    }

    #[test]
    fn frigate_rejects_what_it_cannot_map() {
        let cases: Vec<(String, &str)> = vec![
            ("nope".into(), "not_json"),
            ("[1]".into(), "not_an_object"),
            (r#"{"before":{}}"#.into(), "missing_key"),
            (r#"{"type":"gone","after":{}}"#.into(), "unknown_event_type"),
            (r#"{"type":"new"}"#.into(), "missing_key"),
            (
                r#"{"type":"new","after":{"camera":"c","label":"car","id":"x"}}"#.into(),
                "missing_key",
            ),
            (
                r#"{"type":"new","after":{"start_time":1.5,"label":"car","id":"x"}}"#.into(),
                "missing_key",
            ),
        ];
        for (payload, label) in cases {
            let e = decode_frigate("camera_event", &BTreeMap::new(), payload.as_bytes())
                .expect_err(&payload);
            assert_eq!(e.label(), label, "{payload}");
        }
    }

    #[test]
    fn plate_reads_map_with_rfc3339_times() {
        let p = br#"{"plate":"51F-123.45","confidence":0.93,"camera":"cam-03","time":"2026-11-24T00:31:02.123Z","event_id":"e1","extra":1}"#;
        let r = decode_lpr("camera_event", &BTreeMap::new(), p, 5).unwrap();
        assert_eq!(r.timestamp_ns, 1_795_480_262_123_000_000);
        assert_eq!(r.tags["camera"], "cam-03");
        assert_eq!(r.tags["label"], "license_plate");
        assert_eq!(r.tags["event_type"], "plate");
        assert_eq!(r.fields["plate"], FieldValue::Str("51F-123.45".into()));
        assert_eq!(r.fields["score"], FieldValue::Float(0.93));
        assert_eq!(r.fields["event_id"], FieldValue::Str("e1".into()));

        let offset = br#"{"plate":"X","confidence":0.5,"camera":"c","time":"2026-11-24T07:31:02.123456789+07:00"}"#;
        let r = decode_lpr("camera_event", &BTreeMap::new(), offset, 5).unwrap();
        assert_eq!(r.timestamp_ns, 1_795_480_262_123_456_789);

        let no_time = br#"{"plate":"X","confidence":0.5,"camera":"c"}"#;
        assert_eq!(
            decode_lpr("camera_event", &BTreeMap::new(), no_time, 5)
                .unwrap()
                .timestamp_ns,
            5
        );

        for (bad, label) in [
            (&br#"{"confidence":0.5,"camera":"c"}"#[..], "missing_key"),
            (br#"{"plate":"X","camera":"c"}"#, "missing_key"),
            (
                br#"{"plate":"X","confidence":0.5,"camera":"c","time":"yesterday"}"#,
                "bad_timestamp",
            ),
            (
                br#"{"plate":"X\n","confidence":0.5,"camera":"c"}"#,
                "control_character",
            ),
        ] {
            let e = decode_lpr("camera_event", &BTreeMap::new(), bad, 5).unwrap_err();
            assert_eq!(e.label(), label);
        }
    }

    #[test]
    fn seconds_keep_their_digits() {
        let v: Value = serde_json::from_str("1607123955.475377").unwrap();
        assert_eq!(seconds_to_ns(&v), Some(1_607_123_955_475_377_000));
        let v: Value = serde_json::from_str("1700000000").unwrap();
        assert_eq!(seconds_to_ns(&v), Some(1_700_000_000_000_000_000));
        let v: Value = serde_json::from_str("1.7e9").unwrap();
        assert_eq!(seconds_to_ns(&v), Some(1_700_000_000_000_000_000));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_frigate("camera_event", &BTreeMap::new(), &bytes);
            let _ = decode_lpr("camera_event", &BTreeMap::new(), &bytes, 0);
        }
    }
}
