//! Instruments that print one reading per line of text, for the gateway's `protocol = "lines"`:
//! a water-level logger on a canal and a sound level meter on a square, with line faults.
//!
//! Why it exists: `lines` is read by a pattern from the config file, so the only way to show it
//! end to end is an instrument whose lines the example configs in `config/text-instruments.toml`
//! read, with the faults a real RS-232 line has, and a statement of exactly what a correctly
//! configured gateway must store and count. This module produces such an instrument's byte
//! stream deterministically from a seed and says, for every line, what the store must show
//! ([`LineBurst::entry`]) and what the gateway must count ([`LineCounts`]);
//! `sensor-sim serial --protocol lines --line-format level|noise` writes it to a pty and the
//! manifest.
//!
//! # The two instruments (`--line-format`)
//!
//! `level` — the canal water-level logger of the example `canal-level-3`: its own Unix time in
//! ms, the level in mm and the water temperature in °C, with an NMEA-style checksum (XOR of the
//! bytes between `$` and `*`); `-9999` when the ultrasonic head sees no echo:
//!
//! ```text
//! $LVL,1796292000000,1520.5,27.3*3C
//! ```
//!
//! `noise` — the class-1 sound level meter of the example `noise-hoan-kiem`: a CSV header at
//! power-up, then one line per second with its own local time (Asia/Ho_Chi_Minh, UTC+7, no
//! daylight saving), LAeq, LAFmax and LAFmin in dB and a status; `-99.9` (status `OVL`) for an
//! overloaded LAFmax:
//!
//! ```text
//! time,laeq_db,lafmax_db,lafmin_db,status
//! 2026-12-03 17:00:00,63.2,71.8,55.0,OK
//! ```
//!
//! The level logger prints a line every `step_ms` of its clock; the sound level meter logs one
//! line per second of its clock whatever the pace it is played at (faster than one a second: a
//! meter replaying its memory).
//!
//! # Faults (probability per line, `--faults`; the first line is always clean)
//!
//! - `checksum` (`level` only: the meter's lines carry none): a digit of the line or of its
//!   checksum changed; the gateway counts `serial_frames_bad_total{reason="checksum"}`.
//! - `truncate`: the line cut short without a line end, the next line right after it in the same
//!   write (a torn line). The gateway sees one line made of both, so both are lost and it counts
//!   one bad line: `checksum` for `level` (the cut is chosen so that the XOR never matches by
//!   chance), `no_match` for `noise` (the cut keeps at least one comma, so the line has too many
//!   columns). A torn last line is `truncated` once the port is idle. Never two in a row.
//! - `noise`: 1–16 bytes of line noise (0x80–0xff) on a line of their own, between two lines:
//!   `no_checksum` for `level` (no `*hh`), `no_match` for `noise`.
//! - `invalid`: the sensor's "no value" sentinel: `level` prints `-9999` for the level (and, one
//!   time in four, for the temperature too: nothing left, `result="no_values"`); `noise` prints
//!   `-99.9` for LAFmax. The gateway drops the sentinel (`drop_values`) and stores the rest.
//! - `split`: an intact line written in two writes a few milliseconds apart; not a fault the
//!   gateway may count.
//!
//! After a torn line, the next line gets no fault of its own (it is lost anyway), so that every
//! injected fault is exactly one count at the gateway. Line ends are `--line-ending` `crlf`,
//! `lf`, `cr` or `mix` (each line one of the three at random).

use std::collections::BTreeMap;
use std::str::FromStr;

use thiserror::Error;

use crate::civil_time::format_rfc3339_ms;
use crate::manifest::{Expect, FaultKind};
use crate::nmea::{checksum, LineEnding};
use crate::rng::SimRng;
use crate::serial::probability_pairs;

/// The sound level meter's offset from UTC (Asia/Ho_Chi_Minh: +07:00 all year).
pub const NOISE_METER_UTC_OFFSET_MS: i64 = 7 * 3_600_000;
/// The sound level meter's CSV header (the example config's `columns`).
pub const NOISE_METER_HEADER: &str = "time,laeq_db,lafmax_db,lafmin_db,status";

/// Which instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `$LVL,<unix ms>,<level mm>,<water °C>*hh`.
    Level,
    /// `YYYY-MM-DD HH:MM:SS,LAeq,LAFmax,LAFmin,status` in local time, after a header.
    Noise,
}

impl FromStr for LineFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "level" => Ok(LineFormat::Level),
            "noise" => Ok(LineFormat::Noise),
            _ => Err(format!(
                "line format {s:?}: expected level (a water-level logger, $LVL…*hh) or noise \
                 (a sound level meter, CSV)"
            )),
        }
    }
}

