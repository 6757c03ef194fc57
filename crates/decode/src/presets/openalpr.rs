//! OpenALPR / Rekor Scout (`format = "openalpr"`): the agent's (alprd) and cloud API's
//! `alpr_results` (one reading per plate result) and the commercial agent's `alpr_group` (one
//! reading: the group's best plate).
//!
//! Why it exists: OpenALPR agents post their recognitions as HTTP POSTs (or leave them in a
//! beanstalkd queue) in their own JSON; cities run them on existing cameras.
//!
//! Mapping (see [`super`] for the shape all plate presets share):
//! - `data_type`: `alpr_results` or absent (the open-source agent sends none) → one reading
//!   per element of `results`; `alpr_group` → one reading from `best_plate`; any other
//!   (`heartbeat`, `vehicle`, …) is refused as `unsupported_data_type`;
//! - tags `camera` = `camera_id` (a number), `site` = `site_id` where sent, `plate_index` = the
//!   result's `plate_index` (else its position in `results`);
//! - fields `plate`, `score` = `confidence` / 100 (OpenALPR sends percent), `region` (where not
//!   empty), `vehicle_type` = the most confident `vehicle.body_type` name (cloud API and
//!   commercial agent);
//! - time: the result's own `epoch_time` where it has one, else the payload's `epoch_time`
//!   (`epoch_start` for a group), else the time of receipt. Epochs are seconds (open-source
//!   agent) or milliseconds (commercial agent, cloud): 10^11 and more is read as milliseconds.
//!
//! Example (`crates/decode/tests/fixtures/presets/openalpr_alprd_group.json`, shortened):
//!
//! ```text
//! {"version": 1, "data_type": "alpr_group", "epoch_start": 1448326208789,
//!  "site_id": "dimitar-video", "camera_id": 1414799424,
//!  "best_plate": {"plate": "A13709", "confidence": 92.075203, "plate_index": 0,
//!                 "region": "mo", ...}, ...}
//! ```
//! gives
//! ```text
//! camera_event,camera=1414799424,event_type=plate,label=license_plate,plate_index=0,site=dimitar-video
//!   plate="A13709",region="mo",score=0.92075203 1448326208789000000
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    epoch_to_ns, id_text, object, plate_reading, text, PlateRead, PresetError, PresetOutput,
};

/// Decodes one OpenALPR payload; `received_ns` is the time of results without one.
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
    match msg.get("data_type") {
        None | Some(Value::Null) => results(measurement, static_tags, &msg, received_ns),
        Some(Value::String(t)) if t == "alpr_results" => {
            results(measurement, static_tags, &msg, received_ns)
        }
        Some(Value::String(t)) if t == "alpr_group" => {
            match group(measurement, static_tags, &msg, received_ns) {
                Ok(r) => (vec![r], Vec::new()),
                Err(e) => (Vec::new(), vec![e]),
            }
        }
        Some(Value::String(t)) => (
            Vec::new(),
            vec![PresetError::UnsupportedDataType(t.clone())],
        ),
        Some(_) => (Vec::new(), vec![PresetError::Missing("data_type")]),
    }
}

/// The time of `key` in `o`, `default` if absent.
fn epoch_or(o: &Map<String, Value>, key: &str, default: i64) -> Result<i64, PresetError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => epoch_to_ns(v).ok_or_else(|| PresetError::BadTime(v.to_string())),
    }
}

fn results(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    msg: &Map<String, Value>,
    received_ns: i64,
) -> PresetOutput {
    let items = match msg.get("results") {
        Some(Value::Array(a)) if a.is_empty() => return (Vec::new(), vec![PresetError::NoResults]),
        Some(Value::Array(a)) => a,
        _ => return (Vec::new(), vec![PresetError::Missing("results")]),
    };
    let frame_ns = match epoch_or(msg, "epoch_time", received_ns) {
        Ok(ns) => ns,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let camera = id_text(msg.get("camera_id"));
    let site = text(msg, "site_id").map(str::to_owned);
    let mut readings = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let read = item
            .as_object()
            .ok_or(PresetError::NotAnObject)
            .and_then(|r| {
                let ts = epoch_or(r, "epoch_time", frame_ns)?;
                plate_read(r, None, camera.clone(), site.clone(), index as u64, ts)
            })
            .and_then(|p| plate_reading(measurement, static_tags, p));
        match read {
            Ok(r) => readings.push(r),
            Err(e) => errors.push(e),
        }
    }
    (readings, errors)
}

fn group(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    msg: &Map<String, Value>,
    received_ns: i64,
) -> Result<ioc_model::Reading, PresetError> {
    let best = msg
        .get("best_plate")
        .and_then(Value::as_object)
        .ok_or(PresetError::Missing("best_plate"))?;
    let ts = epoch_or(msg, "epoch_start", received_ns)?;
    let p = plate_read(
        best,
        Some(msg),
        id_text(msg.get("camera_id")),
        text(msg, "site_id").map(str::to_owned),
        0,
        ts,
    )?;
    plate_reading(measurement, static_tags, p)
}

