//! The firmware's own node application (`ioc-node-sim`) on a pseudo-terminal, against the
//! serial input whose buffer refuses appends for a while: the buffer lives on a 2 MiB tmpfs
//! that the test fills to the last page, so appends fail with a real "no space left on device".
//!
//! Exists to show, end to end through `tokio-serial`, the decoder's two phases and the input's
//! "drop unconfirmed, let the node resend" choice: every `Ack` the node receives is checked
//! against what the buffer holds at that moment (each reading the node still keeps and that ack
//! releases must already be readable from the buffer), and in the end every reading the node
//! produced is in the buffer exactly once, none dropped from the node's ring.
//!
//! Each buffer append gets its own segment (`segment_bytes = 1`), so on a full tmpfs every
//! append needs a new page and fails; a reader drains and acks the buffer all along, so the
//! segment the writer drops on "disk full" holds nothing unsent. Needs `mount -t tmpfs` (root);
//! where mounting is not allowed the test says so and returns.

mod pty_common;

use ioc_gateway::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ioc_gateway::buffer::{self, BufferConfig};
use ioc_gateway::config::{SerialInputConfig, SerialProtocol};
use ioc_gateway::decode::node::NodeDecoder;
use ioc_gateway::input::serial::run_serial_input;
use ioc_gateway::output::Flavor;
use ioc_gateway::pipeline::Ingest;
use ioc_node_sim::{SimNode, SimNodeConfig};
use ioc_wire::{encode_frame, Command as WireCommand, Frame, FrameDecoder, Payload};
use pty_common::pty;

/// Simulated node time runs this many times faster than the wall clock.
const SPEED: u64 = 2;

/// Appends to `path` until the filesystem is full (called again, it takes what was freed).
fn top_up(path: &Path) {
    let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let page = vec![0xa5_u8; 4096];
    while file.write_all(&page).is_ok() {}
    let _ = file.write_all(&[0xa5]);
}

/// Line bodies (without timestamps) read from the buffer so far, in order.
type Store = Arc<Mutex<Vec<String>>>;

/// The line-protocol body the gateway writes for this reading frame.
fn body_of(frame: &Frame, ingest: &Ingest, tags: &BTreeMap<String, String>) -> String {
    let mut dec = NodeDecoder::new(tags.clone(), 1);
    let mut buf = [0u8; ioc_wire::MAX_ENCODED_LEN];
    let n = encode_frame(frame, &mut buf).unwrap();
    let batch = dec.push(&buf[..n], ioc_gateway::clock::now_ns());
    assert_eq!(batch.readings.len(), 1, "{frame:?}");
    let mut lp = Vec::new();
    assert_eq!(ingest.encode("node-refused", batch.readings, &mut lp), 1);
    let line = String::from_utf8(lp).unwrap();
    line.trim_end().rsplit_once(' ').unwrap().0.to_owned()
}

