//! End-to-end tests of issue 2 ("the gateway's spine"): real mosquitto → `ioc-gateway run` (a real
//! process) → real VictoriaMetrics / InfluxDB 1.x, checked by reading every point back with exact tags,
//! values and timestamps.
//!
//! Written against the contract of issue 2: `ioc-gateway run --config FILE`, `ioc-gateway check-config
//! FILE`, the TOML keys of `[gateway]`, `[[inputs.mqtt]]`, `[output.influxdb]`, `[buffer]`, topics
//! `city/<district>/env/<sensor_id>` with `topic_tags = "_/district/_/sensor_id"`, JSON numbers as float
//! fields, VictoriaMetrics series `environment_<field>{district,sensor_id,gateway}`.
//!
//! HEAVY tests (names start with `heavy_`, 30-120 s each) take [`HeavyTestLock`] so that only one runs
//! at a time on a 2-core machine: the 100,000-message crash test and the 30-second store outage. The
//! others push 10,000 messages or fewer, or only run `check-config`.

use ioc_e2e::{
    check_config, ExportedSeries, GatewayProcess, HeavyTestLock, Influx1, Mosquitto, MqttPublisher,
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
// Gateway config (the contract of issue 2).
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

fn publish_all(publisher: &mut MqttPublisher, readings: &[EnvReading]) {
    for r in readings {
        publisher.publish(&r.topic(), r.payload()).unwrap();
    }
    assert!(
        publisher.wait_all_acked(Duration::from_secs(120)),
        "broker acknowledged only {} of {} messages",
        publisher.acked_count(),
        publisher.published()
    );
}

// ---------------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------------

/// 10,000 QoS 1 messages (20 sensors × 500) → every point in VictoriaMetrics with exact labels, values
/// and millisecond timestamps, and nothing else.
#[test]
fn ten_thousand_messages_arrive_exactly_in_victoria_metrics() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &[]);
    let gateway = spawn_gateway(&config, &broker);

    let readings: Vec<EnvReading> = (0..10_000).map(|i| EnvReading::nth(i, 20)).collect();
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-10k").unwrap();
    let started = Instant::now();
    publish_all(&mut publisher, &readings);

    let expected = expected_series(&readings);
    assert_eq!(expected.len(), 100); // 20 sensors × 5 fields
    assert_victoria_holds_exactly(
        &vm,
        "{__name__=~\"environment_.*\"}",
        &expected,
        &gateway,
        Duration::from_secs(120),
    );
    eprintln!("10,000 messages end to end in {:?}", started.elapsed());
}

/// The same 10,000 messages through `api = "v1"` into InfluxDB 1.x: exact nanosecond timestamps
/// (ms × 1,000,000), tags and float values, one row per message.
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

    let readings: Vec<EnvReading> = (0..10_000).map(|i| EnvReading::nth(i, 20)).collect();
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-influx").unwrap();
    publish_all(&mut publisher, &readings);

    let count_query = "SELECT count(pm2_5) FROM environment";
    let arrived = ioc_e2e::wait_until(Duration::from_secs(120), || {
        let rows = influx
            .query_rows("telemetry", count_query)
            .unwrap_or_default();
        rows.first().and_then(|r| r["count"].as_u64()) == Some(10_000)
    });
    let rows = influx
        .query_rows(
            "telemetry",
            "SELECT time, district, sensor_id, gateway, pm2_5, pm10, temperature, humidity, noise_db FROM environment",
        )
        .unwrap();
    assert!(
        arrived,
        "InfluxDB has {} rows, expected 10000\n--- gateway log tail ---\n{}",
        rows.len(),
        gateway.log_tail(40)
    );

    // (time ns, district, sensor_id) → values
    let mut actual: BTreeMap<(i64, String, String), Vec<f64>> = BTreeMap::new();
    for row in &rows {
        assert_eq!(row["gateway"], GATEWAY_ID, "{row:?}");
        let key = (
            row["time"].as_i64().unwrap(),
            row["district"].as_str().unwrap().to_string(),
            row["sensor_id"].as_str().unwrap().to_string(),
        );
        let values = FIELDS
            .iter()
            .map(|f| {
                row[*f]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{f} missing in {row:?}"))
            })
            .collect();
        assert!(
            actual.insert(key, values).is_none(),
            "duplicate row {row:?}"
        );
    }
    let expected: BTreeMap<(i64, String, String), Vec<f64>> = readings
        .iter()
        .map(|r| {
            (
                (r.ts_ms * 1_000_000, r.district.clone(), r.sensor_id.clone()),
                r.values.to_vec(),
            )
        })
        .collect();
    assert_eq!(actual.len(), expected.len());
    for (key, want) in &expected {
        assert_eq!(actual.get(key), Some(want), "row {key:?}");
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

/// HEAVY (~10-60 s). `kill -9` the gateway in the middle of a 100,000-message run (100 sensors × 1000),
/// keep publishing while it is down, restart it (twice): every message the broker acknowledged to the publisher
/// is in VictoriaMetrics exactly once, with its exact values, and nothing else is.
#[test]
fn heavy_kill9_mid_run_loses_no_acknowledged_message() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &[]);
    let mut gateway = spawn_gateway(&config, &broker);

    const TOTAL: usize = 100_000;
    let readings: Vec<EnvReading> = (0..TOTAL).map(|i| EnvReading::nth(i, 100)).collect();
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-crash").unwrap();
    let pm25 = "environment_pm2_5";
    // Two kill -9 cycles: one mid-flow, one soon after the restart (while the backlog is replayed
    // and the buffer has just been recovered).
    let mut stored_at_kill = Vec::new();
    for (i, r) in readings.iter().enumerate() {
        publisher.publish(&r.topic(), r.payload()).unwrap();
        if i == 30_000 || i == 70_000 {
            // Kill only once the gateway is visibly writing (more than at the last kill).
            let floor = stored_at_kill.last().copied().unwrap_or(0);
            let writing = ioc_e2e::wait_until(Duration::from_secs(60), || {
                vm.count_points(pm25).unwrap_or(0) > floor
            });
            assert!(
                writing,
                "nothing new arrived before kill #{}\n{}",
                stored_at_kill.len() + 1,
                gateway.log_tail(40)
            );
            gateway.kill9();
            stored_at_kill.push(vm.count_points(pm25).unwrap());
        }
        if i == 45_000 || i == 80_000 {
            gateway.start_again().unwrap();
        }
    }
    assert!(
        publisher.wait_all_acked(Duration::from_secs(120)),
        "broker acknowledged only {} of {}",
        publisher.acked_count(),
        TOTAL
    );
    eprintln!("killed twice, with {stored_at_kill:?} of {TOTAL} readings in the store");

    let acked = publisher.acked_flags();
    let acked_readings: Vec<EnvReading> = readings
        .iter()
        .zip(&acked)
        .filter(|(_, a)| **a)
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(
        acked_readings.len(),
        TOTAL,
        "the broker stayed up: it must ack everything"
    );
    assert_victoria_holds_exactly(
        &vm,
        "{__name__=~\"environment_.*\"}",
        &expected_series(&acked_readings),
        &gateway,
        Duration::from_secs(300),
    );
    assert!(gateway.is_running(), "{}", gateway.log_tail(40));
}

