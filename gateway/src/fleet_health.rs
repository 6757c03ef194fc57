//! The gateway's own health, written into the store as one reading of measurement
//! `ioc_gateway` every `[gateway] health_interval_s` (default 60 s), through the same buffer and
//! outputs as the sensors' readings.
//!
//! Why it exists: a province runs hundreds of boxes, and `/metrics` or the live page of each
//! one is reachable only on its own network. With one reading per gateway per interval in the
//! store the IOC sees its whole fleet with one query (`config/grafana/`), and alert rules
//! (`config/alerts/ioc-gateway.rules.yml`) fire on a gateway gone silent, a backlog that does
//! not drain, or data dropped at the disk bound. The reading is **urgent**, so after an outage
//! it is among the first to reach the store and the IOC sees the backlog while it drains; a
//! gateway that cannot reach the store is simply silent there, which is the alert.
//!
//! Tags: `gateway` (added by the ingest, like every reading) and `version`. Fields (integers
//! unless said): `uptime_s`, `buffer_unsent_lines`, `buffer_oldest_unsent_age_s` (0 when
//! nothing waits), `buffer_disk_bytes`, `dropped_lines_total` (dropped at the disk bound since
//! start), `rejected_total` and `accepted_total` (sensor readings, since start), `inputs_up`,
//! `inputs_total`, `output_last_success_age_s` (absent until the first batch is stored),
//! `clock_synced` (boolean) and `health_interval_s`, so the alert rules need not know the
//! interval.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{FieldValue, Priority, Reading};
use crate::pipeline::Ingest;
use crate::shutdown::Shutdown;
use crate::status::Observers;

/// The measurement.
pub const MEASUREMENT: &str = "ioc_gateway";

/// What one health reading says.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthFacts {
    pub version: String,
    pub uptime_s: u64,
    pub buffer_unsent_lines: u64,
    pub buffer_oldest_unsent_age_s: u64,
    pub buffer_disk_bytes: u64,
    pub dropped_lines_total: u64,
    pub rejected_total: u64,
    pub accepted_total: u64,
    pub inputs_up: u64,
    pub inputs_total: u64,
    pub output_last_success_age_s: Option<u64>,
    pub clock_synced: bool,
    pub health_interval_s: u64,
}

impl HealthFacts {
    /// The facts now, from the observers and the process counters.
    pub fn gather(observers: &Observers, interval: Duration, now_ms: u64) -> Self {
        let stats = observers.buffer.stats();
        let inputs = observers.inputs.snapshot();
        // With several outputs, the one furthest behind.
        let store = observers
            .outputs
            .worst()
            .map(|(_, s)| s)
            .unwrap_or_default();
        HealthFacts {
            version: crate::build_info::VERSION.to_owned(),
            uptime_s: now_ms.saturating_sub(observers.started_ms) / 1000,
            buffer_unsent_lines: stats.unsent_lines,
            buffer_oldest_unsent_age_s: stats.oldest_unsent_age_ms.unwrap_or(0) / 1000,
            buffer_disk_bytes: stats.disk_bytes,
            dropped_lines_total: stats.dropped_oldest_lines,
            rejected_total: crate::totals::rejected(),
            accepted_total: crate::totals::accepted(),
            inputs_up: inputs.values().filter(|s| s.up).count() as u64,
            inputs_total: inputs.len() as u64,
            output_last_success_age_s: store
                .last_success_ms
                .map(|ms| now_ms.saturating_sub(ms) / 1000),
            clock_synced: crate::clock::trusted(),
            health_interval_s: interval.as_secs(),
        }
    }

