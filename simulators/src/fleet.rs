//! `sensor-sim fleet`: N real `ioc-gateway` processes, each with its own small simulated
//! district, data dir and config, against one store tier; per-gateway and total figures, and a
//! manifest per gateway for `sensor-sim verify`.
//!
//! Why it exists: a province runs hundreds of gateways into one IOC, and what matters at that
//! scale (nothing lost after a central outage, how long the fleet's backlog takes to drain, what
//! a gateway costs in CPU and memory) can only be seen with many real processes at once. This
//! module starts them, feeds them, watches them and stops them, and nothing more: the figures
//! come from each gateway's own `/metrics` and from `/proc`, the verdict from the store.
//!
//! Shape of a run: one MQTT broker (given by `--broker`) carries every district; gateway
//! `gw-NNN` subscribes to `city/gw-NNN/env/+` and the simulator plays all districts from one
//! publisher (a few connections, readings sent when their time comes), which scales to
//! 50 gateways × 20 sensors at 1 Hz on a 2-core machine where 50 publisher processes would not.
//! Every gateway writes to the same `--store-url` (the v2 API: VictoriaMetrics, or vmagent in
//! front of several nodes). What the broker acknowledged goes to one manifest, split per gateway
//! at the end (`manifests/gw-NNN.jsonl`) so that `sensor-sim verify --gateway-id gw-NNN` checks
//! each gateway's data exactly; `--read-store` (one per storage node) makes the run read back and
//! report stored, missing and duplicated readings itself.
//!
//! The pure parts (configs, scenario, metric parsing, backlog bookkeeping) are functions with
//! tests; [`run`] is the I/O around them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::generator::Generator;
use crate::manifest::{self, Entry, Header};
use crate::mqtt::{self, PublishOptions};
use crate::scenario::Scenario;
use crate::verify::{self, Counts, Shape, StoreApi, StoreIndex, StoreQuery};

