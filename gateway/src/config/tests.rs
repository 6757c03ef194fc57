//! Config parsing and located errors.

use super::*;

const GOOD: &str = r#"
[gateway]
id = "bp-gw-001"
data_dir = "/var/lib/ioc-gateway"

[[inputs.mqtt]]
url = "mqtt://127.0.0.1:1883"
client_id = "bp-gw-001"
topics = ["city/+/env/+"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
tag_keys = []

[output.influxdb]
url = "http://127.0.0.1:8086"
api = "v2"
org = "ioc"
bucket = "telemetry"
token_env = "INFLUX_TOKEN"
database = "telemetry"
batch_max_lines = 5000
flush_interval_ms = 1000

[buffer]
max_disk_mb = 1024
"#;

fn err(text: &str) -> String {
    Config::parse(Path::new("gw.toml"), text)
        .expect_err("should fail")
        .to_string()
}

#[test]
fn the_contract_example_parses() {
    let c = Config::parse(Path::new("gw.toml"), GOOD).unwrap();
    assert_eq!(c.gateway.id, "bp-gw-001");
    let m = &c.inputs.mqtt[0];
    assert_eq!(m.qos, 1);
    assert_eq!(m.timestamp_unit, Some(TimestampUnit::Ms));
    assert_eq!(m.topic_tags.as_deref(), Some("_/district/_/sensor_id"));
    assert_eq!(c.outputs()[0].influx.api, InfluxApi::V2);
    assert_eq!(c.buffer.max_disk_mb, 1024);
}

#[test]
fn unknown_key_is_located() {
    let text = GOOD.replace("qos = 1\n", "qos = 1\nqso = 2\n");
    let e = err(&text);
    assert!(e.starts_with("gw.toml:11: key `inputs.mqtt[0].qso`"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn wrong_type_is_located_with_key() {
    let text = GOOD.replace("qos = 1", "qos = \"one\"");
    let e = err(&text);
    assert!(e.starts_with("gw.toml:10: key `inputs.mqtt[0].qos`"), "{e}");
    assert!(e.contains("expected u8"), "{e}");
}

#[test]
fn missing_url_names_the_table() {
    let text = GOOD.replace("url = \"mqtt://127.0.0.1:1883\"\n", "");
    let e = err(&text);
    assert!(e.contains("url"), "{e}");
    assert!(e.starts_with("gw.toml:6:"), "{e}");
}

#[test]
fn semantic_errors_name_line_and_key() {
    let e = err(&GOOD.replace("qos = 1", "qos = 2"));
    assert!(e.starts_with("gw.toml:10: key `inputs.mqtt[0].qos`"), "{e}");
    let e = err(&GOOD.replace("mqtt://127.0.0.1:1883", "http://x"));
    assert!(e.starts_with("gw.toml:7: key `inputs.mqtt[0].url`"), "{e}");
    let e = err(&GOOD.replace("bucket = \"telemetry\"\n", ""));
    assert!(
        e.starts_with("gw.toml:17: key `output.influxdb.bucket`"),
        "{e}"
    );
}

#[test]
fn worker_threads_defaults_to_one_and_is_bounded() {
    let config = Config::parse(Path::new("gw.toml"), GOOD).unwrap();
    assert_eq!(config.gateway.worker_threads, 1);
    let two = GOOD.replace("data_dir = ", "worker_threads = 2\ndata_dir = ");
    let config = Config::parse(Path::new("gw.toml"), &two).unwrap();
    assert_eq!(config.gateway.worker_threads, 2);
    for bad in ["0", "65"] {
        let text = GOOD.replace(
            "data_dir = ",
            &format!("worker_threads = {bad}\ndata_dir = "),
        );
        let e = err(&text);
        assert!(
            e.starts_with("gw.toml:4: key `gateway.worker_threads`: must be 1 to 64"),
            "{e}"
        );
    }
}

#[test]
fn syntax_error_is_located() {
    let e = err(&GOOD.replace("qos = 1", "qos = = 1"));
    assert!(e.starts_with("gw.toml:10:"), "{e}");
}

#[test]
fn mqtt_urls() {
    assert_eq!(
        parse_mqtt_url("mqtts://broker.city:8884").unwrap(),
        MqttAddress {
            tls: true,
            host: "broker.city".into(),
            port: 8884
        }
    );
    assert_eq!(parse_mqtt_url("mqtt://10.0.0.1").unwrap().port, 1883);
    assert!(parse_mqtt_url("mqtt://h:99999").is_err());
    assert!(parse_mqtt_url("ws://h").is_err());
}

#[test]
fn secrets_never_print() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
}

#[test]
fn shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.example.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.inputs.mqtt.len(), 3);
    assert_eq!(c.inputs.mqtt[2].format, PayloadFormat::Frigate);
    assert_eq!(c.inputs.mqtt[2].measurement_name(), "camera_event");
}

#[test]
fn shipped_payload_formats_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/payload-formats.example.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.inputs.mqtt.len(), 2);
    let mapping = c.inputs.mqtt[0].mapping.as_ref().unwrap();
    assert_eq!(mapping.records.as_deref(), Some("/stations/*/links"));
    assert_eq!(mapping.fields.len(), 4);
    assert_eq!(c.inputs.mqtt[1].format, PayloadFormat::Csv);
    assert_eq!(c.inputs.mqtt[1].csv.as_ref().unwrap().separator, ";");
}

