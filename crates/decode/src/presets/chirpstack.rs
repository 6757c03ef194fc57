//! ChirpStack v4 (`format = "chirpstack"`): JSON uplink events, one reading each.
//!
//! Why it exists: ChirpStack is the open-source LoRaWAN network server most cities host
//! themselves; its MQTT integration publishes every device event on
//! `application/<application id>/device/<DevEUI>/event/<type>` (subscribe to
//! `application/+/device/+/event/up`), and its HTTP integration posts the same JSON with
//! `?event=<type>`.
//!
//! Mapping (measurement `lorawan` unless configured):
//! - tags `dev_eui` = `deviceInfo.devEui` (lower case), `device_name` = `deviceInfo.deviceName`,
//!   `application` = `deviceInfo.applicationName`;
//! - fields: the codec's decoded `object`, flattened like the `json` format (nested objects
//!   joined with `_`, arrays by index, numbers as floats, booleans, strings; `null` skipped);
//!   then `rssi` and `snr` of the best gateway in `rxInfo` (highest RSSI, ties by SNR, both
//!   from that gateway), `f_cnt` = `fCnt`, `f_port` = `fPort` (integers; absent means 0, as
//!   the protobuf JSON mapping omits zero values). These four win over decoded keys of the
//!   same name;
//! - time: the event's `time`, else the first gateway's `gwTime`, else its `nsTime`, else the
//!   time of receipt.
//!
//! Refused: an uplink without a decoded `object` (no codec in the device profile) as
//! `no_decoded_payload`; other events as `not_an_uplink` — by the topic's last level where
//! there is a topic (`…/event/join`), else by their shape (a `status`, `join`, `ack`, `txack`,
//! `log`, `location` or `integration` event has none of an uplink's members, or members only
//! those events have).
//!
//! Example (`crates/decode/tests/fixtures/presets/chirpstack_up_object.json`, shortened):
//!
//! ```text
//! {"time": "2026-10-09T16:43:50.700+00:00",
//!  "deviceInfo": {"applicationName": "Mappers", "deviceName": "tracker-1",
//!                 "devEui": "a84041000181c0de", ...},
//!  "fCnt": 42, "fPort": 2,
//!  "object": {"latitude": 51.5072, "fixFailed": false, "manDown": null, "type": "position", ...},
//!  "rxInfo": [{"rssi": -95, "snr": 7.5, ...}, {"rssi": -110, "snr": -3.25, ...}], ...}
//! ```
//! gives
//! ```text
//! lorawan,application=Mappers,dev_eui=a84041000181c0de,device_name=tracker-1
//!   latitude=51.5072,fixFailed=false,type="position",…,rssi=-95,snr=7.5,f_cnt=42i,f_port=2i
//!   1791564230700000000
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    best_gateway, frame_number, lorawan_reading, object, text, time_text_to_ns, whole, Device,
    PresetError, PresetOutput, UplinkMeta,
};

/// Members only non-uplink events have, and the event each names.
const OTHER_EVENT_KEYS: [(&str, &str); 7] = [
    ("integrationName", "integration"),
    ("queueItemId", "ack"),
    ("downlinkId", "txack"),
    ("margin", "status"),
    ("batteryLevel", "status"),
    ("level", "log"),
    ("location", "location"),
];

/// Members every uplink event has at least one of.
const UPLINK_KEYS: [&str; 5] = ["rxInfo", "fPort", "fCnt", "data", "object"];

/// Decodes one ChirpStack event; `source` is its MQTT topic (or `""`).
pub fn decode(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    source: &str,
    payload: &[u8],
    received_ns: i64,
) -> PresetOutput {
    whole(uplink(measurement, static_tags, source, payload, received_ns).map(|r| vec![r]))
}

/// The event type a ChirpStack topic names (`application/…/device/…/event/up` → `up`).
fn topic_event(source: &str) -> Option<&str> {
    let i = source.rfind("/event/")?;
    Some(&source[i + "/event/".len()..])
}

fn uplink(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    source: &str,
    payload: &[u8],
    received_ns: i64,
) -> Result<ioc_model::Reading, PresetError> {
    if let Some(event) = topic_event(source).filter(|e| *e != "up") {
        return Err(PresetError::NotAnUplink(event.to_owned()));
    }
    let msg = object(payload)?;
    if let Some((_, event)) = OTHER_EVENT_KEYS.iter().find(|(k, _)| msg.contains_key(*k)) {
        return Err(PresetError::NotAnUplink((*event).to_owned()));
    }
    if !UPLINK_KEYS.iter().any(|k| msg.contains_key(*k)) {
        let event = if msg.contains_key("devAddr") {
            "join"
        } else {
            "unknown"
        };
        return Err(PresetError::NotAnUplink(event.to_owned()));
    }
    let info = msg
        .get("deviceInfo")
        .and_then(Value::as_object)
        .ok_or(PresetError::Missing("deviceInfo"))?;
    let device = Device {
        dev_eui: text(info, "devEui"),
        device_name: text(info, "deviceName")
            .ok_or(PresetError::Missing("deviceInfo.deviceName"))?,
        application: text(info, "applicationName")
            .ok_or(PresetError::Missing("deviceInfo.applicationName"))?,
    };
    let meta = UplinkMeta {
        gateway: best_gateway(msg.get("rxInfo")),
        f_cnt: frame_number(&msg, "fCnt")?,
        f_port: frame_number(&msg, "fPort")?,
        timestamp_ns: event_time(&msg, received_ns)?,
    };
    lorawan_reading(measurement, static_tags, device, msg.get("object"), meta)
}

