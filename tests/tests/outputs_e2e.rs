//! Two outputs over one buffer (`[[outputs.influxdb]]`): a real VictoriaMetrics (the IOC
//! store) and a real InfluxDB 1.x (a local archive that takes no camera events), the real
//! gateway binary, a real mosquitto.
//!
//! Why it exists: with several outputs, the one that is down must not hold back the other, the
//! buffer must keep what the down one has not had (and only for it), and each output's cursor
//! must survive a `kill -9`. The test:
//! 1. both outputs receive env readings; camera events (urgent) go to VictoriaMetrics only;
//! 2. InfluxDB is stopped for 60 s while 200 readings/s keep coming: VictoriaMetrics stays
//!    fresh throughout (checked every few seconds), `/readyz` names the archive output, its own
//!    backlog gauge grows while the IOC output's stays small, and the sinks' counters
//!    (`output` label) show the failures and retries as the archive's alone; half-way the
//!    gateway is killed with `kill -9` and started again;
//! 3. InfluxDB comes back: both stores have every reading exactly once (VictoriaMetrics counts
//!    each sample; InfluxDB count, sum, min and max of the sequence numbers), and InfluxDB has
//!    no camera event.

use std::time::{Duration, Instant};

use ioc_e2e::gateway_toml::{camera_input, env_input, gateway_head};
use ioc_e2e::{
    free_port, gateway_metrics, http_get, metric_in, wait_until, GatewayProcess, HeavyTestLock,
    Influx1, Mosquitto, MqttPublisher, VictoriaMetrics,
};
use tempfile::TempDir;

const GATEWAY_ID: &str = "outputs-gw";
const BASE_TS_MS: i64 = 1_700_000_000_000;
const RATE: u64 = 200;
const OUTAGE_S: u64 = 60;

/// Sequence numbers of env readings in VictoriaMetrics, as stored (a double would show).
fn vm_env(vm: &VictoriaMetrics) -> Vec<u64> {
    let _ = vm.force_flush();
    let mut all: Vec<u64> = vm
        .export("{__name__=\"oe_n\"}")
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.values.into_iter().map(|v| v as u64))
        .collect();
    all.sort_unstable();
    all
}

fn vm_points(vm: &VictoriaMetrics, selector: &str) -> usize {
    let _ = vm.force_flush();
    vm.count_points(selector).unwrap_or(0)
}

/// `count`, `sum`, `min`, `max` of `n` in InfluxDB's `oe` measurement (zeros when absent).
fn influx_env(influx: &Influx1) -> (u64, u64, u64, u64) {
    let rows = influx
        .query_rows("city", "SELECT count(n), sum(n), min(n), max(n) FROM oe")
        .unwrap_or_default();
    let Some(row) = rows.first() else {
        return (0, 0, 0, 0);
    };
    let get = |k: &str| row.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0) as u64;
    (get("count"), get("sum"), get("min"), get("max"))
}

fn readyz(http: u16) -> (u16, String) {
    http_get(&format!("http://127.0.0.1:{http}/readyz"))
}

