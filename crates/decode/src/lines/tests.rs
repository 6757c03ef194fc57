use super::*;

fn lines(toml_text: &str) -> Lines {
    let cfg: LinesConfig = toml::from_str(toml_text).expect("lines config parses");
    Lines::compile(&cfg, Some("level"), tags(&[("sensor_id", "s1")])).expect("compiles")
}

fn compile_err(toml_text: &str) -> SpecError {
    let cfg: LinesConfig = toml::from_str(toml_text).expect("lines config parses");
    Lines::compile(&cfg, Some("level"), tags(&[("sensor_id", "s1")])).expect_err("must not compile")
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reading(m: &str, t: &[(&str, &str)], fields: &[(&str, f64)], ts: i64) -> Reading {
    let mut r = Reading::new(m, ts);
    r.tags = tags(t);
    r.fields = fields
        .iter()
        .map(|(k, v)| (k.to_string(), FieldValue::Float(*v)))
        .collect();
    r
}

fn label(l: &Lines, line: &str) -> &'static str {
    l.decode(line.as_bytes(), 7).label()
}

// MaxBotix HRXL-MaxSonar-WR (MB7360..MB7389) datasheet, "Serial Output": an ASCII "R", four
// digits of range in millimetres, a carriage return; a 5 m model reports 5000 when no target is
// seen, a 10 m model 9999.
const MAXBOTIX: &str = r#"
regex = '^R(?P<range_mm>\d{4})$'
fields = ["range_mm"]
drop_values = [5000, 9999]
"#;

#[test]
fn a_maxbotix_range_line() {
    let l = lines(MAXBOTIX);
    assert_eq!(
        l.decode(b"R1234", 42),
        LineOutcome::Reading(reading(
            "level",
            &[("sensor_id", "s1")],
            &[("range_mm", 1234.0)],
            42
        ))
    );
    // No target: the sentinel, so no reading (and not a fault).
    assert_eq!(label(&l, "R5000"), "no_values");
    assert_eq!(label(&l, "R9999"), "no_values");
    // Anchored: more digits, a missing R, a banner do not match.
    for line in ["R12345", "1234", "HRXL-MaxSonar-WRS", "R12a4"] {
        assert_eq!(label(&l, line), "no_match", "{line}");
    }
    assert!(!l.has_time());
}

#[test]
fn a_radar_speed_sign_line_with_a_tag() {
    // A Doppler speed sensor printing signed km/h; the sign says the direction.
    let l = lines(
        r#"
measurement = "traffic_speed"
regex = '^(?P<direction>[+-])(?P<speed_kmh>\d{3}\.\d) km/h$'
fields = ["speed_kmh"]
tags = ["direction"]
"#,
    );
    assert_eq!(
        l.decode(b"+045.2 km/h", 1),
        LineOutcome::Reading(reading(
            "traffic_speed",
            &[("direction", "+"), ("sensor_id", "s1")],
            &[("speed_kmh", 45.2)],
            1
        ))
    );
    assert_eq!(label(&l, "-102.0 km/h"), "ok");
    assert_eq!(label(&l, "+045.2 mph"), "no_match");
}

#[test]
fn a_field_capture_that_is_not_a_number_is_refused() {
    let l = lines(
        r#"
regex = '^L=(?P<level>\S+)$'
fields = ["level"]
"#,
    );
    assert_eq!(label(&l, "L=12.5"), "ok");
    assert_eq!(label(&l, "L=ERR"), "not_a_number");
    assert_eq!(label(&l, "L=nan"), "not_a_number");
    assert_eq!(label(&l, "L=1.2.3"), "not_a_number");
}

#[test]
fn optional_captures_and_partial_sentinels_leave_only_that_field_out() {
    let l = lines(
        r#"
regex = '^T(?P<temp_c>-?[\d.]+)(,H(?P<rh_pct>[\d.]+))?$'
fields = ["temp_c", "rh_pct"]
drop_values = [-99]
"#,
    );
    let r = |line: &str| match l.decode(line.as_bytes(), 0) {
        LineOutcome::Reading(r) => r.fields,
        other => panic!("{line}: {other:?}"),
    };
    assert_eq!(
        r("T21.5,H40"),
        BTreeMap::from([
            ("temp_c".to_string(), FieldValue::Float(21.5)),
            ("rh_pct".to_string(), FieldValue::Float(40.0))
        ])
    );
    assert_eq!(
        r("T21.5"),
        BTreeMap::from([("temp_c".to_string(), FieldValue::Float(21.5))])
    );
    assert_eq!(
        r("T-99,H40"),
        BTreeMap::from([("rh_pct".to_string(), FieldValue::Float(40.0))])
    );
    assert_eq!(label(&l, "T-99.0"), "no_values");
}

