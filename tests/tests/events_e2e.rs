//! Camera events and traffic data are stored exactly, and urgent events are delivered first: real
//! mosquitto → `ioc-gateway run` (a real process) → real InfluxDB 1.x / VictoriaMetrics, every point
//! read back and compared with exact tags, values and timestamps.
//!
//! What is shown here:
//! - Frigate `frigate/events` messages (new / update / end, `sub_label` absent, as a string and as
//!   `[name, score]`, zones, `recognized_license_plate`) and plate-recognition payloads land in
//!   InfluxDB 1.x with every tag, field (strings included) and nanosecond timestamp exact, while
//!   malformed payloads between them are rejected and counted.
//! - MQTT JSON traffic counts land as `traffic_{count,speed_avg,occupancy,heavy_count}` with tags
//!   `site`, `lane`, `direction`.
//! - `format = "influx"` passes good lines through exactly and rejects a bad line alone.
//! - HEAVY: with the store down, 50,000 normal and 100 urgent readings wait in the buffer; when the
//!   store returns, all urgent ones are queryable before the normal backlog has drained, and in the
//!   end everything is there exactly once. Also measured: how soon a *new* urgent event is queryable
//!   after the store comes back.
//! - Edge aggregation: exact `_mean/_min/_max/_count` per 10 s window, including a window that spans
//!   a gateway restart, readings published while the gateway was down, and a late reading refused.
//!
//! The gateway's HTTP server runs on a free port in every test (its `/metrics` is how rejections and
//! buffer appends are observed).

use ioc_e2e::steps::{
    then_it_subscribed, then_the_broker_acked_everything, when_it_restarts_then_it_reconnects,
    when_stopped_then_it_exits_cleanly,
};
use ioc_e2e::{
    free_port, metric_in, now_ms, ExportedSeries, GatewayProcess, HeavyTestLock, Influx1,
    Mosquitto, MqttPublisher, VictoriaMetrics,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const GATEWAY_ID: &str = "e2e-gw";

// ---------------------------------------------------------------------------------------------------
// Gateway config and process helpers.
// ---------------------------------------------------------------------------------------------------

/// One `[[inputs.mqtt]]` block: its client id and topic (to wait for the subscription) and the rest
/// of its keys as TOML text.
struct Input {
    client_id: String,
    topic: String,
    extra: String,
}

impl Input {
    fn new(client_id: &str, topic: &str, extra: &str) -> Self {
        Input {
            client_id: client_id.into(),
            topic: topic.into(),
            extra: extra.into(),
        }
    }
}

/// A gateway under test: its process, its `/metrics` address, and its data dir.
struct Gateway {
    process: GatewayProcess,
    http_port: u16,
    data_dir: PathBuf,
    _dir: TempDir,
}

/// Writes `gateway.toml` (inputs, `[output.influxdb]` from `output`, `[http]` on a free port) and
/// starts the gateway, waiting until every input has subscribed at the broker.
fn start_gateway(broker: &Mosquitto, inputs: &[Input], output: &str) -> Gateway {
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let http_port = free_port();
    let mut text = format!(
        "# written by tests/tests/events_e2e.rs\n[gateway]\nid = \"{GATEWAY_ID}\"\ndata_dir = \"{}\"\n# the buffer holds exactly what the test sent (no health readings)\nhealth_interval_s = 0\n\n",
        data_dir.display()
    );
    for input in inputs {
        text.push_str(&format!(
            "[[inputs.mqtt]]\nurl = \"{}\"\nclient_id = \"{}\"\ntopics = [\"{}\"]\nqos = 1\n{}\n\n",
            broker.url(),
            input.client_id,
            input.topic,
            input.extra.trim()
        ));
    }
    text.push_str(&format!(
        "[output.influxdb]\n{}\n\n[buffer]\nmax_disk_mb = 1024\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n",
        output.trim()
    ));
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, &text).unwrap();
    let befores: Vec<usize> = inputs
        .iter()
        .map(|i| broker.subscription_count(&i.client_id, &i.topic))
        .collect();
    let mut process = GatewayProcess::spawn(&config).unwrap();
    for (input, before) in inputs.iter().zip(befores) {
        then_it_subscribed(broker, &mut process, &input.client_id, &input.topic, before);
    }
    Gateway {
        process,
        http_port,
        data_dir,
        _dir: dir,
    }
}

impl Gateway {
    /// The gateway's Prometheus text from `/metrics` (empty string when it cannot be fetched).
    fn metrics_text(&self) -> String {
        ureq::get(&format!("http://127.0.0.1:{}/metrics", self.http_port))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
    }
}

impl Gateway {
    /// How many readings/messages of `input` were rejected for `reason`: from
    /// `ioc_gateway_readings_rejected_total{input,reason}` on `/metrics` when the gateway serves it, else from
    /// its log (`*` counts every reason; `message rejected ... reason="<reason>"` in the `input=<input>` span; each is
    /// logged, up to 10 per 10 s per input, which these tests stay under).
    fn rejections(&self, input: &str, reason: &str) -> f64 {
        let text = self.metrics_text();
        if text.contains("ioc_gateway_readings_rejected_total") {
            let mut labels = vec![("input", input)];
            if reason != "*" {
                labels.push(("reason", reason));
            }
            return metric_in(&text, "ioc_gateway_readings_rejected_total", &labels);
        }
        let span = format!("input={input} ");
        let reason_field = format!("reason=\"{reason}\"");
        self.process
            .log()
            .lines()
            .filter(|l| l.contains(&span))
            .filter(|l| {
                if reason == "*" {
                    l.contains("rejected")
                } else if reason == "late_for_window" {
                    l.contains("reading rejected") && l.contains("too late")
                } else {
                    l.contains("message rejected") && l.contains(&reason_field)
                }
            })
            .count() as f64
    }

    /// Line-protocol lines in the gateway's buffer segments of `class` (`normal`/`urgent`), read
    /// from the record headers on disk (bytes 8..12 payload length, 12..16 lines; 32-byte header).
    /// While the store is down nothing is deleted, so this is every line made durable.
    fn buffered_lines(&self, class: &str) -> u64 {
        let dir = self.data_dir.join("buffer").join(class);
        let mut total = 0u64;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "seg") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let mut at = 0usize;
            while at + 32 <= bytes.len() && &bytes[at..at + 4] == b"IOCR" {
                let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
                let lines = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap());
                if at + 32 + len > bytes.len() {
                    break;
                }
                total += u64::from(lines);
                at += 32 + len;
            }
        }
        total
    }
}

/// Publishes every `(topic, payload)` (QoS 1), then checks the broker acknowledged every message
/// published so far within 120 s.
fn publish_and_wait_acked(publisher: &mut MqttPublisher, messages: &[(String, String)]) {
    for (topic, payload) in messages {
        publisher.publish(topic, payload.clone()).unwrap();
    }
    then_the_broker_acked_everything(publisher, Duration::from_secs(120));
}

/// InfluxDB rows of `SELECT * FROM <measurement>` (time in ns), in time order.
fn influx_rows(influx: &Influx1, db: &str, measurement: &str) -> Vec<Map<String, Value>> {
    influx
        .query_rows(db, &format!("SELECT * FROM \"{measurement}\""))
        .unwrap()
}

