//! The Modbus RTU side of the gateway's own code: the classifier of unanswered requests over the
//! raw bytes that came back, and register decoding of an answer's words into readings for a map
//! that uses every register type, both word orders, scales and offsets (tokio-modbus parses the
//! frames; what it hands us, and what it drops, comes from the wire).
//! Input: slave, function, then the bytes (also read as big-endian words).
#![no_main]
#[path = "common.rs"]
mod common;

use ioc_decode::modbus::{
    classify_unanswered, plan_requests, readings_from_answer, PortTags, RegisterSpec, RegisterType,
    WordOrder,
};
use libfuzzer_sys::fuzz_target;

fn port() -> (Vec<RegisterSpec>, PortTags) {
    let types = [
        RegisterType::U16,
        RegisterType::I16,
        RegisterType::U32,
        RegisterType::I32,
        RegisterType::F32,
    ];
    let mut registers = Vec::new();
    let mut address = 0u16;
    for (i, ty) in types.iter().enumerate() {
        for order in [WordOrder::Big, WordOrder::Little] {
            registers.push(RegisterSpec {
                slave: 1,
                function: if i % 2 == 0 { 3 } else { 4 },
                address,
                register_type: *ty,
                word_order: order,
                scale: 0.1,
                offset: -40.0,
                field: format!("f{address}"),
                measurement: "environment".into(),
                sensor_id: (address % 3 == 0).then(|| format!("th-{address}")),
            });
            address += 2;
        }
    }
    let port = PortTags {
        sensor_id: Some("bus-1".into()),
        tags: Default::default(),
    };
    (registers, port)
}

fuzz_target!(|data: &[u8]| {
    let [slave, function, bytes @ ..] = data else {
        return;
    };
    let _ = classify_unanswered(*slave, *function, bytes).label();
    let words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
        .collect();
    let (registers, port) = port();
    for request in plan_requests(&registers) {
        let (readings, _errors) =
            readings_from_answer(&request, &words, &port, 1_700_000_000_000_000_000);
        common::check_readings(readings);
    }
});
