//! A backlog queued at a real mosquitto for the gateway's persistent session drains completely,
//! exactly once and without a stall, whatever the broker's `max_inflight_messages`.
//!
//! Why it exists: a gateway that was down (an update, a power cut, a long store outage) comes back to
//! a broker holding everything published meanwhile. The broker then redelivers as fast as its
//! in-flight window allows: 20 unacknowledged messages by default, 1000 on a tuned broker, and no
//! limit at all with `max_inflight_messages 0`, where the whole queue is pushed at the socket at
//! once. The gateway must take that flood with bounded memory, keep answering the broker's
//! keep-alive (a client silent for 1.5 × keep-alive is disconnected, and its unacked messages come
//! back again), and ack every message once it is durable.
//!
//! What each test does, with the real binaries and servers: mosquitto (`max_queued_messages 0`, so
//! nothing queued is dropped; `max_inflight_messages` 0, 20 or 1000); the gateway connects once so
//! that its persistent session and subscription exist, and is stopped with SIGTERM; `sensor-sim run`
//! publishes N QoS 1 messages, which the broker queues for the session; the gateway starts again
//! with VictoriaMetrics up. Then:
//! - every one of the N readings is in VictoriaMetrics exactly once: `sensor-sim verify` finds 0
//!   missing, 0 mismatched, 0 duplicates, and the store holds no sample beyond the manifest's;
//! - the gateway received exactly N messages (`ioc_gateway_messages_received_total`: a redelivery would count
//!   twice), its log of the drain has no WARN or ERROR line (a stall, a dropped connection, a refused
//!   commit all log at warn or above), `ioc_gateway_mqtt_connection_errors_total` is 0, and the broker's log
//!   shows no keep-alive timeout and exactly one new connection of the gateway for the drain;
//! - printed: drain rate (messages/s from the restart to the moment the last reading is queryable),
//!   the gateway's CPU seconds over that run and µs per message, and its peak RSS.
//!
//! N = 100,000 in the default run (each test well under 90 s on 2 cores). The measurement with
//! N = 1,000,000 for the three settings is `#[ignore]`d:
//!
//! ```sh
//! cargo build --workspace --bins
//! cargo nextest run -p ioc-e2e --test backlog_e2e --run-ignored ignored-only --no-capture
//! # or: cargo test -p ioc-e2e --test backlog_e2e -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `tests/bench/backlog_bench.py` measures the same drain next to `mosquitto_sub` as a baseline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ioc_e2e::steps::{given_a_gateway_subscribed, when_stopped_then_it_exits_cleanly};
use ioc_e2e::{
    free_port, gateway_metrics, metric_in, GatewayProcess, HeavyTestLock, ManifestCounts,
    Mosquitto, RunOptions, SensorSim, StoreApi, VictoriaMetrics,
};

const GATEWAY_ID: &str = "backlog-gw";
const FILTER: &str = "city/+/env/+";
/// The simulated start of every run: readings fall on 2026-11-24 (1 s apart per station).
const SIM_START: &str = "2026-11-24T00:30:00Z";
/// Instant (Unix s) the store is queried at: 2026-11-26T00:00:00Z, with a 3-day window that
/// covers every simulated reading (at most 1000 s after `SIM_START`), whatever today's date.
const QUERY_AT_S: i64 = 1_795_651_200;
const WINDOW: &str = "3d";

fn write_config(dir: &Path, broker: &Mosquitto, vm: &VictoriaMetrics, http: u16) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let text = format!(
        r#"# written by tests/tests/backlog_e2e.rs
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
name = "backlog"
url = "{mqtt}"
client_id = "{GATEWAY_ID}"
topics = ["{FILTER}"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"

[buffer]
max_disk_mb = 2048

[output.influxdb]
url = "{vm}"
api = "v2"
org = "ioc"
bucket = "telemetry"
batch_max_lines = 5000
flush_interval_ms = 200

[http]
listen = "127.0.0.1:{http}"
"#,
        data = data.display(),
        mqtt = broker.url(),
        vm = vm.url(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `pm2_5` samples of this gateway in the store: one per message.
fn stored_readings(vm: &VictoriaMetrics) -> u64 {
    if vm.force_flush().is_err() {
        return 0;
    }
    vm.query_sum(
        &format!("sum(count_over_time(environment_pm2_5{{gateway=\"{GATEWAY_ID}\"}}[{WINDOW}]))"),
        QUERY_AT_S,
    )
    .map(|v| v as u64)
    .unwrap_or(0)
}

/// Lines of the gateway's log at WARN or ERROR level, or that speak of a stall.
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains(" WARN ") || l.contains(" ERROR ") || l.to_lowercase().contains("stalled")
        })
        .collect()
}

