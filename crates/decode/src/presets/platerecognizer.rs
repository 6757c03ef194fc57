//! Plate Recognizer (`format = "platerecognizer"`): Stream webhooks, Snapshot webhooks and
//! Snapshot API responses, one reading per element of `results`.
//!
//! Why it exists: Plate Recognizer Stream and Snapshot are common ALPR engines beside city
//! cameras; they post their own JSON, with several plates per image. Stream and Snapshot
//! webhooks wrap the recognition in `{"hook": {...}, "data": {...}}`; the Snapshot API answer
//! is the recognition itself. Both are accepted.
//!
//! Mapping (see [`super`] for the shape all plate presets share):
//! - tag `camera` = `camera_id` (kept from the input's static tags when `null`);
//! - fields `plate`, `score` (0..1 as sent), `region` = `region.code`, `vehicle_type` =
//!   `vehicle.type`, where present and not empty;
//! - time: the result's own `timestamp` where it has one, else the recognition's `timestamp`
//!   (Stream: RFC 3339; Snapshot: `2021-10-11 05:43:58.514896`, UTC), else the time of receipt;
//! - `plate_index` tag = the result's position in `results`.
//!
//! A result without `plate` or `score`, or with a score outside 0..1, is refused with its label
//! and the other results are kept. No `results` is `missing_key`; an empty array (nothing read)
//! is `no_results`.
//!
//! Example (Stream webhook, `crates/decode/tests/fixtures/presets/platerecognizer_stream_webhook.json`,
//! shortened):
//!
//! ```text
//! {"hook": {"id": "camera-1", "event": "recognition", ...},
//!  "data": {"camera_id": "camera-1", "timestamp": "2021-09-29T05:56:13.606935Z",
//!           "results": [{"plate": "9jub11", "score": 0.839,
//!                        "region": {"code": "gb", "score": 0.413},
//!                        "vehicle": {"score": 0.267, "type": "Big Truck", ...}, ...}]}}
//! ```
//! gives
//! ```text
//! camera_event,camera=camera-1,event_type=plate,label=license_plate,plate_index=0
//!   plate="9jub11",region="gb",score=0.839,vehicle_type="Big Truck" 1632894973606935000
//! ```

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    id_text, object, plate_reading, text, time_text_to_ns, PlateRead, PresetError, PresetOutput,
};