fn event_time(msg: &Map<String, Value>, received_ns: i64) -> Result<i64, PresetError> {
    let first_gateway = msg
        .get("rxInfo")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_object);
    let chosen = text(msg, "time")
        .or_else(|| first_gateway.and_then(|g| text(g, "gwTime")))
        .or_else(|| first_gateway.and_then(|g| text(g, "nsTime")));
    match chosen {
        Some(t) => time_text_to_ns(t).ok_or_else(|| PresetError::BadTime(t.to_owned())),
        None => Ok(received_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::testing::{f, reading, s};
    use ioc_model::FieldValue;

    const UP_OBJECT: &str = include_str!("../../tests/fixtures/presets/chirpstack_up_object.json");
    const UP_DOCS: &str = include_str!("../../tests/fixtures/presets/chirpstack_up_docs.json");
    const STATUS: &str = include_str!("../../tests/fixtures/presets/chirpstack_status_docs.json");
    const JOIN: &str = include_str!("../../tests/fixtures/presets/chirpstack_join_docs.json");
    const TOPIC: &str =
        "application/0d1f6c2a-0000-4000-8000-000000000002/device/a84041000181c0de/event/up";

    fn no_tags() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn uplink_with_object_maps_exactly() {
        let (readings, errors) = decode("lorawan", &no_tags(), TOPIC, UP_OBJECT.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            readings,
            vec![reading(
                "lorawan",
                &[
                    ("application", "Mappers"),
                    ("dev_eui", "a84041000181c0de"),
                    ("device_name", "tracker-1"),
                ],
                &[
                    ("accuracy", f(4.2)),
                    ("altitude", f(35.0)),
                    ("batV", f(3.9)),
                    ("f_cnt", FieldValue::Int(42)),
                    ("f_port", FieldValue::Int(2)),
                    ("fixFailed", FieldValue::Bool(false)),
                    ("headingDeg", f(90.0)),
                    ("inTrip", FieldValue::Bool(true)),
                    ("latitude", f(51.5072)),
                    ("longitude", f(-0.1276)),
                    ("rssi", f(-95.0)),
                    ("snr", f(7.5)),
                    ("speedKmph", f(12.0)),
                    ("type", s("position")),
                ],
                1_791_564_230_700_000_000,
            )]
        );
    }

    #[test]
    fn nested_objects_are_flattened_and_the_gateway_time_is_a_fallback() {
        let nested = UP_OBJECT
            .replace(
                r#""type": "position""#,
                r#""env": {"temp": 21.5, "probe": {"ok": true}}, "vals": [1, 2]"#,
            )
            .replace(r#""time": "2026-10-09T16:43:50.700+00:00","#, "");
        let (readings, errors) = decode("lorawan", &no_tags(), "", nested.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        let r = &readings[0];
        assert_eq!(r.fields["env_temp"], f(21.5));
        assert_eq!(r.fields["env_probe_ok"], FieldValue::Bool(true));
        assert_eq!(r.fields["vals_1"], f(2.0));
        assert_eq!(r.timestamp_ns, 1_791_564_230_712_000_000, "gwTime");
    }

    #[test]
    fn uplink_without_object_is_refused() {
        let (readings, errors) = decode("lorawan", &no_tags(), "", UP_DOCS.as_bytes(), 5);
        assert!(readings.is_empty());
        assert_eq!(errors[0].label(), "no_decoded_payload");
    }

    #[test]
    fn other_events_are_not_uplinks() {
        let join_topic = TOPIC.replace("/event/up", "/event/join");
        for (topic, payload, event) in [
            ("", STATUS, "status"),
            ("", JOIN, "join"),
            (join_topic.as_str(), UP_OBJECT, "join"),
        ] {
            let (readings, errors) = decode("lorawan", &no_tags(), topic, payload.as_bytes(), 5);
            assert!(readings.is_empty());
            assert_eq!(errors, vec![PresetError::NotAnUplink(event.into())]);
            assert_eq!(errors[0].label(), "not_an_uplink");
        }
    }

    #[test]
    fn malformed_uplinks_have_labels() {
        let no_name = UP_OBJECT.replace(r#""deviceName": "tracker-1","#, "");
        let bad_time = UP_OBJECT.replace("2026-10-09T16:43:50.700+00:00", "now");
        let bad_fcnt = UP_OBJECT.replace(r#""fCnt": 42"#, r#""fCnt": -1"#);
        let reserved = UP_OBJECT.replace(r#""type": "position""#, r#""time": 3"#);
        for (payload, label) in [
            (no_name.as_str(), "missing_key"),
            (bad_time.as_str(), "bad_timestamp"),
            (bad_fcnt.as_str(), "missing_key"),
            (reserved.as_str(), "reserved_key"),
            ("{\"fPort\": ", "not_json"),
            ("42", "not_an_object"),
        ] {
            let (readings, errors) = decode("lorawan", &no_tags(), TOPIC, payload.as_bytes(), 5);
            assert!(readings.is_empty(), "{payload}");
            assert_eq!(errors[0].label(), label, "{payload}");
        }
    }
}
