//! The vendors' payloads through the whole path, sent the way the vendors send them: the real
//! `sensor-sim presets` publishes every preset fixture (Plate Recognizer, OpenALPR, ChirpStack
//! v4, The Things Stack v3) on its vendor's MQTT topic to a real mosquitto, and posts each again
//! as its vendor's webhook (Plate Recognizer's as `multipart/form-data` with the image, the
//! others as JSON, with a bearer token) to the gateway's `[[inputs.http]]`, retrying until a
//! final answer, with its times moved to now; the real `ioc-gateway` (one MQTT and one webhook
//! input per preset, as `simulators/README.md` shows) stores them in a real VictoriaMetrics or
//! InfluxDB 1.x; the real `sensor-sim verify` must find exactly the readings the manifest says — written out in the simulator from the presets' documented mapping — and
//! none of the payloads the gateway must refuse (join and status events, an uplink without a
//! decoded object).
//!
//! The gateway runs with `[limits] max_past_s = 86400`: the fixtures' own times (2014 … 2026)
//! would be refused, so passing also shows the time shifting at work.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ioc_e2e::{
    bin_path, free_port, gateway_metrics, metric_in, GatewayProcess, HeavyTestLock, Influx1,
    ManifestCounts, Mosquitto, SensorSim, StoreApi, VictoriaMetrics,
};
use serde_json::Value;

const GATEWAY_ID: &str = "sim-presets-gw";

/// The environment variable the webhook inputs read their token from.
const TOKEN_ENV: &str = "SIM_PRESETS_WEBHOOK_TOKEN";
const TOKEN: &str = "sim-presets-token";

/// The inputs `sensor-sim presets` sends to (the same as in `simulators/README.md`).
fn preset_inputs(mqtt: &str, webhook: u16) -> String {
    let mut inputs = format!(
        r#"[[inputs.mqtt]]
name = "platerecognizer-mqtt"
url = "{mqtt}"
client_id = "{GATEWAY_ID}-platerecognizer"
topics = ["alpr/platerecognizer/+"]
format = "platerecognizer"
tags = {{ camera = "pr-snapshot" }}

[[inputs.mqtt]]
name = "openalpr-mqtt"
url = "{mqtt}"
client_id = "{GATEWAY_ID}-openalpr"
topics = ["alpr/openalpr/+"]
format = "openalpr"
tags = {{ camera = "openalpr-cloud" }}

[[inputs.mqtt]]
name = "chirpstack-mqtt"
url = "{mqtt}"
client_id = "{GATEWAY_ID}-chirpstack"
topics = ["application/+/device/+/event/+"]
format = "chirpstack"

[[inputs.mqtt]]
name = "ttn-mqtt"
url = "{mqtt}"
client_id = "{GATEWAY_ID}-ttn"
topics = ["v3/+/devices/+/up", "v3/+/devices/+/join"]
format = "ttn"
"#
    );
    for (preset, tags) in [
        ("platerecognizer", "tags = { camera = \"pr-snapshot\" }\n"),
        ("openalpr", "tags = { camera = \"openalpr-cloud\" }\n"),
        ("chirpstack", ""),
        ("ttn", ""),
    ] {
        inputs.push_str(&format!(
            "\n[[inputs.http]]\nname = \"{preset}-webhook\"\nlisten = \"127.0.0.1:{webhook}\"\n\
             path = \"/webhook/{preset}\"\nformat = \"{preset}\"\ntoken_env = \"{TOKEN_ENV}\"\n{tags}"
        ));
    }
    inputs
}

const SUBSCRIPTIONS: [(&str, &str); 5] = [
    ("platerecognizer", "alpr/platerecognizer/+"),
    ("openalpr", "alpr/openalpr/+"),
    ("chirpstack", "application/+/device/+/event/+"),
    ("ttn", "v3/+/devices/+/up"),
    ("ttn", "v3/+/devices/+/join"),
];

