//! One payload, whatever its `format`: the dispatch every message-carrying input shares.
//!
//! An MQTT message and an HTTP webhook body are the same thing to the gateway: bytes in a
//! configured format, with a source (the topic, for MQTT) that may carry tags. Each input builds
//! one [`PayloadDecoder`] from its config and calls [`PayloadDecoder::decode`] per message, so a
//! format added here is usable on every input at once.

use std::collections::BTreeMap;

use ioc_model::{Reading, ReadingBuf};
use serde::Deserialize;

use crate::csv::{Csv, CsvConfig};
use crate::json::{self, JsonMapping, TimestampUnit};
use crate::mapping::{Mapping, MappingConfig};
use crate::presets::{self, PresetOutput};
use crate::{camera, line_protocol};

/// How a payload is turned into readings (`format` on an input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A flat or nested JSON object of fields (the default), or, with a `mapping`, JSON read
    /// as the mapping says ([`crate::mapping`]).
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
    /// Comma-separated rows, one reading per row ([`crate::csv`]).
    Csv,
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
            PayloadFormat::Json | PayloadFormat::Influx | PayloadFormat::Csv => "",
        }
    }

    /// Whether the config must name a measurement for this format.
    pub fn needs_measurement(self) -> bool {
        matches!(self, PayloadFormat::Json | PayloadFormat::Csv)
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
    /// Adds a rejection for part of the payload (the rest is kept).
    pub fn reject(&mut self, label: &'static str, reason: impl ToString) {
        self.rejected.push(Rejection {
            label,
            reason: reason.to_string(),
        });
    }

    pub(crate) fn refused(label: &'static str, reason: impl ToString) -> Self {
        Decoded {
            readings: Vec::new(),
            rejected: vec![Rejection {
                label,
                reason: reason.to_string(),
            }],
        }
    }
}

/// A payload config that cannot be used: the key (relative to the input's section, such as
/// `mapping.fields.speed.path` or `csv.timezone`) and what is wrong, for `check-config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SpecError {
    pub key: String,
    pub message: String,
}

