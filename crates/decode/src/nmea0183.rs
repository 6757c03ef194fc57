//! NMEA 0183 position sentences (GNSS receivers on buses, refuse trucks, patrol cars): GGA, RMC,
//! VTG and GLL from any talker, checksums verified, turned into `gnss` readings.
//!
//! Why it exists: a GNSS receiver prints a burst of ASCII sentences per fix; the gateway needs the
//! position, speed and fix quality with the fix's own time, and must never store a position the
//! receiver itself marks invalid.
//!
//! # Sentences (NMEA 0183 v2.3/v4.1; field layouts as in gpsd's "NMEA 0183 Revealed")
//!
//! `$` + talker (2 letters: `GP` GPS, `GN` multi-GNSS, `GL` GLONASS, `GA` Galileo, `BD`/`GB`
//! BeiDou, …) + type (3 letters) + `,`-separated fields + `*` + two hex digits: the XOR of the
//! bytes between `$` and `*` ([`ioc_frames::text`]). A sentence without a checksum, or with a
//! wrong one, is bad (`no_checksum`, `checksum`). Sentences of other types (GSV, GSA, ZDA, …),
//! proprietary `$P…` sentences and AIS `!` sentences with a valid checksum are *skipped*, not
//! errors.
//!
//! | sentence | fields read | field names |
//! |---|---|---|
//! | GGA | time, lat, N/S, lon, E/W, quality, satellites, HDOP, altitude (M) | `lat`, `lon`, `fix_quality`, `satellites`, `hdop`, `alt_m` |
//! | RMC | time, status, lat, N/S, lon, E/W, speed (knots), course (true), date | `lat`, `lon`, `speed_kmh`, `course_deg` |
//! | VTG | course (true), speed (km/h, else knots), mode | `course_deg`, `speed_kmh` |
//! | GLL | lat, N/S, lon, E/W, time, status | `lat`, `lon` |
//!
//! `lat`/`lon` are signed decimal degrees (south and west negative), converted from `ddmm.mmmm`.
//! Tag `talker`. Measurement `gnss` unless the port says otherwise.
//!
//! # No fix
//!
//! RMC or GLL with status `V`, GGA with quality 0, VTG with mode `N` or without values: the
//! receiver has no fix, and the sentence makes **no** reading (counted as `no_fix`), never a 0,0
//! point. A sentence that claims a fix but has no latitude/longitude is `malformed`.
//!
//! # Time
//!
//! Each reading carries the fix's own UTC time. RMC carries date and time; GGA and GLL carry only
//! the time of day, combined with the last date an RMC (with a fix) gave, moved a day forward when
//! that would put it more than 12 h before the previous fix (midnight passed). Before any date is
//! known, the time of day is put on the UTC day that brings it nearest the receipt time. Two-digit
//! years are 1980–2079.
//!
//! VTG has no time of its own: it belongs to the fix whose RMC/GGA came just before it (receivers
//! print a fix's RMC and GGA before its VTG: u-blox, SiRF, MediaTek). It takes that fix's time
//! only when
//!
//! 1. the fix sentence was received at most [`SAME_BURST_NS`] before it,
//! 2. no line was rejected after that fix sentence (bad checksum, torn, malformed, too long)
//!    and no sentence said "no fix" — either could have been this VTG's own fix, and
//! 3. no other VTG took that fix time already (a fix has one VTG; sentences can also vanish
//!    without a trace, when a serial buffer overruns).
//!
//! Otherwise the VTG makes **no** reading and is counted as `no_time`: at 10 fixes a second, a
//! fix whose RMC and GGA were both corrupt would otherwise lend its speed to the previous fix's
//! point, a wrong speed at a real time. Only a receiver that has printed no timed fix sentence
//! at all since the port opened (a VTG-only configuration) gets its VTGs stamped on receipt.
//! An RMC, GGA or GLL with an empty time field is placed as a VTG is.

use std::collections::BTreeMap;

use ioc_frames::text;
use ioc_model::{FieldValue, Reading};

use crate::text_line::{parse_decimal, BadLine, Framed, LineFramer, LineOutput};

/// A VTG takes the time of a fix received at most this long before it.
pub const SAME_BURST_NS: i64 = 1_000_000_000;
const DAY_NS: i64 = 86_400 * 1_000_000_000;
const HALF_DAY_NS: i64 = DAY_NS / 2;
/// Knots to km/h (1 knot = 1.852 km/h exactly).
const KMH_PER_KNOT: f64 = 1.852;

/// What a port configures for its NMEA readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NmeaSpec {
    /// `gnss` when `None`.
    pub measurement: Option<String>,
    pub sensor_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// What one checked sentence says.
#[derive(Debug, Clone, PartialEq)]
pub enum Sentence {
    /// A position-carrying sentence with a fix.
    Fix(Fix),
    /// The receiver says it has no fix.
    NoFix,
    /// A valid sentence of a type not read here.
    Other,
}

/// The values of one sentence with a fix.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fix {
    pub talker: String,
    /// `GGA`, `RMC`, `VTG` or `GLL`.
    pub kind: &'static str,
    /// Nanoseconds since midnight UTC, when the sentence has a time.
    pub time_of_day_ns: Option<i64>,
    /// Days since the Unix epoch, when the sentence has a date (RMC).
    pub date_days: Option<i64>,
    pub fields: BTreeMap<&'static str, FieldValue>,
}

