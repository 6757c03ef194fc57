//! Every metric the gateway exports, in one table: name, type, labels, unit and the one-line
//! `# HELP` text, and the recorder that puts them on `/metrics`.
//!
//! Why a module of its own: a Prometheus server scrapes many exporters into one namespace, so
//! every name carries the `ioc_gateway_` prefix (without it `node_reboots_total` reads as
//! node_exporter's), and an operator reading a dashboard must be able to ask `/metrics` what a
//! series means. Both are done here once rather than at each of the ~70 recording sites:
//!
//! - the code records short names (`metrics::counter!("node_reboots_total", …)`), and the
//!   recorder built by [`recorder`] puts [`PREFIX`] in front of every name
//!   (`metrics_util::layers::PrefixLayer`), so no site can forget it or double it;
//! - [`CATALOG`] describes every name, and [`recorder`] registers all descriptions before the
//!   first sample, so each `# TYPE` line on `/metrics` has its `# HELP` line.
//!
//! The tests keep the table honest: a scan of the sources of the gateway and of `crates/` fails
//! when a metric is recorded that the table does not list (or with another type or other
//! labels), or when the table lists one nothing records; the README's metrics table is
//! rendered from this one ([`readme_table`]) and checked against it.

use metrics::{KeyName, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::layers::{Layer, Prefix, PrefixLayer};

/// What every exported name starts with, before the `_` the exporter puts in place of the
/// layer's `.` separator.
pub const PREFIX: &str = "ioc_gateway";

/// Buckets for every histogram (seconds): store write latency and the like.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The word of the `# TYPE` line (a histogram is rendered as one).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// The name the code records, without [`PREFIX`].
    pub name: &'static str,
    pub kind: Kind,
    /// Label keys, in the order the code sets them.
    pub labels: &'static [&'static str],
    /// Passed to the exporter as metadata (the exporter's unit suffix stays off: the names
    /// already end in `_seconds` or `_bytes` where that is their unit).
    pub unit: Option<Unit>,
    /// The `# HELP` text: one line, no trailing full stop needed.
    pub help: &'static str,
}

impl MetricDoc {
    /// The name as exported: `ioc_gateway_<name>`.
    pub fn exported_name(&self) -> String {
        format!("{PREFIX}_{}", self.name)
    }
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind: Kind::Counter,
        labels,
        unit: None,
        help,
    }
}

const fn gauge(
    name: &'static str,
    labels: &'static [&'static str],
    unit: Option<Unit>,
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind: Kind::Gauge,
        labels,
        unit,
        help,
    }
}

