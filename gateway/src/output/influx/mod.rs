//! The HTTP writer: sends gzip'd line protocol batches to InfluxDB (v1 or v2 API) or
//! VictoriaMetrics, and owns the delivery policy for every fault a store can show.
//!
//! [`InfluxSink::write`] is one attempt; [`InfluxSink::deliver`] is the policy the pipeline uses:
//!
//! * connection errors, timeouts, 5xx, 408 and 429 are retried with exponential backoff and full
//!   jitter (a 429's or 503's `Retry-After`, seconds or HTTP-date, is honoured instead, bounded
//!   by `max_retry_after_s`: see [`retry_after`]); every retry delay gets `flush_jitter` more
//!   (see [`jitter`]);
//! * 401/403 (bad token) and 404/405 (wrong URL, database or bucket) are configuration faults:
//!   the batch is kept and retried with backoff while an actionable error is logged, because
//!   dead-lettering would throw away every batch until someone fixes the config;
//! * any other 4xx (400, 413, 422, ...) means the batch holds lines the store refuses: the batch
//!   is decompressed, split in halves recursively and re-sent, so the good lines are stored and
//!   each refused line is appended, with the store's error and a UTC timestamp, to
//!   `dead_letter_dir/dead-letter.lp` (a valid line protocol file: the annotations are `#`
//!   comments, so it can be replayed as it is once the cause is fixed).
//!
//! Being a good citizen of a store a fleet shares ([`deliver_batch`](InfluxSink::deliver_batch)
//! knows a batch's priority; urgent data is never held by any of these):
//! * after an outage, normal batches wait this gateway's drain start offset (a hash of its id
//!   in `[0, drain_spread)`, see [`jitter::DrainPacer`]) so a fleet does not drain at once;
//! * every request is measured by [`concurrency::AdaptiveConcurrency`]; its
//!   [`limit`](InfluxSink::concurrency_limit) is how many batches a forwarder may keep in
//!   flight ([`parallel::Deliveries`] does that);
//! * an uplink budget ([`budget::UplinkBudget`]: `max_bytes_per_s`, `daily_budget_mb`) holds
//!   normal batches on a metered link.
//!
//! Re-sending good lines is safe: a reading always encodes to the same series and timestamp, and
//! the stores overwrite a point with the same series and timestamp (InfluxDB) or are queried with
//! deduplication (VictoriaMetrics), so at-least-once delivery creates no extra points.
//!
//! The body handed in may be several gzip members concatenated (the buffer stores compressed
//! records and concatenates them); InfluxDB 1.x and VictoriaMetrics both decode such a stream
//! (tested against the real servers), and the split path reads it with `MultiGzDecoder`.
//!
//! Metrics: `output_write_seconds` (histogram, every attempt), `output_lines_sent_total` (lines
//! in accepted requests), `output_batches_sent_total` (batches [`InfluxSink::deliver`] finished),
//! `output_batches_failed_total{reason}` (failed attempts: `server_error`, `throttled`,
//! `unauthorized`, `misconfigured`, `timeout`, `connection`, `bad_batch`),
//! `output_retries_total`, `output_dead_lettered_lines_total`, `output_bytes_sent_total` and
//! `output_bytes_sent_today` (compressed request bodies), `output_concurrency_limit`,
//! `output_budget_held{reason}` and `output_budget_holds_total{reason}`,
//! `output_retry_after_clamped_total`, `output_failovers_total` and
//! `output_endpoint_active{url}`. Every one carries `output`, the name of the output the sink
//! serves ([`InfluxSinkConfig::output`]), so the figures of several outputs stay apart.
//!
//! Logs: a failure that goes on (store down, a host name that does not resolve, 5xx, a refused
//! token) is logged when it starts or changes kind, then at most once per
//! [`FAILURE_LOG_INTERVAL`] with the number of failed attempts, and the recovery once; a DNS
//! failure is told apart from a store that is down and names `host:port`.
//!
//! Secrets: the token and password are held in [`Secret`], whose `Debug`/`Display` print `***`;
//! the authorization header is marked sensitive, and URLs with credentials in them are refused.

pub mod budget;
pub mod concurrency;
pub mod config;
mod dead_letter;
mod deliver;
pub mod failover;
pub mod jitter;
pub mod parallel;
pub mod retry_after;

use deliver::FailureLog;
pub use deliver::FAILURE_LOG_INTERVAL;

use crate::backoff::{Backoff, Jitter};
use crate::loglimit::LogLimiter;
use crate::output::line_protocol::Flavor;
use crate::shutdown::Shutdown;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Name of the dead-letter file inside [`InfluxSinkConfig::dead_letter_dir`].
pub const DEAD_LETTER_FILE: &str = "dead-letter.lp";

