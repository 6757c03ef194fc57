//! `protocol = "lines"`: any serial sensor that prints one reading per line of text — ultrasonic
//! level sensors (`R1234`), radar speed signs (`+045.2 km/h`), noise meters printing CSV — read
//! by a pattern from the config file.
//!
//! Why it exists: these instruments have no protocol worth a decoder of its own, and a technician
//! must commission one from the config alone. The pattern says which parts of a line are fields,
//! tags and the time; everything else (framing, sentinels, the checksum, the count of lines that
//! do not fit) is the same for every such sensor and is done here once, as a pure function of one
//! framed line ([`Lines::decode`]) plus the shared [`LineFramer`] ([`LinesDecoder`]).
//!
//! ```toml
//! [inputs.serial.lines]
//! regex = '^R(?P<range_mm>\d{3,4})$'   # named captures; or columns = [...] for CSV lines
//! fields = ["range_mm"]                 # captures / columns read as numbers
//! tags = []                             # captures / columns stored as tags
//! measurement = "water_level"           # default: the input's `measurement`
//! time = "ts"                           # a capture / column holding the line's own time
//! time_format = "unix_s"                # unix_s/ms/us/ns, rfc3339 or a strftime layout
//! timezone = "Asia/Ho_Chi_Minh"         # for a layout without an offset
//! drop_values = [9999, "NA"]            # sentinels: that field is left out
//! checksum = "nmea-xor"                 # `...*hh` verified and stripped before matching
//! ```
//!
//! # Matching
//!
//! - `regex`: searched in the line without its CR/LF (anchor it with `^…$` to match the whole
//!   line); every name in `fields`, `tags` and `time` must be a named capture of it. A capture
//!   that did not take part in the match, or matched only blanks, is left out. The pattern is
//!   compiled once at start-up, at most [`MAX_REGEX_CHARS`] long and [`REGEX_SIZE_LIMIT`] bytes
//!   compiled; matching is linear in the line (Rust's `regex`: no backtracking), and a line is
//!   at most the port's `max_line_bytes`.
//! - `columns` (CSV): the line is split by `separator` (default `,`) as `format = "csv"` reads a
//!   row (quotes, cells trimmed: [`crate::csv::read_cells`]); a line with another number of
//!   cells than `columns` does not match. An empty column name ignores that column. With
//!   `skip_header = true` a line whose cells are the column names (any case) is *skipped*: many
//!   loggers print their header at every power-up.
//!
//! # Outcomes
//!
//! Each line gives one [`LineOutcome`], with a stable [`label`](LineOutcome::label):
//!
//! | label | what |
//! |---|---|
//! | `ok` | a reading |
//! | `header` | the CSV header line (skipped) |
//! | `no_match` | the line does not match the pattern (a boot banner, garbage, a wrong baud rate) |
//! | `no_values` | every field empty or a `drop_values` sentinel: nothing to store |
//! | `no_checksum`, `checksum` | with `checksum = "nmea-xor"`: no `*hh` at the end, or a wrong one |
//! | `not_a_number` | a field's text is not a number |
//! | `bad_time` | the time capture is empty or not in `time_format` |
//! | `bad_tag` | a tag's text cannot be stored (not UTF-8, a control character) |
//! | `too_long`, `truncated` | the framer's: over `max_line_bytes`, or cut off by an idle port |
//!
//! Fields are floats (`scalar::parse_number`: `+045.2`, `-3e2`, blanks ignored; not `nan`/`inf`).
//! Without `time`, a reading carries the time the line was received.
//!
//! # Checksum
//!
//! `checksum = "nmea-xor"`: the line (trailing blanks ignored) must end in `*hh`, two hex digits
//! of the XOR of every byte before the `*` — after a leading `$` or `!`, which is not summed, as
//! in NMEA 0183. The `*hh` is stripped before matching; the `$` stays.

use std::collections::BTreeMap;

