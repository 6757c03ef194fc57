//! A full disk, a power cut and a store name that does not resolve lose nothing but what is
//! counted as lost, run against the real
//! `ioc-gateway` binary, a real mosquitto and a real VictoriaMetrics:
//!
//! - **Disk full**: the gateway's data dir on a 4 MiB tmpfs (when `mount -t tmpfs` is allowed,
//!   else a tiny `max_disk_mb` on the normal disk; the test prints which mode ran), the store down,
//!   MQTT fed at full rate until the disk is full and beyond. The gateway must stay alive, drop the
//!   oldest data and say so (log, metrics, `/readyz`), never ack what it could not store, and
//!   recover when space returns (a filler file removed; then the store back while another file
//!   has filled the filesystem to the last byte, so delivered data must be deleted without room
//!   for a new ack cursor). Every message the broker acknowledged is either in the store or
//!   inside the range counted as dropped, exactly. With `max_disk_mb` larger than the
//!   filesystem each drop must lose a part of the buffer, not all of it.
//! - **Power cut**: the gateway buffers known readings with the store down and is killed with
//!   SIGKILL; the test then damages the data dir as a power cut does (torn last record, a flipped
//!   bit in a sealed segment, a zero-filled tail, a half-written ack cursor) and starts it again with
//!   the store up. Exactly the intact records arrive, the damaged ones are reported, not sent.
//! - **DNS failure**: the store's host name cannot be resolved. The gateway keeps buffering, says
//!   so once in a while (not once per retry) naming the host, `/readyz` gives the reason, and after a
//!   restart with the right URL everything arrives exactly once.
//!
//! Figures (time to recover, bytes dropped, peak RSS) are printed, never asserted tightly.
//! Every test here is heavy and takes [`HeavyTestLock`].

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ioc_e2e::steps::{
    given_a_gateway_subscribed, then_the_broker_acked_everything,
    when_it_restarts_then_it_reconnects,
};
use ioc_e2e::{free_port, wait_until, GatewayProcess, HeavyTestLock, Mosquitto, MqttPublisher};
use ioc_e2e::{http_get, metric_in, VictoriaMetrics};
use tempfile::TempDir;

const TOPIC_FILTER: &str = "city/+/env/+";
/// Series (sensors) the test messages are spread over.
const SENSORS: u64 = 8;
/// 2023-11-14T22:13:20Z: message `i` has timestamp `BASE_TS_MS + i`, unique per message.
const BASE_TS_MS: i64 = 1_700_000_000_000;
/// Measurement of the test messages; the message number is field `v`, so VictoriaMetrics series
/// `<MEASUREMENT>_v` holds exactly the numbers of the messages that arrived.
const MEASUREMENT: &str = "rel";

// ---------------------------------------------------------------------------------------------------
// Test messages.
// ---------------------------------------------------------------------------------------------------

/// Message `i`: topic `city/d<i%4>/env/s<i%SENSORS>`, JSON with a unique timestamp, `v = i` and
/// four pseudo-random fields (so that the buffer's gzip cannot shrink the data to nothing and the
/// disk fills in seconds).
fn message(i: u64) -> (String, String) {
    let sensor = i % SENSORS;
    let topic = format!("city/d{}/env/s{sensor:02}", sensor % 4);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut noise = String::new();
    for k in 0..4 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1_000_000_000_000;
        noise.push_str(&format!(",\"r{k}\":{}.{:012}", r % 1000, r));
    }
    let payload = format!(
        "{{\"ts\":{},\"v\":{i}{noise}}}",
        BASE_TS_MS + i64::try_from(i).unwrap()
    );
    (topic, payload)
}

/// Publishes messages `range` as fast as the publisher's queue takes them.
fn publish_range(publisher: &mut MqttPublisher, range: std::ops::Range<u64>) {
    for i in range {
        let (topic, payload) = message(i);
        publisher.publish(&topic, payload).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------------
// The gateway under test.
// ---------------------------------------------------------------------------------------------------

/// Gateway settings that vary between tests.
struct Setup<'a> {
    gateway_id: &'a str,
    data_dir: &'a Path,
    mqtt_url: String,
    store_url: String,
    max_disk_mb: u64,
    segment_mb: Option<u64>,
    batch_max_lines: u32,
}

/// A gateway process with its HTTP port and config file.
struct Gateway {
    process: GatewayProcess,
    http_port: u16,
    config: PathBuf,
    _dir: TempDir,
}

fn config_text(s: &Setup<'_>, http_port: u16) -> String {
    let segment = s
        .segment_mb
        .map(|mb| format!("segment_mb = {mb}\n"))
        .unwrap_or_default();
    format!(
        r#"# written by tests/tests/reliability_e2e.rs
[gateway]
id = "{id}"
data_dir = "{data}"
# These tests count the buffer's lines exactly; the gateway's own health reading would add one.
health_interval_s = 0

[[inputs.mqtt]]
url = "{mqtt}"
client_id = "{id}"
topics = ["{TOPIC_FILTER}"]
qos = 1
measurement = "{MEASUREMENT}"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"

[output.influxdb]
url = "{store}"
api = "v2"
org = "ioc"
bucket = "telemetry"
batch_max_lines = {batch}
flush_interval_ms = 100
timeout_ms = 2000

[buffer]
max_disk_mb = {max}
{segment}
[http]
listen = "127.0.0.1:{http_port}"
store_unreachable_after_s = 1
"#,
        id = s.gateway_id,
        data = s.data_dir.display(),
        mqtt = s.mqtt_url,
        store = s.store_url,
        batch = s.batch_max_lines,
        max = s.max_disk_mb,
    )
}

impl Gateway {
    /// Writes the config and starts the gateway, waiting until it has subscribed.
    fn start(setup: &Setup<'_>, broker: &Mosquitto) -> Gateway {
        let dir = TempDir::new().unwrap();
        let http_port = free_port();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, config_text(setup, http_port)).unwrap();
        let process =
            given_a_gateway_subscribed(broker, &config, &[(setup.gateway_id, TOPIC_FILTER)]);
        Gateway {
            process,
            http_port,
            config,
            _dir: dir,
        }
    }

    /// Rewrites the config (same HTTP port) for the next start.
    fn rewrite_config(&self, setup: &Setup<'_>) {
        std::fs::write(&self.config, config_text(setup, self.http_port)).unwrap();
    }

    /// Starts the process again on the same data dir and waits until it is connected to the
    /// broker again (its session is persistent, so it need not subscribe again).
    fn restart_process(&mut self) {
        when_it_restarts_then_it_reconnects(&mut self.process);
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("http://127.0.0.1:{}{path}", self.http_port))
    }

    fn metrics_text(&self) -> String {
        let (status, body) = self.get("/metrics");
        if status == 200 {
            body
        } else {
            String::new()
        }
    }

    /// Sum of metric `name` over the series whose labels include `labels`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics_text(), name, labels)
    }

    /// `/readyz`: (HTTP status, reason codes, whole body).
    fn readyz(&self) -> (u16, Vec<String>, String) {
        let (status, body) = self.get("/readyz");
        let codes = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["reasons"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|r| r["code"].as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default();
        (status, codes, body)
    }

    fn healthz_ok(&self) -> bool {
        self.get("/healthz").0 == 200
    }

    /// Lines made durable in the buffer since this process started.
    fn appended(&self) -> u64 {
        self.metric("ioc_gateway_buffer_appended_lines_total", &[]) as u64
    }
}

