//! A wedged disk under the buffer: the gateway says so, keeps its broker connection, acks
//! nothing that is not durable, and catches up exactly once when the disk comes back.
//!
//! Why it exists: the worst failure of an edge gateway is the silent one, where messages keep
//! arriving, nothing moves, and no log line, metric or probe says so. An SD card that stops
//! completing writes is the field's version of it. The test puts the gateway's `data_dir` on an
//! ext4 image mounted by loop device and freezes that filesystem (`fsfreeze -f`: every write and
//! fsync blocks, exactly like a hung card) while a real mosquitto delivers messages to the real
//! gateway binary with a 5 s keep-alive. What it shows:
//!
//! - within the stall threshold (15 s) plus a little: an `ingest stalled` error in the log,
//!   `/readyz` answering 503 with reason `ingest_stalled` naming the input, and the
//!   `ioc_gateway_ingest_stalled{input}` gauge at 1;
//! - meanwhile the broker connection stays up for four keep-alive periods and more (no
//!   `ioc_gateway_mqtt_connection_errors_total`, still one "connected to broker" line): the loop that answers
//!   pings never waits on the disk;
//! - when the filesystem thaws, every message published (before and during the freeze) is in
//!   VictoriaMetrics exactly once, the gauge goes back to 0 and `/readyz` to 200.
//!
//! Needs root (loop devices, mount, fsfreeze), as the test suite has on its machines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ioc_e2e::{
    free_port, gateway_metrics, http_get, metric_in, wait_until, FreezableFs, GatewayProcess,
    HeavyTestLock, Mosquitto, MqttPublisher, VictoriaMetrics,
};
use tempfile::TempDir;

const GATEWAY_ID: &str = "stall-gw";
const BASE_TS_MS: i64 = 1_700_000_000_000;
const BEFORE: u64 = 1_000;
const DURING: u64 = 3_000;

fn get(port: u16, path: &str) -> (u16, String) {
    http_get(&format!("http://127.0.0.1:{port}{path}"))
}

fn metric(port: u16, name: &str) -> f64 {
    metric_in(&gateway_metrics(port), name, &[("input", "mqtt0")])
}

/// Message numbers stored in VictoriaMetrics, with how often each is there.
fn stored(vm: &VictoriaMetrics) -> BTreeMap<u64, usize> {
    let _ = vm.force_flush();
    let mut seen = BTreeMap::new();
    for s in vm.export("{__name__=\"stall_n\"}").unwrap_or_default() {
        for v in s.values {
            *seen.entry(v as u64).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn a_frozen_disk_is_reported_as_a_stall_the_connection_stays_up_and_nothing_is_lost() {
    let _heavy = HeavyTestLock::acquire();
    let fs = FreezableFs::new()
        .unwrap_or_else(|e| panic!("this test needs root for a loop-mounted ext4 image: {e}"));
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let http = free_port();
    let data = fs.mount.join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
url = "{mqtt}"
client_id = "{GATEWAY_ID}"
topics = ["city/+/env/+"]
qos = 1
measurement = "stall"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
keep_alive_s = 5

[output.influxdb]
url = "{store}"
api = "v2"
org = "ioc"
bucket = "telemetry"
flush_interval_ms = 100

[http]
listen = "127.0.0.1:{http}"
"#,
            data = data.display(),
            mqtt = broker.url(),
            store = vm.url(),
        ),
    )
    .unwrap();
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, "city/+/env/+", 0, Duration::from_secs(20)),
        "{}",
        gateway.log_tail(30)
    );
    let mut publisher = MqttPublisher::connect(&broker.url(), "stall-pub").unwrap();
    let send = |p: &mut MqttPublisher, range: std::ops::Range<u64>| {
        for k in range {
            let payload = format!(r#"{{"n":{k},"ts":{}}}"#, BASE_TS_MS + k as i64);
            p.publish(&format!("city/d1/env/s{}", k % 10), payload)
                .unwrap();
        }
    };
    send(&mut publisher, 0..BEFORE);
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    assert!(
        wait_until(Duration::from_secs(30), || stored(&vm).len() as u64
            == BEFORE),
        "before the freeze: {} of {BEFORE} stored\n{}",
        stored(&vm).len(),
        gateway.log_tail(30)
    );

    // The disk wedges; messages keep coming.
    fs.freeze();
    let frozen_at = Instant::now();
    send(&mut publisher, BEFORE..BEFORE + DURING);
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    let mut readyz = (0, String::new());
    let reported = wait_until(Duration::from_secs(40), || {
        readyz = get(http, "/readyz");
        readyz.0 == 503
            && readyz.1.contains("ingest_stalled")
            && metric(http, "ioc_gateway_ingest_stalled") == 1.0
            && gateway.log().contains("ingest stalled")
    });
    let reported_after = frozen_at.elapsed();
    assert!(
        reported,
        "stall not reported after {reported_after:?}: /readyz {readyz:?}\n{}",
        gateway.log_tail(30)
    );
    assert!(
        readyz.1.contains("input mqtt0 stalled"),
        "/readyz names the input: {}",
        readyz.1
    );
    eprintln!(
        "stall reported {:.1} s after the freeze: {}",
        reported_after.as_secs_f64(),
        readyz.1
    );
    // Hold the freeze past four keep-alive periods in all.
    let hold = Duration::from_secs(22).saturating_sub(frozen_at.elapsed());
    std::thread::sleep(hold);
    assert_eq!(
        metric(http, "ioc_gateway_mqtt_connection_errors_total"),
        0.0,
        "the broker connection dropped while the disk was frozen\n{}",
        gateway.log_tail(30)
    );
    assert_eq!(
        gateway.log().matches("connected to broker").count(),
        1,
        "reconnected while frozen\n{}",
        gateway.log_tail(30)
    );
    assert!(
        !broker.log_tail(200).contains("exceeded timeout"),
        "mosquitto dropped the gateway for silence:\n{}",
        broker.log_tail(40)
    );
    let frozen_for = frozen_at.elapsed();

    // The disk comes back: everything is made durable and forwarded, exactly once.
    fs.thaw();
    let total = BEFORE + DURING;
    let mut seen = BTreeMap::new();
    let all = wait_until(Duration::from_secs(60), || {
        seen = stored(&vm);
        seen.len() as u64 == total
    });
    let missing: Vec<u64> = (0..total).filter(|k| !seen.contains_key(k)).collect();
    assert!(
        all,
        "after the thaw: {} of {total} stored, first missing {:?}\n{}",
        seen.len(),
        &missing[..missing.len().min(10)],
        gateway.log_tail(30)
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert!(
        wait_until(Duration::from_secs(20), || metric(
            http,
            "ioc_gateway_ingest_stalled"
        ) == 0.0
            && get(http, "/readyz").0 == 200),
        "still reported stalled after the thaw: {:?}\n{}",
        get(http, "/readyz"),
        gateway.log_tail(30)
    );
    assert!(gateway.log().contains("ingest moving again"));
    eprintln!(
        "frozen for {:.1} s; all {total} readings stored exactly once after the thaw",
        frozen_for.as_secs_f64()
    );
    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status:?}\n{}", gateway.log_tail(20));
}