/// What one drain measured.
struct Drain {
    messages: u64,
    seconds: f64,
    cpu_s: f64,
    peak_rss_kib: u64,
}

/// The whole scenario for one `max_inflight_messages` setting; `stations` × 1000 messages.
fn backlog_drains_exactly_once(max_inflight: u32, stations: usize, drain_timeout: Duration) {
    let _heavy = HeavyTestLock::acquire();
    let total = Instant::now();
    let n = stations as u64 * 1000;
    let inflight_line = format!("max_inflight_messages {max_inflight}");
    let broker = Mosquitto::start_with_config(&[&inflight_line]).unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = write_config(dir.path(), &broker, &vm, http);
    let mut gateway = given_a_stopped_gateway_with_a_persistent_session(&broker, &config);
    let queued =
        given_messages_queued_at_the_broker_for_its_session(&broker, dir.path(), stations, n);
    eprintln!(
        "max_inflight_messages {max_inflight}: {n} messages queued by sensor-sim in {:.1} s ({:.0} msg/s)",
        queued.seconds, queued.rate
    );
    let drain = when_the_gateway_comes_back_and_drains_the_backlog(
        &mut gateway,
        &broker,
        &vm,
        http,
        n,
        drain_timeout,
    );
    drain.print(max_inflight, n);
    then_the_drain_did_not_stall(&drain, &broker, max_inflight);
    let found =
        then_every_reading_is_stored_exactly_once_and_nothing_else(&queued, &vm, &gateway, n);
    then_each_message_arrived_once_on_one_connection_without_a_warning(&drain, &broker, n);
    when_stopped_then_it_exits_cleanly(&mut gateway, Duration::from_secs(30));
    eprintln!(
        "max_inflight_messages {max_inflight}: verify {found} found, 0 missing, 0 duplicates, 0 extra; test took {:.1} s",
        total.elapsed().as_secs_f64()
    );
}

/// Given: the gateway connected once (its persistent session and subscription now exist) and was
/// stopped with SIGTERM, cleanly.
fn given_a_stopped_gateway_with_a_persistent_session(
    broker: &Mosquitto,
    config: &Path,
) -> GatewayProcess {
    let mut gateway = given_a_gateway_subscribed(broker, config, &[(GATEWAY_ID, FILTER)]);
    when_stopped_then_it_exits_cleanly(&mut gateway, Duration::from_secs(30));
    gateway
}

/// What `sensor-sim run` queued at the broker.
struct Queued {
    manifest: PathBuf,
    counts: ManifestCounts,
    seconds: f64,
    rate: f64,
}