/// The message numbers (`v`) stored in VictoriaMetrics, with how often each timestamp appears.
fn stored_numbers(vm: &VictoriaMetrics) -> (BTreeSet<u64>, usize) {
    vm.force_flush().unwrap();
    let series = vm
        .export(&format!("{{__name__=\"{MEASUREMENT}_v\"}}"))
        .unwrap();
    let mut numbers = BTreeSet::new();
    let mut doubled = 0;
    for s in &series {
        for (ts, v) in s.timestamps_ms.iter().zip(&s.values) {
            let i = *v as u64;
            assert_eq!(
                *ts,
                BASE_TS_MS + i as i64,
                "message {i} stored with a wrong timestamp"
            );
            if !numbers.insert(i) {
                doubled += 1;
            }
        }
    }
    (numbers, doubled)
}

/// Rows VictoriaMetrics received over the InfluxDB line protocol since it started (every field of
/// every line, duplicates included): `vm_rows_inserted_total{type="influx"}` on its `/metrics`.
fn vm_influx_rows(vm: &VictoriaMetrics) -> u64 {
    let text = ureq::get(&format!("{}/metrics", vm.url()))
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    metric_in(&text, "vm_rows_inserted_total", &[("type", "influx")]) as u64
}

/// Ranges of consecutive numbers, for readable failure messages.
fn ranges(numbers: impl IntoIterator<Item = u64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for n in numbers {
        current = match current {
            Some((a, b)) if n == b + 1 => Some((a, n)),
            Some((a, b)) => {
                out.push(format!("{a}..={b}"));
                Some((n, n))
            }
            None => Some((n, n)),
        };
    }
    if let Some((a, b)) = current {
        out.push(format!("{a}..={b}"));
    }
    if out.len() > 20 {
        let n = out.len();
        out.truncate(20);
        out.push(format!("... ({n} ranges)"));
    }
    out.join(", ")
}

// ---------------------------------------------------------------------------------------------------
// A small filesystem.
// ---------------------------------------------------------------------------------------------------

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill_to_the_brim(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5_u8; 4096];
    let mut written = 0u64;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // The last, partial chunk may have gone in part.
    let _ = file.flush();
    file.metadata().map(|m| m.len()).unwrap_or(written)
}

/// Writes `bytes` of zeros into `path` (a file that takes that much room on a tmpfs).
fn write_filler(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0x5a_u8; bytes]).unwrap();
}

// ---------------------------------------------------------------------------------------------------
// 1. Disk full.
// ---------------------------------------------------------------------------------------------------

/// Where the buffer runs out of room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskMode {
    /// A 4 MiB tmpfs with a 2 MiB filler file, `max_disk_mb = 64`: the realistic
    /// misconfiguration (a bound larger than the filesystem), so appends meet ENOSPC.
    TmpfsEnospc,
    /// The normal disk with `max_disk_mb = 1`: the configured bound is what fills up.
    TinyMaxDiskMb,
}

/// Messages published while the disk fills (well beyond what fits).
const FILL_MESSAGES: u64 = 60_000;
/// Messages published after space came back, with the store still down.
const AFTER_SPACE_MESSAGES: u64 = 5_000;
/// Messages published once the store is back.
const AFTER_STORE_MESSAGES: u64 = 1_000;

fn run_disk_full(mode: DiskMode, gateway_id: &str, fs_dir: &Path) {
    let mut run = given_a_gateway_buffering_with_the_store_down(mode, gateway_id, fs_dir);
    let watcher = ReadyzWatcher::start(run.gateway.http_port);
    when_the_disk_fills_and_beyond(&mut run);
    let full = then_it_dropped_the_oldest_said_so_and_stayed_alive(&mut run);
    then_readyz_reported_the_full_disk(&run, &full, watcher);
    if mode == DiskMode::TmpfsEnospc {
        when_space_returns_then_appends_resume_without_errors(&mut run, full.append_errors);
    }
    let dropped_lines = when_the_store_comes_back_onto_a_filesystem_full_to_the_brim(&mut run);
    then_the_buffer_drains_and_frees_its_disk(&run);
    when_new_messages_are_published_then_they_arrive(&mut run);
    then_it_is_ready_again(&run);
    then_every_acked_message_is_stored_or_inside_the_dropped_range(&mut run, dropped_lines);
}

/// One disk-full scenario: the servers, the gateway, and the messages published so far
/// (`0..published`). Fields drop in order: the gateway goes before the servers.
struct DiskFullRun {
    mode: DiskMode,
    fs_dir: PathBuf,
    publisher: MqttPublisher,
    gateway: Gateway,
    vm: VictoriaMetrics,
    _broker: Mosquitto,
    published: u64,
    started: Instant,
}

