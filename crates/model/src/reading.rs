//! The reading: the one shape every input produces and every output consumes.
//!
//! A [`Reading`] is what InfluxDB line protocol can carry: a measurement, a sorted tag set, a
//! non-empty field set and a timestamp in nanoseconds since the Unix epoch. [`Reading::validate`]
//! rejects, with a reason a technician can act on, anything the stores could not take or would
//! take ambiguously (empty names, NaN/±inf, control characters, keys the stores reserve), so that
//! what reaches the buffer always encodes to valid line protocol.

use std::collections::BTreeMap;
use std::fmt;

use crate::view::{FieldRef, ReadingView};

/// The value of one field. Line protocol distinguishes these five kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(String),
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Float(v) => write!(f, "{v}"),
            FieldValue::Int(v) => write!(f, "{v}i"),
            FieldValue::UInt(v) => write!(f, "{v}u"),
            FieldValue::Bool(v) => write!(f, "{v}"),
            FieldValue::Str(v) => write!(f, "{v:?}"),
        }
    }
}

/// Forwarding class of a reading: urgent readings (camera incidents) overtake normal ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    #[default]
    Normal,
    Urgent,
}

/// One typed measurement from one sensor at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub measurement: String,
    /// Sorted by key (a `BTreeMap`), as line protocol recommends for series identity.
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, FieldValue>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
}

/// Keys the stores reserve or treat specially; a tag or field by that name would be dropped or
/// break queries, so it is refused at the edge.
pub const RESERVED_KEYS: [&str; 3] = ["time", "_measurement", "_field"];

/// Why a reading cannot be forwarded. Each variant has a short, stable [`label`](Self::label)
/// used as the `reason` label of the rejection metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidReading {
    #[error("measurement name is empty")]
    EmptyMeasurement,
    #[error("reading has no fields")]
    NoFields,
    #[error("a tag key is empty")]
    EmptyTagKey,
    #[error("tag {key:?} has an empty value")]
    EmptyTagValue { key: String },
    #[error("a field key is empty")]
    EmptyFieldKey,
    #[error("field {field:?} is not a finite number ({value})")]
    NonFinite { field: String, value: f64 },
    #[error("{what} {text:?} contains a control character (newline, tab, ...)")]
    ControlCharacter { what: &'static str, text: String },
    #[error("{what} {text:?} has a backslash at its end or before ',', '=', ' ' or another backslash, which InfluxDB 1.x and 2.x read back differently")]
    AmbiguousBackslash { what: &'static str, text: String },
    #[error("measurement {name:?} starts with '#': the store would read the line as a comment and drop it")]
    CommentMeasurement { name: String },
    #[error("{what} {key:?} is a name the stores reserve")]
    ReservedKey { what: &'static str, key: String },
}

impl InvalidReading {
    /// A short, stable name for metrics labels and log fields.
    pub fn label(&self) -> &'static str {
        match self {
            InvalidReading::EmptyMeasurement => "empty_measurement",
            InvalidReading::NoFields => "no_fields",
            InvalidReading::EmptyTagKey => "empty_tag_key",
            InvalidReading::EmptyTagValue { .. } => "empty_tag_value",
            InvalidReading::EmptyFieldKey => "empty_field_key",
            InvalidReading::NonFinite { .. } => "non_finite",
            InvalidReading::ControlCharacter { .. } => "control_character",
            InvalidReading::AmbiguousBackslash { .. } => "ambiguous_backslash",
            InvalidReading::ReservedKey { .. } => "reserved_key",
            InvalidReading::CommentMeasurement { .. } => "comment_measurement",
        }
    }
}

/// Whether `text` holds a control character (`char::is_control`: U+0000–U+001F, U+007F–U+009F).
/// On bytes, for speed (every name of every reading passes here): U+0080–U+009F are the UTF-8
/// pairs `C2 80`–`C2 9F`, and no other sequence contains a byte below 0x20 or 0x7F.
fn has_control(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b < 0x20 || b == 0x7f || (b == 0xc2 && matches!(bytes.get(i + 1), Some(0x80..=0x9f)))
    })
}

fn check_text(what: &'static str, text: &str) -> Result<(), InvalidReading> {
    if has_control(text) {
        return Err(InvalidReading::ControlCharacter {
            what,
            text: text.to_owned(),
        });
    }
    Ok(())
}

/// A tag or field key (`what`): not empty (else `empty`), not reserved, a valid name.
fn check_key(what: &'static str, key: &str, empty: InvalidReading) -> Result<(), InvalidReading> {
    if key.is_empty() {
        return Err(empty);
    }
    if RESERVED_KEYS.contains(&key) {
        return Err(InvalidReading::ReservedKey {
            what,
            key: key.to_owned(),
        });
    }
    check_name(what, key)
}

