//! One payload, whatever its `format`: the dispatch every message-carrying input shares.
//!
//! An MQTT message and an HTTP webhook body are the same thing to the gateway: bytes in a
//! configured format, with a source (the topic, for MQTT) that may carry tags. Each input builds
//! one [`PayloadDecoder`] from its config and calls [`PayloadDecoder::decode`] per message, so a
//! format added here is usable on every input at once.

use std::collections::BTreeMap;

use ioc_model::Reading;
use serde::Deserialize;

use crate::json::{self, JsonMapping, TimestampUnit};
use crate::presets::{self, PresetOutput};
use crate::{camera, line_protocol};

/// How a payload is turned into readings (`format` on an input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A flat or nested JSON object of fields (the default).
    #[default]
    Json,
    /// Frigate NVR `frigate/events` messages (new/update/end with before/after).
    Frigate,
    /// Plate-recognition payloads (`plate`, `confidence`, `camera`, `time`).
    Lpr,
    /// InfluxDB line protocol, one reading per line.
    Influx,
    /// Plate Recognizer Stream/Snapshot webhooks and Snapshot API responses
    /// ([`presets::platerecognizer`]).
    PlateRecognizer,
    /// OpenALPR `alpr_results` and `alpr_group` ([`presets::openalpr`]).
    OpenAlpr,
    /// ChirpStack v4 JSON uplink events ([`presets::chirpstack`]).
    ChirpStack,
    /// The Things Stack v3 uplink messages ([`presets::ttn`]).
    Ttn,
}

impl PayloadFormat {
    /// The measurement readings get when the config names none (`""`: the format needs one or
    /// names its own).
    pub fn default_measurement(self) -> &'static str {
        match self {
            PayloadFormat::Frigate
            | PayloadFormat::Lpr
            | PayloadFormat::PlateRecognizer
            | PayloadFormat::OpenAlpr => "camera_event",
            PayloadFormat::ChirpStack | PayloadFormat::Ttn => presets::LORAWAN_MEASUREMENT,
            PayloadFormat::Json | PayloadFormat::Influx => "",
        }
    }

    /// Whether the config must name a measurement for this format.
    pub fn needs_measurement(self) -> bool {
        matches!(self, PayloadFormat::Json)
    }
}

/// A message refused in whole or in part: a stable label for metrics and a reason for logs and
/// for the sender (an HTTP `400` body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub label: &'static str,
    pub reason: String,
}

/// What one payload gave: its readings, and what in it was refused.
#[derive(Debug, Default)]
pub struct Decoded {
    pub readings: Vec<Reading>,
    pub rejected: Vec<Rejection>,
}

impl Decoded {
    fn refused(label: &'static str, reason: impl ToString) -> Self {
        Decoded {
            readings: Vec::new(),
            rejected: vec![Rejection {
                label,
                reason: reason.to_string(),
            }],
        }
    }
}

/// What an input's config says about its payloads.
#[derive(Debug, Clone, Default)]
pub struct PayloadSpec {
    pub format: PayloadFormat,
    /// The configured measurement, if any.
    pub measurement: Option<String>,
    /// Telegraf-style topic pattern (`_/district/_/sensor_id`); empty for inputs without topics.
    pub topic_tags: Option<String>,
    pub timestamp_field: Option<String>,
    /// `ms` by default (`ns` for line protocol).
    pub timestamp_unit: Option<TimestampUnit>,
    pub tag_keys: Vec<String>,
    /// Static tags added to every reading.
    pub tags: BTreeMap<String, String>,
}

/// Turns one input's payloads into readings; built once per input.
#[derive(Debug, Clone)]
pub struct PayloadDecoder {
    format: PayloadFormat,
    json: JsonMapping,
    /// Timestamp unit of line protocol payloads, in ns.
    line_unit_ns: i64,
}

impl PayloadDecoder {
    pub fn new(spec: &PayloadSpec) -> Self {
        let measurement = spec
            .measurement
            .clone()
            .unwrap_or_else(|| spec.format.default_measurement().to_owned());
        PayloadDecoder {
            format: spec.format,
            json: JsonMapping {
                measurement,
                topic_tags: json::parse_topic_tags(spec.topic_tags.as_deref().unwrap_or("")),
                timestamp_field: spec.timestamp_field.clone(),
                timestamp_unit: spec.timestamp_unit.unwrap_or_default(),
                tag_keys: spec.tag_keys.clone(),
                static_tags: spec.tags.clone(),
            },
            line_unit_ns: spec.timestamp_unit.unwrap_or(TimestampUnit::Ns).nanos(),
        }
    }

    pub fn format(&self) -> PayloadFormat {
        self.format
    }

    /// The measurement readings get unless the payload names its own.
    pub fn measurement(&self) -> &str {
        &self.json.measurement
    }

