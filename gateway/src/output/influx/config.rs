//! The `[output.influxdb]` section (or one `[[outputs.influxdb]]` entry): which store, which API
//! and credentials, how batches are sized and timed, which measurements it takes, how it
//! behaves in front of a store a fleet shares (`Retry-After` bound, jitter, drain spread,
//! adaptive concurrency, uplink budget), with the checks the output makes on its own section.

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
    /// The longest `Retry-After` (of a 429 or 503) obeyed; a larger one is cut to this.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after_s: u64,
    /// Random `[0, flush_jitter_ms)` added to every retry delay.
    #[serde(default = "default_flush_jitter")]
    pub flush_jitter_ms: u64,
    /// After an outage the backlog starts after an offset in `[0, drain_spread_ms)` from a hash
    /// of `[gateway] id`; 0 turns it off.
    #[serde(default = "default_drain_spread")]
    pub drain_spread_ms: u64,
    /// The most write requests in flight while draining (adaptive from 1 up to this).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Uplink rate limit for normal data, compressed bytes per second; unset: none.
    pub max_bytes_per_s: Option<u64>,
    /// Megabytes (10⁶ bytes, compressed) normal data may send per UTC day; unset: no budget.
    pub daily_budget_mb: Option<u64>,
}

/// `flush_jitter_ms` when unset: half a second spreads a fleet's retries (and a `Retry-After`
/// every box was told) over 500 ms, and delays an urgent event after an outage by 250 ms on
/// average, well inside the 1 s an operations centre expects.
pub const DEFAULT_FLUSH_JITTER_MS: u64 = 500;
/// `drain_spread_ms` when unset: 500 gateways start their backlogs over 10 s (one every
/// 20 ms) instead of in one instant; the delay only holds normal backlog, never urgent data.
pub const DEFAULT_DRAIN_SPREAD_MS: u64 = 10_000;
/// `max_in_flight` when unset.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 4;
/// `max_retry_after_s` when unset.
pub const DEFAULT_MAX_RETRY_AFTER_S: u64 = 60;

/// Upper bounds of the keys above (a larger value is a typo, refused with an error).
const MAX_MAX_RETRY_AFTER_S: u64 = 3600;
const MAX_FLUSH_JITTER_MS: u64 = 60_000;
const MAX_DRAIN_SPREAD_MS: u64 = 3_600_000;
const MAX_MAX_IN_FLIGHT: u32 = 64;
/// Below this a rate limit could not carry one small batch a second.
const MIN_MAX_BYTES_PER_S: u64 = 1000;

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
fn default_max_retry_after() -> u64 {
    DEFAULT_MAX_RETRY_AFTER_S
}
fn default_flush_jitter() -> u64 {
    DEFAULT_FLUSH_JITTER_MS
}
fn default_drain_spread() -> u64 {
    DEFAULT_DRAIN_SPREAD_MS
}
fn default_max_in_flight() -> u32 {
    DEFAULT_MAX_IN_FLIGHT
}

