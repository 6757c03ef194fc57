//! End-to-end tests of the serial inputs through the real `ioc-gateway` binary into a real
//! VictoriaMetrics, with the serial devices emulated on pseudo-terminals: a PMS5003 stream with
//! noise and a corrupt frame, an XY-MD02 Modbus RTU transmitter, and the real `ioc-node` firmware
//! (via `ioc-node-sim`) with a forced sequence gap and a reboot. Timestamps are the gateway's
//! receive time, so the checks are on exact values, tags and counts.

use ioc_e2e::{wait_until, GatewayProcess, VictoriaMetrics};
use ioc_gateway::decode::modbus::{crc16, with_crc};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GATEWAY_ID: &str = "e2e-serial-gw";

/// One pseudo-terminal pair: the test holds the master (the device side) and keeps the slave
/// open so the line stays up while the gateway reopens it.
struct Pty {
    master: File,
    _slave: OwnedFd,
    path: PathBuf,
}

fn pty() -> Pty {
    let pair = nix::pty::openpty(None, None).unwrap();
    for fd in [&pair.master, &pair.slave] {
        let mut t = tcgetattr(fd).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(fd, SetArg::TCSANOW, &t).unwrap();
    }
    let path = nix::unistd::ttyname(&pair.slave).unwrap();
    Pty {
        master: File::from(pair.master),
        _slave: pair.slave,
        path,
    }
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

// Captured PMS5003 frames (PyPMS `tests/captured_data/PMSx003.hexdump`): (pm1_0, pm2_5, pm10)
// atmospheric = (0, 8, 8), (0, 7, 7), (0, 5, 5); n0_3 = 210, 189, 138.
const PMS_1: &str = "42 4d 00 1c 00 00 00 08 00 08 00 00 00 08 00 08 00 d2 00 46 00 2d 00 1e 00 00 00 00 97 00 02 c5";
const PMS_2: &str = "42 4d 00 1c 00 00 00 07 00 07 00 00 00 07 00 07 00 bd 00 3f 00 2a 00 1b 00 00 00 00 97 00 02 9f";
const PMS_3: &str = "42 4d 00 1c 00 00 00 05 00 05 00 00 00 05 00 05 00 8a 00 2e 00 17 00 0f 00 00 00 00 97 00 02 34";

/// Answers Modbus RTU function-4 reads for one XY-MD02 at `slave`: input register 1 =
/// temperature (i16, tenths of °C), 2 = humidity (u16, tenths of %). Returns the request count.
fn spawn_xy_md02(
    master: File,
    slave: u8,
    temperature_x10: i16,
    humidity_x10: u16,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
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
            while buf.len() >= 8 {
                let req: Vec<u8> = buf[..8].to_vec();
                if crc16(&req[..6]).to_le_bytes() != [req[6], req[7]] {
                    buf.remove(0);
                    continue;
                }
                buf.drain(..8);
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (id, function) = (req[0], req[1]);
                if id != slave {
                    continue;
                }
                let addr = u16::from_be_bytes([req[2], req[3]]);
                let count = u16::from_be_bytes([req[4], req[5]]);
                let answer = if function != 4 || addr < 1 || addr + count > 3 {
                    with_crc(vec![id, function | 0x80, 0x02])
                } else {
                    let regs = [temperature_x10 as u16, humidity_x10];
                    let mut body = vec![id, function, (count * 2) as u8];
                    for r in &regs[usize::from(addr - 1)..usize::from(addr - 1 + count)] {
                        body.extend(r.to_be_bytes());
                    }
                    with_crc(body)
                };
                std::thread::sleep(Duration::from_millis(5));
                if master.write_all(&answer).is_err() {
                    return;
                }
            }
        }
    });
    requests
}