/// Checks one line as an NMEA sentence and reads it (pure; no time rules).
///
/// The line may carry garbage before the sentence (a torn previous sentence): decoding starts at
/// the last `$` or `!`, and the bytes before it count as [`BadLine::Truncated`] (returned in the
/// second value) when they hold a start character, as [`BadLine::Noise`] otherwise.
pub fn parse_sentence(line: &[u8]) -> (Result<Sentence, BadLine>, Option<BadLine>) {
    let Some(start) = line.iter().rposition(|&b| b == b'$' || b == b'!') else {
        return (Err(BadLine::Noise), None);
    };
    let prefix = &line[..start];
    let before = if prefix.is_empty() {
        None
    } else if prefix.iter().any(|&b| b == b'$' || b == b'!') {
        Some(BadLine::Truncated)
    } else if prefix.iter().all(|b| b.is_ascii_whitespace()) {
        None
    } else {
        Some(BadLine::Noise)
    };
    (parse_framed(&line[start..]), before)
}

fn parse_framed(sentence: &[u8]) -> Result<Sentence, BadLine> {
    let body_and_sum = &sentence[1..];
    let Some(star) = body_and_sum.iter().rposition(|&b| b == b'*') else {
        return Err(BadLine::NoChecksum);
    };
    let body = &body_and_sum[..star];
    let digits = body_and_sum[star + 1..].trim_ascii_end();
    let Some(sum) = text::parse_hex2(digits) else {
        return Err(if digits.is_empty() {
            BadLine::NoChecksum
        } else {
            BadLine::Malformed
        });
    };
    if text::nmea_checksum(body) != sum {
        return Err(BadLine::Checksum);
    }
    if !body.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(BadLine::Malformed);
    }
    if sentence[0] == b'!' || body.first() == Some(&b'P') {
        return Ok(Sentence::Other);
    }
    let address = body.split(|&b| b == b',').next().unwrap_or_default();
    if address.len() != 5 || !address.iter().all(u8::is_ascii_alphanumeric) {
        return Err(BadLine::Malformed);
    }
    let talker = String::from_utf8_lossy(&address[..2]).into_owned();
    let fields: Vec<&[u8]> = body.split(|&b| b == b',').skip(1).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or_default();
    match &address[2..] {
        b"GGA" => parse_gga(talker, &field),
        b"RMC" => parse_rmc(talker, &field),
        b"VTG" => parse_vtg(talker, &field),
        b"GLL" => parse_gll(talker, &field),
        _ => Ok(Sentence::Other),
    }
}

type FieldAt<'a> = dyn Fn(usize) -> &'a [u8] + 'a;

fn optional_number(text: &[u8]) -> Result<Option<f64>, BadLine> {
    if text.is_empty() {
        return Ok(None);
    }
    parse_decimal(text).map(Some).ok_or(BadLine::Malformed)
}

/// `ddmm.mmmm` (latitude, `deg_digits` 2) or `dddmm.mmmm` (longitude, 3) and its hemisphere.
fn coordinate(value: &[u8], hemisphere: &[u8], deg_digits: usize) -> Result<f64, BadLine> {
    let dot = value.iter().position(|&b| b == b'.').unwrap_or(value.len());
    if dot != deg_digits + 2 {
        return Err(BadLine::Malformed);
    }
    let degrees = parse_decimal(&value[..deg_digits]).ok_or(BadLine::Malformed)?;
    let minutes = parse_decimal(&value[deg_digits..]).ok_or(BadLine::Malformed)?;
    let limit = if deg_digits == 2 { 90.0 } else { 180.0 };
    let abs = degrees + minutes / 60.0;
    if minutes >= 60.0 || abs > limit {
        return Err(BadLine::Malformed);
    }
    match hemisphere {
        b"N" | b"E" => Ok(abs),
        b"S" | b"W" => Ok(-abs),
        _ => Err(BadLine::Malformed),
    }
}

fn position(
    fields: &mut BTreeMap<&'static str, FieldValue>,
    f: &FieldAt<'_>,
    at: usize,
) -> Result<(), BadLine> {
    let lat = coordinate(f(at), f(at + 1), 2)?;
    let lon = coordinate(f(at + 2), f(at + 3), 3)?;
    fields.insert("lat", FieldValue::Float(lat));
    fields.insert("lon", FieldValue::Float(lon));
    Ok(())
}

/// `hhmmss` or `hhmmss.s…` as nanoseconds since midnight; `None` when empty.
fn time_of_day(text: &[u8]) -> Result<Option<i64>, BadLine> {
    if text.is_empty() {
        return Ok(None);
    }
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &b""[..]),
    };
    if whole.len() != 6
        || !whole.iter().all(u8::is_ascii_digit)
        || fraction.len() > 9
        || !fraction.iter().all(u8::is_ascii_digit)
    {
        return Err(BadLine::Malformed);
    }
    let two = |i: usize| i64::from(whole[i] - b'0') * 10 + i64::from(whole[i + 1] - b'0');
    let (h, m, s) = (two(0), two(2), two(4));
    // 60: a leap second.
    if h > 23 || m > 59 || s > 60 {
        return Err(BadLine::Malformed);
    }
    let mut nanos = 0i64;
    for i in 0..9 {
        nanos = nanos * 10 + fraction.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Ok(Some(((h * 60 + m) * 60 + s) * 1_000_000_000 + nanos))
}

