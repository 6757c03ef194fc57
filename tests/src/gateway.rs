//! The gateway under test as a real process: `ioc-gateway run --config FILE`, with its stdout and
//! stderr in a log file, so tests can kill it (-9 or SIGTERM), restart it on the same data dir, and show
//! its log when something fails. Also [`check_config`] for `ioc-gateway check-config FILE`.

use crate::server::log_tail;
use crate::{bin_path, HarnessError, Result};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A running (or stopped) `ioc-gateway run --config FILE`. Killed (SIGKILL) on `Drop`.
pub struct GatewayProcess {
    config_path: PathBuf,
    envs: Vec<(OsString, OsString)>,
    log_path: PathBuf,
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
    _log_dir: TempDir,
}

impl GatewayProcess {
    /// Starts `ioc-gateway run --config <config_path>`. Does not wait for anything: use the store or
    /// the broker to see when it is ready.
    pub fn spawn(config_path: &Path) -> Result<Self> {
        Self::spawn_with_env(config_path, &[])
    }

    /// Like [`GatewayProcess::spawn`], with extra environment variables (e.g. a `token_env` or
    /// `password_env` secret). `RUST_LOG` defaults to `info` unless given here or set by the caller.
    pub fn spawn_with_env(config_path: &Path, envs: &[(&str, &str)]) -> Result<Self> {
        let log_dir = crate::harness_temp_dir("ioc-e2e-gateway-log-")?;
        let mut gateway = GatewayProcess {
            config_path: config_path.to_path_buf(),
            envs: envs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            log_path: log_dir.path().join("ioc-gateway.log"),
            child: None,
            last_exit: None,
            _log_dir: log_dir,
        };
        gateway.start_again()?;
        Ok(gateway)
    }

    /// Starts the gateway again with the same config and environment (after `kill9`, `sigterm` or an
    /// exit); its output is appended to the same log. No-op when it is running.
    pub fn start_again(&mut self) -> Result<()> {
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
        let program = bin_path("ioc-gateway");
        let mut command = Command::new(&program);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // This machine's clock reports itself unsynchronised: without this (debug builds'
        // test override, see the gateway's clock module) every receipt-stamped reading would
        // carry the `clock_unsynced` tag. A test may set it otherwise in `envs`.
        command.env("IOC_GATEWAY_TEST_CLOCK_SYNCED", "1");
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().map_err(|source| HarnessError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        self.child = Some(child);
        self.last_exit = None;
        Ok(())
    }

    /// PID of the running gateway.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (reaps it, and remembers its exit status, if it exited).
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.last_exit = Some(status);
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// The exit status of the last run, once it has exited and been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// `kill -9`: no chance to flush anything. Waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.last_exit = Some(status);
            }
        }
    }

    /// Sends SIGTERM (graceful shutdown); use [`GatewayProcess::wait_exit`] to wait for the exit.
    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends SIGINT (graceful shutdown, as Ctrl-C).
    pub fn sigint(&self) {
        self.signal(nix::sys::signal::Signal::SIGINT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its status; an error (with the log
    /// tail) if it is still running then (it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.last_exit.ok_or_else(|| {
                    HarnessError::Timeout("gateway was not started, no exit status".into())
                });
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout(format!(
                    "gateway still running after {timeout:?}; log tail:\n{}",
                    self.log_tail(40)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of the gateway's output (stdout and stderr, all runs).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// The whole log (all runs), lossily decoded.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// CPU time (user + system, seconds) the running gateway has used so far, from
    /// `/proc/<pid>/stat`; `None` when not running or not on Linux. For benchmarks.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after_name = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        Some((utime + stime) / ticks)
    }

    /// Peak resident memory (`VmHWM`, KiB) of the running gateway, from `/proc/<pid>/status`.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `ioc-gateway check-config <config_path>` to completion and returns its output (status, stdout,
/// stderr).
pub fn check_config(config_path: &Path) -> Result<Output> {
    check_config_with(config_path, &[], &[])
}

/// [`check_config`] with extra arguments (`--json`) and environment variables (the secrets the
/// config names, as the unit's `EnvironmentFile=` would give them).
pub fn check_config_with(
    config_path: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Output> {
    let program = bin_path("ioc-gateway");
    let mut cmd = Command::new(&program);
    cmd.arg("check-config")
        .arg(config_path)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().map_err(|source| HarnessError::Spawn {
        program: program.display().to_string(),
        source,
    })
}
