//! Every reading published at QoS 1 is stored exactly once, with exact tags, values and times,
//! through crashes, store outages and broker restarts: real mosquitto → `ioc-gateway run` (a real
//! process) → real VictoriaMetrics / InfluxDB 1.x, checked by reading every point back with exact tags,
//! values and timestamps.
//!
//! The volume, crash, outage and broker-restart tests publish with the real `sensor-sim run` (an
//! environment-only scenario written by the test) and take the real `sensor-sim verify` as their
//! verdict; each also checks what `verify` does not (the exact label set, nothing stored
//! beyond the manifest, InfluxDB's nanosecond times and field types), and one shows the verdict
//! failing on a tampered manifest and on an empty store. The bad-input and string/tag tests publish
//! hand-made payloads with [`MqttPublisher`] and read the store back themselves.
//!
//! Written against the gateway's documented contract: `ioc-gateway run --config FILE`, `ioc-gateway check-config
//! FILE`, the TOML keys of `[gateway]`, `[[inputs.mqtt]]`, `[output.influxdb]`, `[buffer]`, topics
//! `city/<district>/env/<sensor_id>` with `topic_tags = "_/district/_/sensor_id"`, JSON numbers as float
//! fields, VictoriaMetrics series `environment_<field>{district,sensor_id,gateway}`.
//!
//! HEAVY tests (names start with `heavy_`, 30-120 s each) take [`HeavyTestLock`] so that only one runs
//! at a time on a 2-core machine: the 100,000-message crash test and the 30-second store outage. The
//! others push 10,000 messages or fewer, or only run `check-config`.

