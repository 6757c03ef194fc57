//! The streaming NMEA 0183 decoder: arbitrary bytes in arbitrary chunks (first byte: chunk size);
//! it must never panic, never hold more than `max_line_bytes`, and make only valid readings.
#![no_main]
#[path = "common.rs"]
mod common;

use ioc_decode::nmea0183::{NmeaDecoder, NmeaSpec};
use ioc_decode::text_line::LineOutput;
use libfuzzer_sys::fuzz_target;

const MAX_LINE: usize = 128;

fuzz_target!(|data: &[u8]| {
    let Some((chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let mut dec = NmeaDecoder::new(NmeaSpec::default(), MAX_LINE);
    let mut out = LineOutput::default();
    for (i, piece) in bytes.chunks(chunk).enumerate() {
        dec.push(piece, 1_700_000_000_000_000_000 + i as i64, &mut out);
        assert!(dec.buffered() <= MAX_LINE);
    }
    dec.flush(&mut out);
    common::check_readings(out.readings);
});