// A class-1 sound level meter's serial log, one line per second: local time, LAeq, LAFmax,
// LAFmin (dB); it prints its header at power-up and -99.9 for an overload.
const NOISE: &str = r#"
measurement = "noise"
columns = ["time", "laeq_db", "lafmax_db", "lafmin_db", "station"]
skip_header = true
fields = ["laeq_db", "lafmax_db", "lafmin_db"]
tags = ["station"]
time = "time"
time_format = "%Y-%m-%d %H:%M:%S"
timezone = "Asia/Ho_Chi_Minh"
drop_values = [-99.9]
"#;

#[test]
fn a_noise_meter_csv_line_with_its_own_local_time() {
    let l = lines(NOISE);
    assert!(l.has_time());
    // 2026-03-01 07:30:00 in Vietnam (UTC+7) = 2026-03-01T00:30:00Z = 1772325000 s.
    assert_eq!(
        l.decode(b"2026-03-01 07:30:00, 63.4, 71.2, 55.0,\"Hoan Kiem\"", 0),
        LineOutcome::Reading(reading(
            "noise",
            &[("sensor_id", "s1"), ("station", "Hoan Kiem")],
            &[("laeq_db", 63.4), ("lafmax_db", 71.2), ("lafmin_db", 55.0)],
            1_772_325_000_000_000_000
        ))
    );
    assert_eq!(
        label(&l, "TIME,LAeq_dB,LAFmax_dB,LAFmin_dB,Station"),
        "header"
    );
    // An overload in one value drops that field only.
    match l.decode(b"2026-03-01 07:30:01,-99.9,71.2,55.0,HK", 0) {
        LineOutcome::Reading(r) => assert!(!r.fields.contains_key("laeq_db")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        label(&l, "2026-03-01 07:30:02,-99.9,-99.9,-99.9,HK"),
        "no_values"
    );
    // A cell short or too many: the line does not fit the columns.
    assert_eq!(label(&l, "2026-03-01 07:30:03,63.4,71.2,55.0"), "no_match");
    assert_eq!(
        label(&l, "2026-03-01 07:30:03,63.4,71.2,55.0,HK,x"),
        "no_match"
    );
    assert_eq!(
        label(&l, "01/03/2026 07:30:03,63.4,71.2,55.0,HK"),
        "bad_time"
    );
    assert_eq!(label(&l, ",63.4,71.2,55.0,HK"), "bad_time");
    assert_eq!(
        label(&l, "2026-03-01 07:30:03,loud,71.2,55.0,HK"),
        "not_a_number"
    );
}

#[test]
fn csv_lines_without_a_header_and_with_ignored_columns() {
    let l = lines(
        r#"
columns = ["", "level_cm", ""]
separator = ";"
fields = ["level_cm"]
"#,
    );
    assert_eq!(
        l.decode(b"ST01;123.4;OK", 5),
        LineOutcome::Reading(reading(
            "level",
            &[("sensor_id", "s1")],
            &[("level_cm", 123.4)],
            5
        ))
    );
    // Without skip_header, a header is just a line whose field is not a number.
    assert_eq!(label(&l, "id;level_cm;state"), "not_a_number");
}

#[test]
fn unix_times_in_a_capture() {
    let l = lines(
        r#"
regex = '^(?P<ts>\d+) (?P<v>\S+)$'
fields = ["v"]
time = "ts"
time_format = "unix_ms"
"#,
    );
    assert_eq!(
        l.decode(b"1772325000123 4.5", 0),
        LineOutcome::Reading(reading(
            "level",
            &[("sensor_id", "s1")],
            &[("v", 4.5)],
            1_772_325_000_123_000_000
        ))
    );
}

// AeroRust/nmea src/sentences/vtg.rs: "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48".
const VTG: &str = r#"
regex = '^\$GPVTG,(?P<course_deg>[\d.]+),T,[\d.]*,M,[\d.]*,N,(?P<speed_kmh>[\d.]+),K$'
fields = ["course_deg", "speed_kmh"]
checksum = "nmea-xor"
"#;

#[test]
fn an_nmea_xor_checksum_is_verified_and_stripped_before_matching() {
    let l = lines(VTG);
    let line = "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48";
    assert_eq!(
        l.decode(line.as_bytes(), 3),
        LineOutcome::Reading(reading(
            "level",
            &[("sensor_id", "s1")],
            &[("course_deg", 54.7), ("speed_kmh", 10.2)],
            3
        ))
    );
    assert_eq!(
        label(&l, "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48  "),
        "ok"
    );
    assert_eq!(
        label(&l, "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,k*48"),
        "checksum"
    );
    assert_eq!(
        label(&l, "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*49"),
        "checksum"
    );
    assert_eq!(
        label(&l, "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K"),
        "no_checksum"
    );
    assert_eq!(
        label(&l, "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*4"),
        "no_checksum"
    );
    // A valid checksum on a line the pattern does not take.
    assert_eq!(
        label(&l, "$GPVTG,054.7,T,034.4,M,005.5,N,,K*48"),
        "checksum"
    );
    let body = b"GPXTE,A,A,0.67,L,N";
    let sum = text::hex2(text::xor(body));
    let other = [b"$".as_slice(), body, b"*", &sum].concat();
    assert_eq!(l.decode(&other, 0).label(), "no_match");
    // Without a leading `$`, every byte before the `*` is summed.
    let sum = text::hex2(text::xor(b"L1234"));
    assert_eq!(
        verify_nmea_xor(&[b"L1234*".as_slice(), &sum].concat()),
        Ok(&b"L1234"[..])
    );
}

#[test]
fn a_tag_text_the_store_cannot_take_is_refused() {
    let l = lines(
        r#"
regex = '(?-u)^(?P<site>[^=]+)=(?P<v>\d+)$'
fields = ["v"]
tags = ["site"]
"#,
    );
    assert_eq!(label(&l, "north=12"), "ok");
    assert_eq!(label(&l, "no\x01rth=12"), "bad_tag");
    // Not UTF-8 (the pattern takes any byte with `(?-u)`).
    assert_eq!(l.decode(b"\xffx=12", 0).label(), "bad_tag");
}

#[test]
fn the_stream_decoder_frames_cr_lf_and_crlf_counts_and_traces() {
    let mut d = LinesDecoder::new(lines(MAXBOTIX), 64).traced();
    let mut out = LineOutput::default();
    // Torn across chunks, CR (as the sensor ends lines), LF and CR LF mixed, a banner, a
    // sentinel, an over-long line.
    for chunk in [
        &b"HRXL-MaxSonar-WRS\rR01"[..],
        b"23\rR0456\nR5000\r\nR07",
        b"89\r\n",
        &[b'9'; 100],
        b"\rR0999\r",
    ] {
        d.push(chunk, 9, &mut out);
    }
    let ranges: Vec<f64> = out
        .readings
        .iter()
        .map(|r| match r.fields["range_mm"] {
            FieldValue::Float(v) => v,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(ranges, vec![123.0, 456.0, 789.0, 999.0]);
    assert_eq!(out.good, 4);
    assert_eq!(out.no_match, 1);
    assert_eq!(out.unmatched, vec!["HRXL-MaxSonar-WRS".to_string()]);
    assert_eq!(out.no_values, 1);
    assert_eq!(out.bad, vec![BadLine::TooLong]);
    let traced: Vec<(&str, &str)> = out.traced.iter().map(|(l, o)| (l.as_str(), *o)).collect();
    assert_eq!(
        traced,
        vec![
            ("HRXL-MaxSonar-WRS", "no_match"),
            ("R0123", "ok"),
            ("R0456", "ok"),
            ("R5000", "no_values"),
            ("R0789", "ok"),
            ("(over max_line_bytes)", "too_long"),
            ("R0999", "ok"),
        ]
    );
    out.clear();
    d.push(b"R01", 9, &mut out);
    assert_eq!(d.buffered(), 3);
    d.flush(&mut out);
    assert_eq!(out.bad, vec![BadLine::Truncated]);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn config_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("fields = [\"a\"]", "regex", "set regex"),
        (
            "regex = 'x(?P<a>1)'\ncolumns = [\"a\"]\nfields = [\"a\"]",
            "columns",
            "not both",
        ),
        ("regex = '(?P<a>[0-9'\nfields = [\"a\"]", "regex", "bad regex"),
        ("regex = '[0-9]+'\nfields = [\"a\"]", "regex", "no named capture"),
        (
            "regex = '(?P<a>\\d+)'\nfields = [\"b\"]",
            "fields[0]",
            "\"b\" is not one of the named captures of regex [\"a\"]",
        ),
        ("regex = '(?P<a>\\d+)'", "fields", "at least one"),
        (
            "regex = '(?P<a>\\d+)(?P<b>\\d+)'\nfields = [\"a\"]\ntags = [\"a\"]",
            "tags[0]",
            "already used as a field",
        ),
        (
            "regex = '(?P<a>\\d+)(?P<t>\\d+)'\nfields = [\"a\"]\ntime = \"t\"\ntime_format = \"%d/%m/%Y %H:%M:%K\"\ntimezone = \"UTC\"",
            "time_format",
            "%K",
        ),
        (
            "regex = '(?P<a>\\d+)(?P<t>\\d+)'\nfields = [\"a\"]\ntime = \"t\"\ntime_format = \"%d/%m/%Y %H:%M\"\ntimezone = \"Mars/Olympus\"",
            "timezone",
            "unknown time zone",
        ),
        (
            "regex = '(?P<a>\\d+)'\nfields = [\"a\"]\ntime_format = \"unix_s\"",
            "time_format",
            "only used with time",
        ),
        (
            "regex = '(?P<a>\\d+)'\nfields = [\"a\"]\nseparator = \";\"",
            "separator",
            "only used with columns",
        ),
        (
            "columns = [\"a\", \"a\"]\nfields = [\"a\"]",
            "columns[1]",
            "named twice",
        ),
        (
            "columns = [\"a\"]\nseparator = \"::\"\nfields = [\"a\"]",
            "separator",
            "is not a separator",
        ),
        (
            "columns = [\"a\", \"\"]\nfields = [\"\"]",
            "fields[0]",
            "is not one of the columns [\"a\"]",
        ),
        (
            "regex = '(?P<time>\\d+)'\nfields = [\"time\"]",
            "fields[0]",
            "reserve",
        ),
        (
            "regex = '(?P<sensor_id>\\w+)=(?P<v>\\d+)'\nfields = [\"v\"]\ntags = [\"sensor_id\"]",
            "tags",
            "static tag",
        ),
        (
            "measurement = \"#x\"\nregex = '(?P<a>\\d+)'\nfields = [\"a\"]",
            "measurement",
            "comment",
        ),
    ];
    for (text, key, message) in cases {
        let e = compile_err(text);
        assert_eq!(e.key, *key, "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
    // A pattern whose compiled program is over the size limit.
    let e = compile_err("regex = '(?P<a>\\w{2000}){50}'\nfields = [\"a\"]");
    assert_eq!(e.key, "regex");
    assert!(e.message.contains("size limit"), "{e}");
    // No measurement anywhere.
    let cfg: LinesConfig = toml::from_str("regex = '(?P<a>1)'\nfields = [\"a\"]").unwrap();
    let e = Lines::compile(&cfg, None, BTreeMap::new()).unwrap_err();
    assert_eq!(e.key, "measurement");
    // An unknown checksum is a serde error.
    assert!(toml::from_str::<LinesConfig>("checksum = \"crc16\"").is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Bytes that look like lines often: pieces of valid lines, checksums, separators, noise.
    fn line_like() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48".to_vec()),
            Just(b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K".to_vec()),
            Just(b"R1234".to_vec()),
            Just(b"*".to_vec()),
            Just(b"$".to_vec()),
            Just(b",".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
            "[0-9A-F]{2}".prop_map(|s| s.into_bytes()),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
            for cfg in [MAXBOTIX, NOISE, VTG] {
                let mut d = LinesDecoder::new(lines(cfg), 256).traced();
                let mut out = LineOutput::default();
                let cut = cut.min(bytes.len());
                d.push(&bytes[..cut], 1, &mut out);
                d.push(&bytes[cut..], 2, &mut out);
                d.flush(&mut out);
                prop_assert!(d.buffered() == 0);
            }
        }

        #[test]
        fn a_line_accepted_with_nmea_xor_has_a_valid_checksum(bytes in line_like()) {
            let l = lines(VTG);
            for line in bytes.split(|&b| b == b'\r' || b == b'\n') {
                if let LineOutcome::Reading(_) = l.decode(line, 0) {
                    let line = line.trim_ascii_end();
                    let star = line.iter().rposition(|&b| b == b'*').unwrap();
                    let body = &line[..star];
                    let summed = body.strip_prefix(b"$").unwrap_or(body);
                    prop_assert_eq!(text::parse_hex2(&line[star + 1..]), Some(text::xor(summed)));
                }
                // Whatever the pattern, what verify_nmea_xor lets through is correctly summed.
                if let Ok(body) = verify_nmea_xor(line) {
                    let rest = &line.trim_ascii_end()[body.len()..];
                    prop_assert_eq!(rest.first(), Some(&b'*'));
                    let summed = match body.first() {
                        Some(b'$') | Some(b'!') => &body[1..],
                        _ => body,
                    };
                    prop_assert_eq!(text::parse_hex2(&rest[1..]), Some(text::xor(summed)));
                }
            }
        }
    }
}
