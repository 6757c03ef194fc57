//! The `[[inputs.http]]` section: where the webhook listens, how its bodies decode, who may post,
//! with the checks each input makes on its own section and the one check across inputs (two
//! inputs on one `listen` address must agree on TLS and differ in `path`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ioc_decode::json::TimestampUnit;
use serde::Deserialize;

use crate::input::mqtt::config::{PayloadFormat, PriorityConfig};

/// Default `max_body_bytes`: 1 MiB (a Plate Recognizer webhook with its image is ~100-500 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Largest `max_body_bytes` accepted: 16 MiB.
pub const MAX_BODY_BYTES_LIMIT: usize = 16 << 20;
/// Default `max_concurrent_requests` of a listen address.
pub const DEFAULT_MAX_CONCURRENT: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpInputConfig {
    /// A name for logs and metrics; defaults to `http<index>`.
    pub name: Option<String>,
    /// `host:port` to listen on, e.g. `"0.0.0.0:8181"`. Several inputs may share one address
    /// with different `path`s.
    pub listen: String,
    /// The URL path webhooks are posted to, e.g. `"/webhook/lpr"`.
    pub path: String,
    #[serde(default)]
    pub format: PayloadFormat,
    /// Required for `format = "json"` (unless its mapping names one) and `csv`; the format's
    /// default otherwise (`camera_event` for plate and camera formats, `lorawan`).
    pub measurement: Option<String>,
    pub timestamp_field: Option<String>,
    /// `ms` by default (`ns` for `format = "influx"`).
    pub timestamp_unit: Option<TimestampUnit>,
    #[serde(default)]
    pub tag_keys: Vec<String>,
    /// Extra static tags added to every reading of this input.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `[inputs.http.mapping]`: for `format = "json"`, which parts of the body become the
    /// measurement, tags, fields and time (see `ioc_decode::mapping`).
    pub mapping: Option<ioc_decode::mapping::MappingConfig>,
    /// `[inputs.http.csv]`: columns of a `format = "csv"` body (see `ioc_decode::csv`).
    pub csv: Option<ioc_decode::csv::CsvConfig>,
    /// `urgent` readings are forwarded before `normal` ones.
    #[serde(default)]
    pub priority: PriorityConfig,
    /// The token senders must present (`Authorization: Bearer <token>` or `?token=<token>`),
    /// from this environment variable or file. Neither: no token is asked for.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Largest body accepted, in bytes, before and after gzip decompression; larger: `413`.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests handled at once on this input's `listen` address (others wait: backpressure).
    /// Inputs sharing an address share the smallest value given.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// HTTPS: certificate chain and private key (PEM). Both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_concurrent() -> usize {
    DEFAULT_MAX_CONCURRENT
}

impl HttpInputConfig {
    /// What this input's config says about its payloads (no topic: `topic_tags` is none).
    pub fn payload_spec(&self) -> ioc_decode::payload::PayloadSpec {
        ioc_decode::payload::PayloadSpec {
            format: self.format,
            measurement: self.measurement.clone(),
            topic_tags: None,
            timestamp_field: self.timestamp_field.clone(),
            timestamp_unit: self.timestamp_unit,
            tag_keys: self.tag_keys.clone(),
            tags: self.tags.clone(),
            mapping: self.mapping.clone(),
            csv: self.csv.clone(),
        }
    }

