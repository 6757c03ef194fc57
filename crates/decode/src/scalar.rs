//! Scalars as payloads write them: numbers given as text (`"12.5"`, `" 7 "`) and the sentinel
//! values (`-99`, `"NA"`) that stations send for "no data".
//!
//! The JSON mapping, the CSV format and the serial `lines` protocol all read values like these;
//! this module is the one place that decides what counts as a number and what is dropped.

use serde::Deserialize;

/// A finite number from text: surrounding blanks are ignored, `+`/`-`, decimals and exponents
/// are allowed; `NaN`, `inf`, an empty string or anything else is `None`.
pub fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    // Rust's float parser also takes "inf", "nan" and "infinity": not numbers a sensor sends.
    if t.is_empty() || !t.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A whole number from text (`"42"`, `"-7"`, `"42.0"`); `None` for a fraction, an overflow or
/// anything that is not a number.
pub fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(i);
    }
    let f = parse_number(t)?;
    // i64::MAX as f64 rounds up to 2^63, which does not fit: keep strictly below it.
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// One configured sentinel: a number (`-99`, compared by value, so `-99.0` and `"-99"` match)
/// or a text (`"NA"`, compared with the trimmed raw value).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DropValue {
    Number(f64),
    Text(String),
}

/// The `drop_values` of a config: values that mean "no data", so the field is left out.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct DropValues(pub Vec<DropValue>);

impl DropValues {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a value given as `raw` text (if it was text) and read as `number` (if it is one)
    /// is a sentinel.
    pub fn drops(&self, raw: Option<&str>, number: Option<f64>) -> bool {
        self.0.iter().any(|d| match d {
            DropValue::Number(n) => number == Some(*n),
            DropValue::Text(t) => raw.is_some_and(|r| r.trim() == t),
        })
    }

    /// Whether a number is a sentinel.
    pub fn drops_number(&self, number: f64) -> bool {
        self.drops(None, Some(number))
    }

    /// Whether a text value (a number or not) is a sentinel.
    pub fn drops_text(&self, raw: &str) -> bool {
        self.drops(Some(raw), parse_number(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_text() {
        assert_eq!(parse_number(" 12.5 "), Some(12.5));
        assert_eq!(parse_number("-3e2"), Some(-300.0));
        assert_eq!(parse_number("+7"), Some(7.0));
        for bad in [
            "",
            " ",
            "NaN",
            "inf",
            "-infinity",
            "12,5",
            "0x10",
            "1e999",
            "abc",
        ] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
        assert_eq!(parse_int("42"), Some(42));
        assert_eq!(parse_int("42.0"), Some(42));
        assert_eq!(parse_int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int("42.5"), None);
        assert_eq!(parse_int("1e19"), None);
    }

    #[test]
    fn sentinels_match_by_value_or_text() {
        let d: DropValues = serde_json::from_str(r#"[-99, "NA"]"#).unwrap();
        assert!(d.drops_number(-99.0));
        assert!(d.drops_text("-99.0"));
        assert!(d.drops_text(" NA "));
        assert!(!d.drops_text("-98"));
        assert!(!d.drops_number(99.0));
        assert!(!DropValues::default().drops_text("-99"));
    }
}