/// Why a fleet run could not be carried out.
#[derive(Debug, Error)]
pub enum FleetError {
    /// An option is out of range or malformed.
    #[error("{0}")]
    Invalid(String),
    /// The gateway binary is not there.
    #[error("gateway binary {0} not found: build it (`cargo build --release -p ioc-gateway --bin ioc-gateway`) or give --gateway-bin")]
    NoGatewayBinary(PathBuf),
    /// A port a gateway needs is taken.
    #[error("port {port} (the /metrics of {gateway}) is in use: give another --http-base-port, or 0 for free ports")]
    PortInUse {
        /// The port.
        port: u16,
        /// The gateway that needed it.
        gateway: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A gateway exited or never became ready.
    #[error("gateway {gateway}: {reason}\n--- last lines of {log} ---\n{tail}")]
    Gateway {
        /// Its id.
        gateway: String,
        /// What went wrong.
        reason: String,
        /// Its log file.
        log: String,
        /// The log's last lines.
        tail: String,
    },
    /// The publisher failed.
    #[error("publisher: {0}")]
    Publish(#[from] mqtt::RunError),
    /// The scenario built for the fleet was refused (a bug, or an option out of range).
    #[error("scenario: {0}")]
    Scenario(#[from] crate::scenario::ScenarioError),
    /// A manifest could not be read back.
    #[error("manifest: {0}")]
    Manifest(#[from] manifest::ManifestError),
    /// Reading the store back failed.
    #[error("reading the store back: {0}")]
    Verify(#[from] verify::VerifyError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FleetError {
    let what = what.into();
    move |source| FleetError::Io { what, source }
}

/// What `sensor-sim fleet` was asked for.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of gateway processes.
    pub gateways: usize,
    /// Environment sensors per gateway.
    pub sensors: usize,
    /// Readings per second per sensor.
    pub rate_hz: f64,
    /// How long the simulated district publishes.
    pub duration: Duration,
    /// The MQTT broker, `mqtt://HOST:PORT`.
    pub broker: String,
    /// Where every gateway writes (`[output.influxdb] url`, `api = "v2"`).
    pub store_url: String,
    /// The `ioc-gateway` binary.
    pub gateway_bin: PathBuf,
    /// Working directory: one `gw-NNN/` per gateway, `manifests/`, `fleet-report.json`.
    pub dir: PathBuf,
    /// Seed of the districts.
    pub seed: u64,
    /// First gateway's HTTP port (gateway i gets base + i); 0 = free ports.
    pub http_base_port: u16,
    /// `[gateway] health_interval_s` of every gateway (0 = off).
    pub health_interval_s: u64,
    /// `[buffer] max_disk_mb` of every gateway.
    pub max_disk_mb: u64,
    /// Extra `[output.influxdb]` keys, `KEY=TOML-VALUE` (e.g. `flush_jitter_ms=500`,
    /// `urls=["http://a:8429","http://b:8429"]`); they override the defaults.
    pub output_set: Vec<String>,
    /// Storage nodes to read back from (VictoriaMetrics base URLs); empty = no read-back.
    pub read_stores: Vec<String>,
    /// After publishing, wait at most this long for every backlog to drain.
    pub drain_timeout: Duration,
    /// After draining, retry the read-back this long while something is missing (a vmagent
    /// in front of the nodes may still be forwarding).
    pub readback_timeout: Duration,
    /// Steady CPU is measured from `warmup` after the start…
    pub warmup: Duration,
    /// …for this long.
    pub steady_window: Duration,
    /// MQTT connections of the publisher.
    pub clients: usize,
    /// A gateway counts as backlogged above this many unsent lines (default: 5 s of its data).
    pub backlog_threshold: Option<u64>,
    /// `RUST_LOG` of the gateways (default `warn`).
    pub gateway_log: String,
}

/// One gateway's identity in the fleet: `gw-001` …
pub fn gateway_id(index: usize) -> String {
    format!("gw-{:03}", index + 1)
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses `--output-set KEY=VALUE` items into `[output.influxdb]` keys (VALUE is TOML: a
/// number, `true`, `"text"`, `["a", "b"]`). Checked here so a typo fails before 50 processes
/// start; whether the gateway knows the key is its own `check-config`'s business.
pub fn parse_output_set(items: &[String]) -> Result<Vec<(String, String)>, FleetError> {
    let mut out = Vec::new();
    for item in items {
        let (key, value) = item
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| {
                FleetError::Invalid(format!("--output-set {item:?}: expected KEY=VALUE"))
            })?;
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(FleetError::Invalid(format!(
                "--output-set {item:?}: key {key:?} is not a bare TOML key"
            )));
        }
        toml::from_str::<toml::Table>(&format!("v = {value}")).map_err(|e| {
            FleetError::Invalid(format!(
                "--output-set {item:?}: {value:?} is not a TOML value (strings need quotes): {}",
                e.message()
            ))
        })?;
        out.retain(|(k, _): &(String, String)| k != key);
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// Everything a gateway's config depends on.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// `gw-NNN`.
    pub id: String,
    /// Its data dir (absolute).
    pub data_dir: PathBuf,
    /// Its `/metrics` port.
    pub http_port: u16,
}

/// The config file of one gateway: one MQTT input for its district, the output to the store,
/// a small buffer, its HTTP port.
pub fn gateway_config(
    spec: &GatewaySpec,
    o: &FleetOptions,
    output_set: &[(String, String)],
) -> String {
    let mut output: Vec<(String, String)> = vec![
        ("url".into(), toml_str(&o.store_url)),
        ("api".into(), toml_str("v2")),
        ("org".into(), toml_str("ioc")),
        ("bucket".into(), toml_str("telemetry")),
    ];
    for (k, v) in output_set {
        if k == "urls" {
            output.retain(|(k, _)| k != "url");
        }
        output.retain(|(old, _)| old != k);
        output.push((k.clone(), v.clone()));
    }
    let id = &spec.id;
    let mut text = format!(
        "# written by `sensor-sim fleet` for {id}\n\
         [gateway]\nid = {}\ndata_dir = {}\nhealth_interval_s = {}\n\n\
         [[inputs.mqtt]]\nname = \"env\"\nurl = {}\nclient_id = {}\ntopics = [{}]\nqos = 1\n\
         measurement = \"environment\"\ntopic_tags = \"_/district/_/sensor_id\"\n\
         timestamp_field = \"ts\"\ntimestamp_unit = \"ms\"\n\n[output.influxdb]\n",
        toml_str(id),
        toml_str(&spec.data_dir.display().to_string()),
        o.health_interval_s,
        toml_str(&o.broker),
        toml_str(&format!("{id}-env")),
        toml_str(&format!("city/{id}/env/+")),
    );
    for (k, v) in &output {
        let _ = writeln!(text, "{k} = {v}");
    }
    let _ = write!(
        text,
        "\n[buffer]\nmax_disk_mb = {}\n\n[http]\nlisten = \"127.0.0.1:{}\"\n",
        o.max_disk_mb, spec.http_port
    );
    text
}

/// The fleet's simulated city: one district per gateway (named after it), `sensors`
/// environment stations each, one reading per station every `1 / rate_hz` s.
pub fn scenario_text(gateways: usize, sensors: usize, rate_hz: f64, start: &str) -> String {
    let districts: Vec<String> = (0..gateways).map(|i| toml_str(&gateway_id(i))).collect();
    format!(
        "# written by `sensor-sim fleet`\nname = \"fleet\"\ndescription = \"{gateways} gateways x {sensors} sensors at {rate_hz} Hz\"\n\
         start = {}\ndistricts = [{}]\nqos = 1\n\n[env]\ncount = {}\ninterval_s = {}\n",
        toml_str(start),
        districts.join(", "),
        gateways * sensors,
        1.0 / rate_hz,
    )
}

/// The sum of every sample of `name` on a Prometheus text page whose labels include all of
/// `labels` (`None` when there is no such sample).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        if !labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *sum.get_or_insert(0.0) += v;
    }
    sum
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds (the kernel's USER_HZ is 100 on
/// every Linux architecture this runs on).
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, key)
}

/// The value of `key:` in a `/proc/<pid>/status` text, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One sample of the fleet's backlog.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct BacklogSample {
    /// Unix ms of the sample.
    pub at_ms: i64,
    /// Unsent lines over all gateways that answered.
    pub unsent_lines: u64,
    /// Gateways above the backlog threshold.
    pub backlogged: usize,
    /// Gateways whose `/metrics` did not answer.
    pub silent: usize,
}

/// When the fleet's backlog last drained: the first sample after the last one in which any
/// gateway was backlogged (`None` if none ever was, or if the last sample is still backlogged).
pub fn drained_at(samples: &[BacklogSample]) -> Option<i64> {
    let last = samples.iter().rposition(|s| s.backlogged > 0)?;
    samples.get(last + 1).map(|s| s.at_ms)
}

/// What reading a set of readings back from the stores found (with `--read-store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReadBack {
    /// Stored exactly once with the values sent.
    pub stored: u64,
    /// Absent.
    pub missing: u64,
    /// Stored more than once.
    pub duplicates: u64,
    /// Stored with other values.
    pub mismatched: u64,
}

impl ReadBack {
    fn of(c: &Counts) -> ReadBack {
        ReadBack {
            stored: c.found - c.mismatched.min(c.found),
            missing: c.missing,
            duplicates: c.duplicates,
            mismatched: c.mismatched,
        }
    }

