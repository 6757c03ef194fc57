//! The one-command demo works as the README says: `sensor-sim demo`, here with a temp
//! `--dir` and free ports so it cannot clash with anything on the machine. The binary must be
//! built with the demo in it: `cargo build -p sensor-sim --features demo` (tests/scripts/test.sh
//! builds the workspace with `--features sensor-sim/demo`).
//!
//! - Without a store (`--store` naming a port nothing listens on): it prints where to look,
//!   serves the live page, `/api/sensors` shows the district's sensors with readings that keep
//!   updating, and it says plainly that it is buffering to disk (and the buffer fills).
//! - With the harness's real VictoriaMetrics as `--store`: the readings arrive there.
//! - Both stop cleanly within seconds on SIGINT (Ctrl-C) and SIGTERM (systemd, `kill`).
//!
//! Time from spawn to the printed addresses and to the first live reading are printed, not
//! asserted tightly (only a generous bound, a minute, is asserted).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ioc_e2e::{
    bin_path, free_port, now_ms, wait_until, ManifestCounts, SensorSim, StoreApi, VictoriaMetrics,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The README's promise: the demo shows live readings within a minute.
const WITHIN_A_MINUTE: Duration = Duration::from_secs(60);

/// A running `sensor-sim demo` with its output collected line by line.
struct Demo {
    child: Child,
    spawned: Instant,
    stdout: Arc<Mutex<Vec<(Duration, String)>>>,
    stderr: Arc<Mutex<Vec<(Duration, String)>>>,
}

fn collect<R: std::io::Read + Send + 'static>(
    from: R,
    spawned: Instant,
    into: Arc<Mutex<Vec<(Duration, String)>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap().push((spawned.elapsed(), line));
        }
    });
}

impl Demo {
    fn start(dir: &Path, store: &str) -> Demo {
        let spawned = Instant::now();
        let mut child = Command::new(bin_path("sensor-sim"))
            .arg("demo")
            .arg("--dir")
            .arg(dir)
            .args([
                "--store",
                store,
                "--mqtt-port",
                "0",
                "--http",
                "127.0.0.1:0",
                "--webhook",
                "127.0.0.1:0",
            ])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sensor-sim demo");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), spawned, Arc::clone(&stdout));
        collect(child.stderr.take().unwrap(), spawned, Arc::clone(&stderr));
        Demo {
            child,
            spawned,
            stdout,
            stderr,
        }
    }

