//! Property test: any valid reading encodes to a line that InfluxData's own parser
//! (`influxdb-line-protocol`) reads back to exactly the same measurement, tags, fields (type and
//! value, floats bit for bit) and timestamp — in both flavors.

use influxdb_line_protocol::{parse_lines, FieldValue as Parsed};
use ioc_gateway::model::{FieldValue, Reading};
use ioc_gateway::output::line_protocol::{encode, Flavor};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Names mix plain characters with every character line protocol escapes, backslashes, quotes
/// and multi-byte text.
const NAME: &str = "[a-zA-Z0-9_ ,=\"\\\\.#ễ世-]{1,10}";

/// A name the model accepts. Two backslashes in a row are left out: InfluxData's Rust parser
/// (and VictoriaMetrics) read `\\` in a name as one backslash, the Go parser of InfluxDB 1.x/2.x
/// as two, so no encoding is exact for both (reported to the model's owner).
fn name() -> impl Strategy<Value = String> {
    NAME.prop_filter("the model refuses it, or the parsers disagree", |s| {
        let bytes = s.as_bytes();
        !s.contains("\\\\")
            && bytes.iter().enumerate().all(|(i, b)| {
                *b != b'\\' || !matches!(bytes.get(i + 1), None | Some(b',' | b'=' | b' '))
            })
    })
}

fn float() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::MIN_POSITIVE),
        Just(0.1),
        Just(-0.0),
        (-1_000_000i64..1_000_000).prop_map(|n| n as f64 / 100.0),
    ]
}

fn field_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        float().prop_map(FieldValue::Float),
        any::<i64>().prop_map(FieldValue::Int),
        any::<u64>().prop_map(FieldValue::UInt),
        prop_oneof![
            Just(0u64),
            Just(i64::MAX as u64),
            Just(i64::MAX as u64 + 1),
            Just(u64::MAX)
        ]
        .prop_map(FieldValue::UInt),
        any::<bool>().prop_map(FieldValue::Bool),
        // Any text without control characters, ending in a backslash now and then.
        ("[^\\p{Cc}]{0,20}", any::<bool>())
            .prop_map(|(s, slash)| { FieldValue::Str(if slash { format!("{s}\\") } else { s }) }),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    (
        name(),
        prop::collection::btree_map(name(), name(), 0..5),
        prop::collection::btree_map(name(), field_value(), 1..6),
        any::<i64>(),
    )
        .prop_map(|(measurement, tags, fields, timestamp_ns)| Reading {
            measurement,
            tags,
            fields,
            timestamp_ns,
        })
        .prop_filter("only valid readings reach the encoder", |r| {
            r.validate().is_ok()
        })
        // A line starting with '#' is a comment to every parser (InfluxDB 1.x answers 204 and
        // drops it) and no escape exists for it: the model must refuse such a measurement
        // (reported to its owner); until it does, it is left out here.
        .prop_filter("measurement starting with '#'", |r| {
            !r.measurement.starts_with('#')
        })
}

/// What a field should read back as in `flavor`.
fn expected(value: &FieldValue, flavor: Flavor) -> FieldValue {
    match (value, flavor) {
        (FieldValue::UInt(v), Flavor::V1) => match i64::try_from(*v) {
            Ok(i) => FieldValue::Int(i),
            Err(_) => FieldValue::Float(*v as f64),
        },
        (other, _) => other.clone(),
    }
}

fn check(reading: &Reading, flavor: Flavor) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    encode(reading, flavor, &mut out);
    let text = String::from_utf8(out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(text.ends_with('\n'));
    prop_assert_eq!(text.matches('\n').count(), 1);
    let mut lines = parse_lines(text.trim_end_matches('\n'));
    let parsed = match lines.next() {
        Some(Ok(p)) => p,
        other => return Err(TestCaseError::fail(format!("{text:?}: {other:?}"))),
    };
    prop_assert!(lines.next().is_none());
    prop_assert_eq!(
        parsed.series.measurement.as_str(),
        reading.measurement.as_str()
    );
    let tags: BTreeMap<String, String> = parsed
        .series
        .tag_set
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
        .collect();
    prop_assert_eq!(&tags, &reading.tags);
    prop_assert_eq!(parsed.field_set.len(), reading.fields.len());
    for ((key, value), (want_key, want)) in parsed.field_set.iter().zip(&reading.fields) {
        prop_assert_eq!(key.as_str(), want_key.as_str());
        let got = match value {
            Parsed::F64(v) => FieldValue::Float(*v),
            Parsed::I64(v) => FieldValue::Int(*v),
            Parsed::U64(v) => FieldValue::UInt(*v),
            Parsed::Boolean(v) => FieldValue::Bool(*v),
            Parsed::String(s) => FieldValue::Str(s.as_str().to_owned()),
        };
        match (&got, expected(want, flavor)) {
            (FieldValue::Float(g), FieldValue::Float(w)) => {
                prop_assert_eq!(g.to_bits(), w.to_bits(), "{} vs {} in {:?}", g, w, text)
            }
            (g, w) => prop_assert_eq!(g, &w, "in {:?}", text),
        }
    }
    prop_assert_eq!(parsed.timestamp, Some(reading.timestamp_ns));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_readings_parse_back_exactly(reading in reading()) {
        check(&reading, Flavor::V2)?;
        check(&reading, Flavor::V1)?;
    }
}
