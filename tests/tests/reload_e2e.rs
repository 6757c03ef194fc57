//! Reloading the config with SIGHUP under load: nothing lost, nothing twice, the new settings
//! in force, a bad file refused while the old config keeps running.
//!
//! Why it exists: a technician changes a config on a running box (`systemctl reload`) while
//! 2,000 messages a second arrive. The gateway must apply the change without dropping its
//! buffer or its MQTT session, and a file that does not check must change nothing. The real
//! gateway binary, a real mosquitto with its defaults (`max_queued_messages 1000`, so an input
//! that reconnects slowly would lose messages at the broker) and a real VictoriaMetrics:
//!
//! 1. a publisher sends 2,000 QoS 1 messages/s on `city/d1/env/*` for the whole test;
//! 2. SIGHUP with a file that adds the topic `city/+/traffic/+` and cuts `batch_max_lines` from
//!    500 to 50: the broker is told without a reconnect (one connection in the log), messages on
//!    the new topic arrive, and batches sent afterwards carry at most 50 lines where they carried
//!    hundreds before;
//! 3. SIGHUP with a broken file, then with one that changes `[buffer]`: both refused, said in
//!    the log and in `ioc_gateway_config_reloads_total{result="refused"}`, the gateway still running on the
//!    last good config;
//! 4. SIGHUP with a file that changes the input's keep-alive: that input is restarted (its
//!    session resumed on the broker) under the same load;
//! 5. every message published is in VictoriaMetrics exactly once (values per series read back
//!    with their counts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ioc_e2e::{
    free_port, gateway_metrics, http_get, metric_in, wait_until, GatewayProcess, HeavyTestLock,
    Mosquitto, MqttPublisher, VictoriaMetrics,
};
use tempfile::TempDir;

const GATEWAY_ID: &str = "reload-gw";
const BASE_TS_MS: i64 = 1_700_000_000_000;
/// Messages per second on the environment topic.
const RATE: u64 = 2_000;
const TRAFFIC_MESSAGES: u64 = 500;

struct Settings<'a> {
    topics: &'a [&'a str],
    batch_max_lines: u32,
    keep_alive_s: u32,
    buffer_mb: u32,
}

fn config_text(s: &Settings, data: &std::path::Path, mqtt: &str, store: &str, http: u16) -> String {
    let topics = s
        .topics
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
url = "{mqtt}"
client_id = "{GATEWAY_ID}"
topics = [{topics}]
qos = 1
measurement = "rl"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
keep_alive_s = {keep_alive}

[output.influxdb]
url = "{store}"
api = "v2"
org = "ioc"
bucket = "telemetry"
batch_max_lines = {batch}
flush_interval_ms = 200

[buffer]
max_disk_mb = {buffer_mb}

[http]
listen = "127.0.0.1:{http}"
"#,
        data = data.display(),
        keep_alive = s.keep_alive_s,
        batch = s.batch_max_lines,
        buffer_mb = s.buffer_mb,
    )
}

/// Values of `series` in the store, with how often each is there.
fn stored(vm: &VictoriaMetrics, series: &str) -> BTreeMap<u64, usize> {
    let _ = vm.force_flush();
    let mut seen = BTreeMap::new();
    for s in vm
        .export(&format!("{{__name__=\"{series}\"}}"))
        .unwrap_or_default()
    {
        for v in s.values {
            *seen.entry(v as u64).or_insert(0) += 1;
        }
    }
    seen
}