/// Given: on `fs_dir` (with a 2 MiB filler file on the tmpfs), a broker, a store that is down,
/// and a gateway bounded by `max_disk_mb` (64 on the tmpfs, more than it holds; else 1).
fn given_a_gateway_buffering_with_the_store_down(
    mode: DiskMode,
    gateway_id: &str,
    fs_dir: &Path,
) -> DiskFullRun {
    let started = Instant::now();
    let data_dir = fs_dir.join("data");
    if mode == DiskMode::TmpfsEnospc {
        write_filler(&fs_dir.join("filler"), 2 << 20);
    }
    let broker = Mosquitto::start().unwrap();
    let mut vm = VictoriaMetrics::start().unwrap();
    vm.stop();
    let setup = Setup {
        gateway_id,
        data_dir: &data_dir,
        mqtt_url: broker.url(),
        store_url: vm.url(),
        max_disk_mb: if mode == DiskMode::TmpfsEnospc { 64 } else { 1 },
        segment_mb: None,
        batch_max_lines: 500,
    };
    let gateway = Gateway::start(&setup, &broker);
    let publisher = MqttPublisher::connect(&broker.url(), &format!("{gateway_id}-pub")).unwrap();
    DiskFullRun {
        mode,
        fs_dir: fs_dir.to_path_buf(),
        publisher,
        gateway,
        vm,
        _broker: broker,
        published: 0,
        started,
    }
}

/// `/readyz` watched in the background during the fill: the disk reasons come and go with each
/// drop-oldest (a drop makes room, the next appends fill it again), so whether one holds at the
/// single moment after the fill depends on where the last append fell.
struct ReadyzWatcher {
    watching: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<BTreeSet<String>>,
}

