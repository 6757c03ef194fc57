//! A GNSS receiver on a city bus, printing NMEA 0183 sentences, with line faults.
//!
//! Why it exists: the gateway's `nmea0183` input must be shown, end to end, to store every fix
//! a receiver sent intact (with the fix's own UTC time to the millisecond) and nothing else —
//! not a corrupt sentence, not a torn one, not a position while the receiver has no fix. This
//! module produces such a receiver's byte stream deterministically from a seed, and says for
//! every fix what the store must show ([`Burst::stored`]) and what it must not
//! ([`Burst::rejected`]); `sensor-sim serial --protocol nmea0183` writes it to a pty and the
//! manifest.
//!
//! # What the receiver prints
//!
//! One burst per fix, at `--rate-hz` (10 Hz by default), in this order: `RMC`, `GGA`, then the
//! optional `VTG`, `GLL` and `GSA` (`--sentences`). Talker `GN` (multi-GNSS) or `GP`. Formats
//! as a u-blox receiver prints them (NMEA 0183 v4.1, gpsd's "NMEA 0183 Revealed"):
//!
//! ```text
//! $GNRMC,hhmmss.ss,A,ddmm.mmmmm,N,dddmm.mmmmm,E,knots,course,ddmmyy,,,A*hh
//! $GNGGA,hhmmss.ss,ddmm.mmmmm,N,dddmm.mmmmm,E,1,sats,hdop,alt,M,geoid,M,,*hh
//! $GNVTG,course,T,,M,knots,N,kmh,K,A*hh
//! $GNGLL,ddmm.mmmmm,N,dddmm.mmmmm,E,hhmmss.ss,A,A*hh
//! $GNGSA,A,3,prn…(12),pdop,hdop,vdop*hh
//! ```
//!
//! The bus drives a loop of five stops in Ho Chi Minh City's District 1 (accelerating at
//! 1 m/s², cruising near 32 km/h, braking into each stop and waiting there 8 s), so speed,
//! course and position change as on a real route. The VTG speed in km/h is the exact decimal of
//! knots × 1.852, so it equals the RMC's converted speed.
//!
//! # Faults (probability per sentence, `--faults`)
//!
//! - `checksum`: a digit of the sentence changed (never in its time field), or a digit of the
//!   checksum itself; the checksum no longer matches.
//! - `truncate`: the sentence cut short without a line end; the next sentence follows at once
//!   (a torn line). Never two in a row, so that each torn sentence is one `truncated` line.
//! - `noise`: 1–16 bytes of line noise (0x80–0xff) before the sentence, on a line of their
//!   own or glued to the sentence's start.
//! - `split`: an intact sentence written in two writes a few milliseconds apart (a USB adapter
//!   handing the reader half a line); not a fault the gateway may count.
//!
//! Line ends are `--line-ending` `crlf` (NMEA's own), `lf`, `cr`, or `mix` (each sentence one of
//! the three at random). `--no-fix FROM:COUNT` makes fixes `FROM..FROM+COUNT` a stretch without
//! a fix (RMC status `V`, GGA quality 0, VTG mode `N`, GLL status `V`). The first fix is always
//! sent clean, so that the gateway learns the date from its RMC.
//!
//! # What the gateway must store
//!
//! One point per fix at the fix's time, with the union of the fields of its intact sentences
//! (RMC: `lat`, `lon`, `speed_kmh`, `course_deg`; GGA: `lat`, `lon`, `fix_quality`,
//! `satellites`, `hdop`, `alt_m`; VTG: `course_deg`, `speed_kmh`; GLL: `lat`, `lon`). A VTG,
//! which has no time, is placed as the gateway places it (`ioc_decode::nmea0183`): at the fix
//! time of the intact RMC/GGA just before it, unless a sentence between them was faulted or
//! said "no fix", or an earlier VTG took that time; otherwise it must make no reading (a
//! `rejected` entry with fault `no_time`, counted in `ioc_gateway_serial_frames_total{result="no_time"}`).
//! [`ExpectedCounts`] says what the gateway's `ioc_gateway_serial_frames_total` and
//! `ioc_gateway_serial_frames_bad_total` must count for the stream.

use std::collections::BTreeMap;
use std::str::FromStr;

use thiserror::Error;

use crate::civil_time::format_rfc3339_ms;
use crate::rng::SimRng;
use crate::serial::probability_pairs;

