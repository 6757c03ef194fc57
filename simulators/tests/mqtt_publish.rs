//! The transport against a real mosquitto: every message the manifest says the broker
//! acknowledged really went through the broker (a subscriber saw its exact payload), also when
//! clients drop their connections and come back, and the summary's counts add up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ioc_e2e::{HeavyTestLock, Mosquitto, MqttSubscriber};
use rumqttc::QoS;
use sensor_sim::generator::Generator;
use sensor_sim::manifest::{self, Entry};
use sensor_sim::mqtt::{publish, PublishOptions};
use sensor_sim::scenario::Scenario;

/// A `Write` whose bytes the test can read afterwards.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn scenario(name: &str) -> Scenario {
    Scenario::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../config/scenarios")
            .join(name),
    )
    .unwrap()
}

fn run(
    broker: &Mosquitto,
    sc: &Scenario,
    seed: u64,
    messages: u64,
    qos: QoS,
    clients: usize,
    disconnect_every: u64,
) -> (sensor_sim::mqtt::RunSummary, Vec<Entry>) {
    let mut opts = PublishOptions::for_broker(&broker.url()).unwrap();
    opts.qos = qos;
    opts.clients = clients;
    opts.messages = Some(messages);
    opts.client_id_prefix = format!("sim-test-{seed}");
    opts.disconnect_every = disconnect_every;
    opts.disconnect_for = Duration::from_millis(300);
    let buf = SharedBuf::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = rt
        .block_on(publish(
            Generator::new(sc, seed).unwrap(),
            opts,
            Box::new(buf.clone()),
        ))
        .unwrap();
    let bytes = buf.0.lock().unwrap().clone();
    let (_, entries) = manifest::read(bytes.as_slice()).unwrap();
    (summary, entries)
}

/// Payload multiset the generator produced for the first `n` messages, keyed by manifest line.
fn expected_lines(sc: &Scenario, seed: u64, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for msg in Generator::new(sc, seed).unwrap().take(n) {
        *m.entry(msg.entry.to_line()).or_default() += 1;
    }
    m
}

#[test]
fn qos1_manifest_is_exactly_what_went_through() {
    let _lock = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let sub = MqttSubscriber::connect(&broker.url(), "sim-test-sub", "#", 1).unwrap();
    let sc = scenario("district-rush-hour.toml");
    let (summary, entries) = run(&broker, &sc, 3, 5000, QoS::AtLeastOnce, 3, 0);
    assert_eq!(
        (summary.published, summary.acked, summary.lost),
        (5000, 5000, 0)
    );
    assert_eq!(entries.len(), 5000);
    // Manifest entries are the generator's own, one for one.
    let mut want = expected_lines(&sc, 3, 5000);
    for e in &entries {
        let n = want
            .get_mut(&e.to_line())
            .expect("manifest entry the generator never made");
        *n -= 1;
    }
    assert!(want.values().all(|n| *n == 0));
    let got = sub.collect(5000, Duration::from_secs(30));
    assert_eq!(got.len(), 5000);
    let expected: Vec<(String, Vec<u8>)> = Generator::new(&sc, 3)
        .unwrap()
        .take(5000)
        .map(|m| (m.topic, m.payload))
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    let mut got_sorted: Vec<(String, Vec<u8>)> =
        got.into_iter().map(|m| (m.topic, m.payload)).collect();
    got_sorted.sort();
    assert!(
        expected_sorted == got_sorted,
        "subscriber saw other payloads than generated"
    );
}

#[test]
fn disconnecting_clients_lose_nothing_acknowledged() {
    let _lock = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let sub = MqttSubscriber::connect(&broker.url(), "sim-test-sub2", "#", 1).unwrap();
    let sc = scenario("faulty-field.toml");
    let (summary, entries) = run(&broker, &sc, 8, 4000, QoS::AtLeastOnce, 2, 700);
    assert!(summary.reconnects >= 4, "{summary:?}");
    assert_eq!(summary.published, 4000);
    assert_eq!(summary.acked + summary.lost, 4000, "{summary:?}");
    assert_eq!(summary.lost, 0, "{summary:?}");
    assert_eq!(entries.len() as u64, summary.acked);
    let faults: u64 = summary.faults.values().sum();
    assert!(faults > 100, "{summary:?}");
    assert!(
        summary.faults["malformed_json"] > 10 && summary.faults["nan_token"] > 10,
        "{summary:?}"
    );
    // Every acknowledged message reached the subscriber (re-sends may add copies).
    let mut got = sub.collect(4000, Duration::from_secs(30));
    while let Some(m) = sub.recv_timeout(Duration::from_millis(500)) {
        got.push(m);
    }
    let payloads: std::collections::HashSet<Vec<u8>> = got.into_iter().map(|m| m.payload).collect();
    let generated: HashMap<String, Vec<u8>> = Generator::new(&sc, 8)
        .unwrap()
        .take(4000)
        .map(|m| (m.entry.to_line(), m.payload))
        .collect();
    for e in &entries {
        let mut clean = e.clone();
        clean.resent = false;
        let payload = generated
            .get(&clean.to_line())
            .expect("entry was generated");
        assert!(
            payloads.contains(payload),
            "acknowledged but never delivered: {}",
            e.to_line()
        );
    }
}

