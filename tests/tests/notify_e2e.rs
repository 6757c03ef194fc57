//! systemd supervision of the real binary: `READY=1` once the inputs are up, `WATCHDOG=1` while
//! the pipeline makes progress and none while its disk is wedged, `STOPPING=1` on SIGTERM.
//!
//! Why it exists: the unit runs the gateway with `Type=notify` and `WatchdogSec=`, so systemd
//! learns it is up, and restarts it when it hangs, only from these messages. A watchdog that
//! pings from a free-running timer would keep a gateway with a hung SD card "healthy" for ever.
//!
//! What it does: the test binds a Unix datagram socket, starts `ioc-gateway run` with
//! `NOTIFY_SOCKET` naming it and `WATCHDOG_USEC=4000000` (a ping every 2 s), a real mosquitto
//! and VictoriaMetrics, and the gateway's `data_dir` on a loop-mounted ext4 image. It checks:
//!
//! - `READY=1` arrives, with a `STATUS=` saying `inputs up 1/1`, and by then the broker has seen
//!   the gateway's connection;
//! - `WATCHDOG=1` keeps arriving while messages flow;
//! - after `fsfreeze -f` (every write and fsync on the buffer's disk blocks, as on a hung card)
//!   and a few more messages, the gateway logs that it withholds the ping and no `WATCHDOG=1`
//!   arrives for three intervals; `STATUS=` says `STALLED`;
//! - after the thaw the pings resume; SIGHUP reloads in place (RELOADING=1, READY=1); SIGTERM
//!   brings `STOPPING=1` and exit 0.
//!
//! Needs root (loop devices, mount, fsfreeze), as the test suite has on its machines.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ioc_e2e::{
    wait_until, FreezableFs, GatewayProcess, HeavyTestLock, Mosquitto, MqttPublisher,
    VictoriaMetrics,
};
use tempfile::TempDir;

const GATEWAY_ID: &str = "notify-gw";
const WATCHDOG_USEC: u64 = 4_000_000;
const INTERVAL: Duration = Duration::from_micros(WATCHDOG_USEC / 2);

/// Every message the gateway sent to the socket, in order, with when it arrived.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(Instant, String)>>>);

