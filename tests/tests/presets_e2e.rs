//! The built-in presets end to end: vendor payloads published to a real mosquitto reach a real
//! store as the readings `ioc_decode::presets` promises.
//!
//! Why it exists: the unit tests check the decoders; this checks that an MQTT input with
//! `format = "platerecognizer"` / `"chirpstack"` gets them, that several plates of one frame
//! (same camera, same instant) survive as several points in both stores (VictoriaMetrics with
//! 1 ms deduplication, InfluxDB 1.x overwriting a series' point at the same nanosecond), and
//! that a non-uplink event is refused and counted rather than stored. The payloads are the
//! fixtures in `crates/decode/tests/fixtures/presets/` (sources in its README).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ioc_e2e::{
    free_port, gateway_metrics, metric_in, GatewayProcess, HeavyTestLock, Influx1, Mosquitto,
    MqttPublisher, VictoriaMetrics,
};

const GATEWAY_ID: &str = "presets-gw";
/// The frame time of the Plate Recognizer Stream fixture, 2021-09-29T05:56:13.606935Z.
const FRAME_NS: i64 = 1_632_894_973_606_935_000;
/// The `time` of the ChirpStack fixture, 2026-10-09T16:43:50.700+00:00.
const UPLINK_NS: i64 = 1_791_564_230_700_000_000;
const UP_TOPIC: &str =
    "application/0d1f6c2a-0000-4000-8000-000000000002/device/a84041000181c0de/event/up";

