//! `sensor-sim serial --protocol nmea0183 | vaisala | lines`: the text instruments on a pty
//! (part of the `sensor-sim` binary, not of the library).
//!
//! Why it exists: the byte streams come from the library's pure models
//! ([`sensor_sim::nmea::GnssReceiver`], [`sensor_sim::vaisala::WeatherStation`],
//! [`sensor_sim::line_sensor::LineSensor`]); this module
//! only paces them in real time, writes them to the pty (never blocking: bytes nobody reads are
//! dropped, as on a real line), answers the gateway's polls, and writes the manifest:
//!
//! - NMEA fixes carry their own time, so each fix is a `stored` entry at the fix's UTC time
//!   with the fields of its intact sentences; each faulted fix sentence a `rejected` entry with
//!   what it would have carried, a fix without a fix a `rejected` `no_fix` entry; the header
//!   says `exclusive`, so `verify` also counts any other point of the series as leaked.
//! - Vaisala messages are stamped by the gateway on receipt: `in_order` entries (sent time,
//!   values without the invalid ones, fault `invalid` / `noise`), `rejected_in_order` for torn
//!   and corrupt messages.
//! - `lines` instruments print their own time: a `stored` entry per intact line at that time
//!   (without its sentinel values), a `rejected` entry for a corrupt or torn line, the line glued
//!   to a torn one and a line of sentinels only; `exclusive`, as NMEA.
//!
//! All print, at the end, a JSON summary with `expect`: what the gateway's
//! `ioc_gateway_serial_frames_total{result}` / `ioc_gateway_serial_frames_bad_total{reason}` must have counted.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sensor_sim::line_sensor::{LineCounts, LineFormat, LineSensor, SensorOptions};
use sensor_sim::manifest::{Entry, Expect, FaultKind};
use sensor_sim::modbus_slave::unix_ms;
use sensor_sim::nmea::{
    ExpectedCounts, GnssReceiver, LineEnding, NmeaFaults, ReceiverOptions, SentenceFault,
};
use sensor_sim::serial::write_nonblocking;
use sensor_sim::vaisala::{MessageOutcome, StationFaults, StationModel, WeatherStation};

use super::{serial_pty, SerialArgs, SerialManifest};

/// Pause between the two writes of a split sentence.
const SPLIT_PAUSE: Duration = Duration::from_millis(5);

/// Totals of a text serial run.
#[derive(Debug, Default, serde::Serialize)]
struct TextSummary {
    /// Fixes (nmea0183) or messages (vaisala) sent.
    frames: u64,
    /// Commands read from the port (vaisala), answered or not.
    commands: u64,
    /// Commands the station did not answer.
    unanswered: u64,
    bytes: u64,
    dropped_bytes: u64,
    faults: BTreeMap<String, u64>,
    /// What the gateway must count.
    expect: ExpectedCounts,
}

fn parse_no_fix(text: Option<&str>) -> anyhow::Result<Option<(u64, u64)>> {
    let Some(t) = text else { return Ok(None) };
    let (from, count) = t
        .split_once(':')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .with_context(|| format!("--no-fix {t:?}: expected FROM:COUNT (fix numbers)"))?;
    Ok(Some((from, count)))
}

fn talker_ok(t: &str) -> bool {
    t.len() == 2 && t.bytes().all(|b| b.is_ascii_uppercase())
}

/// `--start`: `now` (the current whole second when streaming starts) or an RFC 3339 instant.
fn start_at(text: &str) -> anyhow::Result<impl Fn() -> i64> {
    let fixed = match text {
        "now" => None,
        text => Some(
            sensor_sim::civil_time::parse_rfc3339_ms(text)
                .map_err(|e| anyhow::anyhow!("--start: {e}"))?,
        ),
    };
    Ok(move || fixed.unwrap_or_else(|| unix_ms() / 1000 * 1000))
}

/// Totals of a `lines` run.
#[derive(Debug, Default, serde::Serialize)]
struct LinesSummary {
    /// Lines sent (the noise meter's header not counted).
    frames: u64,
    bytes: u64,
    dropped_bytes: u64,
    faults: BTreeMap<String, u64>,
    /// What the gateway must count.
    expect: LineCounts,
}

