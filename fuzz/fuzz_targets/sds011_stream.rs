//! The streaming SDS011 decoder: arbitrary bytes in arbitrary chunks (first byte: chunk size).
#![no_main]
#[path = "common.rs"]
mod common;

use ioc_decode::sds011::{Sds011Decoder, Sds011Frame, FRAME_LEN};
use ioc_decode::serial_frame::DecodeEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let mut dec = Sds011Decoder::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        dec.push(piece, &mut out);
        assert!(dec.buffered() <= FRAME_LEN);
    }
    dec.flush(&mut out);
    let mut readings = Vec::new();
    for ev in out {
        if let DecodeEvent::Frame(Sds011Frame::Data(d)) = ev {
            readings.push(d.to_reading(
                Some("sds"),
                &Default::default(),
                1_700_000_000_000_000_000,
            ));
        }
    }
    common::check_readings(readings);
});
