//! A fleet of real gateways against one store tier, and the tier stopped under it.
//!
//! Why it exists: a province runs many gateways into one IOC, and after a central outage they
//! all drain at once. Here the real `sensor-sim fleet` starts real `ioc-gateway` processes (one
//! simulated district each, all on one mosquitto) writing to `vmagent` in front of two
//! VictoriaMetrics nodes (sharded by `hashmod`, no deduplication, so a doubled point shows);
//! the whole tier is stopped mid-run and started again. Then:
//!
//! 1. nothing is lost or doubled: the fleet's own read-back over both nodes, and the real
//!    `sensor-sim verify --store NODE0 --store NODE1 --gateway-id gw-NNN` for every gateway;
//! 2. every gateway's backlog built up during the outage and drained after it;
//! 3. the fleet's health readings (`ioc_gateway`) are in the store, one series per gateway.
//!
//! `fleet_of_fifty_through_a_five_minute_store_outage` (ignored: > 7 min) is the issue's
//! benchmark: ≥ 50 gateways × 20 sensors at 1 Hz, the tier stopped 5 minutes; it prints
//! readings lost, time until every backlog drained, the tier's peak request rate and error
//! count, per-gateway steady CPU and RSS. Its size and the gateways' extra `[output.influxdb]`
//! keys come from the environment (see [`BenchParams`]), so the same run can be made with and
//! without jitter and adaptive concurrency.

use ioc_e2e::{bin_path, HeavyTestLock, Mosquitto, SensorSim, StoreApi, StoreTier, TierCounters};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Extra `[output.influxdb]` keys given to every gateway of both tests (`KEY=TOML-VALUE`), on
/// top of `IOC_FLEET_OUTPUT_SET`: the place for the drain knobs (`flush_jitter_ms`,
/// `drain_spread_ms`, `max_in_flight`) once the gateway has them.
const EXTRA_OUTPUT_KEYS: &[&str] = &[];