/// The default longest `Retry-After` honoured (`max_retry_after_s`); a larger value is cut to
/// it.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How much of an error response body is kept for logs and the dead-letter file.
const MAX_ERROR_BODY: usize = 2048;

/// Tokens and passwords: the config module's type, whose `Debug`/`Display` never print the value.
pub use crate::secret::Secret;

/// Which write API the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// `/write?db=..` (InfluxDB 1.x; VictoriaMetrics also accepts it).
    V1,
    /// `/api/v2/write?org=..&bucket=..` (InfluxDB 2.x/3.x, VictoriaMetrics).
    #[default]
    V2,
}

impl Api {
    /// The line protocol dialect this API accepts.
    pub fn flavor(self) -> Flavor {
        match self {
            Api::V1 => Flavor::V1,
            Api::V2 => Flavor::V2,
        }
    }
}

/// Everything [`InfluxSink`] needs; the config module builds it from `[output.influxdb]`.
#[derive(Debug, Clone)]
pub struct InfluxSinkConfig {
    /// The output's name (`[[outputs.influxdb]] name`; `default` for `[output.influxdb]`): the
    /// `output` label of every metric the sink records.
    pub output: String,
    /// Base URL of the store, e.g. `http://127.0.0.1:8086` or `https://ioc.example/influx`.
    pub url: String,
    /// Further base URLs of the same store (`urls = [...]` after the first), in order of
    /// preference: a request that fails on one goes to the next (see [`failover`]).
    pub fallback_urls: Vec<String>,
    pub api: Api,
    /// v2 only; left out of the request when empty (VictoriaMetrics ignores it).
    pub org: String,
    /// v2 only; required.
    pub bucket: String,
    /// v1 only; required.
    pub database: String,
    /// Sent as `Authorization: Token <token>` (v2; also accepted by InfluxDB 1.8+ on `/write`).
    pub token: Option<Secret>,
    /// v1 only: HTTP basic auth, used when `token` is absent.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// PEM file of CA(s) trusted for the store's certificate besides the system's trust store
    /// (see [`crate::tls`]).
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), presented when the store asks (mutual
    /// TLS).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Accept any certificate. Logged as an error-level warning at start.
    pub insecure_skip_verify: bool,
    pub connect_timeout: Duration,
    /// Whole request, from connect to the end of the response.
    pub request_timeout: Duration,
    /// First backoff ceiling; doubles each retry up to `backoff_max` (full jitter below it).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Where `dead-letter.lp` is written (created if missing). Put it under `gateway.data_dir`.
    pub dead_letter_dir: PathBuf,
    /// `[gateway] id`: seeds the retry jitter and gives the drain start offset. Empty is
    /// allowed (every such gateway then shares one offset).
    pub gateway_id: String,
    /// The longest `Retry-After` (429/503) obeyed; a larger one is cut to this (logged once).
    pub max_retry_after: Duration,
    /// Every retry delay gets a random `[0, flush_jitter)` more.
    pub flush_jitter: Duration,
    /// After an outage, normal batches wait an offset in `[0, drain_spread)` from the gateway
    /// id before the backlog drains. Zero: no wait.
    pub drain_spread: Duration,
    /// The most write requests [`parallel::Deliveries`] keeps in flight (adaptive below it).
    pub max_in_flight: usize,
    /// Uplink rate limit on compressed bytes sent, for normal data. `None`: no limit.
    pub max_bytes_per_s: Option<u64>,
    /// Bytes normal data may send per UTC day. `None`: no limit.
    pub daily_budget_bytes: Option<u64>,
}

impl InfluxSinkConfig {
    /// A config with the given essentials and the defaults: no auth, system timeouts of 5 s
    /// (connect) and 30 s (request), backoff from 500 ms up to 30 s.
    pub fn new(url: impl Into<String>, api: Api, dead_letter_dir: impl Into<PathBuf>) -> Self {
        InfluxSinkConfig {
            // The name of the single `[output.influxdb]` (config::DEFAULT_OUTPUT is this one).
            output: crate::buffer::DEFAULT_CONSUMER.to_owned(),
            url: url.into(),
            fallback_urls: Vec::new(),
            api,
            org: String::new(),
            bucket: String::new(),
            database: String::new(),
            token: None,
            username: None,
            password: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            insecure_skip_verify: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            dead_letter_dir: dead_letter_dir.into(),
            gateway_id: String::new(),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            flush_jitter: Duration::from_millis(config::DEFAULT_FLUSH_JITTER_MS),
            drain_spread: Duration::from_millis(config::DEFAULT_DRAIN_SPREAD_MS),
            max_in_flight: config::DEFAULT_MAX_IN_FLIGHT as usize,
            max_bytes_per_s: None,
            daily_budget_bytes: None,
        }
    }
}