use ioc_e2e::{
    check_config, check_config_with, ExportedSeries, GatewayProcess, HeavyTestLock, Influx1,
    ManifestCounts, Mosquitto, MqttPublisher, RunOptions, SensorSim, StoreApi, VerifyOutcome,
    VictoriaMetrics,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const GATEWAY_ID: &str = "e2e-gw";
const TOPIC_FILTER: &str = "city/+/env/+";
const FIELDS: [&str; 5] = ["pm2_5", "pm10", "temperature", "humidity", "noise_db"];
/// Environment variable named by `token_env` in the test configs (VictoriaMetrics ignores the token).
const TOKEN_ENV: &str = "IOC_E2E_INFLUX_TOKEN";
/// 2023-11-14T22:13:20Z: fixed, so that failures are reproducible; well inside the 100y retention.
const BASE_TS_MS: i64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------------------------
// Test data: one environment reading per message, all values exactly representable in short decimals.
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct EnvReading {
    district: String,
    sensor_id: String,
    ts_ms: i64,
    values: [f64; 5], // in FIELDS order
}

impl EnvReading {
    /// Message `i` of a run over `sensors` sensors in 4 districts; each sensor gets one reading per
    /// second of (fake) time, so (series, timestamp) is unique per message.
    fn nth(i: usize, sensors: usize) -> Self {
        let sensor = i % sensors;
        let seq = (i / sensors) as i64;
        let n = i as i64;
        EnvReading {
            district: format!("d{}", sensor % 4),
            sensor_id: format!("s{sensor:03}"),
            ts_ms: BASE_TS_MS + seq * 1000 + sensor as i64,
            values: [
                (n * 7 % 1000) as f64 / 10.0,       // pm2_5 0.0..99.9
                (n * 13 % 2000) as f64 / 10.0,      // pm10
                ((n % 700) - 200) as f64 / 10.0,    // temperature -20.0..49.9
                (n % 1000) as f64 / 10.0,           // humidity
                30.0 + (n * 3 % 600) as f64 / 10.0, // noise_db
            ],
        }
    }

    fn topic(&self) -> String {
        format!("city/{}/env/{}", self.district, self.sensor_id)
    }

    /// `{"ts":<ms>,"pm2_5":..,"pm10":..,"temperature":..,"humidity":..,"noise_db":..}`. Rust prints
    /// 40.0 as `40`: integer-looking JSON numbers must still become float fields.
    fn payload(&self) -> String {
        let v = &self.values;
        format!(
            r#"{{"ts":{},"pm2_5":{},"pm10":{},"temperature":{},"humidity":{},"noise_db":{}}}"#,
            self.ts_ms, v[0], v[1], v[2], v[3], v[4]
        )
    }
}

// ---------------------------------------------------------------------------------------------------
// Gateway config (the documented contract).
// ---------------------------------------------------------------------------------------------------

enum Store<'a> {
    Victoria(&'a VictoriaMetrics),
    Influx1 { url: String, database: &'a str },
}

/// Writes a gateway config into `dir` and returns its path. `data_dir` is `dir/data` (created, as
/// systemd's StateDirectory would).
fn write_gateway_config(
    dir: &Path,
    mqtt_url: &str,
    store: Store<'_>,
    tag_keys: &[&str],
) -> PathBuf {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let tag_keys: Vec<String> = tag_keys.iter().map(|k| format!("{k:?}")).collect();
    let output = match store {
        Store::Victoria(vm) => format!(
            "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\ntoken_env = \"{TOKEN_ENV}\"\n",
            vm.url()
        ),
        Store::Influx1 { url, database } => {
            format!("url = \"{url}\"\napi = \"v1\"\ndatabase = \"{database}\"\n")
        }
    };
    let text = format!(
        r#"# ioc-gateway config written by tests/tests/spine_e2e.rs
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data_dir}"

[[inputs.mqtt]]
url = "{mqtt_url}"
client_id = "{GATEWAY_ID}"
topics = ["{TOPIC_FILTER}"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
tag_keys = [{tag_keys}]

[output.influxdb]
{output}batch_max_lines = 5000
flush_interval_ms = 200

[buffer]
max_disk_mb = 1024
"#,
        data_dir = data_dir.display(),
        tag_keys = tag_keys.join(", "),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the gateway and waits until it has subscribed at the broker (messages published before that
/// would not be queued for it).
fn spawn_gateway(config: &Path, broker: &Mosquitto) -> GatewayProcess {
    let before = broker.subscription_count(GATEWAY_ID, TOPIC_FILTER);
    let mut gateway = GatewayProcess::spawn_with_env(config, &[(TOKEN_ENV, "e2e-token")]).unwrap();
    let subscribed =
        broker.wait_for_subscription(GATEWAY_ID, TOPIC_FILTER, before, Duration::from_secs(20));
    assert!(
        subscribed,
        "the gateway did not subscribe to {TOPIC_FILTER} within 20 s (running: {}).\n--- gateway log ---\n{}\n--- broker log ---\n{}",
        gateway.is_running(),
        gateway.log_tail(40),
        broker.log_tail(20)
    );
    gateway
}

// ---------------------------------------------------------------------------------------------------
// Checking what arrived.
// ---------------------------------------------------------------------------------------------------

/// (metric name, district, sensor_id) → samples sorted by timestamp.
type SeriesKey = (String, String, String);

fn expected_series(readings: &[EnvReading]) -> BTreeMap<SeriesKey, Vec<(i64, f64)>> {
    let mut expected: BTreeMap<SeriesKey, Vec<(i64, f64)>> = BTreeMap::new();
    for r in readings {
        for (field, value) in FIELDS.iter().zip(r.values) {
            expected
                .entry((
                    format!("environment_{field}"),
                    r.district.clone(),
                    r.sensor_id.clone(),
                ))
                .or_default()
                .push((r.ts_ms, value));
        }
    }
    for samples in expected.values_mut() {
        samples.sort_by_key(|(t, _)| *t);
    }
    expected
}

/// Every exported series must carry exactly the labels `__name__`, `district`, `sensor_id` and
/// `gateway="e2e-gw"`; returns them keyed like [`expected_series`].
fn actual_series(series: Vec<ExportedSeries>) -> BTreeMap<SeriesKey, Vec<(i64, f64)>> {
    let mut actual = BTreeMap::new();
    for s in series {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec!["__name__", "district", "gateway", "sensor_id"],
            "unexpected label set on {:?}",
            s.labels
        );
        assert_eq!(s.label("gateway"), Some(GATEWAY_ID), "{:?}", s.labels);
        let key = (
            s.name().to_string(),
            s.label("district").unwrap_or_default().to_string(),
            s.label("sensor_id").unwrap_or_default().to_string(),
        );
        let samples = s.timestamps_ms.into_iter().zip(s.values).collect();
        assert!(actual.insert(key, samples).is_none());
    }
    actual
}

/// A readable account of the differences between two series maps (empty when equal).
fn describe_differences(
    expected: &BTreeMap<SeriesKey, Vec<(i64, f64)>>,
    actual: &BTreeMap<SeriesKey, Vec<(i64, f64)>>,
) -> String {
    let mut out = Vec::new();
    let expected_points: usize = expected.values().map(Vec::len).sum();
    let actual_points: usize = actual.values().map(Vec::len).sum();
    for (key, want) in expected {
        match actual.get(key) {
            None => out.push(format!("missing series {key:?} ({} points)", want.len())),
            Some(got) if got != want => {
                let got_set: BTreeSet<(i64, u64)> =
                    got.iter().map(|(t, v)| (*t, v.to_bits())).collect();
                let want_set: BTreeSet<(i64, u64)> =
                    want.iter().map(|(t, v)| (*t, v.to_bits())).collect();
                let as_points = |set: Vec<&(i64, u64)>| -> Vec<(i64, f64)> {
                    set.into_iter()
                        .map(|(t, v)| (*t, f64::from_bits(*v)))
                        .collect()
                };
                let missing = as_points(want_set.difference(&got_set).take(3).collect());
                let extra = as_points(got_set.difference(&want_set).take(3).collect());
                out.push(format!(
                    "series {key:?}: expected {} points, got {} (missing e.g. {missing:?}, extra e.g. {extra:?})",
                    want.len(),
                    got.len()
                ));
            }
            Some(_) => {}
        }
    }
    for key in actual.keys().filter(|k| !expected.contains_key(*k)) {
        out.push(format!("unexpected series {key:?}"));
    }
    if out.is_empty() {
        return String::new();
    }
    let shown = out.len().min(10);
    format!(
        "expected {expected_points} points in {} series, got {actual_points} points in {} series; {} differences, first {shown}:\n  {}",
        expected.len(),
        actual.len(),
        out.len(),
        out[..shown].join("\n  ")
    )
}

/// Polls VictoriaMetrics (flush + export) until it holds exactly `expected`, or `timeout` passes; then
/// asserts equality with a readable diff and the gateway's log.
fn assert_victoria_holds_exactly(
    vm: &VictoriaMetrics,
    selector: &str,
    expected: &BTreeMap<SeriesKey, Vec<(i64, f64)>>,
    gateway: &GatewayProcess,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    loop {
        vm.force_flush().unwrap();
        let actual = actual_series(vm.export(selector).unwrap());
        let diff = describe_differences(expected, &actual);
        if diff.is_empty() {
            return;
        }
        let count: usize = actual.values().map(Vec::len).sum();
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        }
        // Give up early when nothing has moved for a long while.
        let stalled = last_progress.elapsed() > Duration::from_secs(45);
        if Instant::now() >= deadline || stalled {
            panic!(
                "VictoriaMetrics does not hold exactly what was published ({}):\n{diff}\n--- gateway log tail ---\n{}",
                if stalled { "no progress for 45 s" } else { "timeout" },
                gateway.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
}

// ---------------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------
// Runs through `sensor-sim run` and judged by `sensor-sim verify`.
// ---------------------------------------------------------------------------------------------------

/// The environment-only scenario these tests play: `stations` stations spread over districts
/// d0..d3, one reading per station per simulated second (topics `city/<district>/env/env-NNNN`).
fn env_scenario(dir: &Path, stations: usize) -> PathBuf {
    SensorSim::env_scenario(dir, "spine-env", stations, &["d0", "d1", "d2", "d3"], 1)
}

/// `sensor-sim run` options: `--client-id <client_id>` plus `opts`.
fn sim_options(client_id: &str, opts: RunOptions) -> RunOptions {
    RunOptions {
        client_id: Some(client_id.into()),
        qos: Some(1),
        ..opts
    }
}

/// Runs `sensor-sim verify --gateway-id e2e-gw` until it passes (the gateway may still be
/// forwarding); asserts that it passed and that its counts are the manifest's: every distinct
/// acknowledged reading found, none twice.
fn assert_verify_passes(
    manifest: &Path,
    store_url: &str,
    api: StoreApi,
    gateway: &GatewayProcess,
    timeout: Duration,
) -> (ManifestCounts, VerifyOutcome) {
    let counts = ManifestCounts::read(manifest).unwrap();
    let mut extra = vec!["--gateway-id", GATEWAY_ID];
    if api == StoreApi::V1 {
        extra.extend(["--database", "telemetry"]);
    }
    let verdict = SensorSim::verify_until_passed(
        manifest,
        store_url,
        api,
        &extra,
        timeout,
        Duration::from_secs(45),
    )
    .unwrap();
    assert!(
        verdict.passed(),
        "{verdict}\n--- gateway log tail ---\n{}",
        gateway.log_tail(40)
    );
    let totals = verdict.counts();
    assert_eq!(totals.expected, counts.stored_points, "{verdict}");
    assert_eq!(totals.found, counts.stored_points, "{verdict}");
    assert_eq!(totals.duplicates, 0, "{verdict}");
    (counts, verdict)
}

/// What `verify` does not look at, in VictoriaMetrics: every `environment_*` series carries exactly
/// the labels `__name__`, `district`, `sensor_id` and `gateway="e2e-gw"`, and the store holds no
/// sample beyond the manifest's (`expected_samples`).
fn assert_victoria_holds_nothing_else(vm: &VictoriaMetrics, counts: &ManifestCounts) {
    vm.force_flush().unwrap();
    let series = vm.export("{__name__=~\"environment_.*\"}").unwrap();
    let mut samples = 0u64;
    for s in &series {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec!["__name__", "district", "gateway", "sensor_id"],
            "unexpected label set on {:?}",
            s.labels
        );
        assert_eq!(s.label("gateway"), Some(GATEWAY_ID), "{:?}", s.labels);
        samples += s.timestamps_ms.len() as u64;
    }
    let expected: u64 = counts.field_points["environment"].values().sum();
    assert_eq!(samples, expected, "samples in the store vs the manifest");
}

/// 10,000 QoS 1 messages from `sensor-sim run` (20 stations × 500) → VictoriaMetrics; `sensor-sim
/// verify` must find every reading with its values and millisecond timestamp; the store holds
/// nothing else. Then the verdict is shown to fail on a manifest with one value changed and one
/// reading the gateway never saw.
#[test]
fn ten_thousand_messages_arrive_exactly_in_victoria_metrics() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &[]);
    let gateway = spawn_gateway(&config, &broker);

    let manifest = dir.path().join("manifest.jsonl");
    let started = Instant::now();
    let run = SensorSim::run(
        &env_scenario(dir.path(), 20),
        &broker.url(),
        1,
        &manifest,
        &sim_options(
            "e2e-sim-10k",
            RunOptions {
                messages: Some(10_000),
                rate: Some(0.0),
                ..RunOptions::default()
            },
        ),
    )
    .unwrap();
    assert_eq!((run.published, run.acked, run.lost), (10_000, 10_000, 0));
    let (counts, verdict) = assert_verify_passes(
        &manifest,
        &vm.url(),
        StoreApi::V2,
        &gateway,
        Duration::from_secs(120),
    );
    assert_eq!(counts.stored_points, 10_000);
    assert_victoria_holds_nothing_else(&vm, &counts);
    eprintln!(
        "10,000 messages end to end in {:?} (sensor-sim {} msg/s); {}",
        started.elapsed(),
        run.rate,
        verdict.report.lines().last().unwrap_or_default()
    );

    // The verdict can fail: one value changed, one reading the gateway never saw.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut changed: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    let pm = changed["f"]["pm2_5"].as_f64().unwrap();
    changed["f"]["pm2_5"] = serde_json::json!(pm + 1.0);
    lines[1] = changed.to_string();
    let mut unseen: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    unseen["ts"] = serde_json::json!(unseen["ts"].as_i64().unwrap() + 3_600_000);
    lines.push(unseen.to_string());
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let failed = SensorSim::verify(
        &tampered,
        &vm.url(),
        StoreApi::V2,
        &["--gateway-id", GATEWAY_ID],
    )
    .unwrap();
    assert_eq!(failed.code, Some(1), "{failed}");
    let t = failed.counts();
    assert_eq!(
        (t.expected, t.found, t.missing, t.mismatched, t.duplicates),
        (10_001, 10_000, 1, 1, 0),
        "{failed}"
    );
}

/// `sensor-sim verify` fails on a store that holds nothing (no gateway ran): every acknowledged
/// reading is reported missing and it exits 1.
#[test]
fn verify_fails_when_the_store_holds_nothing() {
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let manifest = dir.path().join("manifest.jsonl");
    let run = SensorSim::run(
        &env_scenario(dir.path(), 5),
        &broker.url(),
        3,
        &manifest,
        &sim_options(
            "e2e-sim-empty",
            RunOptions {
                messages: Some(500),
                ..RunOptions::default()
            },
        ),
    )
    .unwrap();
    assert_eq!(run.acked, 500);
    let verdict = SensorSim::verify(&manifest, &vm.url(), StoreApi::V2, &[]).unwrap();
    assert_eq!(verdict.code, Some(1), "{verdict}");
    let t = verdict.counts();
    assert_eq!((t.expected, t.found, t.missing), (500, 0, 500), "{verdict}");
}

/// The same 10,000 messages through `api = "v1"` into InfluxDB 1.x: `verify` finds every reading
/// (it counts a time off the millisecond grid as missing); besides, every row's time is exactly
/// ms × 1,000,000, every field is a float field, and there is one row per message.
#[test]
fn ten_thousand_messages_arrive_exactly_in_influxdb1() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let influx = Influx1::start().unwrap();
    influx.create_database("telemetry").unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(
        dir.path(),
        &broker.url(),
        Store::Influx1 {
            url: influx.url(),
            database: "telemetry",
        },
        &[],
    );
    let gateway = spawn_gateway(&config, &broker);

    let manifest = dir.path().join("manifest.jsonl");
    let run = SensorSim::run(
        &env_scenario(dir.path(), 20),
        &broker.url(),
        1,
        &manifest,
        &sim_options(
            "e2e-sim-influx",
            RunOptions {
                messages: Some(10_000),
                rate: Some(0.0),
                ..RunOptions::default()
            },
        ),
    )
    .unwrap();
    assert_eq!((run.published, run.acked, run.lost), (10_000, 10_000, 0));
    let (counts, _) = assert_verify_passes(
        &manifest,
        &influx.url(),
        StoreApi::V1,
        &gateway,
        Duration::from_secs(120),
    );
    assert_eq!(counts.stored_points, 10_000);

    // One row per message, tagged with the gateway, at an exact millisecond in nanoseconds.
    let rows = influx
        .query_rows("telemetry", "SELECT pm2_5, gateway FROM environment")
        .unwrap();
    assert_eq!(rows.len(), 10_000);
    for row in &rows {
        assert_eq!(row["gateway"], GATEWAY_ID, "{row:?}");
        let ns = row["time"].as_i64().unwrap();
        assert_eq!(ns % 1_000_000, 0, "time {ns} is not a whole millisecond");
    }

    // Every field is a float field (JSON numbers are floats, even when they look like integers).
    let types = influx
        .query_rows("telemetry", "SHOW FIELD KEYS FROM environment")
        .unwrap();
    let types: BTreeMap<String, String> = types
        .iter()
        .map(|r| {
            (
                r["fieldKey"].as_str().unwrap().to_string(),
                r["fieldType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let floats: BTreeMap<String, String> = FIELDS
        .iter()
        .map(|f| (f.to_string(), "float".to_string()))
        .collect();
    assert_eq!(types, floats);
}

/// HEAVY (~15-30 s). `kill -9` the gateway in the middle of a 100,000-message `sensor-sim run`
/// (100 stations × 1000), keep publishing while it is down, restart it; kill it again soon after
/// the restart (while the backlog is replayed and the buffer has just been recovered) and restart
/// it: `verify` finds every message the broker acknowledged exactly once, with its values, and the
/// store holds nothing else.
#[test]
fn heavy_kill9_mid_run_loses_no_acknowledged_message() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &[]);
    let mut gateway = spawn_gateway(&config, &broker);

    const TOTAL: u64 = 100_000;
    const FIRST_KILL_AT: usize = 25_000;
    let manifest = dir.path().join("manifest.jsonl");
    let sim = SensorSim::spawn(
        &env_scenario(dir.path(), 100),
        &broker.url(),
        2,
        &manifest,
        &sim_options(
            "e2e-sim-crash",
            RunOptions {
                messages: Some(TOTAL),
                rate: Some(12_000.0),
                clients: Some(2),
                ..RunOptions::default()
            },
        ),
    )
    .unwrap();
    let pm25 = "environment_pm2_5";
    let mut stored_at_kill = Vec::new();
    for (kill, down_for) in [Duration::from_millis(1500), Duration::from_millis(1000)]
        .into_iter()
        .enumerate()
    {
        // Kill #1 mid-flow, once a quarter of the run is stored; kill #2 once the restarted
        // gateway is visibly writing again (more than at the first kill).
        let floor = stored_at_kill.last().copied().unwrap_or(FIRST_KILL_AT - 1);
        let writing = ioc_e2e::wait_until(Duration::from_secs(60), || {
            vm.count_points(pm25).unwrap_or(0) > floor
        });
        assert!(
            writing,
            "nothing new arrived before kill #{}\n{}",
            kill + 1,
            gateway.log_tail(40)
        );
        gateway.kill9();
        stored_at_kill.push(vm.count_points(pm25).unwrap());
        std::thread::sleep(down_for);
        gateway.start_again().unwrap();
    }
    let run = sim.wait(Duration::from_secs(120)).unwrap();
    eprintln!(
        "killed twice, with {stored_at_kill:?} of {TOTAL} readings in the store; sensor-sim: {} published, {} acked in {:.1} s",
        run.published, run.acked, run.seconds
    );
    assert_eq!(
        (run.published, run.acked, run.lost),
        (TOTAL, TOTAL, 0),
        "the broker stayed up: it must ack everything"
    );
    let (counts, _) = assert_verify_passes(
        &manifest,
        &vm.url(),
        StoreApi::V2,
        &gateway,
        Duration::from_secs(300),
    );
    assert_eq!(counts.stored_points, TOTAL);
    assert_victoria_holds_nothing_else(&vm, &counts);
    assert!(gateway.is_running(), "{}", gateway.log_tail(40));
}

/// HEAVY (~50-80 s). VictoriaMetrics is stopped for 30 s in the middle of a `sensor-sim run` (10
/// stations, 200 msg/s for 40 s), then started again on the same port and data: `verify` finds
/// everything, nothing twice, and the store holds nothing else.
#[test]
fn heavy_store_outage_of_30s_loses_and_duplicates_nothing() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let mut vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &[]);
    let mut gateway = spawn_gateway(&config, &broker);

    let manifest = dir.path().join("manifest.jsonl");
    let mut sim = SensorSim::spawn(
        &env_scenario(dir.path(), 10),
        &broker.url(),
        4,
        &manifest,
        &sim_options(
            "e2e-sim-outage",
            RunOptions {
                duration_s: Some(40.0),
                rate: Some(200.0),
                ..RunOptions::default()
            },
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let before_outage = vm.count_points("environment_pm2_5").unwrap();
    vm.stop();
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        gateway.is_running(),
        "gateway died during the outage:\n{}",
        gateway.log_tail(40)
    );
    assert!(
        sim.is_running(),
        "sensor-sim run ended before the outage did"
    );
    vm.start_again().unwrap();
    let run = sim.wait(Duration::from_secs(60)).unwrap();
    eprintln!(
        "{} messages published, {} acked; {before_outage} pm2_5 points stored before the outage",
        run.published, run.acked
    );
    assert_eq!((run.acked, run.lost), (run.published, 0));
    assert!(run.acked >= 7000, "published only {}", run.acked);
    let (counts, _) = assert_verify_passes(
        &manifest,
        &vm.url(),
        StoreApi::V2,
        &gateway,
        Duration::from_secs(180),
    );
    assert_victoria_holds_nothing_else(&vm, &counts);
}

/// Bad input between good messages: non-JSON, a `NaN` and a `1e999` in the text, invalid UTF-8, a
/// 1 MB payload, a tag value (via `tag_keys`) with `, = "` and spaces, and one with a newline. The
/// gateway keeps running; every good message arrives exactly; the bad ones are rejected (no point) or,
/// for the tag values, stored with the exact value; nothing else appears in the store.
#[test]
fn bad_input_is_rejected_or_escaped_and_the_gateway_keeps_going() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &["site"]);
    let mut gateway = spawn_gateway(&config, &broker);
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-bad").unwrap();

    let ts = BASE_TS_MS + 5_000_000;
    let big_blob = "x".repeat(1024 * 1024);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("nonjson", b"this is not json {".to_vec()),
        ("nan", format!(r#"{{"ts":{ts},"pm2_5": NaN}}"#).into_bytes()),
        (
            "inf",
            format!(r#"{{"ts":{ts},"pm2_5": 1e999}}"#).into_bytes(),
        ),
        ("utf8", {
            let mut p = format!(r#"{{"ts":{ts},"pm2_5":3.5,"note":""#).into_bytes();
            p.extend_from_slice(&[0xff, 0xfe, 0xc3]);
            p.extend_from_slice(b"\"}");
            p
        }),
        ("nofields", format!(r#"{{"ts":{ts}}}"#).into_bytes()),
        (
            "big",
            format!(r#"{{"ts":{ts},"pm2_5":7.5,"blob":"{big_blob}"}}"#).into_bytes(),
        ),
    ];
    let tricky_tag = "a, b=c \"d\" e";
    let newline_tag = "line1\nline2 x=1";

    let mut good = Vec::new();
    let mut k = 0;
    let mut publish_good = |publisher: &mut MqttPublisher, good: &mut Vec<EnvReading>| {
        for _ in 0..20 {
            let r = EnvReading::nth(k, 4);
            publisher.publish(&r.topic(), r.payload()).unwrap();
            good.push(r);
            k += 1;
        }
    };
    publish_good(&mut publisher, &mut good);
    for (sensor, payload) in &bad {
        publisher
            .publish(&format!("city/dbad/env/{sensor}"), payload.clone())
            .unwrap();
        publish_good(&mut publisher, &mut good);
    }
    publisher
        .publish(
            "city/dtag/env/tricky",
            format!(
                r#"{{"ts":{ts},"pm2_5":1.25,"site":{}}}"#,
                serde_json::to_string(tricky_tag).unwrap()
            ),
        )
        .unwrap();
    publish_good(&mut publisher, &mut good);
    publisher
        .publish(
            "city/dtag/env/newline",
            format!(
                r#"{{"ts":{ts},"pm2_5":2.25,"site":{}}}"#,
                serde_json::to_string(newline_tag).unwrap()
            ),
        )
        .unwrap();
    publish_good(&mut publisher, &mut good);
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));

    // The good readings arrive exactly (sensor ids s000..s003 in districts d0..d3).
    assert_victoria_holds_exactly(
        &vm,
        "{__name__=~\"environment_.*\",district=~\"d[0-9]\"}",
        &expected_series(&good),
        &gateway,
        Duration::from_secs(60),
    );
    assert!(
        gateway.is_running(),
        "the gateway died:\n{}",
        gateway.log_tail(40)
    );

    // The tag value with `, = "` and spaces is stored exactly.
    vm.force_flush().unwrap();
    let tricky = vm
        .export("{__name__=\"environment_pm2_5\",sensor_id=\"tricky\"}")
        .unwrap();
    assert_eq!(
        tricky.len(),
        1,
        "tricky-tag reading missing: {tricky:?}\n{}",
        gateway.log_tail(40)
    );
    assert_eq!(tricky[0].label("site"), Some(tricky_tag));
    assert_eq!(tricky[0].values, vec![1.25]);
    assert_eq!(tricky[0].timestamps_ms, vec![ts]);

    // Nothing else is in the store: no point from a rejected message, no series made of fragments of
    // an unescaped line. The newline tag value is either rejected or stored exactly.
    let everything = vm.export("{__name__=~\".+\"}").unwrap();
    for s in everything
        .iter()
        .filter(|s| matches!(s.label("district"), Some("dtag") | Some("dbad")))
    {
        eprintln!(
            "stored from a hostile message: {:?} {:?}",
            s.labels, s.values
        );
    }
    for s in &everything {
        let sensor = s.label("sensor_id").unwrap_or_default();
        let ok = match s.label("district") {
            Some(d) if d.len() == 2 && d.starts_with('d') => {
                s.labels.len() == 4 && s.name().starts_with("environment_")
            }
            Some("dtag") if sensor == "tricky" => s.name() == "environment_pm2_5",
            Some("dtag") if sensor == "newline" => {
                s.name() == "environment_pm2_5"
                    && s.label("site") == Some(newline_tag)
                    && s.values == vec![2.25]
            }
            // The 1 MB message may be accepted only if the gateway's payload limit allows it; its
            // numeric field must then be exact. (The default max_payload_bytes is 256 KiB: rejected.)
            Some("dbad") if sensor == "big" => {
                s.name() == "environment_pm2_5" && s.values == vec![7.5]
            }
            _ => false,
        };
        assert!(
            ok,
            "unexpected series in the store: {:?} {:?}",
            s.labels, s.values
        );
    }

    // Still alive and still working after all that.
    let after = EnvReading::nth(10_000, 4);
    publisher.publish(&after.topic(), after.payload()).unwrap();
    good.push(after);
    assert!(publisher.wait_all_acked(Duration::from_secs(10)));
    assert_victoria_holds_exactly(
        &vm,
        "{__name__=~\"environment_.*\",district=~\"d[0-9]\"}",
        &expected_series(&good),
        &gateway,
        Duration::from_secs(30),
    );
    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(
        status.success(),
        "graceful shutdown exit status {status}\n{}",
        gateway.log_tail(20)
    );
}

/// The broker is restarted (graceful stop, persistence kept) in the middle of a `sensor-sim run`:
/// the simulator and the gateway reconnect with their persistent sessions, and `verify` finds every
/// acknowledged message exactly once.
#[test]
fn broker_restart_mid_run_loses_nothing() {
    let _heavy = HeavyTestLock::acquire();
    let mut broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &[]);
    let mut gateway = spawn_gateway(&config, &broker);

    let manifest = dir.path().join("manifest.jsonl");
    let mut sim = SensorSim::spawn(
        &env_scenario(dir.path(), 10),
        &broker.url(),
        5,
        &manifest,
        &sim_options(
            "e2e-sim-restart",
            RunOptions {
                messages: Some(10_000),
                rate: Some(2_000.0),
                ..RunOptions::default()
            },
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(sim.is_running(), "sensor-sim run ended before the restart");
    let subscriptions = broker.subscription_count(GATEWAY_ID, TOPIC_FILTER);
    broker.restart().unwrap();
    let run = sim.wait(Duration::from_secs(120)).unwrap();
    assert_eq!(
        (run.published, run.acked, run.lost),
        (10_000, 10_000, 0),
        "{run:?}"
    );
    let (counts, verdict) = assert_verify_passes(
        &manifest,
        &vm.url(),
        StoreApi::V2,
        &gateway,
        Duration::from_secs(120),
    );
    assert_victoria_holds_nothing_else(&vm, &counts);
    assert!(gateway.is_running(), "{}", gateway.log_tail(40));
    // With a persistent session the broker still knows the subscription; re-subscribing is allowed.
    eprintln!(
        "sensor-sim reconnected {} time(s), {} message(s) re-sent; {}; gateway subscribed {} time(s) before, {} after the restart",
        run.reconnects,
        counts.resent,
        verdict.report.lines().last().unwrap_or_default(),
        subscriptions,
        broker.subscription_count(GATEWAY_ID, TOPIC_FILTER)
    );
}

/// What VictoriaMetrics cannot show: string and bool fields, flattened nested objects, and tag values
/// with `, = "`, spaces and non-ASCII, and a string field ending in a backslash, all stored exactly in
/// InfluxDB 1.x through `api = "v1"`.
#[test]
fn strings_bools_nested_fields_and_hostile_tags_arrive_exactly_in_influxdb1() {
    let broker = Mosquitto::start().unwrap();
    let influx = Influx1::start().unwrap();
    influx.create_database("telemetry").unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(
        dir.path(),
        &broker.url(),
        Store::Influx1 {
            url: influx.url(),
            database: "telemetry",
        },
        &["site"],
    );
    let gateway = spawn_gateway(&config, &broker);
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-strings").unwrap();

    let cases: Vec<(&str, &str, &str)> = vec![
        // (sensor_id, site tag value, status string field)
        ("t1", "a, b=c \"d\" e", "ok"),
        ("t2", "Üntere Straße 5", "ends with a backslash \\"),
        (
            "t3",
            "plain",
            "quote \" comma , equals = space  and \\\" mixed",
        ),
    ];
    let ts = BASE_TS_MS + 9_000_000;
    for (i, (sensor, site, status)) in cases.iter().enumerate() {
        let payload = serde_json::json!({
            "ts": ts + i as i64,
            "pm2_5": 1.5 + i as f64,
            "site": site,
            "status": status,
            "ok": i % 2 == 0,
            "nested": {"level": 2.25},
        });
        publisher
            .publish(&format!("city/dx/env/{sensor}"), payload.to_string())
            .unwrap();
    }
    assert!(publisher.wait_all_acked(Duration::from_secs(10)));
    let query = "SELECT time, sensor_id, site, gateway, district, pm2_5, status, ok, nested_level FROM environment ORDER BY time";
    let arrived = ioc_e2e::wait_until(Duration::from_secs(30), || {
        influx
            .query_rows("telemetry", query)
            .map(|r| r.len())
            .unwrap_or(0)
            == cases.len()
    });
    let rows = influx.query_rows("telemetry", query).unwrap();
    assert!(arrived, "rows: {rows:?}\n{}", gateway.log_tail(40));
    for (i, ((sensor, site, status), row)) in cases.iter().zip(&rows).enumerate() {
        let expected = serde_json::json!({
            "time": (ts + i as i64) * 1_000_000,
            "sensor_id": sensor,
            "site": site,
            "gateway": GATEWAY_ID,
            "district": "dx",
            "pm2_5": 1.5 + i as f64,
            "status": status,
            "ok": i % 2 == 0,
            "nested_level": 2.25,
        });
        assert_eq!(serde_json::Value::Object(row.clone()), expected);
    }
}

// ---------------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------------

const VALID_CONFIG: &str = r#"[gateway]
id = "bp-gw-001"
data_dir = "/tmp/ioc-e2e-unused"

[[inputs.mqtt]]
url = "mqtt://127.0.0.1:1883"
client_id = "bp-gw-001"
topics = ["city/+/env/+"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
tag_keys = []

[output.influxdb]
url = "http://127.0.0.1:8086"
api = "v2"
org = "ioc"
bucket = "telemetry"
token_env = "INFLUX_TOKEN"
batch_max_lines = 5000
flush_interval_ms = 1000

[buffer]
max_disk_mb = 1024
"#;

/// 1-based line number of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"))
        + 1
}

/// Writes `text` as a config, runs `check-config`, and asserts a non-zero exit whose stderr names the
/// file, `:<line>` and the key.
fn assert_located_error(name: &str, text: &str, line: usize, key: &str) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let output = check_config(&path).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(78),
        "{name}: check-config must exit 78 (EX_CONFIG); stderr: {stderr}"
    );
    let file = path.display().to_string();
    assert!(
        stderr.contains(&file),
        "{name}: stderr does not name the file {file}: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:{line}")),
        "{name}: stderr does not give line {line} as {file}:{line}: {stderr}"
    );
    assert!(
        stderr.contains(key),
        "{name}: stderr does not name the key `{key}`: {stderr}"
    );
}

#[test]
fn check_config_accepts_the_contract_example() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(&path, VALID_CONFIG).unwrap();
    // The secret it names is given, as the unit's EnvironmentFile= does.
    let output = check_config_with(&path, &[], &[("INFLUX_TOKEN", "t")]).unwrap();
    assert!(
        output.status.success(),
        "check-config rejected the documented example: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_config_locates_an_unknown_key() {
    let text = VALID_CONFIG.replace("qos = 1\n", "qos = 1\nqos_level = 2\n");
    assert_located_error(
        "unknown-key.toml",
        &text,
        line_of(&text, "qos_level"),
        "qos_level",
    );
}

#[test]
fn check_config_locates_a_wrong_type() {
    let text = VALID_CONFIG.replace("batch_max_lines = 5000", "batch_max_lines = \"many\"");
    assert_located_error(
        "wrong-type.toml",
        &text,
        line_of(&text, "batch_max_lines"),
        "batch_max_lines",
    );
    let text = VALID_CONFIG.replace("qos = 1\n", "qos = \"one\"\n");
    assert_located_error("wrong-type-qos.toml", &text, line_of(&text, "qos ="), "qos");
}

#[test]
fn check_config_locates_a_missing_url() {
    // Missing in [output.influxdb]: the error points at that table.
    let text = VALID_CONFIG.replace("url = \"http://127.0.0.1:8086\"\n", "");
    assert_located_error(
        "missing-url.toml",
        &text,
        line_of(&text, "[output.influxdb]"),
        "url",
    );
    // Missing in [[inputs.mqtt]].
    let text = VALID_CONFIG.replace("url = \"mqtt://127.0.0.1:1883\"\n", "");
    assert_located_error(
        "missing-mqtt-url.toml",
        &text,
        line_of(&text, "[[inputs.mqtt]]"),
        "url",
    );
}

#[test]
fn check_config_fails_on_a_missing_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("does-not-exist.toml");
    let output = check_config(&path).unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&path.display().to_string()));
}

