//! The streaming Vaisala (WXT5xx ASCII / WMT700) decoder: arbitrary bytes in arbitrary chunks
//! (first byte: chunk size); it must never panic, never hold more than `max_line_bytes`, and
//! make only valid readings.
#![no_main]
#[path = "common.rs"]
mod common;

use ioc_decode::text_line::LineOutput;
use ioc_decode::vaisala::{VaisalaDecoder, VaisalaSpec};
use libfuzzer_sys::fuzz_target;

const MAX_LINE: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let mut dec = VaisalaDecoder::new(VaisalaSpec::default(), MAX_LINE);
    let mut out = LineOutput::default();
    for piece in bytes.chunks(chunk) {
        dec.push(piece, 1_700_000_000_000_000_000, &mut out);
        assert!(dec.buffered() <= MAX_LINE);
    }
    dec.flush(&mut out);
    common::check_readings(out.readings);
});
