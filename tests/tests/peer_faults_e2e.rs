//! The gateway rides out its peers' faults (a slow, failing or hanging store, a garbage-spewing
//! serial port, a store name that does not resolve) without losing or doubling a message, against the real `ioc-gateway` binary, a real mosquitto
//! and a real VictoriaMetrics:
//!
//! 1. **A store slow to accept**: a [`FaultProxy`] holds every write 2.5 s before passing it to
//!    the real store, while MQTT messages come in at full rate for 20 s. The backlog goes to the
//!    disk buffer (its gauge rises), the input keeps taking messages at the broker's pace, the
//!    gateway's memory stays bounded (VmRSS sampled every 100 ms), and once the store is fast
//!    again every message arrives exactly once.
//! 2. **A store that answers 500, then 429 with `Retry-After`, then hangs**, then recovers: the
//!    gateway backs off (requests counted by the proxy), honours `Retry-After`, ends the hung
//!    requests with its configured `timeout_ms` (not the 10 s default), dead-letters nothing, and
//!    every message arrives exactly once.
//! 3. **A serial port spewing garbage at full rate**: a pseudo-terminal written as fast as the
//!    gateway reads it with random bytes, malformed headers and corrupt frames, with valid PMS5003
//!    frames interleaved. The stream is built so that every bad-frame event is known in advance
//!    (see [`GarbageStream`]), so the counts in `/metrics` are asserted exactly, and so are the
//!    valid frames' values in the store. `/healthz` answers throughout, CPU and RSS are reported,
//!    and the log says so once (then at most once a minute), not once per bad frame.
//! 4. **The store's host name does not resolve** (DNS failure) for 10 s, then resolves: the
//!    gateway runs in a private mount namespace (`unshare -m`, root or CAP_SYS_ADMIN; the test
//!    says SKIPPED where that is not allowed) whose `/etc/hosts` is the test's file. It keeps
//!    taking messages, retries with backoff, logs the lookup failure, and delivers everything
//!    exactly once when the name resolves.
//! 5. **A store that sheds load for 30 s**: every write answered `429` with `Retry-After: 2`
//!    while readings keep coming (~166/s): the gateway's requests come in rounds at least 2 s
//!    apart (the `Retry-After` holds every delivery of the sink), the last one is obeyed too,
//!    the end of the window brings no storm (the waiting deliveries in one round, then the
//!    backlog after the drain offset, never more than `max_in_flight` at once), and every
//!    reading is stored exactly once (count and sum per series).
//!
//! Plus a light test of the [`FaultProxy`] itself. The heavy tests take [`HeavyTestLock`] and run
//! in about 11-22 s each (the 30 s window of 5. in about 45 s). Figures (peak RSS, CPU, request counts, recovery times) are printed,
//! and asserted only as generous guards; counts that the test fully determines are exact.

