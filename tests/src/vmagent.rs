//! `vmagent` (from Debian's `victoria-metrics` package) in front of a real VictoriaMetrics: an
//! ingest point that takes InfluxDB line protocol (`/write`, `/api/v2/write`) and forwards it
//! with its own disk queue, as an IOC puts one or more in front of its store.
//!
//! Why it exists: an output with several `urls` is meant for exactly this (two vmagents, one
//! restarted or failed), and vmagent 1.79 is what Debian ships.

use crate::server::{ChildServer, ReadyProbe};
use crate::{free_port, HarnessError, Result};
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;

/// A vmagent child process forwarding to one store. Killed on `Drop`.
pub struct VmAgent {
    port: u16,
    server: ChildServer,
    dir: TempDir,
}

impl VmAgent {
    /// Starts vmagent on a free loopback port, forwarding to `store` (a VictoriaMetrics base
    /// URL), its queue in a temp dir.
    pub fn start(store: &str) -> Result<Self> {
        let dir = crate::harness_temp_dir("ioc-e2e-vmagent-")?;
        Self::start_in(dir, vec![format!("-remoteWrite.url={store}/api/v1/write")])
    }

    /// Starts vmagent sharding what it receives over `nodes` (VictoriaMetrics base URLs): each
    /// node gets the series whose hash of [`SHARD_LABELS`] modulo the node count is its index,
    /// by a `hashmod` + `keep` relabel config per URL (`-remoteWrite.urlRelabelConfig`), since
    /// Debian's vmagent 1.79 has no `-remoteWrite.shardByURL`. Every series lands on exactly
    /// one node; a query must read all of them.
    pub fn start_sharded(nodes: &[String]) -> Result<Self> {
        Self::start_sharded_with_flags(nodes, &[])
    }

    /// [`VmAgent::start_sharded`] with more command-line flags (e.g. `-maxConcurrentInserts=2
    /// -insert.maxQueueDuration=200ms`: a tier that refuses with 503 what it cannot take soon).
    pub fn start_sharded_with_flags(nodes: &[String], flags: &[String]) -> Result<Self> {
        if nodes.is_empty() {
            return Err(HarnessError::Timeout(
                "vmagent start_sharded: no nodes given".into(),
            ));
        }
        let dir = crate::harness_temp_dir("ioc-e2e-vmagent-")?;
        let mut remote = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let path = dir.path().join(format!("shard-{i}.yml"));
            std::fs::write(&path, shard_relabel_config(i, nodes.len()))
                .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))?;
            remote.push(format!("-remoteWrite.url={node}/api/v1/write"));
            remote.push(format!("-remoteWrite.urlRelabelConfig={}", path.display()));
        }
        remote.extend(flags.iter().cloned());
        Self::start_in(dir, remote)
    }

    fn start_in(dir: TempDir, remote: Vec<String>) -> Result<Self> {
        let mut last_error = None;
        for _attempt in 0..3 {
            let port = free_port();
            let mut args = remote.clone();
            args.extend([
                format!(
                    "-remoteWrite.tmpDataPath={}",
                    dir.path().join("queue").display()
                ),
                format!("-httpListenAddr=127.0.0.1:{port}"),
                "-remoteWrite.flushInterval=200ms".into(),
                "-loggerLevel=WARN".into(),
            ]);
            let mut server = ChildServer::new(
                "vmagent",
                "vmagent",
                args,
                dir.path().join("vmagent.log"),
                ReadyProbe::Http(format!("http://127.0.0.1:{port}/health")),
            );
            match server.start(Duration::from_secs(30)) {
                Ok(()) => return Ok(VmAgent { port, server, dir }),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Timeout("vmagent start".into())))
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Graceful stop (SIGTERM: vmagent keeps what it has not forwarded in its disk queue).
    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(15));
    }

    /// Starts it again on the same port and queue (it forwards what its queue holds).
    pub fn start_again(&mut self) -> Result<()> {
        self.server.start(Duration::from_secs(30))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }

    /// PID of the running vmagent.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }
}

/// The labels whose values pick a series' shard: the metric name and the tags the gateway and
/// the simulators use to tell series apart. (vmagent 1.79's `hashmod` hashes the listed labels'
/// values joined; it cannot hash "all labels".)
pub const SHARD_LABELS: &[&str] = &[
    "__name__",
    "gateway",
    "district",
    "sensor_id",
    "site",
    "lane",
    "direction",
];

/// The relabel config that keeps shard `index` of `count` (see [`VmAgent::start_sharded`]).
pub fn shard_relabel_config(index: usize, count: usize) -> String {
    format!(
        "# written by ioc-e2e (tests/src/vmagent.rs): shard {index} of {count}\n\
         - source_labels: [{}]\n  target_label: __tmp_shard\n  modulus: {count}\n  action: hashmod\n\
         - source_labels: [__tmp_shard]\n  regex: \"{index}\"\n  action: keep\n",
        SHARD_LABELS.join(", ")
    )
}
