//! Configuration: TOML types and validation with file, line and key in every error.
//!
//! A field technician edits one file on a roadside box; a wrong key must say exactly where it
//! is. Parsing goes through `serde` with `deny_unknown_fields`, and the semantic checks run
//! after it; both kinds of error are located by [`locate`] (line and dotted key path, e.g.
//! `inputs.mqtt[0].qos`). Secrets never live in this file: the config names an environment
//! variable or a file, and [`Secret`] never prints its value.

mod env_subst;
mod locate;
pub mod preflight;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::secret::{resolve_secret, Secret, SecretError};
pub use locate::locate;

// Each component's section lives beside the component; the file's whole shape is here.
pub use crate::http::config::HttpSection;
pub use crate::input::http::config::HttpInputConfig;
pub use crate::input::mqtt::config::{
    parse_mqtt_url, AggregateConfig, MqttAddress, MqttInputConfig, PayloadFormat, PriorityConfig,
    RawReadings,
};
pub use crate::input::serial::config::{SerialInputConfig, SerialProtocol};
pub use crate::output::influx::config::{InfluxApi, InfluxConfig};
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
    /// One store: `[output.influxdb]`, the output named `default`.
    pub output: Option<OutputConfig>,
    /// Several stores: `[[outputs.influxdb]]`, each with a `name` (either this or `output`).
    #[serde(default)]
    pub outputs: OutputsConfig,
    #[serde(default)]
    pub buffer: BufferSection,
    #[serde(default)]
    pub http: HttpSection,
    /// Limits against hostile or broken input (see `crate::limits`).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// The clock for readings stamped on receipt (see `crate::clock`).
    #[serde(default)]
    pub clock: crate::clock::ClockSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Added as the `gateway=<id>` tag to every reading.
    pub id: String,
    /// The buffer and the dead-letter file live here.
    pub data_dir: PathBuf,
    /// Every this many seconds the gateway writes its own health as one reading of measurement
    /// `ioc_gateway` through the buffer and outputs (see `crate::fleet_health`); 0 turns it off.
    #[serde(default = "default_health_interval_s")]
    pub health_interval_s: u64,
    /// Threads of the async runtime that carries inputs, decoding, the forwarder and the HTTP
    /// API (the buffer's disk writes have a thread of their own either way). One is the
    /// default: on a two-core box a second worker mostly hands tasks back and forth between
    /// the cores, which cost a third of the gateway's CPU at a full MQTT burst
    /// (`tests/bench/spine_bench.py`, README "Performance"), and one worker decodes well over
    /// 100,000 messages a second. Only a restart changes it.
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
}

fn default_health_interval_s() -> u64 {
    60
}

fn default_worker_threads() -> usize {
    1
}

/// Most runtime workers a config may ask for.
pub const WORKER_THREADS_MAX: usize = 64;