impl ReadyzWatcher {
    fn start(http_port: u16) -> ReadyzWatcher {
        let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let thread = {
            let watching = watching.clone();
            let url = format!("http://127.0.0.1:{http_port}/readyz");
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                while watching.load(std::sync::atomic::Ordering::Relaxed) {
                    let (_, body) = http_get(&url);
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                        for r in v["reasons"].as_array().into_iter().flatten() {
                            if let Some(code) = r["code"].as_str() {
                                seen.insert(code.to_owned());
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                seen
            })
        };
        ReadyzWatcher { watching, thread }
    }

    /// Stops watching: every reason code seen meanwhile.
    fn stop(self) -> BTreeSet<String> {
        self.watching
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// When: `FILL_MESSAGES` are published at full rate (far more than fits); the broker acks them
/// all and the gateway makes every one durable (dropping the oldest for room).
fn when_the_disk_fills_and_beyond(run: &mut DiskFullRun) {
    let mode = run.mode;
    let fill_start = Instant::now();
    publish_range(&mut run.publisher, 0..FILL_MESSAGES);
    run.published = FILL_MESSAGES;
    assert!(
        run.publisher.wait_all_acked(Duration::from_secs(60)),
        "broker acked only {} of {}",
        run.publisher.acked_count(),
        run.publisher.published()
    );
    let gateway = &mut run.gateway;
    let all_durable = wait_until(Duration::from_secs(60), || {
        gateway.appended() >= FILL_MESSAGES
    });
    let fill_s = fill_start.elapsed().as_secs_f64();
    assert!(
        all_durable,
        "only {} of {FILL_MESSAGES} messages made durable (running: {})\n--- gateway log ---\n{}",
        gateway.appended(),
        gateway.process.is_running(),
        gateway.process.log_tail(40)
    );
    assert_eq!(gateway.appended(), FILL_MESSAGES, "lines made durable");
    eprintln!("[{mode:?}] filled in {fill_s:.1} s");
}

/// What the gateway counted while the disk was full.
struct FullDisk {
    append_errors: u64,
    log: String,
}

/// Then: the gateway is alive and healthy, dropped the oldest (a part of the buffer per drop, not
/// all of it) and logged it.
fn then_it_dropped_the_oldest_said_so_and_stayed_alive(run: &mut DiskFullRun) -> FullDisk {
    let mode = run.mode;
    let gateway = &mut run.gateway;
    assert!(gateway.process.is_running(), "the gateway died");
    assert!(
        gateway.healthz_ok(),
        "/healthz not OK while the disk is full"
    );
    let errors = gateway.metric("ioc_gateway_buffer_append_errors_total", &[]) as u64;
    let dropped_lines = gateway.metric("ioc_gateway_buffer_dropped_oldest_lines_total", &[]) as u64;
    let dropped_segments =
        gateway.metric("ioc_gateway_buffer_dropped_oldest_segments_total", &[]) as u64;
    let log = gateway.process.log();
    eprintln!(
        "[{mode:?}] {FILL_MESSAGES} messages durable, {errors} append errors, \
         {dropped_segments} segments / {dropped_lines} lines dropped oldest"
    );
    assert!(dropped_lines > 0, "nothing dropped: the disk never filled");
    assert!(dropped_segments > 0);
    // Drop-oldest drops a part, not the whole buffer: each segment dropped held at most a third
    // of what had been written by then (with one segment as large as the filesystem, the first
    // "no space" dropped everything buffered).
    assert!(
        dropped_lines / dropped_segments < FILL_MESSAGES / 3,
        "{dropped_lines} lines in {dropped_segments} dropped segments: each drop lost most of the buffer"
    );
    assert!(
        log.contains("buffer full: dropped the oldest segment, including unsent readings"),
        "no drop-oldest log line:\n{}",
        gateway.process.log_tail(40)
    );
    FullDisk {
        append_errors: errors,
        log,
    }
}

/// Then: `/readyz` says 503 with `store_unreachable`, and gave the disk's reason during or right
/// after the fill: on the tmpfs, append errors (ENOSPC, logged, with a warning that `max_disk_mb`
/// exceeds the filesystem) or a nearly full buffer; under the configured bound, no append error
/// and a nearly full buffer.
fn then_readyz_reported_the_full_disk(run: &DiskFullRun, full: &FullDisk, watcher: ReadyzWatcher) {
    let mode = run.mode;
    let gateway = &run.gateway;
    // Right after the fill: the disk reasons below. `store_unreachable` needs data waiting for
    // `store_unreachable_after_s` (1 s) since start, and a fast fill gets here sooner than that:
    // it is awaited separately (the buffer's own fill level moves meanwhile, as drops and
    // sealing change it, so the two are not required at the same instant).
    let (status, mut codes, body) = gateway.readyz();
    let seen_during_fill = watcher.stop();
    eprintln!("[{mode:?}] /readyz while full: {status} {body}; reasons seen during the fill: {seen_during_fill:?}");
    codes.extend(seen_during_fill);
    let mut later = (0, Vec::new(), String::new());
    let unreachable = wait_until(Duration::from_secs(10), || {
        later = gateway.readyz();
        later.1.iter().any(|c| c == "store_unreachable")
    });
    assert!(unreachable, "no store_unreachable: {}", later.2);
    assert_eq!(later.0, 503, "/readyz while the disk is full: {}", later.2);
    let (errors, log) = (full.append_errors, &full.log);
    match mode {
        DiskMode::TmpfsEnospc => {
            assert!(errors > 0, "no append error on a full filesystem");
            assert!(
                log.contains("buffer append failed") && log.contains("No space left on device"),
                "no ENOSPC log line:\n{}",
                gateway.process.log_tail(40)
            );
            // The latest append failed (`disk_errors`) or succeeded after a drop made room,
            // with the filesystem (not max_disk_mb) nearly full (`buffer_nearly_full`).
            assert!(
                codes
                    .iter()
                    .any(|c| c == "disk_errors" || c == "buffer_nearly_full"),
                "no disk reason while the filesystem is full: {body}"
            );
            assert!(
                log.contains("buffer.max_disk_mb is more than the filesystem can hold"),
                "no warning that max_disk_mb exceeds the filesystem:\n{}",
                gateway.process.log_tail(40)
            );
        }
        DiskMode::TinyMaxDiskMb => {
            assert_eq!(errors, 0, "append errors under the configured bound");
            assert!(codes.iter().any(|c| c == "buffer_nearly_full"), "{body}");
        }
    }
}

/// When: the filler file goes (space returns) and `AFTER_SPACE_MESSAGES` more are published;
/// then they are all durable, with no new append error.
fn when_space_returns_then_appends_resume_without_errors(run: &mut DiskFullRun, errors: u64) {
    let mode = run.mode;
    std::fs::remove_file(run.fs_dir.join("filler")).unwrap();
    let space_back = Instant::now();
    let from = run.published;
    let total = from + AFTER_SPACE_MESSAGES;
    publish_range(&mut run.publisher, from..total);
    run.published = total;
    then_the_broker_acked_everything(&run.publisher, Duration::from_secs(30));
    let gateway = &run.gateway;
    assert!(
        wait_until(Duration::from_secs(30), || gateway.appended() >= total),
        "appends did not resume after space came back: {} of {total}\n{}",
        gateway.appended(),
        gateway.process.log_tail(30)
    );
    let errors_after = gateway.metric("ioc_gateway_buffer_append_errors_total", &[]) as u64;
    eprintln!(
        "[{mode:?}] space back: {AFTER_SPACE_MESSAGES} messages durable in {:.2} s, append errors {errors} -> {errors_after}",
        space_back.elapsed().as_secs_f64()
    );
    assert_eq!(errors_after, errors, "appends failed after space came back");
}

/// When: (on the tmpfs, after another program filled the filesystem to the last byte, so
/// acknowledging needs a new cursor file without room for it) the store comes back. Returns the
/// lines dropped oldest by then.
fn when_the_store_comes_back_onto_a_filesystem_full_to_the_brim(run: &mut DiskFullRun) -> u64 {
    let mode = run.mode;
    if mode == DiskMode::TmpfsEnospc {
        let left = fill_to_the_brim(&run.fs_dir.join("filler-to-the-brim"));
        eprintln!("[{mode:?}] filesystem filled to the brim by another file ({left} bytes)");
    }
    let dropped_lines =
        run.gateway
            .metric("ioc_gateway_buffer_dropped_oldest_lines_total", &[]) as u64;
    run.vm.start_again().unwrap();
    dropped_lines
}

/// Then: the buffer drains and its delivered segments are deleted (what stays on disk is at most
/// the segment being written); the brim filler then goes.
fn then_the_buffer_drains_and_frees_its_disk(run: &DiskFullRun) {
    let mode = run.mode;
    let gateway = &run.gateway;
    let store_back = Instant::now();
    let drained = wait_until(Duration::from_secs(40), || {
        gateway.metric("ioc_gateway_buffer_readings", &[("class", "normal")]) == 0.0
            && gateway.metric("ioc_gateway_buffer_unsent_lines", &[]) == 0.0
    });
    let drain_s = store_back.elapsed().as_secs_f64();
    assert!(
        drained,
        "buffer did not drain after the store came back\n{}",
        gateway.process.log_tail(30)
    );
    let freed = wait_until(Duration::from_secs(10), || {
        gateway.metric("ioc_gateway_buffer_bytes", &[]) < 600_000.0
    });
    eprintln!(
        "[{mode:?}] drained in {drain_s:.1} s; after the drain the buffer holds {} bytes on disk",
        gateway.metric("ioc_gateway_buffer_bytes", &[])
    );
    assert!(
        freed,
        "delivered data not deleted: {} bytes\n{}",
        gateway.metric("ioc_gateway_buffer_bytes", &[]),
        gateway.process.log_tail(30)
    );
    if mode == DiskMode::TmpfsEnospc {
        std::fs::remove_file(run.fs_dir.join("filler-to-the-brim")).unwrap();
    }
}

/// When: `AFTER_STORE_MESSAGES` new messages are published; then they reach the store.
fn when_new_messages_are_published_then_they_arrive(run: &mut DiskFullRun) {
    let mode = run.mode;
    let first_new = run.published;
    let total = first_new + AFTER_STORE_MESSAGES;
    publish_range(&mut run.publisher, first_new..total);
    run.published = total;
    then_the_broker_acked_everything(&run.publisher, Duration::from_secs(30));
    let new_in = Instant::now();
    let arrived = wait_until(Duration::from_secs(30), || {
        stored_numbers(&run.vm).0.range(first_new..total).count() as u64 == AFTER_STORE_MESSAGES
    });
    assert!(
        arrived,
        "new messages did not arrive\n{}",
        run.gateway.process.log_tail(30)
    );
    eprintln!(
        "[{mode:?}] store back: {AFTER_STORE_MESSAGES} new messages in the store {:.2} s after publishing",
        new_in.elapsed().as_secs_f64()
    );
}

/// Then: `/readyz` is 200 again, with neither `store_unreachable` nor `buffer_nearly_full`
/// (appends succeed again, so `disk_errors` is gone with the rest).
fn then_it_is_ready_again(run: &DiskFullRun) {
    let mode = run.mode;
    let (status, codes, body) = run.gateway.readyz();
    eprintln!("[{mode:?}] /readyz after recovery: {status} {body}");
    for gone in ["store_unreachable", "buffer_nearly_full"] {
        assert!(
            !codes.iter().any(|c| c == gone),
            "{gone} still reported: {body}"
        );
    }
    assert_eq!(status, 200, "[{mode:?}] not ready again: {body}");
}

/// Then: the broker acked every message; nothing was dropped after the store came back; every
/// acked message is stored once, or inside the range counted as dropped, exactly. The forwarder
/// held the first batch in memory while its segment was dropped; it reached the store when it
/// came back. So the lost messages are exactly `k..dropped_lines` for the `k` lines of that
/// batch: contiguous, and ending where the dropped count says.
fn then_every_acked_message_is_stored_or_inside_the_dropped_range(
    run: &mut DiskFullRun,
    dropped_lines: u64,
) {
    let (mode, total) = (run.mode, run.published);
    let flags = run.publisher.acked_flags();
    assert_eq!(flags.len() as u64, total);
    assert!(flags.iter().all(|f| *f), "broker did not ack everything");
    let dropped_after =
        run.gateway
            .metric("ioc_gateway_buffer_dropped_oldest_lines_total", &[]) as u64;
    assert_eq!(
        dropped_after, dropped_lines,
        "drops after the store came back"
    );
    let (stored, doubled) = stored_numbers(&run.vm);
    assert_eq!(doubled, 0, "a message stored twice");
    assert!(stored.iter().all(|n| *n < total), "unknown numbers stored");
    let missing: Vec<u64> = (0..total).filter(|n| !stored.contains(n)).collect();
    let k = missing.first().copied().unwrap_or(dropped_lines);
    eprintln!(
        "[{mode:?}] {total} acked, {} stored, {} missing ({}), {dropped_lines} counted as dropped; \
         {k} lines of the in-flight batch delivered though their segment was dropped; peak RSS {} KiB; total {:.1} s",
        stored.len(),
        missing.len(),
        ranges(missing.iter().copied()),
        run.gateway.process.peak_rss_kib().unwrap_or(0),
        run.started.elapsed().as_secs_f64()
    );
    let expected_missing: Vec<u64> = (k..dropped_lines).collect();
    assert_eq!(
        ranges(missing.iter().copied()),
        ranges(expected_missing.iter().copied()),
        "lost messages are not exactly the dropped oldest ones"
    );
    assert!(
        k <= 4096,
        "in-flight batch of {k} lines is larger than one group commit"
    );
    assert!(run.gateway.process.is_running());
}

#[test]
fn disk_full_on_a_4mib_tmpfs_drops_oldest_reports_and_recovers() {
    let _heavy = HeavyTestLock::acquire();
    let dir = TempDir::new().unwrap();
    let mount_point = dir.path().join("fs");
    match ioc_e2e::Tmpfs::mount(&mount_point, "4m") {
        Ok(fs) => {
            eprintln!(
                "MODE: tmpfs (4 MiB at {}), max_disk_mb = 64 > filesystem: ENOSPC path",
                fs.path.display()
            );
            run_disk_full(DiskMode::TmpfsEnospc, "rel-enospc", &fs.path);
            drop(fs);
        }
        Err(reason) => {
            eprintln!("MODE: FALLBACK tiny max_disk_mb = 1 on the normal disk ({reason})");
            run_disk_full(DiskMode::TinyMaxDiskMb, "rel-enospc", &mount_point);
        }
    }
}

#[test]
fn disk_bound_max_disk_mb_1_drops_oldest_reports_and_recovers() {
    let _heavy = HeavyTestLock::acquire();
    let dir = TempDir::new().unwrap();
    eprintln!("MODE: max_disk_mb = 1 on the normal disk: the configured bound fills");
    run_disk_full(DiskMode::TinyMaxDiskMb, "rel-bound", dir.path());
}

// ---------------------------------------------------------------------------------------------------
// 3. DNS failure.
// ---------------------------------------------------------------------------------------------------

/// A host name that can never resolve (RFC 6761 reserves `.invalid`).
const UNRESOLVABLE_HOST: &str = "ioc-store.invalid";
/// Numeric fields per test message (`v`, `r0`..`r3`): rows VictoriaMetrics counts per line.
const FIELDS_PER_MESSAGE: u64 = 5;

#[test]
fn dns_failure_buffers_reports_the_host_and_delivers_exactly_once_after_the_fix() {
    let _heavy = HeavyTestLock::acquire();
    let started = Instant::now();
    const N: u64 = 3_000;
    const GATEWAY_ID: &str = "rel-dns";
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("data");
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let mut setup = Setup {
        gateway_id: GATEWAY_ID,
        data_dir: &data_dir,
        mqtt_url: broker.url(),
        store_url: format!("http://{UNRESOLVABLE_HOST}:{}", vm.port()),
        max_disk_mb: 64,
        segment_mb: None,
        batch_max_lines: 1000,
    };
    let mut gateway = Gateway::start(&setup, &broker);
    let mut publisher = MqttPublisher::connect(&broker.url(), "rel-dns-pub").unwrap();
    publish_range(&mut publisher, 0..N);
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    assert!(
        wait_until(Duration::from_secs(30), || gateway.appended() == N),
        "only {} of {N} made durable\n{}",
        gateway.appended(),
        gateway.process.log_tail(30)
    );

    // Let the output fail for a while: retries go on, the log does not repeat itself per retry.
    let failing_since = Instant::now();
    let retries_enough = wait_until(Duration::from_secs(20), || {
        gateway.metric("ioc_gateway_output_retries_total", &[]) >= 6.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let retries = gateway.metric("ioc_gateway_output_retries_total", &[]) as u64;
    let log = gateway.process.log();
    let store_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(UNRESOLVABLE_HOST))
        .collect();
    eprintln!(
        "DNS: {retries} retries in {:.1} s; {} log lines name {UNRESOLVABLE_HOST}:\n{}",
        failing_since.elapsed().as_secs_f64(),
        store_lines.len(),
        store_lines.join("\n")
    );
    assert!(retries_enough, "only {retries} retries");
    // One actionable line for the whole outage so far (the next one is due after 60 s), not one
    // per retry.
    let expected = format!(
        "cannot resolve the store's host name: {UNRESOLVABLE_HOST}:{}",
        vm.port()
    );
    assert_eq!(
        store_lines.len(),
        1,
        "{retries} retries should give one log line naming the host, got:\n{}",
        store_lines.join("\n")
    );
    assert!(
        store_lines[0].contains("ERROR") && store_lines[0].contains(&expected),
        "not an actionable DNS error: {}",
        store_lines[0]
    );
    assert!(gateway.process.is_running());
    let (status, codes, body) = gateway.readyz();
    eprintln!("DNS: /readyz {status} {body}");
    assert_eq!(status, 503);
    assert!(codes.iter().any(|c| c == "store_unreachable"), "{body}");
    assert!(
        body.contains(&expected),
        "/readyz does not give the DNS reason: {body}"
    );
    assert_eq!(
        gateway.metric("ioc_gateway_buffer_unsent_lines", &[]) as u64,
        N
    );

    // The right URL, a restart: everything buffered arrives, each message once.
    gateway.process.sigterm();
    gateway.process.wait_exit(Duration::from_secs(20)).unwrap();
    setup.store_url = vm.url();
    gateway.rewrite_config(&setup);
    let restart = Instant::now();
    gateway.restart_process();
    let all_in = wait_until(Duration::from_secs(30), || {
        stored_numbers(&vm).0.len() as u64 == N
    });
    let delivered_s = restart.elapsed().as_secs_f64();
    assert!(
        all_in,
        "only {} of {N} arrived\n{}",
        stored_numbers(&vm).0.len(),
        gateway.process.log_tail(30)
    );
    let (stored, doubled) = stored_numbers(&vm);
    assert_eq!(doubled, 0);
    assert_eq!(stored, (0..N).collect::<BTreeSet<u64>>());
    assert!(wait_until(Duration::from_secs(10), || gateway
        .metric("ioc_gateway_buffer_unsent_lines", &[])
        == 0.0));
    let rows = vm_influx_rows(&vm);
    eprintln!(
        "DNS: after the fix all {N} messages in the store {delivered_s:.1} s after the restart; \
         VictoriaMetrics received {rows} rows ({FIELDS_PER_MESSAGE} per message); peak RSS {} KiB; total {:.1} s",
        gateway.process.peak_rss_kib().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        rows,
        N * FIELDS_PER_MESSAGE,
        "something was sent twice (or not at all)"
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. Power cut.
// ---------------------------------------------------------------------------------------------------

/// One record of a buffer segment as the test reads it from disk (layout: gateway/src/buffer/mod.rs).
#[derive(Clone, Debug)]
struct DiskRecord {
    offset: u64,
    len: u64,
    /// Message numbers of its lines (from their timestamps).
    numbers: Vec<u64>,
}

/// The records of a segment file: 32-byte header (`"IOCR"`, CRC, payload length at 8..12, lines at
/// 12..16), then one gzip member of line protocol.
fn read_segment(path: &Path) -> Vec<DiskRecord> {
    let bytes = std::fs::read(path).unwrap();
    let mut records = Vec::new();
    let mut at = 0usize;
    while at + 32 <= bytes.len() {
        assert_eq!(&bytes[at..at + 4], b"IOCR", "{} at {at}", path.display());
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let lines = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
        let payload = &bytes[at + 32..at + 32 + len];
        let mut text = String::new();
        flate2::read::GzDecoder::new(payload)
            .read_to_string(&mut text)
            .unwrap();
        let numbers: Vec<u64> = text
            .lines()
            .map(|l| {
                let ts_ns: i64 = l.rsplit(' ').next().unwrap().parse().unwrap();
                u64::try_from(ts_ns / 1_000_000 - BASE_TS_MS).unwrap()
            })
            .collect();
        assert_eq!(numbers.len(), lines, "line count of the record at {at}");
        records.push(DiskRecord {
            offset: at as u64,
            len: (32 + len) as u64,
            numbers,
        });
        at += 32 + len;
    }
    assert_eq!(at, bytes.len(), "{} ends inside a record", path.display());
    records
}

/// The segment files of a class dir, sorted by id.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn power_cut_damage_drops_exactly_the_damaged_records_and_reports_them() {
    let _heavy = HeavyTestLock::acquire();
    let mut cut = given_readings_buffered_after_an_ack_cursor_with_the_store_down();
    when_the_power_goes(&mut cut);
    let damage = given_a_data_dir_damaged_as_by_a_power_cut(&cut);
    let restart = when_the_power_and_the_store_come_back(&mut cut);
    then_exactly_the_intact_records_arrive_once(&cut, &damage, restart);
    then_the_damage_is_counted_and_logged_where_it_was(&mut cut, &damage);
    when_the_broker_comes_back_then_only_the_unacknowledged_tail_returns(&mut cut, &damage);
}

/// Delivered before the outage, so the buffer has an ack cursor.
const POWER_CUT_DELIVERED: u64 = 1_000;
/// Buffered while the store is down (about three 1 MiB segments).
const POWER_CUT_BUFFERED: u64 = 45_000;

/// The power-cut scenario: servers, gateway, and where its buffer lies on disk.
struct PowerCut {
    gateway: Gateway,
    vm: VictoriaMetrics,
    broker: Mosquitto,
    class_dir: PathBuf,
    cursor_path: PathBuf,
    started: Instant,
    _dir: TempDir,
}

/// Given: a gateway (1 MiB segments) that delivered `POWER_CUT_DELIVERED` readings (so an ack
/// cursor exists), then buffered `POWER_CUT_BUFFERED` more, every one durable, with the store
/// down.
fn given_readings_buffered_after_an_ack_cursor_with_the_store_down() -> PowerCut {
    const GATEWAY_ID: &str = "rel-power";
    const M: u64 = POWER_CUT_DELIVERED;
    const N: u64 = POWER_CUT_BUFFERED;
    let started = Instant::now();
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("data");
    let broker = Mosquitto::start().unwrap();
    let mut vm = VictoriaMetrics::start().unwrap();
    let setup = Setup {
        gateway_id: GATEWAY_ID,
        data_dir: &data_dir,
        mqtt_url: broker.url(),
        store_url: vm.url(),
        max_disk_mb: 64,
        segment_mb: Some(1),
        batch_max_lines: 5000,
    };
    let gateway = Gateway::start(&setup, &broker);
    let mut publisher = MqttPublisher::connect(&broker.url(), "rel-power-pub").unwrap();

    // Phase 0: delivered and acked.
    publish_range(&mut publisher, 0..M);
    assert!(
        wait_until(Duration::from_secs(30), || stored_numbers(&vm).0.len()
            as u64
            == M
            && gateway.metric("ioc_gateway_buffer_unsent_lines", &[]) == 0.0),
        "phase 0 not delivered\n{}",
        gateway.process.log_tail(30)
    );
    let class_dir = data_dir.join("buffer").join("normal");
    let cursor_path = class_dir.join("ack.cursor");
    assert!(cursor_path.is_file(), "no ack cursor after delivery");

    // Phase 1: the store goes down, N readings are buffered.
    vm.stop();
    publish_range(&mut publisher, M..M + N);
    assert!(publisher.wait_all_acked(Duration::from_secs(60)));
    assert!(
        wait_until(Duration::from_secs(60), || gateway.appended() == M + N),
        "only {} of {} durable\n{}",
        gateway.appended(),
        M + N,
        gateway.process.log_tail(30)
    );
    PowerCut {
        gateway,
        vm,
        broker,
        class_dir,
        cursor_path,
        started,
        _dir: dir,
    }
}

/// When: the gateway is killed with SIGKILL. The broker stays away until the buffer is checked:
/// messages whose PUBACK had not left the gateway at the kill are redelivered by it
/// (at-least-once), which would mix with what recovery kept. They are checked at the end.
fn when_the_power_goes(cut: &mut PowerCut) {
    cut.gateway.process.kill9();
    cut.broker.stop();
}

/// One damaged spot: (segment index, what, byte range reported as dropped, numbers lost).
struct DamagedSpot {
    segment: usize,
    what: &'static str,
    from: u64,
    to: u64,
    numbers: Vec<u64>,
}

/// What the power cut did to the buffer, and what must survive it.
struct Damage {
    segments: Vec<PathBuf>,
    spots: Vec<DamagedSpot>,
    /// Readings in damaged records.
    lost: BTreeSet<u64>,
    /// Readings in intact records.
    intact: BTreeSet<u64>,
    /// Lines in intact records.
    intact_lines: u64,
    /// Bytes recovery must report as dropped.
    expected_dropped: u64,
}

/// Given: the buffer holds exactly every message, record by record; then it is damaged as a
/// power cut does: a flipped bit in a sealed segment after the cursor, a zero-filled tail of
/// another, a torn last record, and a half-written ack cursor.
fn given_a_data_dir_damaged_as_by_a_power_cut(cut: &PowerCut) -> Damage {
    const M: u64 = POWER_CUT_DELIVERED;
    const N: u64 = POWER_CUT_BUFFERED;
    // What is on disk, record by record.
    let segments = segment_files(&cut.class_dir);
    assert!(
        segments.len() >= 3,
        "need 3 segments to damage, got {}",
        segments.len()
    );
    let mut records: Vec<Vec<DiskRecord>> = segments.iter().map(|p| read_segment(p)).collect();
    let on_disk: BTreeSet<u64> = records
        .iter()
        .flatten()
        .flat_map(|r| r.numbers.clone())
        .collect();
    assert_eq!(
        on_disk,
        (0..M + N).collect::<BTreeSet<u64>>(),
        "the buffer does not hold exactly every message"
    );
    let cursor = std::fs::read(&cut.cursor_path).unwrap();
    assert_eq!(cursor.len(), 28);
    let cursor_offset = u64::from_le_bytes(cursor[16..24].try_into().unwrap());

    let spots = vec![
        flip_a_bit_after_the_cursor(&segments[0], &records[0], cursor_offset),
        zero_fill_the_tail(&segments[1], &records[1]),
        tear_the_last_record(&segments, &records),
    ];
    // A half-written ack cursor: everything still on disk is sent again (never lost).
    std::fs::write(&cut.cursor_path, &cursor[..13]).unwrap();
    for spot in &spots {
        records[spot.segment].retain(|r| r.offset != spot.from);
    }
    let lost: BTreeSet<u64> = spots.iter().flat_map(|d| d.numbers.clone()).collect();
    let intact: BTreeSet<u64> = records
        .iter()
        .flatten()
        .flat_map(|r| r.numbers.clone())
        .collect();
    let intact_lines: u64 = records
        .iter()
        .flatten()
        .map(|r| r.numbers.len() as u64)
        .sum();
    let expected_dropped: u64 = spots.iter().map(|d| d.to - d.from).sum();
    for spot in &spots {
        eprintln!(
            "power cut: {} in {}: bytes {}..{} ({} bytes, {} readings: {})",
            spot.what,
            segments[spot.segment]
                .file_name()
                .unwrap()
                .to_string_lossy(),
            spot.from,
            spot.to,
            spot.to - spot.from,
            spot.numbers.len(),
            ranges(spot.numbers.iter().copied())
        );
    }
    assert!(!lost.is_empty() && lost.is_disjoint(&intact));
    assert_eq!(intact.len() as u64 + lost.len() as u64, M + N);
    Damage {
        segments,
        spots,
        lost,
        intact,
        intact_lines,
        expected_dropped,
    }
}

/// A flipped bit in a record in the middle of the first (sealed) segment, after the cursor.
fn flip_a_bit_after_the_cursor(
    segment: &Path,
    records: &[DiskRecord],
    cursor_offset: u64,
) -> DamagedSpot {
    let candidates: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].offset >= cursor_offset && i + 1 < records.len())
        .collect();
    assert!(
        !candidates.is_empty(),
        "no record after the cursor in the middle of the first segment"
    );
    let victim = records[candidates[candidates.len() / 2]].clone();
    let mut bytes = std::fs::read(segment).unwrap();
    let at = usize::try_from(victim.offset + 32 + (victim.len - 32) / 2).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(segment, &bytes).unwrap();
    DamagedSpot {
        segment: 0,
        what: "bit flip",
        from: victim.offset,
        to: victim.offset + victim.len,
        numbers: victim.numbers,
    }
}

/// A zero-filled tail (ext4 after a crash: the size was committed, the data was not): the last
/// record of the second (sealed) segment is zeros, up to the next 4 KiB.
fn zero_fill_the_tail(segment: &Path, records: &[DiskRecord]) -> DamagedSpot {
    let victim = records.last().unwrap().clone();
    let mut bytes = std::fs::read(segment).unwrap();
    let end = bytes.len().div_ceil(4096) * 4096;
    bytes.resize(end, 0);
    bytes[usize::try_from(victim.offset).unwrap()..].fill(0);
    std::fs::write(segment, &bytes).unwrap();
    DamagedSpot {
        segment: 1,
        what: "zero-filled tail",
        from: victim.offset,
        to: end as u64,
        numbers: victim.numbers,
    }
}

/// The last segment cut in the middle of its last record (a torn write).
fn tear_the_last_record(segments: &[PathBuf], records: &[Vec<DiskRecord>]) -> DamagedSpot {
    let last = segments.len() - 1;
    let victim = records[last].last().unwrap().clone();
    let cut = victim.offset + 32 + (victim.len - 32) / 2;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[last])
        .unwrap();
    file.set_len(cut).unwrap();
    DamagedSpot {
        segment: last,
        what: "torn last record",
        from: victim.offset,
        to: cut,
        numbers: victim.numbers,
    }
}

/// When: power is back with the store up: the gateway starts on the damaged data dir (the broker
/// still away) and is healthy. Returns when it was started.
fn when_the_power_and_the_store_come_back(cut: &mut PowerCut) -> Instant {
    cut.vm.start_again().unwrap();
    let restart = Instant::now();
    cut.gateway.process.start_again().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || cut.gateway.healthz_ok()),
        "/healthz after recovery\n{}",
        cut.gateway.process.log_tail(30)
    );
    restart
}

