//! The node-frame stream decoder (`decode::node::NodeDecoder`): arbitrary bytes in arbitrary
//! chunks; every reading it makes must be valid.
#![no_main]
#[path = "common.rs"]
mod common;

use ioc_decode::node::NodeDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let mut dec = NodeDecoder::new(Default::default(), 7);
    let mut now = 1_700_000_000_000_000_000;
    for piece in bytes.chunks(chunk) {
        let batch = dec.push(piece, now);
        common::check_readings(batch.readings);
        now += 1_000_000;
    }
});
