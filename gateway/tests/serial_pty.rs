//! The serial input driven through real `tokio-serial` ports on pseudo-terminal pairs (no
//! hardware): each protocol's frames with noise, torn and corrupt frames; a port that is missing
//! at start, disappears and comes back; a Modbus RTU bus with a good XY-MD02, a dead slave, a
//! slave answering with a bad CRC and one answering with an exception. Every test reads the
//! exact line protocol back from a real disk buffer.

mod pty_common;

use ioc_gateway::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ioc_gateway::buffer::{self, BufferConfig, BufferReader};
use ioc_gateway::config::{
    ModbusRegisterConfig, RegisterType, SerialInputConfig, SerialProtocol, WordOrder,
};
use ioc_gateway::decode::modbus::{crc16, with_crc};
use ioc_gateway::input::serial::{run_serial_input, SerialPortStatus};
use ioc_gateway::output::Flavor;
use ioc_gateway::pipeline::Ingest;
use pty_common::{hex, pty, relink, PMS_1, PMS_2};

// Frames from PyPMS `tests/captured_data/` (PMSx003.hexdump, SDS01x.hexdump) and the Nova
// SDS011 protocol V1.3 examples (PMS_1, PMS_2 in pty_common); expected values from the matching
// CSV files / the datasheet.
const PMS_3: &str = "42 4d 00 1c 00 00 00 05 00 05 00 00 00 05 00 05 00 8a 00 2e 00 17 00 0f 00 00 00 00 97 00 02 34";
const PMS_1_FIELDS: &str = "n0_3=210i,n0_5=70i,n10=0i,n1_0=45i,n2_5=30i,n5_0=0i,pm10=8,pm10_cf1=8,pm1_0=0,pm1_0_cf1=0,pm2_5=8,pm2_5_cf1=8";
const PMS_2_FIELDS: &str = "n0_3=189i,n0_5=63i,n10=0i,n1_0=42i,n2_5=27i,n5_0=0i,pm10=7,pm10_cf1=7,pm1_0=0,pm1_0_cf1=0,pm2_5=7,pm2_5_cf1=7";
const PMS_3_FIELDS: &str = "n0_3=138i,n0_5=46i,n10=0i,n1_0=23i,n2_5=15i,n5_0=0i,pm10=5,pm10_cf1=5,pm1_0=0,pm1_0_cf1=0,pm2_5=5,pm2_5_cf1=5";
const SDS_DATASHEET: &str = "aa c0 d4 04 3a 0a a1 60 1d ab";
const SDS_REPLY: &str = "aa c5 02 00 00 00 a1 60 03 ab";
const SDS_CAPTURE: &str = "aa c0 09 00 09 00 58 d9 43 ab";

struct Harness {
    reader: BufferReader,
    ingest: Ingest,
    shutdown: Shutdown,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, _) = buffer::open(BufferConfig::new(dir.path(), 64 << 20)).unwrap();
    let shutdown = Shutdown::new();
    Harness {
        reader,
        ingest: Ingest::new(writer, "gw-test", Flavor::V2),
        shutdown,
        _dir: dir,
    }
}

impl Harness {
    fn status_opt(&self, port: &str) -> Option<SerialPortStatus> {
        self.ingest
            .status()
            .serial_ports()
            .into_iter()
            .find(|s| s.port == port)
    }

    fn status(&self, port: &str) -> SerialPortStatus {
        self.status_opt(port)
            .unwrap_or_else(|| panic!("no status for {port}"))
    }

    fn is_up(&self, port: &str) -> bool {
        self.status_opt(port).is_some_and(|s| s.up)
    }
}

impl Harness {
    fn start(&self, cfg: SerialInputConfig, index: usize) -> tokio::task::JoinHandle<()> {
        let ingest = self.ingest.clone();
        let rx = self.shutdown.clone();
        tokio::spawn(async move {
            run_serial_input(cfg, index, ingest, rx).await.unwrap();
        })
    }

