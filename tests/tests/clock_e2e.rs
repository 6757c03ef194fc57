//! The gateway's clock follows the wall clock through NTP-like steps, and an unsynchronised box
//! clock neither mislabels nor refuses anything.
//!
//! Why it exists: an RTC-less box boots at a wrong time and is stepped by NTP later, often by
//! hours. Readings stamped on receipt must carry the time of the wall clock when they arrive (not
//! the boot-time error for the whole run), device timestamps must pass untouched, and `[limits]`
//! must not refuse a correctly stamped device reading because the box's own clock is off.
//!
//! How: the real binary (a debug build) with `IOC_GATEWAY_TEST_CLOCK_FILE` (an offset in ns added
//! to its wall clock, re-read on every reading; replaced atomically by rename) and
//! `IOC_GATEWAY_TEST_CLOCK_SYNCED=0` (the kernel says "not synchronised"), a real mosquitto and
//! InfluxDB 1.x (nanosecond-exact); one MQTT input without a time field, one with. `[limits] max_past_s = max_future_s = 600`. Three phases of
//! 20 receipt-stamped messages (no `ts`) and 20 device-stamped ones (`ts` = the real time):
//!
//! 1. offset 0: receipt stamps lie within the phase's real time span;
//! 2. offset +1 h (a forward step): receipt stamps lie an hour ahead, within the phase's span + 1 h;
//!    the device readings (an hour "in the past" for the box) are all stored as stamped;
//! 3. offset +59 min (a backward step of a minute): receipt stamps stay after phase 2's last one,
//!    strictly increasing and distinct (a series never goes back in time or overwrites a point),
//!    within 1 s of it, until the wall clock passes it again.
//!
//! Every receipt-stamped point carries `clock_unsynced=true`, no device-stamped one does;
//! `ioc_gateway_clock_steps_total` counts one forward and one backward step; nothing is refused.

use std::path::Path;
use std::time::Duration;

use ioc_e2e::{
    free_port, gateway_metrics, metric_in, now_ms, wait_until, GatewayProcess, Influx1, Mosquitto,
    MqttPublisher,
};
use tempfile::TempDir;

const GATEWAY_ID: &str = "clock-gw";
const PER_PHASE: usize = 20;
const HOUR_NS: i64 = 3_600 * 1_000_000_000;
const MINUTE_NS: i64 = 60 * 1_000_000_000;

fn set_offset(file: &Path, ns: i64) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, ns.to_string()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn now_ns() -> i64 {
    now_ms() * 1_000_000
}