/// Why the sink could not be built, or a batch could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("output url {url:?} is invalid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("output config: {0}")]
    InvalidConfig(String),
    #[error("output TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No HTTP response: connection refused/reset, DNS, TLS handshake, or timeout.
    #[error("write to the store failed{}: {reason}", if *.timeout { " (timeout)" } else { "" })]
    Transport { reason: String, timeout: bool },
    #[error("cannot append to the dead-letter file {path}: {source}")]
    DeadLetter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shutdown requested before the batch was fully delivered")]
    Shutdown,
    /// A reload replaced this sink while it waited to retry a batch nothing of which was
    /// stored yet: the batch is to be sent with the new sink.
    #[error("the output was replaced by a reload before the batch was delivered")]
    Superseded,
}

/// What the store answered to one write attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// 2xx: the store took the batch (VictoriaMetrics answers 204 even to lines it drops).
    Accepted { status: u16 },
    /// 5xx, 408, 429, or any other unexpected status: try again later.
    Retry {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// 401/403: the token or password is wrong or lacks write permission.
    Unauthorized { status: u16, message: String },
    /// 404/405: the URL, API, database or bucket is wrong.
    Misconfigured { status: u16, message: String },
    /// Other 4xx: the batch holds lines the store refuses.
    BadBatch { status: u16, message: String },
}

/// What a batch is, for the policies that hold normal data back and never urgent data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Urgent,
    Normal,
    /// From [`InfluxSink::deliver`]/[`InfluxSink::deliver_unless_superseded`], which do not
    /// know: never held (like urgent), its bytes counted.
    Unknown,
}

impl Class {
    pub fn of(priority: ioc_model::Priority) -> Class {
        match priority {
            ioc_model::Priority::Urgent => Class::Urgent,
            ioc_model::Priority::Normal => Class::Normal,
        }
    }

    fn held(self) -> bool {
        self == Class::Normal
    }
}

/// The result of [`InfluxSink::deliver`]: the batch is fully handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivered {
    /// Lines the store accepted (the whole batch's `lines` when it went through at once).
    pub lines_sent: u32,
    /// Lines the store refused, now in the dead-letter file.
    pub lines_dead_lettered: u32,
    /// HTTP requests made, retries and split halves included.
    pub requests: u32,
}

/// The HTTP writer. Cheap to share behind an `Arc`; one connection pool inside.
pub struct InfluxSink {
    client: reqwest::Client,
    write_url: Url,
    /// Every URL (the first is `write_url`), with its `host:port` for messages.
    endpoints: Vec<(Url, String)>,
    failover: std::sync::Mutex<failover::Failover>,
    api: Api,
    token: Option<Secret>,
    username: Option<String>,
    password: Option<Secret>,
    backoff_initial: Duration,
    backoff_max: Duration,
    dead_letter_path: PathBuf,
    /// Told about every failed attempt, for health and the live page.
    observer: Option<crate::status::StoreState>,
    /// `host:port` of the store, for messages.
    store_authority: String,
    failures: std::sync::Mutex<FailureLog>,
    citizen: Citizen,
}

/// The good-citizen state of one sink (see the module docs).
struct Citizen {
    /// The output's name, for the `output` label.
    output: Arc<str>,
    max_retry_after: Duration,
    /// Whether a cut `Retry-After` was logged already.
    clamp_logged: std::sync::atomic::AtomicBool,
    jitter: std::sync::Mutex<jitter::JitterSource>,
    pacer: std::sync::Mutex<jitter::DrainPacer>,
    concurrency: std::sync::Mutex<concurrency::AdaptiveConcurrency>,
    budget: std::sync::Mutex<budget::UplinkBudget>,
    /// Where the day's byte count is kept, and when it was last written.
    budget_file: PathBuf,
    budget_saved: std::sync::Mutex<Option<Instant>>,
    /// Until when the store asked (`Retry-After`) that nothing be sent: honoured by every
    /// delivery of this sink, not only the one that was answered (several are in flight while
    /// draining).
    not_before: std::sync::Mutex<Option<Instant>>,
}