/// `IOC_FLEET_OUTPUT_SET="flush_jitter_ms=2000;max_in_flight=4"`: more `[output.influxdb]`
/// keys, `;`-separated.
fn output_set() -> Vec<String> {
    let mut keys: Vec<String> = EXTRA_OUTPUT_KEYS.iter().map(|s| s.to_string()).collect();
    if let Ok(more) = std::env::var("IOC_FLEET_OUTPUT_SET") {
        keys.extend(
            more.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    keys
}

/// `IOC_FLEET_AGENT_FLAGS="-maxConcurrentInserts=2 -insert.maxQueueDuration=200ms"`: more
/// vmagent flags, space-separated; these two make a tier that answers 503 to what it cannot
/// take within 200 ms, so a storm shows as refused requests.
fn agent_flags() -> Vec<String> {
    std::env::var("IOC_FLEET_AGENT_FLAGS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The shape of one fleet run.
#[derive(Clone, Debug)]
struct BenchParams {
    gateways: usize,
    sensors: usize,
    rate_hz: f64,
    /// Publishing before the outage (the steady CPU window lies in it).
    before: Duration,
    outage: Duration,
    /// Publishing after the tier is back.
    after: Duration,
    health_interval_s: u64,
}

/// `sensor-sim fleet` in the background, with its stdout (the report) in a file.
struct FleetRun {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    dir: PathBuf,
}

impl FleetRun {
    fn spawn(p: &BenchParams, broker: &str, tier: &StoreTier, work: &Path) -> FleetRun {
        let dir = work.join("fleet");
        let stdout = work.join("fleet.stdout");
        let stderr = work.join("fleet.stderr");
        let duration = (p.before + p.outage + p.after).as_secs_f64();
        let mut cmd = Command::new(bin_path("sensor-sim"));
        cmd.arg("fleet")
            .args(["--gateways", &p.gateways.to_string()])
            .args(["--sensors", &p.sensors.to_string()])
            .args(["--rate", &p.rate_hz.to_string()])
            .args(["--duration", &duration.to_string()])
            .args(["--broker", broker])
            .args(["--store-url", &tier.ingest_url()])
            .args(["--health-interval-s", &p.health_interval_s.to_string()])
            .args([
                "--gateway-bin",
                &bin_path("ioc-gateway").display().to_string(),
            ])
            .args(["--warmup", &(p.before.as_secs_f64() / 4.0).to_string()])
            .args([
                "--steady-window",
                &(p.before.as_secs_f64() / 2.0).to_string(),
            ])
            .args(["--drain-timeout", "600", "--readback-timeout", "120"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for node in tier.node_urls() {
            cmd.args(["--read-store", &node]);
        }
        for key in output_set() {
            cmd.args(["--output-set", &key]);
        }
        FleetRun {
            child: cmd.spawn().expect("start sensor-sim fleet"),
            stdout,
            stderr,
            dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the districts publish (the fleet's manifest exists: every gateway is up).
    fn wait_publishing(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.dir.join("manifest-all.jsonl").exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sensor-sim fleet exited early ({status}):\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the fleet did not start publishing within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the end and returns the exit code and the report (the last stdout line).
    fn finish(&mut self, timeout: Duration) -> (Option<i32>, Value, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = self.child.wait();
                panic!(
                    "sensor-sim fleet still running after {timeout:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let report = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no report from sensor-sim fleet ({status}):\nstdout:\n{out}\nstderr:\n{}",
                    self.stderr()
                )
            });
        let table: String = out
            .lines()
            .filter(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n");
        (status.code(), report, table)
    }
}

impl Drop for FleetRun {
    fn drop(&mut self) {
        // SIGTERM: sensor-sim stops every gateway it started, by PID.
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The tier's counters once a second while the run lasts: peak write requests per second at
/// vmagent and at the nodes, and the error totals.
struct TierWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<Mutex<(f64, f64)>>,
    totals: Arc<Mutex<TierCounters>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl TierWatch {
    fn start(tier: Arc<Mutex<StoreTier>>) -> TierWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new((0.0f64, 0.0f64)));
        let totals = Arc::new(Mutex::new(TierCounters::default()));
        let (s, p, t) = (stop.clone(), peak.clone(), totals.clone());
        let handle = std::thread::spawn(move || {
            let read = || tier.lock().map(|t| t.counters()).unwrap_or_default();
            let mut last = read();
            let mut at = Instant::now();
            while !s.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_secs(1));
                let now = read();
                let secs = at.elapsed().as_secs_f64().max(0.001);
                at = Instant::now();
                let d = now.delta(&last);
                last = now;
                if let Ok(mut peak) = p.lock() {
                    peak.0 = peak.0.max(d.ingest_requests / secs);
                    peak.1 = peak.1.max(d.node_requests / secs);
                }
                if let Ok(mut totals) = t.lock() {
                    totals.ingest_requests += d.ingest_requests;
                    totals.ingest_errors += d.ingest_errors;
                    totals.forward_errors += d.forward_errors;
                    totals.node_requests += d.node_requests;
                    totals.node_errors += d.node_errors;
                }
            }
        });
        TierWatch {
            stop,
            peak,
            totals,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> ((f64, f64), TierCounters) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let peak = *self.peak.lock().unwrap();
        let totals = *self.totals.lock().unwrap();
        (peak, totals)
    }
}

/// What one run measured.
struct Outcome {
    report: Value,
    table: String,
    restarted_ms: i64,
    peak_rps: (f64, f64),
    tier: TierCounters,
    work: TempDir,
    health_series: Vec<(String, usize)>,
}

fn now_ms() -> i64 {
    ioc_e2e::now_ms()
}

/// Runs the fleet with the tier stopped `p.before` into the run for `p.outage`.
fn run_fleet_through_outage(p: &BenchParams) -> Outcome {
    let broker = Mosquitto::start().unwrap();
    let tier = Arc::new(Mutex::new(
        StoreTier::start_with_agent_flags(2, &agent_flags()).unwrap(),
    ));
    let work = TempDir::new().unwrap();
    let mut run = {
        let t = tier.lock().unwrap();
        FleetRun::spawn(p, &broker.url(), &t, work.path())
    };
    let watch = TierWatch::start(tier.clone());
    run.wait_publishing(Duration::from_secs(120 + p.gateways as u64 * 2));
    std::thread::sleep(p.before);
    tier.lock().unwrap().stop();
    let stopped = Instant::now();
    std::thread::sleep(p.outage.saturating_sub(stopped.elapsed()));
    tier.lock().unwrap().start_again().unwrap();
    let restarted_ms = now_ms();
    let total = p.before + p.outage + p.after;
    let (code, report, table) = run.finish(total + Duration::from_secs(900));
    let (peak_rps, tier_totals) = watch.finish();
    let tier = Arc::try_unwrap(tier)
        .ok()
        .expect("tier watcher done")
        .into_inner()
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "sensor-sim fleet failed:\n{table}\n{}\nstderr:\n{}",
        report_brief(&report),
        run.stderr()
    );

    // `sensor-sim verify` over both nodes, per gateway, against the fleet's manifests.
    let nodes = tier.node_urls();
    for g in 0..p.gateways {
        let id = format!("gw-{:03}", g + 1);
        let manifest = run.dir.join("manifests").join(format!("{id}.jsonl"));
        let verdict = SensorSim::verify(
            &manifest,
            &nodes[0],
            StoreApi::V2,
            &["--store", &nodes[1], "--gateway-id", &id],
        )
        .unwrap();
        assert!(
            verdict.passed(),
            "{id}: {}\n{}",
            verdict.report,
            verdict.stderr
        );
    }

    // Health: one `ioc_gateway` series per gateway, over both nodes.
    let series = tier.export("ioc_gateway_uptime_s").unwrap();
    let mut per_gateway: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, s) in &series {
        *per_gateway
            .entry(s.label("gateway").unwrap_or("").to_owned())
            .or_default() += 1;
    }
    Outcome {
        report,
        table,
        restarted_ms,
        peak_rps,
        tier: tier_totals,
        work,
        health_series: per_gateway.into_iter().collect(),
    }
}

fn report_brief(r: &Value) -> String {
    let mut r = r.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("backlog_timeline");
        o.remove("per_gateway");
    }
    r.to_string()
}

fn u(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("report has no {key}: {}", report_brief(r)))
}

/// Checks the outcome's promises and prints its figures.
fn judge(p: &BenchParams, o: &Outcome) {
    let r = &o.report;
    let brief = report_brief(r);
    let sent = u(r, "sent");
    // Every gateway got its district for the whole run (at least half its readings: a
    // loaded machine may start publishing late, never stop early).
    let expected =
        (p.gateways * p.sensors) as f64 * p.rate_hz * (p.before + p.outage + p.after).as_secs_f64();
    assert!(
        sent as f64 > expected * 0.5,
        "sent {sent} of ~{expected}: {brief}"
    );
    assert_eq!(u(r, "missing"), 0, "readings lost: {brief}\n{}", o.table);
    assert_eq!(
        u(r, "duplicates"),
        0,
        "readings doubled: {brief}\n{}",
        o.table
    );
    assert_eq!(
        u(r, "mismatched"),
        0,
        "readings changed: {brief}\n{}",
        o.table
    );
    assert_eq!(u(r, "stored"), sent, "{brief}");
    assert_eq!(r["drained"], Value::Bool(true), "{brief}");
    let threshold = u(r, "backlog_threshold");
    let gateways = r["per_gateway"].as_array().expect("per_gateway");
    assert_eq!(gateways.len(), p.gateways);
    for g in gateways {
        let id = g["id"].as_str().unwrap_or("?");
        assert_eq!(g["unsent_lines"].as_u64(), Some(0), "{id} not drained: {g}");
        assert!(
            g["peak_unsent_lines"].as_u64().unwrap_or(0) > threshold,
            "{id} never built a backlog while the tier was down: {g}"
        );
        assert_eq!(g["sent"], g["stored"], "{id}: {g}");
    }
    assert_eq!(
        o.health_series.len(),
        p.gateways,
        "health series per gateway: {:?}",
        o.health_series
    );
    assert!(
        o.health_series
            .iter()
            .all(|(g, n)| g.starts_with("gw-") && *n == 1),
        "one ioc_gateway series per gateway: {:?}",
        o.health_series
    );
    assert_eq!(u(r, "health_gateways_seen") as usize, p.gateways, "{brief}");

    let drained_after_s = r["drained_at_ms"]
        .as_i64()
        .map(|t| (t - o.restarted_ms) as f64 / 1000.0);
    let peak = u(r, "peak_unsent_lines");
    let rss: Vec<u64> = gateways
        .iter()
        .filter_map(|g| g["peak_rss_kib"].as_u64())
        .collect();
    let cpu: Vec<f64> = gateways
        .iter()
        .filter_map(|g| g["steady_cpu_pct"].as_f64())
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "fleet: {} gateways x {} sensors at {} Hz, tier (vmagent + 2 VictoriaMetrics) stopped {:.0} s; \
         extra [output.influxdb] keys {:?}, extra vmagent flags {:?}\n\
         readings sent {sent}, stored {}, lost {}, doubled {}; peak fleet backlog {peak} lines; \
         every backlog drained {} after the tier was back\n\
         store tier: peak {:.1} write requests/s at vmagent, {:.1}/s at the nodes; {} requests at vmagent \
         ({} refused), {} vmagent->node errors, {} node errors\n\
         per gateway: steady CPU mean {:.2} % of a core (min {:.2}, max {:.2}); peak RSS mean {} KiB, max {} KiB\n\
         health series: {} gateways, one ioc_gateway series each\n{}",
        p.gateways,
        p.sensors,
        p.rate_hz,
        p.outage.as_secs_f64(),
        output_set(),
        agent_flags(),
        u(r, "stored"),
        u(r, "missing"),
        u(r, "duplicates"),
        drained_after_s.map_or("(never backlogged)".into(), |s| format!("{s:.1} s")),
        o.peak_rps.0,
        o.peak_rps.1,
        o.tier.ingest_requests,
        o.tier.ingest_errors,
        o.tier.forward_errors,
        o.tier.node_errors,
        mean(&cpu),
        cpu.iter().cloned().fold(f64::INFINITY, f64::min),
        cpu.iter().cloned().fold(0.0, f64::max),
        rss.iter().sum::<u64>() / rss.len().max(1) as u64,
        rss.iter().max().unwrap_or(&0),
        o.health_series.len(),
        o.table
    );
    let _ = &o.work;
}

#[test]
fn fleet_of_ten_loses_nothing_through_a_store_tier_outage() {
    let _lock = HeavyTestLock::acquire();
    let p = BenchParams {
        gateways: 10,
        sensors: 5,
        rate_hz: 1.0,
        before: Duration::from_secs(15),
        outage: Duration::from_secs(20),
        after: Duration::from_secs(20),
        health_interval_s: 5,
    };
    let outcome = run_fleet_through_outage(&p);
    judge(&p, &outcome);
}

/// `IOC_FLEET_GATEWAYS` (50), `IOC_FLEET_SENSORS` (20), `IOC_FLEET_OUTAGE_S` (300), plus
/// `IOC_FLEET_OUTPUT_SET` for the gateways' drain knobs.
fn bench_params() -> BenchParams {
    let env = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    BenchParams {
        gateways: env("IOC_FLEET_GATEWAYS", 50) as usize,
        sensors: env("IOC_FLEET_SENSORS", 20) as usize,
        rate_hz: 1.0,
        before: Duration::from_secs(60),
        outage: Duration::from_secs(env("IOC_FLEET_OUTAGE_S", 300)),
        after: Duration::from_secs(60),
        health_interval_s: 10,
    }
}

#[test]
#[ignore = "benchmark: > 7 minutes; cargo nextest run -p ioc-e2e --test fleet_e2e --run-ignored only --no-capture"]
fn fleet_of_fifty_through_a_five_minute_store_outage() {
    let _lock = HeavyTestLock::acquire();
    let p = bench_params();
    let outcome = run_fleet_through_outage(&p);
    judge(&p, &outcome);
}
