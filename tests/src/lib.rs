//! `ioc-e2e`: the harness every end-to-end test of ioc-gateway is built on.
//!
//! Why it exists: the gateway's promises (nothing acked before it is durable, nothing lost across a
//! crash or a store outage, exact values and timestamps in the store) can only be shown against the real
//! servers it talks to in the field. This crate starts those servers as child processes, one set per test,
//! on free loopback ports with their data in a [`tempfile::TempDir`], so tests can run in parallel, never
//! touch a system service, and leave nothing behind (every process is killed by PID on `Drop`).
//!
//! # What is here
//! | item | what it does |
//! | --- | --- |
//! | [`Mosquitto`] | MQTT broker, `mqtt://127.0.0.1:PORT`, persistence in its temp dir, extra config lines for TLS/password tests |
//! | [`VictoriaMetrics`] | `/api/v2/write` target; [`VictoriaMetrics::export`] reads every raw sample back |
//! | [`Influx1`] | InfluxDB 1.x (`/write`, `/query`); [`Influx1::query`] answers with nanosecond epochs |
//! | [`GatewayProcess`] | runs `ioc-gateway run --config FILE`, captures its output, `kill9`/`sigterm`/`wait_exit` |
//! | [`MqttPublisher`] | QoS 1 publisher that records which messages the broker PUBACKed |
//! | [`MqttSubscriber`] | plain subscriber, for checking what went through a broker |
//! | [`FakeBroker`] | scripted MQTT 3.1.1 server ([`Script`]) for session faults a real broker cannot show on demand (floods without waiting for acks, drops with acks pending, DUP redeliveries); records every packet per connection ([`BrokerLog`]) |
//! | [`FaultProxy`] | HTTP proxy in front of a real store that injects [`Fault`]s: delays, 500/429, hangs |
//! | [`StoreTier`] | `vmagent` in front of N VictoriaMetrics nodes, series sharded by a per-URL `hashmod` relabel config; stop/start the whole tier, read its request and error counters ([`TierCounters`]) |
//! | [`SensorSim`] | runs the real `sensor-sim run` (→ [`RunSummary`]) and `sensor-sim verify` (→ [`VerifyOutcome`]); [`ManifestCounts`] reads a manifest |
//! | [`gateway_toml`] | the config pieces most tests share: the `[gateway]` head, the MQTT inputs of env readings and urgent camera events, the v2 API keys |
//! | [`bin_path`], [`free_port`], [`wait_until`], [`HeavyTestLock`], [`gzip`] | small helpers |
//! | [`http_get`], [`gateway_metrics`], [`metric_in`] | a GET with a timeout; a gateway's `/metrics`, and one metric summed from it |
//! | [`metrics_page_problems`] | what a `/metrics` page breaks of the gateway's naming rules: a family without `# HELP`, a name without the `ioc_gateway_` prefix |
//! | [`WebhookClient`] | keep-alive HTTP/1.1 POSTs to a webhook input, exact bytes, a missing answer told apart from a status |
//! | [`pty()`] ([`Pty`]) | a raw pseudo-terminal pair standing in for a USB serial adapter |
//! | [`SerialSim`] | runs `sensor-sim serial` (a simulated instrument on a pty it creates, behind a link) and collects its summary |
//! | [`pms5003_oracle`] | a hand-written PMS5003 encoder independent of `ioc-frames`, to build the frames tests feed the gateway |
//!
//! Set `IOC_E2E_KEEP_DIRS=1` to keep every server's and gateway's temp dir (config, log, data)
//! after the test, for post-mortems.
//!
//! Every server has `stop()` (graceful: SIGTERM, then SIGKILL after 15 s), `start_again()` (same port,
//! same data dir: for outage and broker-restart tests) and `restart()`.
//!
//! # Example
//! ```no_run
//! use ioc_e2e::{Mosquitto, VictoriaMetrics};
//! let broker = Mosquitto::start().unwrap();
//! let vm = VictoriaMetrics::start().unwrap();
//! println!("{} {}", broker.url(), vm.url());
//! vm.write_line_protocol("m,t=a f=1.5 1700000000000000000\n").unwrap();
//! vm.force_flush().unwrap();
//! let series = vm.export("{__name__=\"m_f\"}").unwrap();
//! assert_eq!(series[0].values, vec![1.5]);
//! ```
//!
//! # Requirements
//! `mosquitto`, `victoria-metrics` and `influxd` on `PATH` (or in `/usr/sbin`): `tests/scripts/install-deps.sh`
//! installs them. The gateway binaries must be built (`cargo build --workspace --bins`); `tests/scripts/test.sh`
//! does both.

