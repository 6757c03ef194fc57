//! The node application end to end on the host: scheduling, framing, ring and acks, commands,
//! health counters, and fault handling.

mod common;

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;

use common::FakeSerial;
use embedded_hal_mock::eh1::delay::NoopDelay;
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2cTx};
use ioc_node::sht3x::Sht3x;
use ioc_node::traffic::{LaneConfig, LaneCounter};
use ioc_node::*;
use ioc_wire::*;

const BOOT: u32 = 0xB007_0001;

/// Environment double: fixed values, optional failures.
struct FakeEnv {
    failures: u32,
}

impl EnvironmentSensor for FakeEnv {
    fn sample_into(&mut self, env: &mut Environment) -> u32 {
        if self.failures > 0 {
            return self.failures;
        }
        env.temperature_c = Some(20.5);
        env.humidity_pct = Some(40.0);
        0
    }
}

/// Input pin double whose level the test sets.
#[derive(Clone, Default)]
struct Level(Rc<Cell<bool>>);

impl embedded_hal::digital::ErrorType for Level {
    type Error = Infallible;
}

impl embedded_hal::digital::InputPin for Level {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.0.get())
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.0.get())
    }
}

type TestNode<const RING: usize> = Node<FakeSerial, FakeEnv, Level, 1, RING>;

fn node<const RING: usize>(failures: u32) -> (TestNode<RING>, Level) {
    let level = Level::default();
    let lane = LaneCounter::new(
        level.clone(),
        LaneConfig {
            lane: 1,
            direction: Direction::Eastbound,
            debounce_ms: 0,
            heavy_min_presence_ms: 5_000,
            active_high: true,
        },
        0,
    );
    let config = NodeConfig {
        node_id: 42,
        sample_interval_ms: 10_000,
        status_interval_ms: 30_000,
        min_sample_interval_ms: 1_000,
        max_sample_interval_ms: 600_000,
    };
    (
        Node::new(
            FakeSerial::default(),
            FakeEnv { failures },
            [lane],
            config,
            BOOT,
            3,
            0,
        ),
        level,
    )
}

fn sent<const RING: usize>(n: &mut TestNode<RING>) -> Vec<Frame> {
    let bytes = std::mem::take(&mut n.uart_mut().tx);
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    dec.push_slice(&bytes, |r| frames.push(r.unwrap()));
    frames
}

fn command(node_id: u32, id: u32, c: Command) -> Vec<u8> {
    let mut out = [0u8; MAX_ENCODED_LEN];
    let frame = Frame {
        header: Header {
            node_id,
            boot_id: 99,
            seq: id,
            uptime_ms: 0,
        },
        payload: Payload::Command(c),
    };
    let n = encode_frame(&frame, &mut out).unwrap();
    out[..n].to_vec()
}

fn feed<const RING: usize>(n: &mut TestNode<RING>, bytes: &[u8]) {
    n.uart_mut().rx.extend(bytes.iter().copied());
}

#[test]
fn boot_sends_delimiter_status_and_environment() {
    let (mut n, _) = node::<16>(0);
    n.poll(0);
    assert_eq!(n.uart_mut().tx.first(), Some(&0u8));
    let frames = sent(&mut n);
    assert_eq!(frames.len(), 2);
    assert_eq!(
        frames[0],
        Frame {
            header: Header {
                node_id: 42,
                boot_id: BOOT,
                seq: 0,
                uptime_ms: 0
            },
            payload: Payload::Status(Status {
                uptime_s: 0,
                resets: 3,
                sensor_errors: 0,
                ring_depth: 0,
                ring_dropped: 0,
                sample_interval_ms: 10_000,
            }),
        }
    );
    assert_eq!(frames[1].header.seq, 1);
    assert_eq!(
        frames[1].payload,
        Payload::Environment(Environment {
            temperature_c: Some(20.5),
            humidity_pct: Some(40.0),
            ..Environment::default()
        })
    );
    // nothing more is due until the next interval
    n.poll(9_999);
    assert!(sent(&mut n).is_empty());
    assert_eq!(n.health().ring_depth, 2);
}

