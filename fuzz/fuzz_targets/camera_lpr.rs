//! `decode::camera::decode_lpr` over arbitrary payloads.
#![no_main]
#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tags = Default::default();
    if let Ok(r) = ioc_decode::camera::decode_lpr("plates", &tags, data, 1_700_000_000_000_000_000)
    {
        common::check_readings(vec![r]);
    }
});
