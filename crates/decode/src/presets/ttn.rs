//! The Things Stack v3 / The Things Network (`format = "ttn"`): uplink messages, one reading
//! each.
//!
//! Why it exists: TTN and The Things Stack are the LoRaWAN network servers cities use when they
//! do not host their own; the MQTT server publishes uplinks on
//! `v3/<application id>@<tenant>/devices/<device id>/up` and webhooks post the same JSON (an
//! `ApplicationUp`).
//!
//! Mapping (measurement `lorawan` unless configured; the same reading shape as
//! [`super::chirpstack`]):
//! - tags `dev_eui` = `end_device_ids.dev_eui` (lower case, where sent), `device_name` =
//!   `end_device_ids.device_id`, `application` = `end_device_ids.application_ids.application_id`;
//! - fields: `uplink_message.decoded_payload` (the payload formatter's output) flattened like
//!   the `json` format; `rssi` and `snr` of the best gateway in `uplink_message.rx_metadata`
//!   (highest RSSI, ties by SNR); `f_cnt`, `f_port` (absent means 0: The Things Stack omits
//!   zero values);
//! - time: `uplink_message.received_at` (when the Network Server received the uplink; gateway
//!   clocks without GPS are not trusted), else the message's `received_at`, else the time of
//!   receipt.
//!
//! Refused: an uplink without `decoded_payload` as `no_decoded_payload`; any other message
//! (`join_accept`, `downlink_ack`, `downlink_failed`, `location_solved`, …) as
//! `not_an_uplink`, told apart by its member, so the topic is not needed.
//!
//! Example (`crates/decode/tests/fixtures/presets/ttn_uplink_docs.json`, shortened):
//!
//! ```text
//! {"end_device_ids": {"device_id": "dev1", "application_ids": {"application_id": "app1"},
//!                     "dev_eui": "0004A30B001C0530", ...},
//!  "received_at": "2020-02-12T15:15:46.014773143Z",
//!  "uplink_message": {"f_cnt": 1, "decoded_payload": {"temperature": 1.0, "luminosity": 0.64},
//!                     "rx_metadata": [{"rssi": -35, "snr": 5, ...}],
//!                     "received_at": "2020-02-12T15:15:45.789585559Z", ...}}
//! ```
//! gives
//! ```text
//! lorawan,application=app1,dev_eui=0004a30b001c0530,device_name=dev1
//!   f_cnt=1i,f_port=0i,luminosity=0.64,rssi=-35,snr=5,temperature=1 1581520545789585559
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    best_gateway, frame_number, lorawan_reading, object, text, time_text_to_ns, whole, Device,
    PresetError, PresetOutput, UplinkMeta,
};

/// The members that name the other messages The Things Stack sends an application.
const OTHER_MESSAGES: [&str; 11] = [
    "join_accept",
    "downlink_ack",
    "downlink_nack",
    "downlink_sent",
    "downlink_failed",
    "downlink_queued",
    "downlink_queue_invalidated",
    "location_solved",
    "service_data",
    "uplink_normalized",
    "downlink_queue_operation_error",
];

/// Decodes one The Things Stack message.
pub fn decode(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    payload: &[u8],
    received_ns: i64,
) -> PresetOutput {
    whole(uplink(measurement, static_tags, payload, received_ns).map(|r| vec![r]))
}

fn uplink(
    measurement: &str,
    static_tags: &BTreeMap<String, String>,
    payload: &[u8],
    received_ns: i64,
) -> Result<ioc_model::Reading, PresetError> {
    let msg = object(payload)?;
    let up = match msg.get("uplink_message") {
        Some(Value::Object(up)) => up,
        Some(_) => return Err(PresetError::Missing("uplink_message")),
        None => {
            let kind = OTHER_MESSAGES
                .iter()
                .find(|k| msg.contains_key(**k))
                .copied()
                .unwrap_or("unknown");
            return Err(PresetError::NotAnUplink(kind.to_owned()));
        }
    };
    let ids = msg
        .get("end_device_ids")
        .and_then(Value::as_object)
        .ok_or(PresetError::Missing("end_device_ids"))?;
    let application = ids
        .get("application_ids")
        .and_then(Value::as_object)
        .and_then(|a| text(a, "application_id"))
        .ok_or(PresetError::Missing(
            "end_device_ids.application_ids.application_id",
        ))?;
    let device = Device {
        dev_eui: text(ids, "dev_eui"),
        device_name: text(ids, "device_id")
            .ok_or(PresetError::Missing("end_device_ids.device_id"))?,
        application,
    };
    let meta = UplinkMeta {
        gateway: best_gateway(up.get("rx_metadata")),
        f_cnt: frame_number(up, "f_cnt")?,
        f_port: frame_number(up, "f_port")?,
        timestamp_ns: uplink_time(&msg, up, received_ns)?,
    };
    lorawan_reading(
        measurement,
        static_tags,
        device,
        up.get("decoded_payload"),
        meta,
    )
}