/// One plate result (`r`); `group` is the `alpr_group` around a best plate, whose `best_*`
/// members and `vehicle` stand in for what the plate lacks.
fn plate_read(
    r: &Map<String, Value>,
    group: Option<&Map<String, Value>>,
    camera: Option<String>,
    site: Option<String>,
    position: u64,
    timestamp_ns: i64,
) -> Result<PlateRead, PresetError> {
    let from_group = |key: &str| group.and_then(|g| g.get(key));
    let plate = text(r, "plate")
        .or_else(|| from_group("best_plate_number").and_then(Value::as_str))
        .filter(|p| !p.is_empty())
        .ok_or(PresetError::Missing("plate"))?;
    let confidence = r
        .get("confidence")
        .or_else(|| from_group("best_confidence"))
        .and_then(Value::as_f64)
        .ok_or(PresetError::Missing("confidence"))?;
    let region = text(r, "region")
        .or_else(|| from_group("best_region").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let vehicle = r.get("vehicle").or_else(|| from_group("vehicle"));
    Ok(PlateRead {
        camera,
        site,
        plate: plate.to_owned(),
        score: confidence / 100.0,
        region,
        vehicle_type: vehicle.and_then(body_type),
        plate_index: r
            .get("plate_index")
            .and_then(Value::as_u64)
            .unwrap_or(position),
        timestamp_ns,
    })
}

/// The most confident `body_type` name of a `vehicle` object.
fn body_type(vehicle: &Value) -> Option<String> {
    vehicle
        .get("body_type")?
        .as_array()?
        .iter()
        .filter_map(|c| {
            let name = c.get("name")?.as_str().filter(|n| !n.is_empty())?;
            Some((
                c.get("confidence").and_then(Value::as_f64).unwrap_or(0.0),
                name,
            ))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::testing::{f, reading, s};

    const RESULTS: &str = include_str!("../../tests/fixtures/presets/openalpr_alprd_results.json");
    const GROUP: &str = include_str!("../../tests/fixtures/presets/openalpr_alprd_group.json");
    const CLOUD: &str = include_str!("../../tests/fixtures/presets/openalpr_cloud_results.json");

    fn no_tags() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn json_f64(text: &str) -> f64 {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn agent_results_give_one_reading_per_plate_with_their_own_times() {
        let (readings, errors) = decode("camera_event", &no_tags(), RESULTS.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        let tags = |index| {
            [
                ("camera", "1"),
                ("event_type", "plate"),
                ("label", "license_plate"),
                ("plate_index", index),
                ("site", "headquarters"),
            ]
        };
        assert_eq!(
            readings,
            vec![
                reading(
                    "camera_event",
                    &tags("0"),
                    &[("plate", s("S11FRE")), ("score", f(77.130661 / 100.0))],
                    1_402_161_050_000_000_000,
                ),
                reading(
                    "camera_event",
                    &tags("1"),
                    &[("plate", s("EJLESSIE")), ("score", f(78.167984 / 100.0))],
                    1_402_158_050_000_000_000,
                ),
            ]
        );
    }

    #[test]
    fn group_gives_its_best_plate() {
        let (readings, errors) = decode("camera_event", &no_tags(), GROUP.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            readings,
            vec![reading(
                "camera_event",
                &[
                    ("camera", "1414799424"),
                    ("event_type", "plate"),
                    ("label", "license_plate"),
                    ("plate_index", "0"),
                    ("site", "dimitar-video"),
                ],
                &[
                    ("plate", s("A13709")),
                    ("region", s("mo")),
                    ("score", f(92.075203 / 100.0)),
                ],
                1_448_326_208_789_000_000,
            )]
        );
    }

    #[test]
    fn cloud_results_carry_region_and_body_type_in_milliseconds() {
        let (readings, errors) = decode("camera_event", &no_tags(), CLOUD.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            readings,
            vec![reading(
                "camera_event",
                &[
                    ("event_type", "plate"),
                    ("label", "license_plate"),
                    ("plate_index", "0"),
                ],
                &[
                    ("plate", s("TE6666DA")),
                    ("region", s("eu-at")),
                    // serde_json (without `float_roundtrip`) reads this one a ULP off the
                    // nearest double; the score is what it reads, divided by 100
                    ("score", f(json_f64("93.52496337890625") / 100.0)),
                    ("vehicle_type", s("sedan-standard")),
                ],
                1_583_506_775_198_000_000,
            )]
        );
    }

    #[test]
    fn refusals_have_labels() {
        let no_plate = RESULTS.replace(r#""plate": "S11FRE","#, "");
        let over = RESULTS.replace(r#""confidence": 78.167984,"#, r#""confidence": 178.2,"#);
        let empty = r#"{"data_type": "alpr_results", "epoch_time": 1, "results": []}"#;
        let heartbeat = r#"{"version": 1, "data_type": "heartbeat", "timestamp": 1453426302097}"#;
        let bad_time = RESULTS.replace("\"epoch_time\": 1402161050", "\"epoch_time\": \"soon\"");
        let (readings, errors) = decode("camera_event", &no_tags(), no_plate.as_bytes(), 5);
        assert_eq!(readings.len(), 1, "the other plate is kept");
        assert_eq!(errors[0].label(), "missing_key");
        let (readings, errors) = decode("camera_event", &no_tags(), over.as_bytes(), 5);
        assert_eq!(readings.len(), 1);
        assert_eq!(errors[0].label(), "score_out_of_range");
        for (payload, label) in [
            (empty, "no_results"),
            (heartbeat, "unsupported_data_type"),
            (bad_time.as_str(), "bad_timestamp"),
            (r#"{"data_type": "alpr_group"}"#, "missing_key"),
            ("{\"results\": [", "not_json"),
            ("\"alpr\"", "not_an_object"),
        ] {
            let (readings, errors) = decode("camera_event", &no_tags(), payload.as_bytes(), 5);
            assert!(readings.is_empty(), "{payload}");
            assert_eq!(errors.len(), 1, "{payload}");
            assert_eq!(errors[0].label(), label, "{payload}");
        }
    }
}
