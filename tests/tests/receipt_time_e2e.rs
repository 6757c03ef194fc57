//! Readings without a timestamp field are stamped by the gateway on receipt, and no two of them may
//! merge in the store, however fast they arrive: live, and as a backlog drained after a restart.
//!
//! Why it exists: a store keeps one point per series and timestamp. VictoriaMetrics (with
//! `-dedup.minScrapeInterval=1ms`, as the README recommends and the harness starts it) keeps one per
//! series per millisecond; InfluxDB 1.x one per series per nanosecond, a second write overwriting the
//! first. A gateway that stamps every message it handles in one go with the same "now" silently
//! turns a burst from one sensor into a single point. Receipt stamps must therefore be distinct and
//! at least 1 ms apart per series, in both stores, and also when a broker hands over a queued backlog
//! as fast as the socket takes it.
//!
//! What each test does, with the real binaries and servers: 10 sensors × 300 QoS 1 messages
//! `{"seq": k}` (no timestamp; k unique over the test) are published as fast as QoS 1 allows
//! ([`MqttPublisher`], 100 in flight) while the gateway runs; then the gateway is stopped with
//! SIGTERM, 10 × 300 more are queued at the broker (`max_inflight_messages 1000`, so the backlog
//! comes in large groups) and the gateway is started again. The store must then hold all 6,000
//! readings: for every sensor series, each of its 600 `seq` values exactly once (nothing merged,
//! nothing doubled), every one stamped between the test's start and its end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ioc_e2e::{
    free_port, gateway_metrics, metric_in, now_ms, GatewayProcess, HeavyTestLock, Influx1,
    Mosquitto, MqttPublisher, VictoriaMetrics,
};

const GATEWAY_ID: &str = "receipt-gw";
const FILTER: &str = "city/+/env/+";
const SENSORS: u64 = 10;
const PER_SENSOR: u64 = 300;
/// Messages per phase (live, backlog).
const PHASE: u64 = SENSORS * PER_SENSOR;

