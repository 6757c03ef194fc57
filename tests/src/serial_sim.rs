//! `sensor-sim serial` as a child process: the simulated instrument on a pty it creates.
//!
//! Why it exists: end-to-end tests of the serial inputs play their instruments with the real
//! simulator (the same one a technician commissions with), not with test-only byte writers.
//! [`SerialSim::spawn`] starts `sensor-sim serial ARGS --link DIR/NAME.tty`, reads the
//! `{"pty":..}` line it prints first, and hands the test the link to put in the gateway's
//! config: a path no other test can create (a pty number `/dev/pts/N` is reused by the next
//! pty opened on the machine, and a gateway still retrying a vanished pty would read another
//! test's stream). [`SerialSim::finish`] waits for the run's end and returns the JSON lines it
//! printed after the first (the summary last). Killed (SIGKILL) on `Drop` if still running.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin_path, HarnessError, Result};

/// A running `sensor-sim serial`.
pub struct SerialSim {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// The link to the pty (what the gateway's `port` should be).
    pub pty: PathBuf,
    /// The first line it printed (`{"pty":..,"link":..}` and device details).
    pub first_line: Value,
    name: String,
}

impl SerialSim {
    /// Starts `sensor-sim serial ARGS --link DIR/NAME.tty` (stderr inherited, so its errors show
    /// in the test's output) and reads its first line.
    pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> Result<SerialSim> {
        let link = dir.join(format!("{name}.tty"));
        let mut child = Command::new(bin_path("sensor-sim"))
            .arg("serial")
            .args(args)
            .arg("--link")
            .arg(&link)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: "sensor-sim".into(),
                source,
            })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Timeout(format!("{name}: no stdout")));
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let first = read
            .ok()
            .and_then(|_| serde_json::from_str::<Value>(&line).ok())
            .filter(|v| v["pty"].is_string());
        let Some(first_line) = first else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Parse {
                what: format!("{name}: sensor-sim serial's first line"),
                detail: format!("{line:?}"),
            });
        };
        Ok(SerialSim {
            child,
            stdout,
            pty: link,
            first_line,
            name: name.to_owned(),
        })
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for it to end successfully; the JSON lines it printed after the
    /// first (the run's summary last). Killed and an error when it does not end in time or
    /// fails.
    pub fn finish(mut self, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    return Err(HarnessError::Timeout(format!(
                        "{} exited with {status}",
                        self.name
                    )))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    return Err(HarnessError::Timeout(format!(
                        "{} did not finish within {timeout:?}",
                        self.name
                    )))
                }
                Err(e) => return Err(HarnessError::io(format!("wait for {}", self.name), e)),
            }
        }
        let mut out = Vec::new();
        let mut line = String::new();
        while self
            .stdout
            .read_line(&mut line)
            .map_err(|e| HarnessError::io(format!("read {}'s output", self.name), e))?
            > 0
        {
            let v = serde_json::from_str(&line).map_err(|e| HarnessError::Parse {
                what: format!("{}'s output line {line:?}", self.name),
                detail: e.to_string(),
            })?;
            out.push(v);
            line.clear();
        }
        Ok(out)
    }
}

impl Drop for SerialSim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