/// `ddmmyy` as days since the Unix epoch.
fn date(text: &[u8]) -> Result<i64, BadLine> {
    if text.len() != 6 || !text.iter().all(u8::is_ascii_digit) {
        return Err(BadLine::Malformed);
    }
    let two = |i: usize| i32::from(text[i] - b'0') * 10 + i32::from(text[i + 1] - b'0');
    let yy = two(4);
    let year = if yy >= 80 { 1900 + yy } else { 2000 + yy };
    let month = i8::try_from(two(2)).map_err(|_| BadLine::Malformed)?;
    let day = i8::try_from(two(0)).map_err(|_| BadLine::Malformed)?;
    let year = i16::try_from(year).map_err(|_| BadLine::Malformed)?;
    let d = jiff::civil::Date::new(year, month, day).map_err(|_| BadLine::Malformed)?;
    let epoch = jiff::civil::date(1970, 1, 1);
    let days = epoch.until(d).map_err(|_| BadLine::Malformed)?.get_days();
    Ok(i64::from(days))
}

fn parse_gga(talker: String, f: &FieldAt<'_>) -> Result<Sentence, BadLine> {
    let quality = f(5);
    if quality.is_empty() || quality == b"0" {
        return Ok(Sentence::NoFix);
    }
    let quality: i64 = std::str::from_utf8(quality)
        .ok()
        .and_then(|q| q.parse().ok())
        .ok_or(BadLine::Malformed)?;
    let mut fields = BTreeMap::new();
    position(&mut fields, f, 1)?;
    fields.insert("fix_quality", FieldValue::Int(quality));
    if let Some(n) = optional_number(f(6))? {
        fields.insert("satellites", FieldValue::Int(n as i64));
    }
    if let Some(h) = optional_number(f(7))? {
        fields.insert("hdop", FieldValue::Float(h));
    }
    if let Some(alt) = optional_number(f(8))? {
        if !f(9).is_empty() && f(9) != b"M" {
            return Err(BadLine::Malformed);
        }
        fields.insert("alt_m", FieldValue::Float(alt));
    }
    Ok(Sentence::Fix(Fix {
        talker,
        kind: "GGA",
        time_of_day_ns: time_of_day(f(0))?,
        date_days: None,
        fields,
    }))
}

fn parse_rmc(talker: String, f: &FieldAt<'_>) -> Result<Sentence, BadLine> {
    match f(1) {
        b"A" => {}
        b"V" | b"" => return Ok(Sentence::NoFix),
        _ => return Err(BadLine::Malformed),
    }
    // NMEA 2.3 mode indicator: N = data not valid.
    if f(11) == b"N" {
        return Ok(Sentence::NoFix);
    }
    let mut fields = BTreeMap::new();
    position(&mut fields, f, 2)?;
    if let Some(knots) = optional_number(f(6))? {
        fields.insert("speed_kmh", FieldValue::Float(knots * KMH_PER_KNOT));
    }
    if let Some(course) = optional_number(f(7))? {
        fields.insert("course_deg", FieldValue::Float(course));
    }
    let date_days = if f(8).is_empty() {
        None
    } else {
        Some(date(f(8))?)
    };
    Ok(Sentence::Fix(Fix {
        talker,
        kind: "RMC",
        time_of_day_ns: time_of_day(f(0))?,
        date_days,
        fields,
    }))
}

fn parse_vtg(talker: String, f: &FieldAt<'_>) -> Result<Sentence, BadLine> {
    // Old form without unit letters: course, course magnetic, knots, km/h.
    let old = !f(1).is_empty() && f(1) != b"T";
    let (course, knots, kmh, mode) = if old {
        (f(0), f(2), f(3), &b""[..])
    } else {
        (f(0), f(4), f(6), f(8))
    };
    if mode == b"N" {
        return Ok(Sentence::NoFix);
    }
    let mut fields = BTreeMap::new();
    if let Some(c) = optional_number(course)? {
        fields.insert("course_deg", FieldValue::Float(c));
    }
    let speed = match optional_number(kmh)? {
        Some(v) => Some(v),
        None => optional_number(knots)?.map(|k| k * KMH_PER_KNOT),
    };
    if let Some(s) = speed {
        fields.insert("speed_kmh", FieldValue::Float(s));
    }
    if fields.is_empty() {
        return Ok(Sentence::NoFix);
    }
    Ok(Sentence::Fix(Fix {
        talker,
        kind: "VTG",
        time_of_day_ns: None,
        date_days: None,
        fields,
    }))
}

fn parse_gll(talker: String, f: &FieldAt<'_>) -> Result<Sentence, BadLine> {
    // Status (field 6) exists since NMEA 2.0; without it the position stands if present.
    match f(5) {
        b"A" => {}
        b"V" => return Ok(Sentence::NoFix),
        b"" if f(0).is_empty() => return Ok(Sentence::NoFix),
        b"" => {}
        _ => return Err(BadLine::Malformed),
    }
    if f(6) == b"N" {
        return Ok(Sentence::NoFix);
    }
    let mut fields = BTreeMap::new();
    position(&mut fields, f, 0)?;
    Ok(Sentence::Fix(Fix {
        talker,
        kind: "GLL",
        time_of_day_ns: time_of_day(f(4))?,
        date_days: None,
        fields,
    }))
}

