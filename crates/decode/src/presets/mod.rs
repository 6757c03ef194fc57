//! Built-in decoders for the products a city already runs: `format = "platerecognizer"`,
//! `"openalpr"`, `"chirpstack"` and `"ttn"` on any input that carries payloads (MQTT today, the
//! HTTP webhook input too, through [`crate::payload::PayloadDecoder`]).
//!
//! Why they exist: these vendors post their own fixed JSON (a plate camera's webhook, a LoRaWAN
//! network server's uplink event). A generic JSON mapping cannot express "one reading per
//! element of `results`" or "the best of several gateways", so each gets a pure function from
//! payload bytes to readings here, tested against the vendors' published payloads
//! (`crates/decode/tests/fixtures/presets/`, sources in its README).
//!
//! Every preset has the same shape: [`PresetOutput`] — the readings, and one [`PresetError`]
//! for each part refused (a whole payload, or one plate result among several: the other results
//! are kept). Each error has a stable [`label`](PresetError::label) for the rejection metrics.
//!
//! | preset | readings | measurement (default) | tags | fields |
//! | --- | --- | --- | --- | --- |
//! | [`platerecognizer`] | one per result | `camera_event` | `camera`, `label=license_plate`, `event_type=plate`, `plate_index` | `plate`, `score`, `region`, `vehicle_type` |
//! | [`openalpr`] | one per result (`alpr_results`), the best plate (`alpr_group`) | `camera_event` | same, and `site` | same |
//! | [`chirpstack`] | one per uplink | `lorawan` | `dev_eui`, `device_name`, `application` | decoded object, `rssi`, `snr`, `f_cnt`, `f_port` |
//! | [`ttn`] | one per uplink | `lorawan` | same | same |
//!
//! **Several plates at one instant.** One frame can hold several plates, all with the frame's
//! time. Each plate reading therefore carries a `plate_index` tag (the vendor's own plate index
//! where it sends one, else the position in `results`), so the readings are different series
//! and no store keeps only one of them (InfluxDB overwrites a series' point at the same
//! nanosecond; VictoriaMetrics with deduplication keeps one per series and millisecond). Their
//! timestamps are left as the camera sent them. The camera tag comes from the payload; where the
//! payload names none (a Snapshot API call without `camera_id`), a static `camera` tag from the
//! input's config is kept.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use ioc_model::{FieldValue, InvalidReading, Reading};

use crate::camera::{decimal_to_ns, rfc3339_to_ns};

pub mod chirpstack;
pub mod openalpr;
pub mod platerecognizer;
pub mod ttn;

/// The measurement LoRaWAN presets give readings when the input names none.
pub const LORAWAN_MEASUREMENT: &str = "lorawan";

/// What a preset made of one payload: its readings and what it refused.
pub type PresetOutput = (Vec<Reading>, Vec<PresetError>);

/// Why a preset refused a payload or one part of it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PresetError {
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload (or one of its results) is not a JSON object")]
    NotAnObject,
    #[error("missing or invalid {0:?}")]
    Missing(&'static str),
    #[error("time {0:?} is not a usable RFC 3339 time or Unix epoch")]
    BadTime(String),
    #[error("payload has no plate results")]
    NoResults,
    #[error("plate score {0} is outside 0..1")]
    ScoreOutOfRange(f64),
    #[error("data_type {0:?} carries no plate read")]
    UnsupportedDataType(String),
    #[error("{0} event is not an uplink")]
    NotAnUplink(String),
    #[error("uplink has no decoded payload (configure a payload codec/formatter for the device)")]
    NoDecodedPayload,
    #[error(transparent)]
    Invalid(#[from] InvalidReading),
}

impl PresetError {
    pub fn label(&self) -> &'static str {
        match self {
            PresetError::NotJson(_) => "not_json",
            PresetError::NotAnObject => "not_an_object",
            PresetError::Missing(_) => "missing_key",
            PresetError::BadTime(_) => "bad_timestamp",
            PresetError::NoResults => "no_results",
            PresetError::ScoreOutOfRange(_) => "score_out_of_range",
            PresetError::UnsupportedDataType(_) => "unsupported_data_type",
            PresetError::NotAnUplink(_) => "not_an_uplink",
            PresetError::NoDecodedPayload => "no_decoded_payload",
            PresetError::Invalid(e) => e.label(),
        }
    }
}

