//! Times as payloads write them, and the one parser of each form for the whole crate.
//!
//! A config names a time format once (`time_format`, `timezone`); it is compiled here into a
//! [`TimeFormat`], so a bad layout or an unknown zone is a config error at start-up, and each
//! payload's time is then read with [`TimeFormat::parse_json`] or [`TimeFormat::parse_text`]:
//!
//! - `unix_s`, `unix_ms`, `unix_us`, `unix_ns`: a number (or text holding one), decimals allowed
//!   and kept exact to the digit ([`decimal_to_ns`]);
//! - `rfc3339` (the default): `2026-03-01T07:30:00+07:00`, any offset ([`rfc3339_to_ns`]);
//! - any other text is a strftime-style layout such as `%d/%m/%Y %H:%M:%S` (jiff's `strtime`
//!   directives). A layout without an offset (`%z`, `%:z`) or zone (`%Q`) needs `timezone`, an
//!   IANA name (`Asia/Ho_Chi_Minh`) or `UTC`: the time zone database is compiled into the binary,
//!   so a box without tzdata still knows it.
//!
//! The camera decoders and the `json` format's `timestamp_unit` use the same functions.

use jiff::fmt::strtime;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::Value;

use crate::json::TimestampUnit;
use crate::payload::SpecError;

/// A compiled `time_format` (with its `timezone`).
#[derive(Debug, Clone, Default)]
pub enum TimeFormat {
    /// A number of seconds, milliseconds, microseconds or nanoseconds since the Unix epoch.
    Unix(TimestampUnit),
    /// RFC 3339 text with an offset.
    #[default]
    Rfc3339,
    /// A strftime-style layout; `zone` is used when the text has no offset of its own.
    Layout { layout: String, zone: TimeZone },
}

/// A payload's time that the format could not read; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadTime(pub String);

impl TimeFormat {
    /// Compiles `time_format` (default `rfc3339`) and `timezone`. Errors name the key
    /// (`time_format` or `timezone`) and say what is wrong.
    pub fn compile(time_format: Option<&str>, timezone: Option<&str>) -> Result<Self, SpecError> {
        let unit = match time_format.unwrap_or("rfc3339") {
            "unix_s" => Some(TimestampUnit::S),
            "unix_ms" => Some(TimestampUnit::Ms),
            "unix_us" => Some(TimestampUnit::Us),
            "unix_ns" => Some(TimestampUnit::Ns),
            _ => None,
        };
        let format = time_format.unwrap_or("rfc3339");
        if unit.is_some() || format == "rfc3339" {
            if let Some(tz) = timezone {
                return Err(SpecError::new(
                    "timezone",
                    format!(
                        "timezone {tz:?} is only used with a strftime layout in time_format; \
                         {format:?} times carry their own offset"
                    ),
                ));
            }
            return Ok(unit.map_or(TimeFormat::Rfc3339, TimeFormat::Unix));
        }
        if !format.contains('%') {
            return Err(SpecError::new(
                "time_format",
                format!(
                    "{format:?} is not a time format: use unix_s, unix_ms, unix_us, unix_ns, \
                     rfc3339 or a strftime layout such as \"%d/%m/%Y %H:%M:%S\""
                ),
            ));
        }
        let zone = timezone.map(time_zone).transpose()?;
        // A layout is checked by writing a known time with it and reading that back: an unknown
        // directive, or one that cannot be parsed (`%Z`), or a missing date shows up here.
        let sample = Timestamp::new(1_767_323_045, 123_456_789)
            .map(|t| t.to_zoned(zone.clone().unwrap_or(TimeZone::UTC)))
            .map_err(|e| SpecError::new("time_format", e.to_string()))?;
        let bad = |what: String| Err(SpecError::new("time_format", what));
        let text = match strtime::format(format, &sample) {
            Ok(t) => t,
            Err(e) => return bad(format!("bad layout {format:?}: {e}")),
        };
        let parsed = match strtime::parse(format, &text) {
            Ok(p) => p,
            Err(e) => {
                return bad(format!(
                    "layout {format:?} cannot read back the text it writes ({text:?}): {e}"
                ))
            }
        };
        let has_zone = parsed.timestamp().is_some()
            || parsed.offset().is_some()
            || parsed.iana_time_zone().is_some();
        if !has_zone {
            if let Err(e) = parsed.to_datetime() {
                return bad(format!(
                    "layout {format:?} does not give a full date and time ({e})"
                ));
            }
        }
        let zone = match (zone, has_zone) {
            (Some(z), _) => z,
            (None, true) => TimeZone::UTC,
            (None, false) => {
                return Err(SpecError::new(
                    "timezone",
                    format!(
                        "time_format {format:?} has no UTC offset (%z) or zone (%Q): set \
                         timezone to an IANA name such as \"Asia/Ho_Chi_Minh\", or \"UTC\""
                    ),
                ))
            }
        };
        Ok(TimeFormat::Layout {
            layout: format.to_owned(),
            zone,
        })
    }