use ::csv::ByteRecord;
use ioc_frames::text;
use ioc_model::{FieldValue, Reading};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::payload::SpecError;
use crate::scalar::{self, DropValues};
use crate::text_line::{shown, BadLine, Framed, LineFramer, LineOutput};
use crate::timefmt::{self, TimeFormat};

/// Longest `regex` accepted, in characters.
pub const MAX_REGEX_CHARS: usize = 4096;
/// Largest compiled program of a `regex` (and of its lazy DFA cache), in bytes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Most `fields` + `tags` + `time` names, and most `columns`.
pub const MAX_NAMES: usize = 256;

/// The checksum a line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LineChecksum {
    /// `…*hh`: XOR of the bytes before the `*` (after a leading `$`/`!`), as NMEA 0183.
    #[serde(rename = "nmea-xor")]
    NmeaXor,
}

/// The `lines` section of a serial input, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinesConfig {
    pub regex: Option<String>,
    #[serde(default)]
    pub columns: Vec<String>,
    pub separator: Option<String>,
    #[serde(default)]
    pub skip_header: bool,
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub measurement: Option<String>,
    pub time: Option<String>,
    pub time_format: Option<String>,
    pub timezone: Option<String>,
    #[serde(default)]
    pub drop_values: DropValues,
    pub checksum: Option<LineChecksum>,
}

/// What a capture or column is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Field,
    Tag,
    Time,
}

/// One capture group or column read into the reading.
#[derive(Debug, Clone)]
struct Slot {
    /// Capture group index, or column index.
    index: usize,
    name: String,
    role: Role,
}

#[derive(Debug, Clone)]
enum Matcher {
    Regex(Regex),
    Csv {
        separator: u8,
        columns: Vec<String>,
        skip_header: bool,
    },
}

/// What one line gave.
#[derive(Debug, Clone, PartialEq)]
pub enum LineOutcome {
    Reading(Reading),
    /// The CSV header line (`skip_header`).
    Header,
    NoMatch,
    NoValues,
    Bad(BadLine),
}

impl LineOutcome {
    /// A short, stable name (the `result`/`reason` label of the serial metrics, the probe's).
    pub fn label(&self) -> &'static str {
        match self {
            LineOutcome::Reading(_) => "ok",
            LineOutcome::Header => "header",
            LineOutcome::NoMatch => "no_match",
            LineOutcome::NoValues => "no_values",
            LineOutcome::Bad(b) => b.label(),
        }
    }
}

/// A compiled `lines` config; built once per port.
#[derive(Debug, Clone)]
pub struct Lines {
    matcher: Matcher,
    slots: Vec<Slot>,
    measurement: String,
    tags: BTreeMap<String, String>,
    time: Option<TimeFormat>,
    drop_values: DropValues,
    checksum: Option<LineChecksum>,
}

