//! CPU cost of the serial input at full line rate, a measurement. Ignored by
//! default; run it in release mode:
//!
//! ```text
//! SERIAL_CPU_PMS=16 SERIAL_CPU_NODE=1 SERIAL_CPU_SECS=20 \
//!   cargo test --release -p ioc-gateway --test serial_cpu -- --ignored --nocapture serial_cpu_at_line_rate
//! ```
//!
//! The sensors live in a child process (this same test binary, in "writer" mode), so that the
//! CPU measured with `getrusage(RUSAGE_SELF)` in the parent is the gateway's alone: the serial
//! input tasks, decoding, line-protocol encoding and the buffer's group-commit thread (gzip +
//! fsync) into a real disk buffer. The child creates the pseudo-terminals, prints their paths,
//! and writes back-to-back frames paced at the line rate: 960 bytes/s at 9600 baud 8N1 (30
//! PMS5003 frames/s, thirty times a real sensor's rate) and 11 520 bytes/s at 115 200 baud for
//! node frames (drained of the gateway's acks).

use ioc_gateway::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ioc_gateway::buffer::{self, BufferConfig};
use ioc_gateway::config::{SerialInputConfig, SerialProtocol};
use ioc_gateway::input::serial::run_serial_input;
use ioc_gateway::output::Flavor;
use ioc_gateway::pipeline::Ingest;
use nix::sys::resource::{getrusage, UsageWho};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// PyPMS `tests/captured_data/PMSx003.hexdump`, first frame.
const PMS: [u8; 32] = [
    0x42, 0x4d, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x08, 0x00, 0x08,
    0x00, 0xd2, 0x00, 0x46, 0x00, 0x2d, 0x00, 0x1e, 0x00, 0x00, 0x00, 0x00, 0x97, 0x00, 0x02, 0xc5,
];

fn node_frame(seq: u32, out: &mut Vec<u8>) {
    let frame = ioc_wire::Frame {
        header: ioc_wire::Header {
            node_id: 7,
            boot_id: 0xC0FFEE,
            seq,
            uptime_ms: u64::from(seq) * 4,
        },
        payload: ioc_wire::Payload::Environment(ioc_wire::Environment {
            temperature_c: Some(28.5),
            humidity_pct: Some(71.0),
            pm1_0: Some(9.0),
            pm2_5: Some(14.0),
            pm10: Some(20.0),
            noise_db: Some(63.5),
        }),
    };
    let mut buf = [0u8; 512];
    let n = ioc_wire::encode_frame(&frame, &mut buf).unwrap();
    out.extend_from_slice(&buf[..n]);
}

