use super::*;

fn mapping(toml_text: &str) -> Mapping {
    let cfg: MappingConfig = toml::from_str(toml_text).expect("mapping config parses");
    Mapping::compile(&cfg, None).expect("mapping compiles")
}

fn compile_err(toml_text: &str) -> SpecError {
    let cfg: MappingConfig = toml::from_str(toml_text).expect("mapping config parses");
    Mapping::compile(&cfg, Some("m")).expect_err("mapping must not compile")
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reading(
    measurement: &str,
    tag_pairs: &[(&str, &str)],
    fields: &[(&str, FieldValue)],
    ts: i64,
) -> Reading {
    let mut r = Reading::new(measurement, ts);
    r.tags = tags(tag_pairs);
    r.fields = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    r
}

fn labels(d: &Decoded) -> Vec<&'static str> {
    d.rejected.iter().map(|r| r.label).collect()
}

// NYC DOT "Traffic Speeds NBE" (data.cityofnewyork.us, dataset i4gi-tjb9) as its SODA JSON API
// returns it: every column a string, `data_as_of` a floating local (New York) time. The two rows
// are those quoted in public clients' test fixtures of that API (the "434" and "351" links,
// Staten Island); `-101` in `status` and a speed of `-99` are this test's sentinel cases on a
// copy of the second row (NYC DOT marks missing links with negative values).
const NYC_DOT_SPEEDS: &str = r#"[
  {"id":"434","speed":"47.84","travel_time":"66","status":"0","data_as_of":"2024-02-13T07:09:09.000",
   "link_id":"4616212","link_points":"40.6020904,-74.1877 40.600331,-74.18943","encoded_poly_line":"abyvFbxxcM~IxI",
   "encoded_poly_line_lvls":"BBBBBB","owner":"NYC_DOT_LIC","transcom_id":"4616212","borough":"Staten Island",
   "link_name":"WSE N VICTORY BLVD - SOUTH AVENUE"},
  {"id":"351","speed":"40.38","travel_time":"133","status":"0","data_as_of":"2024-02-13T07:09:09.000",
   "link_id":"4616210","link_points":"40.63092,-74.14592","encoded_poly_line":"gv~vFtrpcM",
   "encoded_poly_line_lvls":"BB","owner":"NYC_DOT_LIC","transcom_id":"4616210","borough":"Staten Island",
   "link_name":"Richmond Ave"},
  {"id":"351","speed":"-99","travel_time":"-99","status":"-101","data_as_of":"2024-02-13T07:14:09.000",
   "link_id":"4616210","borough":"Staten Island","link_name":"Richmond Ave"}
]"#;

const NYC_DOT_MAPPING: &str = r#"
measurement = "traffic_speed"
tags = { link_id = "/link_id", borough = "/borough" }
fields = { speed_mph = "/speed", travel_time_s = { path = "/travel_time", type = "int" }, status = { path = "/status", type = "int", drop_values = [] }, link_name = { path = "/link_name", type = "string" } }
time = "/data_as_of"
time_format = "%Y-%m-%dT%H:%M:%S%.f"
timezone = "America/New_York"
drop_values = [-99]
"#;

#[test]
fn traffic_json_with_numbers_as_strings_and_local_times() {
    let m = mapping(NYC_DOT_MAPPING);
    let out = m.decode(&tags(&[("site", "nyc")]), NYC_DOT_SPEEDS.as_bytes(), 5);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    // 2024-02-13 07:09:09 in New York (EST, UTC-5) is 12:09:09Z = 1707826149 s.
    let t0 = 1_707_826_149_000_000_000;
    assert_eq!(
        out.readings,
        vec![
            reading(
                "traffic_speed",
                &[
                    ("borough", "Staten Island"),
                    ("link_id", "4616212"),
                    ("site", "nyc")
                ],
                &[
                    (
                        "link_name",
                        FieldValue::Str("WSE N VICTORY BLVD - SOUTH AVENUE".into())
                    ),
                    ("speed_mph", FieldValue::Float(47.84)),
                    ("status", FieldValue::Int(0)),
                    ("travel_time_s", FieldValue::Int(66)),
                ],
                t0,
            ),
            reading(
                "traffic_speed",
                &[
                    ("borough", "Staten Island"),
                    ("link_id", "4616210"),
                    ("site", "nyc")
                ],
                &[
                    ("link_name", FieldValue::Str("Richmond Ave".into())),
                    ("speed_mph", FieldValue::Float(40.38)),
                    ("status", FieldValue::Int(0)),
                    ("travel_time_s", FieldValue::Int(133)),
                ],
                t0,
            ),
            // -99 speed and travel time are dropped; status has its own (empty) drop_values.
            reading(
                "traffic_speed",
                &[
                    ("borough", "Staten Island"),
                    ("link_id", "4616210"),
                    ("site", "nyc")
                ],
                &[
                    ("link_name", FieldValue::Str("Richmond Ave".into())),
                    ("status", FieldValue::Int(-101)),
                ],
                t0 + 300_000_000_000,
            ),
        ]
    );
}