enum Store<'a> {
    Victoria(&'a VictoriaMetrics),
    Influx(&'a Influx1),
}

fn write_config(dir: &Path, broker: &Mosquitto, store: &Store<'_>, http: u16) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let output = match store {
        Store::Victoria(vm) => format!(
            "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\n",
            vm.url()
        ),
        Store::Influx(influx) => format!(
            "url = \"{}\"\napi = \"v1\"\ndatabase = \"telemetry\"\n",
            influx.url()
        ),
    };
    // No `timestamp_field`: every reading is stamped on receipt.
    let text = format!(
        r#"# written by tests/tests/receipt_time_e2e.rs
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
name = "receipt"
url = "{mqtt}"
client_id = "{GATEWAY_ID}"
topics = ["{FILTER}"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"

[output.influxdb]
{output}batch_max_lines = 5000
flush_interval_ms = 200

[http]
listen = "127.0.0.1:{http}"
"#,
        data = data.display(),
        mqtt = broker.url(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sensor_id(sensor: u64) -> String {
    format!("r{sensor:02}")
}

/// Publishes one phase: 300 rounds over the 10 sensors, `seq` = `base` + round × 10 + sensor (so
/// sensor s owns every seq ≡ s mod 10), as fast as the broker acknowledges.
fn publish_phase(broker: &Mosquitto, client_id: &str, base: u64) {
    let mut publisher = MqttPublisher::connect(&broker.url(), client_id).unwrap();
    let started = Instant::now();
    for round in 0..PER_SENSOR {
        for sensor in 0..SENSORS {
            let seq = base + round * SENSORS + sensor;
            publisher
                .publish(
                    &format!("city/d0/env/{}", sensor_id(sensor)),
                    format!(r#"{{"seq":{seq}}}"#),
                )
                .unwrap();
        }
    }
    assert!(
        publisher.wait_all_acked(Duration::from_secs(60)),
        "broker acked {} of {PHASE}: {:?}",
        publisher.acked_count(),
        publisher.connection_errors()
    );
    eprintln!(
        "{client_id}: {PHASE} messages acked by the broker in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

fn messages_received(http: u16) -> f64 {
    metric_in(
        &gateway_metrics(http),
        "ioc_gateway_messages_received_total",
        &[],
    )
}

/// Per sensor id: (timestamp in ms, seq) of every stored `seq` reading of this gateway.
fn stored(store: &Store<'_>) -> BTreeMap<String, Vec<(i64, u64)>> {
    let mut out: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    match store {
        Store::Victoria(vm) => {
            if vm.force_flush().is_err() {
                return out;
            }
            let series = vm
                .export(&format!("environment_seq{{gateway=\"{GATEWAY_ID}\"}}"))
                .unwrap_or_default();
            for s in series {
                let entry = out
                    .entry(s.label("sensor_id").unwrap_or("?").to_string())
                    .or_default();
                for (t, v) in s.timestamps_ms.iter().zip(&s.values) {
                    entry.push((*t, *v as u64));
                }
            }
        }
        Store::Influx(influx) => {
            let rows = influx
                .query_rows(
                    "telemetry",
                    &format!(
                        "SELECT seq FROM environment WHERE gateway = '{GATEWAY_ID}' GROUP BY sensor_id"
                    ),
                )
                .unwrap_or_default();
            for row in rows {
                let sensor = row["sensor_id"].as_str().unwrap_or("?").to_string();
                let ns = row["time"].as_i64().unwrap_or(0);
                let seq = row["seq"].as_f64().unwrap_or(-1.0) as u64;
                out.entry(sensor).or_default().push((ns / 1_000_000, seq));
            }
        }
    }
    out
}

fn total(stored: &BTreeMap<String, Vec<(i64, u64)>>) -> usize {
    stored.values().map(Vec::len).sum()
}

/// Waits until the store holds `want` readings, or nothing new arrived for 15 s; returns what it
/// holds then.
fn wait_for_store(store: &Store<'_>, want: usize) -> BTreeMap<String, Vec<(i64, u64)>> {
    let mut last = 0;
    let mut last_progress = Instant::now();
    loop {
        let now = stored(store);
        let count = total(&now);
        if count >= want || last_progress.elapsed() > Duration::from_secs(15) {
            return now;
        }
        if count != last {
            last = count;
            last_progress = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every sensor's seq values, each exactly once; describes what is missing or doubled per phase.
fn check_every_reading_once(
    got: &BTreeMap<String, Vec<(i64, u64)>>,
    started_ms: i64,
    ended_ms: i64,
) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut missing = [0u64; 2];
    let mut doubled = 0u64;
    for sensor in 0..SENSORS {
        let id = sensor_id(sensor);
        let readings = got.get(&id).cloned().unwrap_or_default();
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for (ts, seq) in &readings {
            *seen.entry(*seq).or_default() += 1;
            if *ts < started_ms || *ts > ended_ms {
                problems.push(format!(
                    "{id} seq {seq} stamped {ts}, outside the test [{started_ms}, {ended_ms}]"
                ));
            }
        }
        for phase in 0..2u64 {
            for round in 0..PER_SENSOR {
                let seq = phase * PHASE + round * SENSORS + sensor;
                match seen.remove(&seq) {
                    None => missing[phase as usize] += 1,
                    Some(1) => {}
                    Some(n) => {
                        doubled += n - 1;
                        if problems.len() < 20 {
                            problems.push(format!("{id} seq {seq} stored {n} times"));
                        }
                    }
                }
            }
        }
        for (seq, _) in seen {
            problems.push(format!("{id}: unexpected seq {seq}"));
        }
    }
    let found = total(got);
    if missing == [0, 0] && doubled == 0 && problems.is_empty() {
        return Ok(());
    }
    problems.truncate(20);
    Err(format!(
        "{found} readings stored of {}: missing {} of {PHASE} live and {} of {PHASE} backlog, {doubled} doubled\n{}",
        2 * PHASE,
        missing[0],
        missing[1],
        problems.join("\n")
    ))
}

fn receipt_stamped_readings_never_merge(store: Store<'_>) {
    let _heavy = HeavyTestLock::acquire();
    let started_ms = now_ms();
    let broker = Mosquitto::start_with_config(&["max_inflight_messages 1000"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = write_config(dir.path(), &broker, &store, http);
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, FILTER, 0, Duration::from_secs(20)),
        "the gateway did not subscribe:\n{}",
        gateway.log_tail(30)
    );

    // Live.
    publish_phase(&broker, "receipt-live", 0);
    assert!(
        ioc_e2e::wait_until(Duration::from_secs(30), || messages_received(http)
            >= PHASE as f64),
        "the gateway received {} of {PHASE} live messages\n{}",
        messages_received(http),
        gateway.log_tail(30)
    );
    let live = wait_for_store(&store, PHASE as usize);
    eprintln!("live: {} distinct readings stored of {PHASE}", total(&live));

    // Backlog: the gateway stops, the broker queues, the gateway comes back.
    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "gateway exit {status}\n{}",
        gateway.log_tail(30)
    );
    publish_phase(&broker, "receipt-backlog", PHASE);
    gateway.start_again().unwrap();
    let got = wait_for_store(&store, 2 * PHASE as usize);
    let ended_ms = now_ms() + 60_000;
    eprintln!(
        "live + backlog: {} readings stored of {}",
        total(&got),
        2 * PHASE
    );
    if let Err(e) = check_every_reading_once(&got, started_ms, ended_ms) {
        panic!("{e}\n--- gateway log ---\n{}", gateway.log_tail(20));
    }
    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "gateway exit {status}\n{}",
        gateway.log_tail(30)
    );
}

/// VictoriaMetrics with `-dedup.minScrapeInterval=1ms`: one point per series per millisecond.
#[test]
fn receipt_stamped_readings_never_merge_in_victoria_metrics() {
    let vm = VictoriaMetrics::start().unwrap();
    receipt_stamped_readings_never_merge(Store::Victoria(&vm));
}

/// InfluxDB 1.x: one point per series per nanosecond (a second write overwrites).
#[test]
fn receipt_stamped_readings_never_merge_in_influxdb1() {
    let influx = Influx1::start().unwrap();
    influx.create_database("telemetry").unwrap();
    receipt_stamped_readings_never_merge(Store::Influx(&influx));
}