/// Knots to km/h.
const KMH_PER_KNOT: f64 = 1.852;
/// Metres per degree of latitude (WGS-84, mean).
const M_PER_DEG_LAT: f64 = 110_574.0;

/// The bus stops of the route (lat, lon), driven in a loop.
const ROUTE: [(f64, f64); 5] = [
    (10.772_90, 106.698_10),
    (10.775_90, 106.700_80),
    (10.778_30, 106.703_90),
    (10.780_60, 106.702_00),
    (10.777_70, 106.697_80),
];

/// Probabilities, per sentence, of each fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NmeaFaults {
    /// A digit changed, the checksum kept.
    pub checksum: f64,
    /// Cut short without a line end.
    pub truncate: f64,
    /// Line noise before the sentence.
    pub noise: f64,
    /// Written in two pieces (not a fault for the gateway).
    pub split: f64,
}

/// Why a `--faults` value could not be read.
#[derive(Debug, Error, PartialEq)]
#[error("faults {0:?}: expected e.g. checksum=0.03,truncate=0.02,noise=0.02,split=0.1 (probabilities in [0, 1])")]
pub struct NmeaFaultsError(String);

impl FromStr for NmeaFaults {
    type Err = NmeaFaultsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || NmeaFaultsError(s.to_owned());
        let mut f = NmeaFaults::default();
        for (k, p) in probability_pairs(s).ok_or_else(err)? {
            match k {
                "checksum" => f.checksum = p,
                "truncate" => f.truncate = p,
                "noise" => f.noise = p,
                "split" => f.split = p,
                _ => return Err(err()),
            }
        }
        Ok(f)
    }
}

/// How lines end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// CR LF (NMEA 0183, Vaisala).
    CrLf,
    /// LF only.
    Lf,
    /// CR only.
    Cr,
    /// Each line one of the three at random.
    Mix,
}

impl FromStr for LineEnding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "crlf" => Ok(LineEnding::CrLf),
            "lf" => Ok(LineEnding::Lf),
            "cr" => Ok(LineEnding::Cr),
            "mix" => Ok(LineEnding::Mix),
            _ => Err(format!("line ending {s:?}: expected crlf, lf, cr or mix")),
        }
    }
}

impl LineEnding {
    /// The bytes of one line end (`Mix` draws one).
    pub fn bytes(self, rng: &mut SimRng) -> &'static [u8] {
        match self {
            LineEnding::CrLf => b"\r\n",
            LineEnding::Lf => b"\n",
            LineEnding::Cr => b"\r",
            LineEnding::Mix => [&b"\r\n"[..], b"\n", b"\r"][rng.below(3) as usize],
        }
    }
}

/// Which sentences a burst has beyond RMC and GGA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sentences {
    /// `VTG` (course and speed over ground).
    pub vtg: bool,
    /// `GLL` (position and time).
    pub gll: bool,
    /// `GSA` (DOP and active satellites: not read by the gateway, counted as skipped).
    pub gsa: bool,
}

