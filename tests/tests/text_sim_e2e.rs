//! End-to-end test of the text serial instruments as `sensor-sim serial` plays them, through the
//! real `ioc-gateway` binary into a real VictoriaMetrics, with the verdict from
//! `sensor-sim verify` on the simulator's manifests:
//!
//! - a GNSS receiver on a bus at 10 fixes per second (`--protocol nmea0183`, 200 fixes of RMC,
//!   GGA, VTG, GLL and GSA, CR/LF/CRLF mixed), with bad checksums, torn sentences, line noise,
//!   sentences split across writes and a 2-second stretch without a fix: every intact fix is in
//!   the store once at its own UTC time to the millisecond with the fields of its intact
//!   sentences, and nothing else is in the series (the manifest is `exclusive`);
//! - a WXT530 weather station in polled mode (`--protocol vaisala`; the gateway sends `0R0`
//!   every 300 ms), with invalid (`#`) wind values, noise and torn answers: every answer is in
//!   the store once, in order, stamped on arrival, without its invalid values;
//! - two `protocol = "lines"` instruments read by the example inputs of
//!   `config/text-instruments.toml` as they stand (`--protocol lines`): a canal level logger
//!   (`$LVL,…*hh`, its own time in ms, 10 lines/s) with bad checksums, torn lines, noise,
//!   `-9999` sentinels and split writes, and a sound level meter (CSV with a header and its own
//!   local time) with torn lines, noise and overloads, CR/LF/CRLF mixed: every intact line is in
//!   the store once at its own time, without its sentinels, nothing else in the series.
//!
//! The gateway's `ioc_gateway_serial_frames_total` / `ioc_gateway_serial_frames_bad_total` must count exactly what the
//! simulators say they injected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ioc_e2e::{
    free_port, gateway_metrics, metric_in, GatewayProcess, SensorSim, SerialSim, StoreApi,
    VictoriaMetrics,
};
use serde_json::Value;

const GATEWAY_ID: &str = "e2e-textsim-gw";
const FIXES: u64 = 200;
const ANSWERS: u64 = 30;