/// A poisoned lock of plain state is still usable state.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for InfluxSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfluxSink")
            .field("write_url", &self.write_url.as_str())
            .field("api", &self.api)
            .field("token", &self.token)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("dead_letter_path", &self.dead_letter_path)
            .finish()
    }
}

/// A range of a refused batch's lines still to handle, with the store's refusal if this exact
/// range was already sent and refused (status, message).
struct Part {
    start: usize,
    end: usize,
    refusal: Option<(u16, String)>,
}

/// The client identity for an unverified connection (`insecure_skip_verify`), where the
/// preconfigured rustls config is not used.
fn insecure_identity(
    files: crate::tls::ClientTlsFiles<'_>,
) -> Result<Option<reqwest::Identity>, SinkError> {
    use crate::tls::TlsError;
    let (cert, key) = match (files.client_cert_file, files.client_key_file) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(TlsError::HalfIdentity.into()),
    };
    let read = |key_name: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            key: key_name,
            path: path.to_owned(),
            source,
        })
    };
    let mut pem = read("client_cert_file", cert)?;
    pem.push(b'\n');
    pem.extend(read("client_key_file", key)?);
    reqwest::Identity::from_pem(&pem)
        .map(Some)
        .map_err(|e| TlsError::Mismatch(error_chain(&e)).into())
}

/// How one attempt-with-retries ended.
enum Settled {
    Accepted,
    Rejected { status: u16, message: String },
}

