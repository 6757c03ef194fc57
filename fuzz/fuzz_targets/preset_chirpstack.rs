//! `decode::presets::chirpstack::decode` over arbitrary payloads.
#![no_main]
#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tags = Default::default();
    // The topic decides the event type first: fuzz with an uplink topic so the payload is read.
    let topic = "application/a/device/b/event/up";
    let (readings, _errors) = ioc_decode::presets::chirpstack::decode(
        "lorawan",
        &tags,
        topic,
        data,
        1_700_000_000_000_000_000,
    );
    common::check_readings(readings);
});
