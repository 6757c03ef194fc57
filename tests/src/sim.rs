//! `sensor-sim` driven from end-to-end tests: play a scenario into a real broker with
//! `sensor-sim run`, then let `sensor-sim verify` say whether the store holds exactly what the
//! broker acknowledged (every end-to-end test runs through the simulator and its verdict).
//!
//! Why it exists: the tests should exercise the very binaries a technician uses at commissioning,
//! not a second, test-only publisher and checker. This module only runs them and reads what they
//! print — the run's one-line JSON summary, the verdict's exit code and report — plus a small,
//! independent reading of the manifest ([`ManifestCounts`]) so a test can check the verdict's
//! numbers against its own count rather than trust them.
//!
//! ```no_run
//! use ioc_e2e::{Mosquitto, RunOptions, SensorSim, StoreApi};
//! # let broker = Mosquitto::start().unwrap();
//! # let dir = tempfile::tempdir().unwrap();
//! let manifest = dir.path().join("m.jsonl");
//! let scenario = SensorSim::scenario("district-rush-hour");
//! let run = SensorSim::run(&scenario, &broker.url(), 7, &manifest, &RunOptions::default()).unwrap();
//! let verdict = SensorSim::verify(&manifest, "http://127.0.0.1:8428", StoreApi::V2, &[]).unwrap();
//! assert!(verdict.passed(), "{}", verdict.report);
//! ```

use crate::{bin_path, HarnessError, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Which API `sensor-sim verify` reads the store through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreApi {
    /// VictoriaMetrics (the gateway writes to it with `api = "v2"`).
    V2,
    /// InfluxDB 1.x (`api = "v1"`).
    V1,
}

impl StoreApi {
    fn arg(self) -> &'static str {
        match self {
            StoreApi::V2 => "v2",
            StoreApi::V1 => "v1",
        }
    }
}

/// `sensor-sim run` options; `None` leaves the scenario's own value.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--messages N`.
    pub messages: Option<u64>,
    /// `--duration S` (wall-clock seconds).
    pub duration_s: Option<f64>,
    /// `--rate R` (messages per second over all clients, 0 = as fast as possible).
    pub rate: Option<f64>,
    /// `--qos 0|1`.
    pub qos: Option<u8>,
    /// `--clients C`.
    pub clients: Option<usize>,
    /// `--client-id PREFIX` (default `sensor-sim-<pid>`).
    pub client_id: Option<String>,
    /// `--start RFC3339|now`.
    pub start: Option<String>,
}

/// The JSON line `sensor-sim run` prints at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// Messages handed to the MQTT client.
    pub published: u64,
    /// Messages the broker acknowledged (= manifest entries).
    pub acked: u64,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Acknowledged messages per second.
    pub rate: f64,
    /// Connections re-established.
    pub reconnects: u64,
    /// Messages lost (a forgotten session, or never acknowledged in time).
    pub lost: u64,
    /// Messages published inside bursts.
    pub bursts: u64,
    /// Published messages per injected fault.
    pub faults: BTreeMap<String, u64>,
}

impl RunSummary {
    fn parse(line: &str) -> Result<Self> {
        let parse_error = |detail: String| HarnessError::Parse {
            what: "sensor-sim run summary".into(),
            detail,
        };
        let v: Value =
            serde_json::from_str(line).map_err(|e| parse_error(format!("{e}: {line}")))?;
        let int = |key: &str| {
            v.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| parse_error(format!("no integer {key:?} in {line}")))
        };
        let float = |key: &str| {
            v.get(key)
                .and_then(Value::as_f64)
                .ok_or_else(|| parse_error(format!("no number {key:?} in {line}")))
        };
        let faults = v
            .get("faults")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(RunSummary {
            published: int("published")?,
            acked: int("acked")?,
            seconds: float("seconds")?,
            rate: float("rate")?,
            reconnects: int("reconnects")?,
            lost: int("lost")?,
            bursts: int("bursts")?,
            faults,
        })
    }
}