/// Exit codes tell a config problem (78, which the unit's `RestartPreventExitStatus=` keeps
/// from restart-looping) from a mistyped command line (2, clap's).
#[test]
fn config_problems_exit_78_and_usage_errors_exit_2() {
    let dir = TempDir::new().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(ioc_e2e::bin_path("ioc-gateway"));
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .env_remove("INFLUX_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    // `run` on a file that does not validate.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, VALID_CONFIG.replace("qos = 1\n", "qos = 7\n")).unwrap();
    let out = run(&["run", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `run` on a valid file naming an environment variable that is not set.
    let good = dir.path().join("good.toml");
    let data = dir.path().join("data");
    let text = VALID_CONFIG.replace("/tmp/ioc-e2e-unused", data.to_str().unwrap());
    std::fs::write(&good, &text).unwrap();
    assert!(check_config_with(&good, &[], &[("INFLUX_TOKEN", "t")])
        .unwrap()
        .status
        .success());
    let token_env = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token_env = \""))
        .and_then(|rest| rest.split('"').next())
        .expect("the example names a token_env");
    let out = run(&["run", "--config", good.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(token_env), "{stderr}");
    // A mistyped argument.
    let out = run(&["run", "--confgi", good.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--version` names the commit the binary was built from, so a technician can tell which
/// build a box runs.
#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = std::process::Command::new(ioc_e2e::bin_path("ioc-gateway"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.starts_with(&format!("ioc-gateway {version} (commit ")),
        "{text}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Ok(head) = head {
        if head.status.success() && std::env::var_os("IOC_GATEWAY_COMMIT").is_none() {
            let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
            assert!(
                text.contains(&format!("(commit {head})")),
                "{text} vs HEAD {head}"
            );
        }
    }
}

/// `check-config` checks what `run` will need, so `ExecStartPre=check-config` passing means
/// `run` will not refuse the config: the secret a key names is resolvable, TLS files parse,
/// `data_dir` is writable. Each problem is at its line and key, the secret's value never
/// printed; `--json` gives the same for tools.
#[test]
fn check_config_finds_what_run_would_fail_on() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("gw.toml");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let text = VALID_CONFIG
        .replace(
            "data_dir = \"/tmp/ioc-e2e-unused\"",
            &format!("data_dir = \"{}/data\"", a_file.display()),
        )
        .replace(
            "url = \"http://127.0.0.1:8086\"",
            &format!(
                "url = \"https://127.0.0.1:8086\"\nca_file = \"{}\"",
                not_pem.display()
            ),
        );
    std::fs::write(&path, &text).unwrap();
    let file = path.display().to_string();

    // The token variable is not set, the CA file is not PEM, data_dir cannot be made.
    let out = check_config_with(&path, &[], &[]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for (key, prefix, what) in [
        ("output.influxdb.token_env", "token_env", "INFLUX_TOKEN"),
        (
            "output.influxdb.ca_file",
            "ca_file",
            "no usable PEM certificate",
        ),
        ("gateway.data_dir", "data_dir", "not a directory"),
    ] {
        let line = line_of(&text, prefix);
        assert!(
            stderr.contains(&format!("{file}:{line}: key `{key}`")) && stderr.contains(what),
            "{key} at line {line} with {what:?}: {stderr}"
        );
    }

    // --json: the same problems, as data.
    let out = check_config_with(&path, &["--json"], &[("INFLUX_TOKEN", "s3cr3t-value")]).unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("s3cr3t-value"), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["file"], file);
    let keys: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["gateway.data_dir", "output.influxdb.ca_file"],
        "{stdout}"
    );
    assert_eq!(
        v["errors"][1]["line"].as_u64(),
        Some(line_of(&text, "ca_file") as u64)
    );

    // All fixed: ok, in both forms.
    let good = VALID_CONFIG.replace(
        "/tmp/ioc-e2e-unused",
        dir.path().join("data").to_str().unwrap(),
    );
    std::fs::write(&path, good).unwrap();
    let out = check_config_with(&path, &["--json"], &[("INFLUX_TOKEN", "t")]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (out.status.code(), &v["ok"]),
        (Some(0), &serde_json::json!(true)),
        "{v}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "check-config must not create data_dir"
    );
}