    fn stdout_text(&self) -> String {
        let lines = self.stdout.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        let from = lines.len().saturating_sub(30);
        lines
            .iter()
            .skip(from)
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a stdout line starting with `prefix`; returns it and when it was printed.
    fn wait_line(&mut self, prefix: &str, within: Duration) -> (String, Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.starts_with(prefix))
                .map(|(t, l)| (l.clone(), *t))
            {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the demo exited ({status}) before printing {prefix:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout_text(),
                    self.stderr_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no line {prefix:?} within {within:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.stdout_text(),
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the exit: (status, time it took).
    fn stop(&mut self, signal: Signal) -> (ExitStatus, Duration) {
        let asked = Instant::now();
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        let deadline = asked + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, asked.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within 15 s of {signal}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.stdout_text(),
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn get(url: &str) -> (u16, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    match agent.get(url).call() {
        Ok(r) => {
            let code = r.status();
            (code, r.into_string().unwrap())
        }
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn sensors(base: &str) -> Value {
    let (code, body) = get(&format!("{base}/api/sensors"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The district's sensors on the board (not the vendor payloads the demo also plays, whose
/// times keep their fixtures' spacing: an OpenALPR group's start is long before its end).
fn district(body: &Value) -> impl Iterator<Item = &Value> {
    body["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["measurement"] != "camera_event")
}

/// `key → ts_ms` of every district sensor on the board.
fn board(body: &Value) -> BTreeMap<String, i64> {
    district(body)
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_owned(),
                s["ts_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The live page's base URL from the printed `  live page:      http://ADDR/` line.
fn live_page_base(line: &str) -> String {
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    url.trim_end_matches('/').to_owned()
}

#[test]
fn demo_without_a_store_shows_live_readings_and_buffers_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut demo = Demo::start(dir.path(), &nowhere);

    // Where to look, within a minute of start.
    let (line, printed_at) = demo.wait_line("  live page:", WITHIN_A_MINUTE);
    let base = live_page_base(&line);
    eprintln!("demo: addresses printed {printed_at:?} after spawn: {line}");
    let (store_line, _) = demo.wait_line("  store:", Duration::from_secs(1));
    let data_dir = std::fs::canonicalize(dir.path()).unwrap().join("data");
    assert!(
        store_line.starts_with(&format!("  store:          NOT REACHABLE at {nowhere} (")),
        "{store_line}"
    );
    let (buffering, _) = demo.wait_line(
        "                  Buffering to disk",
        Duration::from_secs(1),
    );
    assert_eq!(
        buffering,
        format!(
            "                  Buffering to disk: readings are kept at {} and forwarded as soon as it answers.",
            data_dir.display()
        )
    );

    // The page is served (the page itself is tested in a browser by the gateway's tests).
    let (code, page) = get(&format!("{base}/"));
    assert_eq!(code, 200);
    assert!(page.contains("<title>ioc-gateway live</title>"), "{page}");

    // Live readings from the district.
    let mut first = Value::Null;
    assert!(
        wait_until(WITHIN_A_MINUTE, || {
            first = sensors(&base);
            district(&first).next().is_some()
        }),
        "no reading within a minute: {first:#}\n--- stderr ---\n{}",
        demo.stderr_tail()
    );
    let first_reading = demo.spawned.elapsed();
    eprintln!("demo: first live reading {first_reading:?} after spawn");
    assert!(first_reading < WITHIN_A_MINUTE);
    let t0 = now_ms();
    for s in district(&first) {
        let ts = s["ts_ms"].as_i64().unwrap();
        assert!((t0 - 30_000..=t0 + 5_000).contains(&ts), "not live: {s}");
        assert!(!s["fields"].as_object().unwrap().is_empty(), "{s}");
    }

    // They update: within ~12 s (environment stations report every 10 s) some sensor already on
    // the board has a newer reading, and more of the district has reported.
    let before = board(&first);
    let mut later = Value::Null;
    let mut updated: Vec<String> = Vec::new();
    let mut envs = 0;
    assert!(
        wait_until(Duration::from_secs(15), || {
            later = sensors(&base);
            let after = board(&later);
            updated = before
                .iter()
                .filter(|(k, ts)| after.get(*k).is_some_and(|t| t > ts))
                .map(|(k, _)| k.clone())
                .collect();
            envs = after.keys().filter(|k| k.ends_with("/environment")).count();
            !updated.is_empty() && envs >= 5
        }),
        "readings did not update: before {before:?}\nafter {:?}",
        board(&later)
    );
    eprintln!(
        "demo: {} sensors on the board after {:?} ({envs} environment stations), {} updated since the first poll",
        later["sensors_total"],
        demo.spawned.elapsed(),
        updated.len()
    );
    let env = later["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["measurement"] == "environment")
        .unwrap();
    let mut fields: Vec<&str> = env["fields"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["humidity", "noise_db", "pm10", "pm2_5", "temperature"],
        "{env}"
    );
    assert!(env["fields"]["pm2_5"]["value"].as_f64().unwrap() >= 0.0);

    // The plate engines' webhooks: their inputs are listed like the MQTT ones, and the plates
    // they post show on the board with the input they came in on.
    let (line, _) = demo.wait_line("  webhooks:", Duration::from_secs(1));
    assert!(line.contains("/webhook/platerecognizer"), "{line}");
    for input in ["platerecognizer-webhook", "openalpr-webhook"] {
        let state = &later["inputs"][input];
        assert_eq!(state["kind"], "http", "{input}: {later:#}");
        assert_eq!(state["up"], true, "{input}: {state}");
    }
    let mut webhook_plate = Value::Null;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let body = sensors(&base);
            webhook_plate = body["camera_events"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["input"].as_str().is_some_and(|i| i.ends_with("-webhook")))
                .cloned()
                .unwrap_or(Value::Null);
            !webhook_plate.is_null()
        }),
        "no plate from a webhook on the board\n--- stderr ---\n{}",
        demo.stderr_tail()
    );
    assert_eq!(
        webhook_plate["measurement"], "camera_event",
        "{webhook_plate}"
    );
    assert_eq!(
        webhook_plate["tags"]["event_type"], "plate",
        "{webhook_plate}"
    );
    assert!(
        webhook_plate["fields"]["plate"].is_string(),
        "{webhook_plate}"
    );

    // Nothing reaches a store; it all waits on disk, and the demo says so again.
    assert_eq!(later["store"]["lines_sent"], 0);
    assert!(
        later["buffer"]["unsent_lines"].as_u64().unwrap() > 0,
        "{later:#}"
    );
    assert!(
        later["store"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(nowhere.trim_start_matches("http://"))),
        "{later:#}"
    );
    demo.wait_line(
        "store: not reachable, buffering to disk (",
        Duration::from_secs(10),
    );
    let on_disk: u64 = std::fs::read_dir(&data_dir)
        .unwrap()
        .flatten()
        .map(|e| dir_size(&e.path()))
        .sum();
    assert!(on_disk > 0, "nothing in {}", data_dir.display());

    // Ctrl-C: a clean exit within seconds.
    let (status, took) = demo.stop(Signal::SIGINT);
    eprintln!("demo: exited {status} {took:?} after SIGINT");
    assert!(status.success(), "{status}\n{}", demo.stderr_tail());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        demo.stdout_text().ends_with("stopped."),
        "{}",
        demo.stdout_text()
    );
}

fn dir_size(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

#[test]
fn demo_forwards_to_the_store_it_is_given_and_stops_on_sigterm() {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(dir.path(), &vm.url());
    let (line, printed_at) = demo.wait_line("  store:", WITHIN_A_MINUTE);
    eprintln!("demo: addresses printed {printed_at:?} after spawn");
    assert_eq!(
        line,
        format!(
            "  store:          forwarding to VictoriaMetrics at {}",
            vm.url()
        )
    );
    let (line, _) = demo.wait_line("  live page:", Duration::from_secs(1));
    let base = live_page_base(&line);

    // Readings arrive in the store, tagged with the demo gateway's id.
    let selector = r#"{__name__="environment_pm2_5",gateway="demo-gw"}"#;
    let mut points = 0;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let _ = vm.force_flush();
            points = vm.count_points(selector).unwrap_or(0);
            points > 0
        }),
        "nothing reached VictoriaMetrics\n--- stderr ---\n{}",
        demo.stderr_tail()
    );
    let arrived = demo.spawned.elapsed();
    let series = vm.export(selector).unwrap();
    eprintln!(
        "demo: {points} pm2_5 points in {} series in VictoriaMetrics {arrived:?} after spawn",
        series.len()
    );
    let t0 = now_ms();
    for s in &series {
        assert!(s
            .label("sensor_id")
            .is_some_and(|id| id.starts_with("env-")));
        assert!(s.label("district").is_some());
        let last = *s.timestamps_ms.last().unwrap();
        assert!(
            (t0 - 60_000..=t0 + 5_000).contains(&last),
            "not live: {last}"
        );
    }
    demo.wait_line(
        "store: batches confirmed, forwarding (",
        Duration::from_secs(10),
    );
    let body = sensors(&base);
    assert!(
        body["store"]["lines_sent"].as_u64().unwrap() > 0,
        "{body:#}"
    );
    assert_eq!(body["store"]["last_error"], Value::Null);

    // Let the demo post at least one plate webhook (every 4 s, from 2 s after start) first.
    let webhooks = dir.path().join("webhooks-manifest.jsonl");
    assert!(
        wait_until(Duration::from_secs(20), || {
            ManifestCounts::read(&webhooks).is_ok_and(|c| c.stored_points > 0)
        }),
        "no webhook answered 204\n--- stderr ---\n{}",
        demo.stderr_tail()
    );

    // SIGTERM (systemd, `kill`): a clean exit within seconds.
    let (status, took) = demo.stop(Signal::SIGTERM);
    eprintln!("demo: exited {status} {took:?} after SIGTERM");
    assert!(status.success(), "{status}\n{}", demo.stderr_tail());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        demo.stdout_text().ends_with("stopped."),
        "{}",
        demo.stdout_text()
    );

    // The vendor payloads the demo sent (over MQTT, and the plate engines' webhooks) are all in
    // the store with their exact values and times: `sensor-sim verify` on the demo's manifests.
    for manifest in ["presets-manifest.jsonl", "webhooks-manifest.jsonl"] {
        let path = dir.path().join(manifest);
        let counts = ManifestCounts::read(&path).unwrap();
        assert!(counts.stored_points > 0, "{manifest}: {counts:?}");
        let verdict = SensorSim::verify_until_passed(
            &path,
            &vm.url(),
            StoreApi::V2,
            &["--gateway-id", "demo-gw"],
            Duration::from_secs(20),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(verdict.passed(), "{manifest}:\n{verdict}");
        assert_eq!(verdict.counts().found, counts.stored_points, "{verdict}");
        eprintln!(
            "demo: {manifest}: {} readings verified in VictoriaMetrics",
            counts.stored_points
        );
    }
}
