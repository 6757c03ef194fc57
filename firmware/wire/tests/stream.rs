//! Property and stream tests of the wire format: round trips of every payload, arbitrary bytes
//! never panic, and the decoder resynchronises after garbage, truncation and bit flips.

use ioc_wire::*;
use proptest::prelude::*;

fn opt_f32() -> impl Strategy<Value = Option<f32>> {
    prop::option::of(-1.0e6f32..1.0e6f32)
}

fn header() -> impl Strategy<Value = Header> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
        |(node_id, boot_id, seq, uptime_ms)| Header {
            node_id,
            boot_id,
            seq,
            uptime_ms,
        },
    )
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::Northbound),
        Just(Direction::Southbound),
        Just(Direction::Eastbound),
        Just(Direction::Westbound),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (
            opt_f32(),
            opt_f32(),
            opt_f32(),
            opt_f32(),
            opt_f32(),
            opt_f32()
        )
            .prop_map(|(t, h, p1, p25, p10, n)| Payload::Environment(Environment {
                temperature_c: t,
                humidity_pct: h,
                pm1_0: p1,
                pm2_5: p25,
                pm10: p10,
                noise_db: n,
            })),
        (
            any::<u8>(),
            direction(),
            any::<u32>(),
            any::<u32>(),
            opt_f32(),
            0.0f32..=100.0
        )
            .prop_map(|(lane, direction, count, heavy_count, speed, occ)| {
                Payload::Traffic(TrafficLane {
                    lane,
                    direction,
                    count,
                    heavy_count,
                    speed_avg_kmh: speed,
                    occupancy_pct: occ,
                })
            }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(uptime_s, resets, sensor_errors, ring_depth, ring_dropped, iv)| {
                    Payload::Status(Status {
                        uptime_s,
                        resets,
                        sensor_errors,
                        ring_depth,
                        ring_dropped,
                        sample_interval_ms: iv,
                    })
                }
            ),
        any::<u32>()
            .prop_map(|interval_ms| Payload::Command(Command::SetSampleInterval { interval_ms })),
        any::<u16>().prop_map(|blink_s| Payload::Command(Command::Identify { blink_s })),
        Just(Payload::Command(Command::RequestStatus)),
        (any::<u32>(), any::<u32>())
            .prop_map(|(boot_id, up_to_seq)| Payload::Command(Command::Ack { boot_id, up_to_seq })),
        (any::<u32>(), any::<bool>())
            .prop_map(|(command_id, ok)| Payload::CommandAck(CommandAck { command_id, ok })),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (header(), payload()).prop_map(|(header, payload)| Frame { header, payload })
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = [0u8; MAX_ENCODED_LEN];
    let n = encode_frame(frame, &mut out).unwrap();
    out[..n].to_vec()
}

fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, WireError>> {
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    dec.push_slice(bytes, |r| got.push(r));
    got
}

fn frames_only(results: &[Result<Frame, WireError>]) -> Vec<Frame> {
    results.iter().filter_map(|r| r.ok()).collect()
}

proptest! {
    #[test]
    fn every_frame_round_trips(f in frame()) {
        let bytes = encode(&f);
        prop_assert!(bytes.len() <= MAX_ENCODED_LEN);
        prop_assert_eq!(bytes.last(), Some(&0u8));
        prop_assert!(!bytes[..bytes.len() - 1].contains(&0));
        prop_assert_eq!(decode_all(&bytes), vec![Ok(f)]);
        let mut scratch = [0u8; MAX_ENCODED_LEN];
        prop_assert_eq!(decode_frame(&bytes[..bytes.len() - 1], &mut scratch), Ok(f));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_all(&bytes);
        let mut scratch = [0u8; MAX_ENCODED_LEN];
        let _ = decode_frame(&bytes, &mut scratch);
        let _ = decode_raw(&bytes);
    }

    #[test]
    fn frame_after_garbage_is_recovered(
        garbage in prop::collection::vec(any::<u8>(), 0..400),
        f in frame(),
    ) {
        let mut stream = garbage.clone();
        stream.push(0);
        stream.extend_from_slice(&encode(&f));
        let results = decode_all(&stream);
        prop_assert_eq!(results.last(), Some(&Ok(f)));
    }

    #[test]
    fn truncated_frame_then_good_frame(
        a in frame(),
        b in frame(),
        cut in 1usize..64,
    ) {
        let first = encode(&a);
        let keep = 1 + cut % (first.len() - 2); // strictly shorter than the frame
        let mut stream = first[..keep].to_vec();
        stream.push(0); // the line went quiet, a later frame starts after a delimiter
        stream.extend_from_slice(&encode(&b));
        let results = decode_all(&stream);
        // the truncated piece is an error (never a frame), the good frame survives
        prop_assert_eq!(frames_only(&results), vec![b]);
        prop_assert_eq!(results.last(), Some(&Ok(b)));
    }

    #[test]
    fn truncated_frame_glued_to_next_is_rejected_then_resyncs(
        a in frame(),
        b in frame(),
        c in frame(),
        cut in 1usize..64,
    ) {
        // a frame cut off without its delimiter runs into the next one: that merged frame must
        // be rejected (CRC), and the one after it decoded.
        let first = encode(&a);
        let keep = 1 + cut % (first.len() - 2); // strictly shorter than the frame
        let mut stream = first[..keep].to_vec();
        stream.extend_from_slice(&encode(&b));
        stream.extend_from_slice(&encode(&c));
        let results = decode_all(&stream);
        prop_assert_eq!(results.len(), 2);
        prop_assert!(results[0].is_err());
        prop_assert_eq!(results[1], Ok(c));
    }

    #[test]
    fn single_bit_flips_are_rejected(f in frame(), bit in 0usize..1000) {
        let mut bytes = encode(&f);
        let body_len = bytes.len() - 1; // never flip the delimiter
        let bit = bit % (body_len * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let results = decode_all(&bytes);
        // a flip that creates a 0x00 splits the frame; none of the pieces may decode as a frame
        prop_assert!(frames_only(&results).is_empty(), "flip {} accepted: {:?}", bit, results);
    }
}

#[test]
fn too_long_run_is_one_error_then_resync() {
    let good = Frame {
        header: Header {
            node_id: 1,
            boot_id: 1,
            seq: 1,
            uptime_ms: 1,
        },
        payload: Payload::CommandAck(CommandAck {
            command_id: 9,
            ok: true,
        }),
    };
    let mut stream = vec![0x11u8; 5 * MAX_ENCODED_LEN];
    stream.push(0);
    stream.extend_from_slice(&encode(&good));
    assert_eq!(decode_all(&stream), vec![Err(WireError::TooLong), Ok(good)]);
}

#[test]
fn bad_crc_reports_bad_crc() {
    let f = Frame {
        header: Header {
            node_id: 3,
            boot_id: 4,
            seq: 5,
            uptime_ms: 6,
        },
        payload: Payload::Command(Command::Identify { blink_s: 10 }),
    };
    let mut raw = [0u8; MAX_RAW_LEN];
    let n = encode_raw(&f, &mut raw).unwrap();
    raw[n - 1] ^= 0x01;
    assert_eq!(decode_raw(&raw[..n]), Err(WireError::BadCrc));
}

#[test]
fn repeated_delimiters_are_ignored() {
    assert!(decode_all(&[0, 0, 0, 0]).is_empty());
}

#[test]
fn invalid_cobs_is_cobs_error() {
    // code byte 0x05 promises 4 more bytes, only 1 follows
    assert_eq!(decode_all(&[0x05, 0x01, 0x00]), vec![Err(WireError::Cobs)]);
}
