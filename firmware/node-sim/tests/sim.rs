//! The simulated node end to end: determinism, plausible readings, fault hooks, commands, and
//! the run loop over std::io.

use std::sync::Arc;

use embedded_hal::i2c::{ErrorKind, I2c, NoAcknowledgeSource};
use ioc_node::sht3x::{Sht3x, DEFAULT_ADDRESS};
use ioc_node_sim::*;
use ioc_wire::*;

fn decode(bytes: &[u8]) -> Vec<Frame> {
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    dec.push_slice(bytes, |r| {
        frames.push(r.expect("simulated node sent a bad frame"))
    });
    frames
}

fn run_for(node: &mut SimNode, from_ms: u64, to_ms: u64, tick: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut t = from_ms;
    while t <= to_ms {
        out.extend(node.step(t));
        t += tick;
    }
    out
}

fn command(node_id: u32, id: u32, c: Command) -> Vec<u8> {
    let mut out = [0u8; MAX_ENCODED_LEN];
    let f = Frame {
        header: Header {
            node_id,
            boot_id: 1,
            seq: id,
            uptime_ms: 0,
        },
        payload: Payload::Command(c),
    };
    let n = encode_frame(&f, &mut out).unwrap();
    out[..n].to_vec()
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = run_for(&mut SimNode::new(5, 77), 0, 120_000, 1_000);
    let b = run_for(&mut SimNode::new(5, 77), 0, 120_000, 1_000);
    let c = run_for(&mut SimNode::new(5, 78), 0, 120_000, 1_000);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn readings_are_plausible_and_sequenced() {
    let mut node = SimNode::new(12, 1);
    let frames = decode(&run_for(&mut node, 0, 300_000, 1_000));
    // boot: status + environment; every 10 s: environment + 2 lanes; every 30 s: status
    assert_eq!(frames.len(), 2 + 30 * 3 + 10);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.header.node_id, 12);
        assert_eq!(f.header.boot_id, node.boot_id());
        assert_eq!(f.header.seq, i as u32);
    }
    let mut vehicles = 0;
    for f in &frames {
        match f.payload {
            Payload::Environment(e) => {
                let t = e.temperature_c.unwrap();
                let h = e.humidity_pct.unwrap();
                assert!((5.0..30.0).contains(&t), "{t}");
                assert!((30.0..90.0).contains(&h), "{h}");
                let pm25 = e.pm2_5.unwrap();
                assert!(e.pm1_0.unwrap() <= pm25 && pm25 <= e.pm10.unwrap());
                let db = e.noise_db.unwrap();
                assert!((60.0..100.0).contains(&db), "{db}");
            }
            Payload::Traffic(t) => {
                assert!(t.lane == 1 || t.lane == 2);
                assert!((0.0..=100.0).contains(&t.occupancy_pct));
                assert!(t.heavy_count <= t.count + 1);
                vehicles += t.count;
            }
            Payload::Status(s) => assert_eq!(s.sensor_errors, 0),
            other => panic!("unexpected {other:?}"),
        }
    }
    // headways 1.5..12 s on two lanes over 300 s: between 2*300/12.6 and 2*300/2.1 vehicles
    assert!((40..=290).contains(&vehicles), "{vehicles}");
}

#[test]
fn forced_gap_skips_sequence_numbers() {
    let mut node = SimNode::new(1, 2);
    let first = decode(&node.step(0));
    assert_eq!(first.last().unwrap().header.seq, 1);
    node.force_gap(5);
    let next = decode(&run_for(&mut node, 1_000, 10_000, 1_000));
    assert_eq!(next.first().unwrap().header.seq, 7);
}

#[test]
fn reboot_changes_boot_id_and_restarts_seq() {
    let mut node = SimNode::new(3, 9);
    let before = decode(&run_for(&mut node, 0, 20_000, 1_000));
    let old_boot = node.boot_id();
    assert!(before.last().unwrap().header.seq > 3);
    node.reboot();
    assert_ne!(node.boot_id(), old_boot);
    let after = decode(&node.step(21_000));
    assert_eq!(after[0].header.seq, 0);
    assert_eq!(after[0].header.boot_id, node.boot_id());
    assert!(after[0].header.uptime_ms <= 1_000);
    match after[0].payload {
        Payload::Status(s) => assert_eq!(s.resets, 1),
        ref other => panic!("expected status, got {other:?}"),
    }
    assert_eq!(node.boots(), 1);
}

