//! `ioc-gateway probe`: tells a technician at the cabinet what a serial port is receiving.
//!
//! It opens the port (8N1, raw), listens, feeds every byte to the decoder of each candidate
//! protocol at once (the streaming sensors talk by themselves, so listening is enough), prints
//! each decoded reading as it arrives, and ends with a summary of good and bad frames per
//! protocol. With `--protocol auto` and no `--baud`, it tries the usual rates ([`AUTO_BAUDS`])
//! one after the other and stops at the first where something decodes: the binary sensors, our
//! nodes, NMEA 0183 GNSS receivers (a receiver without a fix is recognised, and said so) and
//! Vaisala weather stations in automatic mode. Lines a text protocol could not read are shown. It never
//! writes to the port: node acknowledgements are *not* sent, so a node keeps its unacked
//! readings for the gateway. Modbus devices only answer requests, so they are not probed here.
//!
//! `--config FILE --input NAME` probes one configured serial input instead: its port (unless
//! `--port` says otherwise), its baud rate (unless `--baud`) and its decoder exactly as `run`
//! builds it — the only way to probe `protocol = "lines"`, whose pattern lives in the config.
//! Such a port prints every line with its outcome (`ok`, `no_match`, `no_values`, `checksum`, …),
//! so a technician sees at once which lines the pattern misses.
//!
//! Returns `Ok(false)` (the binary exits non-zero) with a plain explanation when nothing decoded.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::exit::Exit;
use super::runtime::{self, Kind};
use crate::clock::now_ns;
use crate::config::{Config, SerialInputConfig, SerialProtocol};
use crate::input::serial::{open_port, StreamDecoder, StreamOutput};
use crate::output::{encode, Flavor};

/// What to listen for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeProtocol {
    Pms5003,
    Sds011,
    Node,
    /// NMEA 0183 GNSS sentences.
    Nmea0183,
    /// Vaisala WXT5xx ASCII / WMT700 messages (automatic mode: a polled station stays silent).
    Vaisala,
    /// All of the above at once, and (without `--baud`) the usual rates one after the other.
    Auto,
}

/// Baud rates tried with `auto` when none is given: 9600 (PMS5003, SDS011, WMT700, many GNSS
/// receivers), 4800 (NMEA 0183's standard rate), 19200 (WXT5xx default), 38400 (GNSS), 115200
/// (our nodes, fast GNSS receivers).
pub const AUTO_BAUDS: [u32; 5] = [9600, 4800, 19_200, 38_400, 115_200];
/// Shortest listening time per baud rate: PMS5003 and SDS011 send once a second.
const MIN_SLICE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Tally {
    good: u64,
    skipped: u64,
    no_fix: u64,
    no_time: u64,
    no_match: u64,
    no_values: u64,
    bad: BTreeMap<&'static str, u64>,
}

fn candidates(protocol: ProbeProtocol) -> Vec<SerialProtocol> {
    match protocol {
        ProbeProtocol::Pms5003 => vec![SerialProtocol::Pms5003],
        ProbeProtocol::Sds011 => vec![SerialProtocol::Sds011],
        ProbeProtocol::Node => vec![SerialProtocol::Node],
        ProbeProtocol::Nmea0183 => vec![SerialProtocol::Nmea0183],
        ProbeProtocol::Vaisala => vec![SerialProtocol::Vaisala],
        ProbeProtocol::Auto => vec![
            SerialProtocol::Pms5003,
            SerialProtocol::Sds011,
            SerialProtocol::Node,
            SerialProtocol::Nmea0183,
            SerialProtocol::Vaisala,
        ],
    }
}

fn default_bauds(protocol: ProbeProtocol) -> Vec<u32> {
    match protocol {
        ProbeProtocol::Pms5003 | ProbeProtocol::Sds011 => vec![9600],
        ProbeProtocol::Node => vec![115_200],
        ProbeProtocol::Nmea0183 => vec![4800, 9600, 38_400, 115_200],
        ProbeProtocol::Vaisala => vec![19_200, 9600, 4800],
        ProbeProtocol::Auto => AUTO_BAUDS.to_vec(),
    }
}

