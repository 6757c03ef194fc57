//! A server run as a child process: started with fixed arguments, its stdout and stderr appended to a
//! log file, readiness-polled, stopped gracefully or killed by PID, and started again with the same
//! arguments (same port, same data dir). The three servers of the harness are thin wrappers around it.

use crate::{HarnessError, Result};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a server says it is ready.
#[derive(Clone, Debug)]
pub(crate) enum ReadyProbe {
    /// A TCP connection to 127.0.0.1:port succeeds.
    Tcp(u16),
    /// `GET url` answers with a 2xx status.
    Http(String),
}

pub(crate) struct ChildServer {
    name: String,
    program: String,
    args: Vec<String>,
    log_path: PathBuf,
    probe: ReadyProbe,
    child: Option<Child>,
}

impl ChildServer {
    pub(crate) fn new(
        name: &str,
        program: &str,
        args: Vec<String>,
        log_path: PathBuf,
        probe: ReadyProbe,
    ) -> Self {
        ChildServer {
            name: name.to_string(),
            program: program.to_string(),
            args,
            log_path,
            probe,
            child: None,
        }
    }

    /// Replaces the readiness probe used by the next [`ChildServer::start`] (a server restarted
    /// with another configuration, e.g. serving HTTPS).
    pub(crate) fn set_probe(&mut self, probe: ReadyProbe) {
        self.probe = probe;
    }

    /// Starts the process and waits until the probe succeeds. Fails with the log tail when the process
    /// exits or the probe does not succeed within `timeout`.
    pub(crate) fn start(&mut self, timeout: Duration) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io(format!("open {}", self.log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HarnessError::io("clone log file handle", e))?;
        let program = resolve_program(&self.program);
        let child = Command::new(&program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.not_ready(timeout, format!("process exited with {status}")));
                }
            }
            if self.probe_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(self.not_ready(timeout, "readiness probe never succeeded".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn not_ready(&self, timeout: Duration, reason: String) -> HarnessError {
        HarnessError::NotReady {
            name: self.name.clone(),
            timeout,
            reason,
            log_tail: self.log_tail(30),
        }
    }

    fn probe_ok(&self) -> bool {
        match &self.probe {
            ReadyProbe::Tcp(port) => TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                Duration::from_millis(200),
            )
            .is_ok(),
            ReadyProbe::Http(url) => ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(1))
                .build()
                .get(url)
                .call()
                .is_ok(),
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, wait up to `grace` for the exit, then SIGKILL. Servers flush their data on SIGTERM.
    pub(crate) fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file (reads at most the last 64 KiB).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = file.seek(SeekFrom::Start(start));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds a program on PATH, also in /usr/sbin and /sbin (mosquitto lives in /usr/sbin, which is not on
/// every PATH).
pub(crate) fn resolve_program(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(program)
}