impl Lines {
    /// Compiles a `lines` section. `default_measurement` is the input's; `tags` its static tags
    /// (with `sensor_id`). Error keys are relative to the `lines` section.
    pub fn compile(
        cfg: &LinesConfig,
        default_measurement: Option<&str>,
        tags: BTreeMap<String, String>,
    ) -> Result<Self, SpecError> {
        let measurement = match cfg.measurement.as_deref().or(default_measurement) {
            Some(m) => m.to_owned(),
            None => {
                return Err(SpecError::new(
                    "measurement",
                    "name the readings' measurement here or on the input \
                     (measurement = \"water_level\")",
                ))
            }
        };
        if let Err(e) = Reading::new(measurement.as_str(), 0)
            .field("x", FieldValue::Float(0.0))
            .validate()
        {
            return Err(SpecError::new("measurement", e.to_string()));
        }
        let matcher = Self::matcher(cfg)?;
        // The names a line offers: capture names (index = group) or columns (index = cell).
        let offered: Vec<(usize, String)> = match &matcher {
            Matcher::Regex(re) => re
                .capture_names()
                .enumerate()
                .filter_map(|(i, n)| n.map(|n| (i, n.to_owned())))
                .collect(),
            Matcher::Csv { columns, .. } => columns
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.is_empty())
                .map(|(i, c)| (i, c.clone()))
                .collect(),
        };
        let what = match matcher {
            Matcher::Regex(_) => "named captures of regex",
            Matcher::Csv { .. } => "columns",
        };
        if cfg.fields.is_empty() {
            return Err(SpecError::new(
                "fields",
                format!(
                    "name at least one of the {what} to read as a number: fields = [{}]",
                    offered
                        .first()
                        .map_or("\"value\"".into(), |(_, n)| format!("{n:?}"))
                ),
            ));
        }
        if cfg.fields.len() + cfg.tags.len() > MAX_NAMES {
            return Err(SpecError::new(
                "fields",
                format!("at most {MAX_NAMES} fields and tags"),
            ));
        }
        let mut slots: Vec<Slot> = Vec::new();
        let mut add = |key: String, name: &str, role: Role| -> Result<(), SpecError> {
            let Some((index, _)) = offered.iter().find(|(_, n)| n == name) else {
                let names: Vec<&str> = offered.iter().map(|(_, n)| n.as_str()).collect();
                return Err(SpecError::new(
                    key,
                    format!("{name:?} is not one of the {what} {names:?}"),
                ));
            };
            if let Some(other) = slots.iter().find(|s| s.name == name) {
                return Err(SpecError::new(
                    key,
                    format!(
                        "{name:?} is already used as {}",
                        match other.role {
                            Role::Field => "a field",
                            Role::Tag => "a tag",
                            Role::Time => "the time",
                        }
                    ),
                ));
            }
            let probe = match role {
                Role::Field => Reading::new("m", 0).field(name, FieldValue::Float(0.0)),
                Role::Tag => Reading::new("m", 0)
                    .tag(name, "v")
                    .field("x", FieldValue::Float(0.0)),
                Role::Time => Reading::new("m", 0).field("x", FieldValue::Float(0.0)),
            };
            if let Err(e) = probe.validate() {
                return Err(SpecError::new(key, e.to_string()));
            }
            slots.push(Slot {
                index: *index,
                name: name.to_owned(),
                role,
            });
            Ok(())
        };
        if let Some(t) = &cfg.time {
            add("time".into(), t, Role::Time)?;
        }
        for (i, f) in cfg.fields.iter().enumerate() {
            add(format!("fields[{i}]"), f, Role::Field)?;
        }
        for (i, t) in cfg.tags.iter().enumerate() {
            add(format!("tags[{i}]"), t, Role::Tag)?;
        }
        if let Some(clash) = slots
            .iter()
            .find(|s| s.role == Role::Tag && tags.contains_key(&s.name))
        {
            return Err(SpecError::new(
                "tags",
                format!(
                    "tag {:?} is also a static tag of the input (tags or sensor_id)",
                    clash.name
                ),
            ));
        }
        let time = match &cfg.time {
            Some(_) => Some(TimeFormat::compile(
                cfg.time_format.as_deref(),
                cfg.timezone.as_deref(),
            )?),
            None => {
                timefmt::refuse_unused(
                    "time",
                    cfg.time_format.as_deref(),
                    cfg.timezone.as_deref(),
                )?;
                None
            }
        };
        Ok(Lines {
            matcher,
            slots,
            measurement,
            tags,
            time,
            drop_values: cfg.drop_values.clone(),
            checksum: cfg.checksum,
        })
    }

    fn matcher(cfg: &LinesConfig) -> Result<Matcher, SpecError> {
        match (&cfg.regex, cfg.columns.is_empty()) {
            (Some(_), false) => Err(SpecError::new(
                "columns",
                "set either regex or columns, not both",
            )),
            (None, true) => Err(SpecError::new(
                "regex",
                "set regex = '...' (named captures such as (?P<level>\\d+)) or \
                 columns = [\"a\", \"b\"] for comma-separated lines",
            )),
            (Some(pattern), true) => {
                if cfg.separator.is_some() || cfg.skip_header {
                    let key = if cfg.separator.is_some() {
                        "separator"
                    } else {
                        "skip_header"
                    };
                    return Err(SpecError::new(key, "only used with columns (CSV lines)"));
                }
                if pattern.chars().count() > MAX_REGEX_CHARS {
                    return Err(SpecError::new(
                        "regex",
                        format!("longer than {MAX_REGEX_CHARS} characters"),
                    ));
                }
                let re = RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| SpecError::new("regex", format!("bad regex: {e}")))?;
                if re.capture_names().all(|n| n.is_none()) {
                    return Err(SpecError::new(
                        "regex",
                        "has no named capture: name the parts to keep, e.g. \
                         '^R(?P<range_mm>\\d+)$'",
                    ));
                }
                Ok(Matcher::Regex(re))
            }
            (None, false) => {
                let separator =
                    crate::csv::separator_byte(cfg.separator.as_deref().unwrap_or(","))?;
                if cfg.columns.len() > MAX_NAMES {
                    return Err(SpecError::new(
                        "columns",
                        format!("at most {MAX_NAMES} columns"),
                    ));
                }
                for (i, c) in cfg.columns.iter().enumerate() {
                    if !c.is_empty() && cfg.columns[..i].contains(c) {
                        return Err(SpecError::new(
                            format!("columns[{i}]"),
                            format!("column {c:?} is named twice"),
                        ));
                    }
                }
                Ok(Matcher::Csv {
                    separator,
                    columns: cfg.columns.clone(),
                    skip_header: cfg.skip_header,
                })
            }
        }
    }

    /// Whether readings carry the line's own time (a `time` capture or column).
    pub fn has_time(&self) -> bool {
        self.time.is_some()
    }

    /// Decodes one framed line (without its CR/LF) received at `received_ns`.
    pub fn decode(&self, line: &[u8], received_ns: i64) -> LineOutcome {
        let text = match self.checksum {
            None => line,
            Some(LineChecksum::NmeaXor) => match verify_nmea_xor(line) {
                Ok(body) => body,
                Err(bad) => return LineOutcome::Bad(bad),
            },
        };
        let mut reading = Reading::new(self.measurement.as_str(), received_ns);
        reading.tags = self.tags.clone();
        let mut fill = |slot: &Slot, value: Option<&[u8]>| -> Result<(), BadLine> {
            let value = value.map(<[u8]>::trim_ascii).unwrap_or_default();
            if value.is_empty() {
                return match slot.role {
                    Role::Time => Err(BadLine::BadTime),
                    _ => Ok(()),
                };
            }
            match slot.role {
                Role::Field => {
                    let t = std::str::from_utf8(value).map_err(|_| BadLine::NotANumber)?;
                    if self.drop_values.drops_text(t) {
                        return Ok(());
                    }
                    let n = scalar::parse_number(t).ok_or(BadLine::NotANumber)?;
                    reading
                        .fields
                        .insert(slot.name.clone(), FieldValue::Float(n));
                }
                Role::Tag => {
                    let t = std::str::from_utf8(value).map_err(|_| BadLine::BadTag)?;
                    reading.tags.insert(slot.name.clone(), t.to_owned());
                }
                Role::Time => {
                    let t = std::str::from_utf8(value).map_err(|_| BadLine::BadTime)?;
                    let time = self.time.as_ref().ok_or(BadLine::BadTime)?;
                    reading.timestamp_ns = time.parse_text(t).map_err(|_| BadLine::BadTime)?;
                }
            }
            Ok(())
        };
        let filled = match &self.matcher {
            Matcher::Regex(re) => {
                let Some(caps) = re.captures(text) else {
                    return LineOutcome::NoMatch;
                };
                self.slots
                    .iter()
                    .try_for_each(|s| fill(s, caps.get(s.index).map(|m| m.as_bytes())))
            }
            Matcher::Csv {
                separator,
                columns,
                skip_header,
            } => {
                let mut record = ByteRecord::new();
                match crate::csv::read_cells(*separator, text, &mut record) {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return LineOutcome::NoMatch,
                }
                if *skip_header
                    && record.len() == columns.len()
                    && record
                        .iter()
                        .zip(columns)
                        .all(|(cell, name)| cell.eq_ignore_ascii_case(name.as_bytes()))
                {
                    return LineOutcome::Header;
                }
                if record.len() != columns.len() {
                    return LineOutcome::NoMatch;
                }
                self.slots
                    .iter()
                    .try_for_each(|s| fill(s, record.get(s.index)))
            }
        };
        if let Err(bad) = filled {
            return LineOutcome::Bad(bad);
        }
        if reading.fields.is_empty() {
            return LineOutcome::NoValues;
        }
        match reading.validate() {
            Ok(()) => LineOutcome::Reading(reading),
            // Names were checked at compile time and fields are finite numbers: only a tag's
            // text can be refused here.
            Err(_) => LineOutcome::Bad(BadLine::BadTag),
        }
    }
}