    /// Nothing absent, doubled or different.
    pub fn lost_nothing(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.mismatched == 0
    }
}

impl std::ops::Add for ReadBack {
    type Output = ReadBack;
    fn add(self, o: ReadBack) -> ReadBack {
        ReadBack {
            stored: self.stored + o.stored,
            missing: self.missing + o.missing,
            duplicates: self.duplicates + o.duplicates,
            mismatched: self.mismatched + o.mismatched,
        }
    }
}

/// One gateway's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayFigures {
    /// `gw-NNN`.
    pub id: String,
    /// Its PID while it ran.
    pub pid: u32,
    /// Its `/metrics` port.
    pub http_port: u16,
    /// Readings the broker acknowledged for its district (= its manifest entries).
    pub sent: u64,
    /// Readings its env input accepted (`ioc_gateway_readings_accepted_total{input="env"}`).
    pub accepted: u64,
    /// Its readings read back (absent without --read-store).
    #[serde(flatten)]
    pub read_back: Option<ReadBack>,
    /// CPU seconds over the whole run.
    pub cpu_s: f64,
    /// CPU share (percent of one core) over the steady window.
    pub steady_cpu_pct: Option<f64>,
    /// Peak RSS (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// RSS at the end, KiB.
    pub rss_kib: u64,
    /// Largest backlog seen (`ioc_gateway_output_buffer_unsent_lines`).
    pub peak_unsent_lines: u64,
    /// Backlog at the end.
    pub unsent_lines: u64,
    /// Unix ms of the last sample in which it was backlogged.
    pub last_backlogged_at_ms: Option<i64>,
}

/// The whole run's figures (printed as JSON and written to `fleet-report.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetReport {
    /// Gateways.
    pub gateways: usize,
    /// Sensors per gateway.
    pub sensors: usize,
    /// Hz per sensor.
    pub rate_hz: f64,
    /// Unix ms the publisher started.
    pub started_ms: i64,
    /// Unix ms the publisher stopped.
    pub published_until_ms: i64,
    /// Readings acknowledged by the broker.
    pub sent: u64,
    /// Readings accepted by the gateways.
    pub accepted: u64,
    /// Every gateway's readings read back (absent without --read-store).
    #[serde(flatten)]
    pub read_back: Option<ReadBack>,
    /// Gateways whose `ioc_gateway` health series was found in the read-back stores.
    pub health_gateways_seen: Option<usize>,
    /// Whether every backlog drained (to 0) before --drain-timeout.
    pub drained: bool,
    /// Unix ms when the fleet's backlog last drained (see [`drained_at`]).
    pub drained_at_ms: Option<i64>,
    /// Largest total backlog.
    pub peak_unsent_lines: u64,
    /// Backlog threshold per gateway used for `backlogged`.
    pub backlog_threshold: u64,
    /// Sum of the gateways' CPU seconds.
    pub cpu_s: f64,
    /// Mean steady CPU per gateway (percent of one core).
    pub steady_cpu_pct_mean: Option<f64>,
    /// Mean peak RSS per gateway, KiB.
    pub peak_rss_kib_mean: u64,
    /// Largest peak RSS, KiB.
    pub peak_rss_kib_max: u64,
    /// Per gateway.
    pub per_gateway: Vec<GatewayFigures>,
    /// One sample per second.
    pub backlog_timeline: Vec<BacklogSample>,
}

impl FleetReport {
    /// Whether the run lost nothing (read back, nothing missing, doubled or different) and
    /// every backlog drained.
    pub fn ok(&self) -> bool {
        self.drained && self.read_back.is_some_and(|r| r.lost_nothing())
    }

    /// A table for people.
    pub fn table(&self, max_rows: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>8} {:>8} {:>7} {:>5} {:>7} {:>7} {:>9} {:>9}",
            "gateway",
            "sent",
            "accepted",
            "stored",
            "missing",
            "dup",
            "cpu_s",
            "cpu%",
            "rss_kib",
            "peak_unsent"
        );
        let rows = self.per_gateway.len();
        for g in self.per_gateway.iter().filter(|g| {
            rows <= max_rows || g.read_back.is_some_and(|r| !r.lost_nothing()) || g.unsent_lines > 0
        }) {
            table_row(
                &mut out,
                &g.id,
                (g.sent, g.accepted),
                g.read_back,
                (g.cpu_s, g.steady_cpu_pct),
                (g.peak_rss_kib, g.peak_unsent_lines),
            );
        }
        table_row(
            &mut out,
            "total",
            (self.sent, self.accepted),
            self.read_back,
            (self.cpu_s, self.steady_cpu_pct_mean),
            (self.peak_rss_kib_mean, self.peak_unsent_lines),
        );
        out
    }
}