/// A whole-payload result as a [`PresetOutput`].
pub(crate) fn whole(r: Result<Vec<Reading>, PresetError>) -> PresetOutput {
    match r {
        Ok(readings) => (readings, Vec::new()),
        Err(e) => (Vec::new(), vec![e]),
    }
}

pub(crate) fn object(payload: &[u8]) -> Result<Map<String, Value>, PresetError> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(PresetError::NotAnObject),
        Err(e) => Err(PresetError::NotJson(e.to_string())),
    }
}

/// A non-empty string member.
pub(crate) fn text<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An id sent as a string or a number (OpenALPR's `camera_id` is a number).
pub(crate) fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A vendor time string to Unix ns: RFC 3339, or the `YYYY-MM-DD HH:MM:SS[.f][offset]` that
/// Plate Recognizer writes (Snapshot's `timestamp` has no offset and is UTC).
pub(crate) fn time_text_to_ns(s: &str) -> Option<i64> {
    if let Some(ns) = rfc3339_to_ns(s) {
        return Some(ns);
    }
    let (date, rest) = s.split_at_checked(10)?;
    let clock = rest.strip_prefix(' ')?;
    let has_offset = clock.ends_with(['Z', 'z']) || clock.contains(['+', '-']);
    let suffix = if has_offset { "" } else { "Z" };
    rfc3339_to_ns(&format!("{date}T{clock}{suffix}"))
}

/// An epoch number that is seconds or milliseconds (OpenALPR's open-source agent sends
/// seconds, the commercial agent and cloud API milliseconds): values of 10^11 and more are
/// milliseconds (10^11 s is the year 5138; 10^11 ms is 1973).
pub(crate) fn epoch_to_ns(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    let magnitude = n.as_f64()?.abs();
    let unit = if magnitude >= 1e11 {
        1_000_000
    } else {
        1_000_000_000
    };
    decimal_to_ns(&n.to_string(), unit)
}

/// One plate read, ready to become a reading.
#[derive(Debug)]
pub(crate) struct PlateRead {
    pub camera: Option<String>,
    pub site: Option<String>,
    pub plate: String,
    /// 0..1.
    pub score: f64,
    pub region: Option<String>,
    pub vehicle_type: Option<String>,
    pub plate_index: u64,
    pub timestamp_ns: i64,
}

/// The reading of one plate read (see the module doc for its shape).
pub(crate) fn plate_reading(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    p: PlateRead,
) -> Result<Reading, PresetError> {
    if !(0.0..=1.0).contains(&p.score) {
        return Err(PresetError::ScoreOutOfRange(p.score));
    }
    let mut r = Reading::new(measurement, p.timestamp_ns);
    r.tags = static_tags.clone();
    if let Some(camera) = p.camera {
        r.tags.insert("camera".into(), camera);
    }
    if let Some(site) = p.site {
        r.tags.insert("site".into(), site);
    }
    r.tags.insert("label".into(), "license_plate".into());
    r.tags.insert("event_type".into(), "plate".into());
    r.tags
        .insert("plate_index".into(), p.plate_index.to_string());
    r.fields.insert("plate".into(), FieldValue::Str(p.plate));
    r.fields.insert("score".into(), FieldValue::Float(p.score));
    if let Some(region) = p.region {
        r.fields.insert("region".into(), FieldValue::Str(region));
    }
    if let Some(v) = p.vehicle_type {
        r.fields.insert("vehicle_type".into(), FieldValue::Str(v));
    }
    r.validate()?;
    Ok(r)
}

/// The radio figures of the gateway that heard an uplink best.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BestGateway {
    pub rssi: Option<f64>,
    pub snr: Option<f64>,
}

