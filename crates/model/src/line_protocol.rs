//! InfluxDB line protocol encoder: one validated [`Reading`] becomes one line.
//!
//! Written by hand rather than taken from the `influxdb2` crate, whose encoder leaves a trailing
//! backslash in a string field unescaped (the closing quote is then read as escaped) and writes
//! `NaN`, which every store rejects. The escaping rules are exactly those of the line protocol
//! reference:
//!
//! | element                         | escaped with a backslash |
//! |---------------------------------|--------------------------|
//! | measurement                     | comma, space             |
//! | tag key, tag value, field key   | comma, equals sign, space|
//! | string field value (in `"…"`)   | double quote, backslash  |
//!
//! A backslash in a *name* is written as it is: the stores read `\` followed by any other
//! character literally. [`Reading::validate`] refuses the cases the parsers disagree on (a
//! backslash at the end of a name or before `,`, `=`, space) and control characters, so every
//! reading that reaches this encoder encodes unambiguously.
//!
//! Numbers: floats are written in the shortest form that parses back to the same `f64` (Rust's
//! `Display`, or scientific notation for very large or small magnitudes so a line never carries
//! hundreds of zeros); integers get the `i` suffix, unsigned integers `u`; timestamps are in
//! nanoseconds (send with `precision=ns`).

use crate::{FieldValue, Reading};
use std::io::Write as _;

/// Which dialect of line protocol to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// InfluxDB 2.x/3.x and VictoriaMetrics: unsigned integers as `123u`.
    #[default]
    V2,
    /// InfluxDB 1.x (1.6 has no unsigned type and rejects the `u` suffix): an unsigned integer
    /// up to `i64::MAX` is written as a signed integer (`123i`, exact); a larger one as a float
    /// (the nearest `f64`, so it loses precision beyond 2^53 — there is no exact form for it).
    V1,
}

/// Appends `reading` as one line of line protocol, terminated by `\n`, to `out`.
///
/// The reading must have passed [`Reading::validate`]; for a reading that did not, the output is
/// unspecified (but this never panics in release builds).
pub fn encode(reading: &Reading, flavor: Flavor, out: &mut Vec<u8>) {
    debug_assert!(
        reading.validate().is_ok(),
        "encoding an invalid reading: {reading:?}"
    );
    escape_into(out, &reading.measurement, is_measurement_special);
    for (key, value) in &reading.tags {
        out.push(b',');
        escape_into(out, key, is_name_special);
        out.push(b'=');
        escape_into(out, value, is_name_special);
    }
    let mut separator = b' ';
    for (key, value) in &reading.fields {
        out.push(separator);
        separator = b',';
        escape_into(out, key, is_name_special);
        out.push(b'=');
        encode_value(value, flavor, out);
    }
    out.push(b' ');
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}", reading.timestamp_ns);
    out.push(b'\n');
}

/// Encodes many readings, one line each, into a fresh buffer.
pub fn encode_all<'a>(readings: impl IntoIterator<Item = &'a Reading>, flavor: Flavor) -> Vec<u8> {
    let mut out = Vec::new();
    for reading in readings {
        encode(reading, flavor, &mut out);
    }
    out
}

fn is_measurement_special(b: u8) -> bool {
    matches!(b, b',' | b' ')
}

fn is_name_special(b: u8) -> bool {
    matches!(b, b',' | b'=' | b' ')
}

fn is_string_value_special(b: u8) -> bool {
    matches!(b, b'"' | b'\\')
}

/// Copies `text` into `out`, putting a backslash before every byte `special` selects. All special
/// characters are ASCII, so working on bytes never splits a UTF-8 sequence.
fn escape_into(out: &mut Vec<u8>, text: &str, special: fn(u8) -> bool) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if special(b) {
            out.extend_from_slice(&bytes[start..i]);
            out.push(b'\\');
            out.push(b);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

fn encode_value(value: &FieldValue, flavor: Flavor, out: &mut Vec<u8>) {
    match value {
        FieldValue::Float(v) => encode_float(*v, out),
        FieldValue::Int(v) => {
            let _ = write!(out, "{v}i");
        }
        FieldValue::UInt(v) => match flavor {
            Flavor::V2 => {
                let _ = write!(out, "{v}u");
            }
            Flavor::V1 => match i64::try_from(*v) {
                Ok(signed) => {
                    let _ = write!(out, "{signed}i");
                }
                // Documented precision loss: InfluxDB 1.x has no integer type that holds it.
                Err(_) => encode_float(*v as f64, out),
            },
        },
        FieldValue::Bool(v) => out.extend_from_slice(if *v { b"true" } else { b"false" }),
        FieldValue::Str(s) => {
            out.push(b'"');
            escape_into(out, s, is_string_value_special);
            out.push(b'"');
        }
    }
}

/// Shortest representation that parses back to exactly `v`. Rust's `Display` and `LowerExp` for
/// `f64` both print the shortest round-tripping digits; `Display` never uses an exponent, so very
/// large or small magnitudes use scientific notation (`1e300`, `2.5e-10`), which every store's
/// parser accepts.
fn encode_float(v: f64, out: &mut Vec<u8>) {
    debug_assert!(v.is_finite(), "non-finite float reached the encoder: {v}");
    if !v.is_finite() {
        // Validation rejects these; should one slip through, write a value that makes the store
        // reject this line (which then goes to the dead-letter file) rather than a wrong number.
        out.extend_from_slice(b"\"non-finite\"");
        return;
    }
    let magnitude = v.abs();
    if magnitude == 0.0 || (1e-5..1e16).contains(&magnitude) {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(reading: &Reading, flavor: Flavor) -> String {
        let mut out = Vec::new();
        encode(reading, flavor, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_use_shortest_round_tripping_form() {
        let cases = [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (12.5, "12.5"),
            (0.1, "0.1"),
            (1e-5, "0.00001"),
            (9.99e-6, "9.99e-6"),
            (1e16, "1e16"),
            (9.5e15, "9500000000000000"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (-123.456, "-123.456"),
        ];
        for (v, expected) in cases {
            let mut out = Vec::new();
            encode_float(v, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text, expected, "{v:?}");
            assert_eq!(text.parse::<f64>().unwrap().to_bits(), v.to_bits());
        }
    }

    #[test]
    fn unsigned_in_v1_becomes_integer_or_float() {
        let r = Reading::new("m", 1)
            .field("a", FieldValue::UInt(7))
            .field("b", FieldValue::UInt(i64::MAX as u64))
            .field("c", FieldValue::UInt(u64::MAX));
        assert_eq!(
            line(&r, Flavor::V1),
            "m a=7i,b=9223372036854775807i,c=1.8446744073709552e19 1\n"
        );
        assert_eq!(
            line(&r, Flavor::V2),
            "m a=7u,b=9223372036854775807u,c=18446744073709551615u 1\n"
        );
    }
}
