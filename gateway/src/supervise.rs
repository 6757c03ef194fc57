//! systemd supervision: `READY=1`, `WATCHDOG=1` driven by the pipeline's own progress,
//! `STATUS=` and `STOPPING=1` over the `sd_notify` protocol.
//!
//! Why it exists: with `Type=notify` systemd knows the gateway is up only when it says so, and
//! with `WatchdogSec=` it restarts a gateway that stops saying it is alive. A timer that pings
//! regardless would keep a gateway whose SD card has wedged "healthy" for ever, so the pings
//! here are withheld as soon as the buffer has a disk operation (a group commit of the writer
//! thread, a read or ack of the forwarder) that has not returned for longer than the ping
//! interval ([`WatchdogGate`]), and they also stop if the async runtime itself stops running
//! tasks (the ping is sent from one). A store that is down is not a reason to be restarted (the
//! buffer is made for it) and does not stop the pings.
//!
//! The protocol: one datagram per message to the Unix socket named by `NOTIFY_SOCKET` (a path,
//! or an abstract name written `@name`), `KEY=value` lines. The watchdog interval is half of
//! `WATCHDOG_USEC` (when `WATCHDOG_PID`, if set, is this process). Without `NOTIFY_SOCKET`
//! (not started by systemd, or `Type=simple`) nothing is sent and nothing is checked.
//!
//! `READY=1` is sent once every input started has registered and reports up (MQTT connected,
//! serial port open, webhook listening), or after [`READY_WAIT`] when some are not (a broker that is down at boot must not
//! make systemd give up on a gateway that buffers); `STATUS=` then names the inputs that are
//! down. `STATUS=` is refreshed every [`STATUS_EVERY`].

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::shutdown::Shutdown;
use crate::status::Observers;

/// The longest `READY=1` waits for every input to come up.
pub const READY_WAIT: Duration = Duration::from_secs(20);
/// How often `STATUS=` is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How often the inputs are looked at while waiting to be ready.
const READY_POLL: Duration = Duration::from_millis(100);
/// The longest `STATUS=` line sent (systemd shows one line).
const STATUS_MAX_CHARS: usize = 200;

/// `NOTIFY_SOCKET` names no usable socket.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name (@name)")]
    BadAddress(String),
    #[error("cannot open a socket for NOTIFY_SOCKET {addr:?}")]
    Socket {
        addr: String,
        #[source]
        source: io::Error,
    },
}

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: String,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names; `Ok(None)` when it is unset or empty.
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(addr) if !addr.is_empty() => Notifier::connect(&addr.to_string_lossy()).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for `addr`: an absolute path, or `@name` for an abstract socket.
    pub fn connect(addr: &str) -> Result<Notifier, NotifyError> {
        let socket_error = |source| NotifyError::Socket {
            addr: addr.to_owned(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(socket_error)?;
        if let Some(name) = addr.strip_prefix('@') {
            connect_abstract(&socket, name.as_bytes()).map_err(socket_error)?;
        } else if addr.starts_with('/') {
            socket.connect(addr).map_err(socket_error)?;
        } else {
            return Err(NotifyError::BadAddress(addr.to_owned()));
        }
        socket.set_nonblocking(true).map_err(socket_error)?;
        Ok(Notifier {
            socket,
            addr: addr.to_owned(),
        })
    }

    /// Sends one message (`KEY=value` lines). Never blocks: a full socket loses the message.
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket.send(message.as_bytes()).map(|_| ())
    }

    /// Sends `message`, logging (not failing) when it cannot be sent.
    fn send_logged(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::warn!(
                socket = %self.addr,
                "cannot notify systemd ({}): {e}",
                message.lines().next().unwrap_or_default()
            );
        }
    }
}

#[cfg(target_os = "linux")]
fn connect_abstract(socket: &UnixDatagram, name: &[u8]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.connect_addr(&addr)
}

#[cfg(not(target_os = "linux"))]
fn connect_abstract(_socket: &UnixDatagram, _name: &[u8]) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// The watchdog ping interval systemd asks for: half of `WATCHDOG_USEC`, if that is set, valid,
/// and meant for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval(&usec, pid.as_deref(), std::process::id())
}