/// Checks `…*hh` at the end of `line` (trailing blanks ignored); the line without `*hh`.
pub fn verify_nmea_xor(line: &[u8]) -> Result<&[u8], BadLine> {
    let line = line.trim_ascii_end();
    let Some(star) = line.iter().rposition(|&b| b == b'*') else {
        return Err(BadLine::NoChecksum);
    };
    let (body, digits) = (&line[..star], &line[star + 1..]);
    let Some(sum) = text::parse_hex2(digits) else {
        return Err(BadLine::NoChecksum);
    };
    let summed = match body.first() {
        Some(b'$') | Some(b'!') => &body[1..],
        _ => body,
    };
    if text::xor(summed) == sum {
        Ok(body)
    } else {
        Err(BadLine::Checksum)
    }
}

/// The streaming `lines` decoder of one port: the shared framer, then [`Lines::decode`].
#[derive(Debug, Clone)]
pub struct LinesDecoder {
    framer: LineFramer,
    lines: Lines,
    /// Record every line with its outcome in [`LineOutput::traced`] (the probe).
    trace: bool,
}

impl LinesDecoder {
    pub fn new(lines: Lines, max_line_bytes: usize) -> Self {
        LinesDecoder {
            framer: LineFramer::new(max_line_bytes),
            lines,
            trace: false,
        }
    }