/// Writer mode: runs in the child process only.
#[test]
#[ignore]
fn serial_cpu_writer() {
    if std::env::var("SERIAL_CPU_ROLE").as_deref() != Ok("writer") {
        return;
    }
    let pms_ports = env_num("SERIAL_CPU_PMS", 16) as usize;
    let node_ports = env_num("SERIAL_CPU_NODE", 1) as usize;
    let secs = env_num("SERIAL_CPU_SECS", 20) + 3;
    let mut handles = Vec::new();
    let mut keep = Vec::new();
    for i in 0..pms_ports + node_ports {
        let ioc_e2e::Pty {
            mut master,
            slave,
            path,
        } = ioc_e2e::pty();
        let node = i >= pms_ports;
        println!(
            "PTY {} {}",
            if node { "node" } else { "pms" },
            path.display()
        );
        keep.push(slave);
        if node {
            let mut drain = master.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n) = drain.read(&mut b) {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
        let rate = if node { 11_520.0 } else { 960.0 };
        handles.push(std::thread::spawn(move || {
            let start = Instant::now();
            let mut stream = Vec::new();
            let mut written = 0usize;
            let mut seq = 0u32;
            while start.elapsed() < Duration::from_secs(secs) {
                let due = (start.elapsed().as_secs_f64() * rate) as usize;
                let want = due.saturating_sub(written);
                while stream.len() < want {
                    if node {
                        node_frame(seq, &mut stream);
                        seq += 1;
                    } else {
                        stream.extend_from_slice(&PMS);
                    }
                }
                let n = want.min(stream.len());
                if n > 0 {
                    if master.write_all(&stream[..n]).is_err() {
                        return;
                    }
                    stream.drain(..n);
                    written += n;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    std::io::stdout().flush().unwrap();
    for h in handles {
        h.join().unwrap();
    }
    drop(keep);
}

fn cpu_seconds() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    tv(u.user_time()) + tv(u.system_time())
}

#[test]
#[ignore]
fn serial_cpu_at_line_rate() {
    let secs = env_num("SERIAL_CPU_SECS", 20);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "serial_cpu_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SERIAL_CPU_ROLE", "writer")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let expected = env_num("SERIAL_CPU_PMS", 16) + env_num("SERIAL_CPU_NODE", 1);
    let mut ports: Vec<(String, PathBuf)> = Vec::new();
    while (ports.len() as u64) < expected {
        let line = lines.next().unwrap().unwrap();
        // libtest may print "test serial_cpu_writer ... " on the same line before ours.
        if let Some(rest) = line.find("PTY ").map(|at| &line[at + 4..]) {
            let (kind, path) = rest.split_once(' ').unwrap();
            ports.push((kind.to_owned(), PathBuf::from(path)));
        }
    }
    std::thread::spawn(move || for _ in lines {});

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (writer, _reader, _) = buffer::open(BufferConfig::new(dir.path(), 1 << 30)).unwrap();
    let ingest = Ingest::new(writer, "gw-cpu", Flavor::V2);
    let tx = Shutdown::new();
    let rx = tx.clone();
    let mut names = Vec::new();
    for (i, (kind, path)) in ports.iter().enumerate() {
        let name = format!("cpu-{kind}-{i}");
        names.push(name.clone());
        let cfg = SerialInputConfig {
            name: Some(name),
            port: path.clone(),
            baud: if kind == "node" { 115_200 } else { 9600 },
            protocol: if kind == "node" {
                SerialProtocol::Node
            } else {
                SerialProtocol::Pms5003
            },
            sensor_id: Some(format!("s{i}")),
            tags: BTreeMap::from([("district".into(), "bench".into())]),
            poll_interval_ms: 5000,
            registers: vec![],
            ..SerialInputConfig::new("", SerialProtocol::Pms5003)
        };
        rt.spawn(run_serial_input(cfg, i, ingest.clone(), rx.clone()));
    }
    let frames = |prefix: &str| -> u64 {
        ingest
            .status()
            .serial_ports()
            .iter()
            .filter(|s| s.port.starts_with(prefix))
            .map(|s| s.good_frames)
            .sum()
    };
    let bad = || -> u64 {
        ingest
            .status()
            .serial_ports()
            .iter()
            .filter(|s| s.port.starts_with("cpu-"))
            .map(|s| s.bad_frames)
            .sum()
    };
    std::thread::sleep(Duration::from_secs(2)); // warm-up
    let (c0, t0, p0, n0, b0) = (
        cpu_seconds(),
        Instant::now(),
        frames("cpu-pms"),
        frames("cpu-node"),
        bad(),
    );
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, wall, p1, n1, b1) = (
        cpu_seconds(),
        t0.elapsed().as_secs_f64(),
        frames("cpu-pms"),
        frames("cpu-node"),
        bad(),
    );
    tx.trigger();
    let stats = ingest.writer().stats();
    let cpu = c1 - c0;
    let pms_ports = ports.iter().filter(|(k, _)| k == "pms").count();
    let node_ports = ports.len() - pms_ports;
    println!(
        "SERIAL CPU: {pms_ports} PMS5003 ports @9600 + {node_ports} node ports @115200, {wall:.1} s: \
         cpu {cpu:.2} s = {:.1}% of one core; {:.1} PMS frames/s total ({:.1}/port), {:.1} node frames/s, \
         bad frames {}, fsyncs {}",
        100.0 * cpu / wall,
        (p1 - p0) as f64 / wall,
        (p1 - p0) as f64 / wall / pms_ports.max(1) as f64,
        (n1 - n0) as f64 / wall,
        b1 - b0,
        stats.data_fsyncs,
    );
    let _ = child.wait();
    drop(rt);
}