impl FromStr for Sentences {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Sentences::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.to_ascii_lowercase().as_str() {
                "rmc" | "gga" => {}
                "vtg" => out.vtg = true,
                "gll" => out.gll = true,
                "gsa" => out.gsa = true,
                _ => {
                    return Err(format!(
                        "sentence {part:?}: expected rmc, gga, vtg, gll or gsa"
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// How the receiver is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverOptions {
    /// Two letters: `GN`, `GP`, …
    pub talker: String,
    /// Optional sentences.
    pub sentences: Sentences,
    /// Fault probabilities.
    pub faults: NmeaFaults,
    /// Line ends.
    pub line_ending: LineEnding,
    /// Fixes without a fix: `(first, count)`.
    pub no_fix: Option<(u64, u64)>,
    /// Time of the first fix, Unix ms.
    pub start_ms: i64,
    /// Time between fixes, ms.
    pub period_ms: i64,
}

/// What the gateway must count for a stream (`ioc_gateway_serial_frames_total{result}` and
/// `ioc_gateway_serial_frames_bad_total{reason}`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExpectedCounts {
    /// Sentences that made a reading (`result="ok"`).
    pub ok: u64,
    /// Valid sentences saying there is no fix (`result="no_fix"`).
    pub no_fix: u64,
    /// Valid sentences the gateway does not read (`result="skipped"`).
    pub skipped: u64,
    /// Valid VTG sentences the gateway cannot place at a fix time (`result="no_time"`).
    #[serde(default)]
    pub no_time: u64,
    /// `reason="checksum"`.
    pub checksum: u64,
    /// `reason="truncated"`.
    pub truncated: u64,
    /// `reason="noise"`.
    pub noise: u64,
}

impl ExpectedCounts {
    /// Adds another tally.
    pub fn add(&mut self, o: &ExpectedCounts) {
        self.ok += o.ok;
        self.no_fix += o.no_fix;
        self.skipped += o.skipped;
        self.no_time += o.no_time;
        self.checksum += o.checksum;
        self.truncated += o.truncated;
        self.noise += o.noise;
    }
}

/// A fault one sentence got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SentenceFault {
    /// Checksum no longer matches.
    Checksum,
    /// Cut short.
    Truncate,
    /// An intact VTG after faulted fix sentences: no fix time to put it at.
    NoTime,
}

/// One fix's bytes and what they mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Burst {
    /// Fix number, from 0.
    pub n: u64,
    /// The fix's UTC time, Unix ms.
    pub ts_ms: i64,
    /// Writes, in order; the writer pauses a few ms between two writes (a split sentence).
    pub writes: Vec<Vec<u8>>,
    /// The point the gateway must store at `ts_ms` (empty: none).
    pub stored: BTreeMap<String, f64>,
    /// Sentences with a fix that were faulted: what they would have carried.
    pub rejected: Vec<(SentenceFault, BTreeMap<String, f64>)>,
    /// The receiver had no fix.
    pub no_fix: bool,
    /// Injected faults by name (`checksum`, `truncate`, `noise`, `split`).
    pub faults: BTreeMap<&'static str, u64>,
    /// What the gateway must count for this burst.
    pub counts: ExpectedCounts,
}

/// The bus's motion along [`ROUTE`].
#[derive(Debug, Clone)]
struct Motion {
    lat: f64,
    lon: f64,
    /// Index of the stop being driven to.
    next: usize,
    speed_ms: f64,
    course_deg: f64,
    /// Seconds left waiting at a stop.
    dwell_s: f64,
    cruise_ms: f64,
}

impl Motion {
    fn new() -> Self {
        let (lat, lon) = ROUTE[0];
        let mut m = Motion {
            lat,
            lon,
            next: 1,
            speed_ms: 0.0,
            course_deg: 0.0,
            dwell_s: 2.0,
            cruise_ms: 9.0,
        };
        m.course_deg = m.bearing_to_next();
        m
    }

    fn offset_m(&self) -> (f64, f64) {
        let (lat, lon) = ROUTE[self.next];
        let m_per_deg_lon = 111_320.0 * self.lat.to_radians().cos();
        (
            (lat - self.lat) * M_PER_DEG_LAT,
            (lon - self.lon) * m_per_deg_lon,
        )
    }

    fn bearing_to_next(&self) -> f64 {
        let (north, east) = self.offset_m();
        east.atan2(north).to_degrees().rem_euclid(360.0)
    }

