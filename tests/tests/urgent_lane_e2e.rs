//! Urgent data never waits behind normal data: a normal batch the store refuses with `400`
//! (so the gateway splits it to find the bad line) while the store is slow for it, and camera
//! events arriving meanwhile.
//!
//! Why it exists: splitting a batch of a few hundred lines takes a request per half down to the
//! bad line; at 1.5 s per refused request that is over ten seconds, and an event from a plate
//! camera that waited behind it would reach the IOC late. The real gateway binary, a real
//! mosquitto and a real VictoriaMetrics behind the test harness's proxy, which answers `400`
//! after 1.5 s to every request holding the bad line (a store cannot be told to do that) and
//! forwards everything else. Each camera event must be stored while the split is still going
//! on (the bad line not yet in the dead-letter file); the time from publish to queryable is
//! printed. Then every good env reading is stored once and the bad one is dead-lettered.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ioc_e2e::gateway_toml::{camera_input, env_input, gateway_head, V2_API};
use ioc_e2e::{
    wait_until, Fault, FaultProxy, GatewayProcess, HeavyTestLock, Mosquitto, MqttPublisher,
    VictoriaMetrics,
};
use tempfile::TempDir;

const GATEWAY_ID: &str = "urgent-gw";
const BASE_TS_MS: i64 = 1_700_000_000_000;
const READINGS: u64 = 400;
const POISON_AT: u64 = 123;
const EVENTS: u64 = 6;

fn inflate(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out);
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn stored_events(vm: &VictoriaMetrics) -> Vec<u64> {
    let _ = vm.force_flush();
    let mut all: Vec<u64> = vm
        .export("{__name__=\"ub_cam_event\"}")
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.values.into_iter().map(|v| v as u64))
        .collect();
    all.sort_unstable();
    all
}

#[test]
fn camera_events_are_stored_while_a_refused_normal_batch_is_still_being_split() {
    let _heavy = HeavyTestLock::acquire();
    let vm = VictoriaMetrics::start().unwrap();
    let proxy = FaultProxy::start(vm.port()).unwrap();
    // Every request holding the bad reading: 1.5 s, then 400.
    proxy.set_rule(Some(Arc::new(|body: &[u8]| {
        contains(&inflate(body), b"poison=").then_some((
            Duration::from_millis(1500),
            Fault::Status {
                status: 400,
                retry_after_s: None,
            },
        ))
    })));
    let broker = Mosquitto::start().unwrap();
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"{head}{env}{cam}
[output.influxdb]
url = "{url}"
{V2_API}batch_max_lines = 1000
flush_interval_ms = 1000
timeout_ms = 5000
"#,
            head = gateway_head(GATEWAY_ID, &data),
            env = env_input(&broker.url(), GATEWAY_ID, "ub"),
            cam = camera_input(&broker.url(), &format!("{GATEWAY_ID}-cam"), "ub_cam"),
            url = proxy.url(),
        ),
    )
    .unwrap();
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    for (client, topic) in [
        (GATEWAY_ID.to_owned(), "city/+/env/+"),
        (format!("{GATEWAY_ID}-cam"), "city/+/cam/+"),
    ] {
        assert!(
            broker.wait_for_subscription(&client, topic, 0, Duration::from_secs(20)),
            "{}",
            gateway.log_tail(30)
        );
    }
    let mut publisher = MqttPublisher::connect(&broker.url(), "urgent-pub").unwrap();
    // One normal batch with a bad reading in it.
    for k in 0..READINGS {
        let poison = if k == POISON_AT { r#","poison":1"# } else { "" };
        let payload = format!(r#"{{"n":{k},"ts":{}{poison}}}"#, BASE_TS_MS + k as i64);
        publisher
            .publish(&format!("city/d1/env/s{}", k % 10), payload)
            .unwrap();
    }
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    let poisoned = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.status == Some(400))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || poisoned() >= 1),
        "the batch with the bad line reached the store: {:?}\n{}",
        proxy.requests(),
        gateway.log_tail(30)
    );
    let dead_letter = data.join("dead-letter.lp");
    let split_done = || {
        std::fs::read_to_string(&dead_letter)
            .map(|t| t.contains("poison="))
            .unwrap_or(false)
    };

    // Camera events while the split goes on.
    let mut latencies = Vec::new();
    for e in 0..EVENTS {
        let published = Instant::now();
        let payload = format!(r#"{{"event":{e},"ts":{}}}"#, BASE_TS_MS + 10_000 + e as i64);
        publisher.publish("city/d1/cam/c1", payload).unwrap();
        let stored = wait_until(Duration::from_secs(30), || stored_events(&vm).contains(&e));
        let latency = published.elapsed();
        assert!(stored, "event {e} never stored\n{}", gateway.log_tail(30));
        assert!(
            !split_done(),
            "event {e} was stored only after the refused batch was split ({latency:?}): it waited behind it\n{}",
            gateway.log_tail(30)
        );
        latencies.push(latency);
        std::thread::sleep(Duration::from_millis(300));
    }
    let refused_during_events = poisoned();

    // The split finishes: every good reading stored once, the bad one dead-lettered.
    assert!(
        wait_until(Duration::from_secs(120), split_done),
        "the bad line reaches the dead-letter file\n{}",
        gateway.log_tail(30)
    );
    let good = wait_until(Duration::from_secs(30), || {
        let _ = vm.force_flush();
        vm.count_points("{__name__=\"ub_n\"}").unwrap_or(0) as u64 == READINGS - 1
    });
    assert!(
        good,
        "{} of {} good readings stored\n{}",
        vm.count_points("{__name__=\"ub_n\"}").unwrap_or(0),
        READINGS - 1,
        gateway.log_tail(30)
    );
    assert_eq!(stored_events(&vm), (0..EVENTS).collect::<Vec<_>>());
    let max = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "urgent lane: {EVENTS} camera events stored while a {READINGS}-line batch was split \
         ({refused_during_events} refused requests of 1.5 s by then, {} in all); publish → \
         queryable {latencies:?}, max {max:?}",
        poisoned()
    );
    gateway.sigterm();
    assert!(gateway
        .wait_exit(Duration::from_secs(40))
        .unwrap()
        .success());
}