    /// Reads a time from a JSON value: a number (Unix formats) or a string (any format).
    pub fn parse_json(&self, value: &Value) -> Result<i64, BadTime> {
        match (self, value) {
            (TimeFormat::Unix(unit), Value::Number(n)) => {
                decimal_to_ns(&n.to_string(), unit.nanos())
                    .ok_or_else(|| BadTime(format!("{n} is out of range for a Unix time")))
            }
            (_, Value::String(s)) => self.parse_text(s),
            (_, other) => Err(BadTime(format!(
                "expected {} but got {}",
                self.expects(),
                crate::json::truncate(&other.to_string(), 64)
            ))),
        }
    }

    /// Reads a time from text.
    pub fn parse_text(&self, text: &str) -> Result<i64, BadTime> {
        let bad = || {
            BadTime(format!(
                "{:?} is not {}",
                crate::json::truncate(text, 64),
                self.expects()
            ))
        };
        match self {
            TimeFormat::Unix(unit) => decimal_to_ns(text, unit.nanos()).ok_or_else(bad),
            TimeFormat::Rfc3339 => rfc3339_to_ns(text).ok_or_else(bad),
            TimeFormat::Layout { layout, zone } => {
                let tm = strtime::parse(layout, text.trim())
                    .map_err(|e| BadTime(format!("{:?}: {e}", crate::json::truncate(text, 64))))?;
                let ts = if tm.timestamp().is_some() || tm.offset().is_some() {
                    tm.to_timestamp()
                } else if tm.iana_time_zone().is_some() {
                    tm.to_zoned().map(|z| z.timestamp())
                } else {
                    tm.to_datetime()
                        .and_then(|dt| zone.to_ambiguous_timestamp(dt).compatible())
                };
                ts.ok()
                    .and_then(|t| i64::try_from(t.as_nanosecond()).ok())
                    .ok_or_else(bad)
            }
        }
    }

    fn expects(&self) -> String {
        match self {
            TimeFormat::Unix(TimestampUnit::S) => "a Unix time in seconds".into(),
            TimeFormat::Unix(TimestampUnit::Ms) => "a Unix time in milliseconds".into(),
            TimeFormat::Unix(TimestampUnit::Us) => "a Unix time in microseconds".into(),
            TimeFormat::Unix(TimestampUnit::Ns) => "a Unix time in nanoseconds".into(),
            TimeFormat::Rfc3339 => "an RFC 3339 time".into(),
            TimeFormat::Layout { layout, .. } => format!("a time in the layout {layout:?}"),
        }
    }
}

/// For a config without a time source (`time`, `time_column`, named by `source`): refuses a
/// `time_format` or `timezone` that would be silently unused, naming that key.
pub fn refuse_unused(
    source: &str,
    time_format: Option<&str>,
    timezone: Option<&str>,
) -> Result<(), SpecError> {
    let key = match (time_format, timezone) {
        (Some(_), _) => "time_format",
        (None, Some(_)) => "timezone",
        (None, None) => return Ok(()),
    };
    Err(SpecError::new(
        key,
        format!("is only used with {source} (without it, the time of receipt is used)"),
    ))
}