fn decoder_for(protocol: SerialProtocol, port: &Path) -> Option<StreamDecoder> {
    let cfg = SerialInputConfig {
        name: None,
        port: port.to_path_buf(),
        baud: 9600,
        protocol,
        sensor_id: Some("probe".into()),
        tags: BTreeMap::new(),
        poll_interval_ms: 1000,
        registers: Vec::new(),
        ..SerialInputConfig::new("", protocol)
    };
    StreamDecoder::for_port(&cfg).ok().flatten()
}

/// `probe`: [`probe`] on a runtime of its own; [`Exit::Failure`] if nothing decoded,
/// [`Exit::BadInput`] (the error on stderr) if the port cannot be opened.
pub fn execute(port: PathBuf, baud: Option<u32>, protocol: ProbeProtocol, seconds: u64) -> Exit {
    let result = runtime::build(Kind::CurrentThread)
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(probe(port, baud, protocol, seconds)));
    match result {
        Ok(true) => Exit::Success,
        Ok(false) => Exit::Failure,
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::BadInput
        }
    }
}

/// `probe --config FILE --input NAME`: [`probe_input_to`] on a runtime of its own, exiting as
/// [`execute`] does ([`Exit::BadInput`] also for a config that does not load or has no such
/// input).
pub fn execute_input(
    config: &Path,
    input: &str,
    port: Option<PathBuf>,
    baud: Option<u32>,
    seconds: u64,
) -> Exit {
    let result = configured_input(config, input).and_then(|cfg| {
        runtime::build(Kind::CurrentThread)
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(probe_input_to(
                    &cfg,
                    port,
                    baud,
                    seconds,
                    &mut std::io::stdout(),
                ))
            })
    });
    match result {
        Ok(true) => Exit::Success,
        Ok(false) => Exit::Failure,
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::BadInput
        }
    }
}

