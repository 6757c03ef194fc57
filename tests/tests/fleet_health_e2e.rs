//! The fleet's health in the store, and the shipped alert rules firing for real.
//!
//! Why it exists: an IOC with hundreds of gateways cannot open each one's `/metrics`. Each
//! gateway writes one `ioc_gateway` reading per `[gateway] health_interval_s` through its own
//! buffer and output, and `config/alerts/ioc-gateway.rules.yml` turns them into alerts. Here two
//! real gateway binaries write into one real VictoriaMetrics, and Debian's real `vmalert`
//! evaluates the shipped rules file, unchanged, against it:
//!
//! 1. both gateways' readings are in the store with every field and the `version` tag, found
//!    with one query; the shipped Grafana dashboard's queries all parse and run there;
//! 2. gateway A's uplink turns slow (a proxy holds each request 400 ms) while 2,000 messages/s
//!    arrive: its backlog grows and `IocGatewayBacklogGrowing` fires for A;
//! 3. A's buffer (1 MiB) fills and drops its oldest data: `IocGatewayDataDropped` fires for A;
//! 4. A is killed: `IocGatewaySilent` fires for A;
//! 5. gateway B, healthy throughout, never has an alert; vmalert posted every alert to its
//!    notifier.

use std::time::{Duration, Instant};

use ioc_e2e::{
    wait_until, Fault, FaultProxy, GatewayProcess, HeavyTestLock, Mosquitto, MqttPublisher,
    Notifier, VictoriaMetrics, VmAlert,
};
use tempfile::TempDir;

fn repo_file(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn config(id: &str, data: &std::path::Path, mqtt: &str, store: &str, buffer_mb: u32) -> String {
    format!(
        r#"[gateway]
id = "{id}"
data_dir = "{data}"
health_interval_s = 1

[[inputs.mqtt]]
url = "{mqtt}"
client_id = "{id}"
topics = ["{id}/+/env/+"]
qos = 1
measurement = "env"
topic_tags = "_/district/_/sensor_id"

[output.influxdb]
url = "{store}"
api = "v2"
org = "ioc"
bucket = "telemetry"
batch_max_lines = 20
flush_interval_ms = 100

[buffer]
max_disk_mb = {buffer_mb}

[http]
enabled = false
"#,
        data = data.display()
    )
}

/// The latest value of `ioc_gateway_<field>` for `gateway`, if any.
fn latest(vm: &VictoriaMetrics, field: &str, gateway: &str) -> Option<f64> {
    vm.query_vector(&format!(
        "last_over_time(ioc_gateway_{field}{{gateway=\"{gateway}\"}}[1h])"
    ))
    .ok()?
    .first()
    .map(|(_, v)| *v)
}

/// Every `expr` in the dashboard JSON, with its variables given values.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file(
        "config/grafana/dashboards/ioc-gateway-fleet.json",
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            out.push(
                expr.replace("$gateway", ".*")
                    .replace("$series", "env_pm2_5"),
            );
        }
    }
    out
}

