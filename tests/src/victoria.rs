//! A real VictoriaMetrics for a test, and the means to read back exactly what it stored.
//!
//! Started with `-retentionPeriod=100y` (old test timestamps are kept), `-search.latencyOffset=0s` and
//! `-search.disableCache` (what was flushed is visible at once), and `-dedup.minScrapeInterval=1ms`, so a
//! replayed point (same series, same millisecond) is stored once: the gateway's at-least-once delivery
//! must never show up as extra points. VictoriaMetrics answers 204 even to lines it drops, so tests must
//! always read back ([`VictoriaMetrics::export`]) rather than trust a write's status.

use crate::server::{ChildServer, ReadyProbe};
use crate::{free_port, gzip, HarnessError, Result, READY_TIMEOUT};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;

/// One series as exported by `/api/v1/export`, with all its raw samples sorted by timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedSeries {
    /// All labels, including `__name__` (`<measurement>_<field>` for line protocol).
    pub labels: BTreeMap<String, String>,
    /// Sample values, in timestamp order.
    pub values: Vec<f64>,
    /// Sample timestamps in milliseconds (VictoriaMetrics keeps milliseconds).
    pub timestamps_ms: Vec<i64>,
}

impl ExportedSeries {
    /// The metric name (`__name__`).
    pub fn name(&self) -> &str {
        self.labels
            .get("__name__")
            .map(String::as_str)
            .unwrap_or("")
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A VictoriaMetrics child process. Killed on `Drop`.
pub struct VictoriaMetrics {
    port: u16,
    server: ChildServer,
    agent: ureq::Agent,
    dir: TempDir,
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics on a free loopback port with its data in a temp dir, deduplicating
    /// samples of a series less than 1 ms apart (`-dedup.minScrapeInterval=1ms`), as a deployment
    /// that relies on idempotent replays would.
    pub fn start() -> Result<Self> {
        Self::start_with_flags(&["-dedup.minScrapeInterval=1ms"])
    }

    /// The same with `flags` instead of the deduplication flag (none: every sample is kept).
    pub fn start_with_flags(flags: &[&str]) -> Result<Self> {
        let dir = crate::harness_temp_dir("ioc-e2e-vm-")?;
        let mut last_error = None;
        for _attempt in 0..3 {
            let port = free_port();
            let mut args = vec![
                format!("-storageDataPath={}", dir.path().join("data").display()),
                format!("-httpListenAddr=127.0.0.1:{port}"),
                "-retentionPeriod=100y".into(),
                "-search.latencyOffset=0s".into(),
                "-search.disableCache".into(),
                "-loggerLevel=WARN".into(),
            ];
            args.extend(flags.iter().map(|f| f.to_string()));
            let mut server = ChildServer::new(
                "victoria-metrics",
                "victoria-metrics",
                args,
                dir.path().join("victoria-metrics.log"),
                ReadyProbe::Http(format!("http://127.0.0.1:{port}/health")),
            );
            match server.start(READY_TIMEOUT) {
                Ok(()) => {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(60))
                        .build();
                    return Ok(VictoriaMetrics {
                        port,
                        server,
                        agent,
                        dir,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Timeout("victoria-metrics start".into())))
    }

    /// `http://127.0.0.1:PORT` (what goes into the gateway's `[output.influxdb] url` with `api = "v2"`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir (data and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PID of the running server, if running.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }

    /// Graceful stop (SIGTERM: VictoriaMetrics flushes what it accepted), SIGKILL after 15 s.
    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(15));
    }

    /// Starts it again on the same port with the same data.
    pub fn start_again(&mut self) -> Result<()> {
        self.server.start(READY_TIMEOUT)
    }

    /// `stop()` then `start_again()`.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }

    /// `GET /internal/force_flush`: makes everything accepted so far queryable.
    pub fn force_flush(&self) -> Result<()> {
        let url = format!("{}/internal/force_flush", self.url());
        self.agent
            .get(&url)
            .call()
            .map_err(|e| http_error("GET", &url, e))?;
        Ok(())
    }

    /// Writes line protocol (nanosecond timestamps) gzip'd to `/api/v2/write`, as the gateway does.
    /// A 2xx status does not mean the lines were stored: read back.
    pub fn write_line_protocol(&self, lines: &str) -> Result<()> {
        let url = format!("{}/api/v2/write", self.url());
        self.agent
            .post(&url)
            .query("precision", "ns")
            .set("Content-Encoding", "gzip")
            .set("Content-Type", "text/plain; charset=utf-8")
            .send_bytes(&gzip(lines.as_bytes()))
            .map_err(|e| http_error("POST", &url, e))?;
        Ok(())
    }

    /// Every raw sample of the series matching `selector` (e.g. `{__name__=~"environment_.*"}` or
    /// `environment_pm2_5{sensor_id="s1"}`), via `/api/v1/export` over all time. Lines for the same
    /// series are merged and samples sorted by timestamp; series are sorted by labels. Call
    /// [`VictoriaMetrics::force_flush`] first to see the latest writes.
    pub fn export(&self, selector: &str) -> Result<Vec<ExportedSeries>> {
        let url = format!("{}/api/v1/export", self.url());
        let body = self
            .agent
            .get(&url)
            .query("match[]", selector)
            .query("start", "0")
            .call()
            .map_err(|e| http_error("GET", &url, e))?
            .into_string()
            .map_err(|e| HarnessError::io("read /api/v1/export answer", e))?;
        parse_export(&body)
    }

    /// Total number of raw samples of the series matching `selector` (flushes first).
    pub fn count_points(&self, selector: &str) -> Result<usize> {
        self.force_flush()?;
        Ok(self
            .export(selector)?
            .iter()
            .map(|s| s.timestamps_ms.len())
            .sum())
    }

    /// Runs the instant query `promql` at `time_s` (Unix seconds) on `/api/v1/query` and returns the
    /// sum of the values of the result vector (0 when it is empty), e.g.
    /// `sum(count_over_time(environment_pm2_5{gateway="gw"}[2d]))` to count stored samples without
    /// exporting them (cheap enough to poll while a million points arrive). Call
    /// [`VictoriaMetrics::force_flush`] first to see the latest writes.
    pub fn query_sum(&self, promql: &str, time_s: i64) -> Result<f64> {
        let url = format!("{}/api/v1/query", self.url());
        let answer: serde_json::Value = self
            .agent
            .get(&url)
            .query("query", promql)
            .query("time", &time_s.to_string())
            .call()
            .map_err(|e| http_error("GET", &url, e))?
            .into_json()
            .map_err(|e| HarnessError::io("read /api/v1/query answer", e))?;
        let result = answer["data"]["result"]
            .as_array()
            .ok_or_else(|| HarnessError::Parse {
                what: format!("{url}?query={promql}"),
                detail: crate::truncate(&answer.to_string(), 500),
            })?;
        let mut sum = 0.0;
        for sample in result {
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| HarnessError::Parse {
                    what: format!("{url}?query={promql}"),
                    detail: crate::truncate(&sample.to_string(), 500),
                })?;
            sum += value;
        }
        Ok(sum)
    }

    /// Runs the instant query `promql` now and returns each result's labels and value (an
    /// error when VictoriaMetrics refuses the query: used to check that shipped queries parse).
    pub fn query_vector(
        &self,
        promql: &str,
    ) -> Result<Vec<(std::collections::BTreeMap<String, String>, f64)>> {
        let url = format!("{}/api/v1/query", self.url());
        let answer: serde_json::Value = self
            .agent
            .get(&url)
            .query("query", promql)
            .call()
            .map_err(|e| http_error("GET", &url, e))?
            .into_json()
            .map_err(|e| HarnessError::io("read /api/v1/query answer", e))?;
        let parse_error = || HarnessError::Parse {
            what: format!("{url}?query={promql}"),
            detail: crate::truncate(&answer.to_string(), 500),
        };
        let result = answer["data"]["result"]
            .as_array()
            .ok_or_else(parse_error)?;
        let mut out = Vec::new();
        for sample in result {
            let labels = sample["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(parse_error)?;
            out.push((labels, value));
        }
        Ok(out)
    }

    /// Number of series VictoriaMetrics knows (`/api/v1/series/count`).
    pub fn series_count(&self) -> Result<u64> {
        let url = format!("{}/api/v1/series/count", self.url());
        let answer: serde_json::Value = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| http_error("GET", &url, e))?
            .into_json()
            .map_err(|e| HarnessError::io("read /api/v1/series/count answer", e))?;
        answer["data"][0]
            .as_u64()
            .ok_or_else(|| HarnessError::Parse {
                what: url,
                detail: answer.to_string(),
            })
    }
}

/// Parses the JSON lines of `/api/v1/export`, merging blocks of the same series.
pub(crate) fn parse_export(body: &str) -> Result<Vec<ExportedSeries>> {
    let mut by_labels: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let parse_error = |detail: String| HarnessError::Parse {
            what: "/api/v1/export line".into(),
            detail: format!("{detail}: {}", crate::truncate(line, 300)),
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| parse_error(e.to_string()))?;
        let labels: BTreeMap<String, String> = value["metric"]
            .as_object()
            .ok_or_else(|| parse_error("no metric object".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let values = value["values"]
            .as_array()
            .ok_or_else(|| parse_error("no values".into()))?;
        let timestamps = value["timestamps"]
            .as_array()
            .ok_or_else(|| parse_error("no timestamps".into()))?;
        if values.len() != timestamps.len() {
            return Err(parse_error("values and timestamps differ in length".into()));
        }
        let samples = by_labels.entry(labels).or_default();
        for (v, t) in values.iter().zip(timestamps) {
            let v = match v {
                serde_json::Value::Number(n) => n.as_f64(),
                // VictoriaMetrics writes NaN/Inf as strings (should never be stored by the gateway).
                serde_json::Value::String(s) => s.parse::<f64>().ok(),
                _ => None,
            }
            .ok_or_else(|| parse_error(format!("bad value {v}")))?;
            let t = t
                .as_i64()
                .ok_or_else(|| parse_error(format!("bad timestamp {t}")))?;
            samples.push((t, v));
        }
    }
    Ok(by_labels
        .into_iter()
        .map(|(labels, mut samples)| {
            samples.sort_by_key(|(t, _)| *t);
            ExportedSeries {
                labels,
                values: samples.iter().map(|(_, v)| *v).collect(),
                timestamps_ms: samples.iter().map(|(t, _)| *t).collect(),
            }
        })
        .collect())
}

pub(crate) fn http_error(method: &'static str, url: &str, error: ureq::Error) -> HarnessError {
    let detail = match error {
        ureq::Error::Status(code, response) => {
            let body = response.into_string().unwrap_or_default();
            format!("status {code}: {}", crate::truncate(&body, 2000))
        }
        other => other.to_string(),
    };
    HarnessError::Http {
        method,
        url: url.to_string(),
        detail,
    }
}