/// HEAVY (~50-80 s). VictoriaMetrics is stopped for 30 s in the middle of a run, messages keep coming,
/// then it is started again on the same port and data: everything arrives, nothing twice.
#[test]
fn heavy_store_outage_of_30s_loses_and_duplicates_nothing() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let mut vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &[]);
    let mut gateway = spawn_gateway(&config, &broker);
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-outage").unwrap();

    // 10 sensors; 200 messages per second for 5 s, 30 s (outage), 5 s.
    let mut readings = Vec::new();
    let mut next = 0;
    let mut publish_for = |publisher: &mut MqttPublisher, seconds: u64| {
        let start = Instant::now();
        let mut sent_here = 0u64;
        while start.elapsed() < Duration::from_secs(seconds) {
            let due = start.elapsed().as_millis() as u64 / 5; // one message per 5 ms
            while sent_here < due {
                let r = EnvReading::nth(next, 10);
                publisher.publish(&r.topic(), r.payload()).unwrap();
                readings.push(r);
                next += 1;
                sent_here += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    publish_for(&mut publisher, 5);
    let before_outage = vm.count_points("environment_pm2_5").unwrap();
    vm.stop();
    publish_for(&mut publisher, 30);
    assert!(
        gateway.is_running(),
        "gateway died during the outage:\n{}",
        gateway.log_tail(40)
    );
    vm.start_again().unwrap();
    publish_for(&mut publisher, 5);
    assert!(publisher.wait_all_acked(Duration::from_secs(60)));
    eprintln!(
        "{} messages, {before_outage} pm2_5 points stored before the outage",
        readings.len()
    );
    assert!(readings.len() >= 7000, "published only {}", readings.len());
    assert_victoria_holds_exactly(
        &vm,
        "{__name__=~\"environment_.*\"}",
        &expected_series(&readings),
        &gateway,
        Duration::from_secs(180),
    );
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

/// The broker is restarted (graceful stop, persistence kept) in the middle of a run: the gateway
/// reconnects with its persistent session and every message arrives exactly once.
#[test]
fn broker_restart_mid_run_loses_nothing() {
    let _heavy = HeavyTestLock::acquire();
    let mut broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let config = write_gateway_config(dir.path(), &broker.url(), Store::Victoria(&vm), &[]);
    let mut gateway = spawn_gateway(&config, &broker);
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-restart").unwrap();

    let readings: Vec<EnvReading> = (0..10_000).map(|i| EnvReading::nth(i, 10)).collect();
    for r in &readings[..5_000] {
        publisher.publish(&r.topic(), r.payload()).unwrap();
    }
    assert!(publisher.wait_all_acked(Duration::from_secs(60)));
    let subscriptions = broker.subscription_count(GATEWAY_ID, TOPIC_FILTER);
    broker.restart().unwrap();
    for r in &readings[5_000..] {
        publisher.publish(&r.topic(), r.payload()).unwrap();
    }
    assert!(
        publisher.wait_all_acked(Duration::from_secs(60)),
        "acked {} of {}",
        publisher.acked_count(),
        publisher.published()
    );
    assert_victoria_holds_exactly(
        &vm,
        "{__name__=~\"environment_.*\"}",
        &expected_series(&readings),
        &gateway,
        Duration::from_secs(120),
    );
    assert!(gateway.is_running(), "{}", gateway.log_tail(40));
    // With a persistent session the broker still knows the subscription; re-subscribing is allowed.
    eprintln!(
        "gateway subscribed {} time(s) before, {} after the restart",
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
    assert!(
        !output.status.success(),
        "{name}: check-config exited 0; stderr: {stderr}"
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
    let output = check_config(&path).unwrap();
    assert!(
        output.status.success(),
        "check-config rejected the example of issue 2: {}",
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
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains(&path.display().to_string()));
}