impl InfluxSink {
    /// Checks the config and builds the HTTP client (reads the CA file).
    pub fn new(config: InfluxSinkConfig) -> Result<Self, SinkError> {
        let write_url = build_write_url(&config, &config.url)?;
        let mut endpoints = vec![(write_url.clone(), authority(&write_url))];
        for url in &config.fallback_urls {
            let u = build_write_url(&config, url)?;
            if u.scheme() != write_url.scheme() {
                return Err(SinkError::InvalidConfig(
                    "every url of one output must use the same scheme (http or https)".into(),
                ));
            }
            endpoints.push((u.clone(), authority(&u)));
        }
        crate::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("ioc-gateway/", env!("CARGO_PKG_VERSION")));
        let files = crate::tls::ClientTlsFiles {
            ca_file: config.ca_file.as_deref(),
            client_cert_file: config.client_cert_file.as_deref(),
            client_key_file: config.client_key_file.as_deref(),
        };
        if config.insecure_skip_verify {
            tracing::error!(
                url = %write_url,
                "insecure_skip_verify = true: the store's TLS certificate is NOT verified; anyone \
                 on the path can read the data and the token. Use ca_file instead."
            );
            builder = builder.tls_danger_accept_invalid_certs(true);
            if let Some(identity) = insecure_identity(files)? {
                builder = builder.identity(identity);
            }
        } else if write_url.scheme() == "https" {
            // The system's trust store plus ca_file, and the client certificate: the same
            // trust as the MQTT side.
            builder = builder.tls_backend_preconfigured(crate::tls::client_config(files)?);
        }
        let client = builder
            .build()
            .map_err(|e| SinkError::Client(error_chain(&e)))?;
        if config.backoff_initial.is_zero() || config.backoff_max < config.backoff_initial {
            return Err(SinkError::InvalidConfig(
                "backoff_initial must be > 0 and <= backoff_max".into(),
            ));
        }
        if config.max_in_flight == 0 || config.max_retry_after.is_zero() {
            return Err(SinkError::InvalidConfig(
                "max_in_flight and max_retry_after must be above 0".into(),
            ));
        }
        let citizen = Citizen::new(&config);
        let output = citizen.label();
        let store_authority = authority(&write_url);
        for (i, (_, name)) in endpoints.iter().enumerate() {
            metrics::gauge!("output_endpoint_active", "output" => Arc::clone(&output), "url" => name.clone())
                .set(if i == 0 { 1.0 } else { 0.0 });
        }
        Ok(InfluxSink {
            client,
            write_url,
            failover: std::sync::Mutex::new(failover::Failover::new(endpoints.len())),
            endpoints,
            api: config.api,
            token: config.token,
            username: config.username,
            password: config.password,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max,
            dead_letter_path: config.dead_letter_dir.join(DEAD_LETTER_FILE),
            observer: None,
            store_authority,
            failures: std::sync::Mutex::new(FailureLog::default()),
            citizen,
        })
    }

    /// The output's name, as the `output` label of the sink's metrics.
    pub(crate) fn output(&self) -> Arc<str> {
        self.citizen.label()
    }

    /// Reports every failed attempt (with its reason) to `store`, for `/readyz` and the live page.
    pub fn with_observer(mut self, store: crate::status::StoreState) -> Self {
        self.observer = Some(store);
        self
    }

    /// The line protocol dialect to encode for this sink.
    pub fn flavor(&self) -> Flavor {
        self.api.flavor()
    }

    /// The full write URL (no secrets in it).
    pub fn write_url(&self) -> &Url {
        &self.write_url
    }

    /// Where refused lines go.
    pub fn dead_letter_path(&self) -> &std::path::Path {
        &self.dead_letter_path
    }

    /// One attempt: POSTs the gzip'd line protocol `body_gz` (holding `lines` lines; may be
    /// several gzip members concatenated). `Err` only for a failure with no HTTP response
    /// ([`SinkError::Transport`]); every response is an `Ok` outcome.
    pub async fn write(&self, body_gz: &[u8], lines: u32) -> Result<WriteOutcome, SinkError> {
        self.attempt(body_gz, lines).await.0
    }

    /// [`write`](Self::write), and whether the retry may go to another URL at once: the URL
    /// failed (no response, or a 5xx) and another is not resting, as [`failover::Failover`]
    /// decides.
    async fn attempt(&self, body_gz: &[u8], lines: u32) -> (Result<WriteOutcome, SinkError>, bool) {
        let index = self.failover_state().pick(Instant::now());
        let result = self.write_to(index, body_gz, lines).await;
        let failed = matches!(
            result,
            Err(SinkError::Transport { .. })
                | Ok(WriteOutcome::Retry {
                    status: 500..=599,
                    ..
                })
        );
        let can_switch = if failed {
            self.note_endpoint_failure(index)
        } else {
            self.failover_state().succeeded(index);
            false
        };
        (result, can_switch)
    }

    fn failover_state(&self) -> std::sync::MutexGuard<'_, failover::Failover> {
        self.failover.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rests a URL that failed and says which one the next request goes to; whether another
    /// URL can take a request at once.
    fn note_endpoint_failure(&self, index: usize) -> bool {
        if self.endpoints.len() < 2 {
            return false;
        }
        let now = Instant::now();
        let (can_switch, next) = {
            let mut f = self.failover_state();
            let can_switch = f.failed(index, now);
            (can_switch, f.clone().pick(now))
        };
        if next != index {
            let (from, to) = (&self.endpoints[index].1, &self.endpoints[next].1);
            metrics::counter!("output_failovers_total", "output" => self.output()).increment(1);
            metrics::gauge!("output_endpoint_active", "output" => self.output(), "url" => from.clone())
                .set(0.0);
            metrics::gauge!("output_endpoint_active", "output" => self.output(), "url" => to.clone())
                .set(1.0);
            if let Some(o) = &self.observer {
                o.set_endpoint(to.clone());
            }
            tracing::warn!(
                failed = %from,
                next = %to,
                immediately = can_switch,
                "store URL failed; sending to the next one"
            );
        }
        can_switch
    }

    /// The `host:port` of the URL in use.
    pub fn active_endpoint(&self) -> &str {
        let i = self.failover_state().current();
        &self.endpoints[i.min(self.endpoints.len() - 1)].1
    }

    async fn write_to(
        &self,
        index: usize,
        body_gz: &[u8],
        lines: u32,
    ) -> Result<WriteOutcome, SinkError> {
        let url = &self.endpoints[index.min(self.endpoints.len() - 1)].0;
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(CONTENT_ENCODING, "gzip")
            .body(body_gz.to_vec());
        if let Some(token) = &self.token {
            let mut value =
                HeaderValue::from_str(&format!("Token {}", token.expose())).map_err(|_| {
                    SinkError::InvalidConfig(
                        "the token holds characters not allowed in an HTTP header".into(),
                    )
                })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        } else if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_ref().map(Secret::expose));
        }
        let started = Instant::now();
        let permit = lock(&self.citizen.concurrency).on_start();
        let result = request.send().await;
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                let latency = started.elapsed();
                metrics::histogram!("output_write_seconds", "output" => self.output())
                    .record(latency.as_secs_f64());
                let timeout = e.is_timeout();
                // A timed-out request may have crossed the link; a refused one did not.
                if timeout {
                    self.citizen.spent(body_gz.len());
                }
                let outcome = if timeout {
                    concurrency::Outcome::Overloaded
                } else {
                    concurrency::Outcome::Other
                };
                self.citizen.responded(permit, latency, outcome);
                return Err(SinkError::Transport {
                    timeout,
                    reason: error_chain(&e),
                });
            }
        };
        self.citizen.spent(body_gz.len());
        let status = response.status();
        let retry_after = if retry_after::honoured_for(status.as_u16()) {
            response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after::parse(v, SystemTime::now()))
                .map(|told| self.citizen.bound_retry_after(told))
        } else {
            None
        };
        // Only the start of an error body is kept: a broken proxy may send megabytes.
        let mut body = Vec::new();
        if !status.is_success() {
            while body.len() < MAX_ERROR_BODY {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let latency = started.elapsed();
        metrics::histogram!("output_write_seconds", "output" => self.output())
            .record(latency.as_secs_f64());
        self.citizen.responded(
            permit,
            latency,
            concurrency::Outcome::of_status(status.as_u16()),
        );
        let outcome = classify(status, retry_after, &body);
        if let WriteOutcome::Accepted { .. } = outcome {
            metrics::counter!("output_lines_sent_total", "output" => self.output())
                .increment(u64::from(lines));
        }
        Ok(outcome)
    }
}

