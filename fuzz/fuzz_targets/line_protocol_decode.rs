//! `decode::line_protocol::decode` (passthrough input) over arbitrary payloads; the first byte
//! picks the timestamp unit.
#![no_main]
#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((unit, payload)) = data.split_first() else {
        return;
    };
    let unit_ns = [1, 1_000, 1_000_000, 1_000_000_000][usize::from(unit & 3)];
    let tags = [("gw_site".to_owned(), "x".to_owned())].into();
    let (readings, _errors) =
        ioc_decode::line_protocol::decode(&tags, payload, unit_ns, 1_700_000_000_000_000_000);
    common::check_readings(readings);
});