pub mod fake_broker;
mod gateway;
pub mod gateway_toml;
mod influx;
mod mosquitto;
mod mqtt;
mod pki;
pub mod pms5003_oracle;
mod proxy;
mod pty;
mod serial_sim;
mod server;
mod sim;
pub mod steps;
mod store_tier;
mod tmpfs;
mod victoria;
mod vmagent;
mod vmalert;
mod webhook;

pub use fake_broker::{BrokerLog, FakeBroker, Script};
pub use gateway::{check_config, check_config_with, GatewayProcess};
pub use influx::Influx1;
pub use mosquitto::Mosquitto;
pub use mqtt::{MqttPublisher, MqttSubscriber, ReceivedMessage};
pub use pki::Pki;
pub use proxy::{Fault, FaultProxy, ProxiedRequest, Rule};
pub use pty::{pty, wait_for_reader, Pty};
pub use serial_sim::SerialSim;
pub use sim::{
    ManifestCounts, RunOptions, RunSummary, RunningSim, SensorSim, StoreApi, VerifyCounts,
    VerifyOutcome,
};
pub use store_tier::{StoreTier, TierCounters};
pub use tmpfs::{FreezableFs, Tmpfs};
pub use victoria::{ExportedSeries, VictoriaMetrics};
pub use vmagent::{shard_relabel_config, VmAgent, SHARD_LABELS};
pub use vmalert::{Alert, Notifier, VmAlert};
pub use webhook::{WebhookClient, WebhookResponse};

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server may take to answer its readiness probe after being started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that can go wrong in the harness. `Debug` prints the same text as `Display`, so a test's
/// `.unwrap()` shows the whole message (including a server's log tail) readably.
#[derive(thiserror::Error)]
pub enum HarnessError {
    /// A program could not be started at all (not installed, not executable).
    #[error("cannot start {program}: {source}. Run tests/scripts/install-deps.sh (servers) or `cargo build --workspace --bins` (gateway binaries).")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// A server started but never became ready, or died while starting.
    #[error("{name} did not become ready within {timeout:?}: {reason}\n--- last lines of {name}'s output ---\n{log_tail}")]
    NotReady {
        name: String,
        timeout: Duration,
        reason: String,
        log_tail: String,
    },
    /// An HTTP request to a server failed or was answered with an error status.
    #[error("HTTP {method} {url}: {detail}")]
    Http {
        method: &'static str,
        url: String,
        detail: String,
    },
    /// An answer could not be parsed.
    #[error("cannot parse answer of {what}: {detail}")]
    Parse { what: String, detail: String },
    /// MQTT client error.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// A process did not do what was asked in time.
    #[error("timeout: {0}")]
    Timeout(String),
    /// File system or process I/O.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl std::fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result type of the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

static HANDED_OUT_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1: the OS picks one (bind to port 0), the listener is closed, and the
/// port is handed to a server. Never returns the same port twice within one test process. (Between
/// processes a collision is possible but unlikely; the servers' `start()` retries on a fresh port
/// when the first attempt cannot bind.)
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut guard = HANDED_OUT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Polls `condition` every 50 ms until it returns true (→ `true`) or `timeout` has passed (→ `false`,
/// after one last check). Use it as `assert!(wait_until(t, || ...), "what did not happen: {details}")`.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return condition();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Path of a binary of this workspace (`ioc-gateway`, `sensor-sim`, ...) in the target dir the running
/// test was built into: `current_exe()` is `target/<profile>/deps/<test>-<hash>`, so the binary is
/// `target/<profile>/<name>`. This follows `CARGO_TARGET_DIR` automatically. `IOC_E2E_BIN_DIR`
/// overrides the directory.
///
/// Panics with instructions when the binary has not been built: the end-to-end tests need
/// `cargo build --workspace --bins` first (`tests/scripts/test.sh` does it).
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("IOC_E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let mut dir = exe
                .parent()
                .expect("test executable has a parent dir")
                .to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}: run `cargo build --workspace --bins --features \
             sensor-sim/demo` first (tests/scripts/test.sh does it), or set IOC_E2E_BIN_DIR",
            path.display()
        );
    }
    path
}

/// Gzip-compresses `data` (what the gateway does to its request bodies; used to write line protocol
/// with `Content-Encoding: gzip`).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip into a Vec");
    encoder.finish().expect("gzip into a Vec")
}

/// An exclusive lock held while a heavy end-to-end test runs (100k messages, outages...), so that on a
/// 2-core machine at most one of them runs at a time, whatever the runner (`cargo test` threads or
/// nextest processes). It is an `flock` on a file in the temp dir, released on `Drop` (or when the
/// process dies). Light tests run beside it.
pub struct HeavyTestLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl HeavyTestLock {
    /// Blocks until no other heavy test holds the lock.
    pub fn acquire() -> Self {
        let path = std::env::temp_dir().join("ioc-e2e-heavy-test.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive) {
            Ok(lock) => HeavyTestLock { _lock: lock },
            Err((_, errno)) => panic!("flock {}: {errno}", path.display()),
        }
    }
}