impl Citizen {
    /// The `output` label's value.
    fn label(&self) -> Arc<str> {
        Arc::clone(&self.output)
    }

    fn new(config: &InfluxSinkConfig) -> Self {
        let mut budget =
            budget::UplinkBudget::new(config.max_bytes_per_s, config.daily_budget_bytes);
        let budget_file = config.dead_letter_dir.join(budget::STATE_FILE);
        if budget.has_daily() {
            // Missing on a first start; unreadable or damaged: the day's count starts at 0.
            if let Some((day, bytes)) = std::fs::read_to_string(&budget_file)
                .ok()
                .and_then(|text| budget::parse_state(&text))
            {
                budget.restore(SystemTime::now(), day, bytes);
            }
        }
        if budget.limited() {
            tracing::info!(
                max_bytes_per_s = ?config.max_bytes_per_s,
                daily_budget_bytes = ?config.daily_budget_bytes,
                "uplink budget on: normal data is paced and capped per UTC day; urgent data is not"
            );
        }
        let pacer = jitter::DrainPacer::new(&config.gateway_id, config.drain_spread);
        tracing::debug!(offset = ?pacer.offset(), "drain start offset after an outage");
        let output: Arc<str> = Arc::from(config.output.as_str());
        metrics::gauge!("output_concurrency_limit", "output" => Arc::clone(&output)).set(1.0);
        Citizen {
            output,
            max_retry_after: config.max_retry_after,
            clamp_logged: std::sync::atomic::AtomicBool::new(false),
            jitter: std::sync::Mutex::new(jitter::JitterSource::new(
                &config.gateway_id,
                rand::random(),
                config.flush_jitter,
            )),
            pacer: std::sync::Mutex::new(pacer),
            concurrency: std::sync::Mutex::new(concurrency::AdaptiveConcurrency::new(
                config.max_in_flight,
            )),
            budget: std::sync::Mutex::new(budget),
            budget_file,
            budget_saved: std::sync::Mutex::new(None),
            not_before: std::sync::Mutex::new(None),
        }
    }

    /// A store's `Retry-After` after `max_retry_after_s`; the first cut one is logged.
    fn bound_retry_after(&self, told: Duration) -> Duration {
        let (delay, cut) = retry_after::bound(told, self.max_retry_after);
        if cut {
            metrics::counter!("output_retry_after_clamped_total", "output" => self.label())
                .increment(1);
            if !self
                .clamp_logged
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    told = ?told,
                    obeyed = ?delay,
                    "the store asked to wait longer than max_retry_after_s; waiting max_retry_after_s \
                     instead (said once)"
                );
            }
        }
        delay
    }

    /// A request body of `bytes` went out.
    fn spent(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        metrics::counter!("output_bytes_sent_total", "output" => self.label()).increment(bytes);
        let wall = SystemTime::now();
        let now = Instant::now();
        let (daily, day, sent) = {
            let mut budget = lock(&self.budget);
            budget.spent(now, wall, bytes);
            let (day, sent) = budget.state(wall);
            (budget.has_daily(), day, sent)
        };
        metrics::gauge!("output_bytes_sent_today", "output" => self.label()).set(sent as f64);
        if daily {
            self.save_budget(now, day, sent);
        }
    }

    /// Writes the day's count (at most every [`budget::SAVE_INTERVAL`]; a few bytes, through a
    /// temporary file and a rename so a crash leaves the old count or the new one).
    fn save_budget(&self, now: Instant, day: u64, sent: u64) {
        {
            let mut saved = lock(&self.budget_saved);
            if saved.is_some_and(|at| now.duration_since(at) < budget::SAVE_INTERVAL) {
                return;
            }
            *saved = Some(now);
        }
        let tmp = self.budget_file.with_extension("tmp");
        let result = std::fs::create_dir_all(self.budget_file.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::write(&tmp, budget::format_state(day, sent)))
            .and_then(|()| std::fs::rename(&tmp, &self.budget_file));
        if let Err(e) = result {
            tracing::warn!(
                path = %self.budget_file.display(),
                error = %e,
                "cannot keep the day's uplink byte count; a restart would start it at 0"
            );
        }
    }

    fn responded(
        &self,
        permit: concurrency::Permit,
        latency: Duration,
        outcome: concurrency::Outcome,
    ) {
        let (decision, limit) = {
            let mut c = lock(&self.concurrency);
            let decision = c.on_response(permit, latency, outcome);
            (decision, c.limit())
        };
        if decision != concurrency::Decision::Unchanged {
            metrics::gauge!("output_concurrency_limit", "output" => self.label()).set(limit as f64);
            tracing::debug!(
                limit,
                ?decision,
                ?latency,
                ?outcome,
                "request concurrency changed"
            );
        }
    }
}

