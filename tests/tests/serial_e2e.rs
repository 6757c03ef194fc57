//! End-to-end tests of the serial inputs through the real `ioc-gateway` binary into a real
//! VictoriaMetrics, with every serial device played by `sensor-sim serial` on a pseudo-terminal
//! it creates: a PMS5003 stream with noise, torn and corrupt frames; an RS-485 bus of XY-MD02
//! Modbus RTU transmitters with a dead slave, a bad-CRC slave and an exception slave beside a
//! good one; and the real `ioc-node` firmware with a forced sequence gap and a reboot.
//!
//! The verdict is `sensor-sim verify` on the manifests the simulator wrote (serial readings are
//! stamped by the gateway when they arrive, so the manifest's `in_order` entries are checked by
//! value sequence per series), plus exact spot checks made here from the manifest and the store
//! directly, and the gateway's own error counters per slave and reason.

use ioc_e2e::{
    free_port, gateway_metrics, metric_in, metrics_page_problems, wait_until, GatewayProcess,
    SensorSim, StoreApi, VictoriaMetrics,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const GATEWAY_ID: &str = "e2e-serial-gw";

/// A running `sensor-sim serial`: the pty it created, killed on drop if still running.
struct SerialSim {
    child: Child,
    stdout: BufReader<ChildStdout>,
    pty: PathBuf,
    name: &'static str,
}

impl SerialSim {
    /// Starts `sensor-sim serial ARGS --link DIR/NAME.tty` and reads the `{"pty":..}` line it
    /// prints first. The gateway opens the link, a path no other test can create: a pty number
    /// (`/dev/pts/N`) is reused by the next pty opened on the machine, and a gateway still
    /// retrying a vanished pty's path would read another test's stream.
    fn spawn(name: &'static str, dir: &Path, args: &[&str]) -> SerialSim {
        let link = dir.join(format!("{name}.tty"));
        let mut child = Command::new(ioc_e2e::bin_path("sensor-sim"))
            .arg("serial")
            .args(args)
            .arg("--link")
            .arg(&link)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let first: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{name}: first line {line:?}: {e}"));
        assert!(first["pty"].is_string(), "{name}: {first}");
        let pty = link;
        SerialSim {
            child,
            stdout,
            pty,
            name,
        }
    }

    /// Waits for the simulator to finish; returns the JSON lines it printed after the first.
    fn finish(mut self, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{}: {status}", self.name);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = Vec::new();
        let mut line = String::new();
        while self.stdout.read_line(&mut line).unwrap() > 0 {
            out.push(serde_json::from_str(&line).unwrap());
            line.clear();
        }
        out
    }
}

impl Drop for SerialSim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn write_config(dir: &Path, vm: &VictoriaMetrics, http: Option<u16>, inputs: &str) -> PathBuf {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let http = match http {
        Some(port) => format!("listen = \"127.0.0.1:{port}\""),
        None => "enabled = false".into(),
    };
    let text = format!(
        r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data_dir}"

[output.influxdb]
url = "{url}"
api = "v2"
bucket = "telemetry"
flush_interval_ms = 200

[http]
{http}

{inputs}
"#,
        data_dir = data_dir.display(),
        url = vm.url(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// All values of every series matching `selector` (after a flush), in series then time order.
fn values(vm: &VictoriaMetrics, selector: &str) -> Vec<f64> {
    vm.force_flush().unwrap();
    vm.export(selector)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.values)
        .collect()
}

/// The manifest's entries (header skipped).
fn manifest_entries(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Values of `field` of the entries of `sensor_id` with `x`, in manifest order.
fn manifest_values(entries: &[Value], sensor_id: &str, x: &str, field: &str) -> Vec<f64> {
    entries
        .iter()
        .filter(|e| e["t"]["sensor_id"] == sensor_id && e["x"] == x)
        .map(|e| e["f"][field].as_f64().unwrap())
        .collect()
}

/// Sum of the samples of counter `name` with label `slave` (and `reason`, if given) in the
/// gateway's `/metrics`.
fn modbus_metric(http_port: u16, name: &str, slave: u8, reason: Option<&str>) -> u64 {
    let text = ureq::get(&format!("http://127.0.0.1:{http_port}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let slave = format!("slave=\"{slave}\"");
    let reason = reason.map(|r| format!("reason=\"{r}\""));
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&slave))
        .filter(|l| reason.as_ref().is_none_or(|r| l.contains(r)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn pms5003_and_modbus_bus_from_sensor_sim_pass_verify() {
    let started = Instant::now();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pms_manifest = dir.path().join("pms.jsonl");
    let bus_manifest = dir.path().join("bus.jsonl");
    let http_port = free_port();
    let pms = given_a_pms5003_stream_with_noise_corrupt_and_torn_frames(dir.path(), &pms_manifest);
    let bus =
        given_a_modbus_bus_with_a_dead_a_bad_crc_and_an_exception_slave(dir.path(), &bus_manifest);
    let mut gateway = given_a_gateway_reading_both(dir.path(), &vm, http_port, &pms, &bus);
    when_both_simulators_finish_then_they_sent_every_fault(pms, bus);
    for (name, manifest) in [("pms5003", &pms_manifest), ("xy-md02", &bus_manifest)] {
        then_verify_passes(name, manifest, &vm, &gateway);
    }
    then_every_good_pms5003_frame_is_stored(&vm, &pms_manifest);
    then_slave_1_is_stored_and_the_faulty_slaves_are_not(&vm, &bus_manifest);
    then_the_gateway_counts_each_fault_per_slave(http_port);
    then_verify_fails_on_a_tampered_manifest(dir.path(), &bus_manifest, &vm);
    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(10)).unwrap();
    println!("serial e2e (pms5003 + modbus) took {:?}", started.elapsed());
}

/// Given: a PMS5003 at 10 frames/s, 150 frames, with noise, corrupt and torn frames. With
/// --manifest it starts streaming once the gateway has opened the pty. Frames that pile up in one
/// read while the gateway commits get distinct times (input::serial::SeriesSpacer); before that,
/// they shared one and the store kept one point of them (found by this test at 10 frames/s).
fn given_a_pms5003_stream_with_noise_corrupt_and_torn_frames(
    dir: &Path,
    manifest: &Path,
) -> SerialSim {
    SerialSim::spawn(
        "pms5003",
        dir,
        &[
            "--device",
            "pms5003",
            "--seed",
            "11",
            "--rate-hz",
            "10",
            "--frames",
            "150",
            "--faults",
            "noise=0.15,checksum=0.1,truncate=0.1",
            "--sensor-id",
            "pm-1",
            "--tag",
            "district=d1",
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    )
}

/// Given: four XY-MD02 on one bus: 1 good, 2 dead, 3 bad CRC, 4 exception; 64 requests = 16 polls.
fn given_a_modbus_bus_with_a_dead_a_bad_crc_and_an_exception_slave(
    dir: &Path,
    manifest: &Path,
) -> SerialSim {
    SerialSim::spawn(
        "xy-md02",
        dir,
        &[
            "--device",
            "xy-md02",
            "--seed",
            "5",
            "--slaves",
            "1,2:dead,3:bad_crc,4:exception",
            "--frames",
            "64",
            "--tag",
            "district=d1",
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    )
}

/// Given: a gateway with a PMS5003 input on `pms`'s pty and a Modbus RTU input polling
/// temperature and humidity of slaves 1..=4 every 400 ms on `bus`'s pty.
fn given_a_gateway_reading_both(
    dir: &Path,
    vm: &VictoriaMetrics,
    http_port: u16,
    pms: &SerialSim,
    bus: &SerialSim,
) -> GatewayProcess {
    let mut registers = String::new();
    for slave in 1..=4 {
        registers.push_str(&format!(
            r#"
[[inputs.serial.registers]]
slave = {slave}
function = 4
address = 1
type = "i16"
scale = 0.1
field = "temperature"
measurement = "environment"
sensor_id = "th-{slave}"

[[inputs.serial.registers]]
slave = {slave}
function = 4
address = 2
type = "u16"
scale = 0.1
field = "humidity"
measurement = "environment"
sensor_id = "th-{slave}"
"#
        ));
    }
    let inputs = format!(
        r#"[[inputs.serial]]
name = "pms"
port = "{pms_port}"
baud = 9600
protocol = "pms5003"
sensor_id = "pm-1"
tags = {{ district = "d1" }}

[[inputs.serial]]
name = "rs485-th"
port = "{bus_port}"
baud = 9600
protocol = "modbus_rtu"
poll_interval_ms = 400
tags = {{ district = "d1" }}
{registers}"#,
        pms_port = pms.pty.display(),
        bus_port = bus.pty.display(),
    );
    let config = write_config(dir, vm, Some(http_port), &inputs);
    GatewayProcess::spawn(&config).unwrap()
}

/// When: both simulators finish (within 40 s each); then the PMS5003 stream had noise, checksum
/// and torn-frame faults and dropped no byte, and the bus carried all 64 requests for our slaves.
fn when_both_simulators_finish_then_they_sent_every_fault(pms: SerialSim, bus: SerialSim) {
    let pms_summary = pms.finish(Duration::from_secs(40));
    let bus_summary = bus.finish(Duration::from_secs(40));
    println!("sensor-sim pms5003: {pms_summary:?}");
    println!("sensor-sim xy-md02: {bus_summary:?}");
    let pms_faults = &pms_summary[0]["faults"];
    for f in ["noise", "checksum", "truncate"] {
        assert!(
            pms_faults[f].as_u64().unwrap_or(0) > 0,
            "no {f} fault in {pms_faults}"
        );
    }
    assert_eq!(pms_summary[0]["dropped_bytes"], 0);
    assert_eq!(bus_summary[0]["for_our_slaves"], 64);
}

/// Then: `sensor-sim verify` passes on `manifest`: nothing missing, mismatched, duplicated or
/// leaked, every expected reading found, and faulty frames were sent (and rejected). On a failure
/// it prints what the store and the manifest hold, to tell a gateway problem from a verify one.
fn then_verify_passes(name: &str, manifest: &Path, vm: &VictoriaMetrics, gateway: &GatewayProcess) {
    let verdict = SensorSim::verify_until_passed(
        manifest,
        &vm.url(),
        StoreApi::V2,
        &["--gateway-id", GATEWAY_ID],
        Duration::from_secs(20),
        Duration::from_secs(8),
    )
    .unwrap();
    println!("verify {name}:\n{}", verdict.report);
    if !verdict.passed() {
        for series in vm.export(r#"{__name__="air_quality_pm2_5"}"#).unwrap() {
            println!(
                "store pm2_5: {:?}",
                series
                    .timestamps_ms
                    .iter()
                    .zip(&series.values)
                    .collect::<Vec<_>>()
            );
        }
        for e in manifest_entries(manifest) {
            println!(
                "manifest: {} {} pm2_5={} n0_3={}",
                e["ts"], e["x"], e["f"]["pm2_5"], e["f"]["n0_3"]
            );
        }
    }
    assert!(
        verdict.passed(),
        "{name}: {}\n{}",
        verdict.report,
        gateway.log_tail(40)
    );
    let c = verdict.counts();
    assert_eq!(
        (c.missing, c.mismatched, c.duplicates, c.leaked),
        (0, 0, 0, 0)
    );
    assert!(c.expected > 0 && c.found == c.expected, "{name}: {c:?}");
    assert!(
        c.rejected_sent > 0,
        "{name}: no faulty frames were sent: {c:?}"
    );
}

/// Selector of series `<measurement>_<field>` of `sensor` in district d1 from this gateway.
fn series_selector(measurement: &str, field: &str, sensor: &str) -> String {
    format!(
        r#"{{__name__="{measurement}_{field}",sensor_id="{sensor}",district="d1",gateway="{GATEWAY_ID}"}}"#
    )
}

/// `values` sorted, to compare as multisets: frames the gateway read in one chunk share a
/// millisecond, and the store returns such points in any order (`verify` checks the order).
fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Then (spot checks straight from the manifest and the store): all 150 frames are in the
/// manifest, good or faulty, and the store holds exactly the good ones' values in every field, in
/// one series labelled `model="pms5003"`.
fn then_every_good_pms5003_frame_is_stored(vm: &VictoriaMetrics, manifest: &Path) {
    let pms_entries = manifest_entries(manifest);
    let good = pms_entries.iter().filter(|e| e["x"] == "in_order").count();
    let bad = pms_entries
        .iter()
        .filter(|e| e["x"] == "rejected_in_order")
        .count();
    assert_eq!(good + bad, 150);
    for field in ["pm2_5", "pm10", "pm1_0_cf1", "n0_3", "n10"] {
        let want = manifest_values(&pms_entries, "pm-1", "in_order", field);
        // `verify` saw every point; a fresh export can still miss the newest few for a moment.
        let mut got = Vec::new();
        wait_until(Duration::from_secs(10), || {
            got = values(vm, &series_selector("air_quality", field, "pm-1"));
            got.len() >= want.len()
        });
        assert_eq!(sorted(got), sorted(want), "air_quality {field}");
    }
    let series = vm
        .export(&series_selector("air_quality", "pm2_5", "pm-1"))
        .unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].label("model"), Some("pms5003"));
    println!("pms5003: {good} frames stored in order, {bad} faulty frames rejected");
}

/// Then: slave 1's answers (at least 10) are stored exactly; the dead, bad-CRC and exception
/// slaves have no stored point, and each got its 16 requests.
fn then_slave_1_is_stored_and_the_faulty_slaves_are_not(vm: &VictoriaMetrics, manifest: &Path) {
    let bus_entries = manifest_entries(manifest);
    for field in ["temperature", "humidity"] {
        let want = manifest_values(&bus_entries, "th-1", "in_order", field);
        let got = values(vm, &series_selector("environment", field, "th-1"));
        assert!(want.len() >= 10, "{field}: only {} answers", want.len());
        assert_eq!(
            sorted(got.clone()),
            sorted(want),
            "environment {field} of slave 1"
        );
        println!("xy-md02 slave 1 {field}: {got:?}");
    }
    for slave in 2..=4 {
        let n = values(
            vm,
            &format!(r#"{{__name__=~"environment_.*",sensor_id="th-{slave}"}}"#),
        );
        assert!(n.is_empty(), "slave {slave} has stored points: {n:?}");
        let rejected = bus_entries
            .iter()
            .filter(|e| e["t"]["sensor_id"] == format!("th-{slave}"))
            .count();
        assert_eq!(rejected, 16, "slave {slave} requests");
    }
}

/// Then: the gateway told the faults apart (timeouts of slave 2, bad CRCs of 3, exceptions of 4,
/// at least 16 each, and no other reason for any slave), and every request to slave 1 that did not
/// fail gave one of the readings stored (slave 1 times out only once the simulator has stopped).
fn then_the_gateway_counts_each_fault_per_slave(http_port: u16) {
    // The page of a real run (serial ports, Modbus, store): every family prefixed and documented.
    let page = gateway_metrics(http_port);
    let problems = metrics_page_problems(&page);
    assert!(
        problems.is_empty(),
        "/metrics: {}\n{page}",
        problems.join("\n")
    );
    let errors = |slave, reason| {
        modbus_metric(
            http_port,
            "ioc_gateway_modbus_errors_total",
            slave,
            Some(reason),
        )
    };
    let (timeouts, bad_crc, exceptions) = (
        errors(2, "timeout"),
        errors(3, "bad_crc"),
        errors(4, "exception"),
    );
    let slave1_ok = modbus_metric(http_port, "ioc_gateway_modbus_requests_total", 1, None)
        - modbus_metric(http_port, "ioc_gateway_modbus_errors_total", 1, None);
    println!(
        "gateway: slave 2 timeouts {timeouts}, slave 3 bad CRC {bad_crc}, slave 4 exceptions {exceptions}, slave 1 good answers {slave1_ok}"
    );
    assert!(timeouts >= 16 && bad_crc >= 16 && exceptions >= 16);
    assert_eq!(slave1_ok, 16);
    for (slave, reason) in [
        (1, "bad_crc"),
        (1, "exception"),
        (2, "bad_crc"),
        (2, "exception"),
        (3, "exception"),
        (4, "bad_crc"),
    ] {
        assert_eq!(errors(slave, reason), 0, "slave {slave} {reason}");
    }
}

/// Then: the verdict can fail: `verify` exits 1 on a manifest that claims one value the store
/// does not hold, with that value counted as mismatched or missing.
fn then_verify_fails_on_a_tampered_manifest(dir: &Path, manifest: &Path, vm: &VictoriaMetrics) {
    let tampered = dir.join("tampered.jsonl");
    let mut changed = false;
    let lines: Vec<String> = std::fs::read_to_string(manifest)
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            if !changed && v["x"] == "in_order" {
                v["f"]["temperature"] = Value::from(-99.9);
                changed = true;
            }
            v.to_string()
        })
        .collect();
    assert!(changed);
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let verdict = SensorSim::verify(&tampered, &vm.url(), StoreApi::V2, &[]).unwrap();
    assert_eq!(verdict.code, Some(1), "{}", verdict.report);
    let c = verdict.counts();
    assert_eq!(c.found + c.missing, c.expected, "{}", verdict.report);
    assert!(c.mismatched + c.missing >= 1, "{}", verdict.report);
}

#[test]
fn firmware_node_over_pty_with_gap_and_reboot() {
    let started = Instant::now();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The real firmware, 1 s samples and 2 s status, 75 s of simulated time at 5x real time;
    // 3 readings lost at 25 s, a reboot at 50 s. It starts once the gateway has the pty open.
    let node = SerialSim::spawn(
        "node",
        dir.path(),
        &[
            "--device",
            "node",
            "--node-id",
            "7",
            "--seed",
            "42",
            "--sample-interval-ms",
            "1000",
            "--status-interval-ms",
            "2000",
            "--speed",
            "5",
            "--frames",
            "75",
            "--gap-at",
            "25:3",
            "--reboot-at",
            "50",
            "--wait-reader",
        ],
    );
    let inputs = format!(
        r#"[[inputs.serial]]
name = "node-bus"
port = "{port}"
baud = 115200
protocol = "node"
tags = {{ district = "d2" }}
"#,
        port = node.pty.display(),
    );
    let http_port = free_port();
    let config = write_config(dir.path(), &vm, Some(http_port), &inputs);
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    let lines = node.finish(Duration::from_secs(40));
    let summary = lines.last().unwrap();
    println!("sensor-sim node: {lines:?}");
    let boot_ids: BTreeSet<u64> = summary["boot_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(boot_ids.len(), 2, "{summary}");
    assert!(
        summary["bytes_in"].as_u64().unwrap() > 0,
        "the gateway never answered the node"
    );
    assert!(lines.iter().any(|l| l["event"] == "gap" && l["lost"] == 3));

    let temp_sel = r#"{__name__="environment_temperature_c",node_id="7"}"#;
    let status_boot_sel = r#"{__name__="node_status_boot_id",node_id="7"}"#;
    let status_resets_sel = r#"{__name__="node_status_resets",node_id="7"}"#;
    let ok = wait_until(Duration::from_secs(10), || {
        let boots: BTreeSet<u64> = values(&vm, status_boot_sel)
            .into_iter()
            .map(|v| v as u64)
            .collect();
        boots.len() >= 2 && values(&vm, temp_sel).len() >= 40
    });
    let temps = values(&vm, temp_sel);
    let boots: BTreeSet<u64> = values(&vm, status_boot_sel)
        .into_iter()
        .map(|v| v as u64)
        .collect();
    let resets = values(&vm, status_resets_sel);
    println!(
        "vm: {} temperature points, boot ids {boots:?}, resets {resets:?}",
        temps.len()
    );
    assert!(ok, "node readings missing: {}", gateway.log_tail(40));
    assert_eq!(boots, boot_ids, "node_status_boot_id values");
    assert!(
        resets.contains(&0.0) && resets.contains(&1.0),
        "resets {resets:?}"
    );
    let series = vm.export(temp_sel).unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].label("district"), Some("d2"));
    assert_eq!(series[0].label("gateway"), Some(GATEWAY_ID));
    // 75 s of simulated time at 1 s samples, minus the 3 forced-lost readings: at most 72 + boot.
    assert!(
        temps.len() <= 76,
        "duplicates reached the store: {}",
        temps.len()
    );
    for name in ["traffic_count", "node_status_uptime_s"] {
        let n = values(&vm, &format!(r#"{{__name__="{name}",node_id="7"}}"#)).len();
        println!("vm: {name}: {n} points");
        assert!(n > 0, "{name} missing");
    }
    println!("gateway log tail:\n{}", gateway.log_tail(15));

    // The gateway's node counters saw the forced gap and the reboot, on /metrics under the
    // gateway's prefix (not node_exporter's `node_` namespace) and in the log.
    let page = gateway_metrics(http_port);
    let problems = metrics_page_problems(&page);
    assert!(
        problems.is_empty(),
        "/metrics: {}\n{page}",
        problems.join("\n")
    );
    let node_port = [("port", "node-bus")];
    assert_eq!(
        metric_in(&page, "ioc_gateway_node_frames_lost_total", &node_port),
        3.0,
        "{page}"
    );
    assert_eq!(
        metric_in(&page, "ioc_gateway_node_reboots_total", &node_port),
        1.0,
        "{page}"
    );
    let log = gateway.log();
    let lost: u64 = log
        .lines()
        .filter(|l| l.contains("node frames lost"))
        .filter_map(|l| l.split("lost=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(lost, 3, "frames lost reported by the gateway:\n{log}");
    assert_eq!(
        log.matches("a sensor node rebooted").count(),
        1,
        "reboots reported by the gateway:\n{log}"
    );

    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(10)).unwrap();
    println!("serial e2e (node) took {:?}", started.elapsed());
}
