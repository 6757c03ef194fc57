//! The instruments checked against the gateway's own `lines` decoder, configured with the
//! example sections of `config/text-instruments.toml`: what the decoder stores and counts is
//! exactly what each burst says.

use super::*;
use ioc_decode::lines::{Lines, LinesConfig, LinesDecoder};
use ioc_decode::text_line::{BadLine, LineOutput};

/// The `[inputs.serial.lines]` section and the input's measurement of the example input `name`.
fn example(name: &str) -> (LinesConfig, Option<String>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/text-instruments.toml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    let input = doc["inputs"]["serial"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no example input {name}"));
    let lines: LinesConfig = input["lines"].clone().try_into().unwrap();
    let measurement = input
        .get("measurement")
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    (lines, measurement)
}

fn decoder(format: LineFormat) -> LinesDecoder {
    let (cfg, measurement) = example(match format {
        LineFormat::Level => "canal-level-3",
        LineFormat::Noise => "noise-hoan-kiem",
    });
    let tags = BTreeMap::from([("sensor_id".to_string(), "s-1".to_string())]);
    let lines = Lines::compile(&cfg, measurement.as_deref(), tags).unwrap();
    LinesDecoder::new(lines, ioc_decode::text_line::DEFAULT_MAX_LINE_BYTES)
}

fn options(format: LineFormat, faults: &str) -> SensorOptions {
    SensorOptions {
        format,
        faults: faults.parse().unwrap(),
        line_ending: LineEnding::Mix,
        start_ms: crate::civil_time::parse_rfc3339_ms("2026-12-03T09:59:58.500Z").unwrap(),
        step_ms: 250,
    }
}

fn values(r: &ioc_model::Reading) -> BTreeMap<String, f64> {
    r.fields
        .iter()
        .map(|(k, v)| match v {
            ioc_model::FieldValue::Float(f) => (k.clone(), *f),
            other => panic!("{k}: {other:?}"),
        })
        .collect()
}

/// Plays `lines` lines into the gateway's decoder; asserts that it stored and counted exactly
/// what the bursts say. Returns the totals and the injected faults.
fn play(
    format: LineFormat,
    seed: u64,
    faults: &str,
    lines: u64,
) -> (LineCounts, BTreeMap<&'static str, u64>) {
    let mut sensor = LineSensor::new(seed, options(format, faults)).unwrap();
    let mut d = decoder(format);
    let mut got = LineOutput::default();
    let mut want = LineCounts::default();
    let mut injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut stored: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
    for i in 0..lines {
        let b = sensor.next_line();
        want.add(&b.counts);
        for (k, n) in &b.faults {
            *injected.entry(k).or_default() += n;
        }
        if b.entry.0 == Expect::Stored {
            assert!(stored.insert(b.ts_ms, b.entry.2.clone()).is_none());
        }
        for w in &b.writes {
            d.push(w, i as i64, &mut got);
        }
    }
    let (last, counts) = sensor.finish();
    want.add(&counts);
    if let Some(w) = last {
        d.push(&w, 0, &mut got);
    }
    d.flush(&mut got);
    let bad = |r: BadLine| got.bad.iter().filter(|b| **b == r).count() as u64;
    let counted = LineCounts {
        ok: got.good,
        skipped: got.skipped,
        no_values: got.no_values,
        no_match: got.no_match,
        checksum: bad(BadLine::Checksum),
        no_checksum: bad(BadLine::NoChecksum),
        truncated: bad(BadLine::Truncated),
    };
    assert_eq!(counted, want, "{:?} {:?}", got.bad, got.unmatched);
    assert_eq!(
        got.bad.len() as u64,
        want.checksum + want.no_checksum + want.truncated,
        "{:?}",
        got.bad
    );
    let mut readings: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
    for r in &got.readings {
        assert_eq!(r.measurement, format.measurement());
        assert_eq!(r.tags.get("sensor_id").map(String::as_str), Some("s-1"));
        assert!(readings
            .insert(r.timestamp_ns / 1_000_000, values(r))
            .is_none());
        assert_eq!(r.timestamp_ns % 1_000_000, 0);
    }
    assert_eq!(readings, stored);
    (want, injected)
}

#[test]
fn a_clean_level_logger_is_stored_line_for_line_with_its_own_time() {
    let (counts, _) = play(LineFormat::Level, 1, "", 300);
    assert_eq!(
        counts,
        LineCounts {
            ok: 300,
            ..LineCounts::default()
        }
    );
}

#[test]
fn level_logger_faults_are_counted_as_the_gateway_counts_them() {
    for seed in 0..8 {
        let (counts, f) = play(
            LineFormat::Level,
            seed,
            "checksum=0.08,truncate=0.08,noise=0.08,invalid=0.1,split=0.2",
            600,
        );
        // Every injected fault is one count: a torn line and the line glued to it fail the
        // checksum together.
        assert_eq!(
            counts.checksum,
            f["checksum"] + f["truncate"] - counts.truncated
        );
        assert_eq!(counts.no_checksum, f["noise"]);
        assert_eq!(counts.no_match, 0);
        assert!(counts.no_values > 0 && f["split"] > 0, "{counts:?} {f:?}");
    }
}

#[test]
fn noise_meter_faults_are_counted_as_the_gateway_counts_them() {
    for seed in 0..8 {
        let (counts, f) = play(
            LineFormat::Noise,
            seed,
            "truncate=0.08,noise=0.08,invalid=0.1,split=0.2",
            600,
        );
        assert_eq!(counts.skipped, 1, "the header");
        assert_eq!(
            counts.no_match,
            f["truncate"] + f["noise"] - counts.truncated
        );
        assert_eq!(counts.checksum + counts.no_checksum + counts.no_values, 0);
        assert!(f["invalid"] > 0 && f["split"] > 0, "{f:?}");
    }
}

#[test]
fn a_torn_last_line_is_truncated() {
    for format in [LineFormat::Level, LineFormat::Noise] {
        let torn_at_the_end = |seed: u64| {
            let mut s = LineSensor::new(seed, options(format, "truncate=0.5")).unwrap();
            (0..5).for_each(|_| drop(s.next_line()));
            s.torn.is_some()
        };
        let seed = (0..200).find(|s| torn_at_the_end(*s)).unwrap();
        let (counts, _) = play(format, seed, "truncate=0.5", 5);
        assert_eq!(counts.truncated, 1, "{format:?} seed {seed}");
    }
}

#[test]
fn the_lines_look_as_documented() {
    let mut s = LineSensor::new(3, options(LineFormat::Noise, "")).unwrap();
    let text = String::from_utf8(s.next_line().writes.concat()).unwrap();
    let mut lines = text.split(['\r', '\n']).filter(|l| !l.is_empty());
    assert_eq!(lines.next(), Some(NOISE_METER_HEADER));
    // 09:59:58.500 UTC, rounded down to the second, in UTC+7.
    let first = lines.next().unwrap();
    assert!(first.starts_with("2026-12-03 16:59:58,"), "{first}");
    assert!(first.ends_with(",OK"), "{first}");
    let mut s = LineSensor::new(3, options(LineFormat::Level, "")).unwrap();
    let line = String::from_utf8(s.next_line().writes.concat()).unwrap();
    assert!(line.starts_with("$LVL,1796291998500,"), "{line}");
    let body = &line[1..line.find('*').unwrap()];
    let sum = &line[line.find('*').unwrap() + 1..].trim_end();
    assert_eq!(*sum, format!("{:02X}", checksum(body)));
}

#[test]
fn same_seed_same_bytes_and_bad_options_refused() {
    let run = |seed| {
        let mut s = LineSensor::new(
            seed,
            options(LineFormat::Level, "checksum=0.1,truncate=0.1"),
        )
        .unwrap();
        (0..200)
            .flat_map(|_| s.next_line().writes.concat())
            .collect::<Vec<u8>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    assert_eq!(
        LineSensor::new(1, options(LineFormat::Noise, "checksum=0.1")).unwrap_err(),
        SensorOptionsError::NoChecksum
    );
    assert!("colour=0.1".parse::<LineFaults>().is_err());
    assert!("truncate=1.5".parse::<LineFaults>().is_err());
    assert!("radar".parse::<LineFormat>().is_err());
}