/// The counts of one verdict (a measurement's `(all)` row, or the totals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyCounts {
    /// Distinct points the store should hold.
    pub expected: u64,
    /// Of those, present.
    pub found: u64,
    /// Of those, absent.
    pub missing: u64,
    /// Present with another value or a field absent.
    pub mismatched: u64,
    /// Present more than once with no explanation.
    pub duplicates: u64,
    /// Present more than once because the simulator sent it more than once.
    pub explained_duplicates: u64,
    /// Payloads the gateway had to reject.
    pub rejected_sent: u64,
    /// Of those, found in the store anyway.
    pub leaked: u64,
    /// Entries not checked.
    pub unchecked: u64,
}

/// What `sensor-sim verify` answered.
#[derive(Clone, Debug)]
pub struct VerifyOutcome {
    /// Exit code: 0 pass, 1 problems found, 2 usage/I/O/store error (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its stdout: the table, examples and the final `verify: …` line.
    pub report: String,
    /// Its stderr (errors).
    pub stderr: String,
    /// Totals, parsed from the report (`None` when it printed no verdict, e.g. exit 2).
    pub totals: Option<VerifyCounts>,
    /// Per-measurement `(all)` rows of the table.
    pub per_measurement: BTreeMap<String, VerifyCounts>,
}

impl VerifyOutcome {
    /// Exit 0: nothing missing, different, duplicated or leaked.
    pub fn passed(&self) -> bool {
        self.code == Some(0)
    }

    /// The totals, or a panic showing the whole output (for tests).
    pub fn counts(&self) -> VerifyCounts {
        match self.totals {
            Some(c) => c,
            None => panic!("sensor-sim verify printed no verdict:\n{self}"),
        }
    }

    fn parse(code: Option<i32>, report: String, stderr: String) -> Self {
        let mut per_measurement = BTreeMap::new();
        let mut in_first_table = true;
        let mut summary = None;
        let mut tail = None;
        for line in report.lines() {
            if line.starts_with("per device") || line.starts_with("examples:") {
                in_first_table = false;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if in_first_table && words.len() == 11 && words[1] == "(all)" {
                let n: Vec<u64> = words[2..].iter().filter_map(|w| w.parse().ok()).collect();
                if n.len() == 9 {
                    per_measurement.insert(
                        words[0].to_string(),
                        VerifyCounts {
                            expected: n[0],
                            found: n[1],
                            missing: n[2],
                            mismatched: n[3],
                            duplicates: n[4],
                            explained_duplicates: n[5],
                            rejected_sent: n[6],
                            leaked: n[7],
                            unchecked: n[8],
                        },
                    );
                }
            }
            // "verify: E expected, F found, M missing, X mismatched, D duplicates"
            if let Some(rest) = line.strip_prefix("verify: ") {
                summary = numbers_before(
                    rest,
                    &["expected", "found", "missing", "mismatched", "duplicates"],
                );
            }
            // "N duplicates explained by duplicate sends, R rejected payloads sent, L of them stored (leaked), U entries unchecked"
            if line.contains("duplicates explained by duplicate sends") {
                tail = numbers_before(
                    line,
                    &[
                        "duplicates explained",
                        "rejected payloads",
                        "of them stored",
                        "entries unchecked",
                    ],
                );
            }
        }
        let totals = match (summary, tail) {
            (Some(s), Some(t)) => Some(VerifyCounts {
                expected: s[0],
                found: s[1],
                missing: s[2],
                mismatched: s[3],
                duplicates: s[4],
                explained_duplicates: t[0],
                rejected_sent: t[1],
                leaked: t[2],
                unchecked: t[3],
            }),
            _ => None,
        };
        VerifyOutcome {
            code,
            report,
            stderr,
            totals,
            per_measurement,
        }
    }
}

impl std::fmt::Display for VerifyOutcome {
    /// Exit code, then the report — its first and last lines when it is long (the per-device rows
    /// in between), so the examples and the verdict line are always shown — and stderr.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sensor-sim verify exit {:?}", self.code)?;
        let lines: Vec<&str> = self.report.lines().collect();
        if lines.len() <= 60 {
            writeln!(f, "{}", self.report.trim_end())?;
        } else {
            writeln!(f, "{}", lines[..15].join("\n"))?;
            writeln!(f, "  … {} lines …", lines.len() - 45)?;
            writeln!(f, "{}", lines[lines.len() - 30..].join("\n"))?;
        }
        if !self.stderr.is_empty() {
            write!(f, "--- stderr ---\n{}", crate::truncate(&self.stderr, 2000))?;
        }
        Ok(())
    }
}