impl InfluxConfig {
    /// Puts the good-citizen keys of this section, and the gateway's id, into the sink's
    /// settings (`app::sink_config` calls it with `[gateway] id`).
    pub fn apply_citizen_settings(&self, sink: &mut super::InfluxSinkConfig, gateway_id: &str) {
        use std::time::Duration;
        sink.gateway_id = gateway_id.to_owned();
        sink.max_retry_after = Duration::from_secs(self.max_retry_after_s.max(1));
        sink.flush_jitter = Duration::from_millis(self.flush_jitter_ms);
        sink.drain_spread = Duration::from_millis(self.drain_spread_ms);
        sink.max_in_flight = usize::try_from(self.max_in_flight.max(1)).unwrap_or(1);
        sink.max_bytes_per_s = self.max_bytes_per_s;
        sink.daily_budget_bytes = self.daily_budget_mb.map(|mb| mb.saturating_mul(1_000_000));
    }
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
        if !(1..=MAX_MAX_RETRY_AFTER_S).contains(&self.max_retry_after_s) {
            return bad(
                "max_retry_after_s",
                format!(
                    "must be 1 to {MAX_MAX_RETRY_AFTER_S} s (the longest Retry-After obeyed), got {}",
                    self.max_retry_after_s
                ),
            );
        }
        if self.flush_jitter_ms > MAX_FLUSH_JITTER_MS {
            return bad(
                "flush_jitter_ms",
                format!(
                    "must be at most {MAX_FLUSH_JITTER_MS} ms (0 turns it off), got {}",
                    self.flush_jitter_ms
                ),
            );
        }
        if self.drain_spread_ms > MAX_DRAIN_SPREAD_MS {
            return bad(
                "drain_spread_ms",
                format!(
                    "must be at most {MAX_DRAIN_SPREAD_MS} ms (one hour; 0 turns it off), got {}",
                    self.drain_spread_ms
                ),
            );
        }
        if !(1..=MAX_MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return bad(
                "max_in_flight",
                format!(
                    "must be 1 to {MAX_MAX_IN_FLIGHT}, got {}",
                    self.max_in_flight
                ),
            );
        }
        if let Some(rate) = self.max_bytes_per_s {
            if rate < MIN_MAX_BYTES_PER_S {
                return bad(
                    "max_bytes_per_s",
                    format!(
                        "must be at least {MIN_MAX_BYTES_PER_S} (compressed bytes per second); \
                         leave it out for no limit, got {rate}"
                    ),
                );
            }
        }
        if self.daily_budget_mb == Some(0) {
            return bad(
                "daily_budget_mb",
                "must be at least 1 (MB per UTC day); leave it out for no budget".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: &str) -> InfluxConfig {
        toml::from_str(&format!(
            "url = \"http://127.0.0.1:8428\"\nbucket = \"b\"\n{extra}"
        ))
        .unwrap()
    }

    fn error(extra: &str) -> (String, String) {
        section(extra).validate().unwrap_err()
    }

    #[test]
    fn good_citizen_defaults() {
        let c = section("");
        c.validate().unwrap();
        assert_eq!(c.max_retry_after_s, 60);
        assert_eq!(c.flush_jitter_ms, DEFAULT_FLUSH_JITTER_MS);
        assert_eq!(c.drain_spread_ms, DEFAULT_DRAIN_SPREAD_MS);
        assert_eq!(c.max_in_flight, 4);
        assert_eq!((c.max_bytes_per_s, c.daily_budget_mb), (None, None));
        let mut sink =
            super::super::InfluxSinkConfig::new("http://x", super::super::Api::V2, "/tmp");
        section("max_bytes_per_s = 20000\ndaily_budget_mb = 50\nflush_jitter_ms = 0")
            .apply_citizen_settings(&mut sink, "gw-7");
        assert_eq!(sink.gateway_id, "gw-7");
        assert_eq!(sink.max_bytes_per_s, Some(20_000));
        assert_eq!(sink.daily_budget_bytes, Some(50_000_000));
        assert_eq!(sink.flush_jitter, std::time::Duration::ZERO);
        assert_eq!(sink.max_in_flight, 4);
    }

    #[test]
    fn each_good_citizen_key_is_checked() {
        for (extra, key, says) in [
            (
                "max_retry_after_s = 0",
                "max_retry_after_s",
                "must be 1 to 3600 s",
            ),
            (
                "max_retry_after_s = 86400",
                "max_retry_after_s",
                "got 86400",
            ),
            (
                "flush_jitter_ms = 600000",
                "flush_jitter_ms",
                "at most 60000 ms",
            ),
            (
                "drain_spread_ms = 4000000",
                "drain_spread_ms",
                "at most 3600000 ms",
            ),
            (
                "max_in_flight = 0",
                "max_in_flight",
                "must be 1 to 64, got 0",
            ),
            ("max_in_flight = 65", "max_in_flight", "got 65"),
            (
                "max_bytes_per_s = 0",
                "max_bytes_per_s",
                "leave it out for no limit",
            ),
            ("max_bytes_per_s = 999", "max_bytes_per_s", "at least 1000"),
            (
                "daily_budget_mb = 0",
                "daily_budget_mb",
                "leave it out for no budget",
            ),
        ] {
            let (k, message) = error(extra);
            assert_eq!(k, key, "{extra}");
            assert!(message.contains(says), "{extra}: {message}");
        }
        for ok in [
            "max_retry_after_s = 3600",
            "flush_jitter_ms = 0",
            "drain_spread_ms = 0",
            "max_in_flight = 64",
            "max_bytes_per_s = 1000",
            "daily_budget_mb = 1",
        ] {
            section(ok).validate().unwrap();
        }
        assert!(toml::from_str::<InfluxConfig>("url = \"http://x\"\nmax_in_flight = -1").is_err());
    }
}