#[test]
fn a_string_that_is_not_a_number_is_refused_naming_the_path() {
    let m = mapping(NYC_DOT_MAPPING);
    let payload = r#"{"speed":"fast","travel_time":"66","status":"0","data_as_of":"2024-02-13T07:09:09.000","link_id":"1"}"#;
    let out = m.decode(&BTreeMap::new(), payload.as_bytes(), 0);
    assert_eq!(labels(&out), vec!["not_a_number"]);
    assert!(
        out.rejected[0].reason.contains("speed_mph")
            && out.rejected[0].reason.contains("\"/speed\""),
        "{}",
        out.rejected[0].reason
    );
    // The rest of the record is kept.
    assert_eq!(out.readings.len(), 1);
    assert_eq!(out.readings[0].fields.len(), 2);
    assert!(!out.readings[0].fields.contains_key("speed_mph"));
}

// Sensor.Community (luftdaten.info) `data.json`, the schema as documented in
// earthobservations/luftdatenpumpe doc/ldi-schema.rst: a top-level array of station records,
// each with its `sensordatavalues` (values as strings) and a UTC time without an offset.
const LUFTDATEN: &str = r#"[
    {
        "id": 59625316,
        "location": {"id": 312, "latitude": "48.647", "longitude": "9.445"},
        "sampling_rate": null,
        "sensor": {"id": 660, "pin": "7", "sensor_type": {"id": 9, "manufacturer": "various", "name": "DHT22"}},
        "sensordatavalues": [
            {"id": 169745466, "value": "44.30", "value_type": "humidity"},
            {"id": 169745465, "value": "15.80", "value_type": "temperature"}
        ],
        "timestamp": "2017-03-30T19:24:02"
    },
    {
        "id": 59625314,
        "location": {"id": 220, "latitude": "48.741", "longitude": "9.317"},
        "sampling_rate": null,
        "sensor": {"id": 467, "pin": "1", "sensor_type": {"id": 14, "manufacturer": "Nova Fitness", "name": "SDS011"}},
        "sensordatavalues": [
            {"id": 169745461, "value": "6.73", "value_type": "P1"},
            {"id": 169745462, "value": "4.48", "value_type": "P2"}
        ],
        "timestamp": "2017-03-30T19:24:02"
    }
]"#;

#[test]
fn nested_arrays_take_tags_and_time_from_the_parent() {
    let m = mapping(
        r#"
records = "/*/sensordatavalues"
measurement = "air"
tags = { value_type = "/value_type", sensor_id = "../sensor/id", sensor_type = "../sensor/sensor_type/name", location = "../location/id" }
fields = { value = "/value" }
time = "../timestamp"
time_format = "%Y-%m-%dT%H:%M:%S"
timezone = "UTC"
"#,
    );
    let out = m.decode(&BTreeMap::new(), LUFTDATEN.as_bytes(), 0);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    // 2017-03-30T19:24:02Z = 1490901842 s.
    let t = 1_490_901_842_000_000_000;
    let r = |sensor: &str, kind: &str, loc: &str, vt: &str, v: f64| {
        reading(
            "air",
            &[
                ("location", loc),
                ("sensor_id", sensor),
                ("sensor_type", kind),
                ("value_type", vt),
            ],
            &[("value", FieldValue::Float(v))],
            t,
        )
    };
    assert_eq!(
        out.readings,
        vec![
            r("660", "DHT22", "312", "humidity", 44.3),
            r("660", "DHT22", "312", "temperature", 15.8),
            r("467", "SDS011", "220", "P1", 6.73),
            r("467", "SDS011", "220", "P2", 4.48),
        ]
    );
}