/// Waits until `SELECT * FROM measurement` has `count` rows (or 30 s pass), then returns the rows.
fn wait_influx_rows(
    influx: &Influx1,
    db: &str,
    measurement: &str,
    count: usize,
    gateway: &Gateway,
) -> Vec<Map<String, Value>> {
    let arrived = ioc_e2e::wait_until(Duration::from_secs(30), || {
        influx_rows(influx, db, measurement).len() >= count
    });
    let rows = influx_rows(influx, db, measurement);
    assert!(
        arrived,
        "expected {count} rows of {measurement}, got {}: {rows:#?}\n--- gateway log ---\n{}",
        rows.len(),
        gateway.process.log_tail(40)
    );
    rows
}

/// Asserts that `actual` rows equal `expected` (JSON objects with every column, `null` for absent
/// ones), with a row-by-row diff.
fn assert_rows_equal(actual: &[Map<String, Value>], expected: &[Value]) {
    let mut problems = Vec::new();
    if actual.len() != expected.len() {
        problems.push(format!(
            "expected {} rows, got {}",
            expected.len(),
            actual.len()
        ));
    }
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let e = e.as_object().unwrap();
        let mut keys: Vec<&String> = a.keys().chain(e.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let av = a.get(k).unwrap_or(&Value::Null);
            let ev = e.get(k).unwrap_or(&Value::Null);
            if av != ev {
                problems.push(format!("row {i} column {k}: expected {ev}, got {av}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nactual rows: {actual:#?}",
        problems.join("\n")
    );
}

/// VictoriaMetrics export of `selector`, after a flush.
fn vm_export(vm: &VictoriaMetrics, selector: &str) -> Vec<ExportedSeries> {
    vm.force_flush().unwrap();
    vm.export(selector).unwrap()
}

// ---------------------------------------------------------------------------------------------------
// Frigate payloads in the shape of Frigate's `frigate/events` documentation.
// ---------------------------------------------------------------------------------------------------

/// A tracked object as Frigate publishes it in `before` / `after` (the documented keys, most of
/// which the gateway ignores).
#[allow(clippy::too_many_arguments)]
fn frigate_object(
    id: &str,
    camera: &str,
    label: &str,
    frame_time: f64,
    start_time: f64,
    end_time: Option<f64>,
    score: f64,
    top_score: f64,
    sub_label: Value,
    current_zones: &[&str],
    entered_zones: &[&str],
    stationary: bool,
    plate: Value,
) -> Value {
    json!({
        "id": id, "camera": camera, "frame_time": frame_time,
        "snapshot": {"frame_time": frame_time, "box": [415, 489, 528, 700], "area": 12728,
                     "region": [260, 446, 660, 846], "score": score, "attributes": []},
        "label": label, "sub_label": sub_label, "top_score": top_score, "false_positive": false,
        "start_time": start_time, "end_time": end_time, "score": score,
        "box": [424, 500, 536, 712], "area": 23744, "ratio": 2.113207, "region": [264, 450, 667, 853],
        "current_zones": current_zones, "entered_zones": entered_zones, "thumbnail": null,
        "has_snapshot": true, "has_clip": true, "stationary": stationary, "motionless_count": 0,
        "position_changes": 2, "attributes": {}, "current_attributes": [],
        "recognized_license_plate": plate, "recognized_license_plate_score": null
    })
}

fn frigate_message(kind: &str, before: &Value, after: &Value) -> String {
    json!({"type": kind, "before": before, "after": after}).to_string()
}

// ---------------------------------------------------------------------------------------------------
// 1. Camera events and plate reads into InfluxDB 1.x.
// ---------------------------------------------------------------------------------------------------

#[test]
fn frigate_events_and_plate_reads_arrive_exactly_in_influxdb1() {
    let broker = Mosquitto::start().unwrap();
    let influx = Influx1::start().unwrap();
    let gateway = given_a_gateway_with_cameras_and_plates_into_influxdb1(&broker, &influx);
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-cam").unwrap();
    publish_and_wait_acked(&mut publisher, &camera_and_plate_messages_some_malformed());
    let expected = expected_camera_event_rows();
    wait_influx_rows(&influx, "events", "camera_event", expected.len(), &gateway);
    then_every_malformed_message_is_counted_by_input_and_reason(&gateway);
    then_the_camera_events_are_exactly(&influx, &expected);
    then_the_string_fields_keep_their_type(&influx);
}

/// Given: a gateway with Frigate events (`frigate/events`, urgent) and plate reads (`lpr/+`, the
/// site from the topic) as inputs, writing to database `events` of InfluxDB 1.x.
fn given_a_gateway_with_cameras_and_plates_into_influxdb1(
    broker: &Mosquitto,
    influx: &Influx1,
) -> Gateway {
    influx.create_database("events").unwrap();
    start_gateway(
        broker,
        &[
            Input::new(
                "e2e-gw-cameras",
                "frigate/events",
                "name = \"cameras\"\nformat = \"frigate\"\npriority = \"urgent\"",
            ),
            Input::new(
                "e2e-gw-lpr",
                "lpr/+",
                "name = \"plates\"\nformat = \"lpr\"\ntopic_tags = \"_/site\"",
            ),
        ],
        &format!(
            "url = \"{}\"\napi = \"v1\"\ndatabase = \"events\"\nflush_interval_ms = 100",
            influx.url()
        ),
    )
}

/// Frigate event 1: a car at gate_north, new → update → update → end.
const EVENT_1: &str = "1700000000.123456-k3x9qa";
/// Frigate event 2: a person with no zones at all, on another camera.
const EVENT_2: &str = "1700000003.9-p0p0p0";

/// Frigate events and plate reads, with malformed messages between them: event 1 new → update
/// (sub_label `[name, score]`, plate) → update (sub_label as a string, stationary, left all zones)
/// → end; event 2 new; three plate reads (webhook style, unknown keys ignored). Malformed: two
/// `missing_key`, one `not_json`, one `unknown_event_type` for the cameras; one `missing_key`, one
/// `bad_timestamp` for the plates.
fn camera_and_plate_messages_some_malformed() -> Vec<(String, String)> {
    let o1_new = frigate_object(
        EVENT_1,
        "gate_north",
        "car",
        1700000000.123456,
        1700000000.123456,
        None,
        0.70703125,
        0.70703125,
        Value::Null,
        &["entrance"],
        &["entrance"],
        false,
        Value::Null,
    );
    let o1_upd = frigate_object(
        EVENT_1,
        "gate_north",
        "car",
        1700000001.5,
        1700000000.123456,
        None,
        0.8125,
        0.8125,
        json!(["Bob", 0.87]),
        &["lane_2", "entrance"],
        &["entrance", "lane_2"],
        false,
        json!("51F12345"),
    );
    let o1_upd2 = frigate_object(
        EVENT_1,
        "gate_north",
        "car",
        1700000002.000001,
        1700000000.123456,
        None,
        0.75,
        0.8125,
        json!("delivery"),
        &[],
        &["entrance", "lane_2"],
        true,
        json!(["51F12345", 0.91]),
    );
    let o1_end = frigate_object(
        EVENT_1,
        "gate_north",
        "car",
        1700000012.5,
        1700000000.123456,
        Some(1700000012.623456),
        0.6,
        0.8125,
        Value::Null,
        &[],
        &["entrance", "lane_2"],
        true,
        Value::Null,
    );
    let o2_new = frigate_object(
        EVENT_2,
        "plaza_cam",
        "person",
        1700000003.9,
        1700000003.9,
        None,
        0.5,
        0.5,
        Value::Null,
        &[],
        &[],
        false,
        Value::Null,
    );
    let no_camera = {
        let mut o = o2_new.clone();
        o.as_object_mut().unwrap().remove("camera");
        o
    };
    let frigate = "frigate/events".to_string();
    vec![
        (frigate.clone(), frigate_message("new", &o1_new, &o1_new)),
        // bad: no `after`
        (frigate.clone(), json!({"type": "new", "before": o1_new}).to_string()),
        (frigate.clone(), frigate_message("update", &o1_new, &o1_upd)),
        // bad: not JSON
        (frigate.clone(), "{\"type\":\"update\",".to_string()),
        (frigate.clone(), frigate_message("update", &o1_upd, &o1_upd2)),
        // bad: `after` without `camera`
        (frigate.clone(), frigate_message("new", &no_camera, &no_camera)),
        // bad: unknown event type
        (frigate.clone(), frigate_message("destroyed", &o2_new, &o2_new)),
        (frigate.clone(), frigate_message("new", &o2_new, &o2_new)),
        (frigate.clone(), frigate_message("end", &o1_upd2, &o1_end)),
        // Plate reads (webhook style), unknown keys ignored.
        ("lpr/gate_north".to_string(), r#"{"plate":"51F-123.45","confidence":0.93,"camera":"cam-03","time":"2026-11-24T00:31:02.123Z","event_id":"lpr-0001","vehicle":{"type":"car","color":"white"},"region":"vn"}"#.to_string()),
        // bad: no confidence
        ("lpr/gate_north".to_string(), r#"{"plate":"30E-111.11","camera":"cam-03","time":"2026-11-24T00:31:02.500Z"}"#.to_string()),
        ("lpr/gate_south".to_string(), r#"{"plate":"29A-999.01","confidence":0.875,"camera":"cam-07","time":"2026-11-24T07:31:03.456789+07:00"}"#.to_string()),
        // bad: unparseable time
        ("lpr/gate_south".to_string(), r#"{"plate":"29A-999.02","confidence":0.5,"camera":"cam-07","time":"yesterday"}"#.to_string()),
        ("lpr/gate_south".to_string(), r#"{"plate":"60B-000.07","confidence":0.5,"camera":"cam-07","time":1795480264.25}"#.to_string()),
    ]
}

/// Every `camera_event` row the good messages of [`camera_and_plate_messages_some_malformed`]
/// must give, in time order, every column (`null` for absent ones), nanosecond timestamps.
fn expected_camera_event_rows() -> Vec<Value> {
    let camera_rows = |label: &str, camera: &str, event_type: &str, time: i64, zones: Value| {
        json!({"time": time, "camera": camera, "label": label, "event_type": event_type,
               "zones": zones, "gateway": GATEWAY_ID, "site": null,
               "duration_s": null, "event_id": null, "plate": null, "plate_score": null,
               "score": null, "stationary": null, "sub_label": null, "sub_label_score": null,
               "top_score": null})
    };
    let with = |mut row: Value, fields: Value| {
        for (k, v) in fields.as_object().unwrap() {
            row[k] = v.clone();
        }
        row
    };
    vec![
        with(
            camera_rows(
                "car",
                "gate_north",
                "new",
                1_700_000_000_123_456_000,
                json!("entrance"),
            ),
            json!({"event_id": EVENT_1, "score": 0.70703125, "top_score": 0.70703125, "stationary": false}),
        ),
        with(
            camera_rows(
                "car",
                "gate_north",
                "update",
                1_700_000_001_500_000_000,
                json!("entrance,lane_2"),
            ),
            json!({"event_id": EVENT_1, "score": 0.8125, "top_score": 0.8125, "stationary": false,
                   "sub_label": "Bob", "sub_label_score": 0.87, "plate": "51F12345"}),
        ),
        with(
            camera_rows(
                "car",
                "gate_north",
                "update",
                1_700_000_002_000_001_000,
                json!("entrance,lane_2"),
            ),
            json!({"event_id": EVENT_1, "score": 0.75, "top_score": 0.8125, "stationary": true,
                   "sub_label": "delivery", "plate": "51F12345"}),
        ),
        with(
            camera_rows(
                "person",
                "plaza_cam",
                "new",
                1_700_000_003_900_000_000,
                Value::Null,
            ),
            json!({"event_id": EVENT_2, "score": 0.5, "top_score": 0.5, "stationary": false}),
        ),
        with(
            camera_rows(
                "car",
                "gate_north",
                "end",
                1_700_000_012_623_456_000,
                json!("entrance,lane_2"),
            ),
            json!({"event_id": EVENT_1, "score": 0.6, "top_score": 0.8125, "stationary": true,
                   "duration_s": 12.5}),
        ),
        with(
            camera_rows(
                "license_plate",
                "cam-03",
                "plate",
                1_795_480_262_123_000_000,
                Value::Null,
            ),
            json!({"site": "gate_north", "plate": "51F-123.45", "score": 0.93, "event_id": "lpr-0001"}),
        ),
        with(
            camera_rows(
                "license_plate",
                "cam-07",
                "plate",
                1_795_480_263_456_789_000,
                Value::Null,
            ),
            json!({"site": "gate_south", "plate": "29A-999.01", "score": 0.875}),
        ),
        with(
            camera_rows(
                "license_plate",
                "cam-07",
                "plate",
                1_795_480_264_250_000_000,
                Value::Null,
            ),
            json!({"site": "gate_south", "plate": "60B-000.07", "score": 0.5}),
        ),
    ]
}

/// Then: every malformed message was rejected and counted under its input and reason, exactly.
fn then_every_malformed_message_is_counted_by_input_and_reason(gateway: &Gateway) {
    // Every rejection must have been counted before we conclude nothing else arrives.
    let reasons = [
        ("cameras", "missing_key", 2.0),
        ("cameras", "not_json", 1.0),
        ("cameras", "unknown_event_type", 1.0),
        ("plates", "missing_key", 1.0),
        ("plates", "bad_timestamp", 1.0),
    ];
    let counted = ioc_e2e::wait_until(Duration::from_secs(10), || {
        reasons
            .iter()
            .all(|(input, reason, n)| gateway.rejections(input, reason) >= *n)
    });
    let got: Vec<(&str, &str, f64)> = reasons
        .iter()
        .map(|(input, reason, _)| (*input, *reason, gateway.rejections(input, reason)))
        .collect();
    let want: Vec<(&str, &str, f64)> = reasons.to_vec();
    assert!(
        counted,
        "rejections not counted: {got:?}\n{}",
        gateway.process.log_tail(30)
    );
    assert_eq!(got, want, "{}", gateway.process.log_tail(30));
}

/// Then: (half a second later, so nothing else is on its way) `camera_event` holds exactly the
/// `expected` rows.
fn then_the_camera_events_are_exactly(influx: &Influx1, expected: &[Value]) {
    std::thread::sleep(Duration::from_millis(500));
    assert_rows_equal(&influx_rows(influx, "events", "camera_event"), expected);
}

/// Then: the string fields kept their type (a float `score` next to string `event_id`).
/// `plate_score` is only sent when Frigate gives a number; in this run it never does.
fn then_the_string_fields_keep_their_type(influx: &Influx1) {
    let types = field_types(influx, "events", "camera_event");
    let want: BTreeMap<String, String> = [
        ("duration_s", "float"),
        ("event_id", "string"),
        ("plate", "string"),
        ("plate_score", "float"),
        ("score", "float"),
        ("stationary", "boolean"),
        ("sub_label", "string"),
        ("sub_label_score", "float"),
        ("top_score", "float"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut want = want;
    want.remove("plate_score");
    assert_eq!(types, want);
}

// ---------------------------------------------------------------------------------------------------
// 2. Traffic counts from MQTT JSON into VictoriaMetrics.
// ---------------------------------------------------------------------------------------------------

/// (site, lane, direction, ts_ms, count, speed_avg, occupancy, heavy_count)
type TrafficRow = (
    &'static str,
    &'static str,
    &'static str,
    i64,
    f64,
    f64,
    f64,
    f64,
);
/// (metric, site, lane, direction)
type TrafficKey = (String, String, String, String);

#[test]
fn traffic_json_lands_with_its_field_names_and_tags() {
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let gateway = start_gateway(
        &broker,
        &[Input::new(
            "e2e-gw-traffic",
            "city/+/traffic/+",
            "name = \"traffic\"\nmeasurement = \"traffic\"\ntopic_tags = \"_/district/_/site\"\n\
             timestamp_field = \"ts\"\ntimestamp_unit = \"ms\"\ntag_keys = [\"lane\", \"direction\"]",
        )],
        &format!(
            "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\nflush_interval_ms = 100",
            vm.url()
        ),
    );
    // (site, lane, direction, ts_ms, count, speed_avg, occupancy, heavy_count)
    let rows: Vec<TrafficRow> = vec![
        (
            "xa-lo-01",
            "1",
            "nb",
            1_700_000_060_000,
            42.0,
            38.5,
            0.125,
            3.0,
        ),
        (
            "xa-lo-01",
            "1",
            "nb",
            1_700_000_120_000,
            40.0,
            41.25,
            0.1,
            0.0,
        ),
        (
            "xa-lo-01",
            "2",
            "sb",
            1_700_000_060_000,
            17.0,
            52.0,
            0.0625,
            5.0,
        ),
        ("ng-tu-02", "1", "eb", 1_700_000_060_000, 0.0, 0.0, 0.0, 0.0),
    ];
    let messages: Vec<(String, String)> = rows
        .iter()
        .map(|(site, lane, dir, ts, count, speed, occ, heavy)| {
            (
                format!("city/d7/traffic/{site}"),
                format!(
                    r#"{{"ts":{ts},"lane":"{lane}","direction":"{dir}","count":{count},"speed_avg":{speed},"occupancy":{occ},"heavy_count":{heavy}}}"#
                ),
            )
        })
        .collect();
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-traffic").unwrap();
    publish_and_wait_acked(&mut publisher, &messages);

    // (metric, site, lane, direction) → samples
    let mut expected: BTreeMap<TrafficKey, Vec<(i64, f64)>> = BTreeMap::new();
    for (site, lane, dir, ts, count, speed, occ, heavy) in &rows {
        for (field, v) in [
            ("count", count),
            ("speed_avg", speed),
            ("occupancy", occ),
            ("heavy_count", heavy),
        ] {
            expected
                .entry((
                    format!("traffic_{field}"),
                    site.to_string(),
                    lane.to_string(),
                    dir.to_string(),
                ))
                .or_default()
                .push((*ts, *v));
        }
    }
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(total, 16);
    let mut actual = BTreeMap::new();
    let arrived = ioc_e2e::wait_until(Duration::from_secs(30), || {
        actual.clear();
        for s in vm_export(&vm, "{__name__=~\"traffic_.*\"}") {
            let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                [
                    "__name__",
                    "direction",
                    "district",
                    "gateway",
                    "lane",
                    "site"
                ],
                "{:?}",
                s.labels
            );
            assert_eq!(s.label("district"), Some("d7"));
            assert_eq!(s.label("gateway"), Some(GATEWAY_ID));
            let key = (
                s.name().to_string(),
                s.label("site").unwrap().to_string(),
                s.label("lane").unwrap().to_string(),
                s.label("direction").unwrap().to_string(),
            );
            let samples: Vec<(i64, f64)> = s
                .timestamps_ms
                .iter()
                .copied()
                .zip(s.values.iter().copied())
                .collect();
            actual.insert(key, samples);
        }
        actual.values().map(Vec::len).sum::<usize>() >= total
    });
    assert!(
        arrived,
        "traffic did not arrive: {actual:#?}\n{}",
        gateway.process.log_tail(30)
    );
    assert_eq!(actual, expected);
}

// ---------------------------------------------------------------------------------------------------
// 3. Line protocol passthrough.
// ---------------------------------------------------------------------------------------------------

#[test]
fn line_protocol_passthrough_keeps_good_lines_and_rejects_the_bad_one_alone() {
    let broker = Mosquitto::start().unwrap();
    let influx = Influx1::start().unwrap();
    influx.create_database("lp").unwrap();
    let gateway = start_gateway(
        &broker,
        &[Input::new(
            "e2e-gw-lp",
            "devices/+/lp",
            "name = \"devices\"\nformat = \"influx\"\ntopic_tags = \"_/device\"",
        )],
        &format!(
            "url = \"{}\"\napi = \"v1\"\ndatabase = \"lp\"\nflush_interval_ms = 100",
            influx.url()
        ),
    );
    let payload = "weather,station=ws1 temp=21.5,hum=40i,ok=true,note=\"hi there\" 1700000000123456789\n\
                   weather,station=ws1 temp= 1700000000223456789\n\
                   # a comment line is skipped\n\
                   \n\
                   weather,station=ws2 temp=19.25,note=\"a \\\"quoted\\\" word\" 1700000000323456789\r\n\
                   weather,station=ws\\ 3 temp=-4 1700000000423456789";
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-lp").unwrap();
    publish_and_wait_acked(
        &mut publisher,
        &[("devices/box-1/lp".to_string(), payload.to_string())],
    );
    wait_influx_rows(&influx, "lp", "weather", 3, &gateway);
    let counted = ioc_e2e::wait_until(Duration::from_secs(10), || {
        gateway.rejections("devices", "bad_line") >= 1.0
    });
    assert!(
        counted,
        "the bad line was not counted\n{}",
        gateway.process.log_tail(30)
    );
    assert_eq!(gateway.rejections("devices", "bad_line"), 1.0);
    assert_eq!(
        gateway.rejections("devices", "*"),
        1.0,
        "only the bad line is rejected"
    );
    let base =
        json!({"device": "box-1", "gateway": GATEWAY_ID, "hum": null, "ok": null, "note": null});
    let row = |fields: Value| {
        let mut r = base.clone();
        for (k, v) in fields.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let expected = vec![
        row(
            json!({"time": 1_700_000_000_123_456_789_i64, "station": "ws1", "temp": 21.5, "hum": 40, "ok": true, "note": "hi there"}),
        ),
        row(
            json!({"time": 1_700_000_000_323_456_789_i64, "station": "ws2", "temp": 19.25, "note": "a \"quoted\" word"}),
        ),
        row(json!({"time": 1_700_000_000_423_456_789_i64, "station": "ws 3", "temp": -4})),
    ];
    std::thread::sleep(Duration::from_millis(500));
    assert_rows_equal(&influx_rows(&influx, "lp", "weather"), &expected);
    // Types as written: `-4` is a float like `21.5`, `40i` an integer.
    assert_eq!(
        field_types(&influx, "lp", "weather"),
        [
            ("hum", "integer"),
            ("note", "string"),
            ("ok", "boolean"),
            ("temp", "float")
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
    );
}

/// `SHOW FIELD KEYS`: field name → InfluxDB type.
fn field_types(influx: &Influx1, db: &str, measurement: &str) -> BTreeMap<String, String> {
    let answer = influx
        .query(db, &format!("SHOW FIELD KEYS FROM \"{measurement}\""))
        .unwrap();
    answer["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v[0].as_str().unwrap().into(), v[1].as_str().unwrap().into()))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// 4. Urgent first after an outage (HEAVY).
// ---------------------------------------------------------------------------------------------------

const NORMAL_COUNT: usize = 50_000;
const URGENT_COUNT: usize = 100;
/// 2023-11-14T22:13:20Z.
const BASE_TS_MS: i64 = 1_700_000_000_000;

fn normal_message(i: usize) -> (String, String) {
    (
        format!("city/d{}/env/s{:02}", i % 4, i % 20),
        format!(
            r#"{{"ts":{},"pm2_5":{}}}"#,
            BASE_TS_MS + i as i64,
            (i % 1000) as f64 / 10.0
        ),
    )
}

fn urgent_score(i: usize) -> f64 {
    (500 + i % 400) as f64 / 1000.0
}

/// Frigate `new` event `i`: start time BASE + i s + 0.25 s.
fn urgent_message(i: usize, id: &str, start_s: f64) -> (String, String) {
    let o = frigate_object(
        id,
        &format!("cam-{}", i % 4),
        "car",
        start_s,
        start_s,
        None,
        urgent_score(i),
        urgent_score(i),
        Value::Null,
        &["intersection"],
        &["intersection"],
        false,
        Value::Null,
    );
    ("frigate/events".to_string(), frigate_message("new", &o, &o))
}

#[test]
fn heavy_urgent_readings_overtake_the_normal_backlog_after_an_outage() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let mut vm = VictoriaMetrics::start().unwrap();
    let (gateway, batch_max_lines) = given_a_gateway_with_normal_and_urgent_inputs(&broker, &vm);
    vm.stop();
    let outage_started = Instant::now();
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-urgent").unwrap();
    when_a_normal_backlog_then_urgent_events_are_buffered(&mut publisher, &gateway);
    eprintln!(
        "urgent-first: {NORMAL_COUNT} normal + {URGENT_COUNT} urgent durable {:?} into the outage",
        outage_started.elapsed()
    );
    let outage = when_the_store_comes_back_after_the_outage(&mut vm, outage_started);
    let drain = when_new_urgent_events_are_published_as_the_backlog_drains(&vm, &mut publisher);
    let live = then_every_urgent_event_overtook_the_normal_backlog(
        &drain,
        &gateway,
        batch_max_lines,
        outage,
    );
    then_every_normal_reading_is_stored_exactly_once(&vm, &gateway);
    then_every_urgent_event_is_stored_exactly_once(&vm, &live);
}

/// VictoriaMetrics series of the urgent camera events and of the normal readings.
const URGENT_SELECTOR: &str = "camera_event_score";
const NORMAL_SELECTOR: &str = "environment_pm2_5";

/// Given: a gateway with a normal input (`city/+/env/+`) and an urgent one (Frigate events),
/// writing to `vm` in batches of `IOC_E2E_URGENT_BATCH` lines (default 500, returned).
fn given_a_gateway_with_normal_and_urgent_inputs(
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
) -> (Gateway, u32) {
    let batch_max_lines: u32 = std::env::var("IOC_E2E_URGENT_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let gateway = start_gateway(
        broker,
        &[
            Input::new(
                "e2e-gw-env",
                "city/+/env/+",
                "name = \"environment\"\nmeasurement = \"environment\"\ntopic_tags = \"_/district/_/sensor_id\"\n\
                 timestamp_field = \"ts\"\ntimestamp_unit = \"ms\"",
            ),
            Input::new(
                "e2e-gw-cam",
                "frigate/events",
                "name = \"cameras\"\nformat = \"frigate\"\npriority = \"urgent\"",
            ),
        ],
        &format!(
            "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\nbatch_max_lines = {batch_max_lines}\nflush_interval_ms = 200",
            vm.url()
        ),
    );
    (gateway, batch_max_lines)
}

/// When: the normal backlog is published first, then the urgent events on top of it; then every
/// reading is durable in the gateway's buffer in its class: appended (fsync'd), as the record
/// headers of the segments on disk say (nothing is deleted while the store is down).
fn when_a_normal_backlog_then_urgent_events_are_buffered(
    publisher: &mut MqttPublisher,
    gateway: &Gateway,
) {
    let normals: Vec<(String, String)> = (0..NORMAL_COUNT).map(normal_message).collect();
    let urgents: Vec<(String, String)> = (0..URGENT_COUNT)
        .map(|i| urgent_message(i, &format!("urgent-{i:03}"), 1_700_000_000.25 + i as f64))
        .collect();
    publish_and_wait_acked(publisher, &normals);
    publish_and_wait_acked(publisher, &urgents);
    let durable = ioc_e2e::wait_until(Duration::from_secs(120), || {
        gateway.buffered_lines("normal") >= NORMAL_COUNT as u64
            && gateway.buffered_lines("urgent") >= URGENT_COUNT as u64
    });
    assert!(
        durable,
        "the gateway did not make every reading durable: normal {} urgent {}\n{}",
        gateway.buffered_lines("normal"),
        gateway.buffered_lines("urgent"),
        gateway.process.log_tail(30)
    );
    assert_eq!(gateway.buffered_lines("normal"), NORMAL_COUNT as u64);
    assert_eq!(gateway.buffered_lines("urgent"), URGENT_COUNT as u64);
    std::thread::sleep(Duration::from_millis(500));
}

/// When: (optionally after a longer outage, `IOC_E2E_OUTAGE_EXTRA_S`: the sink's retry backoff
/// grows with it) the store comes back. Returns how long the outage was.
fn when_the_store_comes_back_after_the_outage(
    vm: &mut VictoriaMetrics,
    outage_started: Instant,
) -> Duration {
    let extra_s: u64 = std::env::var("IOC_E2E_OUTAGE_EXTRA_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(extra_s));
    let outage = outage_started.elapsed();
    vm.start_again().unwrap();
    outage
}

/// What was seen in the store while the backlog drained (every `elapsed` counts from the store's
/// return; every count of normal points is an upper bound at that moment).
struct DrainSeen {
    /// When the first normal points appeared, and how many.
    first_normal_at: Option<(Duration, usize)>,
    /// When all `URGENT_COUNT` buffered urgent events were queryable, and the normal points then.
    all_urgent: Option<(Duration, usize)>,
    /// Timestamp of the urgent event published right as the store came back...
    live_ts_ms: i64,
    /// ...and when it was queryable.
    live_at: Option<Duration>,
    /// Timestamp of the urgent event published once the drain was visibly under way, and when.
    drain_live: Option<(i64, Instant)>,
    /// How long that one took to be queryable, and the normal points then.
    drain_live_latency: Option<(Duration, usize)>,
}

/// When: a new urgent event is published right as the store is back, and another once the
/// backlog drain is visibly under way; the store is polled (up to 180 s) until every urgent
/// event is queryable.
fn when_new_urgent_events_are_published_as_the_backlog_drains(
    vm: &VictoriaMetrics,
    publisher: &mut MqttPublisher,
) -> DrainSeen {
    let back = Instant::now();
    let live_start_s = now_ms() as f64 / 1000.0;
    let live_ts_ms = (live_start_s * 1000.0).round() as i64;
    let (topic, payload) = urgent_message(999, "live-999", live_start_s);
    publisher.publish(&topic, payload).unwrap();

    let mut seen = DrainSeen {
        first_normal_at: None,
        all_urgent: None,
        live_ts_ms,
        live_at: None,
        drain_live: None,
        drain_live_latency: None,
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline
        && (seen.all_urgent.is_none()
            || seen.live_at.is_none()
            || seen.drain_live_latency.is_none())
    {
        vm.force_flush().unwrap();
        let urgent_ts: Vec<i64> = vm
            .export(URGENT_SELECTOR)
            .unwrap()
            .iter()
            .flat_map(|s| s.timestamps_ms.iter().copied())
            .collect();
        let old_urgent = urgent_ts
            .iter()
            .filter(|t| **t < BASE_TS_MS + URGENT_COUNT as i64 * 1000)
            .count();
        // Counted AFTER the urgent check: an upper bound of the normal points at that moment.
        let normal_now: usize = vm
            .export(NORMAL_SELECTOR)
            .unwrap()
            .iter()
            .map(|s| s.timestamps_ms.len())
            .sum();
        if seen.first_normal_at.is_none() && normal_now > 0 {
            seen.first_normal_at = Some((back.elapsed(), normal_now));
        }
        if seen.all_urgent.is_none() && old_urgent >= URGENT_COUNT {
            seen.all_urgent = Some((back.elapsed(), normal_now));
        }
        if seen.live_at.is_none() && urgent_ts.contains(&live_ts_ms) {
            seen.live_at = Some(back.elapsed());
        }
        match seen.drain_live {
            None if normal_now > 0 && normal_now < NORMAL_COUNT => {
                let start_s = now_ms() as f64 / 1000.0;
                let (topic, payload) = urgent_message(998, "live-998", start_s);
                publisher.publish(&topic, payload).unwrap();
                seen.drain_live = Some(((start_s * 1000.0).round() as i64, Instant::now()));
            }
            Some((ts, published))
                if seen.drain_live_latency.is_none() && urgent_ts.contains(&ts) =>
            {
                seen.drain_live_latency = Some((published.elapsed(), normal_now));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// Timestamps of the two urgent events published after the store came back.
struct LiveUrgent {
    at_store_back_ms: i64,
    during_drain_ms: i64,
}

/// Then: every urgent event arrived: all of the buffered ones before the normal backlog had fully
/// drained, and the one published during the drain within 30 s (a bound that only catches an
/// urgent event stuck behind the whole backlog; the latency itself is printed, not asserted, as
/// CI machines are loaded).
fn then_every_urgent_event_overtook_the_normal_backlog(
    seen: &DrainSeen,
    gateway: &Gateway,
    batch_max_lines: u32,
    outage: Duration,
) -> LiveUrgent {
    let (urgent_elapsed, normal_at_urgent) = seen.all_urgent.unwrap_or_else(|| {
        panic!(
            "not all {URGENT_COUNT} urgent readings arrived within 180 s\n{}",
            gateway.process.log_tail(40)
        )
    });
    let live_elapsed = seen
        .live_at
        .expect("the urgent event published at store-back never arrived");
    let (drain_ts, _) = seen
        .drain_live
        .expect("the backlog drain was never seen under way (it finished between two polls?)");
    let (drain_latency, normal_at_drain_live) = seen
        .drain_live_latency
        .expect("the urgent event published during the drain never arrived");
    let first_normal_at = seen.first_normal_at;
    eprintln!(
        "urgent-first (batch_max_lines = {batch_max_lines}, outage {outage:?}): store back → first normal points (elapsed, count) {first_normal_at:?}; \
         all {URGENT_COUNT} urgent queryable after {urgent_elapsed:?} with {normal_at_urgent} of {NORMAL_COUNT} normal points present; \
         new urgent event published at store-back queryable after {live_elapsed:?}; \
         new urgent event published during the drain queryable {drain_latency:?} after publishing, with {normal_at_drain_live} normal points present",
    );
    assert!(
        normal_at_urgent < NORMAL_COUNT,
        "the normal backlog had fully drained ({normal_at_urgent}) before all urgent readings were queryable"
    );
    assert!(
        drain_latency < Duration::from_secs(30),
        "an urgent event published during the backlog drain took {drain_latency:?} to be queryable"
    );
    LiveUrgent {
        at_store_back_ms: seen.live_ts_ms,
        during_drain_ms: drain_ts,
    }
}

/// Then: the normal backlog drains (within 180 s) and the store holds every normal reading
/// exactly once, with its tags, timestamp and value.
fn then_every_normal_reading_is_stored_exactly_once(vm: &VictoriaMetrics, gateway: &Gateway) {
    let mut normal_points = Vec::new();
    let complete = ioc_e2e::wait_until(Duration::from_secs(180), || {
        normal_points = vm_export(vm, NORMAL_SELECTOR);
        normal_points
            .iter()
            .map(|s| s.timestamps_ms.len())
            .sum::<usize>()
            >= NORMAL_COUNT
    });
    assert!(
        complete,
        "normal backlog did not drain\n{}",
        gateway.process.log_tail(30)
    );
    std::thread::sleep(Duration::from_secs(1));
    normal_points = vm_export(vm, NORMAL_SELECTOR);
    let mut got: Vec<(String, String, i64, f64)> = normal_points
        .iter()
        .flat_map(|s| {
            let d = s.label("district").unwrap().to_string();
            let id = s.label("sensor_id").unwrap().to_string();
            s.timestamps_ms
                .iter()
                .zip(&s.values)
                .map(move |(t, v)| (d.clone(), id.clone(), *t, *v))
        })
        .collect();
    got.sort_by_key(|g| g.2);
    let want: Vec<(String, String, i64, f64)> = (0..NORMAL_COUNT)
        .map(|i| {
            (
                format!("d{}", i % 4),
                format!("s{:02}", i % 20),
                BASE_TS_MS + i as i64,
                (i % 1000) as f64 / 10.0,
            )
        })
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "normal points (duplicates or losses)"
    );
    assert!(got == want, "normal points differ from what was published");
}

/// Then: the store holds every urgent event exactly once: the buffered ones and the two published
/// after the store came back, with camera, timestamp and score.
fn then_every_urgent_event_is_stored_exactly_once(vm: &VictoriaMetrics, live: &LiveUrgent) {
    let urgent = vm_export(vm, URGENT_SELECTOR);
    let mut got: Vec<(String, i64, f64)> = urgent
        .iter()
        .flat_map(|s| {
            let cam = s.label("camera").unwrap().to_string();
            s.timestamps_ms
                .iter()
                .zip(&s.values)
                .map(move |(t, v)| (cam.clone(), *t, *v))
        })
        .collect();
    got.sort_by_key(|g| g.1);
    let mut want: Vec<(String, i64, f64)> = (0..URGENT_COUNT)
        .map(|i| {
            (
                format!("cam-{}", i % 4),
                BASE_TS_MS + i as i64 * 1000 + 250,
                urgent_score(i),
            )
        })
        .collect();
    want.push((
        "cam-3".to_string(),
        live.at_store_back_ms,
        urgent_score(999),
    ));
    want.push(("cam-2".to_string(), live.during_drain_ms, urgent_score(998)));
    want.sort_by_key(|w| w.1);
    assert_eq!(got, want, "urgent points (duplicates or losses)");
}

// ---------------------------------------------------------------------------------------------------
// 5. Edge aggregation across a restart.
// ---------------------------------------------------------------------------------------------------

/// The aggregation state file's windows: (sensor_id, window start ns) → pm2_5 count.
fn saved_window_counts(data_dir: &Path) -> BTreeMap<(String, i64), u64> {
    let mut out = BTreeMap::new();
    let Ok(bytes) = std::fs::read(data_dir.join("aggregate").join("env-agg.state")) else {
        return out;
    };
    let Ok(state) = serde_json::from_slice::<Value>(&bytes) else {
        return out;
    };
    for w in state["windows"].as_array().into_iter().flatten() {
        let sensor = w["tags"]["sensor_id"].as_str().unwrap_or("").to_string();
        let start = w["start_ns"].as_i64().unwrap_or(0);
        let count = w["fields"]["pm2_5"]["count"].as_u64().unwrap_or(0);
        out.insert((sensor, start), count);
    }
    out
}

fn sleep_until_ms(t_ms: i64) {
    let now = now_ms();
    if t_ms > now {
        std::thread::sleep(Duration::from_millis((t_ms - now) as u64));
    }
}

#[test]
fn aggregation_windows_are_exact_across_a_gateway_restart() {
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let mut gateway = given_a_gateway_aggregating_10s_windows(&broker, &vm);
    // Window A: starts at the next 10 s boundary; we begin 300 ms into it.
    let a = (now_ms() / AGG_WINDOW_MS + 1) * AGG_WINDOW_MS;
    let b = a + AGG_WINDOW_MS;
    sleep_until_ms(a + 300);
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-agg").unwrap();
    when_window_a_gets_readings_before_during_and_after_a_restart(&mut gateway, &mut publisher, a);
    when_window_b_gets_readings_and_a_late_one_comes_for_a(&mut publisher, a, b);
    then_the_aggregates_are_exactly(&vm, &gateway, &expected_aggregates(a, b));
    assert_eq!(
        gateway.rejections("env-agg", "late_for_window"),
        1.0,
        "{}",
        gateway.process.log_tail(20)
    );
}

/// The window and grace period of [`given_a_gateway_aggregating_10s_windows`].
const AGG_WINDOW_MS: i64 = 10_000;
const AGG_GRACE_MS: i64 = 2_000;

/// Given: a gateway aggregating `city/+/env/+` into 10 s windows (2 s grace, raw readings
/// dropped), writing to `vm`.
fn given_a_gateway_aggregating_10s_windows(broker: &Mosquitto, vm: &VictoriaMetrics) -> Gateway {
    start_gateway(
        broker,
        &[Input::new(
            "e2e-gw-agg",
            "city/+/env/+",
            "name = \"env-agg\"\nmeasurement = \"environment\"\ntopic_tags = \"_/district/_/sensor_id\"\n\
             timestamp_field = \"ts\"\ntimestamp_unit = \"ms\"\n\
             [inputs.mqtt.aggregate]\nwindow_s = 10\ngrace_s = 2\nraw = \"drop\"",
        )],
        &format!(
            "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\nflush_interval_ms = 100",
            vm.url()
        ),
    )
}

/// An environment reading of `sensor` in district d1.
fn env_reading(sensor: &str, ts: i64, pm: f64, temp: f64) -> (String, String) {
    (
        format!("city/d1/env/{sensor}"),
        format!(r#"{{"ts":{ts},"pm2_5":{pm},"temperature":{temp},"status":"ok"}}"#),
    )
}

/// When: window A gets s1 10 and 20 and s2 5 (then they are saved in the aggregation state); the
/// gateway stops with SIGTERM (cleanly); one more reading for s1 is published while it is down
/// (the broker keeps it for the persistent session); it starts again and reconnects; a last one
/// comes after that, all before A ends.
fn when_window_a_gets_readings_before_during_and_after_a_restart(
    gateway: &mut Gateway,
    publisher: &mut MqttPublisher,
    a: i64,
) {
    publish_and_wait_acked(
        publisher,
        &[
            env_reading("s1", a + 100, 10.0, -1.5),
            env_reading("s1", a + 200, 20.0, 2.5),
            env_reading("s2", a + 150, 5.0, 30.0),
        ],
    );
    let saved = ioc_e2e::wait_until(Duration::from_secs(5), || {
        let w = saved_window_counts(&gateway.data_dir);
        w.get(&("s1".to_string(), a * 1_000_000)) == Some(&2)
            && w.get(&("s2".to_string(), a * 1_000_000)) == Some(&1)
    });
    assert!(
        saved,
        "window A was not saved with 2 + 1 readings: {:?}\n{}",
        saved_window_counts(&gateway.data_dir),
        gateway.process.log_tail(20)
    );
    when_stopped_then_it_exits_cleanly(&mut gateway.process, Duration::from_secs(30));
    publish_and_wait_acked(publisher, &[env_reading("s1", a + 2_500, 30.0, 0.25)]);
    when_it_restarts_then_it_reconnects(&mut gateway.process);
    publish_and_wait_acked(publisher, &[env_reading("s1", a + 3_000, 45.5, 0.75)]);
    assert!(
        now_ms() < a + AGG_WINDOW_MS,
        "the restart took too long: window A already ended"
    );
}

/// When: window B (after A closes by the clock) gets s1 1.5 and 2.5; after A's end plus grace a
/// late reading for A comes (to be refused, not folded in); then B closes too.
fn when_window_b_gets_readings_and_a_late_one_comes_for_a(
    publisher: &mut MqttPublisher,
    a: i64,
    b: i64,
) {
    sleep_until_ms(b + 200);
    publish_and_wait_acked(
        publisher,
        &[
            env_reading("s1", b + 100, 1.5, 10.0),
            env_reading("s1", b + 150, 2.5, 20.0),
        ],
    );
    sleep_until_ms(a + AGG_WINDOW_MS + AGG_GRACE_MS + 1_500);
    publish_and_wait_acked(publisher, &[env_reading("s1", a + 5_000, 1000.0, 1000.0)]);
    sleep_until_ms(b + AGG_WINDOW_MS + AGG_GRACE_MS + 1_500);
}

/// (series name, sensor_id) → samples (window start ms, value).
type Aggregates = BTreeMap<(String, String), Vec<(i64, f64)>>;

/// What windows A and B must show: mean, min, max and count of pm2_5 and temperature.
fn expected_aggregates(a: i64, b: i64) -> Aggregates {
    let agg = |metric: &str, sensor: &str, ts_ms: i64, v: f64| {
        ((metric.to_string(), sensor.to_string()), (ts_ms, v))
    };
    let mut expected = Aggregates::new();
    for (k, v) in [
        // s1, window A: 10, 20, 30, 45.5 (two before the restart, one during, one after)
        agg("environment_pm2_5_mean", "s1", a, 26.375),
        agg("environment_pm2_5_min", "s1", a, 10.0),
        agg("environment_pm2_5_max", "s1", a, 45.5),
        agg("environment_pm2_5_count", "s1", a, 4.0),
        agg("environment_temperature_mean", "s1", a, 0.5),
        agg("environment_temperature_min", "s1", a, -1.5),
        agg("environment_temperature_max", "s1", a, 2.5),
        agg("environment_temperature_count", "s1", a, 4.0),
        // s2, window A: 5
        agg("environment_pm2_5_mean", "s2", a, 5.0),
        agg("environment_pm2_5_min", "s2", a, 5.0),
        agg("environment_pm2_5_max", "s2", a, 5.0),
        agg("environment_pm2_5_count", "s2", a, 1.0),
        agg("environment_temperature_mean", "s2", a, 30.0),
        agg("environment_temperature_min", "s2", a, 30.0),
        agg("environment_temperature_max", "s2", a, 30.0),
        agg("environment_temperature_count", "s2", a, 1.0),
        // s1, window B: 1.5, 2.5
        agg("environment_pm2_5_mean", "s1", b, 2.0),
        agg("environment_pm2_5_min", "s1", b, 1.5),
        agg("environment_pm2_5_max", "s1", b, 2.5),
        agg("environment_pm2_5_count", "s1", b, 2.0),
        agg("environment_temperature_mean", "s1", b, 15.0),
        agg("environment_temperature_min", "s1", b, 10.0),
        agg("environment_temperature_max", "s1", b, 20.0),
        agg("environment_temperature_count", "s1", b, 2.0),
    ] {
        expected.entry(k).or_default().push(v);
    }
    expected
}

/// Then: (within 20 s) the store holds exactly the `expected` aggregates, each series labelled
/// `agg="10s"` (no raw reading forwarded) with its district, gateway and sensor and nothing else.
fn then_the_aggregates_are_exactly(vm: &VictoriaMetrics, gateway: &Gateway, expected: &Aggregates) {
    let mut actual = Aggregates::new();
    let arrived = ioc_e2e::wait_until(Duration::from_secs(20), || {
        actual.clear();
        for s in vm_export(vm, "{__name__=~\"environment_.*\"}") {
            assert_eq!(
                s.label("agg"),
                Some("10s"),
                "raw reading forwarded: {:?}",
                s.labels
            );
            assert_eq!(s.label("district"), Some("d1"));
            assert_eq!(s.label("gateway"), Some(GATEWAY_ID));
            assert_eq!(s.labels.len(), 5, "{:?}", s.labels);
            let samples = s
                .timestamps_ms
                .iter()
                .copied()
                .zip(s.values.iter().copied())
                .collect();
            actual.insert(
                (
                    s.name().to_string(),
                    s.label("sensor_id").unwrap().to_string(),
                ),
                samples,
            );
        }
        actual == *expected
    });
    assert!(
        arrived,
        "aggregates differ.\nexpected {expected:#?}\nactual {actual:#?}\n{}",
        gateway.process.log_tail(40)
    );
}

#[test]
fn aggregation_keeps_readings_queued_in_the_broker_while_the_gateway_was_down() {
    const WINDOW_MS: i64 = 2_000;
    const GRACE_MS: i64 = 1_000;
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let mut gateway = start_gateway(
        &broker,
        &[Input::new(
            "e2e-gw-agg2",
            "city/+/env/+",
            "name = \"env-agg\"\nmeasurement = \"environment\"\ntopic_tags = \"_/district/_/sensor_id\"\n\
             timestamp_field = \"ts\"\ntimestamp_unit = \"ms\"\n\
             [inputs.mqtt.aggregate]\nwindow_s = 2\ngrace_s = 1",
        )],
        &format!(
            "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\nflush_interval_ms = 100",
            vm.url()
        ),
    );
    let a = (now_ms() / WINDOW_MS + 1) * WINDOW_MS;
    sleep_until_ms(a + 100);
    let msg = |ts: i64, pm: f64| {
        (
            "city/d1/env/s1".to_string(),
            format!(r#"{{"ts":{ts},"pm2_5":{pm}}}"#),
        )
    };
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-agg2").unwrap();
    publish_and_wait_acked(&mut publisher, &[msg(a + 50, 4.0)]);
    let saved = ioc_e2e::wait_until(Duration::from_secs(5), || {
        saved_window_counts(&gateway.data_dir).get(&("s1".to_string(), a * 1_000_000)) == Some(&1)
    });
    assert!(saved, "{}", gateway.process.log_tail(20));
    gateway.process.sigterm();
    gateway.process.wait_exit(Duration::from_secs(30)).unwrap();
    // While the gateway is down: two more readings of window A.
    publish_and_wait_acked(&mut publisher, &[msg(a + 500, 6.0), msg(a + 900, 8.0)]);
    // The window's end plus grace passes while the gateway is still down.
    sleep_until_ms(a + WINDOW_MS + GRACE_MS + 1_000);
    gateway.process.start_again().unwrap();
    let mut actual = BTreeMap::new();
    let expected: BTreeMap<String, Vec<(i64, f64)>> = [
        ("environment_pm2_5_count", 3.0),
        ("environment_pm2_5_max", 8.0),
        ("environment_pm2_5_mean", 6.0),
        ("environment_pm2_5_min", 4.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), vec![(a, v)]))
    .collect();
    let arrived = ioc_e2e::wait_until(Duration::from_secs(15), || {
        actual = vm_export(&vm, "{__name__=~\"environment_.*\"}")
            .into_iter()
            .map(|s| {
                let samples: Vec<(i64, f64)> = s
                    .timestamps_ms
                    .iter()
                    .copied()
                    .zip(s.values.iter().copied())
                    .collect();
                (s.name().to_string(), samples)
            })
            .collect::<BTreeMap<_, _>>();
        actual == expected
    });
    assert!(
        arrived,
        "window A lost the readings queued while the gateway was down.\nexpected {expected:?}\nactual {actual:?}\n\
         late_for_window rejections: {}\n{}",
        gateway.rejections("env-agg", "late_for_window"),
        gateway.process.log_tail(20)
    );
}