    /// Reads lines from the buffer until `n` arrived (or panics after `within`). Returns them
    /// without their timestamps, and checks those are recent and never go backwards.
    async fn lines(&mut self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut lines: Vec<String> = Vec::new();
        let started_ns = ioc_gateway::clock::now_ns() - within.as_nanos() as i64 - 60_000_000_000;
        let mut last_ts = 0i64;
        while lines.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = tokio::time::timeout(left, self.reader.next_batch(1000))
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} lines arrived: {lines:#?}", lines.len()))
                .unwrap();
            let text = String::from_utf8(batch.line_protocol().unwrap()).unwrap();
            for line in text.lines() {
                let (body, ts) = line.rsplit_once(' ').unwrap();
                let ts: i64 = ts.parse().unwrap();
                assert!(ts >= last_ts, "timestamps went backwards");
                assert!(ts > started_ns && ts <= ioc_gateway::clock::now_ns());
                last_ts = ts;
                lines.push(body.to_owned());
            }
            self.reader.ack(&batch).await.unwrap();
        }
        lines
    }

    /// Asserts that nothing more arrives for `quiet`.
    async fn no_more_lines(&mut self, quiet: Duration) {
        if let Ok(batch) = tokio::time::timeout(quiet, self.reader.next_batch(1000)).await {
            let text = String::from_utf8(batch.unwrap().line_protocol().unwrap()).unwrap();
            panic!("unexpected lines: {text}");
        }
    }
}