fn write_config(dir: &Path, vm: &VictoriaMetrics, inputs: &str) -> PathBuf {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let text = format!(
        r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data_dir}"

[output.influxdb]
url = "{url}"
api = "v2"
bucket = "telemetry"
flush_interval_ms = 200

[http]
enabled = false

{inputs}
"#,
        data_dir = data_dir.display(),
        url = vm.url(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// All values of every series matching `selector` (after a flush), in series then time order.
fn values(vm: &VictoriaMetrics, selector: &str) -> Vec<f64> {
    vm.force_flush().unwrap();
    vm.export(selector)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.values)
        .collect()
}

#[test]
fn pms5003_and_modbus_over_ptys_reach_victoria_metrics_exactly() {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut pms = pty();
    let bus = pty();
    let inputs = format!(
        r#"[[inputs.serial]]
name = "pms"
port = "{pms_port}"
baud = 9600
protocol = "pms5003"
sensor_id = "pm-1"
tags = {{ district = "d1" }}

[[inputs.serial]]
name = "rs485-th"
port = "{bus_port}"
baud = 9600
protocol = "modbus_rtu"
sensor_id = "th-1"
poll_interval_ms = 500
tags = {{ district = "d1" }}

[[inputs.serial.registers]]
slave = 1
function = 4
address = 1
type = "i16"
scale = 0.1
field = "temperature"
measurement = "environment"

[[inputs.serial.registers]]
slave = 1
function = 4
address = 2
type = "u16"
scale = 0.1
field = "humidity"
measurement = "environment"
"#,
        pms_port = pms.path.display(),
        bus_port = bus.path.display(),
    );
    let config = write_config(dir.path(), &vm, &inputs);
    let requests = spawn_xy_md02(bus.master.try_clone().unwrap(), 1, 235, 612);
    let mut gateway = GatewayProcess::spawn(&config).unwrap();

    // Modbus: the gateway polls every 500 ms; wait for at least 4 points of each field.
    let temp_sel = r#"{__name__="environment_temperature",sensor_id="th-1"}"#;
    let hum_sel = r#"{__name__="environment_humidity",sensor_id="th-1"}"#;
    let ok = wait_until(Duration::from_secs(20), || {
        values(&vm, temp_sel).len() >= 4 && values(&vm, hum_sel).len() >= 4
    });
    assert!(
        ok,
        "modbus readings did not arrive (requests seen {}): {}",
        requests.load(std::sync::atomic::Ordering::SeqCst),
        gateway.log_tail(40)
    );
    let temps = values(&vm, temp_sel);
    let hums = values(&vm, hum_sel);
    println!(
        "modbus: {} requests answered, {} temperature points, {} humidity points",
        requests.load(std::sync::atomic::Ordering::SeqCst),
        temps.len(),
        hums.len()
    );
    assert!(temps.iter().all(|&v| v == 23.5), "temperatures {temps:?}");
    assert!(hums.iter().all(|&v| v == 61.2), "humidities {hums:?}");
    let series = vm.export(temp_sel).unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].label("district"), Some("d1"));
    assert_eq!(series[0].label("gateway"), Some(GATEWAY_ID));

    // PMS5003: the port is open by now (the gateway is running its serial inputs). Noise, three
    // good frames, a torn one and a corrupt one, written in small pieces as a UART delivers them.
    std::thread::sleep(Duration::from_millis(500));
    let mut corrupt = hex(PMS_2);
    corrupt[20] ^= 0x40;
    let mut stream = hex("00 13 42 ff 4d");
    stream.extend(hex(PMS_1));
    stream.extend(&hex(PMS_2)[..13]);
    stream.extend(hex(PMS_2));
    stream.extend(&corrupt);
    stream.extend(hex("17 17"));
    stream.extend(hex(PMS_3));
    for chunk in stream.chunks(7) {
        pms.master.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let pm25_sel = format!(
        r#"{{__name__="air_quality_pm2_5",model="pms5003",sensor_id="pm-1",district="d1",gateway="{GATEWAY_ID}"}}"#
    );
    let ok = wait_until(Duration::from_secs(15), || {
        values(&vm, &pm25_sel).len() >= 3
    });
    assert!(ok, "pms readings did not arrive: {}", gateway.log_tail(40));
    // Give a late (wrong) extra point the chance to show up before checking exact counts.
    std::thread::sleep(Duration::from_millis(800));
    let check = |field: &str, expected: [f64; 3]| {
        let sel = format!(
            r#"{{__name__="air_quality_{field}",model="pms5003",sensor_id="pm-1",district="d1",gateway="{GATEWAY_ID}"}}"#
        );
        let series = {
            vm.force_flush().unwrap();
            vm.export(&sel).unwrap()
        };
        assert_eq!(series.len(), 1, "{field}: {series:?}");
        assert_eq!(series[0].values, expected.to_vec(), "{field}");
        println!("pms5003 {field}: {:?}", series[0].values);
    };
    check("pm2_5", [8.0, 7.0, 5.0]);
    check("pm10", [8.0, 7.0, 5.0]);
    check("pm1_0", [0.0, 0.0, 0.0]);
    check("n0_3", [210.0, 189.0, 138.0]);
    check("n1_0", [45.0, 42.0, 23.0]);

    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(10)).unwrap();
}

