//! Self-tests of the `ioc-e2e` harness: each server starts, answers, stops, and starts again on the same
//! port with its data; what is written is read back exactly. If these fail, the end-to-end tests of
//! the gateway cannot be trusted either way.

use ioc_e2e::{
    bin_path, free_port, wait_until, Influx1, Mosquitto, MqttPublisher, MqttSubscriber,
    VictoriaMetrics,
};
use std::collections::BTreeMap;

/// (labels, values, timestamps in ms) of one exported series.
type Exported = (BTreeMap<String, String>, Vec<f64>, Vec<i64>);
use std::net::TcpStream;
use std::time::Duration;

fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len());
    for port in ports.iter().take(5) {
        std::net::TcpListener::bind(("127.0.0.1", *port)).unwrap();
    }
}

#[test]
fn wait_until_reports_success_and_timeout() {
    let mut calls = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        calls += 1;
        calls == 3
    }));
    assert_eq!(calls, 3);
    let started = std::time::Instant::now();
    assert!(!wait_until(Duration::from_millis(200), || false));
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
#[should_panic(expected = "cargo build --workspace --bins")]
fn bin_path_explains_a_missing_binary() {
    bin_path("no-such-binary-ioc-e2e");
}

#[test]
fn mosquitto_publish_subscribe_stop_and_restart() {
    let mut broker = Mosquitto::start().unwrap();
    let port = broker.port();
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{port}"));
    assert!(port_open(port));

    let subscriber = MqttSubscriber::connect(&broker.url(), "harness-sub", "city/#", 1).unwrap();
    let mut publisher = MqttPublisher::connect(&broker.url(), "harness-pub").unwrap();
    for i in 0..3 {
        let index = publisher
            .publish(&format!("city/d{i}/env/s{i}"), format!("{{\"n\":{i}}}"))
            .unwrap();
        assert_eq!(index, i);
    }
    assert!(publisher.wait_all_acked(Duration::from_secs(10)));
    assert_eq!(publisher.acked_flags(), vec![true, true, true]);
    let received = subscriber.collect(3, Duration::from_secs(10));
    let got: Vec<(String, String)> = received
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                String::from_utf8(m.payload.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("city/d0/env/s0".to_string(), "{\"n\":0}".to_string()),
            ("city/d1/env/s1".to_string(), "{\"n\":1}".to_string()),
            ("city/d2/env/s2".to_string(), "{\"n\":2}".to_string()),
        ]
    );

    // Stopped: nothing listens, a message published now is not acknowledged...
    broker.stop();
    assert!(!broker.is_running());
    assert!(!port_open(port));
    let late = publisher.publish("city/d9/env/s9", "late").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!publisher.is_acked(late));

    // ...until the broker is back on the same port: then the publisher resends it and it is acked.
    broker.start_again().unwrap();
    assert_eq!(broker.port(), port);
    assert!(port_open(port));
    assert!(
        publisher.wait_all_acked(Duration::from_secs(20)),
        "acked {} of {}; errors {:?}",
        publisher.acked_count(),
        publisher.published(),
        publisher.connection_errors().last()
    );
    assert!(publisher.is_acked(late));
}

#[test]
fn mosquitto_keeps_a_persistent_session_across_a_restart() {
    let mut broker = Mosquitto::start().unwrap();
    // A persistent-session subscriber (like the gateway) that goes away: its QoS 1 messages are queued,
    // kept in the persistence file over a broker restart, and delivered when it reconnects.
    {
        let mut options =
            rumqttc::MqttOptions::new("harness-persistent", "127.0.0.1", broker.port());
        options.set_clean_session(false);
        let (client, mut connection) = rumqttc::Client::new(options, 10);
        client
            .subscribe("queued/#", rumqttc::QoS::AtLeastOnce)
            .unwrap();
        let subacked = connection.iter().any(|n| {
            matches!(
                n,
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_)))
            )
        });
        assert!(subacked);
    }
    let mut publisher = MqttPublisher::connect(&broker.url(), "harness-pub-2").unwrap();
    publisher.publish("queued/a", "kept").unwrap();
    assert!(publisher.wait_all_acked(Duration::from_secs(10)));
    drop(publisher);
    broker.restart().unwrap();

    let mut options = rumqttc::MqttOptions::new("harness-persistent", "127.0.0.1", broker.port());
    options.set_clean_session(false);
    let (_client, mut connection) = rumqttc::Client::new(options, 10);
    let mut payload = None;
    for notification in connection.iter().take(20) {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) = notification {
            payload = Some(p.payload.to_vec());
            break;
        }
    }
    assert_eq!(payload.as_deref(), Some(&b"kept"[..]));
}