    fn step(&mut self, dt: f64, rng: &mut SimRng) {
        if self.dwell_s > 0.0 {
            self.dwell_s -= dt;
            self.speed_ms = 0.0;
            return;
        }
        let (north, east) = self.offset_m();
        let dist = north.hypot(east);
        // Brake so as to stop at the next stop (1.2 m/s²), else accelerate to cruise (1 m/s²).
        let brake = (2.0 * 1.2 * dist).sqrt();
        let target = self.cruise_ms.min(brake);
        self.speed_ms = if self.speed_ms < target {
            (self.speed_ms + 1.0 * dt).min(target)
        } else {
            target
        };
        self.cruise_ms = (self.cruise_ms + rng.normal() * 0.05).clamp(7.5, 10.0);
        let travel = self.speed_ms * dt;
        if travel >= dist || dist < 0.5 {
            let (lat, lon) = ROUTE[self.next];
            self.lat = lat;
            self.lon = lon;
            self.next = (self.next + 1) % ROUTE.len();
            self.speed_ms = 0.0;
            self.dwell_s = 8.0;
            self.course_deg = self.bearing_to_next();
            return;
        }
        self.course_deg = self.bearing_to_next();
        let m_per_deg_lon = 111_320.0 * self.lat.to_radians().cos();
        self.lat += north / dist * travel / M_PER_DEG_LAT;
        self.lon += east / dist * travel / m_per_deg_lon;
    }
}

/// A coordinate as NMEA prints it (`ddmm.mmmmm` / `dddmm.mmmmm`, hemisphere letter) and the
/// signed decimal degrees the gateway must read from that text.
fn coordinate(value: f64, deg_digits: usize, pos: char, neg: char) -> (String, char, f64) {
    let abs = value.abs();
    let mut deg = abs.trunc() as i64;
    let mut minutes_e5 = ((abs - deg as f64) * 60.0 * 1e5).round() as i64;
    if minutes_e5 >= 60 * 100_000 {
        deg += 1;
        minutes_e5 -= 60 * 100_000;
    }
    let text = format!(
        "{deg:0width$}{:02}.{:05}",
        minutes_e5 / 100_000,
        minutes_e5 % 100_000,
        width = deg_digits
    );
    let decimal = deg as f64 + (minutes_e5 as f64 / 1e5) / 60.0;
    if value < 0.0 {
        (text, neg, -decimal)
    } else {
        (text, pos, decimal)
    }
}

/// The NMEA checksum: XOR of the bytes between `$` and `*`.
pub fn checksum(body: &str) -> u8 {
    body.bytes().fold(0, |a, b| a ^ b)
}

/// `$body*hh` (no line end).
pub fn sentence(body: &str) -> String {
    format!("${body}*{:02X}", checksum(body))
}

/// `(hhmmss.ss or hhmmss.sss, ddmmyy)` of a Unix ms time.
fn nmea_time(ts_ms: i64) -> (String, String) {
    let t = format_rfc3339_ms(ts_ms); // YYYY-MM-DDTHH:MM:SS.mmmZ
    let b = t.as_bytes();
    if b.len() != 24 {
        return ("000000.00".into(), "010170".into());
    }
    let ms = &t[20..23];
    let frac = if ms.ends_with('0') { &ms[..2] } else { ms };
    (
        format!("{}{}{}.{frac}", &t[11..13], &t[14..16], &t[17..19]),
        format!("{}{}{}", &t[8..10], &t[5..7], &t[2..4]),
    )
}

/// One sentence before faults: its text and what it carries.
struct Planned {
    text: String,
    /// Fields when it is a fix sentence with a fix.
    fields: BTreeMap<String, f64>,
    /// Carries a time of its own (RMC, GGA, GLL).
    timed: bool,
    /// VTG.
    vtg: bool,
    /// No-fix sentence.
    no_fix: bool,
    /// Not read by the gateway (GSA).
    other: bool,
}

/// A deterministic GNSS receiver.
#[derive(Debug)]
pub struct GnssReceiver {
    opts: ReceiverOptions,
    rng: SimRng,
    fault_rng: SimRng,
    motion: Motion,
    sats: i64,
    hdop_tenths: i64,
    alt_dm: i64,
    n: u64,
    prev_torn: bool,
    /// The fix time the next VTG may take, as the gateway tracks it (see the module docs).
    vtg_time: Option<i64>,
    /// The fix time the last VTG took.
    vtg_taken: Option<i64>,
}

impl GnssReceiver {
    /// A receiver whose first fix is at `opts.start_ms`.
    pub fn new(seed: u64, opts: ReceiverOptions) -> Self {
        let mut rng = SimRng::new(seed);
        let sats = 9 + rng.below(4) as i64;
        GnssReceiver {
            opts,
            fault_rng: SimRng::new(seed ^ 0x0183_f00d),
            rng,
            motion: Motion::new(),
            sats,
            hdop_tenths: 9,
            alt_dm: 85,
            n: 0,
            prev_torn: false,
            vtg_time: None,
            vtg_taken: None,
        }
    }