fn count(bodies: &[String], body: &str) -> usize {
    bodies.iter().filter(|b| *b == body).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_readings_refused_by_a_full_disk_are_resent_and_never_acked_early() {
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().join("fs");
    let _fs = match ioc_e2e::Tmpfs::mount(&mount_point, "2m") {
        Ok(fs) => {
            println!("MODE: tmpfs (2 MiB at {})", mount_point.display());
            fs
        }
        Err(e) => {
            println!("SKIPPED: cannot make a filesystem to fill here: {e}");
            return;
        }
    };
    let filler = mount_point.join("filler");
    let cfg = BufferConfig {
        dir: mount_point.join("buffer"),
        max_disk_bytes: 64 << 20,
        segment_bytes: 1,
    };
    let (writer, mut reader, _) = buffer::open(cfg).unwrap();
    let ingest = Ingest::new(writer.clone(), "gw-test", Flavor::V2);

    // The "store": drains the buffer all along, acking what it read.
    let store: Store = Arc::default();
    let drain = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            while let Ok(batch) = reader.next_batch(1000).await {
                let text = String::from_utf8(batch.line_protocol().unwrap()).unwrap();
                {
                    let mut s = store.lock().unwrap();
                    for line in text.lines() {
                        s.push(line.rsplit_once(' ').unwrap().0.to_owned());
                    }
                }
                reader.ack(&batch).await.unwrap();
            }
        })
    };

    let p = pty();
    let tags = BTreeMap::from([("district".to_owned(), "d9".to_owned())]);
    let port_cfg = SerialInputConfig {
        name: Some("node-refused".into()),
        port: p.path.clone(),
        baud: 115_200,
        protocol: SerialProtocol::Node,
        sensor_id: None,
        tags: tags.clone(),
        poll_interval_ms: 5000,
        registers: vec![],
        ..SerialInputConfig::new("", SerialProtocol::Pms5003)
    };
    let shutdown = Shutdown::new();
    let rx = shutdown.clone();
    let task = {
        let ingest = ingest.clone();
        tokio::spawn(async move { run_serial_input(port_cfg, 0, ingest, rx).await.unwrap() })
    };
    let up = Instant::now();
    while !ingest
        .status()
        .serial_ports()
        .iter()
        .any(|s| s.port == "node-refused" && s.up)
    {
        assert!(up.elapsed() < Duration::from_secs(5), "port never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // What the gateway writes to the port, as chunks.
    let (tx, from_gateway) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut port_reader = p.master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        while let Ok(n) = port_reader.read(&mut b) {
            if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut to_gateway = p.master.try_clone().unwrap();

    let mut config = SimNodeConfig::new(31, 77);
    config.sample_interval_ms = 1000;
    config.status_interval_ms = 5000;
    let mut node = SimNode::with_config(config);
    let mut produced: BTreeMap<(u32, u32), String> = BTreeMap::new();
    let mut node_out = FrameDecoder::new();
    let mut gw_in = FrameDecoder::new();
    let (mut acks_checked, mut acks_after_refusal, mut released_checked) = (0u32, 0u32, 0u32);

    // Phases (wall clock): 0-3 s normal, 3-7 s disk full, 7-13 s normal, then time stops for
    // the node (nothing new is due) while it takes the last acks and resends.
    let start = Instant::now();
    let (full_from, full_until, frozen_at, end) = (3.0, 7.0, 13.0, 17.0);
    let mut filled = false;
    let mut emptied = false;
    let mut sim_ms = 0u64;
    let mut reading_frames_sent = 0u64;
    loop {
        let wall = start.elapsed().as_secs_f64();
        if wall >= end {
            break;
        }
        if wall >= full_from && !emptied {
            top_up(&filler);
            filled = true;
        }
        if wall >= full_until && filled && !emptied {
            std::fs::remove_file(&filler).unwrap();
            emptied = true;
        }
        // The gateway's replies: check each ack before the node sees it.
        let mut replies = Vec::new();
        while let Ok(chunk) = from_gateway.try_recv() {
            replies.extend(chunk);
        }
        let mut acks = Vec::new();
        gw_in.push_slice(&replies, |f| {
            if let Ok(Frame {
                payload: Payload::Command(WireCommand::Ack { boot_id, up_to_seq }),
                ..
            }) = f
            {
                acks.push((boot_id, up_to_seq));
            }
        });
        for (boot_id, up_to_seq) in acks {
            acks_checked += 1;
            if filled {
                acks_after_refusal += 1;
            }
            let released: Vec<Frame> = node
                .app()
                .unacked()
                .filter(|f| f.header.boot_id == boot_id && f.header.seq <= up_to_seq)
                .copied()
                .collect();
            // Each reading this ack releases must be in the buffer already: the commit returned
            // before the ack was written, so a short wait covers only the reader's own latency.
            for f in released {
                released_checked += 1;
                let body = body_of(&f, &ingest, &tags);
                let deadline = Instant::now() + Duration::from_secs(1);
                while count(&store.lock().unwrap(), &body) == 0 {
                    assert!(
                        Instant::now() < deadline,
                        "ack up to seq {up_to_seq} releases seq {} which is not in the buffer: {body}",
                        f.header.seq
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        node.feed(&replies);
        if wall < frozen_at {
            sim_ms = (wall * 1000.0) as u64 * SPEED;
        }
        let out = node.step(sim_ms);
        node_out.push_slice(&out, |f| {
            let f = f.unwrap();
            if matches!(
                f.payload,
                Payload::Environment(_) | Payload::Traffic(_) | Payload::Status(_)
            ) {
                reading_frames_sent += 1;
                produced
                    .entry((f.header.boot_id, f.header.seq))
                    .or_insert_with(|| body_of(&f, &ingest, &tags));
            }
        });
        if !out.is_empty() {
            to_gateway.write_all(&out).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let health = node.health();
    let stats = writer.stats();
    println!(
        "node: next_seq {} reading frames sent {reading_frames_sent}, frames_sent {} ring_depth {} ring_dropped {}; buffer: {} append errors, \
         {} lines dropped oldest; {acks_checked} acks checked ({acks_after_refusal} from the \
         refusal on), {released_checked} released readings found in the buffer",
        health.next_seq,
        health.frames_sent,
        health.ring_depth,
        health.ring_dropped,
        stats.append_errors,
        stats.dropped_oldest_lines,
    );
    assert!(
        stats.append_errors >= 3,
        "the buffer never refused: {stats:?}"
    );
    assert_eq!(
        stats.dropped_oldest_lines, 0,
        "the buffer dropped unsent lines to make room (its disk-full policy), the test cannot \
         tell then"
    );
    assert_eq!(health.ring_dropped, 0);
    assert_eq!(
        health.ring_depth, 0,
        "the node still holds unacked readings"
    );
    assert_eq!(
        produced.len() as u32,
        health.next_seq,
        "every seq of one boot"
    );
    assert!(
        reading_frames_sent > produced.len() as u64,
        "the node never resent anything"
    );
    assert!(acks_after_refusal > 5 && released_checked > 50);

    // Every reading the node produced is in the buffer exactly once.
    let mut expected: Vec<String> = produced.into_values().collect();
    expected.sort();
    let mut got = store.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got.len(),
        expected.len(),
        "readings in the buffer vs produced"
    );
    assert_eq!(got, expected);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .unwrap()
        .unwrap();
    drain.abort();
    writer.shutdown().await;
}
