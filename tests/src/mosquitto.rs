//! A real mosquitto broker for a test: loopback listener on a free port, anonymous access, persistence
//! in a temp dir (so a broker restart keeps persistent sessions and their queued QoS 1 messages), and no
//! limit on queued messages (a gateway that is down must find everything when it comes back).

use crate::server::{ChildServer, ReadyProbe};
use crate::{free_port, HarnessError, Result, READY_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// A mosquitto child process. Killed on `Drop`.
pub struct Mosquitto {
    port: u16,
    server: ChildServer,
    config_path: PathBuf,
    // Last field: dropped after the server is killed.
    dir: TempDir,
}

impl Mosquitto {
    /// Starts mosquitto with the default test config (see the module docs).
    pub fn start() -> Result<Self> {
        Self::start_with_config(&[])
    }

    /// Starts mosquitto with extra lines appended to its config file, for TLS and password tests:
    /// `cafile`, `certfile`, `keyfile`, `password_file`, `allow_anonymous false` (a later line wins),
    /// or a second `listener PORT 127.0.0.1` (port from [`crate::free_port`]). Files they name (certs,
    /// password file) live in a temp dir of the test's own, created before the broker.
    pub fn start_with_config(extra_lines: &[&str]) -> Result<Self> {
        let dir = crate::harness_temp_dir("ioc-e2e-mosquitto-")?;
        let mut last_error = None;
        for _attempt in 0..3 {
            let port = free_port();
            let config_path = dir.path().join("mosquitto.conf");
            std::fs::write(&config_path, config_text(port, dir.path(), extra_lines))
                .map_err(|e| HarnessError::io("write mosquitto.conf", e))?;
            let mut server = ChildServer::new(
                "mosquitto",
                "mosquitto",
                vec!["-c".into(), config_path.display().to_string()],
                dir.path().join("mosquitto.log"),
                ReadyProbe::Tcp(port),
            );
            match server.start(READY_TIMEOUT) {
                Ok(()) => {
                    return Ok(Mosquitto {
                        port,
                        server,
                        config_path,
                        dir,
                    })
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Timeout("mosquitto start".into())))
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The listener port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's temp dir (config, log, persistence file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// PID of the running broker, if running.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Whether the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }

    /// Graceful stop (SIGTERM: mosquitto saves its persistence file), SIGKILL after 15 s.
    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(15));
    }

    /// Hard kill (SIGKILL): persistence is only what mosquitto had saved before.
    pub fn kill9(&mut self) {
        self.server.kill();
    }

    /// Starts the broker again on the same port with the same config and persistence.
    pub fn start_again(&mut self) -> Result<()> {
        self.server.start(READY_TIMEOUT)
    }

    /// `stop()` then `start_again()`.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// Waits until the broker's log shows that `client_id` subscribed to `topic_filter` (the config
    /// logs subscriptions: `<time>: <client_id> <qos> <filter>`). Use it to know that a gateway is ready
    /// before publishing (messages published before a subscription exists are not queued for it).
    /// Counts earlier subscriptions too: pass `after` = [`Mosquitto::subscription_count`] taken before
    /// a restart to wait for a new one.
    pub fn wait_for_subscription(
        &self,
        client_id: &str,
        topic_filter: &str,
        after: usize,
        timeout: Duration,
    ) -> bool {
        crate::wait_until(timeout, || {
            self.subscription_count(client_id, topic_filter) > after
        })
    }

    /// How many times the log shows `client_id` subscribing to `topic_filter`.
    pub fn subscription_count(&self, client_id: &str, topic_filter: &str) -> usize {
        let log = std::fs::read(self.dir.path().join("mosquitto.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let head = format!(": {client_id} ");
        let tail = format!(" {topic_filter}");
        log.lines()
            .filter(|line| line.contains(&head) && line.ends_with(&tail))
            .count()
    }

    /// The last `lines` lines of the broker's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }

    /// How many lines of the broker's log contain `needle` (all runs of this broker). For counting
    /// connections of a client (`" as <client_id> ("`, from `New client connected from … as ID (p2,
    /// c0, k30).`) or keep-alive disconnects (`"Client <client_id> has exceeded timeout"`).
    pub fn log_count(&self, needle: &str) -> usize {
        let log = std::fs::read(self.dir.path().join("mosquitto.log")).unwrap_or_default();
        String::from_utf8_lossy(&log)
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// How many times the log shows `client_id` connecting (`New client connected from … as ID (…`).
    pub fn connection_count(&self, client_id: &str) -> usize {
        self.log_count(&format!(" as {client_id} ("))
    }
}

fn config_text(port: u16, dir: &Path, extra_lines: &[&str]) -> String {
    let mut text = format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {}/\n\
         max_queued_messages 0\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         log_type subscribe\n",
        dir.display()
    );
    if nix::unistd::Uid::effective().is_root() {
        text.push_str("user root\n");
    }
    for line in extra_lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}