#[test]
fn firmware_node_over_pty_with_gap_and_reboot() {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let line = pty();
    let inputs = format!(
        r#"[[inputs.serial]]
name = "node-bus"
port = "{port}"
baud = 115200
protocol = "node"
tags = {{ district = "d2" }}
"#,
        port = line.path.display(),
    );
    let config = write_config(dir.path(), &vm, &inputs);
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    // The real firmware, 1 s samples and 2 s status, in simulated time running 5x real time.
    let mut cfg = ioc_node_sim::SimNodeConfig::new(7, 42);
    cfg.sample_interval_ms = 1_000;
    cfg.status_interval_ms = 2_000;
    let mut node = ioc_node_sim::SimNode::with_config(cfg);
    let acks = ioc_node_sim::spawn_reader(line.master.try_clone().unwrap());
    let mut master = line.master.try_clone().unwrap();
    let boot_ids = {
        let mut ids = vec![node.boot_id()];
        let mut sent = 0usize;
        let mut fed = 0usize;
        let started = Instant::now();
        for tick in 0u64..150 {
            if tick == 50 {
                node.force_gap(3);
            }
            if tick == 100 {
                node.reboot();
                ids.push(node.boot_id());
            }
            while let Ok(bytes) = acks.try_recv() {
                fed += bytes.len();
                node.feed(&bytes);
            }
            let out = node.step(tick * 500);
            sent += out.len();
            master.write_all(&out).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "node: sent {sent} bytes, got {fed} bytes back in {:?}, boot ids {ids:?}",
            started.elapsed()
        );
        assert!(fed > 0, "the gateway never answered the node");
        ids
    };
    assert_ne!(boot_ids[0], boot_ids[1]);

    let temp_sel = r#"{__name__="environment_temperature_c",node_id="7"}"#;
    let status_boot_sel = r#"{__name__="node_status_boot_id",node_id="7"}"#;
    let status_resets_sel = r#"{__name__="node_status_resets",node_id="7"}"#;
    let ok = wait_until(Duration::from_secs(10), || {
        let boots: BTreeSet<u64> = values(&vm, status_boot_sel)
            .into_iter()
            .map(|v| v as u64)
            .collect();
        boots.len() >= 2 && values(&vm, temp_sel).len() >= 40
    });
    let temps = values(&vm, temp_sel);
    let boots: BTreeSet<u64> = values(&vm, status_boot_sel)
        .into_iter()
        .map(|v| v as u64)
        .collect();
    let resets = values(&vm, status_resets_sel);
    println!(
        "vm: {} temperature points, boot ids {boots:?}, resets {resets:?}",
        temps.len()
    );
    assert!(ok, "node readings missing: {}", gateway.log_tail(40));
    let expected: BTreeSet<u64> = boot_ids.iter().map(|&b| u64::from(b)).collect();
    assert_eq!(boots, expected, "node_status_boot_id values");
    assert!(
        resets.contains(&0.0) && resets.contains(&1.0),
        "resets {resets:?}"
    );
    let series = vm.export(temp_sel).unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].label("district"), Some("d2"));
    assert_eq!(series[0].label("gateway"), Some(GATEWAY_ID));
    // 75 s of simulated time at 1 s samples, minus the 3 forced-lost readings: at most 72 + boot.
    assert!(
        temps.len() <= 76,
        "duplicates reached the store: {}",
        temps.len()
    );
    for name in ["traffic_count", "node_status_uptime_s"] {
        let n = values(&vm, &format!(r#"{{__name__="{name}",node_id="7"}}"#)).len();
        println!("vm: {name}: {n} points");
        assert!(n > 0, "{name} missing");
    }
    println!("gateway log tail:\n{}", gateway.log_tail(15));

    // The gateway's node counters saw the forced gap and the reboot (they are also counted as
    // `node_frames_lost_total` and `node_reboots_total` in /metrics).
    let log = gateway.log();
    let lost: u64 = log
        .lines()
        .filter(|l| l.contains("node frames lost"))
        .filter_map(|l| l.split("lost=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(lost, 3, "frames lost reported by the gateway:\n{log}");
    assert_eq!(
        log.matches("a sensor node rebooted").count(),
        1,
        "reboots reported by the gateway:\n{log}"
    );

    gateway.sigterm();
    gateway.wait_exit(Duration::from_secs(10)).unwrap();
}