/// One row of [`FleetReport::table`]: a gateway's or the fleet's total.
fn table_row(
    out: &mut String,
    label: &str,
    (sent, accepted): (u64, u64),
    read_back: Option<ReadBack>,
    (cpu_s, cpu_pct): (f64, Option<f64>),
    (rss_kib, peak_unsent): (u64, u64),
) {
    let opt = |f: fn(&ReadBack) -> u64| {
        read_back
            .as_ref()
            .map_or("-".to_string(), |r| f(r).to_string())
    };
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:>8} {:>8} {:>7} {:>5} {:>7.2} {:>7} {:>9} {:>9}",
        label,
        sent,
        accepted,
        opt(|r| r.stored),
        opt(|r| r.missing),
        opt(|r| r.duplicates),
        cpu_s,
        cpu_pct.map_or("-".into(), |p| format!("{p:.2}")),
        rss_kib,
        peak_unsent
    );
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// CPU share over a window of the run: from the first sample at or after `warmup` to the
/// first at or after `warmup + window` (or the last one, if the run ends before).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SteadyCpu {
    start: Option<(f64, f64)>,
    last: Option<(f64, f64)>,
    done: bool,
}

impl SteadyCpu {
    /// One sample: `cpu` seconds used at `elapsed` into the run.
    pub fn observe(&mut self, elapsed: Duration, cpu: f64, warmup: Duration, window: Duration) {
        if self.done || elapsed < warmup {
            return;
        }
        let t = elapsed.as_secs_f64();
        match self.start {
            None => self.start = Some((t, cpu)),
            Some(_) => {
                self.last = Some((t, cpu));
                self.done = elapsed >= warmup + window;
            }
        }
    }

    /// Percent of one core over the window so far (`None` before two samples).
    pub fn percent(&self) -> Option<f64> {
        let ((t0, c0), (t1, c1)) = (self.start?, self.last?);
        (t1 > t0).then(|| (c1 - c0) / (t1 - t0) * 100.0)
    }
}

/// A started gateway.
struct Member {
    spec: GatewaySpec,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    figures: GatewayFigures,
    steady: SteadyCpu,
}