enum Store<'a> {
    Victoria(&'a VictoriaMetrics),
    /// InfluxDB 1.x keeps the plates' strings, which `verify` (numbers only) does not read.
    Influx(&'a Influx1),
}

impl Store<'_> {
    fn output(&self) -> String {
        match self {
            Store::Victoria(vm) => format!(
                "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\n",
                vm.url()
            ),
            Store::Influx(influx) => format!(
                "url = \"{}\"\napi = \"v1\"\ndatabase = \"telemetry\"\n",
                influx.url()
            ),
        }
    }

    fn url(&self) -> String {
        match self {
            Store::Victoria(vm) => vm.url(),
            Store::Influx(influx) => influx.url(),
        }
    }

    fn api(&self) -> StoreApi {
        match self {
            Store::Victoria(_) => StoreApi::V2,
            Store::Influx(_) => StoreApi::V1,
        }
    }
}

fn write_config(dir: &Path, broker: &Mosquitto, store: &Store, http: u16, webhook: u16) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let text = format!(
        r#"# written by tests/tests/sim_presets_e2e.rs
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

{inputs}
[limits]
max_past_s = 86400

[output.influxdb]
{output}flush_interval_ms = 200

[http]
listen = "127.0.0.1:{http}"
"#,
        data = data.display(),
        inputs = preset_inputs(&broker.url(), webhook),
        output = store.output(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `sensor-sim presets ARGS`: exit status and the summary line it printed.
fn sensor_sim_presets(args: &[&str]) -> Value {
    let out = Command::new(bin_path("sensor-sim"))
        .arg("presets")
        .args(args)
        .env(TOKEN_ENV, TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sensor-sim presets {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
}

#[test]
fn every_preset_fixture_over_mqtt_and_as_webhook_reaches_victoriametrics_exactly() {
    let _heavy = HeavyTestLock::acquire();
    let vm = VictoriaMetrics::start().unwrap();
    every_preset_fixture_over_mqtt_and_as_webhook(Store::Victoria(&vm));
}

#[test]
fn every_preset_fixture_over_mqtt_and_as_webhook_reaches_influxdb1_exactly_with_its_plates() {
    let _heavy = HeavyTestLock::acquire();
    let influx = Influx1::start().unwrap();
    influx.create_database("telemetry").unwrap();
    every_preset_fixture_over_mqtt_and_as_webhook(Store::Influx(&influx));
}

/// The plates of the plate fixtures (`crates/decode/tests/fixtures/presets/`: each result's
/// `plate`, the group's `best_plate.plate`), by the camera tag their readings get.
const PLATES: [(&str, &str); 6] = [
    ("camera-1", "9jub11"),         // platerecognizer_stream_webhook.json
    ("pr-snapshot", "nhk552"),      // platerecognizer_snapshot_response.json
    ("1", "S11FRE"),                // openalpr_alprd_results.json, results[0]
    ("1", "EJLESSIE"),              // openalpr_alprd_results.json, results[1]
    ("1414799424", "A13709"),       // openalpr_alprd_group.json
    ("openalpr-cloud", "TE6666DA"), // openalpr_cloud_results.json
];

/// Sends every fixture 3 times over MQTT and 3 times as webhooks through the real gateway into
/// `store`, and checks the store with `sensor-sim verify` (and, in InfluxDB, the plates).
fn every_preset_fixture_over_mqtt_and_as_webhook(store: Store) {
    let broker = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let webhook = free_port();
    let config = write_config(dir.path(), &broker, &store, http, webhook);
    let mut gateway = GatewayProcess::spawn_with_env(&config, &[(TOKEN_ENV, TOKEN)]).unwrap();
    for (preset, filter) in SUBSCRIPTIONS {
        let client = format!("{GATEWAY_ID}-{preset}");
        assert!(
            broker.wait_for_subscription(&client, filter, 0, Duration::from_secs(20)),
            "the gateway did not subscribe {client} to {filter}:\n{}",
            gateway.log_tail(30)
        );
    }

    // Given the fixtures sent three times over MQTT and three times as webhooks (new times each
    // time, so six points per series); sensor-sim retries a webhook until it gets 204 or 400
    let manifest = dir.path().join("presets.jsonl");
    let summary = sensor_sim_presets(&[
        "--broker",
        &broker.url(),
        "--webhook",
        &format!("http://127.0.0.1:{webhook}"),
        "--token-env",
        TOKEN_ENV,
        "--manifest",
        manifest.to_str().unwrap(),
        "--repeat",
        "3",
    ]);
    let fixtures = 12;
    assert_eq!(summary["mqtt"]["acked"], 3 * fixtures, "{summary}");
    assert_eq!(summary["mqtt"]["lost"], 0, "{summary}");
    assert_eq!(summary["webhook"]["posted"], 3 * fixtures, "{summary}");
    // 8 fixtures are stored (204), 4 refused (400), and each answer is the one expected
    assert_eq!(summary["webhook"]["accepted"], 3 * 8, "{summary}");
    assert_eq!(summary["webhook"]["refused"], 3 * 4, "{summary}");
    assert_eq!(summary["webhook"]["unexpected"], 0, "{summary}");

    // Then verify finds every reading the manifest expects, exactly, and none refused
    let counts = ManifestCounts::read(&manifest).unwrap();
    // 8 fixtures give 9 readings (OpenALPR's agent batch holds two plates); 4 are refused;
    // twice over: MQTT and webhook
    assert_eq!(counts.stored_points, 2 * 3 * 9, "{counts:?}");
    assert_eq!(counts.rejected, 2 * 3 * 4, "{counts:?}");
    let mut extra = vec!["--gateway-id", GATEWAY_ID];
    if let Store::Influx(_) = store {
        extra.extend(["--database", "telemetry"]);
    }
    let verdict = SensorSim::verify_until_passed(
        &manifest,
        &store.url(),
        store.api(),
        &extra,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(
        verdict.passed(),
        "{verdict}\n--- gateway ---\n{}",
        gateway.log_tail(40)
    );
    let total = verdict.counts();
    assert_eq!(total.found, counts.stored_points, "{verdict}");
    assert_eq!(total.rejected_sent, counts.rejected, "{verdict}");
    assert_eq!(total.leaked, 0, "{verdict}");
    assert_eq!(verdict.per_measurement["camera_event"].found, 2 * 3 * 6);
    assert_eq!(verdict.per_measurement["lorawan"].found, 2 * 3 * 3);

    // And in InfluxDB every plate read keeps its plate string: each fixture's plate 6 times
    if let Store::Influx(influx) = &store {
        let rows = influx
            .query_rows(
                "telemetry",
                "SELECT plate, camera FROM camera_event WHERE gateway = 'sim-presets-gw'",
            )
            .unwrap();
        let mut got: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (s("camera"), s("plate"))
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = PLATES
            .iter()
            .flat_map(|(c, p)| std::iter::repeat_n((c.to_string(), p.to_string()), 6))
            .collect();
        want.sort();
        assert_eq!(got, want);
    }

    // And the gateway counted each refusal under its input and its preset's label
    let metrics = gateway_metrics(http);
    for transport in ["mqtt", "webhook"] {
        for (preset, reason, n) in [
            ("chirpstack", "no_decoded_payload", 3.0),
            ("chirpstack", "not_an_uplink", 6.0),
            ("ttn", "not_an_uplink", 3.0),
        ] {
            let input = format!("{preset}-{transport}");
            assert_eq!(
                metric_in(
                    &metrics,
                    "ioc_gateway_readings_rejected_total",
                    &[("input", &input), ("reason", reason)]
                ),
                n,
                "{input} {reason}:\n{metrics}"
            );
        }
    }
    // Nothing was refused for its time: the shifted times are inside max_past_s
    for reason in ["timestamp_too_old", "timestamp_in_future"] {
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("ioc_gateway_readings_rejected_total") && l.contains(reason)),
            "{reason}:\n{metrics}"
        );
    }
    gateway.sigterm();
    let _ = gateway.wait_exit(Duration::from_secs(10));
}