// The sensors.AFRICA node API (api.sensors.africa/v1/node/), as captured in
// CodeForAfrica/sensors.AFRICA-Dashboard-KE-HAP src/api/data.js: nodes → sensors → sensordatas →
// sensordatavalues, four levels of arrays. Cut to the first node's first sensor and its first
// sensordata, values as given there.
const SENSORS_AFRICA: &str = r#"{
  "count": 77,
  "results": [
    {
      "id": 27,
      "sensors": [
        {
          "id": 49, "description": "", "pin": "1",
          "sensor_type": {"id": 9, "name": "pms5003", "manufacturer": "PlanTower"},
          "sensordatas": [
            {
              "id": 27457068, "sampling_rate": null, "timestamp": "2021-06-10T13:00:41.641989Z",
              "sensordatavalues": [
                {"id": 65320848, "value": "9.00", "value_type": "P2"},
                {"id": 65320847, "value": "9.00", "value_type": "P1"},
                {"id": 65320846, "value": "3.75", "value_type": "P0"}
              ]
            }
          ]
        }
      ],
      "uid": "esp8266-11639153",
      "location": {"id": 67, "location": "GreatWall Apartments", "city": "Nairobi"}
    }
  ]
}"#;

#[test]
fn star_segments_nest_and_dotdot_climbs_each_level() {
    let m = mapping(
        r#"
records = "/results/*/sensors/*/sensordatas/*/sensordatavalues"
measurement_path = "../../sensor_type/name"
tags = { node = "../../../uid", city = "../../../location/city", value_type = "/value_type", count = "$/count" }
fields = { value = "/value" }
time = "../timestamp"
"#,
    );
    let out = m.decode(&BTreeMap::new(), SENSORS_AFRICA.as_bytes(), 0);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    // 2021-06-10T13:00:41.641989Z
    let t = 1_623_330_041_641_989_000;
    let r = |vt: &str, v: f64| {
        reading(
            "pms5003",
            &[
                ("city", "Nairobi"),
                ("count", "77"),
                ("node", "esp8266-11639153"),
                ("value_type", vt),
            ],
            &[("value", FieldValue::Float(v))],
            t,
        )
    };
    assert_eq!(
        out.readings,
        vec![r("P2", 9.0), r("P1", 9.0), r("P0", 3.75)]
    );
}

// The World Air Quality Index feed (api.waqi.info/feed/...): the shape and values of the response
// captured in mateuszsplawski/myCloud src/api/mockDataAirPollution.ts, with the station name of
// the Ho Chi Minh City US Consulate monitor and `"aqi": "-"` (a station without data) from
// ezrantn/waqi-vietnam README.md; `time.s` is local time, here given for Vietnam (UTC+7).
const WAQI_HCMC: &str = r#"{
  "status": "ok",
  "data": {
    "aqi": "-",
    "idx": 8129,
    "city": {"geo": [10.782978, 106.700711], "name": "Ho Chi Minh City US Consulate, Vietnam (Lãnh sự quán Hoa Kỳ, Hồ Chí Minh)"},
    "dominentpol": "pm25",
    "iaqi": {"co": {"v": 3}, "dew": {"v": 10.1}, "h": {"v": 53.9}, "no2": {"v": 16.5}, "p": {"v": 998.1},
             "pm25": {"v": 35}, "r": {"v": 99.7}, "t": {"v": 19.7}, "w": {"v": 2}},
    "time": {"s": "2024-02-17 15:00:00", "tz": "+07:00", "v": 1708156800}
  }
}"#;

#[test]
fn flatten_local_time_in_ho_chi_minh_and_a_dash_sentinel() {
    let m = mapping(
        r#"
records = "/data"
measurement = "aqi"
tags = { station = "/city/name", dominant = "/dominentpol" }
flatten = "/iaqi"
fields = { aqi = { path = "/aqi", drop_values = ["-"] } }
time = "/time/s"
time_format = "%Y-%m-%d %H:%M:%S"
timezone = "Asia/Ho_Chi_Minh"
"#,
    );
    let out = m.decode(&BTreeMap::new(), WAQI_HCMC.as_bytes(), 0);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    // 2024-02-17 15:00:00 in Ho Chi Minh City is 08:00:00Z, the feed's own `time.v`.
    let f = |v: f64| FieldValue::Float(v);
    assert_eq!(
        out.readings,
        vec![reading(
            "aqi",
            &[
                ("dominant", "pm25"),
                (
                    "station",
                    "Ho Chi Minh City US Consulate, Vietnam (Lãnh sự quán Hoa Kỳ, Hồ Chí Minh)"
                ),
            ],
            &[
                ("co_v", f(3.0)),
                ("dew_v", f(10.1)),
                ("h_v", f(53.9)),
                ("no2_v", f(16.5)),
                ("p_v", f(998.1)),
                ("pm25_v", f(35.0)),
                ("r_v", f(99.7)),
                ("t_v", f(19.7)),
                ("w_v", f(2.0)),
            ],
            1_708_156_800_000_000_000,
        )]
    );
    // The same feed read by its numeric `time.v` (Unix seconds) gives the same instant.
    let by_unix = mapping(
        r#"
records = "/data"
measurement = "aqi"
fields = { pm25 = "/iaqi/pm25/v" }
time = "/time/v"
time_format = "unix_s"
"#,
    );
    let out = by_unix.decode(&BTreeMap::new(), WAQI_HCMC.as_bytes(), 0);
    assert_eq!(out.readings[0].timestamp_ns, 1_708_156_800_000_000_000);
}