/// Lines and batches the gateway has delivered (`/api/sensors` store block).
fn delivered(http: u16) -> (u64, u64) {
    let (_, body) = http_get(&format!("http://127.0.0.1:{http}/api/sensors"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    (
        v["store"]["lines_sent"].as_u64().unwrap_or(0),
        v["store"]["batches_sent"].as_u64().unwrap_or(0),
    )
}

fn hup(gateway: &GatewayProcess) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(gateway.pid().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Waits up to 30 s until the gateway's log holds `needle` exactly `times` times.
fn wait_for_log(gateway: &GatewayProcess, needle: &str, times: usize) {
    assert!(
        wait_until(Duration::from_secs(30), || count(&gateway.log(), needle)
            == times),
        "{needle:?} not {times} times in the log\n{}",
        gateway.log_tail(30)
    );
}

#[test]
fn sighup_under_load_applies_a_new_topic_and_batch_size_refuses_bad_files_and_loses_nothing() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    // Without deduplication, so a reading stored twice shows twice.
    let vm = VictoriaMetrics::start_with_flags(&[]).unwrap();
    let dir = TempDir::new().unwrap();
    let http = free_port();
    let data = dir.path().join("data");
    let path = dir.path().join("gateway.toml");
    let write = |s: &Settings| {
        std::fs::write(&path, config_text(s, &data, &broker.url(), &vm.url(), http)).unwrap()
    };
    let env_only = Settings {
        topics: &["city/+/env/+"],
        batch_max_lines: 500,
        keep_alive_s: 30,
        buffer_mb: 256,
    };
    write(&env_only);
    let mut gateway = GatewayProcess::spawn(&path).unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, "city/+/env/+", 0, Duration::from_secs(20)),
        "{}",
        gateway.log_tail(30)
    );

    // The load: RATE messages/s, paced in steps of 10 ms, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (url, stop, sent) = (broker.url(), stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut publisher = MqttPublisher::connect(&url, "reload-pub").unwrap();
            let start = Instant::now();
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start.elapsed().as_millis() as u64 * RATE / 1000;
                while k < due {
                    let payload = format!(r#"{{"n":{k},"ts":{}}}"#, BASE_TS_MS + k as i64);
                    publisher
                        .publish(&format!("city/d1/env/s{}", k % 20), payload)
                        .unwrap();
                    k += 1;
                }
                sent.store(k, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                publisher.wait_all_acked(Duration::from_secs(60)),
                "the broker did not ack every message"
            );
            k
        })
    };
    let at_least = |n: u64| {
        assert!(
            wait_until(Duration::from_secs(60), || sent.load(Ordering::Relaxed)
                >= n),
            "the publisher fell behind"
        )
    };
    at_least(RATE * 4);
    let before_reload = delivered(http);

    // 2. A new topic and a smaller batch size.
    let with_traffic = Settings {
        topics: &["city/+/env/+", "city/+/traffic/+"],
        batch_max_lines: 50,
        ..env_only
    };
    write(&with_traffic);
    hup(&gateway);
    assert!(
        wait_until(Duration::from_secs(30), || gateway
            .log()
            .contains("config reloaded")),
        "{}",
        gateway.log_tail(30)
    );
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, "city/+/traffic/+", 0, Duration::from_secs(20)),
        "the new topic was not subscribed\n{}",
        gateway.log_tail(30)
    );
    let mut traffic = MqttPublisher::connect(&broker.url(), "reload-traffic").unwrap();
    for t in 0..TRAFFIC_MESSAGES {
        traffic
            .publish(
                &format!("city/d2/traffic/c{}", t % 4),
                format!(r#"{{"cars":{t},"ts":{}}}"#, BASE_TS_MS + t as i64),
            )
            .unwrap();
    }
    assert!(traffic.wait_all_acked(Duration::from_secs(30)));
    // From here on (the batch in flight at the reload is delivered by now) batches are small.
    std::thread::sleep(Duration::from_secs(1));
    let after_reload = delivered(http);
    at_least(sent.load(Ordering::Relaxed) + RATE * 3);
    let later = delivered(http);

    // 3. A broken file, then one that changes what needs a restart: both refused.
    std::fs::write(&path, "[gateway]\nid = \"reload-gw\"\ndata_dir = 7\n").unwrap();
    hup(&gateway);
    wait_for_log(&gateway, "reload refused", 1);
    write(&Settings {
        buffer_mb: 64,
        ..with_traffic
    });
    hup(&gateway);
    wait_for_log(&gateway, "reload refused", 2);
    let log = gateway.log();
    assert!(
        log.contains("buffer changed, which takes effect only on a restart"),
        "{}",
        gateway.log_tail(30)
    );
    assert!(log.contains("data_dir"), "the broken key is named");
    assert!(gateway.is_running());
    let metrics = gateway_metrics(http);
    assert_eq!(
        metric_in(
            &metrics,
            "ioc_gateway_config_reloads_total",
            &[("result", "refused")]
        ),
        2.0
    );
    assert_eq!(
        metric_in(
            &metrics,
            "ioc_gateway_config_reloads_total",
            &[("result", "applied")]
        ),
        1.0
    );
    assert_eq!(
        metric_in(&metrics, "ioc_gateway_config_last_reload_successful", &[]),
        0.0
    );

    // 4. A change that restarts the input (keep-alive), under the same load.
    write(&Settings {
        keep_alive_s: 20,
        ..with_traffic
    });
    hup(&gateway);
    wait_for_log(&gateway, "config reloaded", 2);
    at_least(sent.load(Ordering::Relaxed) + RATE * 3);
    stop.store(true, Ordering::Relaxed);
    let total = load.join().unwrap();

    // 5. Everything exactly once.
    let complete = wait_until(Duration::from_secs(60), || {
        stored(&vm, "rl_n").len() as u64 == total
            && stored(&vm, "rl_cars").len() as u64 == TRAFFIC_MESSAGES
    });
    let env = stored(&vm, "rl_n");
    let cars = stored(&vm, "rl_cars");
    let missing: Vec<u64> = (0..total)
        .filter(|k| !env.contains_key(k))
        .take(20)
        .collect();
    assert!(
        complete,
        "{} of {total} env messages and {} of {TRAFFIC_MESSAGES} traffic messages stored; first missing: {missing:?}\n{}",
        env.len(),
        cars.len(),
        gateway.log_tail(40)
    );
    let twice: Vec<_> = env.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert!(cars.values().all(|n| *n == 1));

    // The topic change needed no reconnect; the keep-alive change one.
    let log = gateway.log();
    assert!(
        log.contains("topics changed by a reload"),
        "{}",
        gateway.log_tail(40)
    );
    assert_eq!(
        count(&log, "connected to broker"),
        2,
        "{}",
        gateway.log_tail(60)
    );
    // The resumed session was not subscribed again (the broker would re-send retained
    // messages): once for the first start, once for the topic the first reload added.
    assert_eq!(broker.subscription_count(GATEWAY_ID, "city/+/env/+"), 1);
    assert_eq!(broker.subscription_count(GATEWAY_ID, "city/+/traffic/+"), 1);
    // Batches: hundreds of lines before the reload, at most 50 after it.
    let per_batch = |a: (u64, u64), b: (u64, u64)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64;
    let before = per_batch((0, 0), before_reload);
    let after = per_batch(after_reload, later);
    eprintln!(
        "reload under load: {total} env + {TRAFFIC_MESSAGES} traffic messages stored exactly once; {before:.0} lines per batch before, {after:.1} after"
    );
    assert!(before > 100.0, "{before} lines per batch before the reload");
    assert!(
        after <= 50.0,
        "{after} lines per batch after batch_max_lines = 50"
    );
    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(40)).unwrap();
    assert!(status.success(), "{status:?}\n{}", gateway.log_tail(30));
}

