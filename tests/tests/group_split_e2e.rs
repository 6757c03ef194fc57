//! Messages whose readings expand far beyond their payload are split across buffer appends,
//! never refused as a group; only a message that can never be stored is rejected, alone.
//!
//! Why it exists: a JSON array payload of small objects turns into line protocol about ten times
//! its size (measurement and tags repeated on every line), and the buffer refuses any single
//! append over 32 MiB. A group of a few such messages must still be stored whole, and a single
//! message whose readings alone exceed what the buffer can ever take must be rejected (counted,
//! logged, acked so the broker stops redelivering it) without costing its neighbours anything.
//!
//! The test publishes, through a real mosquitto to the real gateway, three messages of ~0.3 MiB
//! (10,000 readings each; with the input's ~1,000-byte static tag that is ≈10.5 MiB of line
//! protocol each), one message of ~1.3 MiB (40,000 readings, ≈42 MiB of line protocol: over the
//! buffer's 32 MiB per append, so it can never be stored) and one more ~0.3 MiB message, queued
//! while the gateway is stopped so they arrive in one burst and share a commit group (≈84 MiB of
//! line protocol: the previous committer refused such a group whole). VictoriaMetrics must hold
//! every reading of the four storable messages exactly once and none of the rejected one, and the
//! gateway must count exactly one `too_large_for_buffer` rejection.

use std::time::Duration;

use ioc_e2e::{
    free_port, gateway_metrics, metric_in, metrics_page_problems, wait_until, GatewayProcess,
    HeavyTestLock, Mosquitto, MqttPublisher, VictoriaMetrics,
};
use tempfile::TempDir;

const GATEWAY_ID: &str = "split-gw";
const BASE_TS_MS: i64 = 1_700_000_000_000;
const SMALL: u64 = 10_000;
const HUGE: u64 = 40_000;

/// Message `m`: `count` readings, `{"v":<m*1e6+i>,"ts":...}` each, all of one sensor.
fn payload(m: u64, count: u64) -> String {
    let mut s = String::with_capacity(count as usize * 40);
    s.push('[');
    for i in 0..count {
        if i > 0 {
            s.push(',');
        }
        let v = m * 1_000_000 + i;
        s.push_str(&format!(
            r#"{{"v":{v},"ts":{}}}"#,
            BASE_TS_MS + (m * 1_000_000 + i) as i64
        ));
    }
    s.push(']');
    s
}

#[test]
fn a_group_too_large_for_one_append_is_split_and_only_the_unstorable_message_is_rejected() {
    let _heavy = HeavyTestLock::acquire();
    let started = std::time::Instant::now();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let http = free_port();
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
measurement = "split"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
max_payload_bytes = 4194304

[inputs.mqtt.tags]
site = "{site}"

[output.influxdb]
url = "{store}"
api = "v2"
org = "ioc"
bucket = "telemetry"
batch_max_lines = 20000
flush_interval_ms = 100

[buffer]
max_disk_mb = 1024

[http]
listen = "127.0.0.1:{http}"
"#,
            data = dir.path().join("data").display(),
            mqtt = broker.url(),
            store = vm.url(),
            site = "roadside-cabinet-".repeat(58),
        ),
    )
    .unwrap();
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, "city/+/env/+", 0, Duration::from_secs(20)),
        "{}",
        gateway.log_tail(30)
    );
    // Stop the gateway so all five messages queue at the broker and arrive in one burst.
    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(20)).unwrap();
    let mut publisher = MqttPublisher::connect(&broker.url(), "split-pub").unwrap();
    let plan: Vec<(u64, u64)> = vec![(1, SMALL), (2, SMALL), (3, SMALL), (4, HUGE), (5, SMALL)];
    for (m, count) in &plan {
        publisher
            .publish("city/d1/env/s1", payload(*m, *count))
            .unwrap();
    }
    assert!(publisher.wait_all_acked(Duration::from_secs(60)));
    gateway.start_again().unwrap();

    let expected: u64 = plan.iter().filter(|(m, _)| *m != 4).map(|(_, c)| c).sum();
    let mut values: Vec<u64> = Vec::new();
    let arrived = wait_until(Duration::from_secs(120), || {
        let _ = vm.force_flush();
        values = vm
            .export("{__name__=\"split_v\"}")
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.values)
            .map(|v| v as u64)
            .collect();
        values.len() as u64 >= expected
    });
    let rejected = |text: &str| {
        metric_in(
            text,
            "ioc_gateway_readings_rejected_total",
            &[("reason", "too_large_for_buffer")],
        )
    };
    let metrics = gateway_metrics(http);
    // The page of a real run: every family prefixed and documented.
    let problems = metrics_page_problems(&metrics);
    assert!(
        problems.is_empty(),
        "/metrics: {}\n{metrics}",
        problems.join("\n")
    );
    assert!(
        arrived,
        "{} of {expected} readings stored\n{}",
        values.len(),
        gateway.log_tail(30)
    );
    eprintln!(
        "{} readings stored {:.1} s after the lock was taken",
        values.len(),
        started.elapsed().as_secs_f64()
    );
    values.sort_unstable();
    let mut distinct = values.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), values.len(), "some readings stored twice");
    assert_eq!(values.len() as u64, expected);
    assert!(
        !values.iter().any(|v| v / 1_000_000 == 4),
        "readings of the unstorable message were stored"
    );
    for (m, count) in plan.iter().filter(|(m, _)| *m != 4) {
        let n = values.iter().filter(|v| *v / 1_000_000 == *m).count() as u64;
        assert_eq!(n, *count, "message {m}: {n} of {count} readings");
    }
    assert_eq!(rejected(&metrics), 1.0, "{}", gateway.log_tail(30));
    assert!(
        gateway.log().contains("can never be stored"),
        "{}",
        gateway.log_tail(30)
    );
    // The rejected message was acked: after a restart the broker has nothing to redeliver.
    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(20)).unwrap();
    gateway.start_again().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let metrics = gateway_metrics(http);
    assert_eq!(
        metric_in(
            &metrics,
            "ioc_gateway_messages_received_total",
            &[("input", "mqtt0")]
        ),
        0.0,
        "the broker redelivered after the restart: something was left unacked\n{}",
        gateway.log_tail(20)
    );
}