#[test]
fn flatten_leaves_out_what_time_tags_and_fields_use() {
    let m = mapping(
        r#"
measurement = "env"
flatten = ""
tags = { site = "/site" }
fields = { pm25 = { path = "/pm/25", type = "int" } }
time = "/ts"
time_format = "unix_ms"
drop_values = [-99]
"#,
    );
    let payload = br#"{"ts": 1764059400123, "site": "ng-hue", "pm": {"25": "12", "10": 30.5}, "noise": -99, "ok": true}"#;
    let out = m.decode(&BTreeMap::new(), payload, 0);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(
        out.readings,
        vec![reading(
            "env",
            &[("site", "ng-hue")],
            &[
                ("ok", FieldValue::Bool(true)),
                ("pm25", FieldValue::Int(12)),
                ("pm_10", FieldValue::Float(30.5)),
            ],
            1_764_059_400_123_000_000,
        )]
    );
}

#[test]
fn missing_paths_and_bad_records_get_their_labels() {
    let m = mapping(
        r#"
records = "/stations"
measurement = "env"
tags = { id = "/id", zone = "/zone" }
fields = { pm25 = "/pm25", on = { path = "/on", type = "bool" } }
time = "/t"
"#,
    );
    let payload = br#"{"stations": [
        {"id": "a", "t": "2026-03-01T07:30:00+07:00", "pm25": 12.5},
        {"id": "b", "pm25": 3},
        {"id": "c", "t": "yesterday", "pm25": 3},
        {"id": "d", "t": "2026-03-01T07:30:00+07:00", "on": "maybe"},
        {"id": "e", "t": "2026-03-01T07:30:00+07:00"},
        {"id": ["x"], "t": "2026-03-01T07:30:00+07:00", "pm25": 1, "on": 1}
    ]}"#;
    let out = m.decode(&BTreeMap::new(), payload, 0);
    assert_eq!(
        labels(&out),
        vec![
            "missing_time",
            "bad_time",
            "not_a_bool",
            "no_fields",
            "not_a_scalar"
        ]
    );
    assert!(
        out.rejected[0].reason.starts_with("record 1: "),
        "{}",
        out.rejected[0].reason
    );
    assert_eq!(
        out.readings,
        vec![
            // A missing tag path (`zone`) is skipped.
            reading(
                "env",
                &[("id", "a")],
                &[("pm25", FieldValue::Float(12.5))],
                1_772_325_000_000_000_000
            ),
            reading(
                "env",
                &[],
                &[
                    ("on", FieldValue::Bool(true)),
                    ("pm25", FieldValue::Float(1.0))
                ],
                1_772_325_000_000_000_000
            ),
        ]
    );
    for (payload, label) in [
        (&b"{\"other\": []}"[..], "missing_records"),
        (b"not json", "not_json"),
        (b"{\"stations\": 7}", "missing_time"),
    ] {
        let out = m.decode(&BTreeMap::new(), payload, 0);
        assert_eq!(
            labels(&out),
            vec![label],
            "{}",
            String::from_utf8_lossy(payload)
        );
        assert!(out.readings.is_empty());
    }
    // An empty array is no data, not an error.
    let out = m.decode(&BTreeMap::new(), br#"{"stations": []}"#, 0);
    assert!(out.readings.is_empty() && out.rejected.is_empty());
}

