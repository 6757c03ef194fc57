//! Nothing acknowledged is lost or doubled across 20 SIGKILLs: while the real `sensor-sim run` publishes at QoS 1 (its manifest holds
//! only the messages the broker PUBACKed), the real `ioc-gateway` is killed with SIGKILL at 20
//! random moments and restarted each time. Afterwards the real `sensor-sim verify` must pass: every
//! acknowledged reading is in VictoriaMetrics exactly once per series and timestamp, with its
//! values. (The harness runs VictoriaMetrics with `-dedup.minScrapeInterval=1ms`, as a deployment
//! that relies on idempotent replays would, so a replayed point is stored once; `verify` would count
//! a doubled point as a duplicate.) The store must also hold nothing beyond what was published.
//!
//! The random moments come from a seed printed at the start; set `CRASH_LOOP_SEED` to replay.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ioc_e2e::{
    GatewayProcess, HeavyTestLock, ManifestCounts, Mosquitto, RunOptions, SensorSim, StoreApi,
    VictoriaMetrics,
};

const GATEWAY_ID: &str = "crash-gw";
const FILTER: &str = "city/+/env/+";
const ROUNDS: usize = 20;
const STATIONS: usize = 20;
/// Publishing pace, messages per second.
const RATE: f64 = 1500.0;

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
measurement = "environment"
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

#[test]
fn every_acknowledged_message_survives_20_random_kill9_exactly_once() {
    let _heavy = HeavyTestLock::acquire();
    let started = Instant::now();
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

    let scenario = SensorSim::env_scenario(
        dir.path(),
        "crash-loop",
        STATIONS,
        &["d0", "d1", "d2", "d3"],
        1,
    );
    let manifest = dir.path().join("manifest.jsonl");
    // Runs until interrupted (the duration is only a backstop).
    let mut sim = SensorSim::spawn(
        &scenario,
        &broker.url(),
        seed,
        &manifest,
        &RunOptions {
            duration_s: Some(120.0),
            rate: Some(RATE),
            clients: Some(1),
            qos: Some(1),
            client_id: Some("crash-sim".into()),
            ..RunOptions::default()
        },
    )
    .unwrap();

    let mut kills = 0;
    for round in 0..ROUNDS {
        std::thread::sleep(rng.between_ms(200, 1800));
        assert!(
            gateway.is_running(),
            "gateway died on its own before kill {round}:\n{}",
            gateway.log_tail(40)
        );
        assert!(sim.is_running(), "sensor-sim run ended early");
        gateway.kill9();
        kills += 1;
        std::thread::sleep(rng.between_ms(0, 300));
        gateway.start_again().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    sim.interrupt();
    let run = sim.wait(Duration::from_secs(60)).unwrap();
    let counts = ManifestCounts::read(&manifest).unwrap();
    eprintln!(
        "{kills} kills; sensor-sim published {}, the broker acked {} ({} re-sent, {} lost) in {:.1} s",
        run.published, run.acked, counts.resent, run.lost, run.seconds
    );
    assert_eq!(kills, ROUNDS);
    assert_eq!(counts.entries, run.acked);
    assert!(run.acked > 5_000, "too little load: {run:?}");

    let verdict = SensorSim::verify_until_passed(
        &manifest,
        &vm.url(),
        StoreApi::V2,
        &["--gateway-id", GATEWAY_ID],
        Duration::from_secs(60),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        verdict.passed(),
        "{verdict}\n--- gateway log ---\n{}",
        gateway.log_tail(40)
    );
    let totals = verdict.counts();
    assert_eq!(totals.expected, counts.stored_points);
    assert_eq!(totals.found, counts.stored_points);
    assert_eq!(totals.duplicates, 0);

    // Nothing else: beyond the acknowledged readings, only a message the broker took but whose
    // PUBACK the simulator had not seen yet may be in the store.
    let stored = vm
        .count_points(&format!(
            "{{__name__=\"environment_pm2_5\",gateway=\"{GATEWAY_ID}\"}}"
        ))
        .unwrap() as u64;
    let acked_pm25 = counts.field_points["environment"]["pm2_5"];
    assert!(
        (acked_pm25..=run.published).contains(&stored),
        "{stored} pm2_5 samples stored; {acked_pm25} acknowledged, {} published",
        run.published
    );
    eprintln!(
        "verify: all {} acknowledged readings stored exactly once ({} pm2_5 samples in the store); {:.1} s in all",
        totals.found,
        stored,
        started.elapsed().as_secs_f64()
    );
}
