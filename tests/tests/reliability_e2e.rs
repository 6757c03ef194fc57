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
use std::process::Command;
use std::time::{Duration, Instant};

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
        let before = broker.subscription_count(setup.gateway_id, TOPIC_FILTER);
        let mut process = GatewayProcess::spawn(&config).unwrap();
        let subscribed = broker.wait_for_subscription(
            setup.gateway_id,
            TOPIC_FILTER,
            before,
            Duration::from_secs(20),
        );
        assert!(
            subscribed,
            "gateway did not subscribe (running: {}):\n{}",
            process.is_running(),
            process.log_tail(40)
        );
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
        let connected_before = self.process.log().matches("connected to broker").count();
        self.process.start_again().unwrap();
        let connected = wait_until(Duration::from_secs(20), || {
            self.process.log().matches("connected to broker").count() > connected_before
        });
        assert!(
            connected,
            "gateway did not connect after restart (running: {}):\n{}",
            self.process.is_running(),
            self.process.log_tail(40)
        );
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
        self.metric("buffer_appended_lines_total", &[]) as u64
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

/// A tmpfs mounted for one test; unmounted on `Drop` (lazily if something still holds it).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=<size> tmpfs <path>`; `Err` with the reason when not allowed.
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(Tmpfs {
                path: path.to_path_buf(),
            })
        } else {
            Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

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
    let started = Instant::now();
    let data_dir = fs_dir.join("data");
    let filler = fs_dir.join("filler");
    if mode == DiskMode::TmpfsEnospc {
        write_filler(&filler, 2 << 20);
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
    let mut gateway = Gateway::start(&setup, &broker);
    let mut publisher =
        MqttPublisher::connect(&broker.url(), &format!("{gateway_id}-pub")).unwrap();

    // /readyz is watched during the fill: the disk reasons come and go with each drop-oldest
    // (a drop makes room, the next appends fill it again), so whether one holds at the single
    // moment after the fill depends on where the last append fell.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let watching = watching.clone();
        let url = format!("http://127.0.0.1:{}/readyz", gateway.http_port);
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
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

    // Fill the disk and go on.
    let fill_start = Instant::now();
    publish_range(&mut publisher, 0..FILL_MESSAGES);
    assert!(
        publisher.wait_all_acked(Duration::from_secs(60)),
        "broker acked only {} of {}",
        publisher.acked_count(),
        publisher.published()
    );
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
    assert!(gateway.process.is_running(), "the gateway died");
    assert!(
        gateway.healthz_ok(),
        "/healthz not OK while the disk is full"
    );
    let errors = gateway.metric("buffer_append_errors_total", &[]) as u64;
    let dropped_lines = gateway.metric("buffer_dropped_oldest_lines_total", &[]) as u64;
    let dropped_segments = gateway.metric("buffer_dropped_oldest_segments_total", &[]) as u64;
    let log = gateway.process.log();
    eprintln!(
        "[{mode:?}] filled in {fill_s:.1} s: {FILL_MESSAGES} messages durable, {errors} append errors, \
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
    // Right after the fill: the disk reasons below. `store_unreachable` needs data waiting for
    // `store_unreachable_after_s` (1 s) since start, and a fast fill gets here sooner than that:
    // it is awaited separately (the buffer's own fill level moves meanwhile, as drops and
    // sealing change it, so the two are not required at the same instant).
    let (status, mut codes, body) = gateway.readyz();
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen_during_fill = watcher.join().unwrap_or_default();
    eprintln!("[{mode:?}] /readyz while full: {status} {body}; reasons seen during the fill: {seen_during_fill:?}");
    codes.extend(seen_during_fill);
    let mut later = (0, Vec::new(), String::new());
    let unreachable = wait_until(Duration::from_secs(10), || {
        later = gateway.readyz();
        later.1.iter().any(|c| c == "store_unreachable")
    });
    assert!(unreachable, "no store_unreachable: {}", later.2);
    assert_eq!(later.0, 503, "/readyz while the disk is full: {}", later.2);
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

    // Space returns: the filler goes (tmpfs), more messages are appended without errors.
    let mut total = FILL_MESSAGES;
    if mode == DiskMode::TmpfsEnospc {
        std::fs::remove_file(&filler).unwrap();
        let space_back = Instant::now();
        publish_range(&mut publisher, total..total + AFTER_SPACE_MESSAGES);
        total += AFTER_SPACE_MESSAGES;
        assert!(publisher.wait_all_acked(Duration::from_secs(30)));
        assert!(
            wait_until(Duration::from_secs(30), || gateway.appended() >= total),
            "appends did not resume after space came back: {} of {total}\n{}",
            gateway.appended(),
            gateway.process.log_tail(30)
        );
        let errors_after = gateway.metric("buffer_append_errors_total", &[]) as u64;
        eprintln!(
            "[{mode:?}] space back: {AFTER_SPACE_MESSAGES} messages durable in {:.2} s, append errors {errors} -> {errors_after}",
            space_back.elapsed().as_secs_f64()
        );
        assert_eq!(errors_after, errors, "appends failed after space came back");
    }

    // The store comes back: the buffer drains, then new messages go straight through. On the
    // tmpfs, another program has filled the filesystem to the last byte meanwhile: the buffer
    // must still drain and free its disk (acknowledging needs a new cursor file).
    let last_filler = fs_dir.join("filler-to-the-brim");
    if mode == DiskMode::TmpfsEnospc {
        let left = fill_to_the_brim(&last_filler);
        eprintln!("[{mode:?}] filesystem filled to the brim by another file ({left} bytes)");
    }
    let dropped_lines = gateway.metric("buffer_dropped_oldest_lines_total", &[]) as u64;
    vm.start_again().unwrap();
    let store_back = Instant::now();
    let drained = wait_until(Duration::from_secs(40), || {
        gateway.metric("buffer_readings", &[("class", "normal")]) == 0.0
            && gateway.metric("buffer_unsent_lines", &[]) == 0.0
    });
    let drain_s = store_back.elapsed().as_secs_f64();
    assert!(
        drained,
        "buffer did not drain after the store came back\n{}",
        gateway.process.log_tail(30)
    );
    // Delivered segments are deleted: what stays on disk is at most the segment being written.
    let freed = wait_until(Duration::from_secs(10), || {
        gateway.metric("buffer_bytes", &[]) < 600_000.0
    });
    eprintln!(
        "[{mode:?}] after the drain the buffer holds {} bytes on disk",
        gateway.metric("buffer_bytes", &[])
    );
    assert!(
        freed,
        "delivered data not deleted: {} bytes\n{}",
        gateway.metric("buffer_bytes", &[]),
        gateway.process.log_tail(30)
    );
    if mode == DiskMode::TmpfsEnospc {
        std::fs::remove_file(&last_filler).unwrap();
    }
    publish_range(&mut publisher, total..total + AFTER_STORE_MESSAGES);
    let first_new = total;
    total += AFTER_STORE_MESSAGES;
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    let new_in = Instant::now();
    let arrived = wait_until(Duration::from_secs(30), || {
        stored_numbers(&vm).0.range(first_new..total).count() as u64 == AFTER_STORE_MESSAGES
    });
    assert!(
        arrived,
        "new messages did not arrive\n{}",
        gateway.process.log_tail(30)
    );
    eprintln!(
        "[{mode:?}] store back: drained in {drain_s:.1} s; {AFTER_STORE_MESSAGES} new messages in the store {:.2} s after publishing",
        new_in.elapsed().as_secs_f64()
    );
    let (status, codes, body) = gateway.readyz();
    eprintln!("[{mode:?}] /readyz after recovery: {status} {body}");
    for gone in ["store_unreachable", "buffer_nearly_full"] {
        assert!(
            !codes.iter().any(|c| c == gone),
            "{gone} still reported: {body}"
        );
    }
    // Appends succeed again, so `disk_errors` is gone with the rest: ready again.
    assert_eq!(status, 200, "[{mode:?}] not ready again: {body}");

    // Accounting: every acked message is in the store, or inside the dropped range.
    let flags = publisher.acked_flags();
    assert_eq!(flags.len() as u64, total);
    assert!(flags.iter().all(|f| *f), "broker did not ack everything");
    let dropped_after = gateway.metric("buffer_dropped_oldest_lines_total", &[]) as u64;
    assert_eq!(
        dropped_after, dropped_lines,
        "drops after the store came back"
    );
    let (stored, doubled) = stored_numbers(&vm);
    assert_eq!(doubled, 0, "a message stored twice");
    assert!(stored.iter().all(|n| *n < total), "unknown numbers stored");
    let missing: Vec<u64> = (0..total).filter(|n| !stored.contains(n)).collect();
    // The forwarder held the first batch in memory while its segment was dropped; it reached the
    // store when it came back. So the lost messages are exactly `k..dropped_lines` for the `k`
    // lines of that batch: contiguous, and ending where the dropped count says.
    let k = missing.first().copied().unwrap_or(dropped_lines);
    eprintln!(
        "[{mode:?}] {total} acked, {} stored, {} missing ({}), {dropped_lines} counted as dropped; \
         {k} lines of the in-flight batch delivered though their segment was dropped; peak RSS {} KiB; total {:.1} s",
        stored.len(),
        missing.len(),
        ranges(missing.iter().copied()),
        gateway.process.peak_rss_kib().unwrap_or(0),
        started.elapsed().as_secs_f64()
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
    assert!(gateway.process.is_running());
}

#[test]
fn disk_full_on_a_4mib_tmpfs_drops_oldest_reports_and_recovers() {
    let _heavy = HeavyTestLock::acquire();
    let dir = TempDir::new().unwrap();
    let mount_point = dir.path().join("fs");
    match Tmpfs::mount(&mount_point, "4m") {
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
        gateway.metric("output_retries_total", &[]) >= 6.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let retries = gateway.metric("output_retries_total", &[]) as u64;
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
    assert_eq!(gateway.metric("buffer_unsent_lines", &[]) as u64, N);

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
        .metric("buffer_unsent_lines", &[])
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
    let started = Instant::now();
    const GATEWAY_ID: &str = "rel-power";
    /// Delivered before the outage, so the buffer has an ack cursor.
    const M: u64 = 1_000;
    /// Buffered while the store is down (about three 1 MiB segments).
    const N: u64 = 45_000;
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
    let mut gateway = Gateway::start(&setup, &broker);
    let mut publisher = MqttPublisher::connect(&broker.url(), "rel-power-pub").unwrap();

    // Phase 0: delivered and acked.
    publish_range(&mut publisher, 0..M);
    assert!(
        wait_until(Duration::from_secs(30), || stored_numbers(&vm).0.len()
            as u64
            == M
            && gateway.metric("buffer_unsent_lines", &[]) == 0.0),
        "phase 0 not delivered\n{}",
        gateway.process.log_tail(30)
    );
    let class_dir = data_dir.join("buffer").join("normal");
    let cursor_path = class_dir.join("ack.cursor");
    assert!(cursor_path.is_file(), "no ack cursor after delivery");

    // Phase 1: the store goes down, N readings are buffered, then the power goes.
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
    gateway.process.kill9();
    // The broker stays away until the buffer is checked: messages whose PUBACK had not left the
    // gateway at the kill are redelivered by it (at-least-once), which would mix with what
    // recovery kept. They are checked at the end.
    let mut broker = broker;
    broker.stop();

    // What is on disk, record by record.
    let segments = segment_files(&class_dir);
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
    let cursor = std::fs::read(&cursor_path).unwrap();
    assert_eq!(cursor.len(), 28);
    let cursor_offset = u64::from_le_bytes(cursor[16..24].try_into().unwrap());

    // The damage. (segment index, what, byte range reported as dropped, numbers lost)
    let mut damage: Vec<(usize, &str, u64, u64, Vec<u64>)> = Vec::new();
    {
        // A flipped bit in a record in the middle of the first (sealed) segment, after the cursor.
        let candidates: Vec<usize> = (0..records[0].len())
            .filter(|&i| records[0][i].offset >= cursor_offset && i + 1 < records[0].len())
            .collect();
        assert!(
            !candidates.is_empty(),
            "no record after the cursor in the middle of the first segment"
        );
        let victim = records[0][candidates[candidates.len() / 2]].clone();
        let mut bytes = std::fs::read(&segments[0]).unwrap();
        let at = usize::try_from(victim.offset + 32 + (victim.len - 32) / 2).unwrap();
        bytes[at] ^= 0x10;
        std::fs::write(&segments[0], &bytes).unwrap();
        damage.push((
            0,
            "bit flip",
            victim.offset,
            victim.offset + victim.len,
            victim.numbers,
        ));
    }
    {
        // A zero-filled tail (ext4 after a crash: the size was committed, the data was not): the
        // last record of the second (sealed) segment is zeros, up to the next 4 KiB.
        let victim = records[1].last().unwrap().clone();
        let mut bytes = std::fs::read(&segments[1]).unwrap();
        let end = bytes.len().div_ceil(4096) * 4096;
        bytes.resize(end, 0);
        bytes[usize::try_from(victim.offset).unwrap()..].fill(0);
        std::fs::write(&segments[1], &bytes).unwrap();
        damage.push((
            1,
            "zero-filled tail",
            victim.offset,
            end as u64,
            victim.numbers,
        ));
    }
    {
        // The last segment cut in the middle of its last record (a torn write).
        let last = segments.len() - 1;
        let victim = records[last].last().unwrap().clone();
        let cut = victim.offset + 32 + (victim.len - 32) / 2;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segments[last])
            .unwrap();
        file.set_len(cut).unwrap();
        damage.push((last, "torn last record", victim.offset, cut, victim.numbers));
    }
    // A half-written ack cursor: everything still on disk is sent again (never lost).
    std::fs::write(&cursor_path, &cursor[..13]).unwrap();
    for (seg, _, from, _, _) in &damage {
        records[*seg].retain(|r| r.offset != *from);
    }
    let lost: BTreeSet<u64> = damage.iter().flat_map(|d| d.4.clone()).collect();
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
    let expected_dropped: u64 = damage.iter().map(|d| d.3 - d.2).sum();
    for (seg, what, from, to, numbers) in &damage {
        eprintln!(
            "power cut: {what} in {}: bytes {from}..{to} ({} bytes, {} readings: {})",
            segments[*seg].file_name().unwrap().to_string_lossy(),
            to - from,
            numbers.len(),
            ranges(numbers.iter().copied())
        );
    }
    assert!(!lost.is_empty() && lost.is_disjoint(&intact));
    assert_eq!(intact.len() as u64 + lost.len() as u64, M + N);

    // Power back, store up: the gateway starts, reports the damage and sends every intact record.
    vm.start_again().unwrap();
    let restart = Instant::now();
    gateway.process.start_again().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || gateway.healthz_ok()),
        "/healthz after recovery\n{}",
        gateway.process.log_tail(30)
    );
    let all_in = wait_until(Duration::from_secs(40), || {
        stored_numbers(&vm).0.len() == intact.len()
            && gateway.metric("buffer_unsent_lines", &[]) == 0.0
    });
    let recover_s = restart.elapsed().as_secs_f64();
    let (stored, doubled) = stored_numbers(&vm);
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
    let dropped_metric = gateway.metric("buffer_recovery_dropped_bytes_total", &[]) as u64;
    let rows = vm_influx_rows(&vm);
    eprintln!(
        "power cut: {} intact readings in the store {recover_s:.1} s after the restart; {} lost; \
         {dropped_metric} bytes dropped by recovery (expected {expected_dropped}); VictoriaMetrics got {rows} rows \
         for {intact_lines} intact lines; peak RSS {} KiB; total {:.1} s",
        stored.len(),
        lost.len(),
        gateway.process.peak_rss_kib().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        dropped_metric, expected_dropped,
        "buffer_recovery_dropped_bytes_total"
    );
    // Each intact line sent exactly once since the restart (VictoriaMetrics counts rows per field).
    assert_eq!(
        rows,
        intact_lines * FIELDS_PER_MESSAGE,
        "rows received since the restart"
    );

    // The log says what was dropped, where.
    let log = gateway.process.log();
    for (seg, what, from, to, _) in &damage {
        let expected = format!("segment={} from={from} to={to}", segments[*seg].display());
        assert!(
            log.lines()
                .any(|l| l.contains("buffer recovery: skipping damaged bytes")
                    && l.contains(&expected)),
            "no recovery log line for the {what} ({expected}):\n{}",
            gateway.process.log_tail(40)
        );
    }
    assert!(
        log.contains(&format!("dropped_bytes={expected_dropped}")),
        "no summary line"
    );
    assert!(
        log.contains("buffer ack cursor is corrupt"),
        "cursor fallback not logged"
    );
    assert!(gateway.process.is_running());

    // The broker comes back and redelivers what the gateway had not acknowledged when it was
    // killed: the newest messages, so some readings of the torn last record may come back that
    // way (never a reading the gateway had acknowledged).
    assert_eq!(gateway.appended(), 0, "appends while the broker was away");
    broker.start_again().unwrap();
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
        gateway.appended() == redelivered && gateway.metric("buffer_unsent_lines", &[]) == 0.0
    });
    assert!(settled, "redelivery did not settle");
    let redelivered = gateway.appended();
    let (after, doubled) = stored_numbers(&vm);
    assert_eq!(doubled, 0);
    let back: BTreeSet<u64> = after.difference(&intact).copied().collect();
    eprintln!(
        "power cut: the broker redelivered {redelivered} unacknowledged messages; {} of the lost readings came back that way ({})",
        back.len(),
        ranges(back.iter().copied())
    );
    assert!(back.is_subset(&lost), "unknown readings arrived");
    if let Some(&first) = back.first() {
        let suffix: BTreeSet<u64> = lost.range(first..).copied().collect();
        assert_eq!(
            back, suffix,
            "what came back is not the unacknowledged tail"
        );
    }
    assert!(back.len() as u64 <= redelivered);
}
