//! The `[output.influxdb]` section (or one `[[outputs.influxdb]]` entry): which store, which API
//! and credentials, how batches are sized and timed, which measurements it takes, with the
//! checks the output makes on its own section.

use std::path::PathBuf;

use serde::Deserialize;

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
    /// The output's name: its cursor over the buffer, its label in metrics and status. Required
    /// in `[[outputs.influxdb]]`; `[output.influxdb]` is the output `default`.
    pub name: Option<String>,
    /// Only these measurements go to this output (exact names, or a prefix ending in `*`);
    /// empty: every measurement.
    #[serde(default)]
    pub include: Vec<String>,
    /// These measurements never go to this output (same forms); applied after `include`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The store's base URL; or `urls`, several of them in order of preference.
    #[serde(default)]
    pub url: String,
    /// Several base URLs of one store (e.g. `vmagent` instances in front of it): a request that
    /// fails on one is sent to the next; a failing one rests (see `output::influx::failover`).
    #[serde(default)]
    pub urls: Vec<String>,
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
    /// CA(s) trusted besides the system's trust store (PEM).
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: a client certificate chain and its key (PEM), presented when the store asks.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default = "default_batch_max_lines")]
    pub batch_max_lines: u32,
    #[serde(default = "default_flush_interval")]
    pub flush_interval_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

impl InfluxConfig {
    /// Every base URL, in order of preference (`url` alone, or `urls`).
    pub fn endpoints(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }
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

impl InfluxConfig {
    /// Checks the store's section; the error's key is relative to `[output.influxdb]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_owned(), msg));
        let (key, urls) = match (self.url.is_empty(), self.urls.is_empty()) {
            (false, true) => ("url", vec![self.url.clone()]),
            (true, false) => ("urls", self.urls.clone()),
            (true, true) => return bad("url", "missing: set url (or urls = [...])".into()),
            (false, false) => {
                return bad(
                    "urls",
                    "set either url or urls, not both (urls lists every URL, in order)".into(),
                )
            }
        };
        for url in &urls {
            match url.split_once("://").map(|(scheme, _)| scheme) {
                Some("http") | Some("https") => {}
                _ => {
                    return bad(
                        key,
                        format!("must be an http:// or https:// URL, got {url:?}"),
                    )
                }
            }
        }
        let scheme = |u: &String| u.split_once("://").map(|(s, _)| s.to_owned());
        if urls.iter().any(|u| scheme(u) != scheme(&urls[0])) {
            return bad(
                "urls",
                "every URL of one output must use the same scheme (http or https)".into(),
            );
        }
        for (i, u) in urls.iter().enumerate() {
            if urls[..i].contains(u) {
                return bad("urls", format!("{u:?} is listed twice"));
            }
        }
        match self.api {
            InfluxApi::V2 => {
                if self.bucket.as_deref().is_none_or(str::is_empty) {
                    return bad("bucket", "api = \"v2\" needs a bucket".into());
                }
            }
            InfluxApi::V1 => {
                if self.database.as_deref().is_none_or(str::is_empty) {
                    return bad("database", "api = \"v1\" needs a database".into());
                }
            }
        }
        if self.token_env.is_some() && self.token_file.is_some() {
            return bad("token_env", "set token_env or token_file, not both".into());
        }
        if self.batch_max_lines == 0 {
            return bad("batch_max_lines", "must be above 0".into());
        }
        for (key, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            if let Err(e) = crate::output::filter::MeasurementFilter::check_patterns(patterns) {
                return bad(key, e);
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return bad(
                "client_cert_file",
                "client_cert_file and client_key_file go together".into(),
            );
        }
        Ok(())
    }
}