impl SpecError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error with its key under `prefix` (`time_format` → `mapping.time_format`).
    pub fn under(self, prefix: &str) -> Self {
        SpecError {
            key: format!("{prefix}.{}", self.key),
            message: self.message,
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
    /// For `json`: read the payload as this mapping says instead of flattening it.
    pub mapping: Option<MappingConfig>,
    /// For `csv`: how the rows are read (a header row and `,` without one).
    pub csv: Option<CsvConfig>,
}

impl PayloadSpec {
    /// Checks the spec as an input's config section would: a measurement where the format needs
    /// one (unless the mapping names or reads its own), and everything [`PayloadDecoder::new`]
    /// compiles (mapping paths, time layouts, zones, csv columns). The key is relative to the
    /// input's section.
    pub fn check(&self) -> Result<(), SpecError> {
        let mapping_names_it = self
            .mapping
            .as_ref()
            .is_some_and(|m| m.measurement.is_some() || m.measurement_path.is_some());
        match &self.measurement {
            None if self.format.needs_measurement() && !mapping_names_it => {
                return Err(SpecError::new(
                    "measurement",
                    format!(
                        "format {:?} needs a measurement name",
                        format!("{:?}", self.format).to_lowercase()
                    ),
                ))
            }
            Some(name) if name.trim().is_empty() => {
                return Err(SpecError::new("measurement", "must not be empty"))
            }
            _ => {}
        }
        PayloadDecoder::new(self).map(|_| ())
    }
}

/// Turns one input's payloads into readings; built once per input.
#[derive(Debug, Clone)]
pub struct PayloadDecoder {
    format: PayloadFormat,
    json: JsonMapping,
    /// Timestamp unit of line protocol payloads, in ns.
    line_unit_ns: i64,
    /// `json` with a `mapping`.
    mapping: Option<Mapping>,
    /// `csv`.
    csv: Option<Csv>,
}

impl PayloadDecoder {
    /// Compiles an input's payload config; the error's key is relative to the input's section
    /// (`mapping.fields.speed.path`, `csv.timezone`).
    pub fn new(spec: &PayloadSpec) -> Result<Self, SpecError> {
        let measurement = spec
            .measurement
            .clone()
            .unwrap_or_else(|| spec.format.default_measurement().to_owned());
        let mapping = match (&spec.mapping, spec.format) {
            (None, _) => None,
            (Some(m), PayloadFormat::Json) => {
                for (key, set) in [
                    ("timestamp_field", spec.timestamp_field.is_some()),
                    ("timestamp_unit", spec.timestamp_unit.is_some()),
                    ("tag_keys", !spec.tag_keys.is_empty()),
                ] {
                    if set {
                        return Err(SpecError::new(
                            key,
                            "is not used with a mapping: say it in the mapping (time, time_format, tags)",
                        ));
                    }
                }
                Some(
                    Mapping::compile(m, spec.measurement.as_deref())
                        .map_err(|e| e.under("mapping"))?,
                )
            }
            (Some(_), _) => {
                return Err(SpecError::new(
                    "mapping",
                    "a mapping is only used with format = \"json\"",
                ))
            }
        };
        let csv = match (&spec.csv, spec.format) {
            (c, PayloadFormat::Csv) => {
                let Some(measurement) =
                    spec.measurement.as_deref().filter(|m| !m.trim().is_empty())
                else {
                    return Err(SpecError::new(
                        "measurement",
                        "format \"csv\" needs a measurement name",
                    ));
                };
                let cfg = c.clone().unwrap_or_default();
                Some(Csv::compile(&cfg, measurement).map_err(|e| e.under("csv"))?)
            }
            (None, _) => None,
            (Some(_), _) => {
                return Err(SpecError::new(
                    "csv",
                    "a csv section is only used with format = \"csv\"",
                ))
            }
        };
        Ok(PayloadDecoder {
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
            mapping,
            csv,
        })
    }

    pub fn format(&self) -> PayloadFormat {
        self.format
    }

    /// The measurement readings get unless the payload names its own.
    pub fn measurement(&self) -> &str {
        &self.json.measurement
    }

    /// [`PayloadDecoder::decode`] into `buf`, a reading reused from message to message, where
    /// the payload allows it: the plain `json` format (no mapping) and a payload of one object
    /// (see [`json::decode_one_into`]). The reading in `buf` (on `Some(Ok)`) or the refusal is
    /// what `decode` would give; `None`: call `decode`.
    pub fn decode_into(
        &self,
        source: &str,
        payload: &[u8],
        received_ns: i64,
        buf: &mut ReadingBuf,
    ) -> Option<Result<(), Rejection>> {
        if self.format != PayloadFormat::Json || self.mapping.is_some() {
            return None;
        }
        let decoded = json::decode_one_into(&self.json, source, payload, received_ns, buf)?;
        Some(decoded.map_err(|e| Rejection {
            label: e.label(),
            reason: e.to_string(),
        }))
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
        if let Some(mapping) = &self.mapping {
            return mapping.decode(&tags, payload, received_ns);
        }
        match self.format {
            PayloadFormat::Csv => match &self.csv {
                Some(csv) => csv.decode(&tags, payload, received_ns),
                None => Decoded::refused("no_csv_config", "format csv without its config"),
            },
            PayloadFormat::Json => {
                match json::decode_owning_tags(&self.json, tags, payload, received_ns) {
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
        let d = PayloadDecoder::new(&spec(PayloadFormat::Json)).unwrap();
        let out = d.decode("city/d1/s7", br#"{"pm25": 12.5}"#, 1_000);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_eq!(out.readings.len(), 1);
        assert_eq!(out.readings[0].tags["district"], "d1");
        assert_eq!(out.readings[0].tags["sensor_id"], "s7");
    }

    #[test]
    fn decode_into_takes_plain_json_objects_only() {
        let d = PayloadDecoder::new(&spec(PayloadFormat::Json)).unwrap();
        let mut buf = ReadingBuf::default();
        let payload = br#"{"pm25": 12.5, "site": "x"}"#;
        assert_eq!(
            d.decode_into("city/d1/s7", payload, 1_000, &mut buf),
            Some(Ok(()))
        );
        assert_eq!(
            vec![buf.to_reading()],
            d.decode("city/d1/s7", payload, 1_000).readings
        );
        let refused = d.decode_into("city/d1/s7", br#"{"pm25": "#, 1_000, &mut buf);
        assert_eq!(
            refused.map(|r| r.map_err(|e| e.label)),
            Some(Err("not_json"))
        );
        assert_eq!(
            d.decode_into("city/d1/s7", br#"[{"pm25": 1}]"#, 1_000, &mut buf),
            None
        );
        let csv = PayloadDecoder::new(&PayloadSpec {
            topic_tags: None,
            ..spec(PayloadFormat::Csv)
        })
        .unwrap();
        assert_eq!(csv.decode_into("", b"pm25\n1\n", 4, &mut buf), None);
    }

    #[test]
    fn a_short_topic_is_refused_with_its_label() {
        let d = PayloadDecoder::new(&spec(PayloadFormat::Json)).unwrap();
        let out = d.decode("city", br#"{"pm25": 12.5}"#, 1_000);
        assert!(out.readings.is_empty());
        assert_eq!(out.rejected[0].label, "topic_mismatch");
    }

    #[test]
    fn camera_formats_default_to_camera_event() {
        let mut s = spec(PayloadFormat::Lpr);
        s.measurement = None;
        assert_eq!(
            PayloadDecoder::new(&s).unwrap().measurement(),
            "camera_event"
        );
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
            })
            .unwrap();
            let out = d.decode(source, &fixture(file), 5);
            assert!(out.rejected.is_empty(), "{format:?}: {:?}", out.rejected);
            assert_eq!(out.readings.len(), 1, "{format:?}");
            assert_eq!(out.readings[0].measurement, measurement);
            assert_eq!(out.readings[0].tags["city"], "dx");
        }
        let d = PayloadDecoder::new(&PayloadSpec {
            format: PayloadFormat::ChirpStack,
            ..PayloadSpec::default()
        })
        .unwrap();
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
        let d = PayloadDecoder::new(&s).unwrap();
        let out = d.decode("", b"m v=1 1000\nnot line protocol\n", 5);
        assert_eq!(out.readings.len(), 1);
        assert_eq!(out.rejected.len(), 1);
    }

    #[test]
    fn json_with_a_mapping_uses_it_and_keeps_topic_tags() {
        let mut s = spec(PayloadFormat::Json);
        s.mapping = Some(MappingConfig {
            records: Some("/data".into()),
            fields: [(
                "speed".to_string(),
                crate::mapping::FieldConfig::Path("/v".into()),
            )]
            .into(),
            ..MappingConfig::default()
        });
        let d = PayloadDecoder::new(&s).unwrap();
        let out = d.decode("city/d1/s7", br#"{"data": [{"v": "12.5"}, {"v": "x"}]}"#, 9);
        assert_eq!(out.readings.len(), 1);
        let r = &out.readings[0];
        assert_eq!((r.measurement.as_str(), r.timestamp_ns), ("env", 9));
        assert_eq!(r.tags["district"], "d1");
        assert_eq!(r.fields["speed"], ioc_model::FieldValue::Float(12.5));
        assert_eq!(out.rejected[0].label, "not_a_number");
    }

    #[test]
    fn csv_is_a_format_and_needs_a_measurement() {
        let mut s = spec(PayloadFormat::Csv);
        s.topic_tags = None;
        let d = PayloadDecoder::new(&s).unwrap();
        let out = d.decode("", b"pm25,pm10\n12,30\n", 4);
        assert_eq!(out.readings.len(), 1);
        assert_eq!(
            out.readings[0].fields["pm10"],
            ioc_model::FieldValue::Float(30.0)
        );
        s.measurement = None;
        assert_eq!(PayloadDecoder::new(&s).unwrap_err().key, "measurement");
        let f: PayloadFormat = serde_json::from_str("\"csv\"").unwrap();
        assert_eq!(f, PayloadFormat::Csv);
    }

    #[test]
    fn spec_errors_name_the_key_under_the_input() {
        let mut s = spec(PayloadFormat::Json);
        s.mapping = Some(MappingConfig {
            fields: [(
                "speed".to_string(),
                crate::mapping::FieldConfig::Path("/v".into()),
            )]
            .into(),
            time: Some("/t".into()),
            time_format: Some("%d/%m/%Y %H:%M".into()),
            timezone: Some("Asia/Nowhere".into()),
            ..MappingConfig::default()
        });
        assert_eq!(PayloadDecoder::new(&s).unwrap_err().key, "mapping.timezone");
        s.timestamp_field = Some("ts".into());
        assert_eq!(PayloadDecoder::new(&s).unwrap_err().key, "timestamp_field");
        let mut c = spec(PayloadFormat::Csv);
        c.csv = Some(CsvConfig {
            separator: "ab".into(),
            ..CsvConfig::default()
        });
        assert_eq!(PayloadDecoder::new(&c).unwrap_err().key, "csv.separator");
        let mut wrong = spec(PayloadFormat::Influx);
        wrong.csv = Some(CsvConfig::default());
        assert_eq!(PayloadDecoder::new(&wrong).unwrap_err().key, "csv");
        wrong.csv = None;
        wrong.mapping = Some(MappingConfig::default());
        assert_eq!(PayloadDecoder::new(&wrong).unwrap_err().key, "mapping");
    }
}
