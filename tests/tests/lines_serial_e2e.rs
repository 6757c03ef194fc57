//! End-to-end test of `protocol = "lines"` through the real `ioc-gateway` binary into a real
//! VictoriaMetrics: a water-level logger on a canal, played by this test on a pseudo-terminal,
//! prints one line per reading — `$LVL,<unix ms>,<level mm>,<water °C>*hh` (an NMEA-style XOR
//! checksum) — read by a regex with named captures, the line's own time, `drop_values` and
//! `checksum = "nmea-xor"`.
//!
//! The stream has what a real RS-232 line has: lines torn across writes, CR LF, LF and CR
//! endings mixed, a boot banner and a line cut off in the middle (both `no_checksum`: the
//! checksum is checked before the pattern), a status line with a valid checksum that the pattern
//! does not take (`no_match`), a sentinel
//! in one value (that field dropped) and in both (`no_values`), a corrupt line (`checksum`), and
//! a 1 MB run of bytes without a line end (`too_long`, once, never held in memory).
//!
//! Checked in the store: every intact reading exactly once, with its own time to the
//! millisecond and its values; nothing for the others. Checked in `/metrics`: the counts of
//! each outcome.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ioc_e2e::{
    free_port, gateway_metrics, metric_in, pty, wait_for_reader, GatewayProcess, VictoriaMetrics,
};

const GATEWAY_ID: &str = "e2e-lines-gw";
const PORT: &str = "canal-level-2";
const LINES: u64 = 40;

/// `$body*hh` with the XOR of the body.
fn checksummed(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{sum:02X}")
}

/// What line `n` carries: (time, level text, temperature text).
fn line_values(start_ms: i64, n: u64) -> (i64, String, String) {
    let ts = start_ms + n as i64 * 250;
    let level = if matches!(n, 12 | 13) {
        "-9999".to_string()
    } else {
        format!("{:.1}", 1520.5 + n as f64 * 3.0)
    };
    let temp = if n == 13 {
        "-9999".to_string()
    } else {
        format!("{:.1}", 24.0 + (n % 5) as f64 * 0.1)
    };
    (ts, level, temp)
}

fn write_config(
    dir: &Path,
    vm: &VictoriaMetrics,
    port: &Path,
    http_port: u16,
) -> std::path::PathBuf {
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
name = "{PORT}"
port = "{port}"
baud = 9600
protocol = "lines"
sensor_id = "lvl-2"
measurement = "water_level"

[inputs.serial.lines]
regex = '^\$LVL,(?P<ts>\d{{13}}),(?P<level_mm>-?\d+(\.\d+)?),(?P<water_temp_c>-?\d+(\.\d+)?)$'
fields = ["level_mm", "water_temp_c"]
time = "ts"
time_format = "unix_ms"
drop_values = [-9999]
checksum = "nmea-xor"
"#,
        data = data_dir.display(),
        url = vm.url(),
        port = port.display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_line_sensor_with_faults_reaches_the_store_exactly_and_is_counted() {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = pty();
    let http_port = free_port();
    let config = write_config(dir.path(), &vm, &port.path, http_port);
    let ioc_e2e::Pty {
        mut master, slave, ..
    } = port;
    drop(slave);
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    wait_for_reader(&master);

    // Given: the logger's stream, its times starting on a whole second a minute ago.
    let start_ms = (unix_ms() / 1000 - 60) * 1000;
    // (time, level, temperature) of each line that must be stored; None: the field dropped.
    let mut expected: Vec<(i64, Option<f64>, f64)> = Vec::new();
    master.write_all(b"HRXL-LVL logger v2.1 ready\r\n").unwrap();
    for n in 0..LINES {
        let (ts, level, temp) = line_values(start_ms, n);
        let mut line = checksummed(&format!("LVL,{ts},{level},{temp}"));
        if n == 17 {
            // One digit changed, checksum kept.
            line = line.replacen(&temp, &format!("{temp}1"), 1);
        }
        let end = match n % 3 {
            0 => "\r\n",
            1 => "\n",
            _ => "\r",
        };
        let bytes = format!("{line}{end}").into_bytes();
        if n % 4 == 1 {
            // Torn across two writes.
            let (a, b) = bytes.split_at(bytes.len() / 2);
            master.write_all(a).unwrap();
            master.flush().unwrap();
            std::thread::sleep(Duration::from_millis(30));
            master.write_all(b).unwrap();
        } else {
            master.write_all(&bytes).unwrap();
        }
        if n == 5 {
            master
                .write_all(format!("{}\r\n", checksummed("LVL,STATUS,BATTERY LOW")).as_bytes())
                .unwrap();
        }
        if n == 25 {
            // A line cut off (the logger reset mid-line), ended by the next line end.
            master.write_all(b"$LVL,17723\r\n").unwrap();
        }
        if n == 30 {
            // 1 MB without a line end: dropped up to the line end that follows.
            let junk = [b'7'; 4096];
            for _ in 0..256 {
                master.write_all(&junk).unwrap();
            }
            master.write_all(b"\n").unwrap();
        }
        match n {
            13 | 17 => {}
            12 => expected.push((ts, None, temp.parse().unwrap())),
            _ => expected.push((ts, Some(level.parse().unwrap()), temp.parse().unwrap())),
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Then: every intact line once, with its own time and values.
    let temp_selector = r#"{__name__="water_level_water_temp_c",sensor_id="lvl-2"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = vm.count_points(temp_selector).unwrap();
        if got >= expected.len() || Instant::now() > deadline {
            assert_eq!(got, expected.len(), "{}", gateway.log_tail(40));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let temps = vm.export(temp_selector).unwrap();
    assert_eq!(temps.len(), 1, "{temps:?}");
    assert_eq!(temps[0].label("gateway"), Some(GATEWAY_ID));
    assert_eq!(
        temps[0].timestamps_ms,
        expected.iter().map(|e| e.0).collect::<Vec<_>>()
    );
    assert_eq!(
        temps[0].values,
        expected.iter().map(|e| e.2).collect::<Vec<_>>()
    );
    let levels = vm
        .export(r#"{__name__="water_level_level_mm",sensor_id="lvl-2"}"#)
        .unwrap();
    let with_level: Vec<(i64, f64)> = expected
        .iter()
        .filter_map(|(ts, l, _)| l.map(|l| (*ts, l)))
        .collect();
    assert_eq!(
        levels[0].timestamps_ms,
        with_level.iter().map(|e| e.0).collect::<Vec<_>>()
    );
    assert_eq!(
        levels[0].values,
        with_level.iter().map(|e| e.1).collect::<Vec<_>>()
    );

    // Then: each outcome counted under its own label.
    let text = gateway_metrics(http_port);
    let frames = |result: &str| {
        metric_in(
            &text,
            "ioc_gateway_serial_frames_total",
            &[("port", PORT), ("result", result)],
        )
    };
    let bad = |reason: &str| {
        metric_in(
            &text,
            "ioc_gateway_serial_frames_bad_total",
            &[("port", PORT), ("reason", reason)],
        )
    };
    assert_eq!(frames("ok"), expected.len() as f64, "{text}");
    assert_eq!(frames("no_match"), 1.0, "the status line: {text}");
    assert_eq!(frames("no_values"), 1.0, "{text}");
    assert_eq!(bad("no_checksum"), 2.0, "banner and cut-off line: {text}");
    assert_eq!(bad("checksum"), 1.0, "{text}");
    assert_eq!(bad("too_long"), 1.0, "{text}");
    assert_eq!(frames("bad"), 4.0, "{text}");

    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(10)).unwrap();
}