impl Member {
    fn error(&self, reason: impl Into<String>) -> FleetError {
        FleetError::Gateway {
            gateway: self.spec.id.clone(),
            reason: reason.into(),
            log: self.log.display().to_string(),
            tail: log_tail(&self.log, 20),
        }
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every gateway this run started; stopped (SIGTERM by PID, then SIGKILL) on drop, so that an
/// error or a panic leaves no process behind.
struct Fleet {
    members: Vec<Member>,
}

impl Fleet {
    /// SIGTERM to every gateway, then waits up to `grace` and SIGKILLs what is left.
    fn stop(&mut self, grace: Duration) {
        for m in &self.members {
            if let (Some(_), Ok(pid)) = (&m.child, i32::try_from(m.pid)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + grace;
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) => break,
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn http_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(3))
        .build()
}

fn metrics_page(agent: &ureq::Agent, port: u16) -> Option<String> {
    agent
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()?
        .into_string()
        .ok()
}

/// A free loopback port (bound and released: another process could take it in between, which
/// the gateway then reports at start).
fn free_port() -> Result<u16, FleetError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
    Ok(listener.local_addr().map_err(io("local_addr"))?.port())
}

/// A TCP connection to the broker can be made (else 50 gateways would each time out on it).
fn broker_reachable(host: &str, port: u16) -> Result<(), FleetError> {
    use std::net::ToSocketAddrs;
    let unreachable = |why: String| {
        FleetError::Invalid(format!(
            "--broker mqtt://{host}:{port}: not reachable ({why}); start mosquitto (it must queue \
             QoS 1 messages: max_queued_messages 0) or give another --broker"
        ))
    };
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last = String::from("no address");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(unreachable(last))
}

/// Splits the fleet's manifest (`all`) into one per gateway (by the `district` tag, which is
/// the gateway id); returns the entries per gateway.
fn split_manifest(
    all: &Path,
    dir: &Path,
    ids: &[String],
    header: &Header,
) -> Result<BTreeMap<String, Vec<Entry>>, FleetError> {
    let file = File::open(all).map_err(io(format!("open {}", all.display())))?;
    let (_, entries) = manifest::read(BufReader::new(file))?;
    let mut by_gateway: BTreeMap<String, Vec<Entry>> =
        ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    for e in entries {
        if let Some(list) = e.t.get("district").and_then(|d| by_gateway.get_mut(d)) {
            list.push(e);
        }
    }
    for (id, entries) in &by_gateway {
        let path = dir.join(format!("{id}.jsonl"));
        let mut out =
            BufWriter::new(File::create(&path).map_err(io(format!("create {}", path.display())))?);
        manifest::write_header(&mut out, header).map_err(io("write manifest"))?;
        for e in entries {
            out.write_all(e.to_line().as_bytes())
                .map_err(io("write manifest"))?;
        }
        out.flush().map_err(io("write manifest"))?;
    }
    Ok(by_gateway)
}

/// Reads `entries` (one gateway's) back from every store node, tagged `gateway=<id>`.
fn read_back(entries: &[Entry], id: &str, stores: &[String]) -> Result<Counts, FleetError> {
    let shape = Shape::of(entries);
    let mut index = StoreIndex::default();
    for url in stores {
        let q = StoreQuery {
            url: url.clone(),
            api: StoreApi::V2,
            database: String::new(),
            gateway_id: Some(id.to_owned()),
        };
        index.merge(verify::fetch(&q, &shape)?);
    }
    Ok(verify::compare_with(entries, &index, false).total())
}

/// Distinct `gateway` labels of the `ioc_gateway_uptime_s` series over the store nodes.
fn health_gateways(stores: &[String], ids: &[String]) -> Option<usize> {
    let agent = http_agent();
    let mut seen = std::collections::BTreeSet::new();
    for url in stores {
        let answer: serde_json::Value = agent
            .get(&format!("{}/api/v1/series", url.trim_end_matches('/')))
            .query("match[]", "ioc_gateway_uptime_s")
            .query("start", "0")
            .call()
            .ok()?
            .into_json()
            .ok()?;
        for s in answer["data"].as_array()? {
            if let Some(g) = s["gateway"].as_str() {
                if ids.iter().any(|id| id == g) {
                    seen.insert(g.to_owned());
                }
            }
        }
    }
    Some(seen.len())
}

/// Runs the fleet: starts the gateways, publishes for `duration`, waits for the backlogs to
/// drain, reads back, stops every gateway. `stop` ends the publishing early (Ctrl-C).
pub fn run(o: &FleetOptions, stop: Arc<AtomicBool>) -> Result<FleetReport, FleetError> {
    if !(1..=999).contains(&o.gateways) {
        return Err(FleetError::Invalid("--gateways must be 1..=999".into()));
    }
    if o.sensors == 0 {
        return Err(FleetError::Invalid("--sensors must be >= 1".into()));
    }
    if !(o.rate_hz > 0.0 && o.rate_hz <= 1000.0) {
        return Err(FleetError::Invalid(
            "--rate must be > 0 and <= 1000 Hz".into(),
        ));
    }
    if !o.gateway_bin.is_file() {
        return Err(FleetError::NoGatewayBinary(o.gateway_bin.clone()));
    }
    let (host, port) = mqtt::parse_broker_url(&o.broker)?;
    broker_reachable(&host, port)?;
    if !(o.store_url.starts_with("http://") || o.store_url.starts_with("https://")) {
        return Err(FleetError::Invalid(format!(
            "--store-url {:?}: expected http://HOST:PORT",
            o.store_url
        )));
    }
    let output_set = parse_output_set(&o.output_set)?;
    std::fs::create_dir_all(&o.dir).map_err(io(format!("create {}", o.dir.display())))?;
    let dir = o
        .dir
        .canonicalize()
        .map_err(io(format!("resolve {}", o.dir.display())))?;
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).map_err(io("create manifests/"))?;
    let threshold = o
        .backlog_threshold
        .unwrap_or(((o.sensors as f64 * o.rate_hz * 5.0).ceil() as u64).max(1));

    // Configs, ports, processes.
    let mut fleet = Fleet {
        members: Vec::new(),
    };
    for i in 0..o.gateways {
        let id = gateway_id(i);
        let http_port = if o.http_base_port == 0 {
            free_port()?
        } else {
            let port = u16::try_from(o.http_base_port as usize + i).map_err(|_| {
                FleetError::Invalid("--http-base-port + --gateways exceeds 65535".into())
            })?;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                return Err(FleetError::PortInUse { port, gateway: id });
            }
            port
        };
        let home = dir.join(&id);
        let data_dir = home.join("data");
        std::fs::create_dir_all(&data_dir).map_err(io(format!("create {}", data_dir.display())))?;
        let spec = GatewaySpec {
            id: id.clone(),
            data_dir,
            http_port,
        };
        let config = home.join("gateway.toml");
        std::fs::write(&config, gateway_config(&spec, o, &output_set))
            .map_err(io(format!("write {}", config.display())))?;
        let log = home.join("gateway.log");
        let out = File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io("clone log handle"))?;
        let mut command = Command::new(&o.gateway_bin);
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("RUST_LOG", &o.gateway_log);
        // Their own process group: a Ctrl-C at the terminal reaches only sensor-sim, which then
        // stops them in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .map_err(io(format!("start {}", o.gateway_bin.display())))?;
        let pid = child.id();
        fleet.members.push(Member {
            figures: GatewayFigures {
                id: id.clone(),
                pid,
                http_port,
                ..Default::default()
            },
            spec,
            child: Some(child),
            pid,
            log,
            steady: SteadyCpu::default(),
        });
    }

    // Ready: every env input connected (its subscription follows the connection at once).
    let agent = http_agent();
    let ready_deadline = Instant::now() + Duration::from_secs(60 + o.gateways as u64);
    for m in &mut fleet.members {
        loop {
            if let Some(Ok(Some(status))) = m.child.as_mut().map(Child::try_wait) {
                m.child = None;
                return Err(m.error(format!("exited at start ({status})")));
            }
            let up = metrics_page(&agent, m.spec.http_port)
                .and_then(|t| metric_sum(&t, "ioc_gateway_input_up", &[("input", "env")]));
            if up == Some(1.0) {
                break;
            }
            if Instant::now() > ready_deadline || stop.load(Ordering::Acquire) {
                return Err(m.error(format!(
                    "its MQTT input did not connect to {} (or /metrics on port {} did not answer)",
                    o.broker, m.spec.http_port
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A moment for the subscriptions to be in place at the broker.
    std::thread::sleep(Duration::from_millis(500));

    // The districts.
    let now_s = unix_ms() / 1000 * 1000;
    let start = crate::civil_time::format_rfc3339_ms(now_s);
    let scenario_path = dir.join("fleet-scenario.toml");
    let text = scenario_text(o.gateways, o.sensors, o.rate_hz, &start);
    std::fs::write(&scenario_path, &text).map_err(io("write fleet-scenario.toml"))?;
    let scenario = Scenario::parse(&text, &scenario_path.display().to_string())?;
    let generator = Generator::new(&scenario, o.seed)?;
    let mut opts = PublishOptions::for_broker(&o.broker)?;
    opts.clients = o.clients.max(1);
    opts.duration = Some(o.duration);
    opts.realtime_from_ms = Some(generator.start_ms());
    opts.client_id_prefix = format!("sensor-sim-fleet-{}", std::process::id());
    let header = Header {
        version: 1,
        scenario: "fleet".into(),
        seed: o.seed,
        qos: 1,
        exclusive: false,
    };
    let all_path = dir.join("manifest-all.jsonl");
    let mut all = BufWriter::new(
        File::create(&all_path).map_err(io(format!("create {}", all_path.display())))?,
    );
    manifest::write_header(&mut all, &header).map_err(io("write manifest"))?;
    let publish_stop = stop.clone();
    let messages = generator.take_while(move |_| !publish_stop.load(Ordering::Acquire));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("start the publisher runtime"))?;
    let started_ms = unix_ms();
    let started = Instant::now();
    let mut publisher = Some(runtime.spawn(mqtt::publish(messages, opts, Box::new(all))));

    // Watch: one sample per second until published and drained (or out of time).
    let mut report = FleetReport {
        gateways: o.gateways,
        sensors: o.sensors,
        rate_hz: o.rate_hz,
        started_ms,
        backlog_threshold: threshold,
        ..Default::default()
    };
    let mut published: Option<Result<mqtt::RunSummary, FleetError>> = None;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let tick = Instant::now();
        let mut sample = BacklogSample {
            at_ms: unix_ms(),
            unsent_lines: 0,
            backlogged: 0,
            silent: 0,
        };
        let elapsed = started.elapsed();
        let mut all_zero = true;
        for m in &mut fleet.members {
            if let Some(Ok(Some(status))) = m.child.as_mut().map(Child::try_wait) {
                m.child = None;
                return Err(m.error(format!("exited during the run ({status})")));
            }
            if let Some(cpu) = proc_cpu_seconds(m.pid) {
                m.figures.cpu_s = cpu;
                m.steady.observe(elapsed, cpu, o.warmup, o.steady_window);
                m.figures.steady_cpu_pct = m.steady.percent();
            }
            m.figures.peak_rss_kib =
                proc_status_kib(m.pid, "VmHWM").unwrap_or(m.figures.peak_rss_kib);
            m.figures.rss_kib = proc_status_kib(m.pid, "VmRSS").unwrap_or(m.figures.rss_kib);
            match metrics_page(&agent, m.spec.http_port) {
                None => {
                    sample.silent += 1;
                    all_zero = false;
                }
                Some(page) => {
                    let unsent = metric_sum(&page, "ioc_gateway_output_buffer_unsent_lines", &[])
                        .or_else(|| metric_sum(&page, "ioc_gateway_buffer_unsent_lines", &[]))
                        .unwrap_or(0.0) as u64;
                    m.figures.accepted = metric_sum(
                        &page,
                        "ioc_gateway_readings_accepted_total",
                        &[("input", "env")],
                    )
                    .unwrap_or(0.0) as u64;
                    m.figures.unsent_lines = unsent;
                    m.figures.peak_unsent_lines = m.figures.peak_unsent_lines.max(unsent);
                    sample.unsent_lines += unsent;
                    if unsent > threshold {
                        sample.backlogged += 1;
                        m.figures.last_backlogged_at_ms = Some(sample.at_ms);
                    }
                    if unsent > 0 {
                        all_zero = false;
                    }
                }
            }
        }
        report.peak_unsent_lines = report.peak_unsent_lines.max(sample.unsent_lines);
        report.backlog_timeline.push(sample);
        if let Some(done) = publisher.take_if(|h| h.is_finished()) {
            report.published_until_ms = unix_ms();
            published = Some(
                runtime
                    .block_on(done)
                    .map_err(|e| FleetError::Invalid(format!("publisher task: {e}")))
                    .and_then(|r| r.map_err(FleetError::from)),
            );
            drain_deadline = Some(Instant::now() + o.drain_timeout);
            if let Some(Ok(summary)) = &published {
                report.sent = summary.acked;
            }
            if let Some(Err(_)) = &published {
                break;
            }
            // The split is needed to know what each gateway must have accepted.
            let by_gateway = split_manifest(&all_path, &manifests, &fleet_ids(&fleet), &header)?;
            for m in &mut fleet.members {
                m.figures.sent = by_gateway.get(&m.spec.id).map_or(0, |e| e.len() as u64);
            }
        }
        if published.is_some() {
            let caught_up = fleet
                .members
                .iter()
                .all(|m| m.figures.accepted >= m.figures.sent);
            if all_zero && caught_up {
                report.drained = true;
                break;
            }
            // Out of time, or Ctrl-C: report what there is, and stop the gateways.
            if drain_deadline.is_some_and(|d| Instant::now() > d) || stop.load(Ordering::Acquire) {
                break;
            }
        }
        if let Some(wait) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let summary = match published {
        Some(r) => r?,
        None => return Err(FleetError::Invalid("publisher did not finish".into())),
    };
    report.sent = summary.acked;
    report.drained_at_ms = drained_at(&report.backlog_timeline);

    // Read back, retrying while a vmagent in front of the nodes may still be forwarding.
    let ids = fleet_ids(&fleet);
    if !o.read_stores.is_empty() {
        let by_gateway = split_manifest(&all_path, &manifests, &ids, &header)?;
        let deadline = Instant::now() + o.readback_timeout;
        loop {
            let mut all_ok = true;
            for m in &mut fleet.members {
                let entries = by_gateway.get(&m.spec.id).map(Vec::as_slice).unwrap_or(&[]);
                let c = read_back(entries, &m.spec.id, &o.read_stores)?;
                m.figures.read_back = Some(ReadBack::of(&c));
                all_ok &= c.ok();
            }
            if all_ok || Instant::now() > deadline || stop.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        report.health_gateways_seen = health_gateways(&o.read_stores, &ids);
    }

    fleet.stop(Duration::from_secs(15));
    report.read_back = fleet
        .members
        .iter()
        .map(|m| m.figures.read_back)
        .try_fold(ReadBack::default(), |sum, r| Some(sum + r?));
    report.accepted = fleet.members.iter().map(|m| m.figures.accepted).sum();
    report.cpu_s = fleet.members.iter().map(|m| m.figures.cpu_s).sum();
    let steady: Vec<f64> = fleet
        .members
        .iter()
        .filter_map(|m| m.figures.steady_cpu_pct)
        .collect();
    if !steady.is_empty() {
        report.steady_cpu_pct_mean = Some(steady.iter().sum::<f64>() / steady.len() as f64);
    }
    let n = fleet.members.len().max(1) as u64;
    report.peak_rss_kib_mean = fleet
        .members
        .iter()
        .map(|m| m.figures.peak_rss_kib)
        .sum::<u64>()
        / n;
    report.peak_rss_kib_max = fleet
        .members
        .iter()
        .map(|m| m.figures.peak_rss_kib)
        .max()
        .unwrap_or(0);
    report.per_gateway = fleet.members.iter().map(|m| m.figures.clone()).collect();
    runtime.shutdown_timeout(Duration::from_secs(2));
    let path = dir.join("fleet-report.json");
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| FleetError::Invalid(format!("report: {e}")))?;
    std::fs::write(&path, json).map_err(io(format!("write {}", path.display())))?;
    Ok(report)
}

fn fleet_ids(fleet: &Fleet) -> Vec<String> {
    fleet.members.iter().map(|m| m.spec.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> FleetOptions {
        FleetOptions {
            gateways: 3,
            sensors: 4,
            rate_hz: 1.0,
            duration: Duration::from_secs(10),
            broker: "mqtt://127.0.0.1:1883".into(),
            store_url: "http://127.0.0.1:8429".into(),
            gateway_bin: "/nonexistent/ioc-gateway".into(),
            dir: "fleet".into(),
            seed: 1,
            http_base_port: 0,
            health_interval_s: 10,
            max_disk_mb: 64,
            output_set: vec![],
            read_stores: vec![],
            drain_timeout: Duration::from_secs(60),
            readback_timeout: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            steady_window: Duration::from_secs(30),
            clients: 2,
            backlog_threshold: None,
            gateway_log: "warn".into(),
        }
    }

    #[test]
    fn config_is_valid_toml_with_extra_output_keys() {
        let o = options();
        let set = parse_output_set(&[
            "flush_jitter_ms=500".to_string(),
            "urls = [\"http://a:1\", \"http://b:2\"]".to_string(),
        ])
        .unwrap();
        let spec = GatewaySpec {
            id: "gw-007".into(),
            data_dir: "/tmp/a \"b\"/data".into(),
            http_port: 18080,
        };
        let text = gateway_config(&spec, &o, &set);
        let table: toml::Table = toml::from_str(&text).unwrap();
        let out = table["output"]["influxdb"].as_table().unwrap();
        assert_eq!(out["flush_jitter_ms"].as_integer(), Some(500));
        assert!(!out.contains_key("url"), "urls replaces url: {text}");
        assert_eq!(out["urls"].as_array().unwrap().len(), 2);
        assert_eq!(
            table["gateway"]["data_dir"].as_str(),
            Some("/tmp/a \"b\"/data")
        );
        let input = &table["inputs"]["mqtt"].as_array().unwrap()[0];
        assert_eq!(
            input["topics"].as_array().unwrap()[0].as_str(),
            Some("city/gw-007/env/+")
        );
        assert_eq!(input["client_id"].as_str(), Some("gw-007-env"));
        assert_eq!(table["http"]["listen"].as_str(), Some("127.0.0.1:18080"));
    }

    #[test]
    fn bad_output_set_items_are_refused_clearly() {
        for bad in ["flush_jitter_ms", "=5", "a b=1", "key=not quoted", "k="] {
            let err = parse_output_set(&[bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--output-set"), "{bad}: {err}");
        }
        let later_wins = parse_output_set(&["a=1".into(), "a=2".into()]).unwrap();
        assert_eq!(later_wins, vec![("a".to_string(), "2".to_string())]);
    }

    #[test]
    fn scenario_gives_each_gateway_its_sensors() {
        let text = scenario_text(3, 4, 2.0, "2026-12-03T00:00:00Z");
        let sc = Scenario::parse(&text, "fleet").unwrap();
        let messages: Vec<_> = Generator::new(&sc, 1).unwrap().take(12 * 4).collect();
        let mut per: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for m in &messages {
            let d = m.entry.t["district"].clone();
            assert!(
                m.topic.starts_with(&format!("city/{d}/env/")),
                "{}",
                m.topic
            );
            per.entry(d)
                .or_default()
                .insert(m.entry.t["sensor_id"].clone());
        }
        assert_eq!(per.len(), 3);
        assert!(per.values().all(|s| s.len() == 4), "{per:?}");
        // 2 Hz: 48 messages of 12 sensors span 2 simulated seconds.
        let span = messages.last().unwrap().entry.ts - messages[0].entry.ts;
        assert!((1000..2000).contains(&span), "{span}");
    }

    #[test]
    fn metrics_are_summed_by_label() {
        let page = "# HELP x\nioc_gateway_output_buffer_unsent_lines{output=\"a\"} 5\n\
                    ioc_gateway_output_buffer_unsent_lines{output=\"b\"} 7\n\
                    ioc_gateway_output_buffer_unsent_lines_other 100\n\
                    ioc_gateway_readings_accepted_total{input=\"env\"} 42\n\
                    ioc_gateway_readings_accepted_total{input=\"health\"} 3\n\
                    ioc_gateway_buffer_unsent_lines 9\n";
        assert_eq!(
            metric_sum(page, "ioc_gateway_output_buffer_unsent_lines", &[]),
            Some(12.0)
        );
        assert_eq!(
            metric_sum(
                page,
                "ioc_gateway_readings_accepted_total",
                &[("input", "env")]
            ),
            Some(42.0)
        );
        assert_eq!(
            metric_sum(page, "ioc_gateway_buffer_unsent_lines", &[]),
            Some(9.0)
        );
        assert_eq!(metric_sum(page, "ioc_gateway_nothing", &[]), None);
    }

    #[test]
    fn proc_texts_parse() {
        let stat = "1234 (ioc gateway) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 99 1000 200";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        let status = "Name:\tioc-gateway\nVmHWM:\t   10876 kB\nVmRSS:\t    9000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(10876));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(9000));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn drain_is_the_first_sample_after_the_last_backlog() {
        let s = |at_ms, backlogged| BacklogSample {
            at_ms,
            unsent_lines: 0,
            backlogged,
            silent: 0,
        };
        assert_eq!(drained_at(&[s(1, 0), s(2, 0)]), None);
        assert_eq!(
            drained_at(&[s(1, 0), s(2, 3), s(3, 1), s(4, 0), s(5, 0)]),
            Some(4)
        );
        assert_eq!(drained_at(&[s(1, 0), s(2, 3)]), None);
    }

    #[test]
    fn steady_cpu_is_measured_over_its_window() {
        let mut s = SteadyCpu::default();
        let (warmup, window) = (Duration::from_secs(10), Duration::from_secs(20));
        s.observe(Duration::from_secs(5), 1.0, warmup, window);
        assert_eq!(s.percent(), None);
        s.observe(Duration::from_secs(10), 2.0, warmup, window);
        s.observe(Duration::from_secs(20), 3.0, warmup, window);
        assert_eq!(s.percent(), Some(10.0));
        s.observe(Duration::from_secs(30), 6.0, warmup, window);
        // 20 s after the start of the window.
        assert!((s.percent().unwrap() - 20.0).abs() < 1e-9);
        s.observe(Duration::from_secs(40), 100.0, warmup, window);
        assert!(
            (s.percent().unwrap() - 20.0).abs() < 1e-9,
            "after the window: unchanged"
        );
    }

    #[test]
    fn unreachable_broker_is_a_clear_error() {
        let port = free_port().unwrap();
        let mut o = options();
        o.gateway_bin = std::env::current_exe().unwrap();
        o.broker = format!("mqtt://127.0.0.1:{port}");
        let err = run(&o, Arc::new(AtomicBool::new(false)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not reachable") && err.contains("--broker"),
            "{err}"
        );
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let err = run(&options(), Arc::new(AtomicBool::new(false)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/ioc-gateway") && err.contains("--gateway-bin"),
            "{err}"
        );
    }
}