enum Store<'a> {
    Victoria(&'a VictoriaMetrics),
    Influx(&'a Influx1),
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/decode/tests/fixtures/presets")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Stream webhook with two more plates read in the same frame (no time of their own).
fn three_plates_one_frame() -> String {
    fixture("platerecognizer_stream_webhook.json").replace(
        r#""results": ["#,
        r#""results": [{"plate": "ab123", "score": 0.91}, {"plate": "cd456", "score": 0.72}, "#,
    )
}

fn write_config(
    dir: &Path,
    broker: &Mosquitto,
    store: &Store<'_>,
    http: u16,
    hooks: u16,
) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let output = match store {
        Store::Victoria(vm) => format!(
            "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\n",
            vm.url()
        ),
        Store::Influx(influx) => format!(
            "url = \"{}\"\napi = \"v1\"\ndatabase = \"telemetry\"\n",
            influx.url()
        ),
    };
    let text = format!(
        r#"# written by tests/tests/presets_e2e.rs
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
name = "plates"
url = "{mqtt}"
client_id = "{GATEWAY_ID}-plates"
topics = ["cams/plates"]
format = "platerecognizer"

[[inputs.mqtt]]
name = "lorawan"
url = "{mqtt}"
client_id = "{GATEWAY_ID}-lorawan"
topics = ["application/+/device/+/event/+"]
format = "chirpstack"

# The other two presets arrive as webhooks, as their vendors send them.
[[inputs.http]]
name = "alpr-hook"
listen = "127.0.0.1:{hooks}"
path = "/webhook/openalpr"
format = "openalpr"

[[inputs.http]]
name = "ttn-hook"
listen = "127.0.0.1:{hooks}"
path = "/webhook/ttn"
format = "ttn"

# The vendors' samples are from 2015 and 2020: let the limits take them.
[limits]
max_past_s = 631152000

[output.influxdb]
{output}flush_interval_ms = 200

[http]
listen = "127.0.0.1:{http}"
"#,
        data = data.display(),
        mqtt = broker.url(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// (plate_index, timestamp ns, plate or score) of the stored plate reads, and (timestamp ns,
/// latitude, rssi) of the stored uplinks.
type Stored = (Vec<(String, i64, String)>, Vec<(i64, f64, f64)>);

fn stored(store: &Store<'_>) -> Stored {
    let mut plates = Vec::new();
    let mut uplinks = Vec::new();
    match store {
        Store::Victoria(vm) => {
            if vm.force_flush().is_err() {
                return (plates, uplinks);
            }
            // VictoriaMetrics keeps numeric fields only: the plate reads are `score` series.
            for s in vm
                .export(&format!("camera_event_score{{gateway=\"{GATEWAY_ID}\"}}"))
                .unwrap_or_default()
            {
                for (t, v) in s.timestamps_ms.iter().zip(&s.values) {
                    plates.push((
                        s.label("plate_index").unwrap_or("?").to_owned(),
                        t * 1_000_000,
                        v.to_string(),
                    ));
                }
            }
            let lat = vm
                .export(&format!("lorawan_latitude{{gateway=\"{GATEWAY_ID}\"}}"))
                .unwrap_or_default();
            let rssi = vm
                .export(&format!("lorawan_rssi{{gateway=\"{GATEWAY_ID}\"}}"))
                .unwrap_or_default();
            if let (Some(lat), Some(rssi)) = (lat.first(), rssi.first()) {
                for ((t, la), r) in lat.timestamps_ms.iter().zip(&lat.values).zip(&rssi.values) {
                    uplinks.push((t * 1_000_000, *la, *r));
                }
            }
        }
        Store::Influx(influx) => {
            let rows = influx
                .query_rows(
                    "telemetry",
                    &format!(
                        "SELECT plate FROM camera_event WHERE gateway = '{GATEWAY_ID}' GROUP BY plate_index"
                    ),
                )
                .unwrap_or_default();
            for row in rows {
                plates.push((
                    row["plate_index"].as_str().unwrap_or("?").to_owned(),
                    row["time"].as_i64().unwrap_or(0),
                    row["plate"].as_str().unwrap_or("?").to_owned(),
                ));
            }
            let rows = influx
                .query_rows(
                    "telemetry",
                    &format!("SELECT latitude, rssi FROM lorawan WHERE gateway = '{GATEWAY_ID}'"),
                )
                .unwrap_or_default();
            for row in rows {
                uplinks.push((
                    row["time"].as_i64().unwrap_or(0),
                    row["latitude"].as_f64().unwrap_or(f64::NAN),
                    row["rssi"].as_f64().unwrap_or(f64::NAN),
                ));
            }
        }
    }
    plates.sort();
    (plates, uplinks)
}

/// The alpr_group's `epoch_start` (ms) in the OpenALPR fixture.
const GROUP_NS: i64 = 1_448_326_208_789_000_000;
/// `uplink_message.received_at` of the TTN fixture, 2020-02-12T15:15:45.789585559Z.
const TTN_NS: i64 = 1_581_520_545_789_585_559;

/// (time, score or plate) of the OpenALPR group's reading (camera 1414799424), and (time,
/// temperature) of the TTN uplink (device dev1), as stored.
type Hooked = (Vec<(i64, String)>, Vec<(i64, f64)>);

fn hooked(store: &Store<'_>) -> Hooked {
    let mut got: Hooked = (Vec::new(), Vec::new());
    let _ = ioc_e2e::wait_until(Duration::from_secs(30), || {
        got = (Vec::new(), Vec::new());
        match store {
            Store::Victoria(vm) => {
                if vm.force_flush().is_err() {
                    return false;
                }
                for s in vm
                    .export(&format!(
                        "camera_event_score{{gateway=\"{GATEWAY_ID}\",camera=\"1414799424\"}}"
                    ))
                    .unwrap_or_default()
                {
                    for (t, v) in s.timestamps_ms.iter().zip(&s.values) {
                        got.0.push((t * 1_000_000, v.to_string()));
                    }
                }
                for s in vm
                    .export(&format!(
                        "lorawan_temperature{{gateway=\"{GATEWAY_ID}\",device_name=\"dev1\"}}"
                    ))
                    .unwrap_or_default()
                {
                    for (t, v) in s.timestamps_ms.iter().zip(&s.values) {
                        got.1.push((t * 1_000_000, *v));
                    }
                }
            }
            Store::Influx(influx) => {
                for row in influx
                    .query_rows(
                        "telemetry",
                        &format!(
                            "SELECT plate FROM camera_event WHERE gateway = '{GATEWAY_ID}' AND camera = '1414799424'"
                        ),
                    )
                    .unwrap_or_default()
                {
                    got.0.push((
                        row["time"].as_i64().unwrap_or(0),
                        row["plate"].as_str().unwrap_or("?").to_owned(),
                    ));
                }
                for row in influx
                    .query_rows(
                        "telemetry",
                        &format!(
                            "SELECT temperature FROM lorawan WHERE gateway = '{GATEWAY_ID}' AND device_name = 'dev1'"
                        ),
                    )
                    .unwrap_or_default()
                {
                    got.1.push((
                        row["time"].as_i64().unwrap_or(0),
                        row["temperature"].as_f64().unwrap_or(f64::NAN),
                    ));
                }
            }
        }
        !got.0.is_empty() && !got.1.is_empty()
    });
    got
}

fn presets_reach_the_store(store: Store<'_>) {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let hooks = free_port();
    let config = write_config(dir.path(), &broker, &store, http, hooks);
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    for (client, filter) in [
        ("presets-gw-plates", "cams/plates"),
        ("presets-gw-lorawan", "application/+/device/+/event/+"),
    ] {
        assert!(
            broker.wait_for_subscription(client, filter, 0, Duration::from_secs(20)),
            "the gateway did not subscribe {client}:\n{}",
            gateway.log_tail(30)
        );
    }

    let mut publisher = MqttPublisher::connect(&broker.url(), "presets-publisher").unwrap();
    publisher
        .publish("cams/plates", three_plates_one_frame())
        .unwrap();
    publisher
        .publish(UP_TOPIC, fixture("chirpstack_up_object.json"))
        .unwrap();
    publisher
        .publish(
            &UP_TOPIC.replace("/event/up", "/event/status"),
            fixture("chirpstack_status_docs.json"),
        )
        .unwrap();
    assert!(publisher.wait_all_acked(Duration::from_secs(20)));

    let rejected = || {
        metric_in(
            &gateway_metrics(http),
            "ioc_gateway_readings_rejected_total",
            &[("input", "lorawan"), ("reason", "not_an_uplink")],
        )
    };
    let mut got = stored(&store);
    let arrived = ioc_e2e::wait_until(Duration::from_secs(30), || {
        got = stored(&store);
        got.0.len() >= 3 && !got.1.is_empty() && rejected() >= 1.0
    });
    assert!(
        arrived,
        "stored {got:?}, not_an_uplink rejections {}\n{}",
        rejected(),
        gateway.log_tail(30)
    );

    let (plates, uplinks) = got;
    let expected_plates: Vec<(String, i64, String)> = match store {
        Store::Victoria(_) => vec![
            ("0".into(), FRAME_NS / 1_000_000 * 1_000_000, "0.91".into()),
            ("1".into(), FRAME_NS / 1_000_000 * 1_000_000, "0.72".into()),
            ("2".into(), FRAME_NS / 1_000_000 * 1_000_000, "0.839".into()),
        ],
        Store::Influx(_) => vec![
            ("0".into(), FRAME_NS, "ab123".into()),
            ("1".into(), FRAME_NS, "cd456".into()),
            ("2".into(), FRAME_NS, "9jub11".into()),
        ],
    };
    assert_eq!(
        plates, expected_plates,
        "three plates of one frame, one point each"
    );
    assert_eq!(uplinks, vec![(UPLINK_NS, 51.5072, -95.0)]);

    // Webhooks: 204 only once durable, then exactly the readings the presets promise.
    let mut hook = ioc_e2e::WebhookClient::new(hooks);
    for (path, file) in [
        ("/webhook/openalpr", "openalpr_alprd_group.json"),
        ("/webhook/ttn", "ttn_uplink_docs.json"),
    ] {
        let body = fixture(file);
        let answer = ioc_e2e::wait_until(Duration::from_secs(20), || {
            hook.post(
                path,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .is_ok_and(|r| r.status == 204)
        });
        assert!(answer, "{path} not answered 204\n{}", gateway.log_tail(30));
    }
    let hooked = hooked(&store);
    assert_eq!(
        hooked,
        match store {
            // VictoriaMetrics keeps milliseconds and numbers only.
            Store::Victoria(_) => (
                vec![(GROUP_NS / 1_000_000 * 1_000_000, "0.92075203".to_owned())],
                vec![(TTN_NS / 1_000_000 * 1_000_000, 1.0)],
            ),
            Store::Influx(_) => (vec![(GROUP_NS, "A13709".to_owned())], vec![(TTN_NS, 1.0)]),
        },
        "the alpr_group's best plate and the TTN uplink\n{}",
        gateway.log_tail(30)
    );

    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "gateway exit {status}\n{}",
        gateway.log_tail(30)
    );
}

#[test]
fn presets_reach_victoria_metrics() {
    let vm = VictoriaMetrics::start().unwrap();
    presets_reach_the_store(Store::Victoria(&vm));
}

#[test]
fn presets_reach_influxdb1() {
    let influx = Influx1::start().unwrap();
    influx.create_database("telemetry").unwrap();
    presets_reach_the_store(Store::Influx(&influx));
}