    fn plan(&mut self, ts_ms: i64, no_fix: bool) -> Vec<Planned> {
        let t = &self.opts.talker;
        let (time, date) = nmea_time(ts_ms);
        let mut out = Vec::new();
        let s = self.opts.sentences;
        let planned = |text: String, fields: BTreeMap<String, f64>, timed, vtg, no_fix| Planned {
            text,
            fields,
            timed,
            vtg,
            no_fix,
            other: false,
        };
        if no_fix {
            out.push(planned(
                sentence(&format!("{t}RMC,{time},V,,,,,,,{date},,,N")),
                BTreeMap::new(),
                true,
                false,
                true,
            ));
            out.push(planned(
                sentence(&format!("{t}GGA,{time},,,,,0,00,99.99,,,,,,")),
                BTreeMap::new(),
                true,
                false,
                true,
            ));
            if s.vtg {
                out.push(planned(
                    sentence(&format!("{t}VTG,,T,,M,,N,,K,N")),
                    BTreeMap::new(),
                    false,
                    true,
                    true,
                ));
            }
            if s.gll {
                out.push(planned(
                    sentence(&format!("{t}GLL,,,,,{time},V,N")),
                    BTreeMap::new(),
                    true,
                    false,
                    true,
                ));
            }
            if s.gsa {
                out.push(Planned {
                    text: sentence(&format!("{t}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99")),
                    fields: BTreeMap::new(),
                    timed: false,
                    vtg: false,
                    no_fix: false,
                    other: true,
                });
            }
            return out;
        }
        let (lat_text, ns, lat) = coordinate(self.motion.lat, 2, 'N', 'S');
        let (lon_text, ew, lon) = coordinate(self.motion.lon, 3, 'E', 'W');
        let knots_tenths = (self.motion.speed_ms * 3.6 / KMH_PER_KNOT * 10.0).round() as i64;
        let knots_text = format!("{}.{}", knots_tenths / 10, knots_tenths % 10);
        let kmh_e4 = knots_tenths * 1852;
        let kmh_text = format!("{}.{:04}", kmh_e4 / 10_000, kmh_e4 % 10_000);
        let speed_kmh = knots_text.parse::<f64>().unwrap_or(0.0) * KMH_PER_KNOT;
        let course_text = format!("{:.1}", self.motion.course_deg);
        let course = course_text.parse::<f64>().unwrap_or(0.0);
        let hdop_text = format!("{}.{}", self.hdop_tenths / 10, self.hdop_tenths % 10);
        let alt_text = format!("{}.{}", self.alt_dm / 10, self.alt_dm % 10);
        let pos = || BTreeMap::from([("lat".to_string(), lat), ("lon".to_string(), lon)]);
        let mut rmc = pos();
        rmc.insert("speed_kmh".into(), speed_kmh);
        rmc.insert("course_deg".into(), course);
        out.push(planned(
            sentence(&format!(
                "{t}RMC,{time},A,{lat_text},{ns},{lon_text},{ew},{knots_text},{course_text},{date},,,A"
            )),
            rmc,
            true,
            false,
            false,
        ));
        let mut gga = pos();
        gga.insert("fix_quality".into(), 1.0);
        gga.insert("satellites".into(), self.sats as f64);
        gga.insert("hdop".into(), hdop_text.parse().unwrap_or(0.0));
        gga.insert("alt_m".into(), alt_text.parse().unwrap_or(0.0));
        out.push(planned(
            sentence(&format!(
                "{t}GGA,{time},{lat_text},{ns},{lon_text},{ew},1,{:02},{hdop_text},{alt_text},M,2.1,M,,",
                self.sats
            )),
            gga,
            true,
            false,
            false,
        ));
        if s.vtg {
            out.push(planned(
                sentence(&format!(
                    "{t}VTG,{course_text},T,,M,{knots_text},N,{kmh_text},K,A"
                )),
                BTreeMap::from([
                    ("course_deg".to_string(), course),
                    ("speed_kmh".to_string(), speed_kmh),
                ]),
                false,
                true,
                false,
            ));
        }
        if s.gll {
            out.push(planned(
                sentence(&format!(
                    "{t}GLL,{lat_text},{ns},{lon_text},{ew},{time},A,A"
                )),
                pos(),
                true,
                false,
                false,
            ));
        }
        if s.gsa {
            let prns: Vec<String> = (0..12)
                .map(|i| {
                    if i < self.sats.min(12) {
                        format!("{:02}", 2 + i * 3)
                    } else {
                        String::new()
                    }
                })
                .collect();
            out.push(Planned {
                text: sentence(&format!(
                    "{t}GSA,A,3,{},1.6,{hdop_text},1.3",
                    prns.join(",")
                )),
                fields: BTreeMap::new(),
                timed: false,
                vtg: false,
                no_fix: false,
                other: true,
            });
        }
        out
    }

