//! Crash loop (issue 8): while a QoS 1 publisher keeps publishing, the real `ioc-gateway` is
//! killed with SIGKILL at 20 random moments and restarted each time. Afterwards every message the
//! broker acknowledged to the publisher is in VictoriaMetrics exactly once per series and
//! timestamp, with its value. (VictoriaMetrics runs with `-dedup.minScrapeInterval=1ms`, so the
//! export is checked for both missing and doubled timestamps.)
//!
//! The random moments come from a seed printed at the start; set `CRASH_LOOP_SEED` to replay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ioc_e2e::{GatewayProcess, HeavyTestLock, Mosquitto, MqttPublisher, VictoriaMetrics};

const GATEWAY_ID: &str = "crash-gw";
const FILTER: &str = "city/+/env/+";
const ROUNDS: usize = 20;
const SENSORS: usize = 20;
/// Publishing pace: a message every `PACE` (about 1,500 msg/s).
const PACE: Duration = Duration::from_micros(650);

/// xorshift64*: enough randomness for kill moments, reproducible from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn between_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

fn write_config(dir: &Path, broker: &Mosquitto, vm: &VictoriaMetrics) -> PathBuf {
    let text = format!(
        r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
url = "{mqtt}"
client_id = "{GATEWAY_ID}"
topics = ["{FILTER}"]
qos = 1
measurement = "crash"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"

[output.influxdb]
url = "{vm}"
bucket = "telemetry"
org = "ioc"
batch_max_lines = 5000
flush_interval_ms = 200

[http]
enabled = false
"#,
        data = dir.join("data").display(),
        mqtt = broker.url(),
        vm = vm.url(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Message `i`: sensor `i % SENSORS`, a unique millisecond timestamp per sensor, value `i`.
fn message(i: usize, base_ms: i64) -> (String, String, String, i64) {
    let sensor = format!("s{:02}", i % SENSORS);
    let ts = base_ms + (i / SENSORS) as i64;
    let topic = format!("city/d{}/env/{sensor}", i % 4);
    let payload = format!("{{\"ts\":{ts},\"v\":{i}}}");
    (topic, payload, sensor, ts)
}

#[test]
fn every_acknowledged_message_survives_20_random_kill9_exactly_once() {
    let _heavy = HeavyTestLock::acquire();
    let seed = std::env::var("CRASH_LOOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| ioc_e2e::now_ms() as u64 | 1);
    eprintln!("crash loop seed: {seed} (CRASH_LOOP_SEED={seed} to replay)");
    let mut rng = Rng(seed);

    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker, &vm);
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, FILTER, 0, Duration::from_secs(20)),
        "gateway did not subscribe:\n{}",
        gateway.log_tail(30)
    );

    let base_ms = ioc_e2e::now_ms() - 3_600_000;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let url = broker.url();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut p = MqttPublisher::connect(&url, "crash-pub").unwrap();
            let start = Instant::now();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let (topic, payload, _, _) = message(i, base_ms);
                p.publish(&topic, payload).unwrap();
                i += 1;
                let due = start + PACE * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            p
        })
    };

    let mut kills = 0;
    for round in 0..ROUNDS {
        std::thread::sleep(rng.between_ms(200, 1800));
        assert!(
            gateway.is_running(),
            "gateway died on its own before kill {round}:\n{}",
            gateway.log_tail(40)
        );
        gateway.kill9();
        kills += 1;
        std::thread::sleep(rng.between_ms(0, 300));
        gateway.start_again().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let publisher = publisher.join().unwrap();
    assert!(
        publisher.wait_all_acked(Duration::from_secs(30)),
        "broker did not ack every message"
    );
    let flags = publisher.acked_flags();
    let published = flags.len();
    let acked: Vec<usize> = (0..published).filter(|i| flags[*i]).collect();
    eprintln!(
        "{kills} kills; {published} published, {} acked by the broker",
        acked.len()
    );
    assert_eq!(kills, ROUNDS);
    assert!(
        acked.len() > 5_000,
        "too little load: {} acked",
        acked.len()
    );

    // What must be in the store: sensor → (ts → value).
    let mut expected: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for &i in &acked {
        let (_, _, sensor, ts) = message(i, base_ms);
        expected.entry(sensor).or_default().insert(ts, i as f64);
    }
    let selector = "{__name__=\"crash_v\"}";
    let all_in = ioc_e2e::wait_until(Duration::from_secs(60), || {
        vm.force_flush().is_ok() && vm.count_points(selector).unwrap_or(0) >= acked.len()
    });
    let series = vm.export(selector).unwrap();
    let got_points: usize = series.iter().map(|s| s.timestamps_ms.len()).sum();
    assert!(
        all_in,
        "only {got_points} of {} acknowledged messages arrived\n--- gateway log ---\n{}",
        acked.len(),
        gateway.log_tail(40)
    );
    let mut got: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    let mut doubled = 0;
    for s in &series {
        assert_eq!(s.label("gateway"), Some(GATEWAY_ID));
        let sensor = s.label("sensor_id").unwrap().to_owned();
        let points = got.entry(sensor).or_default();
        for (ts, v) in s.timestamps_ms.iter().zip(&s.values) {
            if points.insert(*ts, *v).is_some() {
                doubled += 1;
            }
        }
    }
    assert_eq!(doubled, 0, "timestamps stored twice within a series");
    assert_eq!(series.len(), SENSORS, "one series per sensor");
    // Every acknowledged message, with its value; anything beyond that may only be a message the
    // broker took but whose PUBACK the publisher had not seen yet.
    let mut missing = Vec::new();
    for (sensor, points) in &expected {
        for (ts, v) in points {
            match got.get(sensor).and_then(|p| p.get(ts)) {
                Some(g) => assert_eq!(g, v, "{sensor} at {ts}"),
                None => missing.push((sensor.clone(), *ts)),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged messages missing, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let extra = got_points - acked.len();
    assert!(
        extra <= published - acked.len(),
        "{extra} unexpected points"
    );
    eprintln!(
        "all {} acknowledged messages stored exactly once ({} series)",
        acked.len(),
        series.len()
    );
}