    /// The input's name: `name`, else `http<index>`.
    pub fn name_or(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("http{index}"))
    }

    /// Whether this input serves HTTPS.
    pub fn tls(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Checks this input's section; the error's key is relative to `[[inputs.http]]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_owned(), msg));
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            return bad(
                "listen",
                format!(
                    "{:?} is not an address to listen on ({e}): expected host:port, e.g. \"0.0.0.0:8181\"",
                    self.listen
                ),
            );
        }
        if !self.path.starts_with('/')
            || self.path.contains(['?', '#', ' '])
            || self.path.chars().any(char::is_control)
        {
            return bad(
                "path",
                format!(
                    "{:?} is not a URL path: it starts with '/' and has no '?', '#', spaces or control characters",
                    self.path
                ),
            );
        }
        if let Some(name) = &self.name {
            if name.trim().is_empty() {
                return bad("name", "must not be empty".into());
            }
        }
        // The payload config (measurement, mapping paths, time layouts, zones, csv columns),
        // compiled as the input will, so check-config names a mistake by its key.
        if let Err(e) = self.payload_spec().check() {
            return bad(&e.key, e.message);
        }
        if self.token_env.is_some() && self.token_file.is_some() {
            return bad("token_env", "set token_env or token_file, not both".into());
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return bad(
                "max_body_bytes",
                format!(
                    "must be 1..={MAX_BODY_BYTES_LIMIT} bytes, got {}",
                    self.max_body_bytes
                ),
            );
        }
        if self.max_concurrent_requests == 0 || self.max_concurrent_requests > 1024 {
            return bad(
                "max_concurrent_requests",
                format!("must be 1..=1024, got {}", self.max_concurrent_requests),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad(
                "cert_file",
                "cert_file and key_file go together (HTTPS needs both)".into(),
            );
        }
        Ok(())
    }
}

/// Checks the HTTP inputs against each other: on one `listen` address, paths differ and TLS
/// settings are the same (one socket serves them all). The error's key is relative to
/// `inputs.http` (`[3].path`).
pub fn validate_shared_listeners(inputs: &[HttpInputConfig]) -> Result<(), (String, String)> {
    for (i, a) in inputs.iter().enumerate() {
        let Ok(addr_a) = a.listen.parse::<SocketAddr>() else {
            continue;
        };
        for (j, b) in inputs.iter().enumerate().take(i) {
            if b.listen.parse::<SocketAddr>().ok() != Some(addr_a) {
                continue;
            }
            if a.path == b.path {
                return Err((
                    format!("[{i}].path"),
                    format!(
                        "inputs.http[{j}] already serves {:?} on {}: give each input on one address its own path",
                        a.path, a.listen
                    ),
                ));
            }
            if a.cert_file != b.cert_file || a.key_file != b.key_file {
                return Err((
                    format!("[{i}].cert_file"),
                    format!(
                        "inputs.http[{j}] listens on {} too with other TLS settings: inputs sharing an address share cert_file and key_file",
                        a.listen
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(listen: &str, path: &str) -> HttpInputConfig {
        toml::from_str(&format!(
            "listen = {listen:?}\npath = {path:?}\nmeasurement = \"m\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let c = input("0.0.0.0:8181", "/webhook/lpr");
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn bad_keys_are_named() {
        let key = |c: HttpInputConfig| c.validate().unwrap_err().0;
        assert_eq!(key(input("8181", "/x")), "listen");
        assert_eq!(key(input("0.0.0.0:8181", "webhook")), "path");
        assert_eq!(key(input("0.0.0.0:8181", "/a?b")), "path");
        let mut c = input("0.0.0.0:8181", "/x");
        c.max_body_bytes = 0;
        assert_eq!(key(c), "max_body_bytes");
        let mut c = input("0.0.0.0:8181", "/x");
        c.cert_file = Some("c.pem".into());
        assert_eq!(key(c), "cert_file");
        let mut c = input("0.0.0.0:8181", "/x");
        c.measurement = None;
        assert_eq!(key(c), "measurement");
    }

    #[test]
    fn inputs_share_an_address_with_their_own_paths() {
        let ok = [input("0.0.0.0:8181", "/a"), input("0.0.0.0:8181", "/b")];
        assert_eq!(validate_shared_listeners(&ok), Ok(()));
        let same = [input("0.0.0.0:8181", "/a"), input("0.0.0.0:8181", "/a")];
        assert_eq!(validate_shared_listeners(&same).unwrap_err().0, "[1].path");
        let mut tls = input("0.0.0.0:8181", "/b");
        tls.cert_file = Some("c.pem".into());
        tls.key_file = Some("k.pem".into());
        let mixed = [input("0.0.0.0:8181", "/a"), tls];
        assert_eq!(
            validate_shared_listeners(&mixed).unwrap_err().0,
            "[1].cert_file"
        );
    }
}