use ioc_e2e::pms5003_oracle::{pms5003_checksum, pms5003_frame, Pms5003Values};
use ioc_e2e::{
    free_port, metric_in, pty, rss_kib, wait_until, Fault, FaultProxy, GatewayProcess,
    HeavyTestLock, Mosquitto, MqttPublisher, ProxiedRequest, VictoriaMetrics,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const GATEWAY_ID: &str = "peer-faults-gw";
const FILTER: &str = "city/+/env/+";
const SENSORS: usize = 20;
/// Generous guard on the gateway's resident memory (the target box has 512 MB for everything).
const RSS_GUARD_KIB: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// The gateway under test.
// ---------------------------------------------------------------------------------------------

struct Gateway {
    process: GatewayProcess,
    http_port: u16,
    data_dir: PathBuf,
    _dir: TempDir,
}

/// A gateway config written to a temp dir: `[gateway]`, the given sections, `[http]` on a free
/// port.
struct GatewayConfig {
    path: PathBuf,
    http_port: u16,
    data_dir: PathBuf,
    dir: TempDir,
}

fn write_config(sections: &str) -> GatewayConfig {
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let http_port = free_port();
    let text = format!(
        "# written by tests/tests/peer_faults_e2e.rs\n[gateway]\nid = \"{GATEWAY_ID}\"\ndata_dir = \"{}\"\n\n{}\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n",
        data_dir.display(),
        sections.trim()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    GatewayConfig {
        path,
        http_port,
        data_dir,
        dir,
    }
}

/// Writes the config and starts the gateway.
/// Waits (10 s at most) for the first write the store accepts through `proxy`.
fn assert_a_write_reaches_the_store(proxy: &FaultProxy, gateway: &Gateway) {
    assert!(
        wait_until(Duration::from_secs(10), || proxy
            .requests()
            .iter()
            .any(|r| r.status == Some(204))),
        "no write reached the store: {}",
        gateway.process.log_tail(20)
    );
}

fn start_gateway(sections: &str) -> Gateway {
    let config = write_config(sections);
    let process = GatewayProcess::spawn(&config.path).unwrap();
    Gateway {
        process,
        http_port: config.http_port,
        data_dir: config.data_dir,
        _dir: config.dir,
    }
}

/// The `[[inputs.mqtt]]` section of the MQTT tests: `{"ts":<ms>,"v":<i>}` → `<measurement>_v`.
fn mqtt_input(broker: &Mosquitto, measurement: &str) -> String {
    // The env input on FILTER (`city/+/env/+`).
    ioc_e2e::gateway_toml::env_input(&broker.url(), GATEWAY_ID, measurement)
}

/// `GET http://127.0.0.1:<port><path>` → (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    match ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Ok(r) => {
            let status = r.status();
            Ok((status, r.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// The Prometheus text of a gateway's `/metrics` (empty when it cannot be fetched).
fn metrics_at(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

impl Gateway {
    fn metrics(&self) -> String {
        metrics_at(self.http_port)
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics(), name, labels)
    }

    fn wait_subscribed(&mut self, broker: &Mosquitto) {
        let ok = broker.wait_for_subscription(GATEWAY_ID, FILTER, 0, Duration::from_secs(20));
        assert!(
            ok,
            "the gateway did not subscribe (running: {}):\n{}",
            self.process.is_running(),
            self.process.log_tail(40)
        );
    }

    fn pid(&self) -> u32 {
        self.process.pid().expect("gateway running")
    }
}

// ---------------------------------------------------------------------------------------------
// Process figures from /proc.
// ---------------------------------------------------------------------------------------------

/// Samples a process's VmRSS every 100 ms until stopped; `stop` returns (peak KiB, samples).
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, usize)>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0usize);
            while !flag.load(Ordering::SeqCst) {
                if let Some(kib) = rss_kib(pid) {
                    peak = peak.max(kib);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (peak, samples)
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> (u64, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT load and the exactly-once check.
// ---------------------------------------------------------------------------------------------

/// Message `i`: sensor `i % SENSORS`, a unique millisecond timestamp per sensor, value `i`.
fn message(i: usize, base_ms: i64) -> (String, String) {
    let ts = base_ms + (i / SENSORS) as i64;
    let topic = format!("city/d{}/env/s{:02}", i % 4, i % SENSORS);
    (topic, format!("{{\"ts\":{ts},\"v\":{i}}}"))
}

/// Publishes one message every `pace` from a thread until `stop` is set; returns the publisher.
fn spawn_publisher(
    broker: &Mosquitto,
    client_id: &'static str,
    pace: Duration,
    base_ms: i64,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicUsize>,
) -> JoinHandle<MqttPublisher> {
    let url = broker.url();
    std::thread::spawn(move || {
        let mut p = MqttPublisher::connect(&url, client_id).unwrap();
        let start = Instant::now();
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let (topic, payload) = message(i, base_ms);
            p.publish(&topic, payload).unwrap();
            i += 1;
            published.store(i, Ordering::SeqCst);
            let due = start + pace * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        p
    })
}

/// Waits until VictoriaMetrics holds every message the broker acknowledged, then checks each is
/// there exactly once with its value (the store deduplicates same-millisecond replays, so
/// "exactly once" is: no acknowledged message missing, no point that was never published).
/// Returns how long it took.
fn assert_exactly_once(
    vm: &VictoriaMetrics,
    measurement: &str,
    publisher: &MqttPublisher,
    base_ms: i64,
    log_tail: &dyn Fn() -> String,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let flags = publisher.acked_flags();
    let acked: Vec<usize> = (0..flags.len()).filter(|i| flags[*i]).collect();
    assert_eq!(
        acked.len(),
        flags.len(),
        "every message acked by the broker"
    );
    let selector = format!("{{__name__=\"{measurement}_v\"}}");
    let all_in = wait_until(timeout, || {
        vm.count_points(&selector).unwrap_or(0) >= acked.len()
    });
    let took = started.elapsed();
    let series = vm.export(&selector).unwrap();
    let mut got: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for s in &series {
        assert_eq!(s.label("gateway"), Some(GATEWAY_ID), "{:?}", s.labels);
        let points = got
            .entry(s.label("sensor_id").unwrap_or_default().to_owned())
            .or_default();
        for (ts, v) in s.timestamps_ms.iter().zip(&s.values) {
            assert!(points.insert(*ts, *v).is_none(), "timestamp {ts} twice");
        }
    }
    let stored: usize = got.values().map(BTreeMap::len).sum();
    assert!(
        all_in,
        "only {stored} of {} messages arrived\n--- gateway log ---\n{}",
        acked.len(),
        log_tail()
    );
    let mut missing = Vec::new();
    for &i in &acked {
        let (topic, _) = message(i, base_ms);
        let sensor = topic.rsplit('/').next().unwrap_or_default();
        let ts = base_ms + (i / SENSORS) as i64;
        match got.get(sensor).and_then(|p| p.get(&ts)) {
            Some(v) => assert_eq!(*v, i as f64, "{sensor} at {ts}"),
            None => missing.push(i),
        }
    }
    assert!(
        missing.is_empty(),
        "{} messages missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(stored, acked.len(), "points that were never published");
    assert_eq!(series.len(), SENSORS, "one series per sensor");
    took
}

// ---------------------------------------------------------------------------------------------
// 0. The fault proxy itself (light): what the other tests rely on.
// ---------------------------------------------------------------------------------------------

#[test]
fn fault_proxy_forwards_to_the_real_store_and_injects_each_fault() {
    let vm = VictoriaMetrics::start().unwrap();
    let proxy = FaultProxy::start(vm.port()).unwrap();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(800))
        .build();
    // → (status, Retry-After), or the transport error.
    let write = |line: &str| -> Result<(u16, Option<String>), String> {
        let answer = agent
            .post(&format!("{}/api/v2/write?precision=ns", proxy.url()))
            .send_string(line);
        match answer {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                Ok((r.status(), r.header("retry-after").map(str::to_owned)))
            }
            Err(e) => Err(e.to_string()),
        }
    };
    // Forwarded, twice on one keep-alive connection: the real store has both points.
    assert_eq!(write("proxy_t v=1 1700000000000000000"), Ok((204, None)));
    assert_eq!(write("proxy_t v=2 1700000001000000000"), Ok((204, None)));
    vm.force_flush().unwrap();
    let series = vm.export("{__name__=\"proxy_t_v\"}").unwrap();
    assert_eq!(series[0].values, vec![1.0, 2.0]);
    // Injected statuses, with Retry-After; nothing reaches the store.
    proxy.set_fault(Fault::Status {
        status: 429,
        retry_after_s: Some(7),
    });
    assert_eq!(
        write("proxy_t v=3 1700000002000000000"),
        Ok((429, Some("7".to_owned())))
    );
    // A hang ends when the client gives up (its 800 ms timeout).
    proxy.set_fault(Fault::Hang);
    assert!(write("proxy_t v=4 1700000003000000000").is_err());
    // A delay holds the request, then forwards it.
    proxy.set_fault(Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let slow = ureq::post(&format!("{}/api/v2/write?precision=ns", proxy.url()))
        .send_string("proxy_t v=5 1700000004000000000")
        .unwrap();
    assert_eq!(slow.status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(wait_until(Duration::from_secs(5), || proxy
        .requests()
        .iter()
        .any(|r| r.client_gave_up)));
    vm.force_flush().unwrap();
    let series = vm.export("{__name__=\"proxy_t_v\"}").unwrap();
    assert_eq!(series[0].values, vec![1.0, 2.0, 5.0]);
    let requests = proxy.requests();
    let summary: Vec<(Fault, Option<u16>, bool)> = requests
        .iter()
        .map(|r| (r.fault, r.status, r.client_gave_up))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Fault::None, Some(204), false),
            (Fault::None, Some(204), false),
            (
                Fault::Status {
                    status: 429,
                    retry_after_s: Some(7)
                },
                Some(429),
                false
            ),
            (Fault::Hang, None, true),
            (Fault::Delay(Duration::from_millis(300)), Some(204), false),
        ]
    );
    let hang = &requests[3];
    let lasted = hang.ended.unwrap() - hang.arrived;
    assert!(lasted >= Duration::from_millis(700) && lasted < Duration::from_secs(5));
    assert!(requests[0].request_line.starts_with("POST /api/v2/write"));
}

// ---------------------------------------------------------------------------------------------
// 1. A store slow to accept.
// ---------------------------------------------------------------------------------------------

/// How long the proxy holds each write before the real store sees it.
const SLOW_STORE_DELAY: Duration = Duration::from_millis(2500);
const SLOW_BATCH_LINES: u32 = 1000;
/// Full input rate for this test: 2,000 messages a second for 20 s.
const FLOOD_PACE: Duration = Duration::from_micros(500);
const FLOOD_TIME: Duration = Duration::from_secs(20);

#[test]
fn slow_store_backlog_goes_to_disk_memory_stays_bounded_and_all_arrives_once() {
    let _heavy = HeavyTestLock::acquire();
    let test_started = Instant::now();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let proxy = FaultProxy::start(vm.port()).unwrap();
    proxy.set_fault(Fault::Delay(SLOW_STORE_DELAY));
    let mut gateway = start_gateway(&format!(
        "{}\n[output.influxdb]\nurl = \"{}\"\nbucket = \"telemetry\"\nbatch_max_lines = {SLOW_BATCH_LINES}\nflush_interval_ms = 200\ntimeout_ms = 10000\n",
        mqtt_input(&broker, "slow"),
        proxy.url()
    ));
    gateway.wait_subscribed(&broker);
    let rss = RssSampler::start(gateway.pid());
    let base_ms = ioc_e2e::now_ms() - 3_600_000;

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = spawn_publisher(
        &broker,
        "slow-pub",
        FLOOD_PACE,
        base_ms,
        Arc::clone(&stop),
        Arc::clone(&published),
    );
    // Watch the buffer and the input while the flood lasts.
    let flood_started = Instant::now();
    let (mut peak_backlog, mut peak_buffer_bytes, mut worst_lag) = (0f64, 0f64, 0f64);
    while flood_started.elapsed() < FLOOD_TIME {
        std::thread::sleep(Duration::from_millis(500));
        let text = gateway.metrics();
        let received = metric_in(
            &text,
            "ioc_gateway_messages_received_total",
            &[("input", "mqtt0")],
        );
        let sent = published.load(Ordering::SeqCst) as f64;
        worst_lag = worst_lag.max(sent - received);
        peak_backlog = peak_backlog.max(metric_in(
            &text,
            "ioc_gateway_buffer_readings",
            &[("class", "normal")],
        ));
        peak_buffer_bytes =
            peak_buffer_bytes.max(metric_in(&text, "ioc_gateway_buffer_bytes", &[]));
    }
    stop.store(true, Ordering::SeqCst);
    let publisher = publisher.join().unwrap();
    let flood_time = flood_started.elapsed();
    let total = publisher.published();
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));

    // The input is served at the broker's pace although the store is still slow.
    let caught_up = wait_until(Duration::from_secs(10), || {
        gateway.metric("ioc_gateway_messages_received_total", &[("input", "mqtt0")]) >= total as f64
    });
    let ingest_done = flood_started.elapsed();
    // Everything received is either delivered or waiting in the buffer (the gauge follows the
    // commit, a moment after the receive counter).
    let (mut delivered_while_slow, mut backlog_now) = (0.0, 0.0);
    let accounted = wait_until(Duration::from_secs(5), || {
        let text = gateway.metrics();
        delivered_while_slow = metric_in(&text, "ioc_gateway_output_lines_sent_total", &[]);
        backlog_now = metric_in(&text, "ioc_gateway_buffer_readings", &[("class", "normal")]);
        backlog_now + delivered_while_slow >= total as f64
    });
    let slow_requests = proxy.requests().len();
    assert!(
        caught_up,
        "the input fell behind: {} of {total} received\n{}",
        gateway.metric("ioc_gateway_messages_received_total", &[("input", "mqtt0")]),
        gateway.process.log_tail(30)
    );
    eprintln!(
        "slow store: {total} messages published in {flood_time:.1?} ({:.0}/s); all received by \
         the gateway {ingest_done:.1?} after the start (worst lag while publishing: {worst_lag} \
         messages); the store took {delivered_while_slow} lines in {slow_requests} requests \
         meanwhile; backlog peak {peak_backlog} lines, {:.1} MiB on disk",
        total as f64 / flood_time.as_secs_f64(),
        peak_buffer_bytes / (1024.0 * 1024.0)
    );
    // The store (one 1,000-line batch per 2.5 s at most) was the bottleneck, so the backlog
    // waited on disk rather than holding back the input.
    assert!(total >= 30_000, "too little load: {total} messages");
    assert!(
        delivered_while_slow <= (SLOW_BATCH_LINES as usize * (slow_requests + 1)) as f64,
        "more lines delivered than the slow store could take"
    );
    assert!(
        peak_backlog.max(backlog_now) >= 10_000.0,
        "the disk buffer's backlog never rose (peak {peak_backlog})"
    );
    assert!(
        accounted,
        "backlog {backlog_now} + delivered {delivered_while_slow} < received {total}"
    );

    // The store is fast again: everything arrives, exactly once.
    proxy.set_fault(Fault::None);
    let recovery = assert_exactly_once(
        &vm,
        "slow",
        &publisher,
        base_ms,
        &|| gateway.process.log_tail(40),
        Duration::from_secs(45),
    );
    let drained = wait_until(Duration::from_secs(10), || {
        gateway.metric("ioc_gateway_buffer_readings", &[("class", "normal")]) == 0.0
    });
    assert!(drained, "the buffer's backlog did not drain to 0");
    let (peak_rss, samples) = rss.stop();
    assert!(gateway.process.is_running());
    let requests = proxy.requests();
    eprintln!(
        "slow store: after the store sped up, all {total} messages were in it within \
         {recovery:.1?} ({} requests in all, {} while slow); gateway peak VmRSS {:.1} MiB over \
         {samples} samples; test wall time {:.1?}",
        requests.len(),
        slow_requests,
        peak_rss as f64 / 1024.0,
        test_started.elapsed()
    );
    assert!(
        peak_rss < RSS_GUARD_KIB,
        "peak RSS {peak_rss} KiB above the {RSS_GUARD_KIB} KiB guard"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A store that answers 500, then 429 with Retry-After, then hangs, then recovers.
// ---------------------------------------------------------------------------------------------

const FAULT_TIMEOUT_MS: u64 = 1500;
const RETRY_AFTER_S: u64 = 2;

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn fmt_gaps(gaps: &[Duration]) -> String {
    let parts: Vec<String> = gaps
        .iter()
        .map(|g| format!("{:.2}", g.as_secs_f64()))
        .collect();
    format!("[{}] s", parts.join(", "))
}

#[test]
fn store_500_then_429_then_hang_is_retried_with_backoff_and_nothing_is_lost() {
    let _heavy = HeavyTestLock::acquire();
    let test_started = Instant::now();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let proxy = FaultProxy::start(vm.port()).unwrap();
    let mut gateway = start_gateway(&format!(
        "{}\n[output.influxdb]\nurl = \"{}\"\nbucket = \"telemetry\"\nflush_interval_ms = 200\ntimeout_ms = {FAULT_TIMEOUT_MS}\n",
        mqtt_input(&broker, "faulty"),
        proxy.url()
    ));
    gateway.wait_subscribed(&broker);
    let base_ms = ioc_e2e::now_ms() - 3_600_000;
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = spawn_publisher(
        &broker,
        "faulty-pub",
        Duration::from_millis(5),
        base_ms,
        Arc::clone(&stop),
        Arc::clone(&published),
    );
    // A first batch goes through normally.
    assert_a_write_reaches_the_store(&proxy, &gateway);
    let phases = [
        (
            "500",
            Fault::Status {
                status: 500,
                retry_after_s: None,
            },
            Duration::from_secs(5),
        ),
        (
            "429",
            Fault::Status {
                status: 429,
                retry_after_s: Some(RETRY_AFTER_S),
            },
            Duration::from_secs(8),
        ),
        ("hang", Fault::Hang, Duration::from_secs(6)),
    ];
    for (name, fault, length) in phases {
        proxy.set_fault(fault);
        eprintln!("store fault: {name} for {length:?}");
        std::thread::sleep(length);
    }
    proxy.set_fault(Fault::None);
    let recovered_at = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let publisher = publisher.join().unwrap();
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    let delivery = assert_exactly_once(
        &vm,
        "faulty",
        &publisher,
        base_ms,
        &|| gateway.process.log_tail(40),
        Duration::from_secs(30),
    );
    let recovery = recovered_at.elapsed();

    let requests = proxy.requests();
    let of = |f: &dyn Fn(&ProxiedRequest) -> bool| -> Vec<ProxiedRequest> {
        requests.iter().filter(|r| f(r)).cloned().collect()
    };
    let r500 = of(&|r| r.status == Some(500));
    let r429 = of(&|r| r.status == Some(429));
    let hung = of(&|r| r.fault == Fault::Hang);
    let ok = of(&|r| r.status.is_some_and(|s| (200..300).contains(&s)));
    // From each round of requests (see `rounds`: deliveries woken by the end of one hold
    // that each went before the other's answer could hold it) answered 429 to the next round.
    let all_rounds = rounds(&requests);
    let after_429: Vec<Duration> = all_rounds
        .windows(2)
        .filter(|w| w[0].iter().any(|r| r.status == Some(429)))
        .map(|w| w[1][0].arrived - w[0][0].arrived)
        .collect();
    let hang_times: Vec<Duration> = hung
        .iter()
        .filter_map(|r| r.ended.map(|e| e - r.arrived))
        .collect();
    let first_ok_after = ok
        .iter()
        .find(|r| r.arrived >= recovered_at)
        .map(|r| r.arrived - recovered_at);
    eprintln!(
        "store faults: {} requests in all: {} ok, {} answered 500 (gaps {}), {} answered 429 \
         (Retry-After {RETRY_AFTER_S} s; next round of requests after {}), {} hung (ended by the client \
         after {}); first accepted write {first_ok_after:.2?} after the store recovered; every \
         message stored {delivery:.1?} later; test wall time {:.1?}",
        requests.len(),
        ok.len(),
        r500.len(),
        fmt_gaps(&gaps(&r500.iter().map(|r| r.arrived).collect::<Vec<_>>())),
        r429.len(),
        fmt_gaps(&after_429),
        hung.len(),
        fmt_gaps(&hang_times),
        test_started.elapsed()
    );
    let _ = recovery;

    // Backoff: a handful of attempts per phase, not a hot loop.
    assert!(
        (2..=20).contains(&r500.len()),
        "{} requests during 5 s of 500s",
        r500.len()
    );
    assert!(
        (2..=8).contains(&r429.len()),
        "{} requests during 8 s of 429s",
        r429.len()
    );
    // Retry-After is a floor: the gateway sleeps it in full before trying again.
    for gap in &after_429 {
        assert!(
            *gap >= Duration::from_millis(RETRY_AFTER_S * 1000 - 50),
            "a request came {gap:?} after a 429 with Retry-After: {RETRY_AFTER_S}"
        );
    }
    // The hung requests were ended by the gateway's configured timeout (1.5 s), not by the
    // 10 s default nor by the proxy.
    assert!(!hung.is_empty(), "no request hung");
    assert_eq!(hang_times.len(), hung.len(), "a hung request never ended");
    assert!(hung.iter().all(|r| r.client_gave_up));
    for t in &hang_times {
        assert!(
            *t >= Duration::from_millis(FAULT_TIMEOUT_MS - 100) && *t < Duration::from_secs(6),
            "a hung request lasted {t:?}; timeout_ms = {FAULT_TIMEOUT_MS}"
        );
    }
    // The gateway counted each failed attempt under its reason, exactly.
    let text = gateway.metrics();
    let failed = |reason: &str| {
        metric_in(
            &text,
            "ioc_gateway_output_batches_failed_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(failed("server_error"), r500.len() as f64);
    assert_eq!(failed("throttled"), r429.len() as f64);
    assert_eq!(failed("timeout"), hung.len() as f64);
    assert_eq!(failed("bad_batch"), 0.0);
    // Nothing dead-lettered.
    assert_eq!(
        metric_in(&text, "ioc_gateway_output_dead_lettered_lines_total", &[]),
        0.0
    );
    assert!(!gateway.data_dir.join("dead-letter.lp").exists());
    assert!(gateway.process.is_running());
}

// ---------------------------------------------------------------------------------------------
// 3. A serial port spewing garbage at full rate.
// ---------------------------------------------------------------------------------------------

/// Bytes waiting to be read on the terminal side (what the gateway has not read yet).
fn unread_bytes(slave: &OwnedFd) -> i32 {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to a live c_int; the
    // descriptor is open for the duration of the call.
    let rc = unsafe { nix::libc::ioctl(slave.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    if rc < 0 {
        -1
    } else {
        n
    }
}

/// xorshift64*: reproducible garbage from a printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A byte that can never start a PMS5003 header (`42 4d`): anything but 0x42.
    fn safe_byte(&mut self) -> u8 {
        let b = (self.next() >> 24) as u8;
        if b == 0x42 {
            0x43
        } else {
            b
        }
    }
}

/// A valid PMS5003 frame carrying `seq` (n0_3 = seq, pm2_5 = seq % 1000, pm10 = seq % 997).
fn good_frame(seq: u16) -> [u8; 32] {
    // built with the harness's independent encoder, not the codec the gateway decodes with
    pms5003_frame(&Pms5003Values {
        atmospheric: [1, seq % 1000, seq % 997],
        counts: [seq, 0, 0, 0, 0, 0],
        reserved: 0x9700,
        ..Pms5003Values::default()
    })
}

/// The flood, built so that the decoder's every bad-frame event is known in advance. The stream
/// is `noise X noise X noise X ...`, where a noise run never holds 0x42 (so no header can form in
/// it) and each X is a valid frame, a header with a wrong length field (`42 4d` + two bytes
/// other than `00 1c`, none 0x42), or a full frame with a wrong checksum and no 0x42 after its
/// header. The decoder then reports: every X flushes the run before it as one bad event (reason
/// `length` if the X before it was a wrong-length header, whose bytes the run continues, else
/// `noise`), and every corrupt frame as one `checksum` event. So:
/// `noise = good + checksum_frames`, `length = length_headers`, `checksum = checksum_frames`,
/// `truncated = 0`, independent of how the reads split the stream.
#[derive(Default, Debug)]
struct GarbageStream {
    good: u64,
    length_headers: u64,
    checksum_frames: u64,
    bytes: u64,
}

impl GarbageStream {
    fn noise(&mut self, rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
        out.extend((0..len.max(1)).map(|_| rng.safe_byte()));
    }

    fn bad_length_header(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        let mut len = [rng.safe_byte(), rng.safe_byte()];
        if len == [0x00, 0x1c] {
            len[1] = 0x1d;
        }
        out.extend([0x42, 0x4d, len[0], len[1]]);
        self.length_headers += 1;
    }

    fn bad_checksum_frame(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        let mut frame = [0u8; 32];
        frame[..4].copy_from_slice(&[0x42, 0x4d, 0x00, 0x1c]);
        for b in &mut frame[4..30] {
            *b = rng.safe_byte();
        }
        let sum = pms5003_checksum(&frame[..30]);
        let mut wrong = sum.wrapping_add(1 + rng.below(1000) as u16);
        while wrong.to_be_bytes().contains(&0x42) {
            wrong = wrong.wrapping_add(1);
        }
        if wrong == sum {
            wrong = wrong.wrapping_add(3);
        }
        frame[30..].copy_from_slice(&wrong.to_be_bytes());
        out.extend_from_slice(&frame);
        self.checksum_frames += 1;
    }
}

fn serial_input(path: &std::path::Path) -> String {
    format!(
        "[[inputs.serial]]\nname = \"flood\"\nport = \"{}\"\nbaud = 115200\nprotocol = \"pms5003\"\nsensor_id = \"pm-flood\"\n",
        path.display()
    )
}

/// How long the garbage flood lasts.
const SERIAL_FLOOD_TIME: Duration = Duration::from_secs(10);

#[test]
fn serial_port_spewing_garbage_keeps_the_gateway_up_and_every_valid_frame_decodes() {
    let _heavy = HeavyTestLock::acquire();
    let test_started = Instant::now();
    let vm = VictoriaMetrics::start().unwrap();
    let mut port = pty();
    let mut gateway = start_gateway(&format!(
        "{}\n[output.influxdb]\nurl = \"{}\"\nbucket = \"telemetry\"\nflush_interval_ms = 200\n",
        serial_input(&port.path),
        vm.url()
    ));
    let up = wait_until(Duration::from_secs(20), || {
        gateway.metric("ioc_gateway_serial_port_up", &[("port", "flood")]) == 1.0
    });
    assert!(
        up,
        "the serial port did not come up:\n{}",
        gateway.process.log_tail(30)
    );
    let seed = std::env::var("GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| ioc_e2e::now_ms() as u64 | 1);
    eprintln!("garbage seed: {seed} (GARBAGE_SEED={seed} to replay)");

    // Health checks every 200 ms while the flood lasts.
    let flooding = Arc::new(AtomicBool::new(true));
    let health = {
        let flooding = Arc::clone(&flooding);
        let port = gateway.http_port;
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut slowest) = (0u32, Vec::new(), Duration::ZERO);
            while flooding.load(Ordering::SeqCst) {
                let started = Instant::now();
                match ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
                    .timeout(Duration::from_secs(2))
                    .call()
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
                slowest = slowest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(200));
            }
            (ok, failed, slowest)
        })
    };
    let rss = RssSampler::start(gateway.pid());
    let log_lines_before = gateway.process.log().lines().count();
    let cpu_before = gateway.process.cpu_seconds().unwrap();

    // The flood: write as fast as the gateway reads. Between two valid frames the writer waits
    // until the gateway has read everything (FIONREAD on the terminal side is 0), then writes
    // 5 ms more noise: so no two valid frames share a millisecond of receive time (the store
    // keeps one point per series and millisecond).
    let mut rng = Rng(seed);
    let mut stream = GarbageStream::default();
    let mut chunk = Vec::with_capacity(64 * 1024);
    let mut gate_timeouts = 0u32;
    let flood_started = Instant::now();
    stream.noise(&mut rng, 100, &mut chunk);
    while flood_started.elapsed() < SERIAL_FLOOD_TIME && stream.good < 60_000 {
        // Garbage: 8-40 bad pieces, each followed by a noise run.
        for _ in 0..8 + rng.below(33) {
            if rng.below(2) == 0 {
                stream.bad_length_header(&mut rng, &mut chunk);
            } else {
                stream.bad_checksum_frame(&mut rng, &mut chunk);
            }
            let len = 1 + rng.below(600) as usize;
            stream.noise(&mut rng, len, &mut chunk);
        }
        port.master.write_all(&chunk).unwrap();
        stream.bytes += chunk.len() as u64;
        chunk.clear();
        // Wait for the gateway to read it all (twice 0, 1 ms apart), at most 500 ms.
        let gate = Instant::now();
        let mut zeros = 0;
        while zeros < 2 {
            if unread_bytes(&port.slave) == 0 {
                zeros += 1;
            } else {
                zeros = 0;
            }
            if gate.elapsed() > Duration::from_millis(500) {
                gate_timeouts += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let margin = Instant::now();
        while margin.elapsed() < Duration::from_millis(5) {
            stream.noise(&mut rng, 512, &mut chunk);
            port.master.write_all(&chunk).unwrap();
            stream.bytes += chunk.len() as u64;
            chunk.clear();
        }
        stream.good += 1;
        let frame = good_frame(stream.good as u16);
        chunk.extend_from_slice(&frame);
        let len = 1 + rng.below(600) as usize;
        stream.noise(&mut rng, len, &mut chunk);
        port.master.write_all(&chunk).unwrap();
        stream.bytes += chunk.len() as u64;
        chunk.clear();
    }
    let flood_time = flood_started.elapsed();
    // Let the gateway read the rest.
    wait_until(Duration::from_secs(5), || unread_bytes(&port.slave) == 0);
    let cpu = gateway.process.cpu_seconds().unwrap() - cpu_before;
    flooding.store(false, Ordering::SeqCst);
    let (health_ok, health_failed, slowest_health) = health.join().unwrap();
    let flood_log: Vec<String> = gateway
        .process
        .log()
        .lines()
        .skip(log_lines_before)
        .map(str::to_owned)
        .collect();
    let log_lines = flood_log.len();
    let bad_frame_reports: Vec<&String> = flood_log
        .iter()
        .filter(|l| l.contains("bad frames (") && l.contains("flood"))
        .collect();

    assert!(
        gateway.process.is_running(),
        "the gateway died:\n{}",
        gateway.process.log_tail(30)
    );
    // Every bad-frame event as constructed, exactly.
    let expect_noise = stream.good + stream.checksum_frames;
    let bad = |reason: &str| {
        gateway.metric(
            "ioc_gateway_serial_frames_bad_total",
            &[("port", "flood"), ("reason", reason)],
        )
    };
    let counted = wait_until(Duration::from_secs(10), || {
        gateway.metric(
            "ioc_gateway_serial_frames_total",
            &[("port", "flood"), ("result", "ok")],
        ) >= stream.good as f64
            && bad("noise") >= expect_noise as f64
    });
    let text = gateway.metrics();
    let ok_frames = metric_in(
        &text,
        "ioc_gateway_serial_frames_total",
        &[("port", "flood"), ("result", "ok")],
    );
    let bad_total = metric_in(
        &text,
        "ioc_gateway_serial_frames_total",
        &[("port", "flood"), ("result", "bad")],
    );
    let (peak_rss, samples) = rss.stop();
    eprintln!(
        "garbage flood: {:.1} MiB in {flood_time:.1?} ({:.2} MiB/s), {} valid frames among \
         {bad_total} bad-frame events ({} wrong-length headers, {} bad checksums); gateway CPU \
         {:.0}% of a core ({:.2} CPU-s per MiB); peak VmRSS {:.1} MiB ({samples} samples); \
         /healthz answered {health_ok} times, slowest {slowest_health:.1?}; {log_lines} log \
         lines during the flood; {gate_timeouts} gate timeouts",
        stream.bytes as f64 / (1024.0 * 1024.0),
        stream.bytes as f64 / (1024.0 * 1024.0) / flood_time.as_secs_f64(),
        stream.good,
        stream.length_headers,
        stream.checksum_frames,
        100.0 * cpu / flood_time.as_secs_f64(),
        cpu / (stream.bytes as f64 / (1024.0 * 1024.0)),
        peak_rss as f64 / 1024.0,
    );
    assert!(counted, "frame counters did not reach the expected values");
    assert!(
        health_failed.is_empty() && health_ok >= 10,
        "/healthz failed during the flood: {health_failed:?} ({health_ok} ok)"
    );
    assert!(stream.good >= 100, "too few valid frames: {}", stream.good);
    assert_eq!(ok_frames, stream.good as f64, "valid frames decoded");
    assert_eq!(bad("noise"), expect_noise as f64, "noise runs");
    assert_eq!(
        bad("length"),
        stream.length_headers as f64,
        "wrong-length headers"
    );
    assert_eq!(
        bad("checksum"),
        stream.checksum_frames as f64,
        "bad checksums"
    );
    assert_eq!(bad("truncated"), 0.0, "truncated frames");
    assert_eq!(
        bad_total,
        (expect_noise + stream.length_headers + stream.checksum_frames) as f64
    );
    eprintln!(
        "garbage flood: the log said: {}",
        bad_frame_reports.first().map_or("-", |l| l.as_str())
    );
    // Logs: one warning when the garbage starts, then at most one summary a minute (none more
    // in a 10 s flood); each bad frame is only a debug line.
    assert_eq!(
        bad_frame_reports.len(),
        1,
        "bad-frame reports during the flood: {bad_frame_reports:#?}"
    );
    assert!(
        log_lines <= 5 && (log_lines as f64) < bad_total / 1000.0,
        "{log_lines} log lines for {bad_total} bad frames:\n{}",
        flood_log.join("\n")
    );
    assert!(
        peak_rss < RSS_GUARD_KIB,
        "peak RSS {peak_rss} KiB above the {RSS_GUARD_KIB} KiB guard"
    );
    // CPU: bounded by the one task reading the port (plus the buffer and HTTP threads).
    assert!(
        cpu / flood_time.as_secs_f64() < 1.5,
        "the gateway used {:.0}% of a core",
        100.0 * cpu / flood_time.as_secs_f64()
    );

    // Every valid frame reached the store once, with its values.
    let selector = r#"{__name__="air_quality_n0_3",sensor_id="pm-flood"}"#;
    let all_in = wait_until(Duration::from_secs(30), || {
        vm.count_points(selector).unwrap_or(0) >= stream.good as usize
    });
    let series = vm.export(selector).unwrap();
    assert!(all_in, "{series:?}");
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].label("gateway"), Some(GATEWAY_ID));
    let expected: Vec<f64> = (1..=stream.good).map(|s| s as f64).collect();
    assert_eq!(
        series[0].values, expected,
        "n0_3 = frame sequence, in order"
    );
    let pm25 = vm
        .export(r#"{__name__="air_quality_pm2_5",sensor_id="pm-flood"}"#)
        .unwrap();
    let expected: Vec<f64> = (1..=stream.good).map(|s| (s % 1000) as f64).collect();
    assert_eq!(pm25.len(), 1);
    assert_eq!(pm25[0].values, expected);
    drop(port);
    eprintln!(
        "garbage flood: test wall time {:.1?}",
        test_started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. DNS failure: the store's name does not resolve for a while.
// ---------------------------------------------------------------------------------------------

/// The store's host name in this test: `.invalid` never resolves in DNS (RFC 6761), so only the
/// test's own hosts file can make it resolve.
const STORE_HOST: &str = "ioc-store.invalid";

/// The gateway in a private mount namespace (`unshare -m`) whose `/etc/hosts` is a file of the
/// test's (bind-mounted), so that the test can make the store's name resolve or not without
/// touching the machine's resolver. Killed on `Drop`.
struct NamespacedGateway {
    child: std::process::Child,
    log_path: PathBuf,
}

impl NamespacedGateway {
    fn spawn(config: &std::path::Path, hosts: &std::path::Path) -> Self {
        let log_path = config.with_file_name("gateway.log");
        let log = File::create(&log_path).unwrap();
        let child = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && exec "$2" run --config "$3""#)
            .arg("sh")
            .arg(hosts)
            .arg(ioc_e2e::bin_path("ioc-gateway"))
            .arg(config)
            .env("RUST_LOG", "info")
            .env("IOC_GATEWAY_TEST_CLOCK_SYNCED", "1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        NamespacedGateway { child, log_path }
    }

    fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for NamespacedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this machine lets the test make a private mount namespace (root, or CAP_SYS_ADMIN).
fn mount_namespaces_allowed() -> bool {
    std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn store_name_not_resolving_is_retried_and_nothing_is_lost_once_it_resolves() {
    if !mount_namespaces_allowed() {
        // Not a pass in disguise: say loudly that this fault was not exercised here.
        eprintln!(
            "SKIPPED store_name_not_resolving...: `unshare -m` is not permitted on this machine \
             (needs root or CAP_SYS_ADMIN), so the store's name cannot be made to fail and recover"
        );
        return;
    }
    let _heavy = HeavyTestLock::acquire();
    let test_started = Instant::now();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let config = write_config(&format!(
        "{}\n[output.influxdb]\nurl = \"http://{STORE_HOST}:{}\"\nbucket = \"telemetry\"\nflush_interval_ms = 200\ntimeout_ms = 2000\n",
        mqtt_input(&broker, "dns"),
        vm.port()
    ));
    let hosts = config.dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let mut gateway = NamespacedGateway::spawn(&config.path, &hosts);
    let subscribed = broker.wait_for_subscription(GATEWAY_ID, FILTER, 0, Duration::from_secs(20));
    assert!(subscribed, "not subscribed:\n{}", gateway.log_tail(30));

    let base_ms = ioc_e2e::now_ms() - 3_600_000;
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = spawn_publisher(
        &broker,
        "dns-pub",
        Duration::from_millis(5),
        base_ms,
        Arc::clone(&stop),
        Arc::clone(&published),
    );
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        gateway.is_running(),
        "the gateway died while the store's name did not resolve:\n{}",
        gateway.log_tail(30)
    );
    let text = metrics_at(config.http_port);
    let received = metric_in(
        &text,
        "ioc_gateway_messages_received_total",
        &[("input", "mqtt0")],
    );
    let failures = metric_in(
        &text,
        "ioc_gateway_output_batches_failed_total",
        &[("reason", "connection")],
    );
    let sent = metric_in(&text, "ioc_gateway_output_lines_sent_total", &[]);
    let backlog = metric_in(&text, "ioc_gateway_buffer_readings", &[("class", "normal")]);
    let log = gateway.log();
    let dns_line = log
        .lines()
        .find(|l| l.contains(STORE_HOST) && (l.contains("WARN") || l.contains("ERROR")))
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "DNS failure for 10 s: {received} messages received and {backlog} buffered, {sent} lines \
         sent, {failures} failed attempts (reason connection); the log says: {dns_line}"
    );
    assert_eq!(sent, 0.0, "nothing can have reached an unresolvable store");
    assert!(
        // (a message being committed is counted as received a moment before it is buffered)
        received >= 1_500.0 && backlog <= received && backlog >= received - 100.0,
        "the input must go on and the backlog wait on disk: received {received}, buffered {backlog}"
    );
    // Backoff (at most 5 s apart, full jitter), not a hot loop on a failing lookup.
    assert!(
        (2.0..=40.0).contains(&failures),
        "{failures} attempts in 10 s"
    );
    assert!(
        dns_line.contains("dns error"),
        "the log should name the store and the lookup failure:\n{}",
        gateway.log_tail(20)
    );

    // The name resolves again (the same file, written in place: the bind mount keeps its inode).
    let resolves_at = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&hosts)
        .unwrap()
        .write_all(format!("127.0.0.1 {STORE_HOST}\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let publisher = publisher.join().unwrap();
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    assert_exactly_once(
        &vm,
        "dns",
        &publisher,
        base_ms,
        &|| gateway.log_tail(40),
        Duration::from_secs(30),
    );
    eprintln!(
        "DNS failure: all {} messages stored exactly once {:.1?} after the name resolved again; \
         test wall time {:.1?}",
        publisher.published(),
        resolves_at.elapsed(),
        test_started.elapsed()
    );
    assert!(!config.data_dir.join("dead-letter.lp").exists());
}

// ---------------------------------------------------------------------------------------------
// 5. A store that sheds load for 30 s: 429 with `Retry-After: 2`.
// ---------------------------------------------------------------------------------------------

const SHED_TIME: Duration = Duration::from_secs(30);
const SHED_RETRY_AFTER_S: u64 = 2;
/// One reading every 6 ms: about 166 a second, through the whole test.
const SHED_PACE: Duration = Duration::from_millis(6);
/// Small batches, so that the backlog of the window is several of them (a storm could show).
const SHED_BATCH_LINES: u32 = 500;
const SHED_MAX_IN_FLIGHT: usize = 4;
const SHED_DRAIN_SPREAD: Duration = Duration::from_secs(4);
/// Requests closer than this are one *round*: deliveries woken by the end of the same
/// `Retry-After` that each sent before the other's answer could hold it (the sink's shared
/// hold is read before a request, so two deliveries waking together both go).
const ROUND: Duration = Duration::from_millis(100);
/// Timer slack allowed below the 2 s asked for (both clocks are this machine's monotonic one).
const TIMER_SLACK: Duration = Duration::from_millis(50);

/// Requests grouped into rounds (see [`ROUND`]), by arrival.
fn rounds(requests: &[ProxiedRequest]) -> Vec<Vec<&ProxiedRequest>> {
    let mut rounds: Vec<Vec<&ProxiedRequest>> = Vec::new();
    for r in requests {
        match rounds.last_mut() {
            Some(round) if r.arrived - round[0].arrived < ROUND => round.push(r),
            _ => rounds.push(vec![r]),
        }
    }
    rounds
}

/// The most requests the proxy held at once (read, not yet answered).
fn peak_in_flight(requests: &[&ProxiedRequest]) -> usize {
    let mut edges: Vec<(Instant, i32)> = requests
        .iter()
        .flat_map(|r| [(r.arrived, 1), (r.ended.unwrap_or(r.arrived), -1)])
        .collect();
    // At one instant an answer is counted before an arrival.
    edges.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap_or(0)
}

/// Per sensor, the count and the sum of the values VictoriaMetrics holds for `<measurement>_v`
/// against those of the messages published (message `i` is sensor `i % SENSORS`, value `i`).
fn assert_counts_and_sums(vm: &VictoriaMetrics, measurement: &str, published: usize) {
    let mut want: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for i in 0..published {
        let e = want.entry(format!("s{:02}", i % SENSORS)).or_default();
        e.0 += 1;
        e.1 += i as f64;
    }
    let mut got: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for s in vm
        .export(&format!("{{__name__=\"{measurement}_v\"}}"))
        .unwrap()
    {
        let e = got
            .entry(s.label("sensor_id").unwrap_or_default().to_owned())
            .or_default();
        e.0 += s.values.len();
        e.1 += s.values.iter().sum::<f64>();
    }
    assert_eq!(got, want, "count and sum per series");
}

#[test]
fn store_answering_429_retry_after_2_for_30_s_is_obeyed_without_a_storm_and_nothing_is_lost() {
    let _heavy = HeavyTestLock::acquire();
    let test_started = Instant::now();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let proxy = FaultProxy::start(vm.port()).unwrap();
    let mut gateway = start_gateway(&format!(
        "{}\n[output.influxdb]\nurl = \"{}\"\nbucket = \"telemetry\"\nbatch_max_lines = {SHED_BATCH_LINES}\n\
         flush_interval_ms = 200\ntimeout_ms = 5000\nmax_in_flight = {SHED_MAX_IN_FLIGHT}\n\
         flush_jitter_ms = 500\ndrain_spread_ms = {}\n",
        mqtt_input(&broker, "shed"),
        proxy.url(),
        SHED_DRAIN_SPREAD.as_millis()
    ));
    gateway.wait_subscribed(&broker);
    let base_ms = ioc_e2e::now_ms() - 3_600_000;
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = spawn_publisher(
        &broker,
        "shed-pub",
        SHED_PACE,
        base_ms,
        Arc::clone(&stop),
        Arc::clone(&published),
    );
    assert_a_write_reaches_the_store(&proxy, &gateway);
    std::thread::sleep(Duration::from_secs(1));

    // The store sheds load for 30 s; readings keep coming.
    let shed = Fault::Status {
        status: 429,
        retry_after_s: Some(SHED_RETRY_AFTER_S),
    };
    proxy.set_fault(shed);
    let shed_start = Instant::now();
    let mut worst_lag = 0.0f64;
    while shed_start.elapsed() < SHED_TIME {
        std::thread::sleep(Duration::from_secs(1));
        let received = gateway.metric("ioc_gateway_messages_received_total", &[("input", "mqtt0")]);
        worst_lag = worst_lag.max(published.load(Ordering::SeqCst) as f64 - received);
    }
    let backlog_at_end = gateway.metric("ioc_gateway_buffer_readings", &[("class", "normal")]);
    let published_in_window = published.load(Ordering::SeqCst);
    proxy.set_fault(Fault::None);
    let shed_end = Instant::now();
    // Readings go on a while after the window, then stop.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let publisher = publisher.join().unwrap();
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    let total = publisher.published();
    let delivery = assert_exactly_once(
        &vm,
        "shed",
        &publisher,
        base_ms,
        &|| gateway.process.log_tail(40),
        Duration::from_secs(30),
    );
    assert_counts_and_sums(&vm, "shed", total);

    let requests = proxy.requests();
    let during: Vec<ProxiedRequest> = requests
        .iter()
        .filter(|r| r.fault == shed)
        .cloned()
        .collect();
    let after: Vec<&ProxiedRequest> = requests.iter().filter(|r| r.arrived >= shed_end).collect();
    let shed_rounds = rounds(&during);
    let round_gaps: Vec<Duration> = shed_rounds
        .windows(2)
        .map(|w| w[1][0].arrived - w[0][0].arrived)
        .collect();
    let last_429 = during.last().map(|r| r.ended.unwrap_or(r.arrived));
    let first_after = after.first().map(|r| r.arrived);
    let first_ok = after
        .iter()
        .find(|r| r.status == Some(204))
        .map(|r| r.arrived);
    let offset = ioc_gateway::output::influx::jitter::drain_offset(GATEWAY_ID, SHED_DRAIN_SPREAD);
    // Before the drain offset has passed after the first accepted write, only the deliveries
    // that were waiting out the Retry-After go; then the backlog drains, at most
    // max_in_flight requests at once.
    let before_drain: Vec<&&ProxiedRequest> = after
        .iter()
        .filter(|r| first_ok.is_some_and(|ok| r.arrived < ok + offset.saturating_sub(TIMER_SLACK)))
        .collect();
    let per_second: Vec<usize> = (0..6)
        .map(|s| {
            after
                .iter()
                .filter(|r| {
                    let t = r.arrived - shed_end;
                    t >= Duration::from_secs(s) && t < Duration::from_secs(s + 1)
                })
                .count()
        })
        .collect();
    let peak = peak_in_flight(&after);
    eprintln!(
        "429 with Retry-After {SHED_RETRY_AFTER_S} s for {SHED_TIME:?}: {} readings at ~{:.0}/s \
         ({published_in_window} by the window's end, the input at most {worst_lag} behind, \
         {backlog_at_end} waiting in the buffer at its end); {} requests answered 429 in {} \
         rounds (round sizes {:?}; {} distinct bodies, i.e. deliveries waiting), {} between rounds; first request {:.2?} after the last \
         429; after the window: {} requests, per second {per_second:?}, at most {peak} at \
         once, drain offset {offset:?} ({} request(s) before it); all \
         stored exactly once {delivery:.1?} after the readings stopped; test wall time {:.1?}",
        total,
        1.0 / SHED_PACE.as_secs_f64(),
        during.len(),
        shed_rounds.len(),
        shed_rounds.iter().map(Vec::len).collect::<Vec<_>>(),
        during.iter().map(|r| r.body_bytes).collect::<BTreeSet<_>>().len(),
        fmt_gaps(&round_gaps),
        first_after.zip(last_429).map(|(a, l)| a - l),
        after.len(),
        before_drain.len(),
        test_started.elapsed()
    );

    // Readings flowed throughout: the input kept up, the backlog waited in the buffer.
    assert!(
        worst_lag < 500.0,
        "the input fell {worst_lag} messages behind"
    );
    let rate = 1.0 / SHED_PACE.as_secs_f64();
    assert!(
        backlog_at_end >= 0.8 * rate * SHED_TIME.as_secs_f64(),
        "the window's readings should wait in the buffer: {backlog_at_end}"
    );
    // The gateway slowed down as asked: rounds at least 2 s apart, each no more than the
    // deliveries it may have in flight, so at most one round per 2 s of the window.
    assert!(
        !round_gaps.is_empty(),
        "no retries during the window: {during:?}"
    );
    for gap in &round_gaps {
        assert!(
            *gap >= Duration::from_secs(SHED_RETRY_AFTER_S) - TIMER_SLACK,
            "a request came {gap:?} after a 429 with Retry-After: {SHED_RETRY_AFTER_S}; gaps {}",
            fmt_gaps(&round_gaps)
        );
    }
    let most_rounds = (SHED_TIME.as_secs() / SHED_RETRY_AFTER_S + 1) as usize;
    assert!(
        shed_rounds.len() <= most_rounds,
        "{} rounds in {SHED_TIME:?}",
        shed_rounds.len()
    );
    assert!(
        shed_rounds.len() >= most_rounds / 2,
        "the gateway should keep trying every ~2.25 s: {} rounds",
        shed_rounds.len()
    );
    assert!(shed_rounds.iter().all(|r| r.len() <= SHED_MAX_IN_FLIGHT));
    // The last 429's Retry-After holds although the store is back ...
    let (first_after, last_429) = (first_after.unwrap(), last_429.unwrap());
    assert!(
        first_after - last_429 >= Duration::from_secs(SHED_RETRY_AFTER_S) - TIMER_SLACK,
        "the first request after the window came {:?} after the last 429",
        first_after - last_429
    );
    // ... and no storm at its end: before this gateway's drain offset has passed, only the
    // deliveries that were waiting out the Retry-After go (each re-sends its own batch, the
    // same bytes as during the window), then the backlog drains, at most max_in_flight at once.
    let waiting_bodies: BTreeSet<usize> = during.iter().map(|r| r.body_bytes).collect();
    assert!(
        before_drain.len() <= waiting_bodies.len().min(SHED_MAX_IN_FLIGHT),
        "{} requests before the drain offset; {} batches were waiting",
        before_drain.len(),
        waiting_bodies.len()
    );
    for r in &before_drain {
        assert!(
            waiting_bodies.contains(&r.body_bytes),
            "a new batch ({} bytes) went before the drain offset; the waiting ones: {waiting_bodies:?}",
            r.body_bytes
        );
    }
    assert!(
        peak <= SHED_MAX_IN_FLIGHT,
        "{peak} requests at once after the window"
    );
    // Every 429 counted under its reason, for this output; nothing cut or dead-lettered.
    let text = gateway.metrics();
    assert_eq!(
        metric_in(
            &text,
            "ioc_gateway_output_batches_failed_total",
            &[("output", "default"), ("reason", "throttled")]
        ),
        during.len() as f64
    );
    assert_eq!(
        metric_in(&text, "ioc_gateway_output_retry_after_clamped_total", &[]),
        0.0
    );
    assert!(!gateway.data_dir.join("dead-letter.lp").exists());
    assert!(gateway.process.is_running());
}