/// [`watchdog_interval_from_env`] on given values.
pub fn watchdog_interval(usec: &str, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec: u64 = usec.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// What the pipeline looks like at one watchdog tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// How long the buffer's oldest disk operation still running has been running.
    pub disk_stuck_for: Option<Duration>,
}

/// What to do at one watchdog tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send `WATCHDOG=1`.
    Ping,
    /// Do not; `first` is true on the first tick of this stall (to log it once), and `why`
    /// says what is stuck.
    Withhold { why: String, first: bool },
}

/// Decides, tick by tick, whether the pipeline still makes progress: pure, no clock of its own.
#[derive(Debug, Clone)]
pub struct WatchdogGate {
    stall_limit: Duration,
    stalled: bool,
}

impl WatchdogGate {
    /// A disk operation running longer than `stall_limit` withholds the pings.
    pub fn new(stall_limit: Duration) -> Self {
        WatchdogGate {
            stall_limit,
            stalled: false,
        }
    }

    /// The verdict for `progress`; a stall that ends (the disk answers again) pings again.
    pub fn tick(&mut self, progress: Progress) -> Verdict {
        match progress.disk_stuck_for {
            Some(stuck) if stuck > self.stall_limit => {
                let first = !self.stalled;
                self.stalled = true;
                Verdict::Withhold {
                    why: format!(
                        "a disk operation of the buffer has not returned for {} s (disk hung?)",
                        stuck.as_secs()
                    ),
                    first,
                }
            }
            _ => {
                self.stalled = false;
                Verdict::Ping
            }
        }
    }
}

/// The facts behind one `STATUS=` line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusFacts {
    pub inputs_up: usize,
    pub inputs_total: usize,
    /// Names of the inputs that are down (shown first few).
    pub inputs_down: Vec<String>,
    pub unsent_lines: u64,
    /// Seconds since the store last confirmed a batch; `None` if it never has.
    pub last_success_ago_s: Option<u64>,
    /// The forwarder's last error, if its last attempt failed.
    pub store_error: Option<String>,
    /// Why the watchdog is withheld, if it is.
    pub stalled: Option<String>,
}

/// Every input of the config has registered and is up. Inputs register from their own tasks, so
/// an empty registry just after start is not "all up".
fn all_inputs_up(f: &StatusFacts, expected_inputs: usize) -> bool {
    f.inputs_total >= expected_inputs && f.inputs_up == f.inputs_total
}

/// One line for `systemctl status`, at most [`STATUS_MAX_CHARS`] characters.
pub fn status_line(f: &StatusFacts) -> String {
    let mut line = format!("inputs up {}/{}", f.inputs_up, f.inputs_total);
    if !f.inputs_down.is_empty() {
        let shown: Vec<&str> = f.inputs_down.iter().take(3).map(String::as_str).collect();
        line.push_str(&format!(" (down: {}", shown.join(", ")));
        if f.inputs_down.len() > shown.len() {
            line.push_str(&format!(" +{}", f.inputs_down.len() - shown.len()));
        }
        line.push(')');
    }
    line.push_str(&format!("; unsent {} lines; store ", f.unsent_lines));
    match f.last_success_ago_s {
        Some(s) => line.push_str(&format!("ok {s} s ago")),
        None => line.push_str("not reached yet"),
    }
    if let Some(e) = &f.store_error {
        line.push_str(&format!(", failing: {e}"));
    }
    if let Some(why) = &f.stalled {
        line.push_str(&format!("; STALLED: {why}"));
    }
    // One line, bounded (an error text may hold anything).
    let line = line.replace(['\n', '\r'], " ");
    match line.char_indices().nth(STATUS_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

fn facts(observers: &Observers, stalled: Option<String>) -> StatusFacts {
    let inputs = observers.inputs.snapshot();
    let inputs_down: Vec<String> = inputs
        .iter()
        .filter(|(_, s)| !s.up)
        .map(|(name, _)| name.clone())
        .collect();
    // The output furthest behind speaks for all of them in one line.
    let store = observers
        .outputs
        .worst()
        .map(|(_, s)| s)
        .unwrap_or_default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    StatusFacts {
        inputs_up: inputs.len() - inputs_down.len(),
        inputs_total: inputs.len(),
        inputs_down,
        unsent_lines: observers.buffer.stats().unsent_lines,
        last_success_ago_s: store
            .last_success_ms
            .map(|ms| now_ms.saturating_sub(ms) / 1000),
        store_error: store.last_error,
        stalled,
    }
}

/// Sends one message to systemd when started with `NOTIFY_SOCKET` (a reload's `RELOADING=1`
/// and `READY=1`); nothing otherwise. A socket that cannot be reached is logged.
pub fn notify_once(message: &str) {
    match Notifier::from_env() {
        Ok(Some(n)) => n.send_logged(message),
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}; not notifying systemd"),
    }
}

/// `text` as one `STATUS=` line: newlines folded, at most 200 characters.
pub fn one_line(text: &str) -> String {
    let folded = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match folded.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &folded[..i]),
        None => folded,
    }
}