/// Every metric the gateway process exports, grouped by stage.
pub const CATALOG: &[MetricDoc] = &[
    // The process.
    gauge(
        "build_info",
        &["version", "commit"],
        None,
        "Always 1; the labels say which build runs (crate version, git commit)",
    ),
    gauge(
        "ready",
        &[],
        None,
        "1 while /readyz answers 200 (ready), 0 while it answers 503; /readyz says why",
    ),
    gauge(
        "uptime_seconds",
        &[],
        Some(Unit::Seconds),
        "Seconds since the gateway started",
    ),
    gauge(
        "clock_synchronised",
        &[],
        None,
        "1 while the wall clock is trusted (kernel reports it synchronised, or [clock] assume_synced), else 0",
    ),
    counter(
        "clock_steps_total",
        &["direction"],
        "Steps of the wall clock detected against the monotonic clock (direction: forward, backward)",
    ),
    // Inputs, all kinds.
    gauge(
        "input_up",
        &["input", "kind"],
        None,
        "1 while the input is up (MQTT connected, serial port open, webhook listening), else 0",
    ),
    counter(
        "readings_accepted_total",
        &["input"],
        "Readings an input handed to the buffer (valid, within [limits])",
    ),
    counter(
        "readings_rejected_total",
        &["input", "reason"],
        "Messages or readings an input refused, by reason (bad payload, mapping, [limits] window, ...)",
    ),
    counter(
        "readings_clamped_total",
        &["input"],
        "Readings whose timestamp [limits] clamped into the accepted window instead of refusing them",
    ),
    // MQTT.
    counter(
        "messages_received_total",
        &["input"],
        "MQTT messages received from the broker (a broker redelivery counts again)",
    ),
    gauge(
        "mqtt_connected",
        &["input"],
        None,
        "1 while the MQTT input is connected to its broker, else 0",
    ),
    counter(
        "mqtt_connection_errors_total",
        &["input"],
        "MQTT connections lost, failed or refused by the broker (each followed by a reconnect after a backoff)",
    ),
    counter(
        "mqtt_duplicates_total",
        &["input"],
        "Messages the broker re-sent while their first copy was still in flight (not delivered twice)",
    ),
    counter(
        "mqtt_stale_acks_dropped_total",
        &["input"],
        "Commit results of an earlier connection's messages, never acked on the new connection",
    ),
    gauge(
        "ingest_stalled",
        &["input"],
        None,
        "1 while the input holds received messages but nothing was made durable for 15 s (a blocked disk), else 0",
    ),
    // Webhooks.
    counter(
        "http_input_requests_total",
        &["input", "status"],
        "Webhook requests answered, by input (empty for an unknown path) and HTTP status",
    ),
    // Serial ports.
    gauge(
        "serial_port_up",
        &["port"],
        None,
        "1 while the serial port is open, else 0",
    ),
    gauge(
        "serial_port_down_since_seconds",
        &["port"],
        Some(Unit::Seconds),
        "Unix time the serial port went down, 0 while it is up",
    ),
    counter(
        "serial_reads_total",
        &["port"],
        "Reads from the serial port that returned data",
    ),
    counter(
        "serial_polls_total",
        &["port"],
        "Poll commands written to the serial port (instruments that answer polls)",
    ),
    counter(
        "serial_frames_total",
        &["port", "result"],
        "Serial frames or lines by result: ok, skipped, no_fix, no_match, no_values, bad",
    ),
    counter(
        "serial_frames_bad_total",
        &["port", "reason"],
        "Bad serial frames or lines by reason (checksum, truncated, too_long, ...)",
    ),
    counter(
        "serial_commit_errors_total",
        &["port"],
        "Commits of a serial port's readings the buffer refused",
    ),
    counter(
        "modbus_requests_total",
        &["port", "slave"],
        "Modbus RTU read requests sent, by port and slave address",
    ),
    counter(
        "modbus_errors_total",
        &["port", "slave", "reason"],
        "Modbus RTU requests that failed or values refused, by reason (timeout, bad_crc, garbled, exception, protocol, value)",
    ),
    counter(
        "node_frames_lost_total",
        &["port"],
        "Sensor-node frames lost, from gaps in the nodes' sequence numbers",
    ),
    counter(
        "node_reboots_total",
        &["port"],
        "Sensor-node reboots seen (a new boot id)",
    ),
    counter(
        "node_duplicates_total",
        &["port"],
        "Sensor-node frames received again (a resend) and not committed twice",
    ),
    counter(
        "node_readings_unacked_total",
        &["port"],
        "Sensor-node readings not acknowledged because the buffer refused them; the node resends them",
    ),
    // The buffer.
    gauge(
        "buffer_bytes",
        &[],
        Some(Unit::Bytes),
        "Bytes of the buffer's segment files on disk",
    ),
    gauge(
        "buffer_max_bytes",
        &[],
        Some(Unit::Bytes),
        "The buffer's disk bound ([buffer] max_disk_mb); the oldest data is dropped beyond it",
    ),
    gauge(
        "buffer_readings",
        &["class"],
        None,
        "Readings in the buffer not yet confirmed by the store, by class (urgent, normal)",
    ),
    gauge(
        "buffer_unsent_lines",
        &[],
        None,
        "Lines in the buffer not yet confirmed by the store (sampled at scrape time)",
    ),
    gauge(
        "buffer_unsent_bytes",
        &[],
        Some(Unit::Bytes),
        "Bytes of buffer records not yet confirmed by the store (sampled at scrape time)",
    ),
    gauge(
        "buffer_segments",
        &[],
        None,
        "Segment files in the buffer",
    ),
    gauge(
        "buffer_oldest_unsent_age_seconds",
        &[],
        Some(Unit::Seconds),
        "Age of the oldest line the store has not confirmed, 0 when none waits",
    ),
    counter(
        "buffer_appended_lines_total",
        &["class"],
        "Lines made durable in the buffer (written and fsynced), by class",
    ),
    counter(
        "buffer_acked_lines_total",
        &["class", "output"],
        "Lines the store confirmed and the buffer released, by class",
    ),
    counter(
        "buffer_fsyncs_total",
        &[],
        "fsyncs of buffer segment data (one per group commit)",
    ),
    counter(
        "buffer_append_errors_total",
        &[],
        "Buffer appends that failed (disk error or full disk); the source keeps and retries the data",
    ),
    counter(
        "buffer_dropped_oldest_lines_total",
        &["output"],
        "Unsent lines dropped with the oldest segments to stay within the disk bound, by output that had not sent them",
    ),
    counter(
        "buffer_dropped_oldest_segments_total",
        &[],
        "Oldest segments dropped to stay within the disk bound",
    ),
    MetricDoc {
        name: "buffer_recovery_dropped_bytes_total",
        kind: Kind::Counter,
        labels: &[],
        unit: Some(Unit::Bytes),
        help: "Bytes of damaged buffer data recovery dropped at start (torn or corrupt records)",
    },
    // The store outputs: every metric of an output carries `output`, its name (`default` for
    // `[output.influxdb]`), so several outputs' figures stay apart.
    counter(
        "output_lines_sent_total",
        &["output"],
        "Lines the store accepted",
    ),
    counter(
        "output_batches_sent_total",
        &["output"],
        "Batches delivered to the store (after any splitting of refused batches)",
    ),
    counter(
        "output_batches_failed_total",
        &["output", "reason"],
        "Store write attempts that failed, by reason (bad_batch, throttled, server_error, unauthorized, misconfigured, timeout, connection)",
    ),
    counter(
        "output_retries_total",
        &["output"],
        "Store writes retried after a backoff",
    ),
    gauge(
        "output_buffer_unsent_lines",
        &["output"],
        None,
        "Lines in the buffer this output has not had confirmed yet",
    ),
    gauge(
        "output_buffer_oldest_unsent_age_seconds",
        &["output"],
        Some(Unit::Seconds),
        "Age of the oldest reading this output has not had confirmed yet (0 when none waits)",
    ),
    counter(
        "output_failovers_total",
        &["output"],
        "Times the output moved to another of its urls because the one in use failed",
    ),
    gauge(
        "output_endpoint_active",
        &["output", "url"],
        None,
        "1 for the url (host:port) of the output in use, 0 for its other urls",
    ),
    counter(
        "config_reloads_total",
        &["result"],
        "Config reloads (SIGHUP), by result: applied or refused",
    ),
    gauge(
        "config_last_reload_successful",
        &[],
        None,
        "1 if the last config reload was applied, 0 if it was refused (the old config runs on)",
    ),
    counter(
        "output_dead_lettered_lines_total",
        &["output"],
        "Lines the store refused as bad, written to the dead-letter file instead",
    ),
    MetricDoc {
        name: "output_bytes_sent_total",
        kind: Kind::Counter,
        labels: &["output"],
        unit: Some(Unit::Bytes),
        help: "Compressed request bytes sent to the store (retries and split halves included)",
    },
    gauge(
        "output_bytes_sent_today",
        &["output"],
        Some(Unit::Bytes),
        "Compressed request bytes sent to the store since 00:00 UTC: what daily_budget_mb counts (kept across restarts when it is set, else since start)",
    ),
    gauge(
        "output_budget_held",
        &["output", "reason"],
        None,
        "1 while normal data waits for the uplink budget, by reason: rate (max_bytes_per_s) or daily (daily_budget_mb); urgent data never waits",
    ),
    counter(
        "output_budget_holds_total",
        &["output", "reason"],
        "Times a normal request had to wait for the uplink budget, by reason (rate, daily)",
    ),
    gauge(
        "output_concurrency_limit",
        &["output"],
        None,
        "Requests the output may have in flight now (adaptive: 1 after overload, up to max_in_flight)",
    ),
    counter(
        "output_retry_after_clamped_total",
        &["output"],
        "Retry-After values of the store above max_retry_after_s, cut to it",
    ),
    MetricDoc {
        name: "output_write_seconds",
        kind: Kind::Histogram,
        labels: &["output"],
        unit: Some(Unit::Seconds),
        help: "Duration of one store write request, until the answer (or the error)",
    },
    gauge(
        "store_last_success_age_seconds",
        &[],
        Some(Unit::Seconds),
        "Seconds since the store last accepted a batch; with several outputs, the one furthest behind (absent until every output's store first did)",
    ),
    gauge(
        "output_last_success_age_seconds",
        &["output"],
        Some(Unit::Seconds),
        "Seconds since this output's store last accepted a batch (absent until it first did)",
    ),
    counter(
        "output_lines_filtered_total",
        &["output"],
        "Lines this output did not send because its include/exclude lists leave their measurement out",
    ),
    // The HTTP API.
    gauge(
        "live_sensors",
        &[],
        None,
        "Sensors on the live board (behind /api/sensors and the live page)",
    ),
    gauge(
        "live_clients",
        &[],
        None,
        "Open /api/live streams",
    ),
];