#[test]
fn traffic_interval_counts_vehicles() {
    let (mut n, level) = node::<16>(0);
    n.poll(0);
    sent(&mut n);
    // two vehicles: 1000..2000 and 4000..6500 ms
    for t in (0..=10_000).step_by(100) {
        level
            .0
            .set((1000..2000).contains(&t) || (4000..6500).contains(&t));
        n.poll(t);
    }
    let frames = sent(&mut n);
    let seqs: Vec<u32> = frames.iter().map(|f| f.header.seq).collect();
    assert_eq!(seqs, vec![2, 3]);
    assert!(matches!(frames[0].payload, Payload::Environment(_)));
    assert_eq!(
        frames[1].payload,
        Payload::Traffic(TrafficLane {
            lane: 1,
            direction: Direction::Eastbound,
            count: 2,
            heavy_count: 0,
            speed_avg_kmh: None,
            occupancy_pct: 35.0,
        })
    );
}

#[test]
fn ack_releases_ring_for_this_boot_only() {
    let (mut n, _) = node::<16>(0);
    n.poll(0);
    n.poll(10_000);
    sent(&mut n);
    assert_eq!(n.health().ring_depth, 4); // status, env, env, traffic
    feed(
        &mut n,
        &command(
            42,
            1,
            Command::Ack {
                boot_id: BOOT ^ 1,
                up_to_seq: 10,
            },
        ),
    );
    n.poll(10_001);
    assert_eq!(n.health().ring_depth, 4, "stale boot's ack ignored");
    feed(
        &mut n,
        &command(
            42,
            2,
            Command::Ack {
                boot_id: BOOT,
                up_to_seq: 1,
            },
        ),
    );
    n.poll(10_002);
    assert_eq!(n.health().ring_depth, 2);
    let left: Vec<u32> = n.unacked().map(|f| f.header.seq).collect();
    assert_eq!(left, vec![2, 3]);
    assert!(sent(&mut n).is_empty(), "acks are not answered");
}

#[test]
fn request_status_resends_unacked_then_status() {
    let (mut n, _) = node::<16>(0);
    n.poll(0);
    let original = sent(&mut n);
    feed(&mut n, &command(42, 7, Command::RequestStatus));
    n.poll(500);
    let frames = sent(&mut n);
    assert_eq!(frames.len(), 4);
    assert_eq!(
        frames[0].payload,
        Payload::CommandAck(CommandAck {
            command_id: 7,
            ok: true
        })
    );
    assert_eq!(
        frames[0].header.seq, 2,
        "acks carry the next seq without using it"
    );
    assert_eq!(&frames[1..3], &original[..]);
    assert_eq!(frames[3].header.seq, 2);
    assert!(matches!(
        frames[3].payload,
        Payload::Status(Status { ring_depth: 2, .. })
    ));
}

#[test]
fn set_sample_interval_validates_and_applies() {
    let (mut n, _) = node::<16>(0);
    n.poll(0);
    sent(&mut n);
    feed(
        &mut n,
        &command(42, 1, Command::SetSampleInterval { interval_ms: 10 }),
    );
    n.poll(100);
    assert_eq!(
        sent(&mut n)[0].payload,
        Payload::CommandAck(CommandAck {
            command_id: 1,
            ok: false
        })
    );
    assert_eq!(n.sample_interval_ms(), 10_000);
    feed(
        &mut n,
        &command(
            BROADCAST_NODE_ID,
            2,
            Command::SetSampleInterval { interval_ms: 2_000 },
        ),
    );
    n.poll(200);
    assert_eq!(
        sent(&mut n)[0].payload,
        Payload::CommandAck(CommandAck {
            command_id: 2,
            ok: true
        })
    );
    assert_eq!(n.sample_interval_ms(), 2_000);
    n.poll(2_200);
    let frames = sent(&mut n);
    assert_eq!(
        frames.len(),
        2,
        "environment and traffic due at the new interval"
    );
}