#[test]
fn victoria_metrics_stores_gzipped_line_protocol_exactly_and_survives_restart() {
    let mut vm = VictoriaMetrics::start().unwrap();
    let port = vm.port();
    vm.write_line_protocol(
        "harness,district=d1,sensor_id=s1 pm2_5=12.3,pm10=40 1700000000123000000\n\
         harness,district=d1,sensor_id=s2 pm2_5=-0.5 1700000001456000000\n",
    )
    .unwrap();
    vm.force_flush().unwrap();

    let check = |vm: &VictoriaMetrics| {
        let series = vm.export("{__name__=~\"harness_.*\"}").unwrap();
        let got: Vec<Exported> = series
            .into_iter()
            .map(|s| (s.labels, s.values, s.timestamps_ms))
            .collect();
        let labels = |name: &str, sensor: &str| {
            BTreeMap::from([
                ("__name__".to_string(), name.to_string()),
                ("district".to_string(), "d1".to_string()),
                ("sensor_id".to_string(), sensor.to_string()),
            ])
        };
        assert_eq!(
            got,
            vec![
                (
                    labels("harness_pm10", "s1"),
                    vec![40.0],
                    vec![1700000000123]
                ),
                (
                    labels("harness_pm2_5", "s1"),
                    vec![12.3],
                    vec![1700000000123]
                ),
                (
                    labels("harness_pm2_5", "s2"),
                    vec![-0.5],
                    vec![1700000001456]
                ),
            ]
        );
        assert_eq!(vm.series_count().unwrap(), 3);
    };
    check(&vm);

    // A replay of the same point (same series, same millisecond) is stored once.
    vm.write_line_protocol("harness,district=d1,sensor_id=s2 pm2_5=-0.5 1700000001456000000\n")
        .unwrap();
    vm.force_flush().unwrap();
    check(&vm);

    vm.stop();
    assert!(!vm.is_running());
    assert!(!port_open(port));
    vm.start_again().unwrap();
    assert_eq!(vm.port(), port);
    check(&vm);
}

#[test]
fn influxdb1_stores_line_protocol_with_exact_nanoseconds_and_survives_restart() {
    let mut influx = Influx1::start().unwrap();
    let port = influx.port();
    influx.create_database("telemetry").unwrap();
    influx
        .write_line_protocol(
            "telemetry",
            "harness,district=d1,sensor_id=s1 pm2_5=12.3,pm10=40 1700000000123456789\n\
             harness,district=d2,sensor_id=s2 pm2_5=-0.5 1700000001000000001\n",
        )
        .unwrap();

    let check = |influx: &Influx1| {
        let answer = influx
            .query(
                "telemetry",
                "SELECT pm2_5, pm10, district, sensor_id FROM harness ORDER BY time",
            )
            .unwrap();
        let series = &answer["results"][0]["series"][0];
        assert_eq!(series["name"], "harness");
        assert_eq!(
            series["values"],
            serde_json::json!([
                [1700000000123456789_i64, 12.3, 40, "d1", "s1"],
                [1700000001000000001_i64, -0.5, null, "d2", "s2"],
            ])
        );
        let rows = influx
            .query_rows("telemetry", "SELECT count(pm2_5) FROM harness")
            .unwrap();
        assert_eq!(rows[0]["count"], 2);
    };
    check(&influx);

    influx.stop();
    assert!(!influx.is_running());
    assert!(!port_open(port));
    influx.start_again().unwrap();
    assert_eq!(influx.port(), port);
    check(&influx);

    // A statement error is an error.
    assert!(influx.query("telemetry", "SELEC nonsense").is_err());
}

#[test]
fn publisher_tracks_the_acks_of_twenty_thousand_messages() {
    let broker = Mosquitto::start().unwrap();
    let subscriber =
        MqttSubscriber::connect(&broker.url(), "harness-sub-bulk", "bulk/#", 1).unwrap();
    let mut publisher = MqttPublisher::connect(&broker.url(), "harness-pub-bulk").unwrap();
    let started = std::time::Instant::now();
    for i in 0..20_000 {
        publisher.publish("bulk/x", format!("{i}")).unwrap();
    }
    assert!(publisher.wait_all_acked(Duration::from_secs(60)));
    let elapsed = started.elapsed();
    assert_eq!(publisher.acked_count(), 20_000);
    assert!(publisher.acked_flags().iter().all(|a| *a));
    let received = subscriber.collect(20_000, Duration::from_secs(60));
    let mut numbers: Vec<u32> = received
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).parse().unwrap())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers, (0..20_000).collect::<Vec<u32>>());
    eprintln!("20,000 QoS 1 messages acked in {elapsed:?}");
}