fn uplink_time(
    msg: &Map<String, Value>,
    up: &Map<String, Value>,
    received_ns: i64,
) -> Result<i64, PresetError> {
    match text(up, "received_at").or_else(|| text(msg, "received_at")) {
        Some(t) => time_text_to_ns(t).ok_or_else(|| PresetError::BadTime(t.to_owned())),
        None => Ok(received_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::testing::{f, reading, s};
    use ioc_model::FieldValue;

    const UP_DOCS: &str = include_str!("../../tests/fixtures/presets/ttn_uplink_docs.json");
    const UP_RS26X: &str = include_str!("../../tests/fixtures/presets/ttn_uplink_rs26x.json");
    const JOIN: &str = include_str!("../../tests/fixtures/presets/ttn_join_accept_docs.json");

    fn no_tags() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn documented_uplink_maps_exactly() {
        let (readings, errors) = decode("lorawan", &no_tags(), UP_DOCS.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            readings,
            vec![reading(
                "lorawan",
                &[
                    ("application", "app1"),
                    ("dev_eui", "0004a30b001c0530"),
                    ("device_name", "dev1"),
                ],
                &[
                    ("f_cnt", FieldValue::Int(1)),
                    ("f_port", FieldValue::Int(0)),
                    ("luminosity", f(0.64)),
                    ("rssi", f(-35.0)),
                    ("snr", f(5.0)),
                    ("temperature", f(1.0)),
                ],
                1_581_520_545_789_585_559,
            )]
        );
    }

    #[test]
    fn nested_decoded_payload_is_flattened() {
        let (readings, errors) = decode("lorawan", &no_tags(), UP_RS26X.as_bytes(), 5);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            readings,
            vec![reading(
                "lorawan",
                &[
                    ("application", "thingsboard-ttn-demo"),
                    ("dev_eui", "0025ca00000017c2"),
                    ("device_name", "rs261-erik-internal"),
                ],
                &[
                    ("Battery Status", s("Good")),
                    ("Device Status_Backlog Wraparound", s("No")),
                    ("Device Status_Backlogs Available", s("Yes")),
                    ("Device Status_Bandwidth Limitation", s("No")),
                    ("Device Status_Sensor Fault", s("No")),
                    ("Device Status_Unsupported API Version", s("No")),
                    ("Temperature", f(21.83)),
                    ("f_cnt", FieldValue::Int(25)),
                    ("f_port", FieldValue::Int(1)),
                    ("rssi", f(-69.0)),
                    ("snr", f(8.25)),
                ],
                1_762_505_534_536_109_379,
            )]
        );
    }

    #[test]
    fn best_of_several_gateways() {
        let two = UP_DOCS.replace(
            r#""rx_metadata" : [ {"#,
            r#""rx_metadata" : [ {"gateway_ids": {"gateway_id": "far"}, "rssi": -118, "snr": -7.5}, {"#,
        );
        let (readings, _) = decode("lorawan", &no_tags(), two.as_bytes(), 5);
        assert_eq!(readings[0].fields["rssi"], f(-35.0));
        assert_eq!(readings[0].fields["snr"], f(5.0));
    }

    #[test]
    fn refusals_have_labels() {
        let no_decoded = UP_DOCS.replace(r#""decoded_payload" : {"#, r#""other" : {"#);
        let no_device = UP_DOCS.replace(r#""device_id" : "dev1","#, "");
        let bad_time = UP_DOCS.replace("2020-02-12T15:15:45.789585559Z", "later");
        for (payload, label) in [
            (no_decoded.as_str(), "no_decoded_payload"),
            (JOIN, "not_an_uplink"),
            (no_device.as_str(), "missing_key"),
            (bad_time.as_str(), "bad_timestamp"),
            ("{", "not_json"),
            ("null", "not_an_object"),
        ] {
            let (readings, errors) = decode("lorawan", &no_tags(), payload.as_bytes(), 5);
            assert!(readings.is_empty(), "{payload}");
            assert_eq!(errors[0].label(), label, "{payload}");
        }
        let (_, errors) = decode("lorawan", &no_tags(), JOIN.as_bytes(), 5);
        assert_eq!(errors, vec![PresetError::NotAnUplink("join_accept".into())]);
    }
}