#[test]
fn qos0_and_rate_limit() {
    let _lock = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let sc = scenario("load-1000.toml");
    let mut opts = PublishOptions::for_broker(&broker.url()).unwrap();
    opts.qos = QoS::AtMostOnce;
    opts.rate = 1000.0;
    opts.messages = Some(1500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let buf = SharedBuf::default();
    let summary = rt
        .block_on(publish(
            Generator::new(&sc, 1).unwrap(),
            opts,
            Box::new(buf.clone()),
        ))
        .unwrap();
    assert_eq!((summary.published, summary.acked), (1500, 1500));
    assert!(
        summary.seconds > 1.3 && summary.seconds < 3.0,
        "1500 msgs at 1000/s took {}",
        summary.seconds
    );
}

#[test]
fn broker_restart_mid_run_keeps_counts_consistent() {
    let _lock = HeavyTestLock::acquire();
    let mut broker = Mosquitto::start().unwrap();
    let sc = scenario("load-1000.toml");
    let mut opts = PublishOptions::for_broker(&broker.url()).unwrap();
    opts.clients = 2;
    opts.rate = 5000.0;
    opts.messages = Some(15_000);
    opts.client_id_prefix = "sim-test-restart".into();
    let buf = SharedBuf::default();
    let out = buf.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = std::thread::spawn(move || {
        rt.block_on(publish(
            Generator::new(&sc, 4).unwrap(),
            opts,
            Box::new(out),
        ))
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1200));
    broker.stop(); // SIGTERM: mosquitto saves its sessions
    std::thread::sleep(Duration::from_millis(800));
    broker.start_again().unwrap();
    let summary = run.join().unwrap();
    let bytes = buf.0.lock().unwrap().clone();
    let (_, entries) = manifest::read(bytes.as_slice()).unwrap();
    assert_eq!(summary.published, 15_000, "{summary:?}");
    assert!(summary.reconnects >= 2, "{summary:?}");
    assert_eq!(summary.acked + summary.lost, 15_000, "{summary:?}");
    assert_eq!(
        summary.lost, 0,
        "persistent sessions survive a graceful restart: {summary:?}"
    );
    assert_eq!(entries.len(), 15_000);
    // Each generated message is in the manifest exactly once (resent ones marked, none doubled).
    let mut want = expected_lines(&scenario("load-1000.toml"), 4, 15_000);
    for e in &entries {
        let mut clean = e.clone();
        clean.resent = false;
        let n = want.get_mut(&clean.to_line()).expect("generated");
        assert_eq!(*n, 1, "entry recorded twice: {}", e.to_line());
        *n -= 1;
    }
}

#[test]
fn realtime_publishes_on_the_simulated_clock() {
    let _lock = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let sc = scenario("district-rush-hour.toml");
    let generator = Generator::new(&sc, 6).unwrap();
    let start = generator.start_ms();
    let due: Vec<i64> = Generator::new(&sc, 6)
        .unwrap()
        .take(2000)
        .map(|m| m.due_ms - start)
        .collect();
    let mut opts = PublishOptions::for_broker(&broker.url()).unwrap();
    opts.realtime_from_ms = Some(start);
    opts.duration = Some(Duration::from_millis(2500));
    opts.client_id_prefix = "sim-test-rt".into();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = rt
        .block_on(publish(generator, opts, Box::new(SharedBuf::default())))
        .unwrap();
    let surely = due.iter().filter(|d| **d < 2300).count() as u64;
    let at_most = due.iter().filter(|d| **d <= 2500).count() as u64;
    assert!(surely >= 3, "{surely}");
    assert!(
        summary.published >= surely && summary.published <= at_most,
        "{summary:?} {surely}..{at_most}"
    );
    assert_eq!(summary.acked, summary.published);
}