/// Names (measurement, tag keys and values, field keys) are escaped with backslashes in line
/// protocol. A literal backslash right before a character that gets escaped, or at the very end,
/// is read back differently by InfluxDB 1.x and 2.x/3.x parsers, so it is refused.
fn check_name(what: &'static str, text: &str) -> Result<(), InvalidReading> {
    let bytes = text.as_bytes();
    // The common case, a plain ASCII name, in one pass.
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'\\')
    {
        return Ok(());
    }
    check_text(what, text)?;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\\' && matches!(bytes.get(i + 1), None | Some(b',' | b'=' | b' ' | b'\\')) {
            return Err(InvalidReading::AmbiguousBackslash {
                what,
                text: text.to_owned(),
            });
        }
    }
    Ok(())
}

impl Reading {
    /// A reading with no tags or fields yet.
    pub fn new(measurement: impl Into<String>, timestamp_ns: i64) -> Self {
        Reading {
            measurement: measurement.into(),
            tags: BTreeMap::new(),
            fields: BTreeMap::new(),
            timestamp_ns,
        }
    }

    /// Builder-style tag insert.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Builder-style field insert.
    pub fn field(mut self, key: impl Into<String>, value: FieldValue) -> Self {
        self.fields.insert(key.into(), value);
        self
    }

    /// Checks that line protocol can carry this reading exactly (see [`validate`]).
    pub fn validate(&self) -> Result<(), InvalidReading> {
        validate(self)
    }
}

/// Checks that line protocol can carry `reading` exactly: the rules of [`Reading::validate`],
/// for any shape of reading.
pub fn validate<R: ReadingView + ?Sized>(reading: &R) -> Result<(), InvalidReading> {
    let measurement = reading.measurement();
    if measurement.is_empty() {
        return Err(InvalidReading::EmptyMeasurement);
    }
    check_name("measurement", measurement)?;
    if measurement.starts_with('#') {
        // A line starting with '#' is a comment: the store would drop it silently.
        return Err(InvalidReading::CommentMeasurement {
            name: measurement.to_owned(),
        });
    }
    for (key, value) in reading.tags() {
        check_key("tag key", key, InvalidReading::EmptyTagKey)?;
        if value.is_empty() {
            return Err(InvalidReading::EmptyTagValue {
                key: key.to_owned(),
            });
        }
        check_name("tag value", value)?;
    }
    if reading.field_count() == 0 {
        return Err(InvalidReading::NoFields);
    }
    for (key, value) in reading.fields() {
        check_key("field key", key, InvalidReading::EmptyFieldKey)?;
        match value {
            FieldRef::Float(v) if !v.is_finite() => {
                return Err(InvalidReading::NonFinite {
                    field: key.to_owned(),
                    value: v,
                })
            }
            FieldRef::Str(s) => check_text("string field", s)?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Reading {
        Reading::new("environment", 1)
            .tag("sensor_id", "s1")
            .field("pm2_5", FieldValue::Float(12.5))
    }

    #[test]
    fn a_plain_reading_is_valid() {
        assert_eq!(ok().validate(), Ok(()));
    }

    #[test]
    fn rejects_what_line_protocol_cannot_carry() {
        let cases: Vec<(Reading, &str)> = vec![
            (
                Reading {
                    measurement: String::new(),
                    ..ok()
                },
                "empty_measurement",
            ),
            (
                Reading {
                    fields: BTreeMap::new(),
                    ..ok()
                },
                "no_fields",
            ),
            (ok().tag("", "x"), "empty_tag_key"),
            (ok().tag("district", ""), "empty_tag_value"),
            (ok().field("", FieldValue::Int(1)), "empty_field_key"),
            (ok().field("x", FieldValue::Float(f64::NAN)), "non_finite"),
            (
                ok().field("x", FieldValue::Float(f64::INFINITY)),
                "non_finite",
            ),
            (
                ok().field("x", FieldValue::Float(f64::NEG_INFINITY)),
                "non_finite",
            ),
            (ok().tag("district", "a\nb"), "control_character"),
            (
                ok().field("note", FieldValue::Str("line1\nline2".into())),
                "control_character",
            ),
            (ok().tag("path", "c:\\"), "ambiguous_backslash"),
            (ok().tag("path", "a\\,b"), "ambiguous_backslash"),
            (ok().tag("path", "a\\\\b"), "ambiguous_backslash"),
            (
                Reading {
                    measurement: "#env".into(),
                    ..ok()
                },
                "comment_measurement",
            ),
            (ok().tag("time", "x"), "reserved_key"),
            (ok().field("time", FieldValue::Int(3)), "reserved_key"),
        ];
        for (reading, label) in cases {
            let err = reading.validate().expect_err(label);
            assert_eq!(err.label(), label, "{reading:?}");
        }
    }

    #[test]
    fn control_characters_are_found_as_char_is_control_finds_them() {
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let text = format!("a{c}b");
            assert_eq!(has_control(&text), c.is_control(), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn special_characters_that_escape_cleanly_are_accepted() {
        let r = ok()
            .tag("site", "Nguyen Hue, \"gate\"=1")
            .tag("note", "a\\b")
            .field("plate", FieldValue::Str("51F \"12\\3\"".into()));
        assert_eq!(r.validate(), Ok(()));
    }
}