#[test]
fn identify_and_other_nodes_commands() {
    let (mut n, _) = node::<16>(0);
    n.poll(0);
    sent(&mut n);
    feed(&mut n, &command(41, 1, Command::Identify { blink_s: 5 }));
    n.poll(1_000);
    assert!(sent(&mut n).is_empty());
    assert!(!n.is_identifying(1_000));
    feed(&mut n, &command(42, 2, Command::Identify { blink_s: 5 }));
    n.poll(1_000);
    assert_eq!(sent(&mut n).len(), 1);
    assert!(n.is_identifying(5_999));
    assert!(!n.is_identifying(6_000));
    assert_eq!(n.health().commands_received, 1);
}

#[test]
fn full_ring_drops_oldest_and_counts() {
    let (mut n, _) = node::<4>(0);
    for t in (0..=40_000).step_by(10_000) {
        n.poll(t);
    }
    let h = n.health();
    // 0: status+env; 10k: env+traffic; 20k: env+traffic; 30k: status+env+traffic; 40k: env+traffic
    assert_eq!(h.next_seq, 11);
    assert_eq!(h.ring_depth, 4);
    assert_eq!(h.ring_dropped, 7);
    let left: Vec<u32> = n.unacked().map(|f| f.header.seq).collect();
    assert_eq!(left, vec![7, 8, 9, 10]);
}

#[test]
fn sensor_errors_and_garbage_are_counted() {
    let (mut n, _) = node::<16>(2);
    n.poll(0);
    let frames = sent(&mut n);
    assert_eq!(
        frames[1].payload,
        Payload::Environment(Environment::default())
    );
    let mut garbage = vec![0x13, 0x37, 0x00];
    garbage.extend(command(42, 5, Command::RequestStatus));
    feed(&mut n, &garbage);
    n.poll(10);
    let h = n.health();
    assert_eq!(h.sensor_errors, 2);
    assert_eq!(h.rx_errors, 1);
    let frames = sent(&mut n);
    assert!(matches!(
        frames.last().unwrap().payload,
        Payload::Status(Status {
            sensor_errors: 2,
            ..
        })
    ));
}

#[test]
fn uart_write_failure_keeps_readings_for_resend() {
    let (mut n, _) = node::<16>(0);
    n.uart_mut().fail_write = Some(embedded_io::ErrorKind::BrokenPipe);
    n.poll(0);
    assert_eq!(n.health().uart_errors, 3); // delimiter, status, environment
    assert_eq!(n.health().ring_depth, 2);
    n.uart_mut().fail_write = None;
    feed(&mut n, &command(42, 1, Command::RequestStatus));
    n.poll(10);
    let seqs: Vec<u32> = sent(&mut n).iter().map(|f| f.header.seq).collect();
    assert_eq!(seqs, vec![2, 0, 1, 2]);
}

#[test]
fn skip_seq_leaves_a_gap() {
    let (mut n, _) = node::<16>(0);
    n.poll(0);
    n.skip_seq(3);
    n.poll(10_000);
    let seqs: Vec<u32> = sent(&mut n).iter().map(|f| f.header.seq).collect();
    assert_eq!(seqs, vec![0, 1, 5, 6]);
}

#[test]
fn real_sht3x_driver_feeds_environment() {
    let mut i2c = I2cMock::new(&[
        I2cTx::write(0x44, vec![0x24, 0x00]),
        I2cTx::read(0x44, vec![0x66, 0x66, 0x93, 0x80, 0x00, 0xA2]),
        I2cTx::write(0x44, vec![0x24, 0x00]),
        I2cTx::read(0x44, vec![0x66, 0x66, 0x00, 0x80, 0x00, 0xA2]),
    ]);
    let mut sensors = (
        Sht3x::new(i2c.clone(), NoopDelay::new(), 0x44),
        NoSensor,
        None::<FakeEnv>,
    );
    let mut env = Environment::default();
    assert_eq!(sensors.sample_into(&mut env), 0);
    assert!((env.temperature_c.unwrap() - 25.0).abs() < 0.001);
    let mut env = Environment::default();
    assert_eq!(
        sensors.sample_into(&mut env),
        1,
        "bad CRC counts as a failure"
    );
    assert_eq!(env, Environment::default());
    i2c.done();
}