/// The same rule across a restart: the broker kept the session (and its subscriptions), so a
/// topic added to the file while the gateway was stopped must be subscribed, and a removed one
/// unsubscribed, on the resumed session, without subscribing the unchanged one again.
#[test]
fn a_restart_with_changed_topics_subscribes_the_new_and_unsubscribes_the_removed() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    // Without deduplication, so a reading stored twice shows twice.
    let vm = VictoriaMetrics::start_with_flags(&[]).unwrap();
    let dir = TempDir::new().unwrap();
    let http = free_port();
    let data = dir.path().join("data");
    let path = dir.path().join("gateway.toml");
    let write = |topics: &[&str]| {
        let s = Settings {
            topics,
            batch_max_lines: 500,
            keep_alive_s: 30,
            buffer_mb: 256,
        };
        std::fs::write(
            &path,
            config_text(&s, &data, &broker.url(), &vm.url(), http),
        )
        .unwrap()
    };
    write(&["city/+/env/+", "city/+/old/+"]);
    let mut gateway = GatewayProcess::spawn(&path).unwrap();
    assert!(broker.wait_for_subscription(GATEWAY_ID, "city/+/old/+", 0, Duration::from_secs(20)));
    gateway.sigterm();
    assert!(gateway
        .wait_exit(Duration::from_secs(40))
        .unwrap()
        .success());

    write(&["city/+/env/+", "city/+/traffic/+"]);
    gateway.start_again().unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, "city/+/traffic/+", 0, Duration::from_secs(20)),
        "the topic added while stopped was not subscribed\n{}",
        gateway.log_tail(30)
    );
    assert!(
        wait_until(Duration::from_secs(10), || gateway
            .log()
            .contains("broker confirmed the subscriptions")),
        "{}",
        gateway.log_tail(30)
    );
    let mut publisher = MqttPublisher::connect(&broker.url(), "restart-pub").unwrap();
    // Removed topic first, then the others: once the last of those is stored, anything the
    // broker still delivered for the removed one would be stored too.
    for k in 0..100u64 {
        let ts = BASE_TS_MS + k as i64;
        publisher
            .publish("city/d1/old/s1", format!(r#"{{"gone":{k},"ts":{ts}}}"#))
            .unwrap();
    }
    for k in 0..100u64 {
        let ts = BASE_TS_MS + k as i64;
        publisher
            .publish("city/d1/env/s1", format!(r#"{{"n":{k},"ts":{ts}}}"#))
            .unwrap();
        publisher
            .publish("city/d1/traffic/c1", format!(r#"{{"cars":{k},"ts":{ts}}}"#))
            .unwrap();
    }
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    assert!(
        wait_until(Duration::from_secs(30), || stored(&vm, "rl_n").len() == 100
            && stored(&vm, "rl_cars").len() == 100),
        "{}",
        gateway.log_tail(30)
    );
    assert!(
        stored(&vm, "rl_gone").is_empty(),
        "the removed topic is still delivered"
    );
    assert_eq!(
        broker.subscription_count(GATEWAY_ID, "city/+/env/+"),
        1,
        "the unchanged topic was subscribed again (the broker re-sends retained messages then)"
    );
    gateway.sigterm();
    assert!(gateway
        .wait_exit(Duration::from_secs(40))
        .unwrap()
        .success());
}