#[test]
fn one_output_down_for_a_minute_never_holds_back_the_other_and_both_get_everything_once() {
    let _heavy = HeavyTestLock::acquire();
    let vm = VictoriaMetrics::start().unwrap();
    let mut influx = Influx1::start().unwrap();
    influx.create_database("city").unwrap();
    let broker = Mosquitto::start().unwrap();
    let dir = TempDir::new().unwrap();
    let http = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"{head}{env}{cam}
[[outputs.influxdb]]
name = "ioc"
url = "{vm}"
api = "v2"
org = "ioc"
bucket = "telemetry"
flush_interval_ms = 200
timeout_ms = 2000

[[outputs.influxdb]]
name = "archive"
url = "{influx}"
api = "v1"
database = "city"
exclude = ["oe_cam"]
flush_interval_ms = 200
batch_max_lines = 2000
timeout_ms = 2000

[http]
listen = "127.0.0.1:{http}"
store_unreachable_after_s = 10
"#,
            head = gateway_head(GATEWAY_ID, &dir.path().join("data")),
            env = env_input(&broker.url(), GATEWAY_ID, "oe"),
            cam = camera_input(&broker.url(), &format!("{GATEWAY_ID}-cam"), "oe_cam"),
            vm = vm.url(),
            influx = influx.url(),
        ),
    )
    .unwrap();
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, "city/+/env/+", 0, Duration::from_secs(20)),
        "{}",
        gateway.log_tail(30)
    );
    let mut publisher = MqttPublisher::connect(&broker.url(), "outputs-pub").unwrap();
    let start = Instant::now();
    let (mut k, mut cams) = (0u64, 0u64);
    // Publishes at RATE until `until` (from start), one camera event per 40 readings.
    let mut publish_until = |publisher: &mut MqttPublisher, until: Duration| {
        while start.elapsed() < until {
            let due = start.elapsed().as_millis() as u64 * RATE / 1000;
            while k < due {
                let payload = format!(r#"{{"n":{k},"ts":{}}}"#, BASE_TS_MS + k as i64);
                publisher
                    .publish(&format!("city/d1/env/s{}", k % 10), payload)
                    .unwrap();
                if k % 40 == 0 {
                    let payload = format!(r#"{{"event":{cams},"ts":{}}}"#, BASE_TS_MS + k as i64);
                    publisher.publish("city/d1/cam/c1", payload).unwrap();
                    cams += 1;
                }
                k += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (k, cams)
    };

    // 1. Both outputs take env readings.
    let (sent, _) = publish_until(&mut publisher, Duration::from_secs(3));
    assert!(
        wait_until(Duration::from_secs(30), || {
            vm_env(&vm).len() as u64 >= sent / 2 && influx_env(&influx).0 >= sent / 2
        }),
        "both outputs receive: vm {} influx {:?}\n{}",
        vm_env(&vm).len(),
        influx_env(&influx),
        gateway.log_tail(30)
    );

    // 2. The archive is down for a minute; the IOC store stays fresh.
    influx.stop();
    let outage_start = start.elapsed();
    let mut worst_lag = 0u64;
    let mut killed = false;
    let mut saw_not_ready = false;
    while start.elapsed() < outage_start + Duration::from_secs(OUTAGE_S) {
        let (sent, _) = publish_until(&mut publisher, start.elapsed() + Duration::from_secs(5));
        if !killed && start.elapsed() >= outage_start + Duration::from_secs(OUTAGE_S / 2) {
            // Both cursors must survive: the archive's far behind, the IOC's near the end.
            gateway.kill9();
            gateway.start_again().unwrap();
            killed = true;
            continue;
        }
        // Everything published more than 3 s ago is in VictoriaMetrics.
        let fresh_by = sent.saturating_sub(3 * RATE);
        let ok = wait_until(Duration::from_secs(5), || {
            vm_env(&vm).last().copied().unwrap_or(0) >= fresh_by
        });
        let newest = vm_env(&vm).last().copied().unwrap_or(0);
        worst_lag = worst_lag.max(sent.saturating_sub(newest));
        assert!(
            ok,
            "the IOC store fell behind while the archive is down: newest {newest}, sent {sent}\n{}",
            gateway.log_tail(30)
        );
        let (code, body) = readyz(http);
        if code == 503 && body.contains("output archive: store unreachable") {
            saw_not_ready = true;
        }
    }
    let metrics = gateway_metrics(http);
    let archive_backlog = metric_in(
        &metrics,
        "ioc_gateway_output_buffer_unsent_lines",
        &[("output", "archive")],
    );
    let ioc_backlog = metric_in(
        &metrics,
        "ioc_gateway_output_buffer_unsent_lines",
        &[("output", "ioc")],
    );
    assert!(
        archive_backlog >= (RATE * 10) as f64,
        "the archive's own backlog grows: {archive_backlog}"
    );
    assert!(
        ioc_backlog < (RATE * 5) as f64,
        "the IOC output's stays small: {ioc_backlog}"
    );
    // Each output's sink counts under its own name (since the restart: the archive has been
    // down throughout, the IOC store never).
    let sink_figure = |name: &str, output: &str| {
        metric_in(
            &metrics,
            &format!("ioc_gateway_output_{name}"),
            &[("output", output)],
        )
    };
    assert!(
        sink_figure("batches_failed_total", "archive") >= 1.0
            && sink_figure("retries_total", "archive") >= 1.0,
        "the archive's failures are its own"
    );
    assert_eq!(sink_figure("batches_failed_total", "ioc"), 0.0);
    assert_eq!(sink_figure("retries_total", "ioc"), 0.0);
    assert!(sink_figure("lines_sent_total", "ioc") >= RATE as f64);
    assert_eq!(sink_figure("lines_sent_total", "archive"), 0.0);
    assert!(killed);
    assert!(
        saw_not_ready,
        "/readyz said which output is unreachable: {:?}",
        readyz(http)
    );

    // 3. The archive comes back; both have everything, once.
    influx.start_again().unwrap();
    let (total, total_cams) =
        publish_until(&mut publisher, start.elapsed() + Duration::from_secs(3));
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    let expected_sum = total * (total - 1) / 2;
    let complete = wait_until(Duration::from_secs(120), || {
        vm_env(&vm).len() as u64 == total
            && influx_env(&influx) == (total, expected_sum, 0, total - 1)
    });
    let have = vm_env(&vm);
    let doubled = have.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(
        complete,
        "vm: {} of {total} ({doubled} doubled); influx (count, sum, min, max) {:?}, want {:?}\n{}",
        have.len(),
        influx_env(&influx),
        (total, expected_sum, 0, total - 1),
        gateway.log_tail(40)
    );
    assert_eq!(
        have,
        (0..total).collect::<Vec<_>>(),
        "every reading once in VictoriaMetrics"
    );
    assert_eq!(
        vm_points(&vm, "{__name__=\"oe_cam_event\"}") as u64,
        total_cams,
        "every camera event in the IOC store"
    );
    let archive_cams = influx
        .query_rows("city", "SELECT count(event) FROM oe_cam")
        .unwrap_or_default();
    assert!(
        archive_cams.is_empty(),
        "the archive excludes camera events: {archive_cams:?}"
    );
    let metrics = gateway_metrics(http);
    assert!(
        metric_in(
            &metrics,
            "ioc_gateway_output_lines_filtered_total",
            &[("output", "archive")]
        ) >= 1.0,
        "the archive counts what it leaves out"
    );
    let (code, _) = readyz(http);
    assert_eq!(code, 200, "ready again once the archive has caught up");
    eprintln!(
        "outputs: {total} readings + {total_cams} camera events at {RATE}/s; archive down {OUTAGE_S} s \
         (kill -9 half-way), its backlog {archive_backlog} lines vs the IOC's {ioc_backlog}; the IOC store \
         at most {worst_lag} readings behind; both complete, once"
    );
    gateway.sigterm();
    assert!(gateway
        .wait_exit(Duration::from_secs(40))
        .unwrap()
        .success());
}

/// `[[outputs.influxdb]]` entries of VictoriaMetrics instances, by name.
fn vm_outputs(outputs: &[(&str, &VictoriaMetrics)]) -> String {
    outputs
        .iter()
        .map(|(name, vm)| {
            format!(
                "[[outputs.influxdb]]\nname = \"{name}\"\nurl = \"{}\"\nbucket = \"telemetry\"\nflush_interval_ms = 200\n\n",
                vm.url()
            )
        })
        .collect()
}

/// A reload adds an output (it gets everything still on disk, then live data), and one that
/// removes an output deletes its cursor, so the buffer stops keeping data for it.
#[test]
fn a_reload_adds_and_removes_outputs_by_name() {
    let _heavy = HeavyTestLock::acquire();
    let ioc = VictoriaMetrics::start().unwrap();
    let archive = VictoriaMetrics::start().unwrap();
    let broker = Mosquitto::start().unwrap();
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    let id = format!("{GATEWAY_ID}-reload");
    let write = |outputs: &str| {
        std::fs::write(
            &config,
            format!(
                "{head}{env}\n{outputs}",
                head = gateway_head(&id, &data),
                env = env_input(&broker.url(), &id, "oe"),
            ),
        )
        .unwrap();
    };
    write(&vm_outputs(&[("ioc", &ioc)]));
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    assert!(broker.wait_for_subscription(
        &format!("{GATEWAY_ID}-reload"),
        "city/+/env/+",
        0,
        Duration::from_secs(20)
    ));
    let mut publisher = MqttPublisher::connect(&broker.url(), "outputs-reload-pub").unwrap();
    let mut k = 0u64;
    let mut publish = |publisher: &mut MqttPublisher, n: u64| {
        for _ in 0..n {
            let payload = format!(r#"{{"n":{k},"ts":{}}}"#, BASE_TS_MS + k as i64);
            publisher
                .publish(&format!("city/d1/env/s{}", k % 10), payload)
                .unwrap();
            k += 1;
        }
        assert!(publisher.wait_all_acked(Duration::from_secs(30)));
        k
    };
    let hup = |gateway: &GatewayProcess| {
        let pid = nix::unistd::Pid::from_raw(gateway.pid().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    };
    let reloads = |gateway: &GatewayProcess| gateway.log().matches("config reloaded").count();
    let first = publish(&mut publisher, 500);
    assert!(wait_until(Duration::from_secs(30), || vm_env(&ioc).len()
        as u64
        == first));

    // Add the archive: it starts at the oldest data still on disk and then follows.
    write(&vm_outputs(&[("ioc", &ioc), ("archive", &archive)]));
    hup(&gateway);
    assert!(
        wait_until(Duration::from_secs(30), || reloads(&gateway) == 1),
        "{}",
        gateway.log_tail(30)
    );
    let cursor = |class: &str, name: &str| {
        data.join("buffer")
            .join(class)
            .join(format!("ack.{name}.cursor"))
    };
    assert!(
        cursor("normal", "archive").exists(),
        "the added output has its cursor"
    );
    let second = publish(&mut publisher, 500);
    assert!(
        wait_until(Duration::from_secs(30), || vm_env(&ioc).len() as u64
            == second
            && vm_env(&archive).last() == Some(&(second - 1))),
        "ioc {} archive {:?}\n{}",
        vm_env(&ioc).len(),
        vm_env(&archive).last(),
        gateway.log_tail(30)
    );
    let archive_has = vm_env(&archive);
    assert!(
        archive_has.windows(2).all(|w| w[0] < w[1]),
        "the added output got nothing twice"
    );

    // Remove the IOC output: its cursor goes, the archive keeps receiving.
    write(&vm_outputs(&[("archive", &archive)]));
    hup(&gateway);
    assert!(
        wait_until(Duration::from_secs(30), || reloads(&gateway) == 2),
        "{}",
        gateway.log_tail(30)
    );
    assert!(
        wait_until(Duration::from_secs(10), || !cursor("normal", "ioc")
            .exists()
            && !cursor("urgent", "ioc").exists()),
        "the removed output's cursor is deleted"
    );
    let third = publish(&mut publisher, 500);
    assert!(wait_until(Duration::from_secs(30), || vm_env(&archive)
        .last()
        == Some(&(third - 1))));
    assert_eq!(
        vm_env(&ioc).len() as u64,
        second,
        "nothing more reaches the removed output"
    );
    gateway.sigterm();
    assert!(gateway
        .wait_exit(Duration::from_secs(40))
        .unwrap()
        .success());
    eprintln!(
        "outputs reload: archive added with {} readings from disk and live, ioc removed after {second}",
        archive_has.len()
    );
}
