//! `ioc_wire::FrameDecoder` (COBS + CRC framing of node frames) and `decode_raw`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = ioc_wire::FrameDecoder::default();
    let mut frames = 0usize;
    dec.push_slice(data, |r| {
        if r.is_ok() {
            frames += 1;
        }
    });
    assert!(frames <= data.len());
    let _ = ioc_wire::decode_raw(data);
});
