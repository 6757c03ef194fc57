//! End-to-end test of the text serial protocols through the real `ioc-gateway` binary into a
//! real VictoriaMetrics: a GNSS receiver on a bus at 10 fixes per second (NMEA 0183 RMC + GGA
//! per fix, with bad checksums, torn sentences and a stretch without a fix) and a Vaisala
//! weather station in polled mode (the gateway sends `0R0` every 500 ms, the station answers with
//! its composite message). Both are played by this test on pseudo-terminals.
//!
//! Checked in the store: every fix the receiver sent intact is there exactly once, with the fix's
//! own time to the millisecond and its values; no point for a corrupt sentence or while the
//! receiver had no fix; every answer of the weather station is there once, with its values, in
//! order, stamped when it arrived. (Coordinates are compared to 1e-9°: VictoriaMetrics keeps
//! about 12 significant digits of a float.)

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ioc_e2e::{pty, wait_for_reader, GatewayProcess, VictoriaMetrics};

const GATEWAY_ID: &str = "e2e-text-gw";
const FIXES: u64 = 50;

/// XOR checksum of an NMEA body, as two hex digits.
fn nmea(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{sum:02X}\r\n")
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One fix of the simulated bus: what it prints and what the gateway must store.
struct BusFix {
    ts_ms: i64,
    lat_text: String,
    lon_text: String,
    lat: f64,
    lon: f64,
    knots: f64,
    sats: i64,
}

fn bus_fix(start_ms: i64, n: u64) -> BusFix {
    let ts_ms = start_ms + n as i64 * 100;
    // Heading east along 10.7769° N from 106.7009° E at ~30 km/h (8.3 m/s): 0.83 m per fix.
    let lat_min = 46.61400 + (n % 3) as f64 * 0.00001;
    let lon_min = 42.05400 + n as f64 * 0.00045;
    let lat_text = format!("10{lat_min:08.5}");
    let lon_text = format!("106{lon_min:08.5}");
    let value = |text: &str, deg: usize| {
        text[..deg].parse::<f64>().unwrap() + text[deg..].parse::<f64>().unwrap() / 60.0
    };
    BusFix {
        lat: value(&lat_text, 2),
        lon: value(&lon_text, 3),
        lat_text,
        lon_text,
        ts_ms,
        knots: 16.2 + (n % 5) as f64 / 10.0,
        sats: 8 + (n % 4) as i64,
    }
}

/// What fix `n` looks like on the wire: `(bytes, rmc_intact, gga_intact)`.
fn fix_bytes(f: &BusFix, n: u64) -> (Vec<u8>, bool, bool) {
    let secs = f.ts_ms.div_euclid(1000);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let time = format!(
        "{:02}{:02}{:02}.{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        f.ts_ms.rem_euclid(1000) / 10
    );
    let date = format!("{d:02}{mo:02}{:02}", y % 100);
    let no_fix = (20..25).contains(&n);
    let (rmc, gga) = if no_fix {
        (
            nmea(&format!("GNRMC,{time},V,,,,,,,{date},,,N")),
            nmea(&format!("GNGGA,{time},,,,,0,00,99.99,,,,,,")),
        )
    } else {
        (
            nmea(&format!(
                "GNRMC,{time},A,{},N,{},E,{:.1},90.0,{date},,,A",
                f.lat_text, f.lon_text, f.knots
            )),
            nmea(&format!(
                "GNGGA,{time},{},N,{},E,1,{:02},0.9,12.5,M,2.1,M,,",
                f.lat_text, f.lon_text, f.sats
            )),
        )
    };
    let mut bytes = Vec::new();
    let (mut rmc_ok, mut gga_ok) = (!no_fix, !no_fix);
    if n % 7 == 3 && !no_fix {
        // One digit of the RMC changed, checksum kept.
        let mut bad = rmc.clone().into_bytes();
        let i = bad.iter().position(|&b| b == b'A').unwrap() + 4;
        bad[i] = if bad[i] == b'9' { b'8' } else { b'9' };
        bytes.extend(bad);
        rmc_ok = false;
    } else {
        bytes.extend(rmc.as_bytes());
    }
    if n % 11 == 5 {
        // The GGA torn (no line end), the next sentence right after it.
        bytes.extend(&gga.as_bytes()[..20]);
        gga_ok = false;
    } else {
        bytes.extend(gga.as_bytes());
    }
    (bytes, rmc_ok, gga_ok)
}

fn write_config(dir: &Path, vm: &VictoriaMetrics, gnss: &Path, wx: &Path) -> std::path::PathBuf {
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
enabled = false

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
poll_interval_ms = 500
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

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_bus_gnss_at_10_hz_and_a_polled_weather_station_reach_the_store_exactly() {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gnss = pty();
    let wx = pty();
    let config = write_config(dir.path(), &vm, &gnss.path, &wx.path);
    let ioc_e2e::Pty {
        master: mut gnss_master,
        slave: gnss_slave,
        ..
    } = gnss;
    let ioc_e2e::Pty {
        master: mut wx_master,
        slave: wx_slave,
        ..
    } = wx;
    drop((gnss_slave, wx_slave));
    let mut gateway = GatewayProcess::spawn(&config).unwrap();

    // Given: the weather station, answering each poll (WXT530 User Guide M211840EN §7.2.9's
    // composite message, with its temperature and wind changing per answer).
    let station = std::thread::spawn(move || {
        wait_for_reader(&wx_master);
        let mut answers = Vec::new();
        let mut pending = Vec::new();
        let mut buf = [0u8; 64];
        while answers.len() < 8 {
            let n = wx_master.read(&mut buf).unwrap();
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                let cmd: Vec<u8> = pending.drain(..end + 2).collect();
                assert_eq!(cmd, b"0R0\r\n");
                let k = answers.len();
                let ta = format!("{:.1}", 23.0 + k as f64 * 0.1);
                let sx = format!("{:.1}", 2.8 + k as f64 * 0.2);
                let before = unix_ms();
                wx_master
                    .write_all(
                        format!("0R0,Dx=005D,Sx={sx}M,Ta={ta}C,Ua=30.0P,Pa=1028.2H,Rc=0.00M,Rd=10s,Th=23.6C\r\n")
                            .as_bytes(),
                    )
                    .unwrap();
                answers.push((
                    ta.parse::<f64>().unwrap(),
                    sx.parse::<f64>().unwrap(),
                    before,
                ));
            }
        }
        answers
    });

    // Given: the bus receiver, 10 fixes per second, starting on a whole second 10 s ago.
    wait_for_reader(&gnss_master);
    let start_ms = (unix_ms() / 1000 - 10) * 1000;
    let mut expected = Vec::new();
    let began = Instant::now();
    for n in 0..FIXES {
        let fix = bus_fix(start_ms, n);
        let (bytes, rmc_ok, gga_ok) = fix_bytes(&fix, n);
        gnss_master.write_all(&bytes).unwrap();
        if rmc_ok || gga_ok {
            expected.push((fix, rmc_ok, gga_ok));
        }
        let due = Duration::from_millis(100 * (n + 1));
        if let Some(wait) = due.checked_sub(began.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let answers = station.join().unwrap();

    // Then: every intact fix is stored once with its own time; none for the bad ones.
    let wait_points = |selector: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            vm.force_flush().unwrap();
            let got = vm.count_points(selector).unwrap();
            if got >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let lat_selector = r#"{__name__="gnss_lat",sensor_id="bus-17"}"#;
    assert_eq!(wait_points(lat_selector, expected.len()), expected.len());
    let series = vm.export(lat_selector).unwrap();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].label("talker"), Some("GN"));
    assert_eq!(series[0].label("gateway"), Some(GATEWAY_ID));
    let want_ts: Vec<i64> = expected.iter().map(|(f, _, _)| f.ts_ms).collect();
    assert_eq!(series[0].timestamps_ms, want_ts);
    for ((f, _, _), got) in expected.iter().zip(&series[0].values) {
        assert!((got - f.lat).abs() < 1e-9, "lat {got} != {}", f.lat);
    }
    let lon = vm
        .export(r#"{__name__="gnss_lon",sensor_id="bus-17"}"#)
        .unwrap();
    for ((f, _, _), got) in expected.iter().zip(&lon[0].values) {
        assert!((got - f.lon).abs() < 1e-9, "lon {got} != {}", f.lon);
    }
    // Speed from the RMC only (knots × 1.852), satellites from the GGA only.
    let speed = vm
        .export(r#"{__name__="gnss_speed_kmh",sensor_id="bus-17"}"#)
        .unwrap();
    let rmc: Vec<&BusFix> = expected.iter().filter(|e| e.1).map(|e| &e.0).collect();
    assert_eq!(
        speed[0].timestamps_ms,
        rmc.iter().map(|f| f.ts_ms).collect::<Vec<_>>()
    );
    for (f, got) in rmc.iter().zip(&speed[0].values) {
        assert!((got - f.knots * 1.852).abs() < 1e-9, "{got} vs {}", f.knots);
    }
    let sats = vm
        .export(r#"{__name__="gnss_satellites",sensor_id="bus-17"}"#)
        .unwrap();
    let gga: Vec<&BusFix> = expected.iter().filter(|e| e.2).map(|e| &e.0).collect();
    assert_eq!(
        sats[0].timestamps_ms,
        gga.iter().map(|f| f.ts_ms).collect::<Vec<_>>()
    );
    assert_eq!(
        sats[0].values,
        gga.iter().map(|f| f.sats as f64).collect::<Vec<_>>()
    );

    // Then: every answer of the station, once, in order, stamped on arrival.
    let ta_selector = r#"{__name__="weather_air_temp_c",sensor_id="wx-3"}"#;
    assert!(wait_points(ta_selector, answers.len()) >= answers.len());
    let ta = vm.export(ta_selector).unwrap();
    let sx = vm
        .export(r#"{__name__="weather_wind_speed_max_ms",sensor_id="wx-3"}"#)
        .unwrap();
    // The gateway may poll once more than the station answered before the test stopped it.
    let stored: Vec<(f64, f64, i64)> = ta[0]
        .values
        .iter()
        .zip(&sx[0].values)
        .zip(&ta[0].timestamps_ms)
        .map(|((t, s), ts)| (*t, *s, *ts))
        .collect();
    assert_eq!(stored.len(), answers.len(), "{stored:?}");
    for ((t, s, ts), (want_t, want_s, sent_ms)) in stored.iter().zip(&answers) {
        assert_eq!((*t, *s), (*want_t, *want_s));
        assert!(
            *ts >= *sent_ms && *ts < sent_ms + 2000,
            "stamped {ts}, sent {sent_ms}"
        );
    }
    let p = vm
        .export(r#"{__name__="weather_pressure_hpa",sensor_id="wx-3"}"#)
        .unwrap();
    assert!(p[0].values.iter().all(|v| *v == 1028.2));

    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(10)).unwrap();
}
