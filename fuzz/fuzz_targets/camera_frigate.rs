//! `decode::camera::decode_frigate` over arbitrary payloads.
#![no_main]
#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tags = [("site".to_owned(), "gate1".to_owned())].into();
    if let Ok(r) = ioc_decode::camera::decode_frigate("camera_event", &tags, data) {
        common::check_readings(vec![r]);
    }
});