/// The streaming NMEA decoder of one port: frames lines, checks sentences, applies the time
/// rules (see the module docs) and makes readings.
#[derive(Debug, Clone)]
pub struct NmeaDecoder {
    framer: LineFramer,
    spec: NmeaSpec,
    /// Days since the epoch of the last date seen (RMC with a fix).
    last_date: Option<i64>,
    /// The last fix time given to a reading, and when its sentence was received.
    last_fix: Option<(i64, i64)>,
    /// The fix time a VTG may take (rules 1–3 of the module docs) and when its sentence was
    /// received; cleared by a rejected line, a no-fix sentence or a VTG taking it.
    vtg_time: Option<(i64, i64)>,
    /// The fix time the last VTG took.
    vtg_taken: Option<i64>,
}

impl NmeaDecoder {
    pub fn new(spec: NmeaSpec, max_line_bytes: usize) -> Self {
        NmeaDecoder {
            framer: LineFramer::new(max_line_bytes),
            spec,
            last_date: None,
            last_fix: None,
            vtg_time: None,
            vtg_taken: None,
        }
    }

    /// Bytes of an unfinished sentence held.
    pub fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    /// Feeds bytes received at `received_ns`.
    pub fn push(&mut self, bytes: &[u8], received_ns: i64, out: &mut LineOutput) {
        let mut framer = std::mem::take(&mut self.framer);
        framer.push(bytes, |framed| match framed {
            Framed::TooLong => out.bad.push(BadLine::TooLong),
            Framed::Line(line) => self.line(line, received_ns, out),
        });
        self.framer = framer;
    }

    /// The port went idle: an unfinished sentence is torn.
    pub fn flush(&mut self, out: &mut LineOutput) {
        if self.framer.flush() > 0 {
            self.rejected(BadLine::Truncated);
            out.bad.push(BadLine::Truncated);
        }
    }

    /// Forgets an unfinished sentence without counting it (the port was reopened: sentences
    /// may have been lost, so no VTG takes a fix time from before).
    pub fn reset(&mut self) {
        self.framer.flush();
        self.vtg_time = None;
    }

    fn line(&mut self, line: &[u8], received_ns: i64, out: &mut LineOutput) {
        let (sentence, before) = parse_sentence(line);
        if let Some(b) = before {
            self.rejected(b);
            out.bad.push(b);
        }
        match sentence {
            Err(bad) => {
                self.rejected(bad);
                out.bad.push(bad);
            }
            Ok(Sentence::Other) => out.skipped += 1,
            Ok(Sentence::NoFix) => {
                self.vtg_time = None;
                out.no_fix += 1;
            }
            Ok(Sentence::Fix(fix)) => match self.fix_time(&fix, received_ns) {
                Some(ts) => {
                    out.good += 1;
                    out.readings.push(self.reading(fix, ts));
                }
                None => out.no_time += 1,
            },
        }
    }

    /// A rejected line may have been the fix sentence a following VTG belongs to (rule 2);
    /// bytes without a start character (noise) cannot.
    fn rejected(&mut self, bad: BadLine) {
        if bad != BadLine::Noise {
            self.vtg_time = None;
        }
    }

    /// The time rules of the module docs; `None`: a VTG that cannot be placed.
    fn fix_time(&mut self, fix: &Fix, received_ns: i64) -> Option<i64> {
        let ts = match (fix.date_days, fix.time_of_day_ns) {
            (Some(days), Some(tod)) => {
                self.last_date = Some(days);
                Some(days.saturating_mul(DAY_NS).saturating_add(tod))
            }
            (None, Some(tod)) => Some(match self.last_date {
                Some(days) => {
                    let mut t = days.saturating_mul(DAY_NS).saturating_add(tod);
                    if let Some((prev, _)) = self.last_fix {
                        if t < prev.saturating_sub(HALF_DAY_NS) {
                            t = t.saturating_add(DAY_NS);
                        }
                    }
                    self.last_date = Some(t.div_euclid(DAY_NS));
                    t
                }
                None => {
                    let day = received_ns.div_euclid(DAY_NS);
                    [day - 1, day, day + 1]
                        .iter()
                        .map(|d| d.saturating_mul(DAY_NS).saturating_add(tod))
                        .min_by_key(|t| (t - received_ns).unsigned_abs())
                        .unwrap_or(received_ns)
                }
            }),
            _ => None,
        };
        match ts {
            Some(t) => {
                self.last_fix = Some((t, received_ns));
                if self.vtg_taken != Some(t) {
                    self.vtg_time = Some((t, received_ns));
                }
                Some(t)
            }
            None if self.last_fix.is_none() => Some(received_ns),
            None => match self.vtg_time.take() {
                Some((t, at)) if (0..=SAME_BURST_NS).contains(&(received_ns - at)) => {
                    self.vtg_taken = Some(t);
                    Some(t)
                }
                _ => None,
            },
        }
    }

