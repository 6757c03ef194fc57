use super::*;

fn csv(toml_text: &str) -> Csv {
    let cfg: CsvConfig = toml::from_str(toml_text).expect("csv config parses");
    Csv::compile(&cfg, "air").expect("csv config compiles")
}

fn compile_err(toml_text: &str) -> SpecError {
    let cfg: CsvConfig = toml::from_str(toml_text).expect("csv config parses");
    Csv::compile(&cfg, "air").expect_err("csv config must not compile")
}

fn reading(tags: &[(&str, &str)], fields: &[(&str, FieldValue)], ts: i64) -> Reading {
    let mut r = Reading::new("air", ts);
    r.tags = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    r.fields = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    r
}

fn labels(d: &Decoded) -> Vec<&'static str> {
    d.rejected.iter().map(|r| r.label).collect()
}

// The first rows of a Sensor.Community archive file, as published and kept in
// watty62/abdn_air_quality data/big_dump/done/2017-08-30_sds011_sensor_5331.csv: `;`-separated,
// a header row, UTC times without an offset, empty cells for what the sensor does not measure,
// and (row 2) a row with no value at all.
const SDS011_ARCHIVE: &str =
    "sensor_id;sensor_type;location;lat;lon;timestamp;P1;durP1;ratioP1;P2;durP2;ratioP2
5331;SDS011;2688;57.128;-2.130;2017-08-30T11:27:23;9.53;;;2.83;;
5331;SDS011;2688;57.128;-2.130;2017-08-30T11:27:23;;;;;;
5331;SDS011;2688;57.128;-2.130;2017-08-30T11:29:50;21.63;;;6.90;;
";

const SDS011_CONFIG: &str = r#"
separator = ";"
time_column = "timestamp"
time_format = "%Y-%m-%dT%H:%M:%S"
timezone = "UTC"
tag_columns = ["sensor_id", "sensor_type", "location"]
skip_columns = ["lat", "lon", "durP1", "ratioP1", "durP2", "ratioP2"]
"#;

#[test]
fn sensor_community_archive_rows_map_exactly() {
    let c = csv(SDS011_CONFIG);
    let base: BTreeMap<String, String> = [("site".to_string(), "aberdeen".to_string())].into();
    let out = c.decode(&base, SDS011_ARCHIVE.as_bytes(), 0);
    let tags = [
        ("location", "2688"),
        ("sensor_id", "5331"),
        ("sensor_type", "SDS011"),
        ("site", "aberdeen"),
    ];
    let f = FieldValue::Float;
    // 2017-08-30T11:27:23Z = 1504092443 s.
    assert_eq!(
        out.readings,
        vec![
            reading(
                &tags,
                &[("P1", f(9.53)), ("P2", f(2.83))],
                1_504_092_443_000_000_000
            ),
            reading(
                &tags,
                &[("P1", f(21.63)), ("P2", f(6.9))],
                1_504_092_590_000_000_000
            ),
        ]
    );
    // The row without values is refused on its line; the others are kept.
    assert_eq!(labels(&out), vec!["no_fields"]);
    assert!(
        out.rejected[0].reason.starts_with("line 3: "),
        "{}",
        out.rejected[0].reason
    );
}