/// The serial input of the config file at `path` named `input` (its `name`, or its `port`).
pub fn configured_input(path: &Path, input: &str) -> anyhow::Result<SerialInputConfig> {
    let config = Config::load(path)?;
    let serial = &config.inputs.serial;
    serial
        .iter()
        .find(|s| s.name.as_deref() == Some(input))
        .or_else(|| serial.iter().find(|s| s.port == Path::new(input)))
        .cloned()
        .ok_or_else(|| {
            let known: Vec<String> = serial
                .iter()
                .map(crate::input::serial::port_label)
                .collect();
            anyhow::anyhow!(
                "{} has no serial input named {input:?} (serial inputs: {})",
                path.display(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })
}

/// Probes the serial input `cfg` with its own decoder (see the module docs); `port` and `baud`
/// override the input's.
pub async fn probe_input_to(
    cfg: &SerialInputConfig,
    port: Option<PathBuf>,
    baud: Option<u32>,
    seconds: u64,
    w: &mut (dyn Write + Send),
) -> anyhow::Result<bool> {
    if cfg.protocol == SerialProtocol::ModbusRtu {
        anyhow::bail!(
            "serial input {} speaks modbus_rtu: Modbus devices only answer requests, so listening              shows nothing (run the gateway and watch modbus_requests_total instead)",
            crate::input::serial::port_label(cfg)
        );
    }
    // Checked once here, so the decoder is built without fail for each baud rate below.
    StreamDecoder::for_port(cfg).map_err(|(key, message)| {
        anyhow::anyhow!(
            "serial input {}: key `{key}`: {message}",
            cfg.port.display()
        )
    })?;
    let port = port.unwrap_or_else(|| cfg.port.clone());
    let make = || {
        StreamDecoder::for_port(cfg)
            .ok()
            .flatten()
            .map(StreamDecoder::traced)
            .into_iter()
            .collect()
    };
    listen(port, vec![baud.unwrap_or(cfg.baud)], &make, seconds, w).await
}

/// Listens on `port` for `seconds` in total (split over the baud rates tried), printing what
/// decodes. `Ok(true)` if at least one frame decoded; `Ok(false)` with an explanation printed if
/// none did; `Err` if the port cannot be opened at all.
pub async fn probe(
    port: PathBuf,
    baud: Option<u32>,
    protocol: ProbeProtocol,
    seconds: u64,
) -> anyhow::Result<bool> {
    probe_to(port, baud, protocol, seconds, &mut std::io::stdout()).await
}

/// [`probe`], writing its report to `w` instead of stdout.
pub async fn probe_to(
    port: PathBuf,
    baud: Option<u32>,
    protocol: ProbeProtocol,
    seconds: u64,
    w: &mut (dyn Write + Send),
) -> anyhow::Result<bool> {
    let bauds = baud
        .map(|b| vec![b])
        .unwrap_or_else(|| default_bauds(protocol));
    let make = || {
        candidates(protocol)
            .into_iter()
            .filter_map(|p| decoder_for(p, &port))
            .collect()
    };
    listen(port.clone(), bauds, &make, seconds, w).await
}

/// Listens at each of `bauds` in turn with the decoders `make` gives, until one decodes.
async fn listen(
    port: PathBuf,
    bauds: Vec<u32>,
    make: &(dyn Fn() -> Vec<StreamDecoder> + Sync),
    seconds: u64,
    w: &mut (dyn Write + Send),
) -> anyhow::Result<bool> {
    let total = Duration::from_secs(seconds.max(1));
    let slice = (total / bauds.len().max(1) as u32).max(MIN_SLICE);
    let mut total_bytes = 0u64;
    let mut unmatched_total = 0u64;
    for &baud in &bauds {
        let mut stream = open_port(&port, baud).map_err(|e| {
            anyhow::anyhow!(
                "cannot open {}: {e}. Is the device plugged in and the path right (ls -l /dev/serial/by-id/)? \
                 If the gateway service is running it holds the port exclusively: stop it first.",
                port.display()
            )
        })?;
        let mut decoders: Vec<StreamDecoder> = make();
        let mut tallies: Vec<Tally> = decoders.iter().map(|_| Tally::default()).collect();
        let names: Vec<&str> = decoders.iter().map(StreamDecoder::protocol_name).collect();
        writeln!(
            w,
            "listening on {} at {baud} baud 8N1 for {:.0} s, for: {}",
            port.display(),
            slice.as_secs_f64(),
            names.join(", ")
        )?;
        let start = Instant::now();
        let deadline = start + slice;
        let mut buf = vec![0u8; 4096];
        let mut bytes = 0u64;
        let mut out = StreamOutput::default();
        loop {
            let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) => {
                    writeln!(w, "the port closed (end of file)")?;
                    break;
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    writeln!(w, "read error: {e} (device unplugged?)")?;
                    break;
                }
            };
            bytes += n as u64;
            let now = now_ns();
            let chunk = buf.get(..n).unwrap_or_default();
            for (decoder, tally) in decoders.iter_mut().zip(tallies.iter_mut()) {
                out.clear();
                decoder.push(chunk, now, &mut out);
                tally.good += out.good;
                tally.skipped += out.skipped;
                tally.no_fix += out.no_fix;
                tally.no_time += out.no_time;
                tally.no_match += out.no_match;
                tally.no_values += out.no_values;
                // A traced decoder shows every line with its outcome (no_match ones included).
                for (line, outcome) in &out.traced {
                    writeln!(
                        w,
                        "[{:>6.2} s] {}: {outcome}: {line:?}",
                        start.elapsed().as_secs_f64(),
                        decoder.protocol_name()
                    )?;
                }
                if out.traced.is_empty() {
                    for line in &out.unmatched {
                        writeln!(
                            w,
                            "[{:>6.2} s] {}: no match: {line:?}",
                            start.elapsed().as_secs_f64(),
                            decoder.protocol_name()
                        )?;
                    }
                }
                for r in &out.bad {
                    *tally.bad.entry(r).or_default() += 1;
                }
                for reading in &out.readings {
                    let mut line = Vec::new();
                    encode(reading, Flavor::V2, &mut line);
                    let text = String::from_utf8_lossy(&line);
                    // Drop the timestamp: the offset since the start says more here.
                    let body = text.trim_end().rsplit_once(' ').map_or(&*text, |(b, _)| b);
                    writeln!(
                        w,
                        "[{:>6.2} s] {}: {body}",
                        start.elapsed().as_secs_f64(),
                        decoder.protocol_name()
                    )?;
                }
            }
        }
        for (decoder, tally) in decoders.iter_mut().zip(tallies.iter_mut()) {
            out.clear();
            decoder.flush(&mut out);
            for (line, outcome) in &out.traced {
                writeln!(
                    w,
                    "[  idle  ] {}: {outcome}: {line}",
                    decoder.protocol_name()
                )?;
            }
            for r in &out.bad {
                *tally.bad.entry(r).or_default() += 1;
            }
        }
        total_bytes += bytes;
        unmatched_total += tallies.iter().map(|t| t.no_match).sum::<u64>();
        writeln!(w, "--- {baud} baud: {bytes} bytes received")?;
        let mut any = false;
        for (name, t) in names.iter().zip(&tallies) {
            let bad: u64 = t.bad.values().sum();
            let detail: Vec<String> = t.bad.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let mut extra = String::new();
            if t.no_fix > 0 {
                extra.push_str(&format!(", no fix {}", t.no_fix));
            }
            if t.no_time > 0 {
                extra.push_str(&format!(", VTG without a fix time {}", t.no_time));
            }
            if t.no_match > 0 {
                extra.push_str(&format!(", no match {}", t.no_match));
            }
            if t.no_values > 0 {
                extra.push_str(&format!(", no values {}", t.no_values));
            }
            writeln!(
                w,
                "    {name:<8} good frames {:>4}, skipped {:>3}, bad {:>4}{}{extra}",
                t.good,
                t.skipped,
                bad,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", detail.join(", "))
                }
            )?;
            // A GNSS receiver without a fix still speaks NMEA: recognised, and said so.
            any |= t.good > 0 || t.no_fix > 0;
        }
        if any {
            let best = names
                .iter()
                .zip(&tallies)
                .max_by_key(|(_, t)| t.good + t.no_fix)
                .map(|(n, _)| *n)
                .unwrap_or("?");
            writeln!(
                w,
                "OK: {best} frames decode at {baud} baud on {}",
                port.display()
            )?;
            if names
                .iter()
                .zip(&tallies)
                .any(|(n, t)| *n == best && t.good == 0 && t.no_fix > 0)
            {
                writeln!(
                    w,
                    "    the GNSS receiver has no fix yet (antenna with a clear view of the sky?)"
                )?;
            }
            return Ok(true);
        }
    }
    let tried: Vec<String> = bauds.iter().map(u32::to_string).collect();
    if unmatched_total > 0 {
        writeln!(
            w,
            "    {unmatched_total} lines did not match the pattern (shown above): check the \
             regex or columns against them"
        )?;
    }
    if total_bytes == 0 {
        writeln!(
                w,
            "FAILED: nothing at all arrived on {} ({} baud). Check power, wiring (sensor TX to adapter RX, \
             common ground) and that the sensor is in active mode. Modbus transmitters and weather stations \
             in polled mode stay silent until polled: they cannot be probed by listening.",
            port.display(),
            tried.join(", ")
        )?;
    } else {
        writeln!(
                w,
            "FAILED: {total_bytes} bytes arrived on {} but no frame decoded ({} baud). Wrong baud rate \
             or another protocol? Try --protocol auto without --baud, or check the sensor model.",
            port.display(),
            tried.join(", ")
        )?;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::OwnedFd;

    fn pty() -> (File, OwnedFd, PathBuf) {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let pair = nix::pty::openpty(None, None).unwrap();
        let mut t = tcgetattr(&pair.slave).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).unwrap();
        let path = nix::unistd::ttyname(&pair.slave).unwrap();
        (File::from(pair.master), pair.slave, path)
    }

    /// PyPMS `tests/captured_data/PMSx003.hexdump`, first frame.
    const PMS: [u8; 32] = [
        0x42, 0x4d, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x08, 0x00,
        0x08, 0x00, 0xd2, 0x00, 0x46, 0x00, 0x2d, 0x00, 0x1e, 0x00, 0x00, 0x00, 0x00, 0x97, 0x00,
        0x02, 0xc5,
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto_probe_finds_a_pms5003_and_prints_its_reading() {
        let (mut master, _slave, path) = pty();
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            // Opening the port discards what was waiting: start once the probe listens.
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(60));
                let mut bytes = vec![0x00, 0x13];
                bytes.extend(PMS);
                if master.write_all(&bytes).is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        let ok = probe_to(path, Some(9600), ProbeProtocol::Auto, 2, &mut out)
            .await
            .unwrap();
        writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(ok, "{text}");
        assert!(
            text.contains("pms5003: air_quality,model=pms5003,sensor_id=probe n0_3=210i,n0_5=70i,n10=0i,n1_0=45i,n2_5=30i,n5_0=0i,pm10=8,pm10_cf1=8,pm1_0=0,pm1_0_cf1=0,pm2_5=8,pm2_5_cf1=8"),
            "{text}"
        );
        assert!(
            text.contains("OK: pms5003 frames decode at 9600 baud"),
            "{text}"
        );
        // Each frame follows two noise bytes: one noise run per frame. (Bytes written before the
        // probe opened the port are discarded by the open, so count what arrived.)
        let summary = text
            .lines()
            .find(|l| l.trim_start().starts_with("pms5003  good frames"))
            .unwrap();
        let numbers: Vec<u64> = summary
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        // "pms5003 good frames G, skipped 0, bad B (noise N)": the digits in "pms5003" come first.
        assert_eq!(numbers.len(), 5, "{summary}");
        let (good, skipped, bad, noise) = (numbers[1], numbers[2], numbers[3], numbers[4]);
        assert!(good >= 8, "{summary}");
        assert_eq!((skipped, bad, noise), (0, good, good), "{summary}");
    }

    /// Writes `lines` to the pty's master every 50 ms, starting once the probe listens.
    fn talk(mut master: File, lines: &'static [&'static str]) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            use std::io::Write as _;
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..10 {
                for line in lines {
                    std::thread::sleep(Duration::from_millis(50));
                    if master.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                }
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto_probe_recognises_a_gnss_receiver_and_a_weather_station() {
        // AeroRust/nmea tests/data/nmea1.log lines 10-11.
        let (master, _slave, path) = pty();
        let writer = talk(
            master,
            &[
                "$GPRMC,110124,A,5505.330990,N,03858.587325,E,152.6,86.2,310317,8.9,E,D*2E\r\n",
                "$GPGGA,110124,5505.330990,N,03858.587325,E,2,09,0.9,2177.0,M,14.0,M,,*7D\r\n",
            ],
        );
        let mut out = Vec::new();
        let ok = probe_to(path, None, ProbeProtocol::Auto, 1, &mut out)
            .await
            .unwrap();
        writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(ok, "{text}");
        assert!(
            text.contains("OK: nmea0183 frames decode at 9600 baud"),
            "{text}"
        );
        assert!(
            text.contains(
                "nmea0183: gnss,sensor_id=probe,talker=GP alt_m=2177,fix_quality=2i,hdop=0.9,"
            ),
            "{text}"
        );

        // WXT530 User Guide M211840EN §7.2.5, and a line it cannot read.
        let (master, _slave, path) = pty();
        let writer = talk(
            master,
            &["0R2,Ta=23.6C,Ua=14.2P,Pa=1026.6H\r\n", "dud line\r\n"],
        );
        let mut out = Vec::new();
        let ok = probe_to(path, Some(19_200), ProbeProtocol::Auto, 2, &mut out)
            .await
            .unwrap();
        writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(ok, "{text}");
        assert!(
            text.contains("OK: vaisala frames decode at 19200 baud"),
            "{text}"
        );
        assert!(
            text.contains(
                "vaisala: weather,sensor_id=probe air_temp_c=23.6,pressure_hpa=1026.6,rh_pct=14.2"
            ),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_configured_lines_input_shows_each_line_with_its_outcome() {
        let (master, _slave, path) = pty();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        // The port in the file is not the pty: --port overrides it, as at a cabinet where the
        // adapter enumerated elsewhere.
        std::fs::write(
            &file,
            r#"
[gateway]
id = "gw"
data_dir = "/tmp/unused"

[[inputs.serial]]
name = "canal-level"
port = "/dev/ttyUSB3"
baud = 9600
protocol = "lines"
sensor_id = "lvl-07"
measurement = "water_level"

[inputs.serial.lines]
regex = '^R(?P<range_mm>\d{4})$'
fields = ["range_mm"]
drop_values = [5000]

[output.influxdb]
url = "http://127.0.0.1:8086"
bucket = "telemetry"
"#,
        )
        .unwrap();
        let cfg = configured_input(&file, "canal-level").unwrap();
        assert_eq!(cfg.protocol, SerialProtocol::Lines);
        let e = configured_input(&file, "river").unwrap_err().to_string();
        assert!(
            e.contains("no serial input named \"river\" (serial inputs: canal-level)"),
            "{e}"
        );
        // MaxBotix HRXL-MaxSonar-WR: "R" + four digits (mm) + CR; its boot banner; no target.
        let writer = talk(master, &["HRXL-MaxSonar-WRS\r", "R1234\r", "R5000\r\n"]);
        let mut out = Vec::new();
        let ok = probe_input_to(&cfg, Some(path), None, 2, &mut out)
            .await
            .unwrap();
        writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(ok, "{text}");
        assert!(text.contains("at 9600 baud 8N1"), "{text}");
        assert!(text.contains("lines: ok: \"R1234\""), "{text}");
        assert!(
            text.contains("lines: water_level,sensor_id=lvl-07 range_mm=1234"),
            "{text}"
        );
        assert!(
            text.contains("lines: no_match: \"HRXL-MaxSonar-WRS\""),
            "{text}"
        );
        assert!(text.contains("lines: no_values: \"R5000\""), "{text}");
        assert!(text.contains(", no match "), "{text}");
        assert!(text.contains(", no values "), "{text}");
        assert!(
            text.contains("OK: lines frames decode at 9600 baud"),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lines_port_where_nothing_matches_says_to_check_the_pattern() {
        let (master, _slave, path) = pty();
        let mut cfg = SerialInputConfig::new(path, SerialProtocol::Lines);
        cfg.measurement = Some("level".into());
        cfg.lines = Some(
            toml::from_str("regex = '^R(?P<range_mm>\\d{4})$'\nfields = [\"range_mm\"]").unwrap(),
        );
        let writer = talk(master, &["+045.2 km/h\r\n"]);
        let mut out = Vec::new();
        let ok = probe_input_to(&cfg, None, Some(19_200), 1, &mut out)
            .await
            .unwrap();
        writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!ok, "{text}");
        assert!(text.contains("at 19200 baud"), "{text}");
        assert!(text.contains("lines: no_match: \"+045.2 km/h\""), "{text}");
        assert!(text.contains("lines did not match the pattern"), "{text}");
        // Modbus cannot be probed by listening; a broken lines table is said so.
        let modbus = SerialInputConfig::new("/dev/null", SerialProtocol::ModbusRtu);
        let e = probe_input_to(&modbus, None, None, 1, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("only answer requests"), "{e}");
        cfg.lines = None;
        let e = probe_input_to(&cfg, None, None, 1, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("key `protocol`"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_without_a_fix_is_recognised_and_said_so() {
        // AeroRust/nmea rmc.rs and gga.rs no-fix sentences.
        let (master, _slave, path) = pty();
        let writer = talk(
            master,
            &[
                "$GPRMC,,V,,,,,,,,,,N*53\r\n",
                "$GPGGA,,,,,,0,,,,,,,,*66\r\n",
            ],
        );
        let mut out = Vec::new();
        let ok = probe_to(path, Some(4800), ProbeProtocol::Nmea0183, 2, &mut out)
            .await
            .unwrap();
        writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(ok, "{text}");
        assert!(
            text.contains("OK: nmea0183 frames decode at 4800 baud"),
            "{text}"
        );
        assert!(text.contains("has no fix yet"), "{text}");
        assert!(text.contains(", no fix "), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silence_and_garbage_fail_with_an_explanation() {
        let (_master, _slave, path) = pty();
        let mut out = Vec::new();
        let ok = probe_to(path.clone(), Some(9600), ProbeProtocol::Sds011, 1, &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!ok);
        assert!(text.contains("FAILED: nothing at all arrived"), "{text}");

        let (mut master, _slave, path) = pty();
        std::thread::spawn(move || {
            use std::io::Write as _;
            for i in 0..20u8 {
                std::thread::sleep(Duration::from_millis(50));
                if master.write_all(&[i, 0x55, 0xf0, 0x42]).is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        let ok = probe_to(path, Some(9600), ProbeProtocol::Pms5003, 1, &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!ok);
        assert!(text.contains("bytes arrived on"), "{text}");
        assert!(text.contains("no frame decoded"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_port_is_an_error_that_says_what_to_check() {
        let err = probe_to(
            PathBuf::from("/dev/ttyDOESNOTEXIST9"),
            None,
            ProbeProtocol::Auto,
            1,
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot open /dev/ttyDOESNOTEXIST9"),
            "{err}"
        );
    }
}
