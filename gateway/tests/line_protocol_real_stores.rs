//! `InfluxSink` against REAL stores: a VictoriaMetrics and an InfluxDB 1.x started here on free
//! 127.0.0.1 ports in temp dirs (Debian packages `victoria-metrics` and `influxdb`; the CI script
//! installs them). Checks that a gzip'd multi-member batch with tricky escapes arrives with exact
//! values, that InfluxDB 1.x's 400 for one bad line ends with the good lines stored and the bad
//! one dead-lettered, that HTTPS works with a CA file (and only with it), and that several
//! outputs' sinks keep their metrics apart (the `output` label).
//!
//! A missing server binary fails the test with a message naming the package: a skipped test
//! would hide exactly what this file exists to show.

use flate2::write::GzEncoder;
use flate2::Compression;
use ioc_gateway::model::{FieldValue, Reading};
use ioc_gateway::output::influx::{
    Api, InfluxSink, InfluxSinkConfig, SinkError, WriteOutcome, DEAD_LETTER_FILE,
};
use ioc_gateway::output::line_protocol::{encode, Flavor};
use ioc_gateway::shutdown::Shutdown;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// A real InfluxDB 1.x (the test harness's) with the database `telemetry`.
fn influx_store() -> ioc_e2e::Influx1 {
    let store = ioc_e2e::Influx1::start().unwrap();
    store.create_database("telemetry").unwrap();
    store
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Lines gzip'd as one member per `per_member` lines, concatenated, as the buffer stores them.
fn multi_member(lines: &[Vec<u8>], per_member: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for chunk in lines.chunks(per_member) {
        body.extend(gzip(&chunk.concat()));
    }
    body
}

fn encode_lines(readings: &[Reading], flavor: Flavor) -> Vec<Vec<u8>> {
    readings
        .iter()
        .map(|r| {
            let mut line = Vec::new();
            encode(r, flavor, &mut line);
            line
        })
        .collect()
}

const MEASUREMENT: &str = "air quality,hcmc";

/// Readings whose names and values exercise every escape the stores read the same way.
fn tricky_readings(count: usize, base_ns: i64, step_ns: i64) -> Vec<Reading> {
    let floats = [0.1, 12.5, -3.75, 1e-7, 123456.789, 35.25, 1e15, 0.0];
    (0..count)
        .map(|i| {
            let r = Reading::new(MEASUREMENT, base_ns + i as i64 * step_ns)
                .tag("gateway", "bp-gw-001")
                .tag("site name", "Nguyễn Huệ, \"gate\"=1")
                .tag("k=v", "a\\b")
                .tag("sensor_id", format!("s {i}"))
                .field(
                    "pm2_5",
                    FieldValue::Float(floats[i % floats.len()] + i as f64),
                )
                .field("count, total", FieldValue::Int(-(i as i64) * 1_000_003))
                .field("bytes", FieldValue::UInt(i as u64 * 7))
                .field("ok", FieldValue::Bool(i % 2 == 0));
            if i % 3 == 0 {
                r.field("note", FieldValue::Str(format!("say \"hi\" {i} \\o/ c:\\")))
            } else {
                r
            }
        })
        .collect()
}

fn sink(url: &str, api: Api, dead_letter_dir: &Path) -> InfluxSink {
    let mut config = InfluxSinkConfig::new(url, api, dead_letter_dir);
    config.bucket = "telemetry".into();
    config.database = "telemetry".into();
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    InfluxSink::new(config).unwrap()
}

/// Points read back from InfluxDB 1.x: (tags, time) -> fields.
type InfluxPoints = BTreeMap<(BTreeMap<String, String>, i64), BTreeMap<String, Value>>;

/// Every point of `measurement` in InfluxDB 1.x, keyed by (tags, time).
async fn influx_points(url: &str, measurement: &str) -> InfluxPoints {
    let query = format!(
        "SELECT * FROM \"{}\" GROUP BY *",
        measurement.replace('"', "\\\"")
    );
    ioc_gateway::tls::install_crypto_provider();
    let body: Value = reqwest::Client::new()
        .get(format!("{url}/query"))
        .query(&[("db", "telemetry"), ("epoch", "ns"), ("q", query.as_str())])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let mut points = BTreeMap::new();
    let series = body["results"][0]["series"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for s in series {
        assert_eq!(s["name"], measurement);
        let tags: BTreeMap<String, String> = s["tags"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.as_str() != Some(""))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let columns: Vec<String> = s["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        for row in s["values"].as_array().unwrap() {
            let row = row.as_array().unwrap();
            let time = row[0].as_i64().unwrap();
            let fields: BTreeMap<String, Value> = columns[1..]
                .iter()
                .zip(&row[1..])
                .filter(|(_, v)| !v.is_null())
                .map(|(c, v)| (c.clone(), v.clone()))
                .collect();
            assert!(points.insert((tags.clone(), time), fields).is_none());
        }
    }
    points
}

/// What InfluxDB 1.x should return for a reading's fields (V1 flavor: unsigned as integer).
fn influx_expected_fields(reading: &Reading) -> BTreeMap<String, Value> {
    reading
        .fields
        .iter()
        .map(|(k, v)| {
            let value = match v {
                FieldValue::Float(f) => Value::from(*f),
                FieldValue::Int(i) => Value::from(*i),
                FieldValue::UInt(u) => Value::from(*u),
                FieldValue::Bool(b) => Value::from(*b),
                FieldValue::Str(s) => Value::from(s.clone()),
            };
            (k.clone(), value)
        })
        .collect()
}

fn assert_influx_has_exactly(points: &InfluxPoints, readings: &[Reading]) {
    assert_eq!(points.len(), readings.len());
    for reading in readings {
        let key = (reading.tags.clone(), reading.timestamp_ns);
        let fields = points.get(&key).unwrap_or_else(|| {
            panic!(
                "missing point {key:?}; have {:?}",
                points.keys().collect::<Vec<_>>()
            )
        });
        let expected = influx_expected_fields(reading);
        assert_eq!(fields.len(), expected.len(), "{fields:?}");
        for (name, want) in &expected {
            let got = &fields[name];
            if let (Some(g), true) = (got.as_f64(), want.is_f64()) {
                assert_eq!(g.to_bits(), want.as_f64().unwrap().to_bits(), "{name}");
            } else {
                assert_eq!(got, want, "{name}");
            }
        }
    }
}

#[tokio::test]
async fn influxdb_1x_stores_a_multi_member_batch_exactly() {
    let store = influx_store();
    let dead = tempfile::tempdir().unwrap();
    let sink = sink(&store.url(), Api::V1, dead.path());
    assert_eq!(sink.flavor(), Flavor::V1);
    // Nanosecond timestamps that are not round in any unit.
    let readings = tricky_readings(40, 1_700_000_000_123_456_789, 1_000_003_007);
    let lines = encode_lines(&readings, sink.flavor());
    let body = multi_member(&lines, 7);
    let shutdown = Shutdown::new();
    let delivered = sink.deliver(&body, 40, &shutdown).await.unwrap();
    // A freshly started InfluxDB may answer the first write with a retryable error (the sink
    // then retries); what matters is that the whole batch went in at once, unsplit.
    assert_eq!(delivered.lines_sent, 40, "{delivered:?}");
    assert_eq!(delivered.lines_dead_lettered, 0, "{delivered:?}");
    assert!(delivered.requests >= 1, "{delivered:?}");
    assert_influx_has_exactly(&influx_points(&store.url(), MEASUREMENT).await, &readings);

    // A replay overwrites: same series and timestamps, no extra points.
    sink.deliver(&body, 40, &shutdown).await.unwrap();
    assert_influx_has_exactly(&influx_points(&store.url(), MEASUREMENT).await, &readings);
    assert!(!dead.path().join(DEAD_LETTER_FILE).exists());
}

#[tokio::test]
async fn influxdb_1x_bad_line_is_dead_lettered_and_good_lines_stored() {
    let store = influx_store();
    let dead = tempfile::tempdir().unwrap();
    let sink = sink(&store.url(), Api::V1, dead.path());
    let readings: Vec<Reading> = (0..9)
        .map(|i| {
            Reading::new("env", 1_700_000_000_000_000_001 + i)
                .tag("sensor_id", format!("s{i}"))
                .field("pm2_5", FieldValue::Float(10.25 + i as f64))
        })
        .collect();
    let mut lines = encode_lines(&readings, Flavor::V1);
    let bad_line = "env,sensor_id=bad pm2_5=abc 1700000000000000100";
    lines.insert(5, format!("{bad_line}\n").into_bytes());
    let body = multi_member(&lines, 3);
    let shutdown = Shutdown::new();
    assert!(matches!(
        sink.write(&body, 10).await.unwrap(),
        WriteOutcome::BadBatch { status: 400, ref message } if message.contains("invalid boolean")
    ));
    let delivered = sink.deliver(&body, 10, &shutdown).await.unwrap();
    assert_eq!(delivered.lines_sent, 9);
    assert_eq!(delivered.lines_dead_lettered, 1);
    assert_influx_has_exactly(&influx_points(&store.url(), "env").await, &readings);

    let dead_letter = std::fs::read_to_string(dead.path().join(DEAD_LETTER_FILE)).unwrap();
    let dead_lines: Vec<&str> = dead_letter.lines().collect();
    assert_eq!(dead_lines.len(), 2, "{dead_letter}");
    assert!(
        dead_lines[0].starts_with("# dead-lettered "),
        "{}",
        dead_lines[0]
    );
    assert!(
        // Sent alone, the line gets InfluxDB's plain parse error (no "partial write" prefix).
        dead_lines[0].ends_with(&format!(
            "status=400 error: unable to parse '{bad_line}': invalid boolean"
        )),
        "{}",
        dead_lines[0]
    );
    assert_eq!(dead_lines[1], bad_line);
}

#[tokio::test]
async fn influxdb_1x_wrong_database_is_not_a_bad_batch() {
    let store = influx_store();
    let dead = tempfile::tempdir().unwrap();
    let mut config = InfluxSinkConfig::new(store.url(), Api::V1, dead.path());
    config.database = "no_such_db".into();
    let sink = InfluxSink::new(config).unwrap();
    let lines = encode_lines(&tricky_readings(2, 1, 1), Flavor::V1);
    let outcome = sink.write(&multi_member(&lines, 1), 2).await.unwrap();
    assert_eq!(
        outcome,
        WriteOutcome::Misconfigured {
            status: 404,
            message: "database not found: \"no_such_db\"".into()
        }
    );
}

/// One VictoriaMetrics sample: (metric name, labels without `__name__`, ms, value).
type Sample = (String, BTreeMap<String, String>, i64, f64);

async fn victoria_samples(url: &str, selector: &str) -> Vec<Sample> {
    ioc_gateway::tls::install_crypto_provider();
    let client = reqwest::Client::new();
    let flushed = client
        .get(format!("{url}/internal/force_flush"))
        .send()
        .await
        .unwrap();
    assert!(flushed.status().is_success());
    let mut samples = Vec::new();
    // Data becomes searchable within about a second of the flush.
    for _ in 0..50 {
        let text = client
            .post(format!("{url}/api/v1/export"))
            .form(&[("match[]", selector)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        samples.clear();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let series: Value = serde_json::from_str(line).unwrap();
            let mut labels: BTreeMap<String, String> = series["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let name = labels.remove("__name__").unwrap();
            let values = series["values"].as_array().unwrap();
            let times = series["timestamps"].as_array().unwrap();
            for (v, t) in values.iter().zip(times) {
                samples.push((
                    name.clone(),
                    labels.clone(),
                    t.as_i64().unwrap(),
                    v.as_f64().unwrap(),
                ));
            }
        }
        if !samples.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    samples
}

#[tokio::test]
async fn victoria_metrics_stores_a_multi_member_batch_exactly() {
    let store = ioc_e2e::VictoriaMetrics::start_with_flags(&[]).unwrap();
    let dead = tempfile::tempdir().unwrap();
    let sink = sink(&store.url(), Api::V2, dead.path());
    assert_eq!(sink.write_url().path(), "/api/v2/write");
    // VictoriaMetrics keeps milliseconds: use millisecond-aligned nanosecond timestamps.
    let readings = tricky_readings(40, 1_700_000_000_123_000_000, 1_003_000_000);
    let lines = encode_lines(&readings, sink.flavor());
    let body = multi_member(&lines, 7);
    let shutdown = Shutdown::new();
    let delivered = sink.deliver(&body, 40, &shutdown).await.unwrap();
    // A retryable first answer from a store that just started is allowed; no split, no loss.
    assert_eq!(delivered.lines_sent, 40, "{delivered:?}");
    assert_eq!(delivered.lines_dead_lettered, 0, "{delivered:?}");

    let mut expected: Vec<Sample> = Vec::new();
    for r in &readings {
        for (field, value) in &r.fields {
            let value = match value {
                FieldValue::Float(f) => *f,
                FieldValue::Int(i) => *i as f64,
                FieldValue::UInt(u) => *u as f64,
                FieldValue::Bool(b) => f64::from(u8::from(*b)),
                // VictoriaMetrics turns a string field into a number: the text parsed as a
                // float, or 0 (our notes are not numbers) - a series of zeros, not nothing.
                FieldValue::Str(s) => s.parse::<f64>().unwrap_or(0.0),
            };
            expected.push((
                format!("{MEASUREMENT}_{field}"),
                r.tags.clone(),
                r.timestamp_ns / 1_000_000,
                value,
            ));
        }
    }
    expected.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    let got = victoria_samples(&store.url(), "{gateway=\"bp-gw-001\"}").await;
    assert_eq!(got.len(), expected.len());
    for (g, w) in got.iter().zip(&expected) {
        assert_eq!((&g.0, &g.1, g.2), (&w.0, &w.1, w.2));
        assert_eq!(g.3.to_bits(), w.3.to_bits(), "{g:?} vs {w:?}");
    }
}

#[tokio::test]
async fn https_trusts_the_system_store_plus_a_ca_file() {
    let pki = ioc_e2e::Pki::new().unwrap();
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("server.pem"),
        pki.path("server.key"),
    );
    let store = ioc_e2e::Influx1::start_https(&cert, &key, &["telemetry"]).unwrap();
    assert!(store.url().starts_with("https://"));
    let dead = tempfile::tempdir().unwrap();
    let readings = tricky_readings(3, 1_700_000_000_000_000_000, 1);
    let body = multi_member(&encode_lines(&readings, Flavor::V1), 2);

    let mut config = InfluxSinkConfig::new(store.url(), Api::V1, dead.path());
    config.database = "telemetry".into();

    // The system's trust store does not know our CA: refused with a clear error.
    let untrusting = InfluxSink::new(config.clone()).unwrap();
    match untrusting.write(&body, 3).await {
        Err(SinkError::Transport {
            reason,
            timeout: false,
        }) => {
            assert!(
                reason.contains("certificate") && reason.contains("UnknownIssuer"),
                "{reason}"
            );
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }

    // A CA file that is not PEM is a config error.
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let mut broken = config.clone();
    broken.ca_file = Some(not_pem);
    assert!(matches!(
        InfluxSink::new(broken),
        Err(SinkError::Tls(
            ioc_gateway::tls::TlsError::NoCertificate { .. }
        ))
    ));

    let mut trusting = config.clone();
    trusting.ca_file = Some(ca);
    let trusting = InfluxSink::new(trusting).unwrap();
    assert_eq!(
        trusting.write(&body, 3).await.unwrap(),
        WriteOutcome::Accepted { status: 204 }
    );

    let mut insecure = config;
    insecure.insecure_skip_verify = true;
    let insecure = InfluxSink::new(insecure).unwrap();
    assert_eq!(
        insecure.write(&body, 3).await.unwrap(),
        WriteOutcome::Accepted { status: 204 }
    );

    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let count: Value = client
        .get(format!("{}/query", store.url()))
        .query(&[
            ("db", "telemetry"),
            ("q", "SELECT count(\"pm2_5\") FROM \"air quality,hcmc\""),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(
        count["results"][0]["series"][0]["values"][0][1], 3,
        "{count}"
    );
}

#[tokio::test]
async fn victoria_metrics_oversized_line_is_dead_lettered_and_the_rest_stored() {
    // VictoriaMetrics answers 204 to malformed lines (nothing to split on), but a line over its
    // 256 KB limit gets a 400 and the rest of the request is dropped: splitting must recover it.
    // The lines before the big one were stored by the first attempt and are stored again by the
    // split: VictoriaMetrics keeps both copies unless it deduplicates, so run it as deployed.
    let store =
        ioc_e2e::VictoriaMetrics::start_with_flags(&["-dedup.minScrapeInterval=1ms"]).unwrap();
    let dead = tempfile::tempdir().unwrap();
    let sink = sink(&store.url(), Api::V2, dead.path());
    let readings: Vec<Reading> = (0..12)
        .map(|i| {
            Reading::new("big", 1_700_000_000_000_000_000 + i * 1_000_000)
                .tag("sensor_id", format!("s{i}"))
                .field("v", FieldValue::Float(i as f64 + 0.5))
        })
        .collect();
    let mut lines = encode_lines(&readings, Flavor::V2);
    let huge = Reading::new("big", 1_700_000_000_100_000_000)
        .tag("sensor_id", "huge")
        .field("text", FieldValue::Str("x".repeat(300 * 1024)));
    lines.splice(4..4, encode_lines(&[huge], Flavor::V2));
    let body = multi_member(&lines, 5);
    let shutdown = Shutdown::new();
    let delivered = sink.deliver(&body, 13, &shutdown).await.unwrap();
    assert_eq!(delivered.lines_sent, 12);
    assert_eq!(delivered.lines_dead_lettered, 1);

    let got = victoria_samples(&store.url(), "{__name__=\"big_v\"}").await;
    let expected: Vec<Sample> = readings
        .iter()
        .map(|r| {
            let FieldValue::Float(v) = r.fields["v"] else {
                unreachable!()
            };
            (
                "big_v".to_owned(),
                r.tags.clone(),
                r.timestamp_ns / 1_000_000,
                v,
            )
        })
        .collect();
    let mut expected = expected;
    expected.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    assert_eq!(got, expected);

    let dead_letter = std::fs::read_to_string(dead.path().join(DEAD_LETTER_FILE)).unwrap();
    let dead_lines: Vec<&str> = dead_letter.lines().collect();
    assert_eq!(dead_lines.len(), 2);
    assert!(
        dead_lines[0].contains("status=400 error: "),
        "{}",
        dead_lines[0]
    );
    assert!(dead_lines[1].starts_with("big,sensor_id=huge text=\"xxx"));
    assert_eq!(dead_lines[1].len(), lines[4].len() - 1);
}

/// A sink named `name` (its `output` label) writing to `url` with fast retries and no jitter.
fn named_sink(name: &str, url: &str, dead_letter_dir: &Path) -> InfluxSink {
    let mut config = InfluxSinkConfig::new(url, Api::V2, dead_letter_dir.join(name));
    config.output = name.into();
    config.bucket = "telemetry".into();
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    config.flush_jitter = Duration::ZERO;
    InfluxSink::new(config).unwrap()
}

/// `count` lines of `measurement`, one gzip member, millisecond timestamps.
fn batch_of(measurement: &str, count: usize) -> Vec<u8> {
    let text: String = (0..count)
        .map(|i| {
            format!(
                "{measurement},sensor_id=s{i} v={i} {}\n",
                1_700_000_000_000_000_000i64 + i as i64 * 1_000_000
            )
        })
        .collect();
    gzip(text.as_bytes())
}

/// With several outputs, every metric of a sink carries its output's name: an IOC store and an
/// archive (both a real VictoriaMetrics here) and a third output whose store is down keep
/// their lines, batches, bytes, request durations, failures and retries apart.
#[test]
fn two_outputs_keep_their_sink_metrics_apart() {
    let store = ioc_e2e::VictoriaMetrics::start_with_flags(&[]).unwrap();
    let dead = tempfile::tempdir().unwrap();
    let down_url = format!("http://127.0.0.1:{}", ioc_e2e::free_port());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A store that has just started may answer a first write with a retryable error: take one
    // write before counting, so the counts below are exact.
    runtime.block_on(async {
        let warm = named_sink("warm-up", &store.url(), dead.path());
        let body = batch_of("two_outputs_warm", 1);
        warm.deliver(&body, 1, &Shutdown::new()).await.unwrap();
    });
    // The gateway's own recorder, so the names are those /metrics shows.
    let (recorder, handle) = ioc_gateway::metrics_catalog::recorder();
    let (ioc_requests, ioc_bytes, archive_requests, archive_bytes) =
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let ioc = named_sink("ioc", &store.url(), dead.path());
                let archive = named_sink("archive", &store.url(), dead.path());
                let down = named_sink("down", &down_url, dead.path());
                let shutdown = Shutdown::new();
                let body = batch_of("two_outputs_ioc", 3);
                let d = ioc.deliver(&body, 3, &shutdown).await.unwrap();
                assert_eq!(d.lines_sent, 3);
                let (ioc_requests, ioc_bytes) = (d.requests, d.requests as usize * body.len());
                let (mut archive_requests, mut archive_bytes) = (0, 0);
                for _ in 0..2 {
                    let body = batch_of("two_outputs_archive", 5);
                    let d = archive.deliver(&body, 5, &shutdown).await.unwrap();
                    assert_eq!(d.lines_sent, 5);
                    archive_requests += d.requests;
                    archive_bytes += d.requests as usize * body.len();
                }
                // The third output's store refuses connections: it retries until given up.
                let body = batch_of("two_outputs_down", 2);
                let gave_up = tokio::time::timeout(
                    Duration::from_millis(400),
                    down.deliver(&body, 2, &shutdown),
                )
                .await;
                assert!(
                    gave_up.is_err(),
                    "a refused store took a batch: {gave_up:?}"
                );
                (ioc_requests, ioc_bytes, archive_requests, archive_bytes)
            })
        });
    let text = handle.render();
    let value = |name: &str, output: &str| {
        ioc_e2e::metric_in(&text, &format!("ioc_gateway_{name}"), &[("output", output)])
    };
    assert_eq!(value("output_lines_sent_total", "ioc"), 3.0, "{text}");
    assert_eq!(value("output_lines_sent_total", "archive"), 10.0);
    assert_eq!(value("output_lines_sent_total", "down"), 0.0);
    assert_eq!(value("output_batches_sent_total", "ioc"), 1.0);
    assert_eq!(value("output_batches_sent_total", "archive"), 2.0);
    assert_eq!(value("output_batches_sent_total", "down"), 0.0);
    assert_eq!(value("output_bytes_sent_total", "ioc"), ioc_bytes as f64);
    assert_eq!(
        value("output_bytes_sent_total", "archive"),
        archive_bytes as f64
    );
    assert_eq!(
        value("output_bytes_sent_total", "down"),
        0.0,
        "refused: nothing crossed"
    );
    assert_eq!(
        value("output_write_seconds_count", "ioc"),
        f64::from(ioc_requests)
    );
    assert_eq!(
        value("output_write_seconds_count", "archive"),
        f64::from(archive_requests)
    );
    let down_attempts = value("output_write_seconds_count", "down");
    assert!(down_attempts >= 2.0, "{down_attempts} attempts in 400 ms");
    // Only the dead output failed and retried, each attempt under its reason.
    let failed = |output: &str| value("output_batches_failed_total", output);
    assert_eq!(failed("ioc") + failed("archive"), 0.0, "{text}");
    assert_eq!(
        ioc_e2e::metric_in(
            &text,
            "ioc_gateway_output_batches_failed_total",
            &[("output", "down"), ("reason", "connection")]
        ),
        down_attempts
    );
    assert_eq!(
        value("output_retries_total", "ioc") + value("output_retries_total", "archive"),
        0.0
    );
    assert_eq!(value("output_retries_total", "down"), down_attempts);
    // The citizen's gauges exist per output.
    for output in ["ioc", "archive", "down"] {
        assert!(
            text.contains(&format!(
                "ioc_gateway_output_concurrency_limit{{output=\"{output}\"}} "
            )),
            "no concurrency limit of {output}:\n{text}"
        );
    }
    assert_eq!(
        value("output_bytes_sent_today", "archive"),
        archive_bytes as f64
    );
}