/// Tells systemd how the gateway is doing until `stop` is triggered, then sends `STOPPING=1`.
/// Does nothing but wait for `stop` when not started with `NOTIFY_SOCKET`.
///
/// `expected_inputs` is how many inputs the config has: each registers itself from its own task,
/// so until all have, an empty registry must not read as "every input is up".
pub async fn run(observers: Observers, stop: Shutdown, expected_inputs: usize) {
    let notifier = match Notifier::from_env() {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("{e}; not notifying systemd");
            return;
        }
    };
    let watchdog = watchdog_interval_from_env();
    tracing::info!(
        socket = %notifier.addr,
        watchdog_interval_ms = watchdog.map(|d| d.as_millis() as u64),
        "notifying systemd (Type=notify)"
    );
    let mut gate = WatchdogGate::new(watchdog.unwrap_or(Duration::MAX));
    let mut stalled = None;
    let ping = |gate: &mut WatchdogGate, stalled: &mut Option<String>| {
        if watchdog.is_none() {
            return;
        }
        let progress = Progress {
            disk_stuck_for: observers.buffer.disk_stuck_for(),
        };
        match gate.tick(progress) {
            Verdict::Ping => {
                if stalled.take().is_some() {
                    tracing::info!("the buffer's disk answers again; watchdog pings resume");
                }
                notifier.send_logged("WATCHDOG=1");
            }
            Verdict::Withhold { why, first } => {
                if first {
                    tracing::error!(
                        "{why}: withholding the systemd watchdog ping, systemd will restart the gateway if it does not recover"
                    );
                }
                *stalled = Some(why);
            }
        }
    };

    // Ready once every input is up, or after READY_WAIT.
    let wait_start = tokio::time::Instant::now();
    let mut last_ping = wait_start;
    loop {
        let f = facts(&observers, None);
        if all_inputs_up(&f, expected_inputs) || wait_start.elapsed() >= READY_WAIT {
            if !f.inputs_down.is_empty() {
                tracing::warn!(
                    down = ?f.inputs_down,
                    "telling systemd the gateway is ready although some inputs are not up after {} s (they keep retrying)",
                    READY_WAIT.as_secs()
                );
            }
            notifier.send_logged(&format!("READY=1\nSTATUS={}", status_line(&f)));
            break;
        }
        if watchdog.is_some_and(|w| last_ping.elapsed() >= w) {
            ping(&mut gate, &mut stalled);
            last_ping = tokio::time::Instant::now();
        }
        tokio::select! {
            () = tokio::time::sleep(READY_POLL) => {}
            () = stop.wait() => {
                notifier.send_logged("STOPPING=1");
                return;
            }
        }
    }

    let tick = watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY));
    let mut last_status = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.wait() => break,
        }
        ping(&mut gate, &mut stalled);
        if last_status.elapsed() >= STATUS_EVERY {
            notifier.send_logged(&format!(
                "STATUS={}",
                status_line(&facts(&observers, stalled.clone()))
            ));
            last_status = tokio::time::Instant::now();
        }
    }
    notifier.send_logged("STOPPING=1\nSTATUS=stopping: flushing the buffer");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_half_the_usec_and_only_for_this_process() {
        assert_eq!(
            watchdog_interval("4000000", None, 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_interval("4000000", Some("7"), 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog_interval("4000000", Some("8"), 7), None);
        assert_eq!(watchdog_interval("0", None, 7), None);
        assert_eq!(watchdog_interval("soon", None, 7), None);
    }

    #[test]
    fn a_stuck_disk_withholds_the_pings_once_logged_and_recovery_resumes_them() {
        let mut gate = WatchdogGate::new(Duration::from_secs(2));
        let idle = Progress::default();
        let busy = |s| Progress {
            disk_stuck_for: Some(Duration::from_secs(s)),
        };
        assert_eq!(gate.tick(idle), Verdict::Ping);
        // A slow but finishing write is progress.
        assert_eq!(gate.tick(busy(1)), Verdict::Ping);
        assert!(matches!(
            gate.tick(busy(3)),
            Verdict::Withhold { first: true, .. }
        ));
        assert!(matches!(
            gate.tick(busy(5)),
            Verdict::Withhold { first: false, .. }
        ));
        assert_eq!(gate.tick(idle), Verdict::Ping);
        assert!(matches!(
            gate.tick(busy(3)),
            Verdict::Withhold { first: true, .. }
        ));
    }

    #[test]
    fn the_status_line_is_one_bounded_line() {
        let f = StatusFacts {
            inputs_up: 1,
            inputs_total: 5,
            inputs_down: (0..4).map(|i| format!("mqtt-{i}")).collect(),
            unsent_lines: 12,
            last_success_ago_s: Some(3),
            store_error: Some("HTTP 503\nfrom the store".into()),
            stalled: None,
        };
        let line = status_line(&f);
        assert_eq!(
            line,
            "inputs up 1/5 (down: mqtt-0, mqtt-1, mqtt-2 +1); unsent 12 lines; store ok 3 s ago, failing: HTTP 503 from the store"
        );
        let long = StatusFacts {
            store_error: Some("x".repeat(1000)),
            ..StatusFacts::default()
        };
        let line = status_line(&long);
        assert!(line.chars().count() <= STATUS_MAX_CHARS + 1);
        assert!(line.starts_with("inputs up 0/0; unsent 0 lines; store not reached yet"));
    }

    #[test]
    fn not_ready_before_every_configured_input_has_registered() {
        let none_yet = StatusFacts::default();
        assert!(
            !all_inputs_up(&none_yet, 1),
            "0/0 of 1 configured is not ready"
        );
        assert!(
            all_inputs_up(&none_yet, 0),
            "a gateway without inputs is ready"
        );
        let one_of_two = StatusFacts {
            inputs_up: 1,
            inputs_total: 1,
            ..StatusFacts::default()
        };
        assert!(!all_inputs_up(&one_of_two, 2));
        let both = StatusFacts {
            inputs_up: 2,
            inputs_total: 2,
            ..StatusFacts::default()
        };
        assert!(all_inputs_up(&both, 2));
        let one_down = StatusFacts {
            inputs_up: 1,
            inputs_total: 2,
            inputs_down: vec!["mqtt-1".into()],
            ..StatusFacts::default()
        };
        assert!(!all_inputs_up(&one_down, 2));
    }

    #[test]
    fn messages_reach_a_socket_by_path_and_by_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("ioc-gateway-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let server = UnixDatagram::bind_addr(&addr).unwrap();
            let n = Notifier::connect(&format!("@{name}")).unwrap();
            n.send("WATCHDOG=1").unwrap();
            let len = server.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], b"WATCHDOG=1");
        }
        assert!(matches!(
            Notifier::connect("relative.sock"),
            Err(NotifyError::BadAddress(_))
        ));
    }
}