impl LineFormat {
    /// The measurement the example config gives the readings.
    pub fn measurement(self) -> &'static str {
        match self {
            LineFormat::Level => "water_level",
            LineFormat::Noise => "noise",
        }
    }

    /// Whether the lines carry a `*hh` checksum.
    pub fn has_checksum(self) -> bool {
        self == LineFormat::Level
    }
}

/// Probabilities, per line, of each fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LineFaults {
    /// A digit changed, the checksum kept (`level` only).
    pub checksum: f64,
    /// Cut short without a line end.
    pub truncate: f64,
    /// Line noise on a line of its own before the line.
    pub noise: f64,
    /// The sensor's "no value" sentinel.
    pub invalid: f64,
    /// Written in two pieces (not a fault for the gateway).
    pub split: f64,
}

/// Why a `--faults` value could not be read.
#[derive(Debug, Error, PartialEq)]
#[error("faults {0:?}: expected e.g. checksum=0.03,truncate=0.03,noise=0.03,invalid=0.05,split=0.1 (probabilities in [0, 1])")]
pub struct LineFaultsError(String);

impl FromStr for LineFaults {
    type Err = LineFaultsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LineFaultsError(s.to_owned());
        let mut f = LineFaults::default();
        for (k, p) in probability_pairs(s).ok_or_else(err)? {
            match k {
                "checksum" => f.checksum = p,
                "truncate" => f.truncate = p,
                "noise" => f.noise = p,
                "invalid" => f.invalid = p,
                "split" => f.split = p,
                _ => return Err(err()),
            }
        }
        Ok(f)
    }
}

/// How the instrument is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorOptions {
    pub format: LineFormat,
    pub faults: LineFaults,
    pub line_ending: LineEnding,
    /// Time of the first line, Unix ms (`noise`: rounded down to a whole second).
    pub start_ms: i64,
    /// `level`: time between lines on the logger's clock, ms (`noise`: always 1000).
    pub step_ms: i64,
}

/// Why options cannot be played.
#[derive(Debug, Error, PartialEq)]
pub enum SensorOptionsError {
    #[error("--faults checksum: the sound level meter's lines carry no checksum (only --line-format level has *hh)")]
    NoChecksum,
    #[error("the level logger's step must be at least 1 ms")]
    Step,
}

/// What the gateway must count for a stream: `serial_frames_total{result}` (`ok`, `skipped`,
/// `no_values`, `no_match`) and `serial_frames_bad_total{reason}` (`checksum`, `no_checksum`,
/// `truncated`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineCounts {
    pub ok: u64,
    /// The CSV header (`result="skipped"`).
    pub skipped: u64,
    pub no_values: u64,
    pub no_match: u64,
    pub checksum: u64,
    pub no_checksum: u64,
    pub truncated: u64,
}

impl LineCounts {
    /// Adds another tally.
    pub fn add(&mut self, o: &LineCounts) {
        self.ok += o.ok;
        self.skipped += o.skipped;
        self.no_values += o.no_values;
        self.no_match += o.no_match;
        self.checksum += o.checksum;
        self.no_checksum += o.no_checksum;
        self.truncated += o.truncated;
    }
}

/// One line's bytes and what they mean.
#[derive(Debug, Clone, PartialEq)]
pub struct LineBurst {
    /// Line number, from 0.
    pub n: u64,
    /// The line's own time, Unix ms.
    pub ts_ms: i64,
    /// Writes, in order (the writer pauses a few ms between two): a torn line before this one,
    /// noise, this line (held back for the next burst when it is torn itself).
    pub writes: Vec<Vec<u8>>,
    /// The manifest entry: `stored` with the fields the store must hold at `ts_ms`, or
    /// `rejected` with what the line would have carried.
    pub entry: (Expect, Option<FaultKind>, BTreeMap<String, f64>),
    /// Injected faults by name (`checksum`, `truncate`, `noise`, `invalid`, `split`).
    pub faults: BTreeMap<&'static str, u64>,
    /// What the gateway must count for the bytes of this burst.
    pub counts: LineCounts,
}

/// A deterministic line-printing instrument.
#[derive(Debug)]
pub struct LineSensor {
    opts: SensorOptions,
    rng: SimRng,
    fault_rng: SimRng,
    n: u64,
    /// A torn line not yet written: it goes out glued to the next line.
    torn: Option<Vec<u8>>,
    /// `level`: mm and °C; `noise`: LAeq in dB.
    a: f64,
    b: f64,
}

/// A one-decimal value as printed and as the gateway reads it back.
fn decimal(v: f64) -> (String, f64) {
    let text = format!("{v:.1}");
    let value = text.parse().unwrap_or(v);
    (text, value)
}

