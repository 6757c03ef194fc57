//! Configuration: TOML types and validation with file, line and key in every error.
//!
//! A field technician edits one file on a roadside box; a wrong key must say exactly where it
//! is. Parsing goes through `serde` with `deny_unknown_fields`, and the semantic checks run
//! after it; both kinds of error are located by [`locate`] (line and dotted key path, e.g.
//! `inputs.mqtt[0].qos`). Secrets never live in this file: the config names an environment
//! variable or a file, and [`Secret`] never prints its value.

mod locate;
mod secret;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use locate::locate;
pub use secret::{resolve_secret, Secret, SecretError};

// The decoders' own specs, read from the config as they are.
pub use ioc_decode::json::TimestampUnit;
pub use ioc_decode::modbus::{RegisterSpec as ModbusRegisterConfig, RegisterType, WordOrder};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub inputs: InputsConfig,
    pub output: OutputConfig,
    #[serde(default)]
    pub buffer: BufferSection,
    #[serde(default)]
    pub http: HttpSection,
    /// Limits against hostile or broken input (see `crate::limits`).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
}

/// The gateway's own HTTP server: health, metrics, live page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `127.0.0.1:8080` by default; a wider bind is the operator's explicit choice.
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A bearer token required on every route but `/healthz`, when set.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `/readyz` turns not-ready when the store has not confirmed a batch for this long while
    /// data waits.
    #[serde(default = "default_store_unreachable_s")]
    pub store_unreachable_after_s: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_listen(),
            enabled: true,
            token_env: None,
            token_file: None,
            store_unreachable_after_s: default_store_unreachable_s(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_true() -> bool {
    true
}
fn default_store_unreachable_s() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Added as the `gateway=<id>` tag to every reading.
    pub id: String,
    /// The buffer and the dead-letter file live here.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsConfig {
    #[serde(default)]
    pub mqtt: Vec<MqttInputConfig>,
    #[serde(default)]
    pub serial: Vec<SerialInputConfig>,
}

/// How an MQTT payload is turned into readings.
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
}

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
    /// Required for `format = "json"`; `camera_event` by default for `frigate` and `lpr`;
    /// unused for `influx` (each line names its own).
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
    /// How this input's JSON payloads map to readings.
    pub fn json_mapping(&self) -> ioc_decode::json::JsonMapping {
        ioc_decode::json::JsonMapping {
            measurement: self.measurement_name().to_owned(),
            topic_tags: ioc_decode::json::parse_topic_tags(
                self.topic_tags.as_deref().unwrap_or(""),
            ),
            timestamp_field: self.timestamp_field.clone(),
            timestamp_unit: self.timestamp_unit.unwrap_or_default(),
            tag_keys: self.tag_keys.clone(),
            static_tags: self.tags.clone(),
        }
    }

    /// The measurement readings of this input get (formats that name their own ignore it).
    pub fn measurement_name(&self) -> &str {
        match (&self.measurement, self.format) {
            (Some(m), _) => m,
            (None, PayloadFormat::Frigate | PayloadFormat::Lpr) => "camera_event",
            (None, _) => "",
        }
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

/// A serial port and the protocol spoken on it (read by `input::serial`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialInputConfig {
    pub name: Option<String>,
    pub port: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    pub protocol: SerialProtocol,
    pub sensor_id: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default = "default_poll_interval")]
    pub poll_interval_ms: u64,
    #[serde(default)]
    pub registers: Vec<ModbusRegisterConfig>,
}

fn default_baud() -> u32 {
    9600
}
fn default_poll_interval() -> u64 {
    5000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialProtocol {
    Pms5003,
    /// The PMS5003T variant (temperature and humidity in place of the larger particle counts).
    Pms5003t,
    Sds011,
    ModbusRtu,
    Node,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub influxdb: InfluxConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    V1,
    #[default]
    V2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    pub url: String,
    #[serde(default)]
    pub api: InfluxApi,
    pub org: Option<String>,
    pub bucket: Option<String>,
    /// v1 only.
    pub database: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// v1 basic auth.
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default = "default_batch_max_lines")]
    pub batch_max_lines: u32,
    #[serde(default = "default_flush_interval")]
    pub flush_interval_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_batch_max_lines() -> u32 {
    5000
}
fn default_flush_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSection {
    #[serde(default = "default_max_disk_mb")]
    pub max_disk_mb: u64,
    /// Size of one segment file; default derived from `max_disk_mb`.
    pub segment_mb: Option<u64>,
}

impl Default for BufferSection {
    fn default() -> Self {
        BufferSection {
            max_disk_mb: default_max_disk_mb(),
            segment_mb: None,
        }
    }
}

fn default_max_disk_mb() -> u64 {
    1024
}

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {}{message}{}", key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default(), snippet.as_deref().map(|s| format!("\n    {line} | {s}")).unwrap_or_default())]
    Invalid {
        path: String,
        line: usize,
        key: Option<String>,
        message: String,
        snippet: Option<String>,
    },
}

impl ConfigError {
    fn at(
        path: &Path,
        text: &str,
        span: Option<std::ops::Range<usize>>,
        key: Option<String>,
        message: String,
    ) -> Self {
        let loc = locate(text, span, key.as_deref());
        ConfigError::Invalid {
            path: path.display().to_string(),
            line: loc.line,
            key: key.or(loc.key),
            message,
            snippet: loc.snippet,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            ConfigError::at(path, text, e.span(), None, e.message().trim().to_owned())
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::at(path, text, None, Some(key), message))?;
        Ok(config)
    }

