//! `decode::presets::ttn::decode` over arbitrary payloads.
#![no_main]
#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tags = Default::default();
    let (readings, _errors) =
        ioc_decode::presets::ttn::decode("lorawan", &tags, data, 1_700_000_000_000_000_000);
    common::check_readings(readings);
});