// Campbell Scientific TOA5 data rows, from the example in Campbell's LoggerNet manual (TOA5
// file format), as quoted in public loaders of those files:
//   "TIMESTAMP","RECORD","batt_volt_Min","PTemp"
//   "2004-11-11 15:03:45",0,13.7,24.92
// The logger's clock is local time: here a logger in Vietnam (UTC+7). "NAN" is how TOA5 writes
// a missing value.
#[test]
fn one_line_at_a_time_with_configured_columns_and_local_time() {
    let c = csv(r#"
header = false
columns = ["TIMESTAMP", "RECORD", "batt_volt_Min", "PTemp"]
time_column = "TIMESTAMP"
time_format = "%Y-%m-%d %H:%M:%S"
timezone = "Asia/Ho_Chi_Minh"
skip_columns = ["RECORD"]
drop_values = ["NAN", -99]
"#);
    let base = BTreeMap::new();
    // 2004-11-11 15:03:45 at UTC+7 is 08:03:45Z = 1100160225 s.
    assert_eq!(
        c.decode_line(&base, "\"2004-11-11 15:03:45\",0,13.7,24.92", 0),
        Ok(reading(
            &[],
            &[
                ("PTemp", FieldValue::Float(24.92)),
                ("batt_volt_Min", FieldValue::Float(13.7))
            ],
            1_100_160_225_000_000_000
        ))
    );
    assert_eq!(
        c.decode_line(&base, "\"2004-11-11 15:04:00\",1,\"NAN\",-99", 0)
            .map_err(|r| r.label),
        Err("no_fields")
    );
    assert_eq!(
        c.decode_line(&base, "\"2004-11-11 15:04:00\",1,13.7,24.95,7", 0)
            .map_err(|r| r.label),
        Err("extra_columns")
    );
    assert_eq!(
        c.decode_line(&base, "\"11/11/2004 15:04\",1,13.7", 0)
            .map_err(|r| r.label),
        Err("bad_time")
    );
    assert_eq!(
        c.decode_line(&base, ",1,13.7", 0).map_err(|r| r.label),
        Err("missing_time")
    );
    // The same rows as one payload.
    let out = c.decode(
        &base,
        b"\"2004-11-11 15:03:45\",0,13.7,24.92\r\n\r\n\"2004-11-11 15:04:00\",1,13.7,24.95\r\n",
        0,
    );
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(out.readings.len(), 2);
    assert_eq!(out.readings[1].timestamp_ns, 1_100_160_240_000_000_000);
}

#[test]
fn strings_quotes_bom_and_receipt_time() {
    let c = csv("tag_columns = [\"site\"]");
    let payload = "\u{feff}site,state,level\n\"Le Loi, gate 2\",\"ok\",  3.5 \n";
    let out = c.decode(&BTreeMap::new(), payload.as_bytes(), 77);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(
        out.readings,
        vec![reading(
            &[("site", "Le Loi, gate 2")],
            &[
                ("level", FieldValue::Float(3.5)),
                ("state", FieldValue::Str("ok".into()))
            ],
            77
        )]
    );
    // A header without the time column, and a payload with only a header.
    let timed = csv("time_column = \"t\"");
    assert_eq!(
        labels(&timed.decode(&BTreeMap::new(), b"a,b\n1,2\n", 0)),
        vec!["missing_time"]
    );
    assert_eq!(
        labels(&c.decode(&BTreeMap::new(), b"site,level\n", 0)),
        vec!["no_fields"]
    );
    assert_eq!(
        labels(&c.decode(&BTreeMap::new(), b"site,level\nx,\xff\n", 0)),
        vec!["not_utf8"]
    );
    // A column named like a store's reserved key is refused by the reading's own checks.
    assert_eq!(
        labels(&c.decode(&BTreeMap::new(), b"time,level\n1,2\n", 0)),
        vec!["reserved_key"]
    );
}

#[test]
fn compile_errors_name_the_key() {
    for (text, key, says) in [
        ("separator = \";;\"", "separator", "one ASCII character"),
        ("separator = \"\\\"\"", "separator", "one ASCII character"),
        ("header = false", "columns", "must be named"),
        (
            "columns = [\"a\", \"b\"]\ntime_column = \"t\"",
            "time_column",
            "not one of the columns",
        ),
        (
            "columns = [\"a\"]\ntag_columns = [\"b\"]",
            "tag_columns",
            "not one of the columns",
        ),
        (
            "time_format = \"unix_s\"",
            "time_format",
            "only used with time_column",
        ),
        (
            "time_column = \"t\"\ntime_format = \"%d/%m/%Y %H:%M\"",
            "timezone",
            "no UTC offset",
        ),
        (
            "time_column = \"t\"\ntime_format = \"%d/%m/%Y %H:%M\"\ntimezone = \"Asia/Hanoi_City\"",
            "timezone",
            "unknown time zone",
        ),
        ("columns = [\"a\", \"\"]", "columns[1]", "needs a name"),
    ] {
        let e = compile_err(text);
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.message.contains(says), "{text}: {}", e.message);
    }
    assert!(toml::from_str::<CsvConfig>("delimiter = \";\"").is_err());
    let tab = csv("separator = \"\\t\"");
    let out = tab.decode(&BTreeMap::new(), b"a\tb\n1\t2\n", 0);
    assert_eq!(out.readings[0].fields.len(), 2);
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let c = csv(SDS011_CONFIG);
        let _ = c.decode(&BTreeMap::new(), &bytes, 0);
        let lines = csv("header = false\ncolumns = [\"t\", \"a\", \"b\"]\ntime_column = \"t\"\ntime_format = \"unix_s\"\ntag_columns = [\"a\"]");
        let _ = lines.decode(&BTreeMap::new(), &bytes, 0);
        let _ = lines.decode_line(&BTreeMap::new(), &String::from_utf8_lossy(&bytes), 0);
    }
}