fn stream_cfg(name: &str, port: &Path, protocol: SerialProtocol) -> SerialInputConfig {
    SerialInputConfig {
        name: Some(name.into()),
        port: port.to_path_buf(),
        baud: 9600,
        protocol,
        sensor_id: Some(format!("{name}-sensor")),
        tags: BTreeMap::from([("district".into(), "dong-xoai".into())]),
        poll_interval_ms: 5000,
        registers: vec![],
        ..SerialInputConfig::new("", SerialProtocol::Pms5003)
    }
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pms5003_frames_with_noise_torn_and_corrupt_frames() {
    let mut h = harness();
    let mut p = pty();
    let task = h.start(stream_cfg("pms-a", &p.path, SerialProtocol::Pms5003), 0);
    wait_for("port up", Duration::from_secs(5), || h.is_up("pms-a")).await;

    let mut corrupt = hex(PMS_2);
    corrupt[20] ^= 0x40;
    let mut stream = hex("00 13 42 ff 4d"); // noise
    stream.extend(hex(PMS_1));
    stream.extend(&hex(PMS_2)[..13]); // torn, then a good frame
    stream.extend(hex(PMS_2));
    stream.extend(&corrupt); // bad checksum
    stream.extend(hex("42 4d 00 24 01 02 03")); // wrong length field (a PMS5003ST header)
    stream.extend(hex(PMS_3));
    // Written in small pieces with pauses, as a UART delivers it.
    for chunk in stream.chunks(7) {
        p.master.write_all(chunk).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let lines = h.lines(3, Duration::from_secs(5)).await;
    let tags =
        "air_quality,district=dong-xoai,gateway=gw-test,model=pms5003,sensor_id=pms-a-sensor";
    assert_eq!(
        lines,
        vec![
            format!("{tags} {PMS_1_FIELDS}"),
            format!("{tags} {PMS_2_FIELDS}"),
            format!("{tags} {PMS_3_FIELDS}"),
        ]
    );
    let s = h.status("pms-a");
    assert_eq!(s.good_frames, 3);
    assert_eq!(
        s.bad_by_reason,
        BTreeMap::from([
            ("noise".to_string(), 1),
            ("truncated".to_string(), 1),
            ("checksum".to_string(), 1),
            ("length".to_string(), 1),
        ])
    );

    // A torn frame at the end of a burst is reported once the line is idle.
    p.master.write_all(&hex(PMS_1)[..20]).unwrap();
    wait_for("idle truncation", Duration::from_secs(3), || {
        h.status("pms-a").bad_by_reason.get("truncated") == Some(&2)
    })
    .await;
    h.no_more_lines(Duration::from_millis(300)).await;

    h.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds011_frames_skip_command_replies() {
    let mut h = harness();
    let mut p = pty();
    let mut cfg = stream_cfg("sds-a", &p.path, SerialProtocol::Sds011);
    cfg.tags.clear();
    let task = h.start(cfg, 1);
    wait_for("port up", Duration::from_secs(5), || h.is_up("sds-a")).await;

    let mut bad = hex(SDS_CAPTURE);
    bad[4] = 0x77;
    let mut stream = hex("ab ab 00"); // noise
    stream.extend(hex(SDS_REPLY)); // command reply: skipped, not an error
    stream.extend(hex(SDS_DATASHEET));
    stream.extend(&hex(SDS_CAPTURE)[..4]); // torn
    stream.extend(hex(SDS_CAPTURE));
    stream.extend(&bad); // bad checksum
    for chunk in stream.chunks(3) {
        p.master.write_all(chunk).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let lines = h.lines(2, Duration::from_secs(5)).await;
    assert_eq!(
        lines,
        vec![
            "air_quality,gateway=gw-test,model=sds011,sensor_id=sds-a-sensor pm10=261.8,pm2_5=123.6",
            "air_quality,gateway=gw-test,model=sds011,sensor_id=sds-a-sensor pm10=0.9,pm2_5=0.9",
        ]
    );
    wait_for("bad checksum counted", Duration::from_secs(2), || {
        h.status("sds-a").bad_frames == 3
    })
    .await;
    let s = h.status("sds-a");
    assert_eq!(s.good_frames, 2);
    assert_eq!(
        s.bad_by_reason,
        BTreeMap::from([
            ("noise".to_string(), 1),
            ("truncated".to_string(), 1),
            ("checksum".to_string(), 1),
        ])
    );
    h.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_missing_at_start_that_vanishes_and_comes_back() {
    let mut h = harness();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyPMS");
    let task = h.start(stream_cfg("pms-hotplug", &link, SerialProtocol::Pms5003), 2);

    // Missing at start: down, with a reason and a time.
    wait_for("down status", Duration::from_secs(2), || {
        h.status_opt("pms-hotplug")
            .is_some_and(|s| s.last_error.is_some())
    })
    .await;
    let s = h.status("pms-hotplug");
    assert!(!s.up);
    assert!(s.down_since.is_some());
    assert!(
        s.last_error.unwrap().contains("cannot open"),
        "error says why"
    );

    // Plugged in.
    let mut first = pty();
    relink(&link, &first.path);
    wait_for("port up", Duration::from_secs(5), || h.is_up("pms-hotplug")).await;
    first.master.write_all(&hex(PMS_1)).unwrap();
    let tags =
        "air_quality,district=dong-xoai,gateway=gw-test,model=pms5003,sensor_id=pms-hotplug-sensor";
    assert_eq!(
        h.lines(1, Duration::from_secs(5)).await,
        vec![format!("{tags} {PMS_1_FIELDS}")]
    );

    // Unplugged: half a frame, then the device disappears.
    first.master.write_all(&hex(PMS_2)[..10]).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let unplugged = Instant::now();
    drop(first);
    std::fs::remove_file(&link).unwrap();
    wait_for("port down", Duration::from_secs(5), || {
        !h.is_up("pms-hotplug")
    })
    .await;
    let s = h.status("pms-hotplug");
    assert!(s.down_since.is_some());
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("lost"),
        "{s:?}"
    );

    // Back, as another pty behind the same path; the torn half frame is not glued to new data.
    let mut second = pty();
    relink(&link, &second.path);
    wait_for("port up again", Duration::from_secs(10), || {
        h.is_up("pms-hotplug")
    })
    .await;
    let reopened_after = unplugged.elapsed();
    second.master.write_all(&hex(PMS_3)).unwrap();
    assert_eq!(
        h.lines(1, Duration::from_secs(5)).await,
        vec![format!("{tags} {PMS_3_FIELDS}")]
    );
    assert!(reopened_after < Duration::from_secs(10));
    h.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Modbus RTU.

#[derive(Clone, Copy)]
enum SlaveBehaviour {
    /// XY-MD02: input register 1 temperature (i16 x0.1), 2 humidity (u16 x0.1).
    XyMd02 {
        temperature_x10: i16,
        humidity_x10: u16,
    },
    Silent,
    BadCrc,
    Exception(u8),
}

/// A tiny RTU responder on the master side of a pty, in a thread. Returns the requests it saw.
fn spawn_bus(
    master: File,
    slaves: BTreeMap<u8, SlaveBehaviour>,
) -> std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let mut master = master;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let n = match master.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            // Requests for functions 3/4 are 8 bytes: slave, fn, addr, count, crc.
            while buf.len() >= 8 {
                let req: Vec<u8> = buf[..8].to_vec();
                if crc16(&req[..6]).to_le_bytes() != [req[6], req[7]] {
                    buf.remove(0);
                    continue;
                }
                buf.drain(..8);
                seen2.lock().unwrap().push(req.clone());
                let (slave, function) = (req[0], req[1]);
                let addr = u16::from_be_bytes([req[2], req[3]]);
                let count = u16::from_be_bytes([req[4], req[5]]);
                let answer = match slaves.get(&slave) {
                    Some(SlaveBehaviour::XyMd02 {
                        temperature_x10,
                        humidity_x10,
                    }) => {
                        if function != 4 || addr < 1 || addr + count > 3 {
                            Some(with_crc(vec![slave, function | 0x80, 0x02]))
                        } else {
                            let regs = [*temperature_x10 as u16, *humidity_x10];
                            let mut body = vec![slave, function, (count * 2) as u8];
                            for r in &regs[usize::from(addr - 1)..usize::from(addr - 1 + count)] {
                                body.extend(r.to_be_bytes());
                            }
                            Some(with_crc(body))
                        }
                    }
                    Some(SlaveBehaviour::BadCrc) => {
                        let mut a = with_crc(vec![slave, function, 4, 0, 200, 1, 100]);
                        let last = a.len() - 1;
                        a[last] ^= 0xff;
                        Some(a)
                    }
                    Some(SlaveBehaviour::Exception(code)) => {
                        Some(with_crc(vec![slave, function | 0x80, *code]))
                    }
                    Some(SlaveBehaviour::Silent) | None => None,
                };
                if let Some(a) = answer {
                    // ~1 ms per byte at 9600 baud; answer after a short turnaround.
                    std::thread::sleep(Duration::from_millis(5));
                    if master.write_all(&a).is_err() {
                        return;
                    }
                }
            }
        }
    });
    seen
}

fn xy_md02_entries(slave: u8, sensor_id: &str) -> Vec<ModbusRegisterConfig> {
    let entry = |address, ty, field: &str| ModbusRegisterConfig {
        slave,
        function: 4,
        address,
        register_type: ty,
        word_order: WordOrder::Big,
        scale: 0.1,
        offset: 0.0,
        field: field.into(),
        measurement: "environment".into(),
        sensor_id: Some(sensor_id.into()),
    };
    vec![
        entry(1, RegisterType::I16, "temperature"),
        entry(2, RegisterType::U16, "humidity"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_bus_with_good_dead_garbling_and_refusing_slaves() {
    let mut h = harness();
    let p = pty();
    let bus_master = p.master.try_clone().unwrap();
    let seen = spawn_bus(
        bus_master,
        BTreeMap::from([
            (
                1,
                SlaveBehaviour::XyMd02 {
                    temperature_x10: -53,
                    humidity_x10: 612,
                },
            ),
            (2, SlaveBehaviour::Silent),
            (3, SlaveBehaviour::BadCrc),
            (4, SlaveBehaviour::Exception(0x02)),
            (
                5,
                SlaveBehaviour::XyMd02 {
                    temperature_x10: 287,
                    humidity_x10: 455,
                },
            ),
        ]),
    );
    let mut registers = Vec::new();
    for (slave, id) in [
        (1, "th-1"),
        (2, "th-2"),
        (3, "th-3"),
        (4, "th-4"),
        (5, "th-5"),
    ] {
        registers.extend(xy_md02_entries(slave, id));
    }
    let cfg = SerialInputConfig {
        name: Some("rs485-a".into()),
        port: p.path.clone(),
        baud: 9600,
        protocol: SerialProtocol::ModbusRtu,
        sensor_id: None,
        tags: BTreeMap::from([("cabinet".into(), "c7".into())]),
        poll_interval_ms: 400,
        registers,
        ..SerialInputConfig::new("", SerialProtocol::Pms5003)
    };
    let task = h.start(cfg, 3);
    // Two polls: slaves 1 and 5 answer each time, the others never make a reading.
    let lines = h.lines(4, Duration::from_secs(10)).await;
    let one =
        "environment,cabinet=c7,gateway=gw-test,sensor_id=th-1 humidity=61.2,temperature=-5.3";
    let five =
        "environment,cabinet=c7,gateway=gw-test,sensor_id=th-5 humidity=45.5,temperature=28.7";
    assert_eq!(lines, vec![one, five, one, five]);

    let s = h.status("rs485-a");
    for reason in [
        "slave=2,reason=timeout",
        "slave=3,reason=bad_crc",
        "slave=4,reason=exception",
    ] {
        assert!(
            s.bad_by_reason.get(reason).copied().unwrap_or(0) >= 2,
            "{reason}: {s:?}"
        );
    }
    assert_eq!(s.bad_by_reason.len(), 3, "{s:?}");
    // One request per slave per poll: both XY-MD02 registers are read together.
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests[0], hex("01 04 00 01 00 02 20 0b"));
    assert!(requests.iter().all(|r| r[4..6] == [0, 2]));
    h.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_xy_md02_map_parses_and_polls() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/xy-md02.toml"
    ))
    .unwrap();
    let config =
        ioc_gateway::config::Config::parse(Path::new("config/xy-md02.toml"), &text).unwrap();
    let mut cfg = config.inputs.serial[0].clone();
    assert_eq!(cfg.protocol, SerialProtocol::ModbusRtu);
    assert_eq!(cfg.registers.len(), 2);

    let mut h = harness();
    let p = pty();
    spawn_bus(
        p.master.try_clone().unwrap(),
        BTreeMap::from([(
            1,
            SlaveBehaviour::XyMd02 {
                temperature_x10: 231,
                humidity_x10: 580,
            },
        )]),
    );
    cfg.port = p.path.clone();
    cfg.poll_interval_ms = 300;
    cfg.name = Some("xy-md02-shipped".into());
    let sensor = cfg.sensor_id.clone().unwrap();
    let district = cfg.tags.get("district").cloned().unwrap();
    let task = h.start(cfg, 4);
    let lines = h.lines(1, Duration::from_secs(5)).await;
    assert_eq!(
        lines,
        vec![format!(
            "environment,district={district},gateway=gw-test,sensor_id={sensor} humidity=58,temperature=23.1"
        )]
    );
    h.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Node frames (ioc-wire), with the gateway's acks written back to the port.

fn node_env_frame(seq: u32, temperature_c: f32) -> Vec<u8> {
    let frame = ioc_wire::Frame {
        header: ioc_wire::Header {
            node_id: 12,
            boot_id: 0xBEEF,
            seq,
            uptime_ms: 1000 + u64::from(seq) * 1000,
        },
        payload: ioc_wire::Payload::Environment(ioc_wire::Environment {
            temperature_c: Some(temperature_c),
            humidity_pct: Some(70.5),
            pm1_0: None,
            pm2_5: Some(12.25),
            pm10: None,
            noise_db: None,
        }),
    };
    let mut buf = [0u8; 512];
    let n = ioc_wire::encode_frame(&frame, &mut buf).unwrap();
    buf[..n].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_frames_become_readings_and_are_acked_on_the_port() {
    let mut h = harness();
    let p = pty();
    let mut cfg = stream_cfg("node-a", &p.path, SerialProtocol::Node);
    cfg.baud = 115_200;
    let task = h.start(cfg, 5);
    wait_for("port up", Duration::from_secs(5), || h.is_up("node-a")).await;

    // What the gateway writes back, decoded on the node side.
    let mut reader = p.master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut dec = ioc_wire::FrameDecoder::new();
        let mut b = [0u8; 256];
        while let Ok(n) = reader.read(&mut b) {
            if n == 0 {
                return;
            }
            for &byte in &b[..n] {
                if let Some(Ok(frame)) = dec.push(byte) {
                    if tx.send(frame).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut stream = node_env_frame(0, 21.5);
    stream.extend(hex("13 37 00")); // garbage, ended by a delimiter
    stream.extend(node_env_frame(1, 22.0));
    let mut corrupt = node_env_frame(2, 99.0);
    corrupt[3] ^= 0x20;
    stream.extend(corrupt);
    stream.extend(node_env_frame(3, 22.5));
    let mut master = p.master.try_clone().unwrap();
    for chunk in stream.chunks(5) {
        master.write_all(chunk).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let lines = h.lines(3, Duration::from_secs(5)).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, t) in lines.iter().zip(["21.5", "22", "22.5"]) {
        assert!(line.starts_with("environment,"), "{line}");
        assert!(line.contains("district=dong-xoai"), "{line}");
        assert!(line.contains("node_id=12"), "{line}");
        assert!(line.contains(&format!("temperature_c={t}")), "{line}");
        assert!(line.contains("humidity_pct=70.5"), "{line}");
        assert!(line.contains("pm2_5=12.25"), "{line}");
    }
    // The gateway acks only what is durable with nothing missing below: seq 2 never arrived
    // (corrupt), so the acks stop at 1 of boot 0xBEEF and the gateway asks for a resend.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut acked_up_to = None;
    let mut resend_requested = false;
    while Instant::now() < deadline && !(acked_up_to == Some(1) && resend_requested) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(frame) => {
                assert_eq!(frame.header.node_id, 12);
                match frame.payload {
                    ioc_wire::Payload::Command(ioc_wire::Command::Ack { boot_id, up_to_seq }) => {
                        assert_eq!(boot_id, 0xBEEF);
                        assert!(up_to_seq <= 1, "ack passes the missing seq 2: {up_to_seq}");
                        acked_up_to = Some(up_to_seq);
                    }
                    ioc_wire::Payload::Command(ioc_wire::Command::RequestStatus) => {
                        resend_requested = true;
                    }
                    _ => {}
                }
            }
            Err(_) => continue,
        }
    }
    assert_eq!(acked_up_to, Some(1));
    assert!(resend_requested);
    let s = h.status("node-a");
    assert_eq!(s.good_frames, 3);
    assert!(s.bad_frames >= 2, "garbage and a corrupt frame: {s:?}");
    h.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}