    /// Records every line with its outcome (for the probe).
    pub fn traced(mut self) -> Self {
        self.trace = true;
        self
    }

    pub fn has_time(&self) -> bool {
        self.lines.has_time()
    }

    pub fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    /// Feeds bytes received at `received_ns`.
    pub fn push(&mut self, bytes: &[u8], received_ns: i64, out: &mut LineOutput) {
        let (lines, trace) = (&self.lines, self.trace);
        self.framer.push(bytes, |framed| {
            let (outcome, line) = match framed {
                Framed::TooLong => (LineOutcome::Bad(BadLine::TooLong), None),
                Framed::Line(line) => (lines.decode(line, received_ns), Some(line)),
            };
            if trace {
                let text = line.map_or_else(|| "(over max_line_bytes)".into(), shown);
                out.traced.push((text, outcome.label()));
            }
            match outcome {
                LineOutcome::Reading(r) => {
                    out.good += 1;
                    out.readings.push(r);
                }
                LineOutcome::Header => out.skipped += 1,
                LineOutcome::NoMatch => out.unmatched_line(line.unwrap_or_default()),
                LineOutcome::NoValues => out.no_values += 1,
                LineOutcome::Bad(b) => out.bad.push(b),
            }
        });
    }

    /// The port went idle: an unfinished line is torn.
    pub fn flush(&mut self, out: &mut LineOutput) {
        let n = self.framer.flush();
        if n > 0 {
            out.bad.push(BadLine::Truncated);
            if self.trace {
                out.traced.push((
                    format!("({n} bytes without a line end)"),
                    BadLine::Truncated.label(),
                ));
            }
        }
    }

    pub fn reset(&mut self) {
        self.framer.flush();
    }
}

#[cfg(test)]
mod tests;