/// Given: `n` QoS 1 messages (`stations` stations, 1 s apart from `SIM_START`) published by
/// `sensor-sim run` and queued at the broker for the stopped session: every one acked, none lost.
fn given_messages_queued_at_the_broker_for_its_session(
    broker: &Mosquitto,
    dir: &Path,
    stations: usize,
    n: u64,
) -> Queued {
    let scenario = SensorSim::env_scenario(dir, "backlog", stations, &["d0", "d1", "d2", "d3"], 1);
    let manifest = dir.join("manifest.jsonl");
    let run = SensorSim::run(
        &scenario,
        &broker.url(),
        7,
        &manifest,
        &RunOptions {
            messages: Some(n),
            rate: Some(0.0),
            qos: Some(1),
            clients: Some(2),
            client_id: Some("backlog-sim".into()),
            start: Some(SIM_START.into()),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        (run.published, run.acked, run.lost),
        (n, n, 0),
        "sensor-sim run: {run:?}"
    );
    let counts = ManifestCounts::read(&manifest).unwrap();
    assert_eq!(counts.stored_points, n);
    Queued {
        manifest,
        counts,
        seconds: run.seconds,
        rate: run.rate,
    }
}

/// What one drain did: the figures, and what the gateway and the broker said meanwhile.
struct DrainRun {
    drain: Drain,
    /// Why the drain stopped before every reading was stored, if it did.
    stall: Option<String>,
    metrics: String,
    /// The gateway's log of the drain run only.
    log: String,
    broker_timeouts: usize,
    connections: usize,
    connection_errors: f64,
}

impl DrainRun {
    /// Prints the drain rate, the gateway's CPU time per message and its peak RSS.
    fn print(&self, max_inflight: u32, n: u64) {
        let drain = &self.drain;
        eprintln!(
            "max_inflight_messages {max_inflight}: {} of {n} readings stored {:.1} s after the restart = {:.0} msg/s; \
             gateway CPU {:.2} s ({:.1} µs/msg), peak RSS {:.1} MiB",
            drain.messages,
            drain.seconds,
            drain.messages as f64 / drain.seconds,
            drain.cpu_s,
            drain.cpu_s * 1e6 / drain.messages.max(1) as f64,
            drain.peak_rss_kib as f64 / 1024.0
        );
    }
}

/// When: the gateway starts again with the store up; the drain is timed until the last reading
/// is queryable, and stops early when the gateway exits, nothing new is stored for 20 s, or
/// `drain_timeout` passes.
fn when_the_gateway_comes_back_and_drains_the_backlog(
    gateway: &mut GatewayProcess,
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
    http: u16,
    n: u64,
    drain_timeout: Duration,
) -> DrainRun {
    let log_before = gateway.log().len();
    let connections_before = broker.connection_count(GATEWAY_ID);
    let started = Instant::now();
    gateway.start_again().unwrap();
    let mut stored = 0;
    let mut last_progress = Instant::now();
    let mut stall = None;
    loop {
        let now_stored = stored_readings(vm);
        if now_stored != stored {
            stored = now_stored;
            last_progress = Instant::now();
        }
        if stored >= n {
            break;
        }
        if !gateway.is_running() {
            stall = Some("the gateway exited".to_string());
            break;
        }
        if last_progress.elapsed() > Duration::from_secs(20) {
            stall = Some(format!("no new reading stored for 20 s at {stored} of {n}"));
            break;
        }
        if started.elapsed() > drain_timeout {
            stall = Some(format!("{drain_timeout:?} passed at {stored} of {n}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let drain = Drain {
        messages: stored,
        seconds: started.elapsed().as_secs_f64(),
        cpu_s: gateway.cpu_seconds().unwrap_or(f64::NAN),
        peak_rss_kib: gateway.peak_rss_kib().unwrap_or(0),
    };
    let metrics = gateway_metrics(http);
    let log = gateway.log()[log_before..].to_string();
    let connection_errors = metric_in(
        &metrics,
        "ioc_gateway_mqtt_connection_errors_total",
        &[("input", "backlog")],
    );
    DrainRun {
        drain,
        stall,
        log,
        broker_timeouts: broker.log_count(&format!("Client {GATEWAY_ID} has exceeded timeout")),
        connections: broker.connection_count(GATEWAY_ID) - connections_before,
        connection_errors,
        metrics,
    }
}

/// Then: the drain reached every reading (else it fails with what the broker and the gateway
/// said).
fn then_the_drain_did_not_stall(run: &DrainRun, broker: &Mosquitto, max_inflight: u32) {
    if let Some(why) = &run.stall {
        panic!(
            "backlog drain stalled with max_inflight_messages {max_inflight}: {why}; \
             broker keep-alive timeouts {}, gateway connections {}, \
             ioc_gateway_mqtt_connection_errors_total {}, ioc_gateway_messages_received_total {}\n\
             --- gateway warnings ---\n{}\n--- broker log ---\n{}",
            run.broker_timeouts,
            run.connections,
            run.connection_errors,
            metric_in(&run.metrics, "ioc_gateway_messages_received_total", &[]),
            warnings(&run.log).join("\n"),
            broker.log_tail(20)
        );
    }
}

/// Then: `sensor-sim verify` finds every one of the `n` readings, none missing, mismatched or
/// duplicated, and the store holds no sample beyond the manifest's (of this gateway, or at all).
/// Returns how many readings verify found.
fn then_every_reading_is_stored_exactly_once_and_nothing_else(
    queued: &Queued,
    vm: &VictoriaMetrics,
    gateway: &GatewayProcess,
    n: u64,
) -> u64 {
    let verdict = SensorSim::verify_until_passed(
        &queued.manifest,
        &vm.url(),
        StoreApi::V2,
        &["--gateway-id", GATEWAY_ID],
        Duration::from_secs(120),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(verdict.passed(), "{verdict}\n{}", gateway.log_tail(30));
    let totals = verdict.counts();
    assert_eq!(
        (
            totals.expected,
            totals.found,
            totals.missing,
            totals.mismatched,
            totals.duplicates
        ),
        (n, n, 0, 0, 0),
        "{verdict}"
    );
    let expected_samples: u64 = queued.counts.field_points["environment"].values().sum();
    vm.force_flush().unwrap();
    let samples = vm
        .query_sum(
            &format!(
                "sum(count_over_time({{__name__=~\"environment_.*\",gateway=\"{GATEWAY_ID}\"}}[{WINDOW}]))"
            ),
            QUERY_AT_S,
        )
        .unwrap() as u64;
    let all_samples = vm
        .query_sum(
            &format!("sum(count_over_time({{__name__=~\".+\"}}[{WINDOW}]))"),
            QUERY_AT_S,
        )
        .unwrap() as u64;
    assert_eq!(
        (samples, all_samples),
        (expected_samples, expected_samples),
        "samples in the store (this gateway, all) vs the manifest: extra points"
    );
    totals.found
}

/// Then: the gateway received exactly `n` messages (a redelivery would count twice), never lost
/// its broker connection, the broker saw no keep-alive timeout and exactly one new connection of
/// the gateway, and the gateway's log of the drain has no warning.
fn then_each_message_arrived_once_on_one_connection_without_a_warning(
    run: &DrainRun,
    broker: &Mosquitto,
    n: u64,
) {
    let received = metric_in(&run.metrics, "ioc_gateway_messages_received_total", &[]);
    assert_eq!(
        received, n as f64,
        "messages the gateway received in the drain run (a redelivery counts twice)"
    );
    assert_eq!(
        run.connection_errors,
        0.0,
        "the gateway lost its broker connection during the drain\n{}",
        warnings(&run.log).join("\n")
    );
    assert_eq!(
        (run.broker_timeouts, run.connections),
        (0, 1),
        "broker keep-alive timeouts, gateway connections during the drain\n--- broker log ---\n{}",
        broker.log_tail(20)
    );
    let warned = warnings(&run.log);
    assert!(
        warned.is_empty(),
        "the gateway warned during the drain:\n{}",
        warned.join("\n")
    );
}

/// `max_inflight_messages 0`: no limit, the broker pushes the whole queue at once.
#[test]
fn backlog_of_100k_drains_exactly_once_with_unlimited_inflight() {
    backlog_drains_exactly_once(0, 100, Duration::from_secs(60));
}

/// `max_inflight_messages 20`: mosquitto's default.
#[test]
fn backlog_of_100k_drains_exactly_once_with_default_inflight() {
    backlog_drains_exactly_once(20, 100, Duration::from_secs(60));
}

/// `max_inflight_messages 1000`.
#[test]
fn backlog_of_100k_drains_exactly_once_with_inflight_1000() {
    backlog_drains_exactly_once(1000, 100, Duration::from_secs(60));
}

#[test]
#[ignore = "a measurement of minutes: cargo nextest run -p ioc-e2e --test backlog_e2e --run-ignored ignored-only --no-capture"]
fn measure_backlog_of_1m_with_unlimited_inflight() {
    backlog_drains_exactly_once(0, 1000, Duration::from_secs(900));
}

#[test]
#[ignore = "a measurement of minutes: cargo nextest run -p ioc-e2e --test backlog_e2e --run-ignored ignored-only --no-capture"]
fn measure_backlog_of_1m_with_default_inflight() {
    backlog_drains_exactly_once(20, 1000, Duration::from_secs(900));
}

#[test]
#[ignore = "a measurement of minutes: cargo nextest run -p ioc-e2e --test backlog_e2e --run-ignored ignored-only --no-capture"]
fn measure_backlog_of_1m_with_inflight_1000() {
    backlog_drains_exactly_once(1000, 1000, Duration::from_secs(900));
}