#[test]
fn health_readings_reach_the_store_and_each_shipped_alert_fires() {
    let _heavy = HeavyTestLock::acquire();
    let vm = VictoriaMetrics::start().unwrap();
    let proxy = FaultProxy::start(vm.port()).unwrap();
    let broker = Mosquitto::start().unwrap();
    let notifier = Notifier::start().unwrap();
    let rules = repo_file("config/alerts/ioc-gateway.rules.yml");
    let vmalert =
        VmAlert::start(&rules, &vm.url(), &notifier.url(), Duration::from_secs(1)).unwrap();
    let dir = TempDir::new().unwrap();
    let write = |id: &str, store: &str, mb: u32| {
        let path = dir.path().join(format!("{id}.toml"));
        let data = dir.path().join(id);
        std::fs::write(&path, config(id, &data, &broker.url(), store, mb)).unwrap();
        path
    };
    let mut a = GatewayProcess::spawn(&write("fleet-a", &proxy.url(), 1)).unwrap();
    let mut b = GatewayProcess::spawn(&write("fleet-b", &vm.url(), 64)).unwrap();

    // 1. Both in the store, every field, one query for the fleet.
    let fields = [
        "uptime_s",
        "buffer_unsent_lines",
        "buffer_oldest_unsent_age_s",
        "buffer_disk_bytes",
        "dropped_lines_total",
        "rejected_total",
        "accepted_total",
        "inputs_up",
        "inputs_total",
        "clock_synced",
        "health_interval_s",
    ];
    let both = wait_until(Duration::from_secs(40), || {
        let _ = vm.force_flush();
        ["fleet-a", "fleet-b"].iter().all(|g| {
            fields.iter().all(|f| latest(&vm, f, g).is_some())
                && latest(&vm, "inputs_up", g) == Some(1.0)
                && latest(&vm, "output_last_success_age_s", g).is_some()
        })
    });
    assert!(
        both,
        "health readings incomplete\n{}\n{}",
        a.log_tail(20),
        b.log_tail(20)
    );
    let fleet = vm
        .query_vector("max by (gateway, version) (last_over_time(ioc_gateway_uptime_s[5m]))")
        .unwrap();
    let mut gateways: Vec<&str> = fleet.iter().map(|(l, _)| l["gateway"].as_str()).collect();
    gateways.sort_unstable();
    assert_eq!(gateways, ["fleet-a", "fleet-b"]);
    assert!(fleet.iter().all(|(l, _)| !l["version"].is_empty()));
    assert_eq!(latest(&vm, "health_interval_s", "fleet-a"), Some(1.0));
    for query in dashboard_queries() {
        if let Err(e) = vm.query_vector(&query) {
            panic!("the dashboard's query does not run: {query}: {e}");
        }
    }
    assert!(
        vmalert.alerts().iter().all(|a| a.state != "firing"),
        "alerts before any fault: {:?}",
        vmalert.alerts()
    );

    // 2. A's uplink slows down while readings pour in: the backlog grows.
    proxy.set_fault(Fault::Delay(Duration::from_millis(400)));
    let slowed = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let url = broker.url();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut publisher = MqttPublisher::connect(&url, "fleet-pub").unwrap();
            let start = Instant::now();
            let mut k = 0u64;
            // 2,000 messages/s for 90 s at most (the test stops looking earlier).
            while start.elapsed() < Duration::from_secs(90)
                && !stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                let due = start.elapsed().as_millis() as u64 * 2;
                while k < due {
                    let payload = format!(
                        r#"{{"pm2_5":{}.{},"pm10":{},"seq":{k},"note":"{:x}"}}"#,
                        k % 97,
                        k % 10,
                        k % 113,
                        k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    );
                    if publisher
                        .publish(&format!("fleet-a/d1/env/s{}", k % 50), payload)
                        .is_err()
                    {
                        return;
                    }
                    k += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || vmalert
            .firing("IocGatewayBacklogGrowing", "fleet-a")),
        "no backlog alert; oldest unsent {:?} s, unsent {:?}; alerts {:?}\n{}",
        latest(&vm, "buffer_oldest_unsent_age_s", "fleet-a"),
        latest(&vm, "buffer_unsent_lines", "fleet-a"),
        vmalert.alerts(),
        vmalert.log_tail(20)
    );
    let backlog_after = slowed.elapsed();

    // 3. A's 1 MiB buffer fills: the oldest data is dropped.
    assert!(
        wait_until(Duration::from_secs(90), || vmalert
            .firing("IocGatewayDataDropped", "fleet-a")),
        "no drop alert; dropped {:?}; alerts {:?}\n{}",
        latest(&vm, "dropped_lines_total", "fleet-a"),
        vmalert.alerts(),
        a.log_tail(20)
    );
    assert!(latest(&vm, "dropped_lines_total", "fleet-a").unwrap_or(0.0) > 0.0);
    let dropped_after = slowed.elapsed();

    // 4. A dies: silent.
    a.kill9();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || vmalert
            .firing("IocGatewaySilent", "fleet-a")),
        "no silence alert; alerts {:?}\n{}",
        vmalert.alerts(),
        vmalert.log_tail(20)
    );
    eprintln!(
        "alerts fired after the slowdown: backlog {backlog_after:?}, dropped {dropped_after:?}; silent {:?} after the kill",
        killed.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.join();

    // 5. B was fine all along; every alert was notified.
    assert!(
        vmalert
            .alerts()
            .iter()
            .all(|alert| alert.gateway.as_deref() != Some("fleet-b")),
        "{:?}",
        vmalert.alerts()
    );
    assert!(b.is_running());
    let posted = wait_until(Duration::from_secs(30), || {
        let bodies = notifier.bodies().join("\n");
        [
            "IocGatewayBacklogGrowing",
            "IocGatewayDataDropped",
            "IocGatewaySilent",
        ]
        .iter()
        .all(|name| bodies.contains(name))
    });
    assert!(posted, "vmalert did not notify every alert");
    b.sigterm();
    assert!(b.wait_exit(Duration::from_secs(40)).unwrap().success());
}
