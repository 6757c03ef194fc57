//! `decode::json::decode` over arbitrary topic and payload bytes (split at the first NUL).
#![no_main]
#[path = "common.rs"]
mod common;

use ioc_decode::json::TimestampUnit;
use ioc_decode::json::{decode, parse_topic_tags, JsonMapping};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (unit, rest) = match data.split_first() {
        Some((u, r)) => (*u, r),
        None => return,
    };
    let (topic, payload) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"city/d1/env/s1"[..], rest),
    };
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    let mapping = JsonMapping {
        measurement: "environment".into(),
        topic_tags: parse_topic_tags("_/district/_/sensor_id"),
        timestamp_field: (unit & 4 == 0).then(|| "ts".to_owned()),
        timestamp_unit: match unit & 3 {
            0 => TimestampUnit::S,
            1 => TimestampUnit::Ms,
            2 => TimestampUnit::Us,
            _ => TimestampUnit::Ns,
        },
        tag_keys: vec!["site".into()],
        static_tags: Default::default(),
    };
    if let Ok(readings) = decode(&mapping, topic, payload, 1_700_000_000_000_000_000) {
        common::check_readings(readings);
    }
});