/// The catalogue entry for the short name `name`.
pub fn find(name: &str) -> Option<&'static MetricDoc> {
    CATALOG.iter().find(|m| m.name == name)
}

/// Registers the `# HELP` text (and unit) of every metric of [`CATALOG`] with `recorder`.
pub fn describe(recorder: &dyn Recorder) {
    for m in CATALOG {
        let name = KeyName::from_const_str(m.name);
        let help = SharedString::const_str(m.help);
        match m.kind {
            Kind::Counter => recorder.describe_counter(name, m.unit, help),
            Kind::Gauge => recorder.describe_gauge(name, m.unit, help),
            Kind::Histogram => recorder.describe_histogram(name, m.unit, help),
        }
    }
}

/// The gateway's recorder, not installed: the Prometheus recorder behind the prefix layer, with
/// every description registered, and the handle that renders it. [`crate::http`] installs it
/// as the process's recorder; a test can use it with `metrics::with_local_recorder` and see
/// the names as `/metrics` shows them.
pub fn recorder() -> (Prefix<PrometheusRecorder>, PrometheusHandle) {
    let builder = match PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS) {
        Ok(b) => b,
        Err(_) => PrometheusBuilder::new(),
    };
    let inner = builder.build_recorder();
    let handle = inner.handle();
    let layered = PrefixLayer::new(PREFIX).layer(inner);
    describe(&layered);
    (layered, handle)
}