/// Plays a line-printing instrument (`--line-format level | noise`).
pub(super) fn lines_main(a: &SerialArgs) -> anyhow::Result<ExitCode> {
    let format: LineFormat = a
        .line_format
        .parse()
        .map_err(|e| anyhow::anyhow!("--line-format: {e}"))?;
    let rate = a.rate_hz.unwrap_or(1.0);
    if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
        bail!("--rate-hz must be in (0, 1000]");
    }
    let period_ms = ((1000.0 / rate).round() as i64).max(1);
    let start_ms = start_at(&a.start)?;
    let mut opts = SensorOptions {
        format,
        faults: a.faults.parse()?,
        line_ending: a
            .line_ending
            .parse::<LineEnding>()
            .map_err(|e| anyhow::anyhow!("--line-ending: {e}"))?,
        start_ms: 0,
        step_ms: period_ms,
    };
    // Refuse bad options before creating anything.
    LineSensor::new(a.seed, opts.clone())?;
    let mut record = SerialManifest::open(a, "lines", true)?;
    if let Some(id) = &a.sensor_id {
        record.tags.insert("sensor_id".into(), id.clone());
    }
    let measurement = a
        .measurement
        .clone()
        .unwrap_or_else(|| format.measurement().into());
    let limit = a.frames.unwrap_or(u64::MAX);
    let mut summary = LinesSummary::default();
    let tally = |summary: &mut LinesSummary, b: &sensor_sim::line_sensor::LineBurst| {
        summary.frames += 1;
        summary.expect.add(&b.counts);
        for (k, n) in &b.faults {
            *summary.faults.entry((*k).to_owned()).or_default() += n;
        }
    };
    if let Some(path) = &a.output {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        opts.start_ms = start_ms();
        let mut sensor = LineSensor::new(a.seed, opts)?;
        for _ in 0..limit.min(10_000_000) {
            let b = sensor.next_line();
            for w in &b.writes {
                out.write_all(w)?;
                summary.bytes += w.len() as u64;
            }
            tally(&mut summary, &b);
        }
        let (last, counts) = sensor.finish();
        if let Some(w) = last {
            out.write_all(&w)?;
            summary.bytes += w.len() as u64;
        }
        summary.expect.add(&counts);
        out.flush()?;
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pty = serial_pty(
        a,
        a.wait_reader || a.manifest.is_some(),
        serde_json::json!({ "line_format": a.line_format }),
    )?;
    opts.start_ms = start_ms();
    let mut sensor = LineSensor::new(a.seed, opts)?;
    let started = Instant::now();
    let period = Duration::from_millis(period_ms as u64);
    let write = |bytes: &[u8], summary: &mut LinesSummary| -> anyhow::Result<u64> {
        let written = write_nonblocking(&pty.master, bytes)?;
        summary.bytes += written as u64;
        let dropped = (bytes.len() - written) as u64;
        summary.dropped_bytes += dropped;
        Ok(dropped)
    };
    for n in 0..limit {
        let b = sensor.next_line();
        if let Some(wait) = period.mul_f64(n as f64).checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut dropped = 0u64;
        for (i, w) in b.writes.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(SPLIT_PAUSE);
            }
            dropped += write(w, &mut summary)?;
        }
        tally(&mut summary, &b);
        let (x, fault, fields) = b.entry;
        record.write(&Entry {
            m: measurement.clone(),
            t: record.tags.clone(),
            ts: b.ts_ms,
            f: fields,
            // Bytes nobody read: what the gateway made of this line is unknown.
            x: if dropped > 0 { Expect::Unchecked } else { x },
            fault,
            resent: false,
        })?;
    }
    let (last, counts) = sensor.finish();
    if let Some(w) = last {
        write(&w, &mut summary)?;
    }
    summary.expect.add(&counts);
    // Quiet before the pty closes, so that the gateway reads the last line (and counts a torn
    // last one once the line is idle).
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(l) = &a.link {
        let _ = std::fs::remove_file(l);
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// Plays a GNSS receiver.
pub(super) fn nmea_main(a: &SerialArgs) -> anyhow::Result<ExitCode> {
    let rate = a.rate_hz.unwrap_or(10.0);
    if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
        bail!("--rate-hz must be in (0, 1000]");
    }
    if !talker_ok(&a.talker) {
        bail!(
            "--talker {:?}: expected two capital letters (GN, GP, …)",
            a.talker
        );
    }
    let period_ms = ((1000.0 / rate).round() as i64).max(1);
    // `now`: the whole second when streaming starts (after the gateway opened the pty).
    let start_ms = start_at(&a.start)?;
    let mut opts = ReceiverOptions {
        talker: a.talker.clone(),
        sentences: a
            .sentences
            .parse()
            .map_err(|e| anyhow::anyhow!("--sentences: {e}"))?,
        faults: a.faults.parse::<NmeaFaults>()?,
        line_ending: a
            .line_ending
            .parse::<LineEnding>()
            .map_err(|e| anyhow::anyhow!("--line-ending: {e}"))?,
        no_fix: parse_no_fix(a.no_fix.as_deref())?,
        start_ms: 0,
        period_ms,
    };
    let mut record = SerialManifest::open(a, "nmea0183", true)?;
    record.tags.insert("talker".into(), a.talker.clone());
    if let Some(id) = &a.sensor_id {
        record.tags.insert("sensor_id".into(), id.clone());
    }
    let measurement = a.measurement.clone().unwrap_or_else(|| "gnss".into());
    let limit = a.frames.unwrap_or(u64::MAX);
    let mut summary = TextSummary::default();
    let tally = |summary: &mut TextSummary, b: &sensor_sim::nmea::Burst| {
        summary.frames += 1;
        summary.expect.add(&b.counts);
        for (k, n) in &b.faults {
            *summary.faults.entry((*k).to_owned()).or_default() += n;
        }
    };
    if let Some(path) = &a.output {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        opts.start_ms = start_ms();
        let mut rx = GnssReceiver::new(a.seed, opts);
        for _ in 0..limit.min(10_000_000) {
            let b = rx.next_burst();
            for w in &b.writes {
                out.write_all(w)?;
                summary.bytes += w.len() as u64;
            }
            tally(&mut summary, &b);
        }
        out.flush()?;
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pty = serial_pty(
        a,
        a.wait_reader || a.manifest.is_some(),
        serde_json::json!({}),
    )?;
    opts.start_ms = start_ms();
    let mut rx = GnssReceiver::new(a.seed, opts);
    let started = Instant::now();
    let period = Duration::from_millis(period_ms as u64);
    for n in 0..limit {
        let b = rx.next_burst();
        // Fix n goes out at its own time (relative to the first).
        if let Some(wait) = period.mul_f64(n as f64).checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut dropped = 0u64;
        for (i, w) in b.writes.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(SPLIT_PAUSE);
            }
            let written = write_nonblocking(&pty.master, w)?;
            summary.bytes += written as u64;
            dropped += (w.len() - written) as u64;
        }
        summary.dropped_bytes += dropped;
        tally(&mut summary, &b);
        // Bytes nobody read: what the gateway made of this burst is unknown.
        let sure = |x: Expect| if dropped > 0 { Expect::Unchecked } else { x };
        let tags = record.tags.clone();
        let entry = |x, fault, f| Entry {
            m: measurement.clone(),
            t: tags.clone(),
            ts: b.ts_ms,
            f,
            x,
            fault,
            resent: false,
        };
        if !b.stored.is_empty() {
            record.write(&entry(sure(Expect::Stored), None, b.stored.clone()))?;
        }
        for (fault, fields) in &b.rejected {
            let kind = match fault {
                SentenceFault::Checksum => FaultKind::Checksum,
                SentenceFault::Truncate => FaultKind::Truncate,
                SentenceFault::NoTime => FaultKind::NoTime,
            };
            record.write(&entry(sure(Expect::Rejected), Some(kind), fields.clone()))?;
        }
        if b.no_fix {
            record.write(&entry(
                sure(Expect::Rejected),
                Some(FaultKind::NoFix),
                BTreeMap::new(),
            ))?;
        }
    }
    // The receiver goes quiet before the pty closes, so the gateway reads the last sentences
    // (and counts a torn last one once the line is idle).
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(l) = &a.link {
        let _ = std::fs::remove_file(l);
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// Waits up to `timeout` for bytes from the gateway; reads what there is.
fn read_some(fd: &std::os::fd::OwnedFd, timeout: Duration, buf: &mut [u8]) -> usize {
    let mut pfd = nix::libc::pollfd {
        fd: fd.as_raw_fd(),
        events: nix::libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(1000) as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { nix::libc::poll(&mut pfd, 1, ms) };
    if n <= 0 || pfd.revents & nix::libc::POLLIN == 0 {
        if pfd.revents & nix::libc::POLLHUP != 0 {
            // Nobody has the terminal open: don't spin.
            std::thread::sleep(timeout.min(Duration::from_millis(50)));
        }
        return 0;
    }
    nix::unistd::read(fd, buf).unwrap_or(0)
}

/// Plays a weather station.
pub(super) fn vaisala_main(a: &SerialArgs) -> anyhow::Result<ExitCode> {
    let model: StationModel = a
        .station
        .parse()
        .map_err(|e| anyhow::anyhow!("--station: {e}"))?;
    let faults: StationFaults = a.faults.parse()?;
    let line_ending: LineEnding = a
        .line_ending
        .parse()
        .map_err(|e| anyhow::anyhow!("--line-ending: {e}"))?;
    if !a.address.is_ascii_alphanumeric() {
        bail!("--address {:?}: expected one letter or digit", a.address);
    }
    if a.interval_ms == Some(0) {
        bail!("--interval-ms must be > 0");
    }
    if a.output.is_some() {
        bail!("--output: a weather station answers polls, it needs a pty");
    }
    let mut station = WeatherStation::new(model, a.seed, a.address, faults, line_ending);
    let mut record = SerialManifest::open(a, "vaisala", false)?;
    if let Some(id) = &a.sensor_id {
        record.tags.insert("sensor_id".into(), id.clone());
    }
    let measurement = a.measurement.clone().unwrap_or_else(|| "weather".into());
    let pty = serial_pty(
        a,
        a.wait_reader || a.manifest.is_some(),
        serde_json::json!({ "station": a.station }),
    )?;
    let limit = a.frames.unwrap_or(u64::MAX);
    let interval = a.interval_ms.map(Duration::from_millis);
    let mut next_auto = interval.map(|i| Instant::now() + i);
    let mut summary = TextSummary::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 512];
    let send = |m: sensor_sim::vaisala::Message,
                summary: &mut TextSummary,
                record: &mut SerialManifest|
     -> anyhow::Result<()> {
        let sent_ms = unix_ms();
        let written = write_nonblocking(&pty.master, &m.bytes)?;
        summary.bytes += written as u64;
        summary.dropped_bytes += (m.bytes.len() - written) as u64;
        if m.kind == "?" {
            return Ok(());
        }
        summary.frames += 1;
        summary.expect.add(&m.counts);
        for f in &m.faults {
            *summary.faults.entry((*f).to_owned()).or_default() += 1;
        }
        let fault = if m.faults.contains(&"truncate") {
            Some(FaultKind::Truncate)
        } else if m.faults.contains(&"checksum") {
            Some(FaultKind::Checksum)
        } else if m.has_invalid() {
            Some(FaultKind::Invalid)
        } else if m.faults.contains(&"noise") {
            Some(FaultKind::Noise)
        } else {
            None
        };
        let x = match m.outcome {
            _ if written < m.bytes.len() => Expect::MaybeInOrder,
            MessageOutcome::Stored => Expect::InOrder,
            MessageOutcome::Rejected => Expect::RejectedInOrder,
        };
        record.write(&Entry {
            m: measurement.clone(),
            t: record.tags.clone(),
            ts: sent_ms,
            f: m.fields,
            x,
            fault,
            resent: false,
        })?;
        Ok(())
    };
    while summary.frames < limit {
        let wait = next_auto.map_or(Duration::from_millis(100), |t| {
            t.saturating_duration_since(Instant::now())
        });
        let n = read_some(&pty.master, wait, &mut buf);
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let command = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if command.trim().is_empty() {
                continue;
            }
            summary.commands += 1;
            match station.answer(&command) {
                Some(m) if summary.frames < limit => send(m, &mut summary, &mut record)?,
                Some(_) => {}
                None => summary.unanswered += 1,
            }
        }
        // A command never ends: keep the buffer bounded.
        if pending.len() > 256 {
            pending.clear();
        }
        if let (Some(at), Some(every)) = (next_auto, interval) {
            if Instant::now() >= at && summary.frames < limit {
                send(station.automatic(), &mut summary, &mut record)?;
                next_auto = Some(at + every);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(l) = &a.link {
        let _ = std::fs::remove_file(l);
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}