    fn reading(&self, fix: Fix, timestamp_ns: i64) -> Reading {
        let mut tags = self.spec.tags.clone();
        if let Some(id) = &self.spec.sensor_id {
            tags.insert("sensor_id".into(), id.clone());
        }
        tags.insert("talker".into(), fix.talker);
        Reading {
            measurement: self
                .spec
                .measurement
                .clone()
                .unwrap_or_else(|| "gnss".into()),
            tags,
            fields: fix
                .fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            timestamp_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(line: &str) -> Fix {
        match parse_sentence(line.as_bytes()) {
            (Ok(Sentence::Fix(f)), None) => f,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn float(f: &Fix, name: &str) -> f64 {
        match f.fields.get(name) {
            Some(FieldValue::Float(v)) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn gga_with_the_values_its_source_states() {
        // AeroRust/nmea src/sentences/gga.rs test_parse_gga_full: 03:37:45, lat 56+50.82344/60,
        // lon 35+48.9778/60, fix GPS (1), 7 satellites, HDOP 1.8, altitude 101.2 m. (The test
        // builds the sentence from parts with checksum 0x57; this is the same data framed.)
        let body = "GPGGA,033745.0,5650.82344,N,03548.9778,E,1,07,1.8,101.2,M,14.7,M,,";
        let sum =
            String::from_utf8(text::hex2(text::nmea_checksum(body.as_bytes())).to_vec()).unwrap();
        let f = fix(&format!("${body}*{sum}"));
        assert_eq!(f.talker, "GP");
        assert_eq!(
            f.time_of_day_ns,
            Some((3 * 3600 + 37 * 60 + 45) * 1_000_000_000)
        );
        close(float(&f, "lat"), 56.0 + 50.82344 / 60.0);
        close(float(&f, "lon"), 35.0 + 48.9778 / 60.0);
        close(float(&f, "hdop"), 1.8);
        close(float(&f, "alt_m"), 101.2);
        assert_eq!(f.fields.get("fix_quality"), Some(&FieldValue::Int(1)));
        assert_eq!(f.fields.get("satellites"), Some(&FieldValue::Int(7)));
    }

    #[test]
    fn gga_without_a_fix_is_no_fix() {
        // AeroRust/nmea src/sentences/gga.rs: "$GPGGA,,,,,,0,,,,,,,,*66" and
        // "$GPGGA,133605.0,5521.75946,N,03731.93769,E,0,00,,,M,,M,,*4F" (FixType::Invalid).
        for line in [
            "$GPGGA,,,,,,0,,,,,,,,*66",
            "$GPGGA,133605.0,5521.75946,N,03731.93769,E,0,00,,,M,,M,,*4F",
        ] {
            assert_eq!(parse_sentence(line.as_bytes()), (Ok(Sentence::NoFix), None));
        }
    }

    #[test]
    fn rmc_with_date_speed_and_course() {
        // AeroRust/nmea src/sentences/rmc.rs parse_rmc_v23_all_fields_have_value: 22:54:46.33,
        // 1994-11-19, lat 49+16.45/60, lon -(123+11.12/60), 0.5 knots, course 54.7.
        let f = fix("$GPRMC,225446.33,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E,A*2B");
        assert_eq!(
            f.time_of_day_ns,
            Some((22 * 3600 + 54 * 60 + 46) * 1_000_000_000 + 330_000_000)
        );
        // 1994-11-19 is day 9088 after 1970-01-01.
        assert_eq!(f.date_days, Some(9088));
        close(float(&f, "lat"), 49.0 + 16.45 / 60.0);
        close(float(&f, "lon"), -(123.0 + 11.12 / 60.0));
        close(float(&f, "speed_kmh"), 0.5 * 1.852);
        close(float(&f, "course_deg"), 54.7);
        // parse_rmc_pre_v23_all_fields_have_value: the same without the mode field.
        let f = fix("$GPRMC,225446.33,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E*46");
        close(float(&f, "lat"), 49.0 + 16.45 / 60.0);
    }

    #[test]
    fn rmc_status_v_is_no_fix() {
        // AeroRust/nmea src/sentences/rmc.rs parse_rmc_v23_warning_status_most_fields_empty
        assert_eq!(
            parse_sentence(b"$GPRMC,,V,,,,,,,,,,N*53"),
            (Ok(Sentence::NoFix), None)
        );
    }

    #[test]
    fn rmc_from_gpsd_without_course() {
        // AeroRust/nmea rmc.rs parse_rmc_v23_missing_true_course_and_magnetic_variation
        // ("gpsd_example"): 00:10:31, 2017-01-10, 0.146 knots, no course.
        let f = fix("$GNRMC,001031.00,A,4404.13993,N,12118.86023,W,0.146,,100117,,,A*7B");
        assert_eq!(f.talker, "GN");
        close(float(&f, "lat"), 44.0 + 4.13993 / 60.0);
        close(float(&f, "lon"), -(121.0 + 18.86023 / 60.0));
        close(float(&f, "speed_kmh"), 0.146 * 1.852);
        assert!(!f.fields.contains_key("course_deg"));
    }

    #[test]
    fn vtg_values() {
        // AeroRust/nmea src/sentences/vtg.rs test_parse_vtg
        let f = fix("$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48");
        close(float(&f, "course_deg"), 54.7);
        close(float(&f, "speed_kmh"), 10.2);
        let f = fix("$GPVTG,360.0,T,348.7,M,000.0,N,000.0,K*43");
        close(float(&f, "course_deg"), 360.0);
        close(float(&f, "speed_kmh"), 0.0);
        assert_eq!(
            parse_sentence(b"$GPVTG,,T,,M,,N,,K,N*2C"),
            (Ok(Sentence::NoFix), None)
        );
    }

    #[test]
    fn gll_values_and_no_fix() {
        // AeroRust/nmea src/sentences/gll.rs test_parse_gpgll
        let f = fix("$GPGLL,5107.0013414,N,11402.3279144,W,205412.00,A,A*73");
        close(float(&f, "lat"), 51.0 + 7.0013414 / 60.0);
        close(float(&f, "lon"), -(114.0 + 2.3279144 / 60.0));
        assert_eq!(
            f.time_of_day_ns,
            Some((20 * 3600 + 54 * 60 + 12) * 1_000_000_000)
        );
        for line in ["$GNGLL,,,,,181604.00,V,N*5E", "$GNGLL,,,,,,V,N*7A"] {
            assert_eq!(parse_sentence(line.as_bytes()), (Ok(Sentence::NoFix), None));
        }
    }

    #[test]
    fn other_sentences_are_skipped_and_bad_checksums_refused() {
        // AeroRust/nmea tests/data/nmea1.log, lines 1 and 8.
        assert_eq!(
            parse_sentence(b"$GPGSV,4,1,15,05,00,000,17,07,06,105,20,08,11,032,15,10,00,000,16*77"),
            (Ok(Sentence::Other), None)
        );
        assert_eq!(
            parse_sentence(b"$GPGSA,A,3,05,07,08,10,15,17,18,19,30,,,,1.2,0.9,0.8*3B"),
            (Ok(Sentence::Other), None)
        );
        // The same GSA with its checksum changed, and with none.
        assert_eq!(
            parse_sentence(b"$GPGSA,A,3,05,07,08,10,15,17,18,19,30,,,,1.2,0.9,0.8*3C").0,
            Err(BadLine::Checksum)
        );
        assert_eq!(
            parse_sentence(b"$GPGSA,A,3,05,07,08,10,15,17,18,19,30,,,,1.2,0.9,0.8").0,
            Err(BadLine::NoChecksum)
        );
        assert_eq!(parse_sentence(b"garbage").0, Err(BadLine::Noise));
    }

    #[test]
    fn a_torn_sentence_before_a_whole_one_is_truncated_and_the_whole_one_kept() {
        // nmea1.log lines 9 and 10, the first cut short with no line end.
        let (s, before) = parse_sentence(
            b"$GPVTG,86.2,T,86.2,M,15$GPRMC,110124,A,5505.330990,N,03858.587325,E,152.6,86.2,310317,8.9,E,D*2E",
        );
        assert_eq!(before, Some(BadLine::Truncated));
        let Ok(Sentence::Fix(f)) = s else {
            panic!("{s:?}")
        };
        close(float(&f, "lat"), 55.0 + 5.330990 / 60.0);
        close(float(&f, "speed_kmh"), 152.6 * 1.852);
    }

    fn decoder() -> NmeaDecoder {
        NmeaDecoder::new(
            NmeaSpec {
                sensor_id: Some("bus-17".into()),
                ..NmeaSpec::default()
            },
            crate::text_line::DEFAULT_MAX_LINE_BYTES,
        )
    }

    fn epoch_ns(y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8) -> i64 {
        let dt = jiff::civil::datetime(y, mo, d, h, mi, s, 0);
        let ts = dt.to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp();
        i64::try_from(ts.as_nanosecond()).unwrap()
    }

    #[test]
    fn a_burst_carries_the_fix_time_gga_after_rmc_takes_its_date_vtg_the_bursts_time() {
        // AeroRust/nmea tests/data/nmea1.log lines 9..11: 2017-03-31 11:01:24 UTC.
        let received = epoch_ns(2026, 12, 2, 17, 0, 0);
        let mut d = decoder();
        let mut out = LineOutput::default();
        d.push(
            b"$GPVTG,86.2,T,86.2,M,152.6,N,282.7,K,D*29\r\n\
$GPRMC,110124,A,5505.330990,N,03858.587325,E,152.6,86.2,310317,8.9,E,D*2E\r\n\
$GPGGA,110124,5505.330990,N,03858.587325,E,2,09,0.9,2177.0,M,14.0,M,,*7D\r\n\
$GPVTG,84.6,T,84.6,M,148.8,N,275.6,K,D*25\r\n",
            received,
            &mut out,
        );
        assert!(out.bad.is_empty(), "{:?}", out.bad);
        let t = epoch_ns(2017, 3, 31, 11, 1, 24);
        let times: Vec<i64> = out.readings.iter().map(|r| r.timestamp_ns).collect();
        // The first VTG comes before any fix time is known: receipt time.
        assert_eq!(times, vec![received, t, t, t]);
        let gga = &out.readings[2];
        assert_eq!(gga.tags.get("talker").map(String::as_str), Some("GP"));
        assert_eq!(
            gga.tags.get("sensor_id").map(String::as_str),
            Some("bus-17")
        );
        assert_eq!(gga.measurement, "gnss");
        assert_eq!(gga.fields.get("satellites"), Some(&FieldValue::Int(9)));
        assert_eq!(gga.fields.get("alt_m"), Some(&FieldValue::Float(2177.0)));
    }

    fn sentence(body: &str) -> String {
        let sum = text::hex2(text::nmea_checksum(body.as_bytes()));
        format!("${body}*{}{}\r\n", sum[0] as char, sum[1] as char)
    }

    /// One 10 Hz burst (RMC, GGA, VTG) of fix `n` after 2026-12-03 10:00:10 UTC, each sentence
    /// corrupted (a byte changed, checksum kept) where asked.
    fn burst(n: i64, corrupt: [bool; 3]) -> Vec<u8> {
        let cs = n % 10 * 10;
        let s = 10 + n / 10;
        let kmh = format!("{:.1}", 30.0 + n as f64);
        let bodies = [
            format!("GNRMC,1000{s:02}.{cs:02},A,1046.37400,N,10641.88600,E,16.2,45.0,031226,,,A"),
            format!("GNGGA,1000{s:02}.{cs:02},1046.37400,N,10641.88600,E,1,09,0.9,8.5,M,2.1,M,,"),
            format!("GNVTG,45.0,T,,M,16.2,N,{kmh},K,A"),
        ];
        let mut out = Vec::new();
        for (body, bad) in bodies.iter().zip(corrupt) {
            let mut line = sentence(body).into_bytes();
            if bad {
                // The byte before the last comma changed: the checksum no longer matches.
                let i = line.iter().rposition(|&b| b == b',').unwrap() - 1;
                line[i] = if line[i] == b'1' { b'2' } else { b'1' };
            }
            out.extend(line);
        }
        out
    }

    /// (reading time, speed_kmh) of the VTG readings.
    fn vtg_points(out: &LineOutput) -> Vec<(i64, f64)> {
        out.readings
            .iter()
            .filter(|r| !r.fields.contains_key("lat"))
            .map(|r| match r.fields.get("speed_kmh") {
                Some(FieldValue::Float(v)) => (r.timestamp_ns, *v),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_vtg_whose_fix_sentences_were_rejected_lends_its_speed_to_no_other_fix() {
        let t = |n: i64| epoch_ns(2026, 12, 3, 10, 0, 10) + n * 100_000_000;
        let ok = [false; 3];
        let mut d = decoder();
        let mut out = LineOutput::default();
        // Fix 0 clean; fix 1 with RMC and GGA corrupt (its VTG must not land on fix 0); fix 2
        // clean; fix 3 with its VTG corrupt and fix 4 with RMC and GGA corrupt (fix 3's time is
        // still untaken: rule 2 keeps fix 4's VTG off it); fix 5 clean.
        for (n, corrupt) in [
            (0, ok),
            (1, [true, true, false]),
            (2, ok),
            (3, [false, false, true]),
            (4, [true, true, false]),
            (5, ok),
        ] {
            d.push(&burst(n, corrupt), t(n) + 40_000_000, &mut out);
        }
        assert_eq!(
            vtg_points(&out),
            vec![(t(0), 30.0), (t(2), 32.0), (t(5), 35.0)]
        );
        assert_eq!(out.no_time, 2);
        assert_eq!(out.bad, vec![BadLine::Checksum; 5]);

        // Fix 6's RMC and GGA vanish without a trace (a serial overrun): fix 5's time was taken
        // by fix 5's VTG (rule 3).
        let mut out = LineOutput::default();
        let vtg_only = burst(6, ok);
        let start = vtg_only.windows(6).position(|w| w == b"$GNVTG").unwrap();
        d.push(&vtg_only[start..], t(6) + 40_000_000, &mut out);
        assert_eq!((out.good, out.no_time, out.readings.len()), (0, 1, 0));

        // RMC intact, GGA corrupt: the VTG is dropped (rule 2; the RMC carries the same speed
        // and course), the RMC stored at its own time.
        let mut out = LineOutput::default();
        d.push(&burst(7, [false, true, false]), t(7) + 40_000_000, &mut out);
        assert_eq!((out.good, out.no_time), (1, 1));
        assert_eq!(out.readings[0].timestamp_ns, t(7));

        // A torn GGA (a start character in the line before the VTG) is rejected too; line noise
        // before the VTG is not a fix sentence and changes nothing.
        let mut out = LineOutput::default();
        let b = burst(8, ok);
        let vtg = b.windows(6).position(|w| w == b"$GNVTG").unwrap();
        let gga = b.windows(6).position(|w| w == b"$GNGGA").unwrap();
        let mut torn = b[..gga + 20].to_vec();
        torn.extend_from_slice(&b[vtg..]);
        d.push(&torn, t(8) + 40_000_000, &mut out);
        assert_eq!((out.good, out.no_time), (1, 1));
        assert_eq!(out.bad, vec![BadLine::Truncated]);
        let mut out = LineOutput::default();
        let b = burst(9, ok);
        let vtg = b.windows(6).position(|w| w == b"$GNVTG").unwrap();
        let mut noisy = b[..vtg].to_vec();
        noisy.extend_from_slice(b"\xfe\x81\xc3");
        noisy.extend_from_slice(&b[vtg..]);
        d.push(&noisy, t(9) + 40_000_000, &mut out);
        assert_eq!(vtg_points(&out), vec![(t(9), 39.0)]);
        assert_eq!(out.bad, vec![BadLine::Noise]);

        // A VTG more than a second after its fix sentence is not placed either.
        let mut out = LineOutput::default();
        let b = burst(10, ok);
        let vtg = b.windows(6).position(|w| w == b"$GNVTG").unwrap();
        d.push(&b[..vtg], t(10), &mut out);
        d.push(&b[vtg..], t(10) + SAME_BURST_NS + 1, &mut out);
        assert_eq!((out.good, out.no_time), (2, 1));
    }

    #[test]
    fn a_receiver_printing_only_vtg_gets_receipt_times() {
        let mut d = decoder();
        let mut out = LineOutput::default();
        d.push(
            b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48\r\n",
            1_000,
            &mut out,
        );
        d.push(
            b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48\r\n",
            2_000,
            &mut out,
        );
        let times: Vec<i64> = out.readings.iter().map(|r| r.timestamp_ns).collect();
        assert_eq!((times, out.no_time), (vec![1_000, 2_000], 0));
    }

    #[test]
    fn gga_across_midnight_moves_to_the_next_day() {
        let mut d = decoder();
        let mut out = LineOutput::default();
        let received = epoch_ns(2026, 12, 2, 0, 0, 0);
        d.push(
            sentence("GPRMC,235959,A,5505.3309,N,03858.5873,E,1.0,86.2,011226,,").as_bytes(),
            received,
            &mut out,
        );
        d.push(
            sentence("GPGGA,000001,5505.3309,N,03858.5873,E,1,09,0.9,10.0,M,,M,,").as_bytes(),
            received,
            &mut out,
        );
        let times: Vec<i64> = out.readings.iter().map(|r| r.timestamp_ns).collect();
        assert_eq!(
            times,
            vec![
                epoch_ns(2026, 12, 1, 23, 59, 59),
                epoch_ns(2026, 12, 2, 0, 0, 1)
            ]
        );
    }

    #[test]
    fn gga_without_any_date_takes_the_receipt_day_nearest() {
        let mut d = decoder();
        let mut out = LineOutput::default();
        // Received just after midnight, fix from just before it.
        let received = epoch_ns(2026, 12, 2, 0, 0, 1);
        d.push(
            sentence("GNGGA,235959.50,5505.3309,N,03858.5873,E,1,09,0.9,10.0,M,,M,,").as_bytes(),
            received,
            &mut out,
        );
        assert_eq!(
            out.readings[0].timestamp_ns,
            epoch_ns(2026, 12, 1, 23, 59, 59) + 500_000_000
        );
    }

    #[test]
    fn a_receiver_without_a_fix_makes_no_reading() {
        // u-blox receivers without a fix (as in AeroRust/nmea's tests above): empty fields, V.
        let mut d = decoder();
        let mut out = LineOutput::default();
        d.push(
            b"$GPRMC,,V,,,,,,,,,,N*53\r\n$GPVTG,,T,,M,,N,,K,N*2C\r\n$GPGGA,,,,,,0,,,,,,,,*66\r\n$GNGLL,,,,,,V,N*7A\r\n",
            0,
            &mut out,
        );
        assert!(out.readings.is_empty());
        assert_eq!((out.no_fix, out.good, out.bad.len()), (4, 0, 0));
    }

    #[test]
    fn many_malformed_values_are_malformed_not_panics() {
        for body in [
            "GPGGA,033745.0,9950.82344,N,03548.9778,E,1,07,1.8,101.2,M,,M,,",
            "GPGGA,033745.0,5650.82344,X,03548.9778,E,1,07,1.8,101.2,M,,M,,",
            "GPGGA,033745.0,,N,03548.9778,E,1,07,1.8,101.2,M,,M,,",
            "GPGGA,253745.0,5650.82344,N,03548.9778,E,1,07,1.8,101.2,M,,M,,",
            "GPRMC,225446.33,A,4916.45,N,12311.12,W,000.5,054.7,321394,020.3,E,A",
            "GPRMC,225446.33,A,4916.45,N,12311.12,W,abc,054.7,191194,020.3,E,A",
        ] {
            assert_eq!(
                parse_sentence(sentence(body).trim_end().as_bytes()).0,
                Err(BadLine::Malformed),
                "{body}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Bytes that look like NMEA often: sentence pieces mixed with noise.
        fn nmea_like() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(
                    b"$GPGGA,110124,5505.330990,N,03858.587325,E,2,09,0.9,2177.0,M,14.0,M,,*7D"
                        .to_vec()
                ),
                Just(
                    b"$GPRMC,110124,A,5505.330990,N,03858.587325,E,152.6,86.2,310317,8.9,E,D*2E"
                        .to_vec()
                ),
                Just(b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"*".to_vec()),
                Just(b"$".to_vec()),
                prop::collection::vec(any::<u8>(), 0..12),
            ];
            prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
                let mut d = decoder();
                let mut out = LineOutput::default();
                let cut = cut.min(bytes.len());
                d.push(&bytes[..cut], 1, &mut out);
                d.push(&bytes[cut..], 2, &mut out);
                d.flush(&mut out);
            }

            #[test]
            fn every_accepted_sentence_has_a_valid_checksum(bytes in nmea_like()) {
                for line in bytes.split(|&b| b == b'\r' || b == b'\n') {
                    if let (Ok(_), _) = parse_sentence(line) {
                        let start = line.iter().rposition(|&b| b == b'$' || b == b'!').unwrap();
                        let sentence = &line[start + 1..];
                        let star = sentence.iter().rposition(|&b| b == b'*').unwrap();
                        let sum = text::parse_hex2(sentence[star + 1..].trim_ascii_end());
                        prop_assert_eq!(sum, Some(text::nmea_checksum(&sentence[..star])));
                    }
                }
            }

            #[test]
            fn a_flipped_byte_is_never_accepted_as_the_same_sentence(i in 1usize..70, bit in 0u8..8) {
                let good = b"$GPRMC,110124,A,5505.330990,N,03858.587325,E,152.6,86.2,310317,8.9,E,D*2E";
                let mut bad = good.to_vec();
                let i = i.min(bad.len() - 1);
                bad[i] ^= 1 << bit;
                if let (Ok(Sentence::Fix(f)), _) = parse_sentence(&bad) {
                    let (Ok(Sentence::Fix(g)), _) = parse_sentence(good) else { unreachable!() };
                    prop_assert_ne!(f, g);
                }
            }
        }
    }
}