/// Gzips line protocol lines (without their `\n`) as one gzip member.
pub fn gzip_lines(lines: &[&[u8]]) -> Vec<u8> {
    gzip_parts(lines.iter().flat_map(|line| [*line, b"\n".as_slice()]))
}

/// Gzips line protocol text (every line ending in `\n`, as it is) as one gzip member.
pub fn gzip_text(text: &[u8]) -> Vec<u8> {
    gzip_parts([text])
}

/// One gzip member of the parts in order (fast level: this runs on small ARM boxes).
fn gzip_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    for part in parts {
        // Writing into a Vec cannot fail.
        let _ = encoder.write_all(part);
    }
    encoder.finish().unwrap_or_default()
}

/// Decompresses a body of one or more concatenated gzip members.
pub fn decompress(body_gz: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::new();
    MultiGzDecoder::new(body_gz).read_to_end(&mut text)?;
    Ok(text)
}

/// `host:port` of a URL, for messages and labels.
fn authority(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => url.to_string(),
    }
}

fn build_write_url(config: &InfluxSinkConfig, base: &str) -> Result<Url, SinkError> {
    let invalid = |reason: &str| SinkError::InvalidUrl {
        url: redact_userinfo(base),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(base).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials in the url are not allowed (they would end up in logs): use token or username/password",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the url must not have a query or fragment"));
    }
    let base_path = url.path().trim_end_matches('/').to_owned();
    match config.api {
        Api::V2 => {
            if config.bucket.is_empty() {
                return Err(SinkError::InvalidConfig(
                    "api = \"v2\" needs a bucket".into(),
                ));
            }
            url.set_path(&format!("{base_path}/api/v2/write"));
            let mut query = url.query_pairs_mut();
            if !config.org.is_empty() {
                query.append_pair("org", &config.org);
            }
            query.append_pair("bucket", &config.bucket);
            query.append_pair("precision", "ns");
        }
        Api::V1 => {
            if config.database.is_empty() {
                return Err(SinkError::InvalidConfig(
                    "api = \"v1\" needs a database".into(),
                ));
            }
            url.set_path(&format!("{base_path}/write"));
            url.query_pairs_mut()
                .append_pair("db", &config.database)
                .append_pair("precision", "ns");
        }
    }
    Ok(url)
}

/// `scheme://***@host/...` for a URL with credentials in it, so an error never shows them.
fn redact_userinfo(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => format!(
            "{}***{}",
            &url[..authority_start],
            &url[authority_start + at..]
        ),
        None => url.to_owned(),
    }
}

/// Sorts a response into the policy's classes.
fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> WriteOutcome {
    let code = status.as_u16();
    if status.is_success() {
        return WriteOutcome::Accepted { status: code };
    }
    let message = error_message(status, body);
    match code {
        401 | 403 => WriteOutcome::Unauthorized {
            status: code,
            message,
        },
        404 | 405 => WriteOutcome::Misconfigured {
            status: code,
            message,
        },
        408 | 429 => WriteOutcome::Retry {
            status: code,
            retry_after,
            message,
        },
        400..=499 => WriteOutcome::BadBatch {
            status: code,
            message,
        },
        _ => WriteOutcome::Retry {
            status: code,
            retry_after,
            message,
        },
    }
}

