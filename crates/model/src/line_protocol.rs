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
//! Numbers: floats are written in the shortest form that parses back to the same `f64` (what
//! Rust's `Display` writes, or scientific notation as `LowerExp` writes it for very large or small
//! magnitudes so a line never carries hundreds of zeros); integers get the `i` suffix, unsigned
//! integers `u`; timestamps are in nanoseconds (send with `precision=ns`).
//!
//! This is the hot end of the ingest path (every reading passes here once), so numbers are
//! formatted with `itoa` and `ryu` instead of `core::fmt`: the digits are the same shortest
//! round-tripping ones, laid out here exactly as `Display`/`LowerExp` would (a test compares the
//! two over millions of values).

use crate::{FieldRef, Reading, ReadingView};

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

/// Appends `reading` (a [`Reading`] or any other [`ReadingView`]) as one line of line protocol,
/// terminated by `\n`, to `out`.
///
/// The reading must have passed [`Reading::validate`]; for a reading that did not, the output is
/// unspecified (but this never panics in release builds).
pub fn encode<R: ReadingView + ?Sized>(reading: &R, flavor: Flavor, out: &mut Vec<u8>) {
    debug_assert!(
        crate::validate(reading).is_ok(),
        "encoding an invalid reading of {:?}",
        reading.measurement()
    );
    escape_into(out, reading.measurement(), is_measurement_special);
    for (key, value) in reading.tags() {
        out.push(b',');
        escape_into(out, key, is_name_special);
        out.push(b'=');
        escape_into(out, value, is_name_special);
    }
    let mut separator = b' ';
    for (key, value) in reading.fields() {
        out.push(separator);
        separator = b',';
        escape_into(out, key, is_name_special);
        out.push(b'=');
        encode_value(value, flavor, out);
    }
    out.push(b' ');
    out.extend_from_slice(
        itoa::Buffer::new()
            .format(reading.timestamp_ns())
            .as_bytes(),
    );
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
fn escape_into(out: &mut Vec<u8>, text: &str, special: impl Fn(u8) -> bool) {
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

fn encode_value(value: FieldRef<'_>, flavor: Flavor, out: &mut Vec<u8>) {
    match value {
        FieldRef::Float(v) => encode_float(v, out),
        FieldRef::Int(v) => {
            out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            out.push(b'i');
        }
        FieldRef::UInt(v) => match flavor {
            Flavor::V2 => {
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
                out.push(b'u');
            }
            Flavor::V1 => match i64::try_from(v) {
                Ok(signed) => {
                    out.extend_from_slice(itoa::Buffer::new().format(signed).as_bytes());
                    out.push(b'i');
                }
                // Documented precision loss: InfluxDB 1.x has no integer type that holds it.
                Err(_) => encode_float(v as f64, out),
            },
        },
        FieldRef::Bool(v) => out.extend_from_slice(if v { b"true" } else { b"false" }),
        FieldRef::Str(s) => {
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
    let scientific = !(magnitude == 0.0 || (1e-5..1e16).contains(&magnitude));
    if !scientific && short_decimal(v, out) {
        return;
    }
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(v).as_bytes();
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if negative {
        out.push(b'-');
    }
    // ryu writes `d.ddd`, `0.000ddd`, `ddd0.0` or `d.ddde-x`; take out the significant digits
    // (`digits`, no leading or trailing zeros) and where the decimal point goes: the value is
    // 0.`digits` × 10^`point`.
    let (mantissa, exponent) = match text.iter().position(|&b| b == b'e') {
        Some(e) => (&text[..e], parse_exponent(&text[e + 1..])),
        None => (text, 0),
    };
    let mut digits = [0u8; 32];
    let mut len = 0;
    let mut point = 0i32;
    let mut seen_point = false;
    for &b in mantissa {
        match b {
            b'.' => seen_point = true,
            b'0' if len == 0 && seen_point => point -= 1,
            b'0' if len == 0 => {}
            b'0'..=b'9' => {
                if len < digits.len() {
                    digits[len] = b;
                    len += 1;
                }
                if !seen_point {
                    point += 1;
                }
            }
            _ => {}
        }
    }
    while len > 0 && digits[len - 1] == b'0' {
        len -= 1;
    }
    let digits = &digits[..len];
    if digits.len() >= 16 {
        // Where two shortest forms are equally near (only possible at 16 or 17 digits), ryu
        // rounds half to even and `core::fmt` half up; keep `core::fmt`'s choice there.
        out.truncate(out.len() - usize::from(negative));
        fmt_float(v, scientific, out);
        return;
    }
    if digits.is_empty() {
        out.push(b'0');
        return;
    }
    let point = point + exponent;
    if scientific {
        // LowerExp: `d.ddde-x`, no `+`, no trailing zeros.
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.extend_from_slice(itoa::Buffer::new().format(point - 1).as_bytes());
    } else if point <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', point.unsigned_abs() as usize));
        out.extend_from_slice(digits);
    } else {
        let point = point as usize;
        if point >= digits.len() {
            out.extend_from_slice(digits);
            out.extend(std::iter::repeat_n(b'0', point - digits.len()));
        } else {
            out.extend_from_slice(&digits[..point]);
            out.push(b'.');
            out.extend_from_slice(&digits[point..]);
        }
    }
}

/// Powers of ten [`short_decimal`] tries, exact as `f64`.
const POW10: [f64; 7] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6];

/// What sensors send (`12.5`, `-3.25`, `1013`): a value that is `m / 10^k` for an integer `m`
/// below 2^51 and `k` ≤ 6, written as those digits without the float algorithm. The smallest
/// such `k` gives the shortest form, and with `m` < 2^51 the value's rounding interval is
/// narrower than 10^-k, so no other `k`-digit decimal reads back as `v`: the digits are the
/// ones `Display` writes. Returns false (nothing written) for anything else.
fn short_decimal(v: f64, out: &mut Vec<u8>) -> bool {
    const LIMIT: f64 = (1u64 << 51) as f64;
    for (k, &p) in POW10.iter().enumerate() {
        let scaled = v * p;
        if scaled.abs() >= LIMIT {
            return false;
        }
        let m = scaled.round();
        if m / p != v {
            continue;
        }
        if m == 0.0 {
            // ±0 (the caller sends only finite values): `Display` writes `0` and `-0`.
            out.extend_from_slice(if v.is_sign_negative() { b"-0" } else { b"0" });
            return true;
        }
        // |m| < 2^51: exact as an integer.
        let m = m as i64;
        if m < 0 {
            out.push(b'-');
        }
        let mut buffer = itoa::Buffer::new();
        let digits = buffer.format(m.unsigned_abs()).as_bytes();
        if k == 0 {
            out.extend_from_slice(digits);
        } else if digits.len() > k {
            let (int, frac) = digits.split_at(digits.len() - k);
            out.extend_from_slice(int);
            out.push(b'.');
            out.extend_from_slice(frac);
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', k - digits.len()));
            out.extend_from_slice(digits);
        }
        return true;
    }
    false
}

/// `core::fmt`'s layout, for the rare values [`encode_float`] leaves to it.
#[cold]
fn fmt_float(v: f64, scientific: bool, out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = if scientific {
        write!(out, "{v:e}")
    } else {
        write!(out, "{v}")
    };
}

/// The decimal exponent after ryu's `e` (`-7`, `16`); 0 for anything else (ryu writes no other).
fn parse_exponent(text: &[u8]) -> i32 {
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let mut e = 0i32;
    for &b in text {
        if b.is_ascii_digit() {
            e = e.saturating_mul(10).saturating_add(i32::from(b - b'0'));
        }
    }
    if negative {
        -e
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FieldValue;

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

    /// The ryu-based layout writes exactly what `Display` (or `LowerExp` outside 1e-5..1e16)
    /// writes, for any bit pattern and for the short decimals sensors send.
    #[test]
    fn floats_match_core_fmt_exactly() {
        let reference = |v: f64| {
            let m = v.abs();
            if m == 0.0 || (1e-5..1e16).contains(&m) {
                format!("{v}")
            } else {
                format!("{v:e}")
            }
        };
        let check = |v: f64| {
            if !v.is_finite() {
                return;
            }
            let mut out = Vec::new();
            encode_float(v, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                reference(v),
                "{:#x}",
                v.to_bits()
            );
        };
        // A fixed xorshift sequence: reproducible, every exponent and mantissa shape.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(f64::from_bits(x));
        }
        // Random values cut to 1..=16 significant digits: the shapes that take the ryu path.
        for i in 0..400_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                let cut: f64 = format!("{:.*e}", (i % 16) as usize, v).parse().unwrap();
                check(cut);
            }
        }
        // Decimals m / 10^k of every length, across the 2^51 edge of the short path.
        for i in 0..1_000_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let m = (x >> (i % 60)) as i64 * if i % 2 == 0 { 1 } else { -1 };
            check(m as f64 / 10f64.powi((i % 9) as i32));
        }
        for i in -20_000i64..20_000 {
            check(i as f64 / 10.0);
            check(i as f64 / 100.0);
            check(i as f64 * 1e-7);
        }
        for e in -330..310 {
            for m in [1.0, 1.5, 9.99, 2.2250738585072014, 1.7976931348623157] {
                check(m * 10f64.powi(e));
            }
        }
        for v in [
            1e15,
            9.999999999999998e15,
            1e16,
            1e-5,
            9.999999999999999e-6,
            1e21,
            1e22,
            123456789012345680.0,
        ] {
            check(v);
            check(-v);
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