fn write_config(
    dir: &Path,
    vm: &VictoriaMetrics,
    http_port: u16,
    gnss: &Path,
    wx: &Path,
) -> PathBuf {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let text = format!(
        r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[output.influxdb]
url = "{url}"
api = "v2"
bucket = "telemetry"
flush_interval_ms = 200

[http]
listen = "127.0.0.1:{http_port}"

[[inputs.serial]]
name = "gnss-bus-17"
port = "{gnss}"
baud = 9600
protocol = "nmea0183"
sensor_id = "bus-17"

[[inputs.serial]]
name = "wx-pole-3"
port = "{wx}"
baud = 19200
protocol = "vaisala"
sensor_id = "wx-3"
poll = "0R0"
poll_interval_ms = 300
"#,
        data = data_dir.display(),
        url = vm.url(),
        gnss = gnss.display(),
        wx = wx.display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The summary line a simulator printed last.
fn summary(lines: &[Value]) -> &Value {
    lines.last().expect("a summary line")
}

fn expect(summary: &Value, key: &str) -> f64 {
    summary["expect"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("no expect.{key} in {summary}"))
}

/// The manifest's entries by `x`.
fn entries_by_kind(path: &Path) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines().skip(1) {
        let v: Value = serde_json::from_str(line).unwrap();
        *out.entry(v["x"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    out
}

#[test]
fn a_simulated_bus_gnss_and_a_polled_weather_station_reach_the_store_exactly() {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let gnss_manifest = dir.path().join("gnss.jsonl");
    let wx_manifest = dir.path().join("wx.jsonl");

    // Given: a bus receiver at 10 Hz with every kind of line fault and no fix for fixes 60..80.
    let gnss = SerialSim::spawn(
        "gnss",
        dir.path(),
        &[
            "--protocol",
            "nmea0183",
            "--seed",
            "15",
            "--frames",
            &FIXES.to_string(),
            "--rate-hz",
            "10",
            "--sentences",
            "rmc,gga,vtg,gll,gsa",
            "--faults",
            "checksum=0.04,truncate=0.03,noise=0.03,split=0.2",
            "--line-ending",
            "mix",
            "--no-fix",
            "60:20",
            "--sensor-id",
            "bus-17",
            "--manifest",
            gnss_manifest.to_str().unwrap(),
        ],
    )
    .unwrap();
    // Given: a WXT530 answering the gateway's polls, sometimes with the wind invalid.
    let wx = SerialSim::spawn(
        "wx",
        dir.path(),
        &[
            "--protocol",
            "vaisala",
            "--station",
            "wxt530",
            "--seed",
            "16",
            "--frames",
            &ANSWERS.to_string(),
            "--faults",
            "invalid=0.2,noise=0.15,truncate=0.2",
            "--sensor-id",
            "wx-3",
            "--manifest",
            wx_manifest.to_str().unwrap(),
        ],
    )
    .unwrap();
    let config = write_config(dir.path(), &vm, http_port, &gnss.pty, &wx.pty);
    let mut gateway = GatewayProcess::spawn(&config).unwrap();

    // When: both have played their stream to the end.
    let gnss_out = gnss.finish(Duration::from_secs(180)).unwrap();
    let wx_out = wx.finish(Duration::from_secs(180)).unwrap();
    let gnss_summary = summary(&gnss_out);
    let wx_summary = summary(&wx_out);
    assert_eq!(gnss_summary["frames"], FIXES, "{gnss_summary}");
    assert_eq!(gnss_summary["dropped_bytes"], 0, "{gnss_summary}");
    assert_eq!(wx_summary["frames"], ANSWERS, "{wx_summary}");
    assert_eq!(wx_summary["dropped_bytes"], 0, "{wx_summary}");
    for fault in ["checksum", "truncate", "noise", "split"] {
        assert!(
            gnss_summary["faults"][fault].as_u64().unwrap_or(0) > 0,
            "seed 15 should inject {fault}: {gnss_summary}"
        );
    }
    for fault in ["invalid", "noise", "truncate"] {
        assert!(
            wx_summary["faults"][fault].as_u64().unwrap_or(0) > 0,
            "seed 16 should inject {fault}: {wx_summary}"
        );
    }

    // Then: the store holds exactly what the manifests say, the rejected sentences and the
    // no-fix stretch nowhere.
    let gnss_kinds = entries_by_kind(&gnss_manifest);
    assert!(gnss_kinds["stored"] >= 150, "{gnss_kinds:?}");
    assert!(gnss_kinds["rejected"] >= 20 + 10, "{gnss_kinds:?}");
    for (name, manifest) in [("gnss", &gnss_manifest), ("weather", &wx_manifest)] {
        let verdict = SensorSim::verify_until_passed(
            manifest,
            &vm.url(),
            StoreApi::V2,
            &["--gateway-id", GATEWAY_ID],
            Duration::from_secs(60),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(
            verdict.passed(),
            "{name}:\n{verdict}\n{}",
            gateway.log_tail(40)
        );
        let c = verdict.counts();
        assert_eq!(
            (c.missing, c.mismatched, c.duplicates, c.leaked),
            (0, 0, 0, 0)
        );
        assert!(c.rejected_sent > 0, "{name}: {verdict}");
        if name == "gnss" {
            assert_eq!(c.expected, gnss_kinds["stored"], "{verdict}");
        } else {
            assert_eq!(
                c.expected,
                entries_by_kind(&wx_manifest)["in_order"],
                "{verdict}"
            );
        }
    }

    // Then: the gateway counted every sentence and message the way the simulators say.
    let metrics = gateway_metrics(http_port);
    let frames = |port: &str, result: &str| {
        metric_in(
            &metrics,
            "ioc_gateway_serial_frames_total",
            &[("port", port), ("result", result)],
        )
    };
    let bad = |port: &str, reason: &str| {
        metric_in(
            &metrics,
            "ioc_gateway_serial_frames_bad_total",
            &[("port", port), ("reason", reason)],
        )
    };
    let g = "gnss-bus-17";
    assert_eq!(frames(g, "ok"), expect(gnss_summary, "ok"), "{metrics}");
    assert_eq!(frames(g, "no_fix"), expect(gnss_summary, "no_fix"));
    assert_eq!(frames(g, "skipped"), expect(gnss_summary, "skipped"));
    // VTGs after a fix whose RMC and GGA were both faulted: not placed on the previous fix.
    assert_eq!(frames(g, "no_time"), expect(gnss_summary, "no_time"));
    assert_eq!(bad(g, "checksum"), expect(gnss_summary, "checksum"));
    assert_eq!(bad(g, "truncated"), expect(gnss_summary, "truncated"));
    assert_eq!(bad(g, "noise"), expect(gnss_summary, "noise"));
    assert!(expect(gnss_summary, "no_fix") > 60.0, "{gnss_summary}");
    let w = "wx-pole-3";
    assert_eq!(frames(w, "ok"), expect(wx_summary, "ok"), "{metrics}");
    assert_eq!(bad(w, "truncated"), expect(wx_summary, "truncated"));
    assert_eq!(bad(w, "noise"), expect(wx_summary, "noise"));
    assert!(
        metric_in(&metrics, "ioc_gateway_serial_polls_total", &[("port", w)]) >= ANSWERS as f64
    );

    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(10)).unwrap();
}

/// The `[[inputs.serial]]` block (with its `[inputs.serial.lines]` table) of the example input
/// `name` in config/text-instruments.toml, its `port` set to `port`: the test runs the example
/// configs as a technician would copy them.
fn example_input(name: &str, port: &Path) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/text-instruments.toml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let block = text
        .split("[[inputs.serial]]")
        .find(|b| b.contains(&format!("name = \"{name}\"")))
        .unwrap_or_else(|| panic!("no example input {name} in {path}"));
    let body: Vec<String> = block
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            if l.starts_with("port = ") {
                format!("port = \"{}\"", port.display())
            } else {
                l.to_owned()
            }
        })
        .collect();
    format!("[[inputs.serial]]{}\n", body.join("\n"))
}

#[test]
fn line_instruments_with_faults_reach_the_store_exactly_as_the_example_configs_read_them() {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let level_manifest = dir.path().join("level.jsonl");
    let noise_manifest = dir.path().join("noise.jsonl");
    const LEVEL_LINES: u64 = 200;
    const NOISE_LINES: u64 = 150;

    // Given: a canal level logger at 10 lines/s with bad checksums, torn lines, noise, no-echo
    // sentinels and split writes, CR/LF/CRLF mixed.
    let level = SerialSim::spawn(
        "level",
        dir.path(),
        &[
            "--protocol",
            "lines",
            "--line-format",
            "level",
            "--seed",
            "21",
            "--frames",
            &LEVEL_LINES.to_string(),
            "--rate-hz",
            "10",
            "--faults",
            "checksum=0.05,truncate=0.05,noise=0.04,invalid=0.08,split=0.2",
            "--line-ending",
            "mix",
            "--sensor-id",
            "lvl-3",
            "--manifest",
            level_manifest.to_str().unwrap(),
        ],
    )
    .unwrap();
    // Given: a sound level meter replaying its memory (a line per second of its clock, ten a
    // second on the wire, from ten minutes ago), with torn lines, noise and overloads, LF and
    // CRLF mixed with CR.
    let ten_minutes_ago = {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 600;
        let (days, sod) = (now_s.div_euclid(86_400), now_s.rem_euclid(86_400));
        let (y, mo, d) = civil_from_days(days);
        format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        )
    };
    let noise = SerialSim::spawn(
        "noise",
        dir.path(),
        &[
            "--protocol",
            "lines",
            "--line-format",
            "noise",
            "--seed",
            "22",
            "--frames",
            &NOISE_LINES.to_string(),
            "--rate-hz",
            "10",
            "--start",
            &ten_minutes_ago,
            "--faults",
            "truncate=0.06,noise=0.05,invalid=0.1,split=0.2",
            "--line-ending",
            "mix",
            "--sensor-id",
            "slm-1",
            "--manifest",
            noise_manifest.to_str().unwrap(),
        ],
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[output.influxdb]
url = "{url}"
api = "v2"
bucket = "telemetry"
flush_interval_ms = 200

[http]
listen = "127.0.0.1:{http_port}"

{level_input}
{noise_input}"#,
            data = data_dir.display(),
            url = vm.url(),
            level_input = example_input("canal-level-3", &level.pty),
            noise_input = example_input("noise-hoan-kiem", &noise.pty),
        ),
    )
    .unwrap();
    let mut gateway = GatewayProcess::spawn(&config).unwrap();

    // When: both have played their stream to the end.
    let level_out = level.finish(Duration::from_secs(180)).unwrap();
    let noise_out = noise.finish(Duration::from_secs(180)).unwrap();
    let ls = summary(&level_out);
    let ns = summary(&noise_out);
    assert_eq!(ls["frames"], LEVEL_LINES, "{ls}");
    assert_eq!(ls["dropped_bytes"], 0, "{ls}");
    assert_eq!(ns["frames"], NOISE_LINES, "{ns}");
    assert_eq!(ns["dropped_bytes"], 0, "{ns}");
    let fault = |s: &Value, f: &str| s["faults"][f].as_u64().unwrap_or(0) as f64;
    for f in ["checksum", "truncate", "noise", "invalid", "split"] {
        assert!(fault(ls, f) > 0.0, "seed 21 should inject {f}: {ls}");
    }
    for f in ["truncate", "noise", "invalid", "split"] {
        assert!(fault(ns, f) > 0.0, "seed 22 should inject {f}: {ns}");
    }

    // Then: the store holds exactly what the manifests say, nothing of the faulty lines.
    for (name, manifest) in [("level", &level_manifest), ("noise", &noise_manifest)] {
        let kinds = entries_by_kind(manifest);
        let verdict = SensorSim::verify_until_passed(
            manifest,
            &vm.url(),
            StoreApi::V2,
            &["--gateway-id", GATEWAY_ID],
            Duration::from_secs(60),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(
            verdict.passed(),
            "{name}:\n{verdict}\n{}",
            gateway.log_tail(40)
        );
        let c = verdict.counts();
        assert_eq!(
            (c.missing, c.mismatched, c.duplicates, c.leaked),
            (0, 0, 0, 0)
        );
        assert_eq!(c.expected, kinds["stored"], "{name}: {verdict}");
        assert_eq!(c.rejected_sent, kinds["rejected"], "{name}: {verdict}");
        assert!(kinds["stored"] >= 100, "{name}: {kinds:?}");
    }

    // Then: every injected fault is one count at the gateway, of the kind the player says.
    let metrics = gateway_metrics(http_port);
    let frames = |port: &str, result: &str| {
        metric_in(
            &metrics,
            "ioc_gateway_serial_frames_total",
            &[("port", port), ("result", result)],
        )
    };
    let bad = |port: &str, reason: &str| {
        metric_in(
            &metrics,
            "ioc_gateway_serial_frames_bad_total",
            &[("port", port), ("reason", reason)],
        )
    };
    let l = "canal-level-3";
    assert_eq!(frames(l, "ok"), expect(ls, "ok"), "{metrics}");
    assert_eq!(frames(l, "no_values"), expect(ls, "no_values"));
    assert_eq!(frames(l, "no_match"), 0.0);
    assert_eq!(bad(l, "checksum"), expect(ls, "checksum"));
    assert_eq!(bad(l, "no_checksum"), expect(ls, "no_checksum"));
    assert_eq!(bad(l, "truncated"), expect(ls, "truncated"));
    // A torn line and the one glued to it fail the checksum once; a torn last line is
    // `truncated` once the port is idle.
    assert_eq!(
        bad(l, "checksum") + bad(l, "truncated"),
        fault(ls, "checksum") + fault(ls, "truncate")
    );
    assert_eq!(bad(l, "no_checksum"), fault(ls, "noise"));
    let n = "noise-hoan-kiem";
    assert_eq!(frames(n, "ok"), expect(ns, "ok"), "{metrics}");
    assert_eq!(frames(n, "skipped"), 1.0, "the header");
    assert_eq!(frames(n, "no_match"), expect(ns, "no_match"));
    assert_eq!(bad(n, "truncated"), expect(ns, "truncated"));
    assert_eq!(
        frames(n, "no_match") + bad(n, "truncated"),
        fault(ns, "truncate") + fault(ns, "noise")
    );
    assert_eq!(frames(n, "no_values"), 0.0);

    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(10)).unwrap();
}

/// (year, month, day) of a day number since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