/// The store's error text: the `error` (InfluxDB 1.x) or `message` (InfluxDB 2.x) member of a
/// JSON body, else the body as text (VictoriaMetrics), cut to a sane length.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        });
    let mut text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if text.is_empty() {
        text = status.to_string();
    }
    if text.len() > MAX_ERROR_BODY {
        let mut cut = MAX_ERROR_BODY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// An error and its sources on one line ("error sending request: ...: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("s3cr3t");
        assert!(!format!("{secret} {secret:?}").contains("s3cr3t"));
        let mut config = InfluxSinkConfig::new("http://127.0.0.1:8086", Api::V2, "/tmp");
        config.bucket = "b".into();
        config.token = Some(secret.clone());
        config.password = Some(secret);
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let sink = InfluxSink::new(config).unwrap();
        assert!(!format!("{sink:?}").contains("s3cr3t"));
    }

    #[test]
    fn write_urls_per_api() {
        let mut v2 = InfluxSinkConfig::new("https://ioc.example/influx/", Api::V2, "/tmp");
        v2.org = "ioc city".into();
        v2.bucket = "telemetry".into();
        assert_eq!(
            build_write_url(&v2, &v2.url).unwrap().as_str(),
            "https://ioc.example/influx/api/v2/write?org=ioc+city&bucket=telemetry&precision=ns"
        );
        let mut v1 = InfluxSinkConfig::new("http://127.0.0.1:8086", Api::V1, "/tmp");
        v1.database = "telemetry".into();
        assert_eq!(
            build_write_url(&v1, &v1.url).unwrap().as_str(),
            "http://127.0.0.1:8086/write?db=telemetry&precision=ns"
        );
        v1.database.clear();
        assert!(matches!(
            build_write_url(&v1, &v1.url),
            Err(SinkError::InvalidConfig(_))
        ));
        let creds = InfluxSinkConfig::new("http://u:p@127.0.0.1:8086", Api::V1, "/tmp");
        let err = build_write_url(&creds, &creds.url).unwrap_err();
        assert!(matches!(err, SinkError::InvalidUrl { .. }));
        assert_eq!(
            err.to_string(),
            "output url \"http://***@127.0.0.1:8086\" is invalid: credentials in the url are not \
             allowed (they would end up in logs): use token or username/password"
        );
        assert_eq!(redact_userinfo("https://a:b@c@h/p@q"), "https://***@h/p@q");
        assert_eq!(redact_userinfo("not a url"), "not a url");
        assert!(matches!(
            build_write_url(
                &InfluxSinkConfig::new("ftp://x", Api::V1, "/tmp"),
                "ftp://x"
            ),
            Err(SinkError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn responses_are_classified() {
        let ok = classify(StatusCode::NO_CONTENT, None, b"");
        assert_eq!(ok, WriteOutcome::Accepted { status: 204 });
        let bad = classify(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":"partial write: unable to parse 'x': invalid field format dropped=1"}"#,
        );
        assert_eq!(
            bad,
            WriteOutcome::BadBatch {
                status: 400,
                message: "partial write: unable to parse 'x': invalid field format dropped=1"
                    .into()
            }
        );
        let throttled = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            b"slow down",
        );
        assert_eq!(
            throttled,
            WriteOutcome::Retry {
                status: 429,
                retry_after: Some(Duration::from_secs(3)),
                message: "slow down".into()
            }
        );
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, None, b""),
            WriteOutcome::Unauthorized { status: 401, .. }
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, None, br#"{"code":"not found","message":"bucket \"x\" not found"}"#),
            WriteOutcome::Misconfigured { status: 404, ref message } if message == "bucket \"x\" not found"
        ));
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, None, b""),
            WriteOutcome::BadBatch { status: 413, .. }
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, b""),
            WriteOutcome::Retry {
                status: 502,
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn gzip_of_text_and_of_lines_hold_the_same_text() {
        let lines: [&[u8]; 2] = [b"a x=1 1", b"b x=2 2"];
        assert_eq!(
            decompress(&gzip_lines(&lines)).unwrap(),
            b"a x=1 1\nb x=2 2\n"
        );
        assert_eq!(
            decompress(&gzip_text(b"a x=1 1\nb x=2 2\n")).unwrap(),
            b"a x=1 1\nb x=2 2\n"
        );
        assert_eq!(decompress(&gzip_lines(&[])).unwrap(), b"");
    }

    #[test]
    fn multi_member_gzip_decompresses_whole() {
        let mut body = gzip_lines(&[b"a x=1 1"]);
        body.extend(gzip_lines(&[b"b x=2 2", b"c x=3 3"]));
        assert_eq!(decompress(&body).unwrap(), b"a x=1 1\nb x=2 2\nc x=3 3\n");
    }
}
