//! The streaming `lines` decoder with a regex pattern (and an NMEA XOR checksum) and with CSV
//! columns: arbitrary bytes in arbitrary chunks (first byte: chunk size, its low bit: which
//! config); it must never panic, never hold more than `max_line_bytes`, and make only valid
//! readings, each from a line whose checksum was right.
#![no_main]
#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;

use ioc_decode::lines::{verify_nmea_xor, Lines, LinesConfig, LinesDecoder};
use ioc_decode::text_line::LineOutput;
use libfuzzer_sys::fuzz_target;

/// At most `text_line::UNMATCHED_CHARS`, so a traced line is the whole line.
const MAX_LINE: usize = 120;

const REGEX: &str = r#"
regex = '^\$?(?P<site>[A-Z]{2,5}),(?P<level_mm>[-+]?[\d.]+)(,(?P<t>\d+))?$'
fields = ["level_mm"]
tags = ["site"]
drop_values = [9999]
checksum = "nmea-xor"
"#;

const CSV: &str = r#"
columns = ["time", "laeq_db", "station", ""]
skip_header = true
fields = ["laeq_db"]
tags = ["station"]
time = "time"
time_format = "%Y-%m-%d %H:%M:%S"
timezone = "Asia/Ho_Chi_Minh"
drop_values = [-99.9]
"#;

fn decoder(csv: bool) -> LinesDecoder {
    let text = if csv { CSV } else { REGEX };
    let cfg: LinesConfig = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => panic!("fuzz config: {e}"),
    };
    let tags = BTreeMap::from([("sensor_id".to_string(), "fuzz".to_string())]);
    match Lines::compile(&cfg, Some("level"), tags) {
        Ok(l) => LinesDecoder::new(l, MAX_LINE).traced(),
        Err(e) => panic!("fuzz config: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((first, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(*first >> 1).max(1);
    let csv = *first & 1 == 1;
    let mut dec = decoder(csv);
    let mut out = LineOutput::default();
    for (i, piece) in bytes.chunks(chunk).enumerate() {
        dec.push(piece, 1_700_000_000_000_000_000 + i as i64, &mut out);
        assert!(dec.buffered() <= MAX_LINE);
    }
    dec.flush(&mut out);
    assert_eq!(
        out.good as usize,
        out.readings.len(),
        "every good line is one reading"
    );
    if !csv {
        // The pattern takes ASCII only, so the traced text is the line as received.
        for (line, outcome) in &out.traced {
            if *outcome == "ok" {
                assert!(verify_nmea_xor(line.as_bytes()).is_ok(), "accepted {line:?}");
            }
        }
    }
    common::check_readings(out.readings);
});