    /// Changes one digit after the time field (or, when there is none, one checksum digit).
    fn corrupt(&mut self, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        let star = bytes
            .iter()
            .rposition(|&b| b == b'*')
            .unwrap_or(bytes.len());
        // Skip `$`, the address and the time (the first two fields).
        let after_time = bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b',')
            .nth(1)
            .map_or(star, |(i, _)| i);
        let digits: Vec<usize> = (after_time..star)
            .filter(|&i| bytes[i].is_ascii_digit())
            .collect();
        let rng = &mut self.fault_rng;
        if digits.is_empty() || rng.chance(0.2) {
            // A checksum digit, changed to another hex digit.
            let i = star + 1 + rng.below(2) as usize;
            if let Some(b) = bytes.get_mut(i) {
                let hex = b"0123456789ABCDEF";
                let pos = hex.iter().position(|h| h == b).unwrap_or(0);
                *b = hex[(pos + 1 + rng.below(15) as usize) % 16];
            }
        } else {
            let i = digits[rng.below(digits.len() as u64) as usize];
            let d = bytes[i] - b'0';
            bytes[i] = b'0' + (d + 1 + rng.below(9) as u8) % 10;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The next fix.
    pub fn next_burst(&mut self) -> Burst {
        let n = self.n;
        self.n += 1;
        let ts_ms = self.opts.start_ms + n as i64 * self.opts.period_ms;
        let no_fix = self
            .opts
            .no_fix
            .is_some_and(|(from, count)| n >= from && n < from.saturating_add(count));
        let planned = self.plan(ts_ms, no_fix);
        let clean = n == 0;
        let f = if clean {
            NmeaFaults::default()
        } else {
            self.opts.faults
        };
        let mut burst = Burst {
            n,
            ts_ms,
            writes: vec![Vec::new()],
            stored: BTreeMap::new(),
            rejected: Vec::new(),
            no_fix,
            faults: BTreeMap::new(),
            counts: ExpectedCounts::default(),
        };
        for p in planned {
            let rng = &mut self.fault_rng;
            let (noise, corrupt, torn, split) = (
                rng.chance(f.noise),
                rng.chance(f.checksum),
                rng.chance(f.truncate),
                rng.chance(f.split),
            );
            let torn = torn && !self.prev_torn;
            let corrupt = corrupt && !torn;
            let eol = self.opts.line_ending.bytes(rng);
            if noise && !self.prev_torn {
                let out = burst.writes.last_mut().expect("one write at least");
                for _ in 0..1 + rng.below(16) {
                    out.push(0x80 + rng.below(0x80) as u8);
                }
                // Glued to a sentence that is itself whole, or on a line of its own.
                if torn || rng.chance(0.5) {
                    out.extend_from_slice(self.opts.line_ending.bytes(rng));
                }
                burst.counts.noise += 1;
                *burst.faults.entry("noise").or_default() += 1;
            }
            let text = if corrupt {
                self.corrupt(&p.text)
            } else {
                p.text.clone()
            };
            let rng = &mut self.fault_rng;
            let mut bytes = text.into_bytes();
            if torn {
                let keep = 1 + rng.below((bytes.len() - 1) as u64) as usize;
                bytes.truncate(keep);
                burst.counts.truncated += 1;
                *burst.faults.entry("truncate").or_default() += 1;
            } else {
                bytes.extend_from_slice(eol);
            }
            self.prev_torn = torn;
            if corrupt {
                burst.counts.checksum += 1;
                *burst.faults.entry("checksum").or_default() += 1;
            }
            let faulted = match (corrupt, torn) {
                (true, _) => Some(SentenceFault::Checksum),
                (_, true) => Some(SentenceFault::Truncate),
                _ => None,
            };
            match faulted {
                Some(fault) => {
                    // It may have been the fix sentence of a following VTG.
                    self.vtg_time = None;
                    if !p.fields.is_empty() {
                        burst.rejected.push((fault, p.fields.clone()));
                    }
                }
                None if p.other => burst.counts.skipped += 1,
                None if p.no_fix => {
                    self.vtg_time = None;
                    burst.counts.no_fix += 1;
                }
                // The first burst is clean, so a fix time is always known before a VTG.
                None if p.vtg => match self.vtg_time.take() {
                    Some(t) => {
                        self.vtg_taken = Some(t);
                        burst.counts.ok += 1;
                        burst.stored.extend(p.fields.clone());
                    }
                    None => {
                        burst.counts.no_time += 1;
                        burst
                            .rejected
                            .push((SentenceFault::NoTime, p.fields.clone()));
                    }
                },
                None => {
                    if p.timed && self.vtg_taken != Some(ts_ms) {
                        self.vtg_time = Some(ts_ms);
                    }
                    burst.counts.ok += 1;
                    burst.stored.extend(p.fields.clone());
                }
            }
            let out = burst.writes.last_mut().expect("one write at least");
            if split && !torn && bytes.len() > 2 {
                let cut = 1 + rng.below((bytes.len() - 1) as u64) as usize;
                out.extend_from_slice(&bytes[..cut]);
                burst.writes.push(bytes[cut..].to_vec());
                *burst.faults.entry("split").or_default() += 1;
            } else {
                out.extend_from_slice(&bytes);
            }
        }
        burst.writes.retain(|w| !w.is_empty());
        self.step();
        burst
    }

    fn step(&mut self) {
        let dt = self.opts.period_ms as f64 / 1000.0;
        self.motion.step(dt, &mut self.rng);
        if self.rng.chance(0.02 * dt.max(0.1) * 10.0) {
            self.sats = (self.sats + if self.rng.chance(0.5) { 1 } else { -1 }).clamp(6, 16);
        }
        if self.rng.chance(0.05) {
            self.hdop_tenths =
                (self.hdop_tenths + if self.rng.chance(0.5) { 1 } else { -1 }).clamp(6, 20);
        }
        if self.rng.chance(0.1) {
            self.alt_dm = (self.alt_dm + if self.rng.chance(0.5) { 1 } else { -1 }).clamp(20, 200);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_decode::nmea0183::{parse_sentence, Sentence};

    fn options(faults: &str) -> ReceiverOptions {
        ReceiverOptions {
            talker: "GN".into(),
            sentences: "rmc,gga,vtg,gll,gsa".parse().unwrap(),
            faults: faults.parse().unwrap(),
            line_ending: LineEnding::Mix,
            no_fix: Some((30, 10)),
            start_ms: crate::civil_time::parse_rfc3339_ms("2026-11-24T23:59:50Z").unwrap(),
            period_ms: 100,
        }
    }

    /// The lines of a stream, split at CR/LF the way the gateway frames them.
    fn lines(bytes: &[u8]) -> Vec<&[u8]> {
        bytes
            .split(|&b| b == b'\r' || b == b'\n')
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn known_sentence_checksums() {
        // gpsd test data: a u-blox RMC with its checksum.
        assert_eq!(
            sentence("GPRMC,092751.000,A,5321.6802,N,00630.3371,W,0.06,31.66,280511,,,A"),
            "$GPRMC,092751.000,A,5321.6802,N,00630.3371,W,0.06,31.66,280511,,,A*45"
        );
        assert_eq!(
            nmea_time(crate::civil_time::parse_rfc3339_ms("2026-11-24T23:59:59.900Z").unwrap()),
            ("235959.90".to_string(), "241126".to_string())
        );
        assert_eq!(
            nmea_time(crate::civil_time::parse_rfc3339_ms("2026-11-24T01:02:03.125Z").unwrap()),
            ("010203.125".to_string(), "241126".to_string())
        );
        let (text, h, v) = coordinate(-33.5, 2, 'N', 'S');
        assert_eq!((text.as_str(), h, v), ("3330.00000", 'S', -33.5));
        let (text, h, _) = coordinate(106.999_999_999, 3, 'E', 'W');
        assert_eq!((text.as_str(), h), ("10700.00000", 'E'));
    }

    #[test]
    fn a_clean_stream_decodes_to_exactly_the_stored_fields() {
        let mut rx = GnssReceiver::new(7, options(""));
        let mut moved = false;
        for _ in 0..600 {
            let b = rx.next_burst();
            let bytes: Vec<u8> = b.writes.concat();
            let mut got: BTreeMap<String, f64> = BTreeMap::new();
            let mut no_fix = 0;
            for line in lines(&bytes) {
                match parse_sentence(line) {
                    (Ok(Sentence::Fix(fix)), None) => {
                        for (k, v) in fix.fields {
                            let v = match v {
                                ioc_model::FieldValue::Float(f) => f,
                                ioc_model::FieldValue::Int(i) => i as f64,
                                other => panic!("{other:?}"),
                            };
                            if let Some(old) = got.insert(k.to_string(), v) {
                                assert!((old - v).abs() < 1e-9, "{k}: {old} vs {v}");
                            }
                        }
                    }
                    (Ok(Sentence::NoFix), None) => no_fix += 1,
                    (Ok(Sentence::Other), None) => {}
                    other => panic!("{other:?} in {:?}", String::from_utf8_lossy(line)),
                }
            }
            assert_eq!(b.no_fix, no_fix > 0);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                b.stored.keys().collect::<Vec<_>>()
            );
            for (k, v) in &b.stored {
                assert!((got[k] - v).abs() < 1e-9, "{k}: {} vs {v}", got[k]);
            }
            moved |= b.stored.get("speed_kmh").is_some_and(|s| *s > 20.0);
            assert_eq!(b.counts.noise + b.counts.checksum + b.counts.truncated, 0);
        }
        assert!(moved, "the bus should get up to speed");
    }

    #[test]
    fn faults_are_counted_the_way_the_gateway_counts_them() {
        use ioc_decode::nmea0183::{NmeaDecoder, NmeaSpec};
        use ioc_decode::text_line::{BadLine, LineOutput};
        let mut rx = GnssReceiver::new(3, options("checksum=0.1,truncate=0.1,noise=0.1,split=0.2"));
        let mut decoder = NmeaDecoder::new(NmeaSpec::default(), 1024);
        let mut want = ExpectedCounts::default();
        let mut got = LineOutput::default();
        let mut stored: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
        let start = rx.opts.start_ms;
        for i in 0..400 {
            let b = rx.next_burst();
            want.add(&b.counts);
            if !b.stored.is_empty() {
                stored.insert(b.ts_ms, b.stored.clone());
            }
            for w in &b.writes {
                decoder.push(w, (start + i * 100 + 50) * 1_000_000, &mut got);
            }
        }
        decoder.flush(&mut got);
        let bad = |r: BadLine| got.bad.iter().filter(|b| **b == r).count() as u64;
        assert_eq!(
            (
                got.good,
                got.no_fix,
                got.skipped,
                got.no_time,
                bad(BadLine::Checksum),
                bad(BadLine::Truncated),
                bad(BadLine::Noise)
            ),
            (
                want.ok,
                want.no_fix,
                want.skipped,
                want.no_time,
                want.checksum,
                want.truncated,
                want.noise
            ),
            "{:?}",
            got.bad
        );
        assert_eq!(
            got.bad.len() as u64,
            want.checksum + want.truncated + want.noise
        );
        assert!(
            want.checksum > 50 && want.truncated > 50 && want.noise > 50 && want.no_time > 3,
            "{want:?}"
        );
        // Every reading lands on its fix's stored point, with a value it expects.
        let mut points: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
        for r in &got.readings {
            let ms = r.timestamp_ns / 1_000_000;
            assert_eq!(r.timestamp_ns % 1_000_000, 0);
            let want = stored
                .get(&ms)
                .unwrap_or_else(|| panic!("reading at {ms} not expected: {r:?}"));
            for (k, v) in &r.fields {
                let v = match v {
                    ioc_model::FieldValue::Float(f) => *f,
                    ioc_model::FieldValue::Int(i) => *i as f64,
                    other => panic!("{other:?}"),
                };
                assert!((want[k] - v).abs() < 1e-9, "{ms} {k}");
                points.entry(ms).or_default().insert(k.clone(), v);
            }
        }
        assert_eq!(points.len(), stored.len());
        for (ms, fields) in &stored {
            assert_eq!(
                points[ms].keys().collect::<Vec<_>>(),
                fields.keys().collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let run = |seed| {
            let mut rx = GnssReceiver::new(seed, options("checksum=0.1,truncate=0.1,noise=0.1"));
            (0..200)
                .flat_map(|_| rx.next_burst().writes.concat())
                .collect::<Vec<u8>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn option_parsing() {
        assert!("checksum=2".parse::<NmeaFaults>().is_err());
        assert!("colour=0.1".parse::<NmeaFaults>().is_err());
        assert_eq!("split=0.5".parse::<NmeaFaults>().unwrap().split, 0.5);
        assert!("rmc,gga,zda".parse::<Sentences>().is_err());
        assert!("tab".parse::<LineEnding>().is_err());
    }
}