    /// Semantic checks serde cannot express. Returns the dotted key and the problem.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_owned(), msg));
        if self.gateway.id.trim().is_empty() {
            return bad("gateway.id", "must not be empty".into());
        }
        if self.gateway.id.chars().any(|c| c.is_control() || c == '\\') {
            return bad(
                "gateway.id",
                "must not contain control characters or backslashes".into(),
            );
        }
        for (i, m) in self.inputs.mqtt.iter().enumerate() {
            let k = |f: &str| format!("inputs.mqtt[{i}].{f}");
            if let Err(e) = parse_mqtt_url(&m.url) {
                return bad(&k("url"), e);
            }
            if m.client_id.trim().is_empty() {
                return bad(
                    &k("client_id"),
                    "must not be empty: a persistent session needs a stable client id".into(),
                );
            }
            if m.topics.is_empty() {
                return bad(&k("topics"), "needs at least one topic filter".into());
            }
            for t in &m.topics {
                if t.is_empty() || t.contains('\0') {
                    return bad(&k("topics"), format!("invalid topic filter {t:?}"));
                }
            }
            if m.qos > 1 {
                return bad(&k("qos"), format!("must be 0 or 1 (got {})", m.qos));
            }
            match (&m.measurement, m.format) {
                (None, PayloadFormat::Json) => {
                    return bad(
                        &k("measurement"),
                        "format \"json\" needs a measurement name".into(),
                    )
                }
                (Some(name), _) if name.trim().is_empty() => {
                    return bad(&k("measurement"), "must not be empty".into())
                }
                _ => {}
            }
            if m.password_env.is_some() && m.password_file.is_some() {
                return bad(
                    &k("password_env"),
                    "set password_env or password_file, not both".into(),
                );
            }
            if let Some(a) = &m.aggregate {
                if a.window_s == 0 || a.window_s > 86_400 {
                    return bad(
                        &k("aggregate.window_s"),
                        format!("must be 1..=86400 seconds, got {}", a.window_s),
                    );
                }
            }
            if m.client_cert_file.is_some() != m.client_key_file.is_some() {
                return bad(
                    &k("client_cert_file"),
                    "client_cert_file and client_key_file go together".into(),
                );
            }
            if m.max_payload_bytes == 0 || m.max_payload_bytes > 4 << 20 {
                return bad(
                    &k("max_payload_bytes"),
                    format!("must be 1..=4194304 bytes, got {}", m.max_payload_bytes),
                );
            }
        }
        for (i, s) in self.inputs.serial.iter().enumerate() {
            let k = |f: &str| format!("inputs.serial[{i}].{f}");
            if s.baud == 0 {
                return bad(&k("baud"), "must be above 0".into());
            }
            if s.protocol == SerialProtocol::ModbusRtu && s.registers.is_empty() {
                return bad(
                    &k("registers"),
                    "protocol modbus_rtu needs at least one [[inputs.serial.registers]] entry"
                        .into(),
                );
            }
            if s.protocol != SerialProtocol::ModbusRtu && !s.registers.is_empty() {
                return bad(
                    &k("registers"),
                    "registers are only used with protocol = \"modbus_rtu\"".into(),
                );
            }
            for (j, r) in s.registers.iter().enumerate() {
                let rk = |f: &str| format!("inputs.serial[{i}].registers[{j}].{f}");
                if !matches!(r.function, 3 | 4) {
                    return bad(
                        &rk("function"),
                        format!("must be 3 (holding) or 4 (input), got {}", r.function),
                    );
                }
                if r.slave == 0 || r.slave > 247 {
                    return bad(&rk("slave"), format!("must be 1..=247, got {}", r.slave));
                }
                if !r.scale.is_finite() || !r.offset.is_finite() {
                    return bad(
                        &rk("scale"),
                        "scale and offset must be finite numbers".into(),
                    );
                }
                if r.sensor_id.is_none() && s.sensor_id.is_none() {
                    return bad(&rk("sensor_id"), "no sensor_id here nor on the port".into());
                }
            }
        }
        let o = &self.output.influxdb;
        let k = |f: &str| format!("output.influxdb.{f}");
        match url_scheme(&o.url) {
            Some("http") | Some("https") => {}
            _ => {
                return bad(
                    &k("url"),
                    format!("must be an http:// or https:// URL, got {:?}", o.url),
                )
            }
        }
        match o.api {
            InfluxApi::V2 => {
                if o.bucket.as_deref().is_none_or(str::is_empty) {
                    return bad(&k("bucket"), "api = \"v2\" needs a bucket".into());
                }
            }
            InfluxApi::V1 => {
                if o.database.as_deref().is_none_or(str::is_empty) {
                    return bad(&k("database"), "api = \"v1\" needs a database".into());
                }
            }
        }
        if o.token_env.is_some() && o.token_file.is_some() {
            return bad(
                &k("token_env"),
                "set token_env or token_file, not both".into(),
            );
        }
        if o.batch_max_lines == 0 {
            return bad(&k("batch_max_lines"), "must be above 0".into());
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "http.listen",
                format!(
                    "must be an address like 127.0.0.1:8080, got {:?}",
                    self.http.listen
                ),
            );
        }
        if self.buffer.max_disk_mb == 0 {
            return bad("buffer.max_disk_mb", "must be above 0".into());
        }
        self.limits.validate()?;
        Ok(())
    }
}

fn url_scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(s, _)| s)
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

#[cfg(test)]
mod tests;