impl GatewayConfig {
    /// Checks the id; the error's key is relative to `[gateway]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.id.trim().is_empty() {
            return Err(("id".into(), "must not be empty".into()));
        }
        if self.id.chars().any(|c| c.is_control() || c == '\\') {
            return Err((
                "id".into(),
                "must not contain control characters or backslashes".into(),
            ));
        }
        if !(1..=WORKER_THREADS_MAX).contains(&self.worker_threads) {
            return Err((
                "worker_threads".into(),
                format!(
                    "must be 1 to {WORKER_THREADS_MAX} (got {})",
                    self.worker_threads
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsConfig {
    #[serde(default)]
    pub mqtt: Vec<MqttInputConfig>,
    #[serde(default)]
    pub serial: Vec<SerialInputConfig>,
    /// Webhook inputs (`[[inputs.http]]`).
    #[serde(default)]
    pub http: Vec<HttpInputConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub influxdb: InfluxConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    #[serde(default)]
    pub influxdb: Vec<InfluxConfig>,
}

/// The name of the output `[output.influxdb]` configures; also the buffer's cursor name of a
/// single-output gateway, so a gateway moving to `[[outputs.influxdb]]` keeps its cursor by
/// naming one of them `default`.
pub const DEFAULT_OUTPUT: &str = crate::buffer::DEFAULT_CONSUMER;

/// One configured output: its name, where its section is in the file, its settings.
#[derive(Debug, Clone)]
pub struct OutputEntry<'a> {
    pub name: &'a str,
    /// The dotted key of its section (`output.influxdb` or `outputs.influxdb[1]`).
    pub key: String,
    pub influx: &'a InfluxConfig,
}

impl Config {
    /// Every output, in file order, with its name and section key.
    pub fn outputs(&self) -> Vec<OutputEntry<'_>> {
        if let Some(o) = &self.output {
            return vec![OutputEntry {
                name: o.influxdb.name.as_deref().unwrap_or(DEFAULT_OUTPUT),
                key: "output.influxdb".into(),
                influx: &o.influxdb,
            }];
        }
        self.outputs
            .influxdb
            .iter()
            .enumerate()
            .map(|(i, o)| OutputEntry {
                name: o.name.as_deref().unwrap_or(""),
                key: format!("outputs.influxdb[{i}]"),
                influx: o,
            })
            .collect()
    }

    /// The line protocol dialect every output can read: InfluxDB 1.x's as soon as one output
    /// is a 1.x store (the buffer holds one encoding for all of them).
    pub fn flavor(&self) -> crate::model::Flavor {
        if self.outputs().iter().any(|o| o.influx.api == InfluxApi::V1) {
            crate::model::Flavor::V1
        } else {
            crate::model::Flavor::V2
        }
    }

    fn validate_outputs(&self) -> Result<(), (String, String)> {
        match (&self.output, self.outputs.influxdb.is_empty()) {
            (None, true) => {
                return Err((
                    "output".into(),
                    "missing: add [output.influxdb] (one store) or [[outputs.influxdb]] entries \
                     (several stores, each with a name)"
                        .into(),
                ))
            }
            (Some(_), false) => {
                return Err((
                    "outputs".into(),
                    "set [output.influxdb] or [[outputs.influxdb]], not both (name the single \
                     output `default` in [[outputs.influxdb]] to keep its place in the buffer)"
                        .into(),
                ))
            }
            _ => {}
        }
        let entries = self.outputs();
        for (i, o) in entries.iter().enumerate() {
            o.influx
                .validate()
                .map_err(|(key, message)| (format!("{}.{key}", o.key), message))?;
            if self.output.is_some() {
                continue;
            }
            let name_key = format!("{}.name", o.key);
            if o.influx.name.is_none() {
                return Err((
                    name_key,
                    "missing: every [[outputs.influxdb]] needs a name (it keeps the output's \
                     place in the buffer and labels its metrics)"
                        .into(),
                ));
            }
            if !crate::buffer::valid_consumer_name(o.name) {
                return Err((
                    name_key,
                    format!("{:?} must be 1 to 64 of A-Z a-z 0-9 _ -", o.name),
                ));
            }
            if entries[..i].iter().any(|e| e.name == o.name) {
                return Err((name_key, format!("{:?} is used by two outputs", o.name)));
            }
        }
        Ok(())
    }
}

/// At most this many outputs (each one holds data on the box's disk and uplink).
pub const MAX_OUTPUTS: usize = 16;

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

impl BufferSection {
    /// Checks the bounds; the error's key is relative to `[buffer]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_disk_mb == 0 {
            return Err(("max_disk_mb".into(), "must be above 0".into()));
        }
        Ok(())
    }
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

    /// [`Config::load`], and the problems [`preflight::check`] finds (what `run` would fail on),
    /// each located at its line like a config error.
    pub fn load_and_preflight(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let (config, text) = Self::parse_substituted(path, &raw, env_subst::from_env)?;
        let problems = preflight::check(&config)
            .into_iter()
            .map(|p| located_quoting_raw(path, &text, &raw, p.key, p.message))
            .collect();
        Ok((config, problems))
    }

    /// Parses and validates config text; `path` is only used in error messages. `${VAR}` and
    /// `${VAR:-default}` are replaced from the environment first (see [`env_subst`]).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(path, text, env_subst::from_env)
    }

    /// [`Config::parse`] with variables looked up by `lookup` instead of the environment.
    pub fn parse_with_env(
        path: &Path,
        raw: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::parse_substituted(path, raw, lookup).map(|(config, _)| config)
    }

    /// Parses and validates `raw` after substitution; also returns the substituted text, in
    /// which later checks (preflight) locate their keys.
    fn parse_substituted(
        path: &Path,
        raw: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, String), ConfigError> {
        let text = env_subst::substitute(raw, lookup).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            line: e.line,
            key: None,
            message: e.message,
            snippet: raw_line(raw, e.line),
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            quote_raw_line(
                raw,
                ConfigError::at(path, &text, e.span(), None, e.message().trim().to_owned()),
            )
        })?;
        config
            .validate()
            .map_err(|(key, message)| located_quoting_raw(path, &text, raw, key, message))?;
        Ok((config, text))
    }

    /// Semantic checks serde cannot express, one component after the other, each checking
    /// itself. Returns the dotted key and the problem.
    fn validate(&self) -> Result<(), (String, String)> {
        fn under(prefix: String) -> impl Fn((String, String)) -> (String, String) {
            move |(key, message)| (format!("{prefix}.{key}"), message)
        }
        self.gateway.validate().map_err(under("gateway".into()))?;
        for (i, m) in self.inputs.mqtt.iter().enumerate() {
            m.validate().map_err(under(format!("inputs.mqtt[{i}]")))?;
        }
        for (i, s) in self.inputs.serial.iter().enumerate() {
            s.validate().map_err(under(format!("inputs.serial[{i}]")))?;
        }
        for (i, h) in self.inputs.http.iter().enumerate() {
            h.validate().map_err(under(format!("inputs.http[{i}]")))?;
        }
        crate::input::http::config::validate_shared_listeners(&self.inputs.http)
            .map_err(|(key, message)| (format!("inputs.http{key}"), message))?;
        if self.outputs.influxdb.len() > MAX_OUTPUTS {
            return Err((
                format!("outputs.influxdb[{MAX_OUTPUTS}]"),
                format!("at most {MAX_OUTPUTS} outputs"),
            ));
        }
        self.validate_outputs()?;
        self.http.validate().map_err(under("http".into()))?;
        self.buffer.validate().map_err(under("buffer".into()))?;
        self.limits.validate()?;
        self.clock.validate().map_err(under("clock".into()))?;
        Ok(())
    }
}

/// Errors are located in the substituted text (same lines as the file) but quote the file's
/// own line, so a substituted secret is never printed.
fn quote_raw_line(raw: &str, mut e: ConfigError) -> ConfigError {
    if let ConfigError::Invalid { line, snippet, .. } = &mut e {
        *snippet = raw_line(raw, *line);
    }
    e
}

/// A problem with `key`, located in the substituted `text`, quoting the `raw` file's line.
fn located_quoting_raw(
    path: &Path,
    text: &str,
    raw: &str,
    key: String,
    message: String,
) -> ConfigError {
    quote_raw_line(raw, ConfigError::at(path, text, None, Some(key), message))
}

/// Line `line` (1-based) of `text`, trimmed, as error messages quote it.
fn raw_line(text: &str, line: usize) -> Option<String> {
    text.lines()
        .nth(line.checked_sub(1)?)
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests;
