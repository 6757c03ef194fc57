//! The `[[inputs.mqtt]]` section: broker, topics, payload format and what the input does with
//! the readings (priority, aggregation), with the checks each input makes on its own section.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ioc_decode::csv::CsvConfig;
use ioc_decode::json::TimestampUnit;
use ioc_decode::mapping::MappingConfig;
use serde::Deserialize;

pub use ioc_decode::payload::PayloadFormat;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttInputConfig {
    /// A name for logs and metrics; defaults to `mqtt<index>`.
    pub name: Option<String>,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub client_id: String,
    pub topics: Vec<String>,
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Required for `format = "json"` (unless its `mapping` names one) and `csv`;
    /// `camera_event` by default for `frigate` and `lpr`; unused for `influx` (each line names
    /// its own).
    pub measurement: Option<String>,
    /// Telegraf-style topic parsing: `_/district/_/sensor_id`, `_` skips a level.
    pub topic_tags: Option<String>,
    pub timestamp_field: Option<String>,
    /// `ms` by default (`ns` for `format = "influx"`).
    pub timestamp_unit: Option<TimestampUnit>,
    #[serde(default)]
    pub tag_keys: Vec<String>,
    #[serde(default)]
    pub format: PayloadFormat,
    /// Extra static tags added to every reading of this input.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `[inputs.mqtt.mapping]`: for `format = "json"`, which parts of the payload become the
    /// measurement, tags, fields and time (see `ioc_decode::mapping`).
    pub mapping: Option<MappingConfig>,
    /// `[inputs.mqtt.csv]`: for `format = "csv"`, how the rows are read (see `ioc_decode::csv`).
    pub csv: Option<CsvConfig>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Largest payload accepted, in bytes; larger messages are rejected and counted.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// `urgent` readings are forwarded before `normal` ones.
    #[serde(default)]
    pub priority: PriorityConfig,
    /// For `mqtts://`: the CA that signed the broker's certificate (PEM). Without it, the
    /// system's roots are used.
    pub ca_file: Option<PathBuf>,
    /// For mutual TLS: client certificate and key (PEM).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Forward per-window statistics instead of every raw reading.
    pub aggregate: Option<AggregateConfig>,
}

/// Edge aggregation of an input (see `aggregate.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Window length in seconds (windows are aligned to the epoch).
    pub window_s: u64,
    /// How long after a window's end late readings still count.
    #[serde(default = "default_grace")]
    pub grace_s: u64,
    /// What happens to the raw readings: `drop`, or `local` (kept as line protocol under
    /// `<data_dir>/raw/<input>.lp`, rotated, never forwarded).
    #[serde(default)]
    pub raw: RawReadings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawReadings {
    #[default]
    Drop,
    Local,
}

fn default_grace() -> u64 {
    5
}

/// The forwarding class of an input's readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorityConfig {
    #[default]
    Normal,
    Urgent,
}

impl From<PriorityConfig> for crate::model::Priority {
    fn from(p: PriorityConfig) -> Self {
        match p {
            PriorityConfig::Normal => crate::model::Priority::Normal,
            PriorityConfig::Urgent => crate::model::Priority::Urgent,
        }
    }
}

impl MqttInputConfig {
    /// What this input's config says about its payloads.
    pub fn payload_spec(&self) -> ioc_decode::payload::PayloadSpec {
        ioc_decode::payload::PayloadSpec {
            format: self.format,
            measurement: self.measurement.clone(),
            topic_tags: self.topic_tags.clone(),
            timestamp_field: self.timestamp_field.clone(),
            timestamp_unit: self.timestamp_unit,
            tag_keys: self.tag_keys.clone(),
            tags: self.tags.clone(),
            mapping: self.mapping.clone(),
            csv: self.csv.clone(),
        }
    }

    /// The measurement readings of this input get (formats that name their own ignore it).
    pub fn measurement_name(&self) -> &str {
        self.measurement
            .as_deref()
            .unwrap_or_else(|| self.format.default_measurement())
    }
}

fn default_qos() -> u8 {
    1
}
fn default_max_payload() -> usize {
    256 * 1024
}
fn default_keep_alive() -> u64 {
    30
}

impl MqttInputConfig {
    /// Checks this input's section; the error's key is relative to `[[inputs.mqtt]]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_owned(), msg));
        if let Err(e) = parse_mqtt_url(&self.url) {
            return bad("url", e);
        }
        if self.client_id.trim().is_empty() {
            return bad(
                "client_id",
                "must not be empty: a persistent session needs a stable client id".into(),
            );
        }
        if self.topics.is_empty() {
            return bad("topics", "needs at least one topic filter".into());
        }
        for t in &self.topics {
            if t.is_empty() || t.contains('\0') {
                return bad("topics", format!("invalid topic filter {t:?}"));
            }
        }
        if self.qos > 1 {
            return bad("qos", format!("must be 0 or 1 (got {})", self.qos));
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            return bad(
                "password_env",
                "set password_env or password_file, not both".into(),
            );
        }
        if let Some(a) = &self.aggregate {
            if a.window_s == 0 || a.window_s > 86_400 {
                return bad(
                    "aggregate.window_s",
                    format!("must be 1..=86400 seconds, got {}", a.window_s),
                );
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return bad(
                "client_cert_file",
                "client_cert_file and client_key_file go together".into(),
            );
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 4 << 20 {
            return bad(
                "max_payload_bytes",
                format!("must be 1..=4194304 bytes, got {}", self.max_payload_bytes),
            );
        }
        // The payload config (measurement, mapping paths, time layouts, zones, csv columns) is
        // compiled here once, so a mistake in it is found by check-config with its key.
        self.payload_spec()
            .check()
            .map_err(|e| (e.key, e.message))?;
        Ok(())
    }
}

/// An MQTT broker address from `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAddress {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Parses an MQTT URL; the error is a sentence for the technician.
pub fn parse_mqtt_url(url: &str) -> Result<MqttAddress, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("{url:?} is not a URL: expected mqtt://host:port or mqtts://host:port")
    })?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(format!(
                "unsupported scheme {other:?}: use mqtt:// or mqtts://"
            ))
        }
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("port {p:?} in {url:?} is not a number 1-65535"))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                port,
            )
        }
        _ => (authority.to_owned(), if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(MqttAddress { tls, host, port })
}
