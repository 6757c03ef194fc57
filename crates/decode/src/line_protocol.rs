//! Line protocol passthrough (`format = "influx"`): devices that already speak InfluxDB line
//! protocol publish it as is.
//!
//! Each line is parsed by InfluxData's own parser (`influxdb-line-protocol`), turned into a
//! [`Reading`] and validated like any other input, so the gateway tag, escaping, limits and the
//! durable buffer apply unchanged. A bad line is rejected alone, with its line number; the good
//! lines around it go through. A line without a timestamp gets the time of receipt; timestamps
//! are read in the input's `timestamp_unit` (nanoseconds by default for this format).

use std::collections::BTreeMap;

use influxdb_line_protocol::{parse_lines, FieldValue as LpValue};

use ioc_model::{FieldValue, InvalidReading, Reading};

/// A line that could not be taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: timestamp out of range")]
    Timestamp { line: usize },
    #[error("line {line}: {source}")]
    Invalid {
        line: usize,
        #[source]
        source: InvalidReading,
    },
}

impl LineError {
    pub fn label(&self) -> &'static str {
        match self {
            LineError::NotUtf8 => "not_utf8",
            LineError::Syntax { .. } => "bad_line",
            LineError::Timestamp { .. } => "bad_timestamp",
            LineError::Invalid { source, .. } => source.label(),
        }
    }
}

/// Decodes a payload of line protocol: every good line becomes a reading, every bad line an
/// error (1-based line numbers). `unit_ns` scales the lines' timestamps to nanoseconds.
pub fn decode(
    static_tags: &BTreeMap<String, String>,
    payload: &[u8],
    unit_ns: i64,
    received_ns: i64,
) -> (Vec<Reading>, Vec<LineError>) {
    let Ok(text) = std::str::from_utf8(payload) else {
        return (Vec::new(), vec![LineError::NotUtf8]);
    };
    let mut readings = Vec::new();
    let mut errors = Vec::new();
    // Parse line by line so that one bad line cannot hide the ones after it.
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_end_matches('\r');
        if trimmed.trim().is_empty() || trimmed.trim_start().starts_with('#') {
            continue;
        }
        for parsed in parse_lines(trimmed) {
            let parsed = match parsed {
                Ok(p) => p,
                Err(e) => {
                    errors.push(LineError::Syntax {
                        line,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let ts = match parsed.timestamp {
                None => Some(received_ns),
                Some(t) => t.checked_mul(unit_ns),
            };
            let Some(ts) = ts else {
                errors.push(LineError::Timestamp { line });
                continue;
            };
            let mut r = Reading::new(parsed.series.measurement.as_str(), ts);
            r.tags = static_tags.clone();
            if let Some(tags) = &parsed.series.tag_set {
                for (k, v) in tags {
                    r.tags.insert(k.as_str().to_owned(), v.as_str().to_owned());
                }
            }
            for (k, v) in &parsed.field_set {
                let v = match v {
                    LpValue::I64(i) => FieldValue::Int(*i),
                    LpValue::U64(u) => FieldValue::UInt(*u),
                    LpValue::F64(f) => FieldValue::Float(*f),
                    LpValue::Boolean(b) => FieldValue::Bool(*b),
                    LpValue::String(s) => FieldValue::Str(s.as_str().to_owned()),
                };
                r.fields.insert(k.as_str().to_owned(), v);
            }
            match r.validate() {
                Ok(()) => readings.push(r),
                Err(source) => errors.push(LineError::Invalid { line, source }),
            }
        }
    }
    (readings, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_lines_pass_and_a_bad_line_is_rejected_alone() {
        let payload = b"weather,site=a\\ b temp=21.5,ok=true,n=3i,u=4u,s=\"x \\\"y\\\"\" 1700000000000000000\n\
            this is not line protocol\n\
            weather,site=c temp=1\n\
            # a comment\n\
            weather,site=d\n\
            weather,site=e temp=2 1700000000000000001\r\n";
        let (readings, errors) = decode(&BTreeMap::new(), payload, 1, 42);
        assert_eq!(readings.len(), 3, "{errors:?}");
        let r = &readings[0];
        assert_eq!(r.measurement, "weather");
        assert_eq!(r.tags["site"], "a b");
        assert_eq!(r.fields["temp"], FieldValue::Float(21.5));
        assert_eq!(r.fields["ok"], FieldValue::Bool(true));
        assert_eq!(r.fields["n"], FieldValue::Int(3));
        assert_eq!(r.fields["u"], FieldValue::UInt(4));
        assert_eq!(r.fields["s"], FieldValue::Str("x \"y\"".into()));
        assert_eq!(r.timestamp_ns, 1_700_000_000_000_000_000);
        assert_eq!(
            readings[1].timestamp_ns, 42,
            "no timestamp: time of receipt"
        );
        assert_eq!(readings[2].timestamp_ns, 1_700_000_000_000_000_001);
        assert_eq!(errors.len(), 2);
        assert!(
            matches!(errors[0], LineError::Syntax { line: 2, .. }),
            "{errors:?}"
        );
        assert!(
            matches!(errors[1], LineError::Syntax { line: 5, .. }),
            "{errors:?}"
        );
    }

    #[test]
    fn units_scale_and_overflow_is_rejected() {
        let (r, e) = decode(&BTreeMap::new(), b"m v=1 1700000000", 1_000_000_000, 0);
        assert!(e.is_empty());
        assert_eq!(r[0].timestamp_ns, 1_700_000_000_000_000_000);
        let (r, e) = decode(&BTreeMap::new(), b"m v=1 9223372036854775807", 1000, 0);
        assert!(r.is_empty());
        assert_eq!(e[0].label(), "bad_timestamp");
    }

    #[test]
    fn validation_applies() {
        let (r, e) = decode(&BTreeMap::new(), b"m time=1 5\nm v=1 5", 1, 0);
        assert_eq!(r.len(), 1);
        assert_eq!(e[0].label(), "reserved_key");
        let (_, e) = decode(&BTreeMap::new(), b"\xff\xfe", 1, 0);
        assert_eq!(e[0].label(), "not_utf8");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&BTreeMap::new(), &bytes, 1, 0);
        }
    }
}