impl Received {
    fn listen(socket: UnixDatagram) -> Received {
        let received = Received::default();
        let into = received.clone();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test process does; bounded by the test's own run time.
            loop {
                if let Ok(len) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                    into.lock().push((Instant::now(), text));
                }
                if Arc::strong_count(&into.0) == 1 {
                    return;
                }
            }
        });
        received
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Messages holding the line `line`.
    fn count(&self, line: &str) -> usize {
        self.lock()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .count()
    }
    fn first(&self, line: &str) -> Option<String> {
        self.lock()
            .iter()
            .find(|(_, m)| m.lines().any(|l| l == line))
            .map(|(_, m)| m.clone())
    }
    fn last_status(&self) -> Option<String> {
        self.lock()
            .iter()
            .rev()
            .find_map(|(_, m)| m.lines().find_map(|l| l.strip_prefix("STATUS=")))
            .map(str::to_owned)
    }
    fn all(&self) -> String {
        self.lock()
            .iter()
            .map(|(_, m)| m.replace('\n', " | "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[test]
fn ready_after_the_inputs_watchdog_from_progress_stops_on_a_wedged_disk() {
    let _heavy = HeavyTestLock::acquire();
    let fs = FreezableFs::new()
        .unwrap_or_else(|e| panic!("this test needs root for a loop-mounted ext4 image: {e}"));
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = TempDir::new().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let received = Received::listen(UnixDatagram::bind(&socket_path).unwrap());
    let data = fs.mount.join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
url = "{mqtt}"
client_id = "{GATEWAY_ID}"
topics = ["city/+/env/+"]
qos = 1
measurement = "notify"
topic_tags = "_/district/_/sensor_id"

[output.influxdb]
url = "{store}"
api = "v2"
org = "ioc"
bucket = "telemetry"
flush_interval_ms = 100

[http]
enabled = false
"#,
            data = data.display(),
            mqtt = broker.url(),
            store = vm.url(),
        ),
    )
    .unwrap();
    let usec = WATCHDOG_USEC.to_string();
    let mut gateway = GatewayProcess::spawn_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", &usec),
        ],
    )
    .unwrap();

    // READY=1, once the MQTT input is connected.
    assert!(
        wait_until(Duration::from_secs(30), || received.count("READY=1") == 1),
        "no READY=1; received:\n{}\n{}",
        received.all(),
        gateway.log_tail(30)
    );
    assert!(
        broker.connection_count(GATEWAY_ID) >= 1,
        "READY=1 before the broker saw the gateway\n{}",
        broker.log_tail(20)
    );
    let ready = received.first("READY=1").unwrap_or_default();
    assert!(ready.contains("STATUS=inputs up 1/1"), "{ready}");

    // Pings while messages flow.
    let mut publisher = MqttPublisher::connect(&broker.url(), "notify-pub").unwrap();
    let mut k = 0u64;
    let mut send = |p: &mut MqttPublisher, n: u64| {
        for _ in 0..n {
            p.publish(
                &format!("city/d1/env/s{}", k % 10),
                format!(r#"{{"n":{k}}}"#),
            )
            .unwrap();
            k += 1;
        }
    };
    let pings_before = received.count("WATCHDOG=1");
    send(&mut publisher, 200);
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    assert!(
        wait_until(Duration::from_secs(30), || received.count("WATCHDOG=1")
            >= pings_before + 3),
        "pings do not keep coming; received:\n{}\n{}",
        received.all(),
        gateway.log_tail(30)
    );

    // The disk wedges while messages keep coming: the pings stop.
    fs.freeze();
    send(&mut publisher, 50);
    assert!(
        wait_until(Duration::from_secs(40), || gateway
            .log()
            .contains("withholding the systemd watchdog ping")),
        "the wedge was not noticed; received:\n{}\n{}",
        received.all(),
        gateway.log_tail(30)
    );
    // A ping decided just before the log line may still be in flight: settle, then watch.
    std::thread::sleep(Duration::from_millis(500));
    let pings_at_stall = received.count("WATCHDOG=1");
    std::thread::sleep(INTERVAL * 3);
    let pings_after = received.count("WATCHDOG=1");
    let status = received.last_status().unwrap_or_default();
    fs.thaw();
    assert_eq!(
        pings_after,
        pings_at_stall,
        "WATCHDOG=1 kept coming with the disk frozen; received:\n{}",
        received.all()
    );
    assert!(status.contains("STALLED"), "{status}");

    // The disk answers again: pings resume; SIGTERM: STOPPING=1 and a clean exit.
    assert!(
        wait_until(Duration::from_secs(30), || received.count("WATCHDOG=1")
            > pings_after),
        "pings did not resume after the thaw; received:\n{}\n{}",
        received.all(),
        gateway.log_tail(30)
    );
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));

    // SIGHUP (what `systemctl reload` sends) reloads the config in place: systemd is told
    // RELOADING=1, then READY=1 again with the outcome.
    let readies = received.count("READY=1");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(gateway.pid().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || gateway
            .log()
            .contains("config reloaded")),
        "{}",
        gateway.log_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(5), || received.count("RELOADING=1")
            == 1
            && received.count("READY=1") == readies + 1),
        "reload not told to systemd; received:\n{}",
        received.all()
    );
    assert!(
        received.all().contains("STATUS=config reloaded"),
        "{}",
        received.all()
    );
    assert!(gateway.is_running(), "SIGHUP stopped the gateway");
    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(40)).unwrap();
    assert!(status.success(), "{status:?}\n{}", gateway.log_tail(30));
    assert!(
        wait_until(Duration::from_secs(5), || received.count("STOPPING=1") == 1),
        "no STOPPING=1; received:\n{}",
        received.all()
    );
    drop(vm);
}