/// For each label in order, the integer written just before it in `text` (comma-separated parts).
fn numbers_before(text: &str, labels: &[&str]) -> Option<Vec<u64>> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    labels
        .iter()
        .map(|label| {
            let part = parts.iter().find(|p| p.contains(label))?;
            part.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Counts read straight from a manifest (independently of `verify`), to check its verdict against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestCounts {
    /// Entry lines (header excluded) = messages the broker acknowledged.
    pub entries: u64,
    /// Distinct (measurement, tags, timestamp) of `x = "stored"` entries: points the store must hold.
    pub stored_points: u64,
    /// Same, counting `unchecked` (camera) entries too: what `verify --check-cameras` expects.
    pub stored_points_with_cameras: u64,
    /// `x = "rejected"` entries: payloads the gateway must refuse.
    pub rejected: u64,
    /// Of those, marked `resent` (the broker may have delivered them twice).
    pub rejected_resent: u64,
    /// `x = "unchecked"` entries.
    pub unchecked: u64,
    /// Entries marked `resent`.
    pub resent: u64,
    /// Entries of other kinds (serial `in_order` …), not counted above.
    pub other: u64,
    /// Distinct stored points per measurement (cameras included).
    pub points_per_measurement: BTreeMap<String, u64>,
    /// Distinct stored points per measurement and numeric field (cameras included): how many
    /// samples a VictoriaMetrics series `<measurement>_<field>` must hold.
    pub field_points: BTreeMap<String, BTreeMap<String, u64>>,
}

impl ManifestCounts {
    /// Reads a manifest written by `sensor-sim run`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
        let mut counts = ManifestCounts::default();
        let mut seen_stored = HashSet::new();
        let mut seen_all = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(line).map_err(|e| HarnessError::Parse {
                what: format!("{} line {}", path.display(), n + 1),
                detail: e.to_string(),
            })?;
            if v.get("header").is_some() {
                continue;
            }
            counts.entries += 1;
            let resent = v.get("resent").and_then(Value::as_bool) == Some(true);
            counts.resent += u64::from(resent);
            let m = v["m"].as_str().unwrap_or_default().to_string();
            let key = (
                m.clone(),
                v["t"].to_string(),
                v["ts"].as_i64().unwrap_or_default(),
            );
            match v["x"].as_str() {
                Some("stored") => {
                    if seen_stored.insert(key.clone()) {
                        counts.stored_points += 1;
                    }
                }
                Some("rejected") => {
                    counts.rejected += 1;
                    counts.rejected_resent += u64::from(resent);
                    continue;
                }
                Some("unchecked") => counts.unchecked += 1,
                // Serial expectations (`in_order` …) are not MQTT points: not counted here.
                _ => {
                    counts.other += 1;
                    continue;
                }
            }
            if seen_all.insert(key) {
                counts.stored_points_with_cameras += 1;
                *counts.points_per_measurement.entry(m.clone()).or_default() += 1;
                let fields = counts.field_points.entry(m).or_default();
                for field in v["f"].as_object().into_iter().flat_map(|f| f.keys()) {
                    *fields.entry(field.clone()).or_default() += 1;
                }
            }
        }
        Ok(counts)
    }
}

