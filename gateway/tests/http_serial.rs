//! Serial port state through the HTTP API and `status`, with a real serial input on a
//! pseudo-terminal: the port up with its frame counts, unplugged (`/readyz` warns and names it
//! with the error, `/api/sensors` shows it down, `status` prints it), every input down (not
//! ready), and the port back (up again, no warning).
//!
//! A test binary of its own: the serial input keeps port state in a process-wide registry, which
//! the other HTTP tests (that assert exact input lists) must not see.

mod http_common;
mod pty_common;

use ioc_gateway::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use http_common::*;
use ioc_gateway::config::{SerialInputConfig, SerialProtocol};
use ioc_gateway::input::serial::run_serial_input;
use ioc_gateway::output::Flavor;
use ioc_gateway::pipeline::Ingest;
use ioc_gateway::status::InputKind;
use pty_common::{hex, pty, relink, PMS_1, PMS_2};
use serde_json::{json, Value};

async fn readyz(gw: &TestGateway) -> (u16, Value) {
    get_json(&gw.url("/readyz"), None).await
}

/// Polls `/api/sensors` until `inputs[name]` satisfies `pred` (up to `within`); returns it.
async fn wait_input(
    gw: &TestGateway,
    name: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (code, body) = get_json(&gw.url("/api/sensors"), None).await;
        assert_eq!(code, 200);
        let input = &body["inputs"][name];
        if pred(input) {
            return input.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inputs[{name}] did not reach the expected state within {within:?}: {:#}",
            body["inputs"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn messages(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_port_state_in_readyz_api_and_status() {
    let started = std::time::Instant::now();
    let gw = TestGateway::start(None, settings()).await;
    let inputs = &gw.observers.inputs;
    inputs.register("mqtt-0", InputKind::Mqtt, "mqtt://127.0.0.1:1883");
    inputs.set("mqtt-0", true, None);
    let ingest = Ingest::with_observers(
        gw.writer.clone(),
        "gw-test",
        Flavor::V2,
        gw.observers.live.clone(),
        gw.observers.inputs.clone(),
    );

    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyUSB-pm");
    let link_s = link.display().to_string();
    let mut first = pty();
    relink(&link, &first.path);
    let cfg = SerialInputConfig {
        name: Some("pm-north".into()),
        port: link.clone(),
        baud: 9600,
        protocol: SerialProtocol::Pms5003,
        sensor_id: Some("pm-north-1".into()),
        tags: BTreeMap::new(),
        poll_interval_ms: 5000,
        registers: vec![],
        ..SerialInputConfig::new("", SerialProtocol::Pms5003)
    };
    let stop_serial = Shutdown::new();
    let stop_rx = stop_serial.clone();
    let serial_task = tokio::spawn(run_serial_input(cfg, 0, ingest, stop_rx));

    // Up: two good frames and a corrupt one; the port shows up with its counts.
    wait_input(&gw, "pm-north", Duration::from_secs(5), |i| i["up"] == true).await;
    let mut corrupt = hex(PMS_2);
    corrupt[20] ^= 0x40;
    let mut bytes = hex(PMS_1);
    bytes.extend(&corrupt);
    bytes.extend(hex(PMS_2));
    first.master.write_all(&bytes).unwrap();
    let port = wait_input(&gw, "pm-north", Duration::from_secs(5), |i| {
        i["serial"]["frames_good"] == 2
    })
    .await;
    assert_eq!(port["kind"], "serial");
    assert_eq!(port["target"], link_s.as_str());
    assert_eq!(port["last_error"], Value::Null);
    assert_eq!(
        port["serial"],
        json!({"path": link_s, "frames_good": 2, "frames_bad": 1, "bad_by_reason": {"checksum": 1}})
    );
    let up_since = port["since_ms"].as_u64().unwrap();
    let body = wait_for_sensors(&gw, None, |b| b["sensors_total"] == 1).await;
    assert_eq!(body["sensors"][0]["key"], "pm-north-1/air_quality");
    assert_eq!(body["sensors"][0]["input"], "pm-north");
    assert_eq!(body["sensors"][0]["fields"]["pm2_5"]["value"], 7.0);
    let (code, ready) = readyz(&gw).await;
    assert_eq!(
        (code, ready),
        (200, json!({"ready": true, "reasons": [], "warnings": []}))
    );

    // Unplugged: the adapter and its device node disappear.
    let unplugged_ms = now_ns() as u64 / 1_000_000;
    drop(first);
    std::fs::remove_file(&link).unwrap();
    let port = wait_input(&gw, "pm-north", Duration::from_secs(5), |i| {
        i["up"] == false
            && i["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("No such file or directory"))
    })
    .await;
    let error = port["last_error"].as_str().unwrap().to_owned();
    assert_eq!(
        error,
        format!("cannot open {link_s}: No such file or directory")
    );
    let down_since = port["since_ms"].as_u64().unwrap();
    assert!(
        down_since >= up_since && down_since + 50 >= unplugged_ms,
        "down since {down_since}, unplugged at {unplugged_ms}"
    );
    assert_eq!(
        port["serial"]["frames_good"], 2,
        "counts survive the unplug"
    );

    // The MQTT input still works: ready, but degraded, naming the port, since when and why.
    let (code, ready) = readyz(&gw).await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["reasons"], json!([]));
    assert_eq!(ready["warnings"][0]["code"], "serial_port_down");
    let warning = messages(&ready["warnings"]).remove(0);
    let prefix = format!("serial port {link_s} (input pm-north) down for ");
    let rest = warning
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{warning}"));
    let (secs, why) = rest.split_once(" s: ").unwrap();
    assert!(secs.parse::<u64>().unwrap() <= 5, "{warning}");
    assert_eq!(why, error);
    let (_, metrics) = get(&gw.url("/metrics"), None).await;
    assert!(
        metrics.contains("ioc_gateway_input_up{input=\"pm-north\",kind=\"serial\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("ioc_gateway_serial_port_up{port=\"pm-north\"} 0"));

    // `status` says the same.
    let base = format!("http://{}", gw.addr);
    let text = ioc_gateway::cli::status::status(&base, None).await.unwrap();
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("gateway gw-test at {base}: READY, DEGRADED (up ")),
        "{text}"
    );
    assert_eq!(lines[1], format!("  warning: {warning}"), "{text}");
    let row = lines
        .iter()
        .position(|l| l.starts_with("  pm-north  serial  DOWN since "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(lines[row].ends_with(&format!("  {link_s}")), "{text}");
    assert_eq!(lines[row + 1], format!("            last error: {error}"));
    assert_eq!(
        lines[row + 2],
        "            frames: 2 good, 1 bad (checksum 1)"
    );

    // Every input down: not ready, the port named in the reason too.
    inputs.set("mqtt-0", false, Some("connection refused".into()));
    let (code, ready) = readyz(&gw).await;
    assert_eq!(code, 503, "{ready}");
    let reasons = messages(&ready["reasons"]);
    assert_eq!(reasons.len(), 1, "{ready}");
    assert!(
        reasons[0].starts_with(
            "no input connected: mqtt-0 down for 0 s (connection refused); pm-north down for "
        ) && reasons[0].ends_with(&format!(" s ({error})")),
        "{ready}"
    );
    assert_eq!(
        messages(&ready["warnings"])[0],
        "input mqtt-0 (mqtt://127.0.0.1:1883) down for 0 s: connection refused"
    );
    inputs.set("mqtt-0", true, None);

    // Plugged back in (another pty behind the same path): up, no warning, counts go on.
    let mut second = pty();
    relink(&link, &second.path);
    let port = wait_input(&gw, "pm-north", Duration::from_secs(10), |i| {
        i["up"] == true
    })
    .await;
    assert_eq!(port["last_error"], Value::Null);
    assert!(port["since_ms"].as_u64().unwrap() >= down_since);
    second.master.write_all(&hex(PMS_1)).unwrap();
    wait_input(&gw, "pm-north", Duration::from_secs(5), |i| {
        i["serial"]["frames_good"] == 3
    })
    .await;
    let (code, ready) = readyz(&gw).await;
    assert_eq!(
        (code, ready),
        (200, json!({"ready": true, "reasons": [], "warnings": []}))
    );
    let text = ioc_gateway::cli::status::status(&base, None).await.unwrap();
    println!("{text}");
    assert!(
        text.starts_with(&format!("gateway gw-test at {base}: READY (up ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("  pm-north  serial  UP   since ")
                && l.ends_with(&format!("  {link_s}"))),
        "{text}"
    );
    assert!(
        text.contains("\n            frames: 3 good, 1 bad (checksum 1)\n"),
        "{text}"
    );

    stop_serial.trigger();
    tokio::time::timeout(Duration::from_secs(2), serial_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    gw.stop().await;
    eprintln!("serial port HTTP test took {:?}", started.elapsed());
}
