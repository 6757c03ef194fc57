//! The config pieces most end-to-end tests give the gateway, written once.
//!
//! Why it exists: a test's config is part of what it shows, so each test still writes the keys
//! that matter to it; the parts that are the same everywhere (the `[gateway]` head, the MQTT input
//! of `city/<district>/env/<sensor>` readings stamped by their `ts` in ms, a v2 output) come from
//! here, so that they cannot drift apart between tests.

use std::path::Path;

/// `[gateway]` with `id` and `data_dir`, and no health readings (`health_interval_s = 0`), so
/// that the store holds only what the test sent.
pub fn gateway_head(id: &str, data_dir: &Path) -> String {
    format!(
        "[gateway]\nid = \"{id}\"\ndata_dir = \"{}\"\nhealth_interval_s = 0\n\n",
        data_dir.display()
    )
}

/// An `[[inputs.mqtt]]` of QoS 1 readings on `city/+/<kind>/+` (tags `district` and, from the
/// last level, `<id_tag>`), each stamped by its `ts` field in ms; `extra` is more `key = value`
/// lines of the same input (`name = "cameras"`, `priority = "urgent"`).
pub fn mqtt_input(
    broker_url: &str,
    client_id: &str,
    kind: &str,
    id_tag: &str,
    measurement: &str,
    extra: &str,
) -> String {
    format!(
        r#"[[inputs.mqtt]]
url = "{broker_url}"
client_id = "{client_id}"
topics = ["city/+/{kind}/+"]
qos = 1
measurement = "{measurement}"
topic_tags = "_/district/_/{id_tag}"
timestamp_field = "ts"
timestamp_unit = "ms"
{extra}
"#
    )
}

/// [`mqtt_input`] of environment readings (`city/+/env/+`, tag `sensor_id`).
pub fn env_input(broker_url: &str, client_id: &str, measurement: &str) -> String {
    mqtt_input(broker_url, client_id, "env", "sensor_id", measurement, "")
}

/// [`mqtt_input`] of urgent camera events (`city/+/cam/+`, tag `camera_id`), named `cameras`.
pub fn camera_input(broker_url: &str, client_id: &str, measurement: &str) -> String {
    mqtt_input(
        broker_url,
        client_id,
        "cam",
        "camera_id",
        measurement,
        "name = \"cameras\"\npriority = \"urgent\"\n",
    )
}

/// The InfluxDB v2 API keys of an output (VictoriaMetrics accepts and ignores org and bucket).
pub const V2_API: &str = "api = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pieces_make_a_config_the_gateway_parses() {
        let text = format!(
            "{}{}{}[output.influxdb]\nurl = \"http://127.0.0.1:1\"\n{V2_API}",
            gateway_head("gw", Path::new("/tmp/data")),
            env_input("mqtt://127.0.0.1:1883", "gw", "env"),
            camera_input("mqtt://127.0.0.1:1883", "gw-cam", "cam"),
        );
        let config = ioc_gateway::config::Config::parse(Path::new("test.toml"), &text).unwrap();
        assert_eq!(config.gateway.health_interval_s, 0);
        assert_eq!(config.inputs.mqtt.len(), 2);
        assert_eq!(config.inputs.mqtt[1].topics, ["city/+/cam/+"]);
    }
}