impl LineSensor {
    /// An instrument whose first line is at `opts.start_ms`.
    pub fn new(seed: u64, mut opts: SensorOptions) -> Result<Self, SensorOptionsError> {
        if !opts.format.has_checksum() && opts.faults.checksum > 0.0 {
            return Err(SensorOptionsError::NoChecksum);
        }
        match opts.format {
            LineFormat::Level if opts.step_ms < 1 => return Err(SensorOptionsError::Step),
            LineFormat::Level => {}
            LineFormat::Noise => {
                opts.start_ms = opts.start_ms.div_euclid(1000) * 1000;
                opts.step_ms = 1000;
            }
        }
        let mut rng = SimRng::new(seed);
        let (a, b) = match opts.format {
            LineFormat::Level => (rng.uniform(1300.0, 1700.0), rng.uniform(26.0, 29.0)),
            LineFormat::Noise => (rng.uniform(58.0, 68.0), 0.0),
        };
        Ok(LineSensor {
            opts,
            rng,
            fault_rng: SimRng::new(seed ^ 0x11e5_5e25),
            n: 0,
            torn: None,
            a,
            b,
        })
    }

    /// The line's text (no line end) and its fields as the gateway must store them.
    fn text(&mut self, ts_ms: i64, invalid: bool) -> (String, BTreeMap<String, f64>) {
        let rng = &mut self.rng;
        let mut fields = BTreeMap::new();
        match self.opts.format {
            LineFormat::Level => {
                // A canal: the level drifts (tide, rain) by a few mm per line.
                self.a = (self.a + rng.normal() * 1.5).clamp(600.0, 2600.0);
                self.b = (self.b + rng.normal() * 0.02).clamp(22.0, 33.0);
                let (level, level_v) = decimal(self.a);
                let (temp, temp_v) = decimal(self.b);
                let both = invalid && rng.chance(0.25);
                let level = if invalid {
                    "-9999".to_string()
                } else {
                    fields.insert("level_mm".to_string(), level_v);
                    level
                };
                let temp = if both {
                    "-9999".to_string()
                } else {
                    fields.insert("water_temp_c".to_string(), temp_v);
                    temp
                };
                let body = format!("LVL,{ts_ms},{level},{temp}");
                (format!("${body}*{:02X}", checksum(&body)), fields)
            }
            LineFormat::Noise => {
                // A square: traffic noise around 55–75 dB, a peak and a trough in each second.
                self.a = (self.a + rng.normal() * 0.8).clamp(50.0, 80.0);
                let (laeq, laeq_v) = decimal(self.a);
                let (max, max_v) = decimal(self.a + rng.uniform(2.0, 14.0));
                let (min, min_v) = decimal(self.a - rng.uniform(2.0, 9.0));
                fields.insert("laeq_db".to_string(), laeq_v);
                fields.insert("lafmin_db".to_string(), min_v);
                let (max, status) = if invalid {
                    ("-99.9".to_string(), "OVL")
                } else {
                    fields.insert("lafmax_db".to_string(), max_v);
                    (max, "OK")
                };
                let local = format_rfc3339_ms(ts_ms + NOISE_METER_UTC_OFFSET_MS);
                let time = local.get(..19).unwrap_or_default().replacen('T', " ", 1);
                (format!("{time},{laeq},{max},{min},{status}"), fields)
            }
        }
    }

