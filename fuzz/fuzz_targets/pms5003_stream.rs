//! The streaming PMS5003 decoder: arbitrary bytes in arbitrary chunks (first byte: chunk size);
//! it must never panic nor hold more than one frame.
#![no_main]
#[path = "common.rs"]
mod common;

use ioc_decode::pms5003::{Pms5003Decoder, Pms5003Variant, FRAME_LEN};
use ioc_decode::serial_frame::DecodeEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let mut dec = Pms5003Decoder::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        dec.push(piece, &mut out);
        assert!(dec.buffered() <= FRAME_LEN);
    }
    dec.flush(&mut out);
    let mut readings = Vec::new();
    for ev in out {
        if let DecodeEvent::Frame(f) = ev {
            for v in [Pms5003Variant::Standard, Pms5003Variant::T] {
                readings.push(f.to_reading(
                    v,
                    Some("pms"),
                    &Default::default(),
                    1_700_000_000_000_000_000,
                ));
            }
        }
    }
    common::check_readings(readings);
});