/// The README's metrics table: one row per metric of [`CATALOG`].
pub fn readme_table() -> String {
    let mut out = String::from("| metric | type | labels | what it says |\n|---|---|---|---|\n");
    for m in CATALOG {
        let labels = if m.labels.is_empty() {
            String::new()
        } else {
            format!("`{}`", m.labels.join("`, `"))
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            m.exported_name(),
            m.kind.as_str(),
            labels,
            m.help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// One recording site found in the sources.
    #[derive(Debug)]
    struct Site {
        at: String,
        kind: Kind,
        name: Option<String>,
        labels: Vec<String>,
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The string literals of a macro's argument text and whether each is followed by `=>`
    /// (a label key).
    fn literals(args: &str) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut chars = args.char_indices();
        while let Some((_, c)) = chars.next() {
            if c != '"' {
                continue;
            }
            let mut lit = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                if escaped {
                    lit.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    break;
                } else {
                    lit.push(c);
                }
            }
            let rest: String = chars.clone().map(|(_, c)| c).take(8).collect();
            out.push((lit, rest.trim_start().starts_with("=>")));
        }
        out
    }

    /// The argument text of the macro call whose `(` is at `open`, up to its matching `)`,
    /// skipping parentheses inside string literals.
    fn call_args(text: &str, open: usize) -> Option<&str> {
        let mut depth = 0usize;
        let mut in_str = false;
        let mut escaped = false;
        for (i, c) in text.get(open..)?.char_indices() {
            if in_str {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_str = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return text.get(open + 1..open + i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Every `counter!(`, `gauge!(` and `histogram!(` call (with or without `metrics::`) in
    /// the file's code, comment lines left out.
    fn sites_in(path: &Path, out: &mut Vec<Site>) {
        let Ok(raw) = std::fs::read_to_string(path) else {
            return;
        };
        let code: String = raw
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("//") {
                    ""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (word, kind) in [
            ("counter!(", Kind::Counter),
            ("gauge!(", Kind::Gauge),
            ("histogram!(", Kind::Histogram),
        ] {
            for (at, _) in code.match_indices(word) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // describe_counter!( and friends
                }
                let line = code[..at].matches('\n').count() + 1;
                let open = at + word.len() - 1;
                let args = call_args(&code, open).unwrap_or("");
                let lits = literals(args);
                // The name must be the first argument and a literal, so that this scan (and a
                // reader's grep) can find it.
                let name = args
                    .trim_start()
                    .starts_with('"')
                    .then(|| lits.first().map(|(l, _)| l.clone()))
                    .flatten();
                let labels = lits
                    .iter()
                    .filter(|(_, key)| *key)
                    .map(|(l, _)| l.clone())
                    .collect();
                let shown = path.strip_prefix(workspace_root()).unwrap_or(path);
                out.push(Site {
                    at: format!("{}:{line}", shown.display()),
                    kind,
                    name,
                    labels,
                });
            }
        }
    }

    fn workspace_root() -> &'static Path {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest.parent().unwrap_or(manifest)
    }

    /// The recording sites of the gateway's sources and of every crate under `crates/`.
    fn recording_sites() -> Vec<Site> {
        let mut files = Vec::new();
        rust_files(&workspace_root().join("gateway/src"), &mut files);
        let crates = workspace_root().join("crates");
        if let Ok(entries) = std::fs::read_dir(&crates) {
            for entry in entries.flatten() {
                rust_files(&entry.path().join("src"), &mut files);
            }
        }
        let mut sites = Vec::new();
        for f in &files {
            // This file's own tests record a few catalogued names and spell the macros out.
            if f.ends_with("metrics_catalog.rs") {
                continue;
            }
            sites_in(f, &mut sites);
        }
        sites
    }

    #[test]
    fn the_scan_finds_the_recording_sites() {
        let sites = recording_sites();
        // One site per stage at least: a scan that found nothing would pass everything below.
        for name in [
            "readings_accepted_total",
            "buffer_fsyncs_total",
            "output_write_seconds",
            "http_input_requests_total",
            "build_info",
        ] {
            assert!(
                sites.iter().any(|s| s.name.as_deref() == Some(name)),
                "no recording site of {name} found: is the scan broken?"
            );
        }
        let modbus = sites
            .iter()
            .find(|s| s.name.as_deref() == Some("modbus_errors_total"))
            .expect("modbus_errors_total recorded");
        assert_eq!(modbus.labels, ["port", "slave", "reason"]);
    }

    #[test]
    fn the_catalogue_lists_every_metric_the_sources_record() {
        let sites = recording_sites();
        let mut problems = Vec::new();
        let mut labels_seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for s in &sites {
            let Some(name) = &s.name else {
                problems.push(format!(
                    "{}: a metric whose name is not a string literal (write the name in the call)",
                    s.at
                ));
                continue;
            };
            if name.starts_with(PREFIX) {
                problems.push(format!(
                    "{}: `{name}` starts with `{PREFIX}`: the recorder adds the prefix, drop it",
                    s.at
                ));
            }
            let Some(doc) = find(name) else {
                problems.push(format!(
                    "{}: `{name}` is recorded but not in metrics_catalog::CATALOG (add it with its help text)",
                    s.at
                ));
                continue;
            };
            if doc.kind != s.kind {
                problems.push(format!(
                    "{}: `{name}` is recorded as a {} but catalogued as a {}",
                    s.at,
                    s.kind.as_str(),
                    doc.kind.as_str()
                ));
            }
            for l in &s.labels {
                if !doc.labels.contains(&l.as_str()) {
                    problems.push(format!(
                        "{}: `{name}` is recorded with label `{l}` the catalogue does not list",
                        s.at
                    ));
                }
            }
            labels_seen
                .entry(doc.name)
                .or_default()
                .extend(s.labels.iter().cloned());
        }
        for m in CATALOG {
            match labels_seen.get(m.name) {
                None => problems.push(format!(
                    "`{}` is catalogued but nothing records it (remove it)",
                    m.name
                )),
                Some(seen) => {
                    for l in m.labels {
                        if !seen.contains(*l) {
                            problems.push(format!(
                                "`{}` is catalogued with label `{l}` no recording site sets",
                                m.name
                            ));
                        }
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn catalogue_entries_are_unique_valid_and_one_line() {
        let mut names = BTreeSet::new();
        for m in CATALOG {
            assert!(names.insert(m.name), "{} listed twice", m.name);
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}: not a snake_case Prometheus name",
                m.name
            );
            assert!(
                !m.name.starts_with(PREFIX),
                "{}: prefix in the name",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                m.name
            );
            assert!(
                !m.help.is_empty() && !m.help.contains('\n') && m.help.len() <= 160,
                "{}: help must be one line of at most 160 characters",
                m.name
            );
        }
    }

    #[test]
    fn rendered_metrics_carry_the_prefix_and_help() {
        let (recorder, handle) = recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("node_reboots_total", "port" => "p").increment(1);
            metrics::gauge!("build_info", "version" => "v", "commit" => "c").set(1.0);
            metrics::histogram!("output_write_seconds").record(0.02);
        });
        let text = handle.render();
        assert!(text.contains("# HELP ioc_gateway_node_reboots_total Sensor-node reboots"));
        assert!(text.contains("# TYPE ioc_gateway_node_reboots_total counter"));
        assert!(text.contains("ioc_gateway_node_reboots_total{port=\"p\"} 1"));
        assert!(text.contains("ioc_gateway_build_info{version=\"v\",commit=\"c\"} 1"));
        assert!(text.contains("# TYPE ioc_gateway_output_write_seconds histogram"));
        assert!(text.contains("ioc_gateway_output_write_seconds_bucket{le=\"0.025\"} 1"));
        assert!(!text.contains("ioc_gateway_ioc_gateway"));
    }

    /// `IOC_REGENERATE_README=1` rewrites the table between the markers instead of failing.
    #[test]
    fn the_readme_lists_every_metric() {
        const BEGIN: &str =
            "<!-- metrics table: generated from gateway/src/metrics_catalog.rs -->\n";
        const END: &str = "<!-- end of metrics table -->";
        let path = workspace_root().join("README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md readable");
        let (Some(start), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
            panic!("README.md has no metrics table markers ({BEGIN:?} … {END:?})");
        };
        let table = readme_table();
        let current = &readme[start + BEGIN.len()..end];
        if current != table {
            if std::env::var_os("IOC_REGENERATE_README").is_some() {
                let updated = format!("{}{BEGIN}{table}{}", &readme[..start], &readme[end..]);
                std::fs::write(&path, updated).expect("README.md writable");
            } else {
                panic!(
                    "README.md's metrics table differs from metrics_catalog::CATALOG; \
                     regenerate it with IOC_REGENERATE_README=1 cargo test -p ioc-gateway \
                     --lib metrics_catalog. Expected:\n{table}"
                );
            }
        }
    }
}