/// (time, seq, clock_unsynced tag) of every point of `sensor`, in time order.
fn points(influx: &Influx1, sensor: &str) -> Vec<(i64, i64, Option<String>)> {
    let rows = influx
        .query_rows(
            "telemetry",
            &format!("SELECT seq, clock_unsynced FROM clock WHERE sensor_id = '{sensor}'"),
        )
        .unwrap_or_default();
    rows.iter()
        .map(|r| {
            (
                r["time"].as_i64().unwrap_or_default(),
                r["seq"].as_f64().unwrap_or(-1.0) as i64,
                r.get("clock_unsynced")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn receipt_stamps_follow_steps_device_stamps_are_untouched_and_steps_are_counted() {
    let broker = Mosquitto::start().unwrap();
    let influx = Influx1::start().unwrap();
    influx.create_database("telemetry").unwrap();
    let dir = TempDir::new().unwrap();
    let offset_file = dir.path().join("clock-offset");
    set_offset(&offset_file, 0);
    let http = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
name = "receipt"
url = "{mqtt}"
client_id = "{GATEWAY_ID}"
topics = ["city/+/clockr/+"]
qos = 1
measurement = "clock"
topic_tags = "_/district/_/sensor_id"

[[inputs.mqtt]]
name = "device"
url = "{mqtt}"
client_id = "{GATEWAY_ID}-device"
topics = ["city/+/clockd/+"]
qos = 1
measurement = "clock"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"

[output.influxdb]
url = "{store}"
api = "v1"
database = "telemetry"
flush_interval_ms = 100

[limits]
max_past_s = 600
max_future_s = 600

[http]
listen = "127.0.0.1:{http}"
"#,
            data = dir.path().join("data").display(),
            mqtt = broker.url(),
            store = influx.url(),
        ),
    )
    .unwrap();
    let gateway = GatewayProcess::spawn_with_env(
        &config,
        &[
            ("IOC_GATEWAY_TEST_CLOCK_FILE", offset_file.to_str().unwrap()),
            ("IOC_GATEWAY_TEST_CLOCK_SYNCED", "0"),
        ],
    )
    .unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, "city/+/clockr/+", 0, Duration::from_secs(30))
            && broker.wait_for_subscription(
                &format!("{GATEWAY_ID}-device"),
                "city/+/clockd/+",
                0,
                Duration::from_secs(30)
            ),
        "{}",
        gateway.log_tail(30)
    );
    let mut publisher = MqttPublisher::connect(&broker.url(), "clock-pub").unwrap();
    let mut seq = 0i64;
    // One phase: PER_PHASE receipt-stamped and PER_PHASE device-stamped messages, all stored.
    // The real time span it ran in.
    let mut phase = |p: &mut MqttPublisher| -> (i64, i64) {
        let start = now_ns();
        let start_ms = now_ms();
        for i in 0..PER_PHASE {
            p.publish("city/d1/clockr/r", format!(r#"{{"seq":{seq}}}"#))
                .unwrap();
            p.publish(
                "city/d1/clockd/d",
                // Distinct per reading: the store keeps one point per series and instant.
                format!(r#"{{"seq":{seq},"ts":{}}}"#, start_ms + i as i64),
            )
            .unwrap();
            seq += 1;
        }
        assert!(p.wait_all_acked(Duration::from_secs(30)));
        let want = usize::try_from(seq).unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || points(&influx, "r").len()
                == want
                && points(&influx, "d").len() == want),
            "stored r {} d {} of {want}\n{}",
            points(&influx, "r").len(),
            points(&influx, "d").len(),
            gateway.log_tail(30)
        );
        (start, now_ns())
    };
    let of_phase = |all: &[(i64, i64, Option<String>)], n: i64| -> Vec<i64> {
        all.iter()
            .filter(|(_, s, _)| (n * PER_PHASE as i64..(n + 1) * PER_PHASE as i64).contains(s))
            .map(|(t, _, _)| *t)
            .collect()
    };

    let (a0, a1) = phase(&mut publisher);
    set_offset(&offset_file, HOUR_NS);
    let (b0, b1) = phase(&mut publisher);
    set_offset(&offset_file, HOUR_NS - MINUTE_NS);
    let (_c0, _c1) = phase(&mut publisher);

    let r = points(&influx, "r");
    let d = points(&influx, "d");
    // Receipt stamps follow the wall clock (1 s of slack for the test's and the gateway's
    // reading of it).
    let slack = 1_000_000_000;
    for t in of_phase(&r, 0) {
        assert!(
            (a0 - slack..=a1 + slack).contains(&t),
            "phase 1: {t} not in {a0}..{a1}"
        );
    }
    let b = of_phase(&r, 1);
    for &t in &b {
        assert!(
            (b0 + HOUR_NS - slack..=b1 + HOUR_NS + slack).contains(&t),
            "phase 2: {t} not an hour ahead of {b0}..{b1}"
        );
    }
    // After the backward step: after phase 2's last stamp, increasing, distinct, close to it.
    let c = of_phase(&r, 2);
    let last_b = *b.iter().max().unwrap();
    assert_eq!(c.len(), PER_PHASE);
    let mut sorted = c.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), PER_PHASE, "distinct stamps: {c:?}");
    assert!(
        c.iter().all(|&t| t > last_b && t < last_b + slack),
        "phase 3 {c:?} after {last_b}"
    );
    // In arrival (seq) order, increasing.
    let mut by_seq: Vec<(i64, i64)> = r
        .iter()
        .filter(|(_, s, _)| *s >= 2 * PER_PHASE as i64)
        .map(|(t, s, _)| (*s, *t))
        .collect();
    by_seq.sort_unstable();
    assert!(by_seq.windows(2).all(|w| w[0].1 < w[1].1), "{by_seq:?}");

    // Device stamps are exactly what the devices sent: within the real time of their phase,
    // none moved by the steps, none refused (an hour "in the past" for the box in phase 2).
    assert_eq!(d.len(), 3 * PER_PHASE);
    for (t, _, _) in &d {
        assert!(
            (a0 - slack..=now_ns() + slack).contains(t) && t % 1_000_000 == 0,
            "device stamp {t} moved"
        );
    }
    // The unsynchronised clock is said on receipt stamps only.
    assert!(
        r.iter().all(|(_, _, tag)| tag.as_deref() == Some("true")),
        "{r:?}"
    );
    assert!(d.iter().all(|(_, _, tag)| tag.is_none()), "{d:?}");

    let metrics = gateway_metrics(http);
    let steps = |direction| {
        metric_in(
            &metrics,
            "ioc_gateway_clock_steps_total",
            &[("direction", direction)],
        )
    };
    assert_eq!(steps("forward"), 1.0, "{}", gateway.log_tail(30));
    assert_eq!(steps("backward"), 1.0, "{}", gateway.log_tail(30));
    assert_eq!(
        metric_in(&metrics, "ioc_gateway_readings_rejected_total", &[]),
        0.0,
        "{}",
        gateway.log_tail(30)
    );
    let log = gateway.log();
    assert!(
        log.contains("the system clock jumped forward by 3600"),
        "{log}"
    );
    assert!(log.contains("the system clock jumped back by 60"), "{log}");
}