/// Of the gateways that received an uplink, the one with the highest RSSI (ties: the higher
/// SNR; gateways without an RSSI rank last). `None` without any gateway entry.
pub(crate) fn best_gateway(gateways: Option<&Value>) -> Option<BestGateway> {
    let key = |g: &Map<String, Value>| BestGateway {
        rssi: g
            .get("rssi")
            .and_then(Value::as_f64)
            .filter(|f| f.is_finite()),
        snr: g
            .get("snr")
            .and_then(Value::as_f64)
            .filter(|f| f.is_finite()),
    };
    let rank = |b: &BestGateway| {
        (
            b.rssi.unwrap_or(f64::NEG_INFINITY),
            b.snr.unwrap_or(f64::NEG_INFINITY),
        )
    };
    gateways?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .map(key)
        .max_by(|a, b| {
            let (ra, rb) = (rank(a), rank(b));
            ra.0.total_cmp(&rb.0).then(ra.1.total_cmp(&rb.1))
        })
}

/// The identity of a LoRaWAN device, as its network server names it.
#[derive(Debug)]
pub(crate) struct Device<'a> {
    pub dev_eui: Option<&'a str>,
    pub device_name: &'a str,
    pub application: &'a str,
}

/// What a network server said about one uplink besides the device and its decoded object.
#[derive(Debug)]
pub(crate) struct UplinkMeta {
    pub gateway: Option<BestGateway>,
    pub f_cnt: i64,
    pub f_port: i64,
    pub timestamp_ns: i64,
}

/// The reading of one LoRaWAN uplink: the decoded object flattened like the `json` format does
/// (nested objects joined with `_`, arrays by index, numbers as floats, `null` skipped), then
/// the radio and frame fields, which win over decoded keys of the same name.
pub(crate) fn lorawan_reading(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    device: Device<'_>,
    decoded: Option<&Value>,
    meta: UplinkMeta,
) -> Result<Reading, PresetError> {
    let decoded = match decoded {
        Some(Value::Object(o)) => o,
        _ => return Err(PresetError::NoDecodedPayload),
    };
    let mut r = Reading::new(measurement, meta.timestamp_ns);
    r.tags = static_tags.clone();
    if let Some(eui) = device.dev_eui {
        r.tags.insert("dev_eui".into(), eui.to_ascii_lowercase());
    }
    r.tags
        .insert("device_name".into(), device.device_name.to_owned());
    r.tags
        .insert("application".into(), device.application.to_owned());
    let mut flat = Vec::with_capacity(decoded.len());
    for (k, v) in decoded {
        crate::json::flatten(k.clone(), v.clone(), &mut flat);
    }
    for (k, v) in flat {
        let field = match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) => FieldValue::Float(f),
                None => continue,
            },
            Value::Bool(b) => FieldValue::Bool(b),
            Value::String(s) => FieldValue::Str(s),
            _ => continue,
        };
        r.fields.insert(k, field);
    }
    if let Some(g) = meta.gateway {
        if let Some(rssi) = g.rssi {
            r.fields.insert("rssi".into(), FieldValue::Float(rssi));
        }
        if let Some(snr) = g.snr {
            r.fields.insert("snr".into(), FieldValue::Float(snr));
        }
    }
    r.fields.insert("f_cnt".into(), FieldValue::Int(meta.f_cnt));
    r.fields
        .insert("f_port".into(), FieldValue::Int(meta.f_port));
    r.validate()?;
    Ok(r)
}