/// Decodes one Plate Recognizer payload; `received_ns` is the time of results without one.
pub fn decode(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    payload: &[u8],
    received_ns: i64,
) -> PresetOutput {
    let msg = match object(payload) {
        Ok(m) => m,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let body = match msg.get("data") {
        Some(Value::Object(d)) => d,
        _ => &msg,
    };
    let results = match body.get("results") {
        Some(Value::Array(a)) if a.is_empty() => return (Vec::new(), vec![PresetError::NoResults]),
        Some(Value::Array(a)) => a,
        _ => return (Vec::new(), vec![PresetError::Missing("results")]),
    };
    let frame_ns = match body.get("timestamp") {
        None | Some(Value::Null) => received_ns,
        Some(Value::String(s)) => match time_text_to_ns(s) {
            Some(ns) => ns,
            None => return (Vec::new(), vec![PresetError::BadTime(s.clone())]),
        },
        Some(v) => return (Vec::new(), vec![PresetError::BadTime(v.to_string())]),
    };
    let camera = id_text(body.get("camera_id"));
    let mut readings = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for (index, result) in results.iter().enumerate() {
        let read = result_read(result, camera.clone(), index as u64, frame_ns)
            .and_then(|p| plate_reading(measurement, static_tags, p));
        match read {
            Ok(r) => readings.push(r),
            Err(e) => errors.push(e),
        }
    }
    (readings, errors)
}

fn result_read(
    result: &Value,
    camera: Option<String>,
    plate_index: u64,
    frame_ns: i64,
) -> Result<PlateRead, PresetError> {
    let r = result.as_object().ok_or(PresetError::NotAnObject)?;
    let plate = text(r, "plate").ok_or(PresetError::Missing("plate"))?;
    let score = r
        .get("score")
        .and_then(Value::as_f64)
        .ok_or(PresetError::Missing("score"))?;
    let timestamp_ns = match r.get("timestamp") {
        Some(Value::String(s)) => {
            time_text_to_ns(s).ok_or_else(|| PresetError::BadTime(s.clone()))?
        }
        _ => frame_ns,
    };
    let region = match r.get("region") {
        Some(Value::Object(o)) => text(o, "code").map(str::to_owned),
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let vehicle_type = r
        .get("vehicle")
        .and_then(Value::as_object)
        .and_then(|v| text(v, "type"))
        .map(str::to_owned);
    Ok(PlateRead {
        camera,
        site: None,
        plate: plate.to_owned(),
        score,
        region,
        vehicle_type,
        plate_index,
        timestamp_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::testing::{f, reading, s};

    const STREAM: &str =
        include_str!("../../tests/fixtures/presets/platerecognizer_stream_webhook.json");
    const SNAPSHOT: &str =
        include_str!("../../tests/fixtures/presets/platerecognizer_snapshot_response.json");

    fn no_tags() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn stream_webhook_maps_exactly() {
        let (readings, errors) = decode("camera_event", &no_tags(), STREAM.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            readings,
            vec![reading(
                "camera_event",
                &[
                    ("camera", "camera-1"),
                    ("event_type", "plate"),
                    ("label", "license_plate"),
                    ("plate_index", "0"),
                ],
                &[
                    ("plate", s("9jub11")),
                    ("region", s("gb")),
                    ("score", f(0.839)),
                    ("vehicle_type", s("Big Truck")),
                ],
                1_632_894_973_606_935_000,
            )]
        );
    }

    #[test]
    fn snapshot_response_maps_exactly_and_keeps_a_configured_camera() {
        let tags = BTreeMap::from([("camera".to_owned(), "gate-2".to_owned())]);
        let (readings, errors) = decode("plates", &tags, SNAPSHOT.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            readings,
            vec![reading(
                "plates",
                &[
                    ("camera", "gate-2"),
                    ("event_type", "plate"),
                    ("label", "license_plate"),
                    ("plate_index", "0"),
                ],
                &[
                    ("plate", s("nhk552")),
                    ("region", s("gb")),
                    ("score", f(0.898)),
                    ("vehicle_type", s("Sedan")),
                ],
                1_633_931_038_514_896_000,
            )]
        );
    }

    #[test]
    fn several_plates_of_one_frame_stay_several_series() {
        let two = STREAM.replace(
            r#""results": ["#,
            r#""results": [{"plate": "ab123", "score": 0.9}, {"plate": "cd456", "score": 0.8, "timestamp": "2021-09-29T05:56:14Z"}, "#,
        );
        let (readings, errors) = decode("camera_event", &no_tags(), two.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<_> = readings
            .iter()
            .map(|r| {
                (
                    r.tags["plate_index"].as_str(),
                    r.fields["plate"].clone(),
                    r.timestamp_ns,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("0", s("ab123"), 1_632_894_973_606_935_000),
                ("1", s("cd456"), 1_632_894_974_000_000_000),
                ("2", s("9jub11"), 1_632_894_973_606_935_000),
            ]
        );
    }

    #[test]
    fn bad_results_are_refused_and_good_ones_kept() {
        let mixed = STREAM.replace(
            r#""results": ["#,
            r#""results": [{"score": 0.9}, {"plate": "x", "score": 1.5}, {"plate": "y"}, 7, "#,
        );
        let (readings, errors) = decode("camera_event", &no_tags(), mixed.as_bytes(), 5);
        assert_eq!(readings.len(), 1);
        assert_eq!(readings[0].fields["plate"], s("9jub11"));
        assert_eq!(readings[0].tags["plate_index"], "4");
        let labels: Vec<_> = errors.iter().map(PresetError::label).collect();
        assert_eq!(
            labels,
            [
                "missing_key",
                "score_out_of_range",
                "missing_key",
                "not_an_object"
            ]
        );
    }

    #[test]
    fn whole_payload_refusals() {
        let empty = STREAM.replace(
            &STREAM[STREAM.find(r#""results""#).unwrap()..STREAM.rfind(']').unwrap() + 1],
            r#""results": []"#,
        );
        let bad_time = STREAM.replace("2021-09-29T05:56:13.606935Z", "last tuesday");
        for (payload, label) in [
            (empty.as_str(), "no_results"),
            (r#"{"data": {"camera_id": "c"}}"#, "missing_key"),
            (bad_time.as_str(), "bad_timestamp"),
            ("{\"data\": ", "not_json"),
            ("[1, 2]", "not_an_object"),
        ] {
            let (readings, errors) = decode("camera_event", &no_tags(), payload.as_bytes(), 5);
            assert!(readings.is_empty(), "{payload}");
            assert_eq!(errors.len(), 1, "{payload}");
            assert_eq!(errors[0].label(), label, "{payload}");
        }
    }

    #[test]
    fn no_time_means_the_time_of_receipt() {
        let p = br#"{"results": [{"plate": "ab1", "score": 0.5}]}"#;
        let (readings, _) = decode("camera_event", &no_tags(), p, 77);
        assert_eq!(readings[0].timestamp_ns, 77);
        assert!(!readings[0].tags.contains_key("camera"));
    }
}
