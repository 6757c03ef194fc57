//! A store tier as an IOC runs one: `vmagent` in front of several VictoriaMetrics nodes, the
//! series sharded over the nodes by a per-URL `hashmod` relabel config (see
//! [`VmAgent::start_sharded`]), and the tier's own request and error counters.
//!
//! Why it exists: the fleet test stops and starts the whole tier under 50 gateways and must
//! say what the tier saw (peak request rate, 429/5xx) from the tier's own `/metrics`, not from
//! the gateways. The nodes run without deduplication, so a point the fleet delivers twice is
//! stored twice and shows up when read back.

use crate::victoria::http_error;
use crate::{HarnessError, Result, VictoriaMetrics, VmAgent};
use std::time::Duration;

/// vmagent + N VictoriaMetrics nodes. Every process is killed on `Drop`.
pub struct StoreTier {
    // The agent first: dropped (killed) before the nodes it forwards to.
    agent: VmAgent,
    nodes: Vec<VictoriaMetrics>,
}

/// The tier's counters at one moment (monotonic totals since each process started; a restart
/// sets a process's own back to 0, see [`TierCounters::delta`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TierCounters {
    /// Write requests vmagent received (`vmagent_http_requests_total`, write paths).
    pub ingest_requests: f64,
    /// Write requests vmagent refused (`vmagent_http_request_errors_total`, which counts its
    /// 4xx/5xx answers, 429 and 503 included).
    pub ingest_errors: f64,
    /// vmagent's requests to the nodes answered other than 2xx
    /// (`vmagent_remotewrite_requests_total{status_code!="2XX"}`).
    pub forward_errors: f64,
    /// Write requests the nodes received (`vm_http_requests_total{path="/api/v1/write"}`).
    pub node_requests: f64,
    /// Requests the nodes answered with an error (`vm_http_request_errors_total`, write paths).
    pub node_errors: f64,
}

impl TierCounters {
    /// `self - earlier`, a counter that went down (its process restarted) counting from 0.
    pub fn delta(&self, earlier: &TierCounters) -> TierCounters {
        let d = |now: f64, then: f64| if now >= then { now - then } else { now };
        TierCounters {
            ingest_requests: d(self.ingest_requests, earlier.ingest_requests),
            ingest_errors: d(self.ingest_errors, earlier.ingest_errors),
            forward_errors: d(self.forward_errors, earlier.forward_errors),
            node_requests: d(self.node_requests, earlier.node_requests),
            node_errors: d(self.node_errors, earlier.node_errors),
        }
    }
}

impl StoreTier {
    /// Starts `nodes` VictoriaMetrics nodes (no deduplication) and a vmagent sharding over them.
    pub fn start(nodes: usize) -> Result<Self> {
        Self::start_with_agent_flags(nodes, &[])
    }

    /// [`StoreTier::start`] with more flags for vmagent (see [`VmAgent::start_sharded_with_flags`]).
    pub fn start_with_agent_flags(nodes: usize, agent_flags: &[String]) -> Result<Self> {
        let mut started = Vec::with_capacity(nodes);
        for _ in 0..nodes.max(1) {
            started.push(VictoriaMetrics::start_with_flags(&[])?);
        }
        let urls: Vec<String> = started.iter().map(VictoriaMetrics::url).collect();
        let agent = VmAgent::start_sharded_with_flags(&urls, agent_flags)?;
        Ok(StoreTier {
            agent,
            nodes: started,
        })
    }

    /// Where gateways write (vmagent, `api = "v2"`).
    pub fn ingest_url(&self) -> String {
        self.agent.url()
    }

    /// The nodes' base URLs (for reading back: query every one).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(VictoriaMetrics::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[VictoriaMetrics] {
        &self.nodes
    }

    /// The agent.
    pub fn agent(&self) -> &VmAgent {
        &self.agent
    }

    /// Stops the whole tier: vmagent first (SIGTERM: it keeps what it has not forwarded in its
    /// disk queue), then the nodes.
    pub fn stop(&mut self) {
        self.agent.stop();
        for n in &mut self.nodes {
            n.stop();
        }
    }

    /// Starts it again, same ports and data: the nodes, then vmagent.
    pub fn start_again(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.start_again()?;
        }
        self.agent.start_again()
    }

    /// Reads every process's counters (a process that does not answer counts 0).
    pub fn counters(&self) -> TierCounters {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(3))
            .build();
        let page = |url: String| -> String {
            agent
                .get(&url)
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .unwrap_or_default()
        };
        let mut c = TierCounters::default();
        let a = page(format!("{}/metrics", self.agent.url()));
        c.ingest_requests = sum_where(&a, "vmagent_http_requests_total", |l| l.contains("write"));
        c.ingest_errors = sum_where(&a, "vmagent_http_request_errors_total", |l| {
            l.contains("write")
        });
        c.forward_errors = sum_where(&a, "vmagent_remotewrite_requests_total", |l| {
            !l.contains("status_code=\"2XX\"")
        });
        for n in &self.nodes {
            let p = page(format!("{}/metrics", n.url()));
            c.node_requests += sum_where(&p, "vm_http_requests_total", |l| {
                l.contains("path=\"/api/v1/write\"")
            });
            c.node_errors += sum_where(&p, "vm_http_request_errors_total", |l| l.contains("write"));
        }
        c
    }

    /// Every raw sample of `selector` over all nodes, with the node index of each series.
    pub fn export(&self, selector: &str) -> Result<Vec<(usize, crate::ExportedSeries)>> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            n.force_flush()?;
            out.extend(n.export(selector)?.into_iter().map(|s| (i, s)));
        }
        Ok(out)
    }

    /// vmagent's pending queue is empty (`vmagent_remotewrite_pending_data_bytes` sums to 0).
    pub fn agent_queue_empty(&self) -> Result<bool> {
        let url = format!("{}/metrics", self.agent.url());
        let text = ureq::get(&url)
            .timeout(Duration::from_secs(3))
            .call()
            .map_err(|e| http_error("GET", &url, e))?
            .into_string()
            .map_err(|e| HarnessError::io("read vmagent /metrics", e))?;
        Ok(sum_where(&text, "vmagent_remotewrite_pending_data_bytes", |_| true) == 0.0)
    }
}

/// Sum of the samples of `name` (exactly: `name{` or `name `) whose line passes `keep`.
fn sum_where(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| keep(l))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_exact_name_and_restarts_count_from_zero() {
        let page = "vmagent_http_requests_total{path=\"/influx/write\", protocol=\"influx\"} 7\n\
                    vmagent_http_requests_total{path=\"/metrics\"} 3\n\
                    vmagent_http_requests_total_other 100\n";
        assert_eq!(
            sum_where(page, "vmagent_http_requests_total", |l| l.contains("write")),
            7.0
        );
        let before = TierCounters {
            ingest_requests: 10.0,
            node_requests: 5.0,
            ..Default::default()
        };
        let after = TierCounters {
            ingest_requests: 3.0,
            node_requests: 9.0,
            ..Default::default()
        };
        let d = after.delta(&before);
        assert_eq!((d.ingest_requests, d.node_requests), (3.0, 4.0));
    }

    #[test]
    fn shard_configs_keep_one_residue_each() {
        let c = crate::vmagent::shard_relabel_config(1, 2);
        assert!(c.contains("modulus: 2") && c.contains("regex: \"1\"") && c.contains("hashmod"));
        assert!(c.contains("source_labels: [__name__, gateway,"), "{c}");
    }
}