/// Then: the store holds exactly the intact readings, none twice, each intact line was sent
/// exactly once since the restart (VictoriaMetrics counts rows per field), and recovery counted
/// exactly the damaged bytes as dropped.
fn then_exactly_the_intact_records_arrive_once(cut: &PowerCut, damage: &Damage, restart: Instant) {
    let (gateway, vm, intact) = (&cut.gateway, &cut.vm, &damage.intact);
    let all_in = wait_until(Duration::from_secs(40), || {
        stored_numbers(vm).0.len() == intact.len()
            && gateway.metric("ioc_gateway_buffer_unsent_lines", &[]) == 0.0
    });
    let recover_s = restart.elapsed().as_secs_f64();
    let (stored, doubled) = stored_numbers(vm);
    assert!(
        all_in,
        "{} of {} intact readings arrived\n{}",
        stored.len(),
        intact.len(),
        gateway
            .process
            .log()
            .lines()
            .filter(|l| !l.contains("skipping damaged") || l.contains("recovery"))
            .filter(|l| l.contains("recover")
                || l.contains("connected")
                || l.contains("cursor")
                || l.contains("running"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(doubled, 0);
    assert_eq!(
        ranges(stored.iter().copied()),
        ranges(intact.iter().copied()),
        "the store does not hold exactly the intact records"
    );
    let dropped_metric =
        gateway.metric("ioc_gateway_buffer_recovery_dropped_bytes_total", &[]) as u64;
    let rows = vm_influx_rows(vm);
    let (expected_dropped, intact_lines) = (damage.expected_dropped, damage.intact_lines);
    eprintln!(
        "power cut: {} intact readings in the store {recover_s:.1} s after the restart; {} lost; \
         {dropped_metric} bytes dropped by recovery (expected {expected_dropped}); VictoriaMetrics got {rows} rows \
         for {intact_lines} intact lines; peak RSS {} KiB; total {:.1} s",
        stored.len(),
        damage.lost.len(),
        gateway.process.peak_rss_kib().unwrap_or(0),
        cut.started.elapsed().as_secs_f64()
    );
    assert_eq!(
        dropped_metric, expected_dropped,
        "ioc_gateway_buffer_recovery_dropped_bytes_total"
    );
    assert_eq!(
        rows,
        intact_lines * FIELDS_PER_MESSAGE,
        "rows received since the restart"
    );
}

/// Then: the log says what was dropped, where (one line per damaged spot, a summary with the
/// bytes dropped, the cursor fallback), and the gateway runs on.
fn then_the_damage_is_counted_and_logged_where_it_was(cut: &mut PowerCut, damage: &Damage) {
    let gateway = &mut cut.gateway;
    let log = gateway.process.log();
    for spot in &damage.spots {
        let expected = format!(
            "segment={} from={} to={}",
            damage.segments[spot.segment].display(),
            spot.from,
            spot.to
        );
        assert!(
            log.lines()
                .any(|l| l.contains("buffer recovery: skipping damaged bytes")
                    && l.contains(&expected)),
            "no recovery log line for the {} ({expected}):\n{}",
            spot.what,
            gateway.process.log_tail(40)
        );
    }
    assert!(
        log.contains(&format!("dropped_bytes={}", damage.expected_dropped)),
        "no summary line"
    );
    assert!(
        log.contains("buffer ack cursor is corrupt"),
        "cursor fallback not logged"
    );
    assert!(gateway.process.is_running());
}

/// When: the broker comes back and redelivers what the gateway had not acknowledged when it was
/// killed: the newest messages, so some readings of the torn last record may come back that way.
/// Then: nothing was appended while the broker was away, the redelivery settles, and what came
/// back is a tail of the lost readings, never one the gateway had acknowledged, never twice.
fn when_the_broker_comes_back_then_only_the_unacknowledged_tail_returns(
    cut: &mut PowerCut,
    damage: &Damage,
) {
    let gateway = &cut.gateway;
    assert_eq!(gateway.appended(), 0, "appends while the broker was away");
    cut.broker.start_again().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || gateway
            .process
            .log()
            .contains("connected to broker session_present=true")),
        "no reconnect\n{}",
        gateway.process.log_tail(20)
    );
    let settled = wait_until(Duration::from_secs(20), || {
        let redelivered = gateway.appended();
        std::thread::sleep(Duration::from_millis(500));
        gateway.appended() == redelivered
            && gateway.metric("ioc_gateway_buffer_unsent_lines", &[]) == 0.0
    });
    assert!(settled, "redelivery did not settle");
    let redelivered = gateway.appended();
    let (after, doubled) = stored_numbers(&cut.vm);
    assert_eq!(doubled, 0);
    let (lost, intact) = (&damage.lost, &damage.intact);
    let back: BTreeSet<u64> = after.difference(intact).copied().collect();
    eprintln!(
        "power cut: the broker redelivered {redelivered} unacknowledged messages; {} of the lost readings came back that way ({})",
        back.len(),
        ranges(back.iter().copied())
    );
    assert!(back.is_subset(lost), "unknown readings arrived");
    if let Some(&first) = back.first() {
        let suffix: BTreeSet<u64> = lost.range(first..).copied().collect();
        assert_eq!(
            back, suffix,
            "what came back is not the unacknowledged tail"
        );
    }
    assert!(back.len() as u64 <= redelivered);
}
