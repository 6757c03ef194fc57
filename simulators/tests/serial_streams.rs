//! `sensor-sim serial` streams against the gateway's own decoders: every intact frame of a
//! faulty PMS5003 / SDS011 stream is decoded, in order, with the values the manifest records,
//! and no faulty frame becomes a reading — whatever pieces the bytes arrive in.

use ioc_decode::pms5003::Pms5003Decoder;
use ioc_decode::sds011::{Sds011Decoder, Sds011Frame};
use ioc_decode::serial_frame::DecodeEvent;
use sensor_sim::serial::{frame_fields, LineFault, SerialDevice, SerialStream};

fn check(device: SerialDevice, seed: u64, piece: usize) {
    let faults = "noise=0.15,checksum=0.1,truncate=0.1".parse().unwrap();
    let mut s = SerialStream::new(device, seed, faults, 1_795_480_200_000, 100);
    let mut bytes = Vec::new();
    let mut want = Vec::new();
    for _ in 0..2000 {
        let c = s.next_chunk();
        bytes.extend_from_slice(&c.bytes);
        if !c.faults.contains(&LineFault::Checksum) && !c.faults.contains(&LineFault::Truncate) {
            want.push(frame_fields(device, &c.frame));
        }
    }
    let mut got = Vec::new();
    match device {
        SerialDevice::Pms5003 => {
            let mut d = Pms5003Decoder::new();
            let mut events = Vec::new();
            for p in bytes.chunks(piece) {
                d.push(p, &mut events);
            }
            for e in events {
                if let DecodeEvent::Frame(f) = e {
                    let r = f.to_reading(
                        ioc_decode::pms5003::Pms5003Variant::Standard,
                        None,
                        &Default::default(),
                        0,
                    );
                    got.push(
                        r.fields
                            .iter()
                            .map(|(k, v)| (k.clone(), field_f64(v)))
                            .collect(),
                    );
                }
            }
        }
        SerialDevice::Sds011 => {
            let mut d = Sds011Decoder::new();
            let mut events = Vec::new();
            for p in bytes.chunks(piece) {
                d.push(p, &mut events);
            }
            for e in events {
                if let DecodeEvent::Frame(Sds011Frame::Data(f)) = e {
                    let r = f.to_reading(None, &Default::default(), 0);
                    got.push(
                        r.fields
                            .iter()
                            .map(|(k, v)| (k.clone(), field_f64(v)))
                            .collect(),
                    );
                }
            }
        }
    }
    let first_diff = want.iter().zip(&got).position(|(a, b)| a != b);
    assert_eq!(
        (want.len(), first_diff),
        (got.len(), None),
        "{device:?} seed {seed} pieces of {piece}"
    );
}

fn field_f64(v: &ioc_model::FieldValue) -> f64 {
    match v {
        ioc_model::FieldValue::Float(f) => *f,
        ioc_model::FieldValue::Int(i) => *i as f64,
        other => panic!("unexpected field {other:?}"),
    }
}

#[test]
fn gateway_decoders_recover_exactly_the_intact_frames() {
    for seed in [1, 11, 12] {
        for piece in [1, 7, 64, 4096] {
            check(SerialDevice::Pms5003, seed, piece);
            check(SerialDevice::Sds011, seed, piece);
        }
    }
}