/// A LoRaWAN frame counter or port: absent means 0 (both servers omit zero values from their
/// JSON), anything but a non-negative integer is refused.
pub(crate) fn frame_number(o: &Map<String, Value>, key: &'static str) -> Result<i64, PresetError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or(PresetError::Missing(key)),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! What the preset tests share: the fixtures directory and a reading comparer.

    use ioc_model::{FieldValue, Reading};

    /// The reading a test expects, written out in full.
    pub fn reading(
        measurement: &str,
        tags: &[(&str, &str)],
        fields: &[(&str, FieldValue)],
        timestamp_ns: i64,
    ) -> Reading {
        let mut r = Reading::new(measurement, timestamp_ns);
        for (k, v) in tags {
            r.tags.insert((*k).into(), (*v).into());
        }
        for (k, v) in fields {
            r.fields.insert((*k).into(), v.clone());
        }
        r
    }

    pub fn s(v: &str) -> FieldValue {
        FieldValue::Str(v.into())
    }

    pub fn f(v: f64) -> FieldValue {
        FieldValue::Float(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let tags = BTreeMap::new();
            let _ = platerecognizer::decode("camera_event", &tags, &bytes, 0);
            let _ = openalpr::decode("camera_event", &tags, &bytes, 0);
            let _ = chirpstack::decode("lorawan", &tags, "", &bytes, 0);
            let _ = ttn::decode("lorawan", &tags, &bytes, 0);
        }

        /// Valid JSON of vendor-like shapes reaches further than random bytes do.
        #[test]
        fn arbitrary_json_values_never_panic(
            key in "(results|data|rxInfo|object|uplink_message|decoded_payload|plate|score|epoch_time|timestamp)",
            value in proptest::prop_oneof![
                proptest::strategy::Just("null".to_owned()),
                proptest::strategy::Just("[]".to_owned()),
                proptest::strategy::Just("[{}]".to_owned()),
                proptest::strategy::Just("{}".to_owned()),
                "-?[0-9]{1,25}(\\.[0-9]{0,12})?(e[0-9]{1,3})?",
                "\"[ -~]{0,30}\"",
            ],
        ) {
            let payload = format!(r#"{{"{key}": {value}, "data_type": "alpr_results", "results": [{{"{key}": {value}}}], "uplink_message": {{"{key}": {value}}}}}"#);
            let tags = BTreeMap::new();
            for (readings, _) in [
                platerecognizer::decode("camera_event", &tags, payload.as_bytes(), 0),
                openalpr::decode("camera_event", &tags, payload.as_bytes(), 0),
                chirpstack::decode("lorawan", &tags, "", payload.as_bytes(), 0),
                ttn::decode("lorawan", &tags, payload.as_bytes(), 0),
            ] {
                for r in readings {
                    proptest::prop_assert!(r.validate().is_ok());
                }
            }
        }
    }

    #[test]
    fn vendor_time_strings() {
        assert_eq!(
            time_text_to_ns("2021-09-29T05:56:13.606935Z"),
            Some(1_632_894_973_606_935_000)
        );
        assert_eq!(
            time_text_to_ns("2021-09-29 05:56:13.606935+00:00"),
            Some(1_632_894_973_606_935_000)
        );
        assert_eq!(
            time_text_to_ns("2021-10-11 05:43:58.514896"),
            Some(1_633_931_038_514_896_000)
        );
        assert_eq!(time_text_to_ns("2021-10-11"), None);
        assert_eq!(time_text_to_ns("yesterday"), None);
        assert_eq!(time_text_to_ns("é"), None);
    }

    #[test]
    fn epochs_in_seconds_or_milliseconds() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(
            epoch_to_ns(&v("1402161050")),
            Some(1_402_161_050_000_000_000)
        );
        assert_eq!(
            epoch_to_ns(&v("1448326208789")),
            Some(1_448_326_208_789_000_000)
        );
        assert_eq!(epoch_to_ns(&v("\"1\"")), None);
        assert_eq!(epoch_to_ns(&v("1e300")), None);
    }

    #[test]
    fn best_gateway_is_the_loudest_then_the_clearest() {
        let g: Value = serde_json::from_str(
            r#"[{"rssi":-110,"snr":9},{"rssi":-95,"snr":-3},{"rssi":-95,"snr":2},{"snr":12}]"#,
        )
        .unwrap();
        assert_eq!(
            best_gateway(Some(&g)),
            Some(BestGateway {
                rssi: Some(-95.0),
                snr: Some(2.0)
            })
        );
        assert_eq!(best_gateway(Some(&Value::Array(vec![]))), None);
        assert_eq!(best_gateway(None), None);
    }
}
