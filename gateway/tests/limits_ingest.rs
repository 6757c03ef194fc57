//! The limits are applied where every input's readings pass: `pipeline::Ingest::encode`.

use ioc_gateway::buffer::{self, BufferConfig};
use ioc_gateway::limits::{LimitValues, LimitsConfig, TimestampPolicy};
use ioc_gateway::model::{FieldValue, Reading};
use ioc_gateway::output::Flavor;
use ioc_gateway::pipeline::Ingest;

#[tokio::test]
async fn ingest_encode_drops_what_breaks_a_limit_and_clamps_timestamps() {
    // The future/past window applies only against a clock known to be right (an unsynchronised
    // box clock must not judge device timestamps): say it is, whatever this machine's kernel says.
    ioc_gateway::clock::configure(ioc_gateway::clock::ClockSettings {
        assume_synced: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (writer, _reader, _report) =
        buffer::open(BufferConfig::new(dir.path().join("buffer"), 8 << 20)).unwrap();
    let ingest = Ingest::new(writer.clone(), "gw1", Flavor::V2).with_limits(
        LimitsConfig::from_values(LimitValues {
            max_series_per_hour: 2,
            max_future_s: 60,
            timestamp_policy: TimestampPolicy::Clamp,
            ..LimitValues::default()
        }),
    );
    let now = ioc_gateway::clock::now_ns();
    let r = |sensor: &str, ts: i64| {
        Reading::new("env", ts)
            .tag("sensor_id", sensor)
            .field("pm", FieldValue::Float(1.5))
    };
    let far_future = now + 3_600_000_000_000;
    let mut out = Vec::new();
    let lines = ingest.encode(
        "mqtt0",
        vec![
            r("s1", now),
            r("s2", far_future),
            r("s3", now), // third series: over the limit of 2
            r("s1", now + 1),
            Reading::new("env", now)
                .tag("sensor_id", "s1")
                .field("note", FieldValue::Str("x".repeat(70_000))),
        ],
        &mut out,
    );
    assert_eq!(lines, 3);
    let text = String::from_utf8(out).unwrap();
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), 3, "{text}");
    assert!(got[0].starts_with("env,gateway=gw1,sensor_id=s1 pm=1.5 "));
    assert!(got[1].starts_with("env,gateway=gw1,sensor_id=s2 pm=1.5 "));
    let clamped: i64 = got[1].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        clamped < far_future && clamped >= now + 60_000_000_000,
        "{clamped}"
    );
    assert_eq!(
        got[2],
        format!("env,gateway=gw1,sensor_id=s1 pm=1.5 {}", now + 1)
    );
    assert_eq!(ingest.limits().series_in_window("mqtt0"), 2);
    drop(ingest);
    writer.shutdown().await;
}