#[test]
fn acks_and_resend_through_feed() {
    let mut node = SimNode::new(4, 4);
    let frames = decode(&run_for(&mut node, 0, 10_000, 1_000));
    assert_eq!(frames.len(), 5);
    assert_eq!(node.health().ring_depth, 5);
    node.feed(&command(
        4,
        1,
        Command::Ack {
            boot_id: node.boot_id(),
            up_to_seq: 2,
        },
    ));
    node.step(10_500);
    assert_eq!(node.health().ring_depth, 2);
    node.feed(&command(4, 2, Command::RequestStatus));
    let resent = decode(&node.step(11_000));
    let seqs: Vec<u32> = resent.iter().map(|f| f.header.seq).collect();
    assert_eq!(seqs, vec![5, 3, 4, 5]); // ack (next seq), two resends, new status
    assert_eq!(resent[1], frames[3]);
}

#[test]
fn sensor_faults_show_as_missing_fields_and_errors() {
    let mut node = SimNode::new(6, 6);
    node.fail_sht3x(1);
    node.silence_pms5003(1);
    let frames = decode(&node.step(0));
    let Payload::Environment(e) = frames[1].payload else {
        panic!("expected environment")
    };
    assert_eq!(
        (e.temperature_c, e.humidity_pct, e.pm2_5),
        (None, None, None)
    );
    assert!(e.noise_db.is_some());
    assert_eq!(node.health().sensor_errors, 2);
    // recovers on the next sample
    let frames = decode(&run_for(&mut node, 1_000, 10_000, 1_000));
    let env = frames
        .iter()
        .find_map(|f| match f.payload {
            Payload::Environment(e) => Some(e),
            _ => None,
        })
        .unwrap();
    assert!(env.temperature_c.is_some() && env.pm2_5.is_some());
}

#[test]
fn sht3x_model_speaks_the_protocol() {
    let clock = Arc::new(SimClock::default());
    let faults = Arc::new(SimFaults::default());
    let mut model = Sht3xModel::new(DEFAULT_ADDRESS, 1, clock.clone(), faults.clone());
    let mut buf = [0u8; 6];
    assert_eq!(
        model.read(DEFAULT_ADDRESS, &mut buf),
        Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
        "no measurement pending"
    );
    assert_eq!(
        model.write(0x45, &[0x24, 0x00]),
        Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address))
    );
    assert_eq!(
        Sht3xModel::encode(25.0, 50.0),
        [0x66, 0x66, 0x93, 0x80, 0x00, 0xA2]
    );
    let mut sensor = Sht3x::new(model, NoDelay, DEFAULT_ADDRESS);
    assert!(sensor.measure().is_ok());
    faults
        .sht_bad_crc
        .store(1, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(sensor.measure(), Err(ioc_node::sht3x::Sht3xError::Crc));
    assert!(sensor.measure().is_ok());
}

#[test]
fn loop_input_follows_fixed_schedule() {
    use embedded_hal::digital::InputPin;
    let clock = Arc::new(SimClock::default());
    let mut pin = LoopInput::fixed(vec![(100, 200)], clock.clone());
    for (t, want) in [
        (0, false),
        (99, false),
        (100, true),
        (199, true),
        (200, false),
    ] {
        clock.set_ms(t);
        assert_eq!(pin.is_high().unwrap(), want, "t={t}");
    }
}

#[test]
fn run_node_writes_to_io_and_reads_commands() {
    let mut node = SimNode::new(8, 8);
    let cmd = command(8, 1, Command::SetSampleInterval { interval_ms: 5_000 });
    let input = spawn_reader(std::io::Cursor::new(cmd));
    // let the reader thread deliver before the run starts
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut out = Vec::new();
    let stats = run_node(
        &mut node,
        &mut out,
        Some(&input),
        20_000,
        100,
        Pace::Simulated,
    )
    .unwrap();
    assert_eq!(stats.steps, 201);
    assert_eq!(stats.bytes_out, out.len() as u64);
    assert!(stats.bytes_in > 0);
    let frames = decode(&out);
    assert!(frames.iter().any(|f| f.payload
        == Payload::CommandAck(CommandAck {
            command_id: 1,
            ok: true
        })));
    assert_eq!(node.app().sample_interval_ms(), 5_000);
    let envs = frames
        .iter()
        .filter(|f| matches!(f.payload, Payload::Environment(_)))
        .count();
    assert_eq!(envs, 5, "t=0, then every 5 s up to 20 s");
}

#[test]
fn sim_node_can_move_to_a_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<SimNode>();
    let handle = std::thread::spawn(|| {
        let mut node = SimNode::new(2, 2);
        node.step(0).len()
    });
    assert!(handle.join().unwrap() > 0);
}