#[test]
fn without_time_the_receipt_time_and_without_records_the_document() {
    let m = mapping("measurement = \"env\"\nfields = { v = \"/v\" }\ntags = { k = \"/k\" }");
    let out = m.decode(&BTreeMap::new(), br#"{"v": "1.5", "k": 7}"#, 42);
    assert_eq!(
        out.readings,
        vec![reading(
            "env",
            &[("k", "7")],
            &[("v", FieldValue::Float(1.5))],
            42
        )]
    );
    let out = m.decode(&BTreeMap::new(), br#"[{"v": 1}, {"v": 2}]"#, 42);
    assert_eq!(out.readings.len(), 2);
}

#[test]
fn measurement_path_with_a_fallback() {
    let m =
        mapping("measurement_path = \"/kind\"\nmeasurement = \"other\"\nfields = { v = \"/v\" }");
    let out = m.decode(
        &BTreeMap::new(),
        br#"[{"kind": "noise", "v": 1}, {"v": 2}, {"kind": 3, "v": 4}]"#,
        0,
    );
    let names: Vec<&str> = out
        .readings
        .iter()
        .map(|r| r.measurement.as_str())
        .collect();
    assert_eq!(names, vec!["noise", "other"]);
    assert_eq!(labels(&out), vec!["missing_measurement"]);
}

#[test]
fn pointers_follow_rfc6901_escapes_and_indexes() {
    let m = mapping("measurement = \"m\"\nfields = { a = \"/a~1b\", t = \"/m~0n\", first = \"/list/0\", bad = \"/list/01\" }");
    let out = m.decode(
        &BTreeMap::new(),
        br#"{"a/b": 1, "m~n": 2, "list": [3, 4]}"#,
        0,
    );
    assert_eq!(
        out.readings,
        vec![reading(
            "m",
            &[],
            &[
                ("a", FieldValue::Float(1.0)),
                ("first", FieldValue::Float(3.0)),
                ("t", FieldValue::Float(2.0))
            ],
            0
        )]
    );
}

#[test]
fn compile_errors_name_the_key() {
    for (text, key, says) in [
        ("fields = { speed = { path = \"speed\" } }", "fields.speed.path", "starts with \"/\""),
        ("fields = { speed = \"speed\" }", "fields.speed", "not a JSON pointer"),
        ("fields = { v = \"/v~2\" }", "fields.v", "~0"),
        ("fields = { v = \"/v\" }\ntime = \"/t\"\ntime_format = \"%d/%m/%Y %H:%M:%S\"", "timezone", "no UTC offset"),
        ("fields = { v = \"/v\" }\ntime = \"/t\"\ntime_format = \"%d/%m/%Y %H:%M:%S\"\ntimezone = \"Mars/Olympus\"", "timezone", "unknown time zone"),
        ("fields = { v = \"/v\" }\ntime = \"/t\"\ntime_format = \"%Y %J\"", "time_format", "%J"),
        ("fields = { v = \"/v\" }\ntime_format = \"unix_s\"", "time_format", "only used with time"),
        ("tags = { t = \"/t\" }", "fields", "needs fields"),
        ("records = \"/a/*\"\nfields = { v = \"../../../v\" }", "fields.v", "goes up 3"),
        ("fields = { v = \"/a/*/v\" }", "fields.v", "only allowed in records"),
        ("fields = { time = \"/t\" }", "fields.time", "reserved"),
        ("records = \"stations\"\nfields = { v = \"/v\" }", "records", "not a JSON pointer"),
    ] {
        let e = compile_err(text);
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.message.contains(says), "{text}: {}", e.message);
    }
    let cfg: MappingConfig = toml::from_str("fields = { v = \"/v\" }").unwrap();
    assert_eq!(Mapping::compile(&cfg, None).unwrap_err().key, "measurement");
    let bad = toml::from_str::<MappingConfig>("fields = { v = { path = \"/v\", kind = \"int\" } }");
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("unknown field `kind`"));
    let bad =
        toml::from_str::<MappingConfig>("fields = { v = { path = \"/v\", type = \"double\" } }");
    assert!(bad.unwrap_err().to_string().contains("double"));
    let bad = toml::from_str::<MappingConfig>("field = { v = \"/v\" }");
    assert!(bad.is_err());
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let m = mapping(NYC_DOT_MAPPING);
        let _ = m.decode(&BTreeMap::new(), &bytes, 0);
        let nested = mapping("records = \"/*/x/*\"\nmeasurement = \"m\"\nflatten = \"\"\ntags = { p = \"../id\" }");
        let _ = nested.decode(&BTreeMap::new(), &bytes, 0);
    }

    #[test]
    fn arbitrary_json_never_panics(doc in arbitrary_json()) {
        let nested = mapping("records = \"/*/x/*\"\nmeasurement = \"m\"\nflatten = \"\"\ntags = { p = \"../id\", r = \"$/0\" }\nfields = { v = { path = \"/v\", type = \"int\" } }\ntime = \"../t\"\ntime_format = \"unix_ms\"");
        let _ = nested.decode_value(&BTreeMap::new(), &doc, 0);
    }
}

fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z0-9 .:-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("(x|v|t|id|[a-z]{1,3})", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