    /// Changes one digit of the line (or, one time in five, of its checksum).
    fn corrupt(&mut self, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        let star = bytes
            .iter()
            .rposition(|&b| b == b'*')
            .unwrap_or(bytes.len());
        let digits: Vec<usize> = (0..star).filter(|&i| bytes[i].is_ascii_digit()).collect();
        let rng = &mut self.fault_rng;
        if digits.is_empty() || rng.chance(0.2) {
            let i = star + 1 + rng.below(2) as usize;
            if let Some(b) = bytes.get_mut(i) {
                let hex = b"0123456789ABCDEF";
                let pos = hex.iter().position(|h| h == b).unwrap_or(0);
                *b = hex[(pos + 1 + rng.below(15) as usize) % 16];
            }
        } else {
            let i = digits[rng.below(digits.len() as u64) as usize];
            bytes[i] = b'0' + (bytes[i] - b'0' + 1 + rng.below(9) as u8) % 10;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// How many bytes of a torn line to keep, so that the line it is glued to is certainly
    /// bad: `level`, the XOR of the kept bytes after `$`, plus the next line's `$`, is not 0
    /// (else the glued line's checksum would match); `noise`, at least one comma is kept.
    fn tear(&mut self, text: &[u8]) -> usize {
        let rng = &mut self.fault_rng;
        let len = text.len();
        match self.opts.format {
            LineFormat::Level => {
                let ok = |keep: usize| {
                    text.get(1..keep)
                        .is_some_and(|kept| kept.iter().fold(b'$', |a, b| a ^ b) != 0)
                };
                let mut keep = 1 + rng.below((len - 1) as u64) as usize;
                while !ok(keep) {
                    keep -= 1;
                }
                keep
            }
            LineFormat::Noise => {
                let first_comma = text.iter().position(|&b| b == b',').unwrap_or(0);
                first_comma + 1 + rng.below((len - first_comma - 1) as u64) as usize
            }
        }
    }

    /// The next line.
    pub fn next_line(&mut self) -> LineBurst {
        let n = self.n;
        self.n += 1;
        let ts_ms = self.opts.start_ms + n as i64 * self.opts.step_ms;
        let after_torn = self.torn.is_some();
        let f = if n == 0 || after_torn {
            LineFaults::default()
        } else {
            self.opts.faults
        };
        let rng = &mut self.fault_rng;
        let (noise, corrupt, torn, invalid, split) = (
            rng.chance(f.noise),
            rng.chance(f.checksum),
            rng.chance(f.truncate),
            rng.chance(f.invalid),
            rng.chance(f.split),
        );
        let corrupt = corrupt && !torn;
        let mut burst = LineBurst {
            n,
            ts_ms,
            writes: vec![Vec::new()],
            entry: (Expect::Stored, None, BTreeMap::new()),
            faults: BTreeMap::new(),
            counts: LineCounts::default(),
        };
        let count = |burst: &mut LineBurst, name: &'static str| {
            *burst.faults.entry(name).or_default() += 1;
        };
        if n == 0 && self.opts.format == LineFormat::Noise {
            // Power-up: the header first.
            let eol = self.opts.line_ending.bytes(&mut self.fault_rng);
            burst.writes[0].extend_from_slice(NOISE_METER_HEADER.as_bytes());
            burst.writes[0].extend_from_slice(eol);
            burst.counts.skipped += 1;
        }
        if let Some(prefix) = self.torn.take() {
            // The torn line and this one are one bad line at the gateway.
            burst.writes[0].extend_from_slice(&prefix);
            match self.opts.format {
                LineFormat::Level => burst.counts.checksum += 1,
                LineFormat::Noise => burst.counts.no_match += 1,
            }
        }
        if noise {
            let rng = &mut self.fault_rng;
            let out = &mut burst.writes[0];
            for _ in 0..1 + rng.below(16) {
                out.push(0x80 + rng.below(0x80) as u8);
            }
            out.extend_from_slice(self.opts.line_ending.bytes(rng));
            match self.opts.format {
                LineFormat::Level => burst.counts.no_checksum += 1,
                LineFormat::Noise => burst.counts.no_match += 1,
            }
            count(&mut burst, "noise");
        }
        let (text, fields) = self.text(ts_ms, invalid);
        if invalid {
            count(&mut burst, "invalid");
        }
        let text = if corrupt {
            count(&mut burst, "checksum");
            burst.counts.checksum += 1;
            self.corrupt(&text)
        } else {
            text
        };
        let mut bytes = text.into_bytes();
        burst.entry = if after_torn {
            (Expect::Rejected, Some(FaultKind::Truncate), fields)
        } else if corrupt {
            (Expect::Rejected, Some(FaultKind::Checksum), fields)
        } else if torn {
            (Expect::Rejected, Some(FaultKind::Truncate), fields)
        } else if fields.is_empty() {
            burst.counts.no_values += 1;
            (Expect::Rejected, Some(FaultKind::Invalid), fields)
        } else {
            burst.counts.ok += 1;
            let fault = invalid.then_some(FaultKind::Invalid);
            (Expect::Stored, fault, fields)
        };
        if torn {
            count(&mut burst, "truncate");
            let keep = self.tear(&bytes);
            bytes.truncate(keep);
            self.torn = Some(bytes);
        } else {
            let rng = &mut self.fault_rng;
            bytes.extend_from_slice(self.opts.line_ending.bytes(rng));
            let out = burst.writes.last_mut().expect("one write at least");
            if split && bytes.len() > 2 {
                let cut = 1 + rng.below((bytes.len() - 1) as u64) as usize;
                out.extend_from_slice(&bytes[..cut]);
                burst.writes.push(bytes[cut..].to_vec());
                count(&mut burst, "split");
            } else {
                out.extend_from_slice(&bytes);
            }
        }
        burst.writes.retain(|w| !w.is_empty());
        burst
    }

    /// The end of the stream: a torn last line, still held, goes out alone (the gateway counts
    /// it `truncated` once the port is idle).
    pub fn finish(&mut self) -> (Option<Vec<u8>>, LineCounts) {
        let mut counts = LineCounts::default();
        let torn = self.torn.take();
        if torn.is_some() {
            counts.truncated += 1;
        }
        (torn, counts)
    }
}

#[cfg(test)]
mod tests;