/// A temp dir for a server or the gateway's log. With `IOC_E2E_KEEP_DIRS=1` in the environment it
/// is not deleted at the end (its path is printed), so configs, logs and data can be inspected after a
/// failure.
pub(crate) fn harness_temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let keep = std::env::var_os("IOC_E2E_KEEP_DIRS").is_some_and(|v| !v.is_empty() && v != "0");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir()
        .map_err(|e| HarnessError::io("create temp dir", e))?;
    if keep {
        eprintln!("ioc-e2e: keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("time fits i64")
}

/// At most `max_chars` characters of `text` (for error messages).
pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// `GET url` with a 5 s timeout: the HTTP status and body, or status 0 and the error's text when
/// no HTTP answer came (connection refused, timeout).
pub fn http_get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// A gateway's `/metrics` text on `127.0.0.1:port`, empty unless it answers 200: feed it to
/// [`metric_in`].
pub fn gateway_metrics(port: u16) -> String {
    match http_get(&format!("http://127.0.0.1:{port}/metrics")) {
        (200, body) => body,
        _ => String::new(),
    }
}

/// Sum of the samples of metric `name` in Prometheus text whose labels include all of `labels`
/// (0 when there are none).
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let matches = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if matches {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// The prefix of every metric the gateway exports.
pub const METRIC_PREFIX: &str = "ioc_gateway_";

/// What the Prometheus text `text` (a gateway's `/metrics`) breaks of the gateway's rules, one
/// line per problem (empty when none): every `# TYPE` line has a `# HELP` line with text for the
/// same name before it, every sample belongs to a family with a `# TYPE` line, and every name
/// starts with [`METRIC_PREFIX`] exactly once. An empty page is a problem too (nothing was
/// checked).
pub fn metrics_page_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut typed: std::collections::BTreeMap<String, String> = Default::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if help.trim().is_empty() {
                problems.push(format!("{name}: empty # HELP text"));
            }
            helped.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if !helped.contains(name) {
                problems.push(format!(
                    "{name}: # TYPE {kind} without a # HELP line before it"
                ));
            }
            typed.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            let name = series.split_once('{').map_or(series, |(n, _)| n);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    matches!(
                        typed.get(base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                    .then_some(base)
                })
                .unwrap_or(name);
            if !typed.contains_key(family) {
                problems.push(format!("{name}: a sample without a # TYPE line"));
            }
        }
    }
    for name in typed.keys() {
        if !name.starts_with(METRIC_PREFIX) {
            problems.push(format!("{name}: does not start with {METRIC_PREFIX}"));
        } else if name[METRIC_PREFIX.len()..].starts_with(METRIC_PREFIX) {
            problems.push(format!("{name}: the prefix twice"));
        }
    }
    if typed.is_empty() {
        problems.push("no metric on the page".to_owned());
    }
    problems
}

/// Resident memory (`VmRSS`, KiB) of process `pid` now, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod metrics_page_tests {
    use super::metrics_page_problems;

    #[test]
    fn a_documented_prefixed_page_passes() {
        let page = "# HELP ioc_gateway_a_total What a counts.\n# TYPE ioc_gateway_a_total counter\n\
                    ioc_gateway_a_total{input=\"x\"} 3\n\n\
                    # HELP ioc_gateway_w_seconds How long.\n# TYPE ioc_gateway_w_seconds histogram\n\
                    ioc_gateway_w_seconds_bucket{le=\"0.5\"} 1\nioc_gateway_w_seconds_bucket{le=\"+Inf\"} 1\n\
                    ioc_gateway_w_seconds_sum 0.2\nioc_gateway_w_seconds_count 1\n";
        assert_eq!(metrics_page_problems(page), Vec::<String>::new());
    }

    #[test]
    fn missing_help_prefix_or_type_is_reported() {
        let page = "# TYPE ioc_gateway_a_total counter\nioc_gateway_a_total 1\n\
                    # HELP node_reboots_total Reboots.\n# TYPE node_reboots_total counter\nnode_reboots_total 2\n\
                    # HELP ioc_gateway_ioc_gateway_b B.\n# TYPE ioc_gateway_ioc_gateway_b gauge\nioc_gateway_ioc_gateway_b 1\n\
                    stray 5\n";
        let problems = metrics_page_problems(page);
        assert_eq!(
            problems,
            [
                "ioc_gateway_a_total: # TYPE counter without a # HELP line before it",
                "stray: a sample without a # TYPE line",
                "ioc_gateway_ioc_gateway_b: the prefix twice",
                "node_reboots_total: does not start with ioc_gateway_",
            ]
        );
        assert_eq!(metrics_page_problems(""), ["no metric on the page"]);
    }
}
