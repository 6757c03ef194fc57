//! Exact boundaries of every limit against hostile input (`ioc_gateway::limits`), its metric,
//! the cardinality guard's hourly window and memory bound, and the `[limits]` config section.

use std::path::Path;

use ioc_gateway::config::Config;
use ioc_gateway::limits::{
    LimitValues, LimitViolation, Limits, LimitsConfig, Passed, TimestampPolicy, SERIES_WINDOW_NS,
};
use ioc_gateway::model::{FieldValue, Reading};

const NOW: i64 = 1_800_000_000_000_000_000;
const S: i64 = 1_000_000_000;

fn small() -> LimitValues {
    LimitValues {
        max_fields: 3,
        max_tags: 2,
        max_name_len: 9, // "sensor_id" is 9 bytes
        max_tag_value_len: 5,
        max_string_field_len: 4,
        max_series_per_hour: 3,
        max_past_s: 100,
        max_future_s: 10,
        timestamp_policy: TimestampPolicy::Reject,
    }
}

fn limits(v: LimitValues) -> Limits {
    Limits::new(LimitsConfig::from_values(v))
}

fn base(sensor: &str) -> Reading {
    Reading::new("env", NOW)
        .tag("sensor_id", sensor)
        .field("a", FieldValue::Float(1.0))
}

fn label(r: Result<Passed, LimitViolation>) -> &'static str {
    match r {
        Ok(Passed::Unchanged) => "ok",
        Ok(Passed::Clamped { .. }) => "clamped",
        Err(e) => e.label(),
    }
}

#[test]
fn field_count_boundary() {
    let l = limits(small());
    let mut r = base("s1")
        .field("b", FieldValue::Int(1))
        .field("c", FieldValue::Bool(true));
    assert_eq!(r.fields.len(), 3);
    assert_eq!(label(l.check("in", &mut r, NOW)), "ok");
    let mut r = r.field("d", FieldValue::UInt(1));
    assert_eq!(
        l.check("in", &mut r, NOW),
        Err(LimitViolation::TooManyFields { count: 4, limit: 3 })
    );
}

#[test]
fn tag_count_boundary() {
    let l = limits(small());
    let mut r = base("s1").tag("gateway", "g");
    assert_eq!(label(l.check("in", &mut r, NOW)), "ok");
    let mut r = r.tag("x", "y");
    assert_eq!(
        l.check("in", &mut r, NOW),
        Err(LimitViolation::TooManyTags { count: 3, limit: 2 })
    );
}