    /// The reading (the ingest adds the `gateway` tag).
    pub fn reading(&self, timestamp_ns: i64) -> Reading {
        let int = |v: u64| FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
        let mut fields = BTreeMap::new();
        fields.insert("uptime_s".to_owned(), int(self.uptime_s));
        fields.insert(
            "buffer_unsent_lines".to_owned(),
            int(self.buffer_unsent_lines),
        );
        fields.insert(
            "buffer_oldest_unsent_age_s".to_owned(),
            int(self.buffer_oldest_unsent_age_s),
        );
        fields.insert("buffer_disk_bytes".to_owned(), int(self.buffer_disk_bytes));
        fields.insert(
            "dropped_lines_total".to_owned(),
            int(self.dropped_lines_total),
        );
        fields.insert("rejected_total".to_owned(), int(self.rejected_total));
        fields.insert("accepted_total".to_owned(), int(self.accepted_total));
        fields.insert("inputs_up".to_owned(), int(self.inputs_up));
        fields.insert("inputs_total".to_owned(), int(self.inputs_total));
        if let Some(age) = self.output_last_success_age_s {
            fields.insert("output_last_success_age_s".to_owned(), int(age));
        }
        fields.insert(
            "clock_synced".to_owned(),
            FieldValue::Bool(self.clock_synced),
        );
        fields.insert("health_interval_s".to_owned(), int(self.health_interval_s));
        let mut tags = BTreeMap::new();
        tags.insert("version".to_owned(), self.version.clone());
        Reading {
            measurement: MEASUREMENT.to_owned(),
            tags,
            fields,
            timestamp_ns,
        }
    }
}

/// What the health task writes with: the ingest (replaced when a reload restarts the inputs)
/// and the interval (`None`: off).
#[derive(Debug, Clone)]
pub struct HealthSetup {
    pub ingest: Ingest,
    pub interval: Option<Duration>,
}

impl HealthSetup {
    pub fn new(ingest: Ingest, interval_s: u64) -> Self {
        HealthSetup {
            ingest,
            interval: (interval_s > 0).then(|| Duration::from_secs(interval_s)),
        }
    }
}

/// Writes one health reading at start (once the inputs had a moment to connect) and then every
/// interval, until `stop`. A reading that cannot be made durable (disk failing) is logged and
/// skipped: the next one says the same.
pub async fn run(
    observers: Observers,
    mut setup: tokio::sync::watch::Receiver<HealthSetup>,
    stop: Shutdown,
) {
    let mut wait = Duration::from_secs(2);
    loop {
        let current = setup.borrow_and_update().clone();
        let Some(interval) = current.interval else {
            // Off: wait for a reload that turns it on.
            tokio::select! {
                changed = setup.changed() => if changed.is_err() { return } else { continue },
                () = stop.wait() => return,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait.min(interval)) => {}
            changed = setup.changed() => {
                if changed.is_err() { return }
                continue;
            }
            () = stop.wait() => return,
        }
        wait = interval;
        let now_ns = crate::clock::now_ns();
        let now_ms = u64::try_from(now_ns / 1_000_000).unwrap_or(0);
        let facts = HealthFacts::gather(&observers, interval, now_ms);
        let mut lp = Vec::with_capacity(512);
        let lines = current.ingest.encode(
            crate::totals::HEALTH_INPUT,
            vec![facts.reading(now_ns)],
            &mut lp,
        );
        if let Err(e) = current.ingest.commit(Priority::Urgent, lines, lp).await {
            tracing::warn!("cannot buffer the gateway's own health reading: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reading_carries_every_field_the_fleet_queries_use() {
        let facts = HealthFacts {
            version: "1.2.3".into(),
            uptime_s: 3600,
            buffer_unsent_lines: 12,
            buffer_oldest_unsent_age_s: 4,
            buffer_disk_bytes: 1 << 20,
            dropped_lines_total: 0,
            rejected_total: 3,
            accepted_total: 1000,
            inputs_up: 2,
            inputs_total: 3,
            output_last_success_age_s: None,
            clock_synced: false,
            health_interval_s: 60,
        };
        let r = facts.reading(1_700_000_000_000_000_000);
        assert_eq!(r.measurement, "ioc_gateway");
        assert_eq!(r.tags["version"], "1.2.3");
        for name in [
            "uptime_s",
            "buffer_unsent_lines",
            "buffer_oldest_unsent_age_s",
            "buffer_disk_bytes",
            "dropped_lines_total",
            "rejected_total",
            "accepted_total",
            "inputs_up",
            "inputs_total",
            "clock_synced",
            "health_interval_s",
        ] {
            assert!(r.fields.contains_key(name), "{name} missing");
        }
        assert!(
            !r.fields.contains_key("output_last_success_age_s"),
            "no age before the first success"
        );
        assert_eq!(r.fields["clock_synced"], FieldValue::Bool(false));
        assert_eq!(r.fields["inputs_total"], FieldValue::Int(3));
        let with_success = HealthFacts {
            output_last_success_age_s: Some(7),
            ..facts
        };
        assert_eq!(
            with_success.reading(0).fields["output_last_success_age_s"],
            FieldValue::Int(7)
        );
    }
}