/// A `sensor-sim run` started in the background ([`SensorSim::spawn`]). Killed (SIGKILL) on `Drop`
/// if still running.
pub struct RunningSim {
    child: Option<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl RunningSim {
    /// Whether it is still publishing.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGINT (Ctrl-C): it stops drawing messages, waits for outstanding acks, flushes the manifest
    /// and prints its summary. Use [`RunningSim::wait`] to collect it.
    pub fn interrupt(&self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
    }

    /// Waits up to `timeout` for the run to end and returns its summary (an error with its stderr
    /// when it failed or did not end in time; it is then killed).
    pub fn wait(mut self, timeout: Duration) -> Result<RunSummary> {
        let Some(mut child) = self.child.take() else {
            return Err(HarnessError::Timeout(
                "sensor-sim run already collected".into(),
            ));
        };
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HarnessError::Timeout(format!(
                        "sensor-sim run still running after {timeout:?}; stderr: {}",
                        self.stderr()
                    )));
                }
                Err(e) => return Err(HarnessError::io("wait for sensor-sim run", e)),
            }
        };
        let stdout = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
        if !status.success() {
            return Err(HarnessError::Timeout(format!(
                "sensor-sim run exited with {status}; stdout: {stdout}; stderr: {}",
                self.stderr()
            )));
        }
        let last = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        RunSummary::parse(last)
    }

    fn stderr(&self) -> String {
        crate::truncate(
            &std::fs::read_to_string(&self.stderr_path).unwrap_or_default(),
            2000,
        )
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `sensor-sim` binary of this workspace.
pub struct SensorSim;

impl SensorSim {
    /// `config/scenarios/<name>.toml` of this repository.
    pub fn scenario(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("config")
            .join("scenarios")
            .join(format!("{name}.toml"))
    }

    /// Writes a scenario of `stations` environment stations only (topics
    /// `city/<district>/env/env-NNNN`, one reading per station every `interval_s` simulated seconds)
    /// into `dir` and returns its path: for tests whose gateway has only an environment input.
    pub fn env_scenario(
        dir: &Path,
        name: &str,
        stations: usize,
        districts: &[&str],
        interval_s: u32,
    ) -> PathBuf {
        let districts: Vec<String> = districts.iter().map(|d| format!("{d:?}")).collect();
        let text = format!(
            "# written by ioc-e2e (tests/src/sim.rs)\nname = \"{name}\"\nstart = \"2026-11-24T00:30:00Z\"\n\
             districts = [{}]\nqos = 1\nclients = 2\nrate = 0\n\n[env]\ncount = {stations}\ninterval_s = {interval_s}\n",
            districts.join(", ")
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    fn run_command(
        scenario: &Path,
        broker: &str,
        seed: u64,
        manifest: &Path,
        opts: &RunOptions,
    ) -> Command {
        let mut command = Command::new(bin_path("sensor-sim"));
        command
            .arg("run")
            .arg("--scenario")
            .arg(scenario)
            .args(["--broker", broker, "--seed", &seed.to_string()])
            .arg("--manifest")
            .arg(manifest)
            .stdin(Stdio::null());
        let mut opt = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                command.args([flag, &v]);
            }
        };
        opt("--messages", opts.messages.map(|v| v.to_string()));
        opt("--duration", opts.duration_s.map(|v| v.to_string()));
        opt("--rate", opts.rate.map(|v| v.to_string()));
        opt("--qos", opts.qos.map(|v| v.to_string()));
        opt("--clients", opts.clients.map(|v| v.to_string()));
        opt("--client-id", opts.client_id.clone());
        opt("--start", opts.start.clone());
        command
    }

    /// `sensor-sim run …` to the end; its summary (an error with its stderr if it exits non-zero).
    pub fn run(
        scenario: &Path,
        broker: &str,
        seed: u64,
        manifest: &Path,
        opts: &RunOptions,
    ) -> Result<RunSummary> {
        Self::spawn(scenario, broker, seed, manifest, opts)?.wait(Duration::from_secs(300))
    }

    /// `sensor-sim run …` in the background (for tests that kill or restart things meanwhile).
    pub fn spawn(
        scenario: &Path,
        broker: &str,
        seed: u64,
        manifest: &Path,
        opts: &RunOptions,
    ) -> Result<RunningSim> {
        let dir = crate::harness_temp_dir("ioc-e2e-sensor-sim-")?;
        let stdout_path = dir.path().join("stdout");
        let stderr_path = dir.path().join("stderr");
        let create = |p: &Path| {
            File::create(p).map_err(|e| HarnessError::io(format!("create {}", p.display()), e))
        };
        let mut command = Self::run_command(scenario, broker, seed, manifest, opts);
        command
            .stdout(create(&stdout_path)?)
            .stderr(create(&stderr_path)?);
        let child = command.spawn().map_err(|source| HarnessError::Spawn {
            program: "sensor-sim".into(),
            source,
        })?;
        Ok(RunningSim {
            child: Some(child),
            stdout_path,
            stderr_path,
            _dir: dir,
        })
    }

    /// `sensor-sim verify --manifest M --store URL --api v1|v2 [extra…]` (e.g. `--gateway-id ID`,
    /// `--database DB`, `--check-cameras`), once.
    pub fn verify(
        manifest: &Path,
        store: &str,
        api: StoreApi,
        extra: &[&str],
    ) -> Result<VerifyOutcome> {
        let output = Command::new(bin_path("sensor-sim"))
            .arg("verify")
            .arg("--manifest")
            .arg(manifest)
            .args(["--store", store, "--api", api.arg()])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| HarnessError::Spawn {
                program: "sensor-sim".into(),
                source,
            })?;
        Ok(VerifyOutcome::parse(
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Runs [`SensorSim::verify`] every second until it passes, `timeout` has passed, or nothing new
    /// has been found for `stall` (the gateway may still be forwarding when a run ends); returns the
    /// last outcome, passed or not.
    pub fn verify_until_passed(
        manifest: &Path,
        store: &str,
        api: StoreApi,
        extra: &[&str],
        timeout: Duration,
        stall: Duration,
    ) -> Result<VerifyOutcome> {
        let deadline = Instant::now() + timeout;
        let mut last_found = None;
        let mut last_progress = Instant::now();
        loop {
            let outcome = Self::verify(manifest, store, api, extra)?;
            if outcome.passed() {
                return Ok(outcome);
            }
            let found = outcome.totals.map(|t| t.found);
            if found != last_found {
                last_found = found;
                last_progress = Instant::now();
            }
            if Instant::now() >= deadline || last_progress.elapsed() >= stall {
                return Ok(outcome);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "measurement    device                                    expected     found  missing mismatched   dups dups-sent rejected leaked unchecked
environment    (all)                                         4000      3998        2          1      0        12       40      0         0
traffic        (all)                                         1000      1000        0          0      0         0        5      1         0

per device (only those with problems):
measurement    device                                    expected     found  missing mismatched   dups dups-sent rejected leaked unchecked
environment    d1/env-0001                                    400       398        2          1      0         1        4      0         0

examples:
  missing: environment d1/env-0001 ts=1795480200234

12 duplicates explained by duplicate sends, 45 rejected payloads sent, 1 of them stored (leaked), 7 entries unchecked
verify: 5000 expected, 4998 found, 2 missing, 1 mismatched, 0 duplicates
";

    #[test]
    fn parses_the_verdict() {
        let o = VerifyOutcome::parse(Some(1), REPORT.into(), String::new());
        assert!(!o.passed());
        assert_eq!(
            o.counts(),
            VerifyCounts {
                expected: 5000,
                found: 4998,
                missing: 2,
                mismatched: 1,
                duplicates: 0,
                explained_duplicates: 12,
                rejected_sent: 45,
                leaked: 1,
                unchecked: 7
            }
        );
        assert_eq!(o.per_measurement.len(), 2);
        assert_eq!(o.per_measurement["environment"].found, 3998);
        assert_eq!(o.per_measurement["traffic"].leaked, 1);
        let none = VerifyOutcome::parse(Some(2), String::new(), "store down".into());
        assert_eq!(none.totals, None);
    }

    #[test]
    fn parses_the_run_summary() {
        let s = RunSummary::parse(r#"{"published":5000,"acked":4990,"seconds":10.5,"rate":475.0,"reconnects":2,"lost":10,"bursts":400,"faults":{"duplicate":98,"nan_token":49}}"#).unwrap();
        assert_eq!(
            (s.published, s.acked, s.reconnects, s.lost, s.bursts),
            (5000, 4990, 2, 10, 400)
        );
        assert_eq!(s.faults["duplicate"], 98);
        assert!(RunSummary::parse("{}").is_err());
    }
}