#[test]
fn json_input_without_measurement_is_refused() {
    let e = err(&GOOD.replace("measurement = \"environment\"\n", ""));
    assert!(
        e.starts_with("gw.toml:6: key `inputs.mqtt[0].measurement`"),
        "{e}"
    );
}

fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse_with_env(Path::new("gw.toml"), text, move |name| {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

#[test]
fn env_variables_fill_in_values_with_defaults() {
    let text = GOOD
        .replace("\"http://127.0.0.1:8086\"", "\"${INFLUX_URL}\"")
        .replace(
            "\"bp-gw-001\"\ndata_dir",
            "\"${GATEWAY_ID:-cab-000}\"\ndata_dir",
        );
    let c = with_env(&text, &[("INFLUX_URL", "http://store.city:8428")]).unwrap();
    assert_eq!(c.outputs()[0].influx.url, "http://store.city:8428");
    assert_eq!(c.gateway.id, "cab-000");
}

#[test]
fn an_unset_variable_is_located_in_the_file() {
    let text = GOOD.replace("\"http://127.0.0.1:8086\"", "\"${INFLUX_URL}\"");
    let line = text
        .lines()
        .position(|l| l.contains("${INFLUX_URL}"))
        .unwrap()
        + 1;
    let e = with_env(&text, &[]).unwrap_err().to_string();
    assert!(e.starts_with(&format!("gw.toml:{line}: ")), "{e}");
    assert!(e.contains("INFLUX_URL is not set"), "{e}");
}

#[test]
fn errors_after_substitution_quote_the_raw_line_not_the_value() {
    // A substituted value that makes the config invalid: the error is at its line and quotes
    // the template, never the value.
    let text = GOOD.replace("qos = 1", "qos = ${MQTT_QOS}");
    let e = with_env(&text, &[("MQTT_QOS", "7")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("inputs.mqtt[0].qos"), "{e}");
    assert!(e.contains("qos = ${MQTT_QOS}"), "{e}");
    let text = GOOD.replace("org = \"ioc\"", "org = \"${ORG}\"\nbogus = \"${SECRET}\"");
    let e = with_env(&text, &[("ORG", "ioc"), ("SECRET", "hunter2")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("bogus"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn a_value_with_a_line_break_is_refused() {
    let text = GOOD.replace("org = \"ioc\"", "org = \"${ORG}\"");
    let e = with_env(&text, &[("ORG", "ioc\"\n[evil]")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("line break"), "{e}");
    assert!(!e.contains("evil"), "{e}");
}

const MAPPED: &str = r#"
[gateway]
id = "bp-gw-001"
data_dir = "/var/lib/ioc-gateway"

[[inputs.mqtt]]
url = "mqtt://127.0.0.1:1883"
client_id = "bp-gw-traffic"
topics = ["traffic/+/speeds"]
measurement = "traffic_speed"

[inputs.mqtt.mapping]
records = "/data"
tags = { link_id = "/link_id", city = "$/city" }
time = "/data_as_of"
time_format = "%d/%m/%Y %H:%M:%S"
timezone = "Asia/Ho_Chi_Minh"
drop_values = [-99]

[inputs.mqtt.mapping.fields]
speed = { path = "/speed", type = "float" }
travel_time = { path = "/travel_time", type = "int" }

[output.influxdb]
url = "http://127.0.0.1:8086"
api = "v1"
database = "telemetry"
"#;

/// 1-based line of the first line containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

#[test]
fn a_mapping_section_parses_and_compiles() {
    let c = Config::parse(Path::new("gw.toml"), MAPPED).unwrap();
    let m = c.inputs.mqtt[0].mapping.as_ref().unwrap();
    assert_eq!(m.records.as_deref(), Some("/data"));
    assert_eq!(m.fields.len(), 2);
}

#[test]
fn mapping_mistakes_name_file_line_and_key() {
    for (from, to, key) in [
        (
            "speed = { path = \"/speed\"",
            "speed = { path = \"speed\"",
            "inputs.mqtt[0].mapping.fields.speed.path",
        ),
        (
            "time_format = \"%d/%m/%Y %H:%M:%S\"",
            "time_format = \"%d/%m/%Y %H:%M:%K\"",
            "inputs.mqtt[0].mapping.time_format",
        ),
        (
            "timezone = \"Asia/Ho_Chi_Minh\"",
            "timezone = \"Asia/Sai_Gon\"",
            "inputs.mqtt[0].mapping.timezone",
        ),
    ] {
        let text = MAPPED.replace(from, to);
        let e = err(&text);
        let line = line_with(&text, to);
        let head = format!("gw.toml:{line}: key `{key}`: ");
        assert!(
            e.starts_with(&head),
            "{e}\nexpected it to start with {head}"
        );
        assert!(e.contains(to), "the snippet quotes the line: {e}");
    }
    let e = err(&MAPPED.replace("timezone = \"Asia/Ho_Chi_Minh\"\n", ""));
    assert!(e.contains("key `inputs.mqtt[0].mapping.timezone`"), "{e}");
    assert!(e.contains("no UTC offset"), "{e}");
    // A mapping that names no measurement takes the input's; without either it is refused.
    let e = err(&MAPPED.replace("measurement = \"traffic_speed\"\n", ""));
    assert!(e.contains("key `inputs.mqtt[0].measurement`"), "{e}");
    // Unknown keys inside the mapping are located by the parser.
    let e = err(&MAPPED.replace("records = \"/data\"", "record = \"/data\""));
    let line = line_with(MAPPED, "records = \"/data\"");
    assert!(
        e.starts_with(&format!(
            "gw.toml:{line}: key `inputs.mqtt[0].mapping.record`"
        )),
        "{e}"
    );
}

#[test]
fn csv_mistakes_name_file_line_and_key() {
    let text = MAPPED
        .replace("measurement = \"traffic_speed\"\n", "measurement = \"air\"\nformat = \"csv\"\n")
        .replace(
            &MAPPED[MAPPED.find("[inputs.mqtt.mapping]").unwrap()..MAPPED.find("[output.influxdb]").unwrap()],
            "[inputs.mqtt.csv]\nheader = false\ncolumns = [\"time\", \"pm25\"]\nseparator = \";;\"\n\n",
        );
    let e = err(&text);
    let line = line_with(&text, "separator = \";;\"");
    assert!(
        e.starts_with(&format!(
            "gw.toml:{line}: key `inputs.mqtt[0].csv.separator`"
        )),
        "{e}"
    );
    let ok = text.replace("separator = \";;\"", "separator = \";\"");
    let c = Config::parse(Path::new("gw.toml"), &ok).unwrap();
    assert_eq!(c.inputs.mqtt[0].format, PayloadFormat::Csv);
}

/// A MaxBotix-style level sensor and a noise meter on `protocol = "lines"` ports.
const LINES: &str = r#"
[gateway]
id = "bp-gw-001"
data_dir = "/var/lib/ioc-gateway"

[[inputs.serial]]
name = "canal-level"
port = "/dev/ttyUSB3"
protocol = "lines"
sensor_id = "lvl-07"
measurement = "water_level"

[inputs.serial.lines]
regex = '^R(?P<range_mm>\d{4})$'
fields = ["range_mm"]
drop_values = [5000]

[[inputs.serial]]
name = "noise"
port = "/dev/ttyUSB4"
protocol = "lines"

[inputs.serial.lines]
measurement = "noise"
columns = ["time", "laeq_db", "station"]
fields = ["laeq_db"]
tags = ["station"]
time = "time"
time_format = "%Y-%m-%d %H:%M:%S"
timezone = "Asia/Ho_Chi_Minh"

[output.influxdb]
url = "http://127.0.0.1:8086"
api = "v2"
org = "ioc"
bucket = "telemetry"
token_env = "INFLUX_TOKEN"
"#;

#[test]
fn lines_ports_parse_and_compile() {
    let c = Config::parse(Path::new("gw.toml"), LINES).unwrap();
    assert_eq!(c.inputs.serial.len(), 2);
    for s in &c.inputs.serial {
        assert_eq!(s.protocol, SerialProtocol::Lines);
        assert!(s.compile_lines().unwrap().is_some());
    }
}

#[test]
fn lines_mistakes_name_file_line_and_key() {
    for (from, to, key) in [
        (
            r"regex = '^R(?P<range_mm>\d{4})$'",
            r"regex = '^R(?P<range_mm>\d{4}$'",
            "inputs.serial[0].lines.regex",
        ),
        (
            "fields = [\"range_mm\"]",
            "fields = [\"range_cm\"]",
            "inputs.serial[0].lines.fields[0]",
        ),
        (
            "tags = [\"station\"]",
            "tags = [\"site\"]",
            "inputs.serial[1].lines.tags[0]",
        ),
        (
            "time_format = \"%Y-%m-%d %H:%M:%S\"",
            "time_format = \"%Y-%m-%d %H:%M:%Q%Q\"",
            "inputs.serial[1].lines.time_format",
        ),
        (
            "timezone = \"Asia/Ho_Chi_Minh\"",
            "timezone = \"Asia/Sai_Gon\"",
            "inputs.serial[1].lines.timezone",
        ),
    ] {
        assert!(LINES.contains(from), "{from}");
        let text = LINES.replace(from, to);
        let e = err(&text);
        let line = line_with(&text, to);
        let head = format!("gw.toml:{line}: key `{key}`: ");
        assert!(
            e.starts_with(&head),
            "{e}\nexpected it to start with {head}"
        );
        assert!(e.contains(to), "the snippet quotes the line: {e}");
    }
    let e = err(&LINES.replace("fields = [\"range_mm\"]", "fields = [\"range_cm\"]"));
    assert!(
        e.contains("\"range_cm\" is not one of the named captures of regex [\"range_mm\"]"),
        "{e}"
    );
    let e = err(&LINES.replace(
        "timezone = \"Asia/Ho_Chi_Minh\"",
        "timezone = \"Asia/Sai_Gon\"",
    ));
    assert!(e.contains("unknown time zone \"Asia/Sai_Gon\""), "{e}");
    // A lines port without its table, and the table on another protocol.
    let e = err(&LINES.replacen(
        "[inputs.serial.lines]\nregex = '^R(?P<range_mm>\\d{4})$'\nfields = [\"range_mm\"]\ndrop_values = [5000]\n",
        "",
        1,
    ));
    assert!(e.contains("key `inputs.serial[0].protocol`"), "{e}");
    assert!(e.contains("needs an [inputs.serial.lines] table"), "{e}");
    let e = err(&LINES.replacen("protocol = \"lines\"", "protocol = \"nmea0183\"", 1));
    assert!(e.contains("key `inputs.serial[0].lines`"), "{e}");
    // An unknown key in the table and an unknown checksum are located by the parser.
    let e = err(&LINES.replace("drop_values = [5000]", "drop_value = [5000]"));
    let line = line_with(LINES, "drop_values = [5000]");
    assert!(
        e.starts_with(&format!(
            "gw.toml:{line}: key `inputs.serial[0].lines.drop_value`"
        )),
        "{e}"
    );
    let e = err(&LINES.replace("drop_values = [5000]", "checksum = \"crc\""));
    assert!(e.starts_with(&format!("gw.toml:{line}:")), "{e}");
    assert!(e.contains("nmea-xor"), "{e}");
}

#[test]
fn an_output_takes_url_or_urls_not_both_nor_neither() {
    let several = GOOD.replace(
        "url = \"http://127.0.0.1:8086\"",
        "urls = [\"http://a:8429\", \"http://b:8429\"]",
    );
    let c = Config::parse(Path::new("gw.toml"), &several).unwrap();
    assert_eq!(
        c.outputs()[0].influx.endpoints(),
        ["http://a:8429", "http://b:8429"]
    );
    let both = GOOD.replace(
        "url = \"http://127.0.0.1:8086\"",
        "url = \"http://a:8429\"\nurls = [\"http://b:8429\"]",
    );
    let e = err(&both);
    assert!(e.contains("key `output.influxdb.urls`"), "{e}");
    assert!(e.contains("not both"), "{e}");
    let neither = GOOD.replace("url = \"http://127.0.0.1:8086\"\n", "");
    let e = err(&neither);
    assert!(e.contains("key `output.influxdb.url`"), "{e}");
    let mixed = GOOD.replace(
        "url = \"http://127.0.0.1:8086\"",
        "urls = [\"http://a:8429\", \"https://b:8429\"]",
    );
    assert!(err(&mixed).contains("same scheme"));
    let twice = GOOD.replace(
        "url = \"http://127.0.0.1:8086\"",
        "urls = [\"http://a:8429\", \"http://a:8429\"]",
    );
    assert!(err(&twice).contains("listed twice"));
    let bad = GOOD.replace(
        "url = \"http://127.0.0.1:8086\"",
        "urls = [\"http://a:8429\", \"ftp://b\"]",
    );
    assert!(err(&bad).contains("http:// or https://"));
}

/// `GOOD` with its single output replaced by `outputs`.
fn with_outputs(outputs: &str) -> String {
    let start = GOOD.find("[output.influxdb]").unwrap();
    let end = GOOD.find("[buffer]").unwrap();
    format!("{}{outputs}\n{}", &GOOD[..start], &GOOD[end..])
}

const TWO: &str = r#"
[[outputs.influxdb]]
name = "ioc"
url = "http://vm:8428"
bucket = "telemetry"
exclude = ["ioc_gateway"]

[[outputs.influxdb]]
name = "national"
urls = ["https://a.gov:8086", "https://b.gov:8086"]
api = "v1"
database = "city"
include = ["env*", "traffic"]
"#;

#[test]
fn several_outputs_have_names_filters_and_one_dialect() {
    let c = Config::parse(Path::new("gw.toml"), &with_outputs(TWO)).unwrap();
    let outs = c.outputs();
    assert_eq!(outs.len(), 2);
    assert_eq!(
        (outs[0].name, outs[0].key.as_str()),
        ("ioc", "outputs.influxdb[0]")
    );
    assert_eq!(outs[1].name, "national");
    assert_eq!(outs[1].influx.include, ["env*", "traffic"]);
    assert_eq!(outs[0].influx.exclude, ["ioc_gateway"]);
    // One 1.x store among them: the buffer holds what 1.x reads.
    assert_eq!(c.flavor(), crate::model::Flavor::V1);
    // The single output is `default`, in the dialect of its API.
    let single = Config::parse(Path::new("gw.toml"), GOOD).unwrap();
    assert_eq!(single.outputs()[0].name, DEFAULT_OUTPUT);
    assert_eq!(single.flavor(), crate::model::Flavor::V2);
}

#[test]
fn output_errors_name_the_entry_and_key() {
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    // A missing name.
    let text = with_outputs(&TWO.replace("name = \"national\"\n", ""));
    let e = err(&text);
    assert!(e.contains("key `outputs.influxdb[1].name`"), "{e}");
    assert!(e.contains("needs a name"), "{e}");
    // Two outputs with one name.
    let e = err(&with_outputs(&TWO.replace("\"national\"", "\"ioc\"")));
    assert!(
        e.contains("key `outputs.influxdb[1].name`") && e.contains("two outputs"),
        "{e}"
    );
    // A name the buffer cannot use as a cursor file.
    let e = err(&with_outputs(&TWO.replace("\"national\"", "\"../etc\"")));
    assert!(
        e.contains("outputs.influxdb[1].name") && e.contains("A-Z a-z 0-9 _ -"),
        "{e}"
    );
    // A bad pattern, at its line.
    let text = with_outputs(&TWO.replace("\"traffic\"", "\"tr*ffic\""));
    let e = err(&text);
    assert!(
        e.starts_with(&format!("gw.toml:{}:", line_of(&text, "include ="))),
        "{e}"
    );
    assert!(
        e.contains("outputs.influxdb[1].include") && e.contains("tr*ffic"),
        "{e}"
    );
    // The entry's own checks carry its key.
    let e = err(&with_outputs(&TWO.replace("database = \"city\"\n", "")));
    assert!(e.contains("key `outputs.influxdb[1].database`"), "{e}");
    // Neither form, and both.
    let e = err(&with_outputs(""));
    assert!(
        e.contains("[[outputs.influxdb]]") && e.contains("missing"),
        "{e}"
    );
    let both = format!("{GOOD}\n{TWO}");
    let e = err(&both);
    assert!(e.contains("not both"), "{e}");
}