/// An IANA time zone by name (`Asia/Ho_Chi_Minh`, `UTC`), from the bundled database; the error
/// is for the `timezone` key.
pub fn time_zone(name: &str) -> Result<TimeZone, SpecError> {
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    jiff::tz::db().get(name).map_err(|_| {
        SpecError::new(
            "timezone",
            format!("unknown time zone {name:?}: use an IANA name such as \"Asia/Ho_Chi_Minh\", or \"UTC\""),
        )
    })
}

/// Parses an RFC 3339 time (any offset; `T` or a space between date and time) to Unix
/// nanoseconds.
pub fn rfc3339_to_ns(text: &str) -> Option<i64> {
    let t: Timestamp = text.trim().parse().ok()?;
    i64::try_from(t.as_nanosecond()).ok()
}

/// A decimal number of `unit_ns`-nanosecond units (`"1607123955.475377"`, `"1.7e9"`) →
/// nanoseconds, exact to the digits written (no float multiplication for plain decimals).
pub fn decimal_to_ns(text: &str, unit_ns: i64) -> Option<i64> {
    let text = text.trim();
    if let Ok(i) = text.parse::<i64>() {
        return i.checked_mul(unit_ns);
    }
    if let Some((int, frac)) = text.split_once('.') {
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let digits_int = int.strip_prefix('-').unwrap_or(int);
        if plain(frac) && plain(digits_int) && !frac.is_empty() {
            let negative = int.starts_with('-');
            let whole: i64 = if digits_int.is_empty() {
                0
            } else {
                digits_int.parse().ok()?
            };
            // Fractional digits that still matter at 1 ns for this unit.
            let scale_digits = unit_ns.checked_ilog10().unwrap_or(0) as usize;
            let mut digits: String = frac.chars().take(scale_digits).collect();
            while digits.len() < scale_digits {
                digits.push('0');
            }
            let frac_ns: i64 = if digits.is_empty() {
                0
            } else {
                digits.parse().ok()?
            };
            let ns = whole.checked_mul(unit_ns)?.checked_add(frac_ns)?;
            return Some(if negative { -ns } else { ns });
        }
    }
    let f = crate::scalar::parse_number(text)? * unit_ns as f64;
    (f.is_finite() && f.abs() < i64::MAX as f64).then_some(f.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(f: &str, tz: Option<&str>) -> TimeFormat {
        TimeFormat::compile(Some(f), tz).unwrap()
    }

    fn err(f: Option<&str>, tz: Option<&str>) -> SpecError {
        TimeFormat::compile(f, tz).unwrap_err()
    }

    #[test]
    fn unix_units_take_numbers_and_numeric_text() {
        let s = compile("unix_s", None);
        assert_eq!(
            s.parse_json(&serde_json::json!(1_767_225_600)),
            Ok(1_767_225_600_000_000_000)
        );
        assert_eq!(
            s.parse_json(&serde_json::json!("1767225600.5")),
            Ok(1_767_225_600_500_000_000)
        );
        let ms = compile("unix_ms", None);
        assert_eq!(
            ms.parse_json(&serde_json::json!(1_767_225_600_123u64)),
            Ok(1_767_225_600_123_000_000)
        );
        let us = compile("unix_us", None);
        assert_eq!(
            us.parse_text(" 1767225600000001 "),
            Ok(1_767_225_600_000_001_000)
        );
        let ns = compile("unix_ns", None);
        assert_eq!(
            ns.parse_text("1767225600000000001"),
            Ok(1_767_225_600_000_000_001)
        );
        assert!(s.parse_text("soon").is_err());
        assert!(s.parse_json(&serde_json::json!(true)).is_err());
        assert!(s.parse_json(&serde_json::json!(1e300)).is_err());
    }

    #[test]
    fn rfc3339_with_any_offset() {
        let f = TimeFormat::compile(None, None).unwrap();
        // 2026-03-01T07:30:00+07:00 is 2026-03-01T00:30:00Z = 1772325000 s.
        assert_eq!(
            f.parse_text("2026-03-01T07:30:00+07:00"),
            Ok(1_772_325_000_000_000_000)
        );
        assert_eq!(
            f.parse_text("2026-03-01T00:30:00.25Z"),
            Ok(1_772_325_000_250_000_000)
        );
        assert!(f.parse_text("2026-03-01T07:30:00").is_err(), "no offset");
        assert!(f.parse_json(&serde_json::json!(1_772_325_000)).is_err());
    }

    #[test]
    fn local_layouts_use_the_configured_zone() {
        let f = compile("%d/%m/%Y %H:%M:%S", Some("Asia/Ho_Chi_Minh"));
        // Vietnam is UTC+7 all year.
        assert_eq!(
            f.parse_text("01/03/2026 07:30:00"),
            Ok(1_772_325_000_000_000_000)
        );
        let utc = compile("%Y%m%d%H%M%S", Some("UTC"));
        assert_eq!(
            utc.parse_text("20260301003000"),
            Ok(1_772_325_000_000_000_000)
        );
        // A layout with its own offset needs no zone, and the text's offset wins over one.
        let off = compile("%Y-%m-%d %H:%M:%S %z", None);
        assert_eq!(
            off.parse_text("2026-03-01 07:30:00 +0700"),
            Ok(1_772_325_000_000_000_000)
        );
        let both = compile("%Y-%m-%d %H:%M:%S %z", Some("Europe/Berlin"));
        assert_eq!(
            both.parse_text("2026-03-01 07:30:00 +0700"),
            Ok(1_772_325_000_000_000_000)
        );
        // Daylight saving: 2026-07-01 12:00 in Berlin is UTC+2.
        let berlin = compile("%Y-%m-%d %H:%M", Some("Europe/Berlin"));
        assert_eq!(
            berlin.parse_text("2026-07-01 12:00"),
            Ok(1_782_900_000_000_000_000)
        );
        assert!(f.parse_text("2026-03-01 07:30:00").is_err());
        assert!(f.parse_text("31/02/2026 07:30:00").is_err());
    }

    #[test]
    fn bad_formats_and_zones_are_config_errors_naming_the_key() {
        let e = err(Some("%d/%m/%Y %H:%M:%S"), None);
        assert_eq!(e.key, "timezone");
        assert!(e.message.contains("no UTC offset"), "{}", e.message);
        let e = err(Some("%d/%m/%Y %H:%M:%S"), Some("Asia/Saigon_City"));
        assert_eq!(e.key, "timezone");
        assert!(
            e.message.contains("unknown time zone \"Asia/Saigon_City\""),
            "{}",
            e.message
        );
        let e = err(Some("%d/%m/%Y %H:%M:%K"), Some("UTC"));
        assert_eq!(e.key, "time_format");
        assert!(e.message.contains("%K"), "{}", e.message);
        let e = err(Some("%H:%M:%S"), Some("UTC"));
        assert_eq!(e.key, "time_format");
        assert!(e.message.contains("full date and time"), "{}", e.message);
        let e = err(Some("unix_seconds"), None);
        assert_eq!(e.key, "time_format");
        let e = err(Some("unix_ms"), Some("UTC"));
        assert_eq!(e.key, "timezone");
    }

    #[test]
    fn the_old_name_still_works_for_zones() {
        // The tz database keeps Asia/Saigon as a link: configs written with it keep working.
        let f = compile("%Y-%m-%d %H:%M:%S", Some("Asia/Saigon"));
        assert_eq!(
            f.parse_text("2026-03-01 07:30:00"),
            Ok(1_772_325_000_000_000_000)
        );
    }
}