#[test]
fn name_length_boundary_for_measurement_tag_key_and_field_key() {
    let l = limits(small());
    let at_limit = "m23456789"; // exactly the limit
    let over_limit = "m234567890";
    let mut r = Reading::new(at_limit, NOW)
        .tag(at_limit, "v")
        .field(at_limit, FieldValue::Float(1.0));
    assert_eq!(label(l.check("in", &mut r, NOW)), "ok");
    for (what, mut r) in [
        (
            "measurement",
            Reading::new(over_limit, NOW).field("a", FieldValue::Float(1.0)),
        ),
        ("tag key", base("s").tag(over_limit, "v")),
        (
            "field key",
            base("s").field(over_limit, FieldValue::Float(1.0)),
        ),
    ] {
        let mut r2 = r.clone();
        r2.tags.remove("sensor_id");
        r.tags.remove("sensor_id");
        match l.check("in", &mut r, NOW) {
            Err(LimitViolation::NameTooLong {
                what: w,
                len,
                limit,
                ..
            }) => {
                assert_eq!((w, len, limit), (what, 10, 9));
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn tag_value_length_boundary_counts_bytes() {
    let l = limits(small());
    let mut r = base("12345");
    assert_eq!(label(l.check("in", &mut r, NOW)), "ok");
    // "é" is two bytes: 4 chars, 5 bytes passes; 5 chars, 6 bytes does not.
    let mut r = base("abcé");
    assert_eq!(label(l.check("in", &mut r, NOW)), "ok");
    let mut r = base("abcdé");
    assert_eq!(
        l.check("in", &mut r, NOW),
        Err(LimitViolation::TagValueTooLong {
            key: "sensor_id".into(),
            len: 6,
            limit: 5
        })
    );
}

#[test]
fn string_field_length_boundary() {
    let l = limits(small());
    let mut r = base("s").field("p", FieldValue::Str("abcd".into()));
    assert_eq!(label(l.check("in", &mut r, NOW)), "ok");
    let mut r = base("s").field("p", FieldValue::Str("abcde".into()));
    assert_eq!(
        l.check("in", &mut r, NOW),
        Err(LimitViolation::StringFieldTooLong {
            key: "p".into(),
            len: 5,
            limit: 4
        })
    );
}

#[test]
fn timestamp_window_boundaries_reject() {
    let l = limits(small());
    let at = |ts: i64| {
        let mut r = base("s");
        r.timestamp_ns = ts;
        label(l.check("in", &mut r, NOW))
    };
    assert_eq!(at(NOW - 100 * S), "ok");
    assert_eq!(at(NOW - 100 * S - 1), "timestamp_too_old");
    assert_eq!(at(NOW + 10 * S), "ok");
    assert_eq!(at(NOW + 10 * S + 1), "timestamp_in_future");
    assert_eq!(at(0), "timestamp_too_old");
    assert_eq!(at(i64::MAX), "timestamp_in_future");
    assert_eq!(at(i64::MIN), "timestamp_too_old");
}

#[test]
fn timestamp_window_boundaries_clamp() {
    let l = limits(LimitValues {
        timestamp_policy: TimestampPolicy::Clamp,
        ..small()
    });
    let at = |ts: i64| {
        let mut r = base("s");
        r.timestamp_ns = ts;
        let res = l.check("in", &mut r, NOW);
        (res, r.timestamp_ns)
    };
    assert_eq!(at(NOW - 100 * S), (Ok(Passed::Unchanged), NOW - 100 * S));
    assert_eq!(
        at(NOW - 100 * S - 1),
        (
            Ok(Passed::Clamped {
                from_ns: NOW - 100 * S - 1
            }),
            NOW - 100 * S
        )
    );
    assert_eq!(
        at(NOW + 10 * S + 1),
        (
            Ok(Passed::Clamped {
                from_ns: NOW + 10 * S + 1
            }),
            NOW + 10 * S
        )
    );
    assert_eq!(at(0).1, NOW - 100 * S);
}

#[test]
fn cardinality_guard_refuses_new_series_only_and_resets_hourly() {
    let l = limits(small());
    let check = |sensor: &str, now: i64| {
        let mut r = base(sensor);
        r.timestamp_ns = now;
        label(l.check("in", &mut r, now))
    };
    assert_eq!(check("s1", NOW), "ok");
    assert_eq!(check("s2", NOW), "ok");
    assert_eq!(check("s3", NOW), "ok");
    assert_eq!(check("s4", NOW), "series_limit");
    // Existing series keep passing, repeatedly.
    for _ in 0..5 {
        assert_eq!(check("s1", NOW + S), "ok");
        assert_eq!(check("s3", NOW + S), "ok");
    }
    assert_eq!(l.series_in_window("in"), 3);
    // A different tag value or measurement is a different series.
    let mut other = base("s1");
    other.measurement = "env2".into();
    assert_eq!(label(l.check("in", &mut other, NOW)), "series_limit");
    // Other inputs have their own budget.
    let mut r = base("s9");
    assert_eq!(label(l.check("other", &mut r, NOW)), "ok");
    // One ns before the hour: still the old window; at the hour: a fresh one.
    assert_eq!(check("s4", NOW + SERIES_WINDOW_NS - 1), "series_limit");
    assert_eq!(check("s4", NOW + SERIES_WINDOW_NS), "ok");
    assert_eq!(l.series_in_window("in"), 1);
}

#[test]
fn a_refused_reading_takes_no_series_slot() {
    let l = limits(small());
    let mut r = base("s1").field("p", FieldValue::Str("too long".into()));
    assert_eq!(label(l.check("in", &mut r, NOW)), "string_field_too_long");
    assert_eq!(l.series_in_window("in"), 0);
}

#[test]
fn cardinality_guard_memory_is_bounded_under_a_flood() {
    let l = limits(LimitValues {
        max_series_per_hour: 1000,
        ..LimitValues::default()
    });
    let mut refused = 0;
    for i in 0..100_000 {
        let mut r = Reading::new("env", NOW)
            .tag("sensor_id", format!("flood{i}"))
            .field("a", FieldValue::Float(1.0));
        if l.check("in", &mut r, NOW).is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 99_000);
    assert_eq!(l.series_in_window("in"), 1000);
}

#[test]
fn per_input_override_replaces_only_given_keys() {
    let text = r#"
[gateway]
id = "g"
data_dir = "/tmp/x"
[output.influxdb]
url = "http://127.0.0.1:8428"
bucket = "b"
[limits]
max_fields = 10
timestamp_policy = "clamp"
[limits.input.cams]
max_fields = 2
max_series_per_hour = 5
"#;
    let cfg = Config::parse(Path::new("t.toml"), text).unwrap();
    let g = cfg.limits.for_input("mqtt0");
    assert_eq!(g.max_fields, 10);
    assert_eq!(g.timestamp_policy, TimestampPolicy::Clamp);
    assert_eq!(g.max_series_per_hour, 10_000);
    let c = cfg.limits.for_input("cams");
    assert_eq!((c.max_fields, c.max_series_per_hour), (2, 5));
    assert_eq!(c.timestamp_policy, TimestampPolicy::Clamp);
    assert_eq!(c.max_tags, 64);
}

#[test]
fn defaults_without_a_limits_section() {
    let text = "[gateway]\nid = \"g\"\ndata_dir = \"/tmp/x\"\n[output.influxdb]\nurl = \"http://127.0.0.1:8428\"\nbucket = \"b\"\n";
    let cfg = Config::parse(Path::new("t.toml"), text).unwrap();
    assert_eq!(cfg.limits.global(), LimitValues::default());
}

#[test]
fn zero_or_unknown_limit_keys_are_located_errors() {
    let head = "[gateway]\nid = \"g\"\ndata_dir = \"/tmp/x\"\n[output.influxdb]\nurl = \"http://127.0.0.1:8428\"\nbucket = \"b\"\n";
    let e = Config::parse(
        Path::new("t.toml"),
        &format!("{head}[limits]\nmax_tags = 0\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("t.toml:8") && e.contains("limits.max_tags") && e.contains("above 0"),
        "{e}"
    );
    let e = Config::parse(
        Path::new("t.toml"),
        &format!("{head}[limits.input.a]\nmax_future_s = 0\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("limits.input.a.max_future_s"), "{e}");
    let e = Config::parse(
        Path::new("t.toml"),
        &format!("{head}[limits]\nmax_feilds = 3\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("t.toml:8") && e.contains("max_feilds"), "{e}");
    let e = Config::parse(
        Path::new("t.toml"),
        &format!("{head}[limits]\ntimestamp_policy = \"drop\"\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("t.toml:8"), "{e}");
}

/// The value of one counter sample in Prometheus text, or 0.
fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    for line in text.lines().filter(|l| l.starts_with(name)) {
        let matches = labels
            .iter()
            .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")));
        if matches && line[name.len()..].starts_with('{') {
            return line.rsplit(' ').next().unwrap().parse().unwrap();
        }
    }
    0
}

#[test]
fn every_limit_has_a_distinct_reason_and_clamps_are_counted() {
    // The gateway's own recorder, so the names are those /metrics shows.
    let (recorder, handle) = ioc_gateway::metrics_catalog::recorder();
    metrics::with_local_recorder(&recorder, || {
        let l = limits(small());
        let mut cases: Vec<Reading> = vec![
            base("s")
                .field("b", FieldValue::Int(1))
                .field("c", FieldValue::Int(1))
                .field("d", FieldValue::Int(1)),
            base("s").tag("x", "1").tag("y", "2"),
            base("s").field("toolongname", FieldValue::Int(1)),
            base("toolongvalue"),
            base("s").field("p", FieldValue::Str("12345".into())),
        ];
        let mut old = base("s");
        old.timestamp_ns = NOW - 101 * S;
        let mut fut = base("s");
        fut.timestamp_ns = NOW + 11 * S;
        cases.push(old);
        cases.push(fut);
        for sensor in ["n1", "n2", "n3", "n4"] {
            cases.push(base(sensor));
        }
        for mut r in cases {
            let _ = l.check("cam", &mut r, NOW);
        }
        let clamp = limits(LimitValues {
            timestamp_policy: TimestampPolicy::Clamp,
            ..small()
        });
        let mut r = base("s");
        r.timestamp_ns = 0;
        assert!(clamp.check("cam", &mut r, NOW).is_ok());
    });
    let text = handle.render();
    for reason in [
        "too_many_fields",
        "too_many_tags",
        "name_too_long",
        "tag_value_too_long",
        "string_field_too_long",
        "timestamp_too_old",
        "timestamp_in_future",
        "series_limit",
    ] {
        assert_eq!(
            counter(
                &text,
                "ioc_gateway_readings_rejected_total",
                &[("input", "cam"), ("reason", reason)]
            ),
            1,
            "{reason}\n{text}"
        );
    }
    assert_eq!(
        counter(
            &text,
            "ioc_gateway_readings_clamped_total",
            &[("input", "cam")]
        ),
        1,
        "{text}"
    );
}