    /// Decodes one payload. `source` is the MQTT topic (tags from its levels), or `""` where
    /// there is none; `received_ns` is the time of readings without their own.
    pub fn decode(&self, source: &str, payload: &[u8], received_ns: i64) -> Decoded {
        let tags = match json::topic_and_static_tags(&self.json, source) {
            Ok(t) => t,
            Err(e) => return Decoded::refused(e.label(), e),
        };
        let one = |r: Result<Reading, camera::CameraError>| match r {
            Ok(r) => Decoded {
                readings: vec![r],
                rejected: Vec::new(),
            },
            Err(e) => Decoded::refused(e.label(), e),
        };
        let preset = |(readings, errors): PresetOutput| Decoded {
            readings,
            rejected: errors
                .into_iter()
                .map(|e| Rejection {
                    label: e.label(),
                    reason: e.to_string(),
                })
                .collect(),
        };
        let m = &self.json.measurement;
        match self.format {
            PayloadFormat::Json => {
                match json::decode_with_tags(&self.json, &tags, payload, received_ns) {
                    Ok(readings) => Decoded {
                        readings,
                        rejected: Vec::new(),
                    },
                    Err(e) => Decoded::refused(e.label(), e),
                }
            }
            PayloadFormat::Frigate => one(camera::decode_frigate(
                &self.json.measurement,
                &tags,
                payload,
            )),
            PayloadFormat::Lpr => one(camera::decode_lpr(
                &self.json.measurement,
                &tags,
                payload,
                received_ns,
            )),
            PayloadFormat::Influx => {
                let (readings, errors) =
                    line_protocol::decode(&tags, payload, self.line_unit_ns, received_ns);
                Decoded {
                    readings,
                    rejected: errors
                        .into_iter()
                        .map(|e| Rejection {
                            label: e.label(),
                            reason: e.to_string(),
                        })
                        .collect(),
                }
            }
            PayloadFormat::PlateRecognizer => preset(presets::platerecognizer::decode(
                m,
                &tags,
                payload,
                received_ns,
            )),
            PayloadFormat::OpenAlpr => {
                preset(presets::openalpr::decode(m, &tags, payload, received_ns))
            }
            PayloadFormat::ChirpStack => preset(presets::chirpstack::decode(
                m,
                &tags,
                source,
                payload,
                received_ns,
            )),
            PayloadFormat::Ttn => preset(presets::ttn::decode(m, &tags, payload, received_ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: PayloadFormat) -> PayloadSpec {
        PayloadSpec {
            format,
            measurement: Some("env".into()),
            topic_tags: Some("_/district/sensor_id".into()),
            ..PayloadSpec::default()
        }
    }

    #[test]
    fn json_takes_tags_from_the_topic() {
        let d = PayloadDecoder::new(&spec(PayloadFormat::Json));
        let out = d.decode("city/d1/s7", br#"{"pm25": 12.5}"#, 1_000);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_eq!(out.readings.len(), 1);
        assert_eq!(out.readings[0].tags["district"], "d1");
        assert_eq!(out.readings[0].tags["sensor_id"], "s7");
    }

    #[test]
    fn a_short_topic_is_refused_with_its_label() {
        let d = PayloadDecoder::new(&spec(PayloadFormat::Json));
        let out = d.decode("city", br#"{"pm25": 12.5}"#, 1_000);
        assert!(out.readings.is_empty());
        assert_eq!(out.rejected[0].label, "topic_mismatch");
    }

    #[test]
    fn camera_formats_default_to_camera_event() {
        let mut s = spec(PayloadFormat::Lpr);
        s.measurement = None;
        assert_eq!(PayloadDecoder::new(&s).measurement(), "camera_event");
    }

    #[test]
    fn presets_are_dispatched_with_their_default_measurements() {
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/presets/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        for (format, file, source, measurement) in [
            (
                PayloadFormat::PlateRecognizer,
                "platerecognizer_stream_webhook.json",
                "",
                "camera_event",
            ),
            (
                PayloadFormat::OpenAlpr,
                "openalpr_alprd_group.json",
                "",
                "camera_event",
            ),
            (
                PayloadFormat::ChirpStack,
                "chirpstack_up_object.json",
                "application/a/device/a84041000181c0de/event/up",
                "lorawan",
            ),
            (
                PayloadFormat::Ttn,
                "ttn_uplink_docs.json",
                "v3/app1@ttn/devices/dev1/up",
                "lorawan",
            ),
        ] {
            let d = PayloadDecoder::new(&PayloadSpec {
                format,
                tags: BTreeMap::from([("city".to_owned(), "dx".to_owned())]),
                ..PayloadSpec::default()
            });
            let out = d.decode(source, &fixture(file), 5);
            assert!(out.rejected.is_empty(), "{format:?}: {:?}", out.rejected);
            assert_eq!(out.readings.len(), 1, "{format:?}");
            assert_eq!(out.readings[0].measurement, measurement);
            assert_eq!(out.readings[0].tags["city"], "dx");
        }
        let d = PayloadDecoder::new(&PayloadSpec {
            format: PayloadFormat::ChirpStack,
            ..PayloadSpec::default()
        });
        let out = d.decode("application/a/device/b/event/status", b"{}", 5);
        assert_eq!(out.rejected[0].label, "not_an_uplink");
    }

    #[test]
    fn preset_names_in_config() {
        #[derive(Deserialize)]
        struct F {
            format: PayloadFormat,
        }
        for (name, format) in [
            ("platerecognizer", PayloadFormat::PlateRecognizer),
            ("openalpr", PayloadFormat::OpenAlpr),
            ("chirpstack", PayloadFormat::ChirpStack),
            ("ttn", PayloadFormat::Ttn),
        ] {
            let f: F = serde_json::from_str(&format!(r#"{{"format":"{name}"}}"#)).unwrap();
            assert_eq!(f.format, format);
        }
    }

    #[test]
    fn line_protocol_keeps_good_lines_and_labels_bad_ones() {
        let mut s = spec(PayloadFormat::Influx);
        s.topic_tags = None;
        let d = PayloadDecoder::new(&s);
        let out = d.decode("", b"m v=1 1000\nnot line protocol\n", 5);
        assert_eq!(out.readings.len(), 1);
        assert_eq!(out.rejected.len(), 1);
    }
}
