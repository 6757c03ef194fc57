//! The verdict: does the store hold exactly what the manifest says the broker acknowledged?
//!
//! Store points are read back (VictoriaMetrics: `/api/v1/export` after `/internal/force_flush`,
//! series named `<measurement>_<field>`, millisecond timestamps, no strings; InfluxDB 1.x:
//! `/query` with `epoch=ns`) into one index keyed by measurement, the manifest's identifying
//! tags and the timestamp. Comparison is a pure function over that index, so it is tested on
//! fixed store responses. Tags the gateway adds (such as `gateway`) are ignored unless
//! `--gateway-id` asks to keep only that gateway's points.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::manifest::{Entry, Expect, FaultKind};

/// Which store API to read back through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreApi {
    /// VictoriaMetrics (the gateway writes with the v2 API).
    V2,
    /// InfluxDB 1.x.
    V1,
}

/// Why the store could not be read.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// HTTP failure.
    #[error("store request {url}: {reason}")]
    Http {
        /// The request URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The store's answer was not what the API documents.
    #[error("store answer from {url}: {reason}")]
    Answer {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// Identifies one expected point: measurement, identifying tags (`k=v,k=v` sorted), ms timestamp.
pub type PointKey = (String, String, i64);

/// Store contents: for each point key, each field's values (more than one = duplicates).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StoreIndex {
    points: HashMap<PointKey, BTreeMap<String, Vec<f64>>>,
}

impl StoreIndex {
    /// Records one stored value.
    pub fn add(&mut self, key: PointKey, field: &str, value: f64) {
        self.points
            .entry(key)
            .or_default()
            .entry(field.to_owned())
            .or_default()
            .push(value);
    }

    /// Adds everything `other` holds (the nodes of a sharded store: a point on two nodes
    /// counts twice, as it would on one).
    pub fn merge(&mut self, other: StoreIndex) {
        for (key, fields) in other.points {
            let into = self.points.entry(key).or_default();
            for (field, mut values) in fields {
                into.entry(field).or_default().append(&mut values);
            }
        }
    }

    /// Number of distinct point keys.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// What the manifest says about each measurement: the sets of identifying tag keys its entries
/// use (camera events have `zones`, plate reads do not).
#[derive(Debug, Default, Clone)]
pub struct Shape {
    tag_keys: BTreeMap<String, BTreeSet<BTreeSet<String>>>,
    min_ts: i64,
    max_ts: i64,
}

impl Shape {
    /// Collects tag keys and the time range of the checkable entries.
    pub fn of(entries: &[Entry]) -> Self {
        let mut shape = Shape {
            tag_keys: BTreeMap::new(),
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        };
        for e in entries.iter().filter(|e| e.x != Expect::Unchecked) {
            shape
                .tag_keys
                .entry(e.m.clone())
                .or_default()
                .insert(e.t.keys().cloned().collect());
            shape.min_ts = shape.min_ts.min(e.ts);
            shape.max_ts = shape.max_ts.max(e.ts);
        }
        shape
    }

    /// Measurements to read back.
    pub fn measurements(&self) -> impl Iterator<Item = &String> {
        self.tag_keys.keys()
    }

    /// The identifying tag string of a label set: the largest of the measurement's key sets
    /// whose keys are all present, or `None` if none fits.
    fn tag_string<'a>(
        &self,
        measurement: &str,
        mut get: impl FnMut(&str) -> Option<&'a str>,
    ) -> Option<String> {
        let mut sets: Vec<&BTreeSet<String>> = self.tag_keys.get(measurement)?.iter().collect();
        sets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        'sets: for keys in sets {
            let mut out = String::new();
            for k in keys {
                let Some(v) = get(k) else { continue 'sets };
                if !out.is_empty() {
                    out.push(',');
                }
                let _ = write!(out, "{k}={v}");
            }
            return Some(out);
        }
        None
    }

    /// Splits a VictoriaMetrics series name into measurement and field (longest measurement wins).
    fn split_name<'n>(&self, name: &'n str) -> Option<(&str, &'n str)> {
        self.tag_keys
            .keys()
            .filter_map(|m| {
                name.strip_prefix(m.as_str())
                    .and_then(|r| r.strip_prefix('_'))
                    .map(|f| (m.as_str(), f))
            })
            .max_by_key(|(m, _)| m.len())
    }
}

fn entry_key(e: &Entry) -> PointKey {
    let tags =
        e.t.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
    (e.m.clone(), tags, e.ts)
}

/// Parses a VictoriaMetrics `/api/v1/export` answer (JSON lines) into `index`.
pub fn parse_vm_export(
    body: &str,
    shape: &Shape,
    gateway_id: Option<&str>,
    index: &mut StoreIndex,
) -> Result<(), String> {
    for (n, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let metric = v
            .get("metric")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("line {}: no metric", n + 1))?;
        let name = metric
            .get("__name__")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some((measurement, field)) = shape.split_name(name) else {
            continue;
        };
        if let Some(gw) = gateway_id {
            if metric.get("gateway").and_then(Value::as_str) != Some(gw) {
                continue;
            }
        }
        let Some(tags) = shape.tag_string(measurement, |k| metric.get(k).and_then(Value::as_str))
        else {
            continue;
        };
        let values = v
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("line {}: no values", n + 1))?;
        let stamps = v
            .get("timestamps")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("line {}: no timestamps", n + 1))?;
        if values.len() != stamps.len() {
            return Err(format!(
                "line {}: {} values but {} timestamps",
                n + 1,
                values.len(),
                stamps.len()
            ));
        }
        for (value, ts) in values.iter().zip(stamps) {
            let ts = ts
                .as_i64()
                .ok_or_else(|| format!("line {}: timestamp {ts} is not an integer", n + 1))?;
            let value = value.as_f64().unwrap_or(f64::NAN);
            index.add((measurement.to_owned(), tags.clone(), ts), field, value);
        }
    }
    Ok(())
}

/// Parses InfluxDB 1.x `/query?epoch=ns` answers (one JSON document, or several when chunked).
pub fn parse_influx_query(
    body: &str,
    shape: &Shape,
    gateway_id: Option<&str>,
    index: &mut StoreIndex,
) -> Result<(), String> {
    for doc in serde_json::Deserializer::from_str(body).into_iter::<Value>() {
        let doc = doc.map_err(|e| e.to_string())?;
        for result in doc
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(err) = result.get("error").and_then(Value::as_str) {
                return Err(format!("InfluxDB error: {err}"));
            }
            for series in result
                .get("series")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let measurement = series
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let empty = serde_json::Map::new();
                let tags = series
                    .get("tags")
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                if let Some(gw) = gateway_id {
                    if tags.get("gateway").and_then(Value::as_str) != Some(gw) {
                        continue;
                    }
                }
                // `GROUP BY *` gives a series every tag key of the measurement, "" where it has
                // none (a plate read has no `zones`); line protocol has no empty tag values, so ""
                // means absent.
                let Some(tag_string) = shape.tag_string(measurement, |k| {
                    tags.get(k)
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                }) else {
                    continue;
                };
                let columns: Vec<&str> = series
                    .get("columns")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if columns.first() != Some(&"time") {
                    return Err(format!("series {measurement}: first column is not time"));
                }
                for row in series
                    .get("values")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(row) = row.as_array() else { continue };
                    let Some(ns) = row.first().and_then(Value::as_i64) else {
                        return Err(format!(
                            "series {measurement}: time is not an integer (use epoch=ns)"
                        ));
                    };
                    // A timestamp off the millisecond grid can match no manifest entry: keep it
                    // at a key no entry has (negative) so it shows up as missing, not as found.
                    let ts = if ns % 1_000_000 == 0 {
                        ns / 1_000_000
                    } else {
                        -ns.abs()
                    };
                    for (col, value) in columns.iter().zip(row).skip(1) {
                        if let Some(v) = value.as_f64() {
                            index.add((measurement.to_owned(), tag_string.clone(), ts), col, v);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Counts for one device (or one measurement, or everything).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Distinct points the store should hold.
    pub expected: u64,
    /// Of those, points present.
    pub found: u64,
    /// Of those, points absent.
    pub missing: u64,
    /// Present, but a field is absent or has another value.
    pub mismatched: u64,
    /// Present more than once with no explanation.
    pub duplicates: u64,
    /// Present more than once because the simulator sent it more than once.
    pub explained_duplicates: u64,
    /// Payloads the gateway must reject.
    pub rejected_sent: u64,
    /// Of those, found in the store anyway.
    pub leaked: u64,
    /// Entries `verify` does not check (e.g. camera events).
    pub unchecked: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.expected += o.expected;
        self.found += o.found;
        self.missing += o.missing;
        self.mismatched += o.mismatched;
        self.duplicates += o.duplicates;
        self.explained_duplicates += o.explained_duplicates;
        self.rejected_sent += o.rejected_sent;
        self.leaked += o.leaked;
        self.unchecked += o.unchecked;
    }

    /// Whether this is a pass: nothing missing, different, duplicated or leaked.
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.mismatched == 0 && self.duplicates == 0 && self.leaked == 0
    }
}

/// The verdict, per measurement and device.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// `(measurement, device tags) → counts`.
    pub devices: BTreeMap<(String, String), Counts>,
    /// Up to 20 example problems, for the human reading the table.
    pub examples: Vec<String>,
}

impl Report {
    /// Totals per measurement.
    pub fn per_measurement(&self) -> BTreeMap<String, Counts> {
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for ((m, _), c) in &self.devices {
            out.entry(m.clone()).or_default().add(c);
        }
        out
    }

    /// Totals over everything.
    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for c in self.devices.values() {
            t.add(c);
        }
        t
    }

    /// The final one-line verdict.
    pub fn summary_line(&self) -> String {
        let t = self.total();
        format!(
            "verify: {} expected, {} found, {} missing, {} mismatched, {} duplicates",
            t.expected, t.found, t.missing, t.mismatched, t.duplicates
        )
    }

    /// A human-readable table: per measurement, then per device (all devices when there are
    /// at most `max_rows`, otherwise only devices with problems), then example problems.
    pub fn table(&self, max_rows: usize) -> String {
        let mut out = String::new();
        let header = format!(
            "{:<14} {:<40} {:>9} {:>9} {:>8} {:>10} {:>6} {:>9} {:>8} {:>6} {:>9}\n",
            "measurement",
            "device",
            "expected",
            "found",
            "missing",
            "mismatched",
            "dups",
            "dups-sent",
            "rejected",
            "leaked",
            "unchecked"
        );
        let row = |out: &mut String, m: &str, d: &str, c: &Counts| {
            let _ = writeln!(
                out,
                "{:<14} {:<40} {:>9} {:>9} {:>8} {:>10} {:>6} {:>9} {:>8} {:>6} {:>9}",
                m,
                d,
                c.expected,
                c.found,
                c.missing,
                c.mismatched,
                c.duplicates,
                c.explained_duplicates,
                c.rejected_sent,
                c.leaked,
                c.unchecked
            );
        };
        out.push_str(&header);
        for (m, c) in self.per_measurement() {
            row(&mut out, &m, "(all)", &c);
        }
        let all = self.devices.len() <= max_rows;
        let shown: Vec<_> = self
            .devices
            .iter()
            .filter(|(_, c)| all || !c.ok())
            .collect();
        if !shown.is_empty() {
            let _ = writeln!(
                out,
                "\nper device{}:",
                if all {
                    ""
                } else {
                    " (only those with problems)"
                }
            );
            out.push_str(&header);
            for ((m, d), c) in shown {
                row(&mut out, m, d, c);
            }
        }
        if !self.examples.is_empty() {
            out.push_str("\nexamples:\n");
            for e in &self.examples {
                let _ = writeln!(out, "  {e}");
            }
        }
        let t = self.total();
        let _ = writeln!(
            out,
            "\n{} duplicates explained by duplicate sends, {} rejected payloads sent, {} of them stored (leaked), {} entries unchecked",
            t.explained_duplicates, t.rejected_sent, t.leaked, t.unchecked
        );
        out
    }
}

fn same_value(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Compares manifest entries with store contents.
pub fn compare(entries: &[Entry], store: &StoreIndex) -> Report {
    compare_with(entries, store, false)
}

/// [`compare`], and when `exclusive` (the manifest header's `exclusive`), every store point of a
/// series with `stored` or `rejected` entries, within the entries' time range (1 s before the
/// first, 2 s after the last), that no `stored` entry explains — by its key, then by its fields
/// — counts as leaked; a `rejected` entry then leaks only through such fields.
pub fn compare_with(entries: &[Entry], store: &StoreIndex, exclusive: bool) -> Report {
    struct Expected<'a> {
        entry: &'a Entry,
        sends: u64,
        resent: bool,
    }
    let mut expected: BTreeMap<PointKey, Expected> = BTreeMap::new();
    let mut sequences: BTreeMap<(String, String), Vec<&Entry>> = BTreeMap::new();
    let mut report = Report::default();
    let device_of = |e: &Entry| e.t.values().cloned().collect::<Vec<_>>().join("/");
    // The fields the `stored` entries of each key expect. In an exclusive manifest, a
    // `rejected` entry at a key that also has a good reading (an NMEA fix whose RMC was corrupt
    // but whose GGA was whole) leaked only if the store holds a field no `stored` entry there
    // explains; otherwise any point at its key is a leak.
    let mut explained: HashMap<PointKey, BTreeSet<&str>> = HashMap::new();
    for e in entries.iter().filter(|e| e.x == Expect::Stored) {
        explained
            .entry(entry_key(e))
            .or_default()
            .extend(e.f.keys().map(String::as_str));
    }
    let unexplained = |key: &PointKey| -> Option<Vec<String>> {
        let stored = store.points.get(key)?;
        let allowed = explained.get(key);
        let extra: Vec<String> = stored
            .keys()
            .filter(|f| !allowed.is_some_and(|a| a.contains(f.as_str())))
            .cloned()
            .collect();
        (!extra.is_empty()).then_some(extra)
    };
    let mut rejected_keys: BTreeSet<PointKey> = BTreeSet::new();
    for e in entries {
        let counts = report
            .devices
            .entry((e.m.clone(), device_of(e)))
            .or_default();
        match e.x {
            Expect::Unchecked => counts.unchecked += 1,
            Expect::Rejected => {
                counts.rejected_sent += 1;
                let key = entry_key(e);
                let leak = if exclusive {
                    unexplained(&key)
                } else {
                    store
                        .points
                        .get(&key)
                        .map(|f| f.keys().cloned().collect::<Vec<_>>())
                };
                if let Some(extra) = leak {
                    counts.leaked += 1;
                    if report.examples.len() < 20 {
                        report.examples.push(format!(
                            "leaked: {} {} ts={} ({:?}) is in the store ({})",
                            e.m,
                            device_of(e),
                            e.ts,
                            e.fault,
                            extra.join(",")
                        ));
                    }
                }
                rejected_keys.insert(key);
            }
            Expect::InOrder | Expect::MaybeInOrder | Expect::RejectedInOrder => {
                if e.x == Expect::RejectedInOrder {
                    counts.rejected_sent += 1;
                }
                let (m, tags, _) = entry_key(e);
                sequences.entry((m, tags)).or_default().push(e);
            }
            Expect::Stored => {
                let slot = expected.entry(entry_key(e)).or_insert(Expected {
                    entry: e,
                    sends: 0,
                    resent: false,
                });
                slot.sends += 1;
                slot.resent |= e.resent || e.fault == Some(FaultKind::Duplicate);
            }
        }
    }
    for (key, exp) in &expected {
        let e = exp.entry;
        let device = device_of(e);
        let counts = report
            .devices
            .entry((e.m.clone(), device.clone()))
            .or_default();
        counts.expected += 1;
        let Some(stored) = store.points.get(key) else {
            counts.missing += 1;
            if report.examples.len() < 20 {
                report
                    .examples
                    .push(format!("missing: {} {} ts={}", e.m, device, e.ts));
            }
            continue;
        };
        counts.found += 1;
        let mut problem = None;
        for (field, want) in &e.f {
            match stored.get(field) {
                None => problem = Some(format!("field {field} absent")),
                Some(values) => {
                    if let Some(got) = values.iter().find(|v| !same_value(**v, *want)) {
                        problem = Some(format!("{field}: expected {want}, stored {got}"));
                    }
                }
            }
        }
        if let Some(p) = problem {
            counts.mismatched += 1;
            if report.examples.len() < 20 {
                report
                    .examples
                    .push(format!("mismatched: {} {} ts={}: {p}", e.m, device, e.ts));
            }
        }
        if stored.values().any(|v| v.len() > 1) {
            if exp.sends > 1 || exp.resent {
                counts.explained_duplicates += 1;
            } else {
                counts.duplicates += 1;
                if report.examples.len() < 20 {
                    report.examples.push(format!(
                        "duplicate: {} {} ts={} stored more than once",
                        e.m, device, e.ts
                    ));
                }
            }
        }
    }
    if exclusive {
        let checked = entries
            .iter()
            .filter(|e| matches!(e.x, Expect::Stored | Expect::Rejected));
        let mut series: BTreeSet<(String, String)> = BTreeSet::new();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for e in checked {
            let (m, tags, ts) = entry_key(e);
            series.insert((m, tags));
            lo = lo.min(ts);
            hi = hi.max(ts);
        }
        let mut extra: Vec<(&PointKey, Vec<String>)> = store
            .points
            .keys()
            .filter(|k| series.contains(&(k.0.clone(), k.1.clone())))
            .filter(|k| (lo.saturating_sub(1000)..=hi.saturating_add(2000)).contains(&k.2))
            .filter(|k| !rejected_keys.contains(*k))
            .filter_map(|k| unexplained(k).map(|f| (k, f)))
            .collect();
        extra.sort();
        for ((m, tags, ts), fields) in extra {
            let device = tags
                .split(',')
                .map(|kv| kv.split_once('=').map_or(kv, |(_, v)| v))
                .collect::<Vec<_>>()
                .join("/");
            let counts = report
                .devices
                .entry((m.clone(), device.clone()))
                .or_default();
            counts.leaked += 1;
            if report.examples.len() < 20 {
                report.examples.push(format!(
                    "extra: {m} {device} ts={ts} ({}) is in the store but was never sent intact",
                    fields.join(",")
                ));
            }
        }
    }
    compare_sequences(&sequences, store, &mut report);
    report
}

/// Store rows of one series, in time order: (ms timestamp, field → value). A key that holds
/// several values per field (two points in the same millisecond) gives several rows.
type Rows<'a> = Vec<(i64, BTreeMap<&'a str, f64>)>;

/// How far ahead the in-order alignment looks to tell a missing entry from an extra point.
const ALIGN_LOOKAHEAD: usize = 64;

/// Checks the serial series (`in_order` entries): the store's points of each series, within
/// its time window (first send − 1 s … last send + 2 s), must be the manifest's values in the
/// manifest's order. Aligned greedily: equal rows match; an optional (`maybe_in_order`) entry
/// that does not match is skipped; otherwise a short look-ahead decides whether the manifest
/// entry is missing, the store point is extra (leaked, or a duplicate when it repeats the row
/// just matched), or both are there with different values (mismatched).
fn compare_sequences(
    sequences: &BTreeMap<(String, String), Vec<&Entry>>,
    store: &StoreIndex,
    report: &mut Report,
) {
    if sequences.is_empty() {
        return;
    }
    let mut rows: BTreeMap<(&str, &str), Rows> = BTreeMap::new();
    for ((m, tags, ts), fields) in &store.points {
        let series = (m.as_str(), tags.as_str());
        if !sequences.contains_key(&(m.clone(), tags.clone())) {
            continue;
        }
        let depth = fields.values().map(Vec::len).max().unwrap_or(0);
        let out = rows.entry(series).or_default();
        for i in 0..depth {
            let row = fields
                .iter()
                .filter_map(|(f, v)| v.get(i).map(|v| (f.as_str(), *v)))
                .collect();
            out.push((*ts, row));
        }
    }
    // An entry whose message had invalid values matches only a row without them: the
    // gateway must have dropped them, not stored them as numbers.
    let matches = |e: &Entry, row: &BTreeMap<&str, f64>| {
        e.f.iter().all(|(f, want)| {
            row.get(f.as_str())
                .is_some_and(|got| same_value(*got, *want))
        }) && (e.fault != Some(FaultKind::Invalid) || row.keys().all(|k| e.f.contains_key(*k)))
    };
    let show = |row: &BTreeMap<&str, f64>| {
        row.iter()
            .map(|(f, v)| format!("{f}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    for ((m, tags), entries) in sequences {
        let device = entries
            .first()
            .map(|e| e.t.values().cloned().collect::<Vec<_>>().join("/"))
            .unwrap_or_default();
        let lo = entries.iter().map(|e| e.ts).min().unwrap_or(0) - 1000;
        let hi = entries.iter().map(|e| e.ts).max().unwrap_or(0) + 2000;
        let mut got: Rows = rows
            .remove(&(m.as_str(), tags.as_str()))
            .unwrap_or_default()
            .into_iter()
            .filter(|(ts, _)| (lo..=hi).contains(ts))
            .collect();
        got.sort_by_key(|(ts, _)| *ts);
        let want: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.x != Expect::RejectedInOrder)
            .collect();
        let counts = report
            .devices
            .entry((m.clone(), device.clone()))
            .or_default();
        let mut examples = Vec::new();
        let (mut i, mut j) = (0usize, 0usize);
        let mut last_matched: Option<usize> = None;
        let extra =
            |counts: &mut Counts, examples: &mut Vec<String>, j: usize, last: Option<usize>| {
                let (ts, row) = &got[j];
                let dup = last.is_some_and(|l| got[l].1 == *row);
                if dup {
                    counts.duplicates += 1;
                } else {
                    counts.leaked += 1;
                }
                examples.push(format!(
                    "{}: {m} {device} stored at ts={ts} ({}) but not sent in that place",
                    if dup { "duplicate" } else { "extra" },
                    show(row)
                ));
            };
        let rejected: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.x == Expect::RejectedInOrder && !e.f.is_empty())
            .collect();
        while i < want.len() && j < got.len() {
            let e = want[i];
            // Points of one series in the same millisecond (the gateway read several frames in
            // one chunk): VictoriaMetrics keeps them all but their per-field order is arbitrary,
            // so such a group matches the next entries as per-field multisets.
            let group = got[j..]
                .iter()
                .take_while(|(ts, _)| *ts == got[j].0)
                .count();
            if group > 1 && i + group <= want.len() {
                let same = |f: &str| {
                    let mut a: Vec<f64> = want[i..i + group]
                        .iter()
                        .filter_map(|w| w.f.get(f).copied())
                        .collect();
                    let mut b: Vec<f64> = got[j..j + group]
                        .iter()
                        .filter_map(|(_, r)| r.get(f).copied())
                        .collect();
                    a.sort_by(f64::total_cmp);
                    b.sort_by(f64::total_cmp);
                    a.len() == group
                        && a.len() == b.len()
                        && a.iter().zip(&b).all(|(x, y)| same_value(*x, *y))
                };
                if want[i..i + group]
                    .iter()
                    .all(|w| w.f.keys().all(|f| same(f)))
                {
                    for w in &want[i..i + group] {
                        if w.x == Expect::InOrder {
                            counts.expected += 1;
                            counts.found += 1;
                        } else {
                            counts.unchecked += 1;
                        }
                    }
                    last_matched = None;
                    i += group;
                    j += group;
                    continue;
                }
            }
            if matches(e, &got[j].1) {
                if e.x == Expect::InOrder {
                    counts.expected += 1;
                    counts.found += 1;
                } else {
                    counts.unchecked += 1;
                }
                last_matched = Some(j);
                i += 1;
                j += 1;
                continue;
            }
            if e.x != Expect::InOrder {
                counts.unchecked += 1;
                i += 1;
                continue;
            }
            let row = &got[j].1;
            let repeat = last_matched.is_some_and(|l| got[l].1 == *row);
            let rejected_row = rejected.iter().any(|r| matches(r, row));
            let e_later = got[j + 1..]
                .iter()
                .take(ALIGN_LOOKAHEAD)
                .any(|(_, row)| matches(e, row));
            let row_later = want[i + 1..]
                .iter()
                .take(ALIGN_LOOKAHEAD)
                .any(|w| matches(w, row));
            if repeat || rejected_row || (e_later && !row_later) {
                // the store point is extra; this entry is looked at again against the next one
                extra(counts, &mut examples, j, last_matched);
                j += 1;
            } else if row_later {
                counts.expected += 1;
                counts.missing += 1;
                examples.push(format!(
                    "missing: {m} {device} sent at ts={} (in order)",
                    e.ts
                ));
                i += 1;
            } else {
                counts.expected += 1;
                counts.found += 1;
                counts.mismatched += 1;
                examples.push(format!(
                    "mismatched: {m} {device} sent at ts={}: expected {:?}, stored at ts={} ({})",
                    e.ts,
                    e.f,
                    got[j].0,
                    show(&got[j].1)
                ));
                last_matched = Some(j);
                i += 1;
                j += 1;
            }
        }
        for e in &want[i..] {
            if e.x == Expect::InOrder {
                counts.expected += 1;
                counts.missing += 1;
                examples.push(format!(
                    "missing: {m} {device} sent at ts={} (in order)",
                    e.ts
                ));
            } else {
                counts.unchecked += 1;
            }
        }
        for k in j..got.len() {
            extra(counts, &mut examples, k, last_matched);
        }
        for ex in examples {
            if report.examples.len() < 20 {
                report.examples.push(ex);
            }
        }
    }
}

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct StoreQuery {
    /// Base URL, e.g. `http://127.0.0.1:8428`.
    pub url: String,
    /// Which API.
    pub api: StoreApi,
    /// InfluxDB 1.x database.
    pub database: String,
    /// Keep only points tagged `gateway=<id>`.
    pub gateway_id: Option<String>,
}

fn get(agent: &ureq::Agent, url: &str, query: &[(&str, &str)]) -> Result<String, VerifyError> {
    let mut req = agent.get(url);
    for (k, v) in query {
        req = req.query(k, v);
    }
    let http = |reason: String| VerifyError::Http {
        url: url.to_owned(),
        reason,
    };
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            return Err(http(format!(
                "HTTP {code}: {}",
                body.chars().take(300).collect::<String>()
            )));
        }
        Err(e) => return Err(http(e.to_string())),
    };
    let mut body = String::new();
    resp.into_reader()
        .read_to_string(&mut body)
        .map_err(|e| http(e.to_string()))?;
    Ok(body)
}

/// Reads back every measurement of `shape` from the store.
pub fn fetch(q: &StoreQuery, shape: &Shape) -> Result<StoreIndex, VerifyError> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let base = q.url.trim_end_matches('/');
    let mut index = StoreIndex::default();
    if shape.tag_keys.is_empty() {
        return Ok(index);
    }
    // One second of margin either side; VictoriaMetrics takes seconds, InfluxDB nanoseconds.
    let start_s = (shape.min_ts.div_euclid(1000) - 1).to_string();
    let end_s = (shape.max_ts.div_euclid(1000) + 2).to_string();
    match q.api {
        StoreApi::V2 => {
            get(&agent, &format!("{base}/internal/force_flush"), &[])?;
            for m in shape.measurements() {
                let url = format!("{base}/api/v1/export");
                // Only this gateway's series when asked (parse_vm_export checks it again).
                let gateway = q.gateway_id.as_deref().map_or(String::new(), |g| {
                    format!(
                        ",gateway=\"{}\"",
                        g.replace('\\', "\\\\").replace('"', "\\\"")
                    )
                });
                let selector = format!("{{__name__=~\"{}_.+\"{gateway}}}", regex_escape(m));
                let body = get(
                    &agent,
                    &url,
                    &[("match[]", &selector), ("start", &start_s), ("end", &end_s)],
                )?;
                parse_vm_export(&body, shape, q.gateway_id.as_deref(), &mut index).map_err(
                    |reason| VerifyError::Answer {
                        url: url.clone(),
                        reason,
                    },
                )?;
            }
        }
        StoreApi::V1 => {
            for m in shape.measurements() {
                let url = format!("{base}/query");
                let sql = format!(
                    "SELECT * FROM \"{}\" WHERE time >= {}s AND time < {}s GROUP BY *",
                    m.replace('"', "\\\""),
                    start_s,
                    end_s
                );
                let body = get(
                    &agent,
                    &url,
                    &[
                        ("db", &q.database),
                        ("epoch", "ns"),
                        ("chunked", "true"),
                        ("chunk_size", "10000"),
                        ("q", &sql),
                    ],
                )?;
                parse_influx_query(&body, shape, q.gateway_id.as_deref(), &mut index).map_err(
                    |reason| VerifyError::Answer {
                        url: url.clone(),
                        reason,
                    },
                )?;
            }
        }
    }
    Ok(index)
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_entry(sensor: &str, ts: i64, pm: f64) -> Entry {
        Entry {
            m: "environment".into(),
            t: [
                ("district".to_string(), "d1".to_string()),
                ("sensor_id".to_string(), sensor.to_string()),
            ]
            .into(),
            ts,
            f: [
                ("pm2_5".to_string(), pm),
                ("temperature".to_string(), 27.25),
            ]
            .into(),
            x: Expect::Stored,
            fault: None,
            resent: false,
        }
    }

    /// A VictoriaMetrics export as it answers (captured shape): one series per field.
    const VM_EXPORT: &str = r#"{"metric":{"__name__":"environment_pm2_5","district":"d1","gateway":"gw-1","sensor_id":"env-0001"},"values":[12.3,14.1,15],"timestamps":[1000,2000,3000]}
{"metric":{"__name__":"environment_temperature","district":"d1","gateway":"gw-1","sensor_id":"env-0001"},"values":[27.25,27.25,27.25],"timestamps":[1000,2000,3000]}
{"metric":{"__name__":"environment_pm2_5","district":"d1","gateway":"gw-1","sensor_id":"env-0002"},"values":[9.9,9.9],"timestamps":[1000,1000]}
{"metric":{"__name__":"environment_temperature","district":"d1","gateway":"gw-1","sensor_id":"env-0002"},"values":[27.25,27.25],"timestamps":[1000,1000]}
{"metric":{"__name__":"environment_pm2_5","district":"d1","gateway":"gw-2","sensor_id":"env-0003"},"values":[1],"timestamps":[1000]}
"#;

    #[test]
    fn vm_export_compare_counts_every_kind_of_problem() {
        let entries = vec![
            env_entry("env-0001", 1000, 12.3),
            env_entry("env-0001", 2000, 14.0),
            env_entry("env-0001", 3000, 15.0),
            env_entry("env-0001", 4000, 16.0),
            env_entry("env-0002", 1000, 9.9),
            Entry {
                x: Expect::Rejected,
                fault: Some(FaultKind::NanToken),
                ..env_entry("env-0001", 3000, 15.0)
            },
            Entry {
                x: Expect::Rejected,
                fault: Some(FaultKind::MalformedJson),
                ..env_entry("env-0001", 5000, 15.0)
            },
            env_entry("env-0003", 1000, 1.0),
        ];
        let shape = Shape::of(&entries);
        let mut index = StoreIndex::default();
        parse_vm_export(VM_EXPORT, &shape, Some("gw-1"), &mut index).unwrap();
        assert_eq!(index.len(), 4);
        let report = compare(&entries, &index);
        let t = report.total();
        assert_eq!(
            t,
            Counts {
                expected: 6,
                found: 4,
                missing: 2,
                mismatched: 1,
                duplicates: 1,
                explained_duplicates: 0,
                rejected_sent: 2,
                leaked: 1,
                unchecked: 0
            }
        );
        assert!(!t.ok());
        assert_eq!(
            report.summary_line(),
            "verify: 6 expected, 4 found, 2 missing, 1 mismatched, 1 duplicates"
        );
        let d1 = report.devices[&("environment".to_string(), "d1/env-0001".to_string())];
        assert_eq!(
            (d1.expected, d1.found, d1.missing, d1.mismatched, d1.leaked),
            (4, 3, 1, 1, 1)
        );
        let table = report.table(50);
        assert!(
            table.contains(
                "mismatched: environment d1/env-0001 ts=2000: pm2_5: expected 14, stored 14.1"
            ),
            "{table}"
        );

        // Without the gateway filter, env-0003 (written by gw-2) is found.
        let mut all = StoreIndex::default();
        parse_vm_export(VM_EXPORT, &shape, None, &mut all).unwrap();
        assert_eq!(compare(&entries, &all).total().missing, 1);
    }

    fn gnss(ts: i64, fields: &[(&str, f64)], x: Expect, fault: Option<FaultKind>) -> Entry {
        Entry {
            m: "gnss".into(),
            t: [
                ("sensor_id".to_string(), "bus-17".to_string()),
                ("talker".to_string(), "GN".to_string()),
            ]
            .into(),
            ts,
            f: fields.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
            x,
            fault,
            resent: false,
        }
    }

    fn gnss_export(field: &str, points: &[(i64, f64)]) -> String {
        let (ts, vs): (Vec<i64>, Vec<f64>) = points.iter().copied().unzip();
        format!(
            "{{\"metric\":{{\"__name__\":\"gnss_{field}\",\"sensor_id\":\"bus-17\",\"talker\":\"GN\",\"gateway\":\"gw\"}},\"values\":{vs:?},\"timestamps\":{ts:?}}}\n"
        )
    }

    #[test]
    fn exclusive_manifests_explain_every_point_of_their_series() {
        use Expect::{Rejected, Stored};
        // Fix 1000: RMC corrupt, GGA whole (lat + satellites); fix 1100: no fix; fix 1200: whole.
        let entries = vec![
            gnss(1000, &[("lat", 10.5), ("satellites", 9.0)], Stored, None),
            gnss(
                1000,
                &[("lat", 10.5), ("speed_kmh", 30.0)],
                Rejected,
                Some(FaultKind::Checksum),
            ),
            gnss(1100, &[], Rejected, Some(FaultKind::NoFix)),
            gnss(1200, &[("lat", 10.6), ("satellites", 9.0)], Stored, None),
        ];
        let store = |lat: &[(i64, f64)], extra: &str| {
            let mut body = gnss_export("lat", lat);
            body.push_str(&gnss_export("satellites", &[(1000, 9.0), (1200, 9.0)]));
            body.push_str(extra);
            let mut index = StoreIndex::default();
            parse_vm_export(&body, &Shape::of(&entries), None, &mut index).unwrap();
            index
        };
        let clean = store(&[(1000, 10.5), (1200, 10.6)], "");
        let t = compare_with(&entries, &clean, true).total();
        assert!(t.ok(), "{t:?}");
        assert_eq!(
            (t.expected, t.found, t.rejected_sent, t.leaked),
            (2, 2, 2, 0)
        );
        // Not exclusive: the GGA point at 1000 counts against the corrupt RMC (the old rule).
        assert_eq!(compare(&entries, &clean).total().leaked, 1);

        // The corrupt RMC's speed got through at its fix's time.
        let speed = store(
            &[(1000, 10.5), (1200, 10.6)],
            &gnss_export("speed_kmh", &[(1000, 30.0)]),
        );
        let r = compare_with(&entries, &speed, true);
        assert_eq!(r.total().leaked, 1, "{}", r.table(10));
        // A position while there was no fix.
        let no_fix = store(&[(1000, 10.5), (1100, 0.0), (1200, 10.6)], "");
        assert_eq!(compare_with(&entries, &no_fix, true).total().leaked, 1);
        // A point at a time no fix had (a corrupt time field that got through).
        let elsewhere = store(&[(1000, 10.5), (1150, 10.55), (1200, 10.6)], "");
        let r = compare_with(&entries, &elsewhere, true);
        assert_eq!(r.total().leaked, 1);
        assert!(
            r.table(10).contains("extra: gnss bus-17/GN ts=1150 (lat)"),
            "{}",
            r.table(10)
        );
        // An extra field on a good fix.
        let hdop = store(
            &[(1000, 10.5), (1200, 10.6)],
            &gnss_export("hdop", &[(1200, 0.9)]),
        );
        assert_eq!(compare_with(&entries, &hdop, true).total().leaked, 1);
        // Outside the manifest's time range: not this run's.
        let later = store(&[(1000, 10.5), (1200, 10.6), (9000, 11.0)], "");
        assert!(compare_with(&entries, &later, true).total().ok());
    }

    #[test]
    fn duplicates_sent_on_purpose_are_explained() {
        let mut dup = env_entry("env-0002", 1000, 9.9);
        dup.fault = Some(FaultKind::Duplicate);
        let entries = vec![env_entry("env-0002", 1000, 9.9), dup];
        let mut index = StoreIndex::default();
        parse_vm_export(VM_EXPORT, &Shape::of(&entries), None, &mut index).unwrap();
        let t = compare(&entries, &index).total();
        assert_eq!(
            (t.expected, t.found, t.duplicates, t.explained_duplicates),
            (1, 1, 0, 1)
        );
        assert!(t.ok());
    }

    /// An InfluxDB 1.6 `/query?epoch=ns&chunked=true` answer: two chunks, tags per series.
    const INFLUX: &str = r#"{"results":[{"statement_id":0,"series":[{"name":"traffic","tags":{"direction":"nb","district":"d1","gateway":"gw-1","lane":"1","site":"site-01"},"columns":["time","count","heavy_count","occupancy","speed_avg"],"values":[[1795480200000000000,23,2,17.4,41.2],[1795480260000000000,25,null,18,40]]}],"partial":true}]}
{"results":[{"statement_id":0,"series":[{"name":"traffic","tags":{"direction":"sb","district":"d1","gateway":"gw-1","lane":"1","site":"site-01"},"columns":["time","count","heavy_count","occupancy","speed_avg"],"values":[[1795480200000000001,7,0,3.1,55]]}]}]}
"#;

    fn traffic_entry(direction: &str, ts: i64, count: f64, heavy: f64) -> Entry {
        Entry {
            m: "traffic".into(),
            t: [
                ("direction".to_string(), direction.to_string()),
                ("district".to_string(), "d1".to_string()),
                ("lane".to_string(), "1".to_string()),
                ("site".to_string(), "site-01".to_string()),
            ]
            .into(),
            ts,
            f: [
                ("count".to_string(), count),
                ("heavy_count".to_string(), heavy),
            ]
            .into(),
            x: Expect::Stored,
            fault: None,
            resent: false,
        }
    }

    #[test]
    fn influx_chunks_parse_and_compare() {
        let entries = vec![
            traffic_entry("nb", 1_795_480_200_000, 23.0, 2.0),
            traffic_entry("nb", 1_795_480_260_000, 25.0, 1.0),
            traffic_entry("sb", 1_795_480_200_000, 7.0, 0.0),
        ];
        let shape = Shape::of(&entries);
        let mut index = StoreIndex::default();
        parse_influx_query(INFLUX, &shape, Some("gw-1"), &mut index).unwrap();
        let t = compare(&entries, &index).total();
        // second nb point lacks heavy_count (mismatch); the sb point is 1 ns off the ms grid (missing)
        assert_eq!(
            (t.expected, t.found, t.missing, t.mismatched, t.duplicates),
            (3, 2, 1, 1, 0)
        );
    }

    #[test]
    fn influx_error_is_reported() {
        let shape = Shape::of(&[traffic_entry("nb", 1, 1.0, 1.0)]);
        let err = parse_influx_query(
            r#"{"results":[{"statement_id":0,"error":"database not found: x"}]}"#,
            &shape,
            None,
            &mut StoreIndex::default(),
        )
        .unwrap_err();
        assert!(err.contains("database not found"), "{err}");
    }

    #[test]
    fn entries_with_different_tag_sets_in_one_measurement() {
        let mut frigate = env_entry("x", 1000, 0.8);
        frigate.m = "camera_event".into();
        frigate.t = [
            ("camera", "cam-01"),
            ("label", "car"),
            ("event_type", "new"),
            ("zones", "crosswalk"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        frigate.f = [("score".to_string(), 0.8)].into();
        let mut plate = frigate.clone();
        plate.t = [
            ("camera", "cam-01"),
            ("label", "license_plate"),
            ("event_type", "plate"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        plate.ts = 2000;
        let entries = vec![frigate, plate];
        let export = r#"{"metric":{"__name__":"camera_event_score","camera":"cam-01","event_type":"new","label":"car","zones":"crosswalk"},"values":[0.8],"timestamps":[1000]}
{"metric":{"__name__":"camera_event_score","camera":"cam-01","event_type":"plate","label":"license_plate"},"values":[0.8],"timestamps":[2000]}
"#;
        let mut index = StoreIndex::default();
        parse_vm_export(export, &Shape::of(&entries), None, &mut index).unwrap();
        let t = compare(&entries, &index).total();
        assert_eq!((t.expected, t.found, t.missing), (2, 2, 0));
    }

    fn serial_entry(sensor: &str, ts: i64, pm: f64, x: Expect) -> Entry {
        Entry {
            m: "air_quality".into(),
            t: [
                ("model".to_string(), "pms5003".to_string()),
                ("sensor_id".to_string(), sensor.to_string()),
            ]
            .into(),
            ts,
            f: [("pm2_5".to_string(), pm), ("pm10".to_string(), pm + 1.0)].into(),
            x,
            fault: None,
            resent: false,
        }
    }

    fn serial_export(sensor: &str, points: &[(i64, f64)]) -> String {
        let ts: Vec<i64> = points.iter().map(|p| p.0).collect();
        let pm: Vec<f64> = points.iter().map(|p| p.1).collect();
        let pm10: Vec<f64> = pm.iter().map(|v| v + 1.0).collect();
        format!(
            "{{\"metric\":{{\"__name__\":\"air_quality_pm2_5\",\"gateway\":\"g\",\"model\":\"pms5003\",\"sensor_id\":\"{sensor}\"}},\"values\":{pm:?},\"timestamps\":{ts:?}}}\n\
             {{\"metric\":{{\"__name__\":\"air_quality_pm10\",\"gateway\":\"g\",\"model\":\"pms5003\",\"sensor_id\":\"{sensor}\"}},\"values\":{pm10:?},\"timestamps\":{ts:?}}}\n"
        )
    }

    fn sequence_totals(entries: &[Entry], export: &str) -> Counts {
        let mut index = StoreIndex::default();
        parse_vm_export(export, &Shape::of(entries), None, &mut index).unwrap();
        compare(entries, &index).total()
    }

    #[test]
    fn serial_sequences_match_by_order_not_timestamp() {
        use Expect::*;
        let entries = vec![
            serial_entry("pm-1", 10_000, 8.0, InOrder),
            serial_entry("pm-1", 11_000, 99.0, RejectedInOrder),
            serial_entry("pm-1", 12_000, 7.0, InOrder),
            serial_entry("pm-1", 13_000, 7.0, MaybeInOrder),
            serial_entry("pm-1", 14_000, 5.0, InOrder),
        ];
        // The gateway's receive times are a few ms after the send times.
        let good = serial_export("pm-1", &[(10_004, 8.0), (12_003, 7.0), (14_009, 5.0)]);
        let t = sequence_totals(&entries, &good);
        assert_eq!(
            (
                t.expected,
                t.found,
                t.missing,
                t.leaked,
                t.rejected_sent,
                t.unchecked
            ),
            (3, 3, 0, 0, 1, 1)
        );
        assert!(t.ok());
        // the optional entry arrived as well
        let with_maybe = serial_export(
            "pm-1",
            &[(10_004, 8.0), (12_003, 7.0), (13_002, 7.0), (14_009, 5.0)],
        );
        assert!(sequence_totals(&entries, &with_maybe).ok());

        // one missing, the corrupt frame stored (leaked), a duplicate, a wrong value
        let bad = serial_export(
            "pm-1",
            &[(10_004, 8.0), (10_005, 8.0), (11_002, 99.0), (14_009, 5.5)],
        );
        let t = sequence_totals(&entries, &bad);
        assert_eq!(
            (
                t.expected,
                t.found,
                t.missing,
                t.mismatched,
                t.duplicates,
                t.leaked
            ),
            (3, 2, 1, 1, 1, 1),
            "{t:?}"
        );
        assert!(!t.ok());

        // points outside the series' time window (another run) are not looked at
        let other_run = serial_export(
            "pm-1",
            &[
                (1_000, 3.0),
                (10_004, 8.0),
                (12_003, 7.0),
                (14_009, 5.0),
                (99_000, 1.0),
            ],
        );
        assert!(sequence_totals(&entries, &other_run).ok());

        // two frames read in one chunk share a millisecond: VictoriaMetrics may return each
        // field's two values in either order
        let same_ms = r#"{"metric":{"__name__":"air_quality_pm2_5","model":"pms5003","sensor_id":"pm-1"},"values":[7,8,5],"timestamps":[12003,12003,14009]}
{"metric":{"__name__":"air_quality_pm10","model":"pms5003","sensor_id":"pm-1"},"values":[9,8,6],"timestamps":[12003,12003,14009]}
"#;
        let t = sequence_totals(&entries, same_ms);
        assert_eq!(
            (t.expected, t.found, t.missing, t.mismatched, t.leaked),
            (3, 3, 0, 0, 0),
            "{t:?}"
        );

        // a series with only rejected entries must stay empty
        let dead = vec![serial_entry("pm-9", 10_000, 1.0, RejectedInOrder)];
        assert!(sequence_totals(&dead, "").ok());
        let t = sequence_totals(&dead, &serial_export("pm-9", &[(10_100, 4.0)]));
        assert_eq!((t.leaked, t.rejected_sent), (1, 1));
    }

    #[test]
    fn an_entry_with_invalid_values_matches_only_a_row_without_them() {
        // The second message's pm10 was invalid (`#`): the gateway must drop it.
        let mut wx = serial_entry("wx-3", 10_000, 8.0, Expect::InOrder);
        wx.fault = Some(FaultKind::Invalid);
        wx.f.remove("pm10");
        let entries = vec![serial_entry("wx-3", 9_000, 7.0, Expect::InOrder), wx];
        let export = |pm10: &str| {
            format!(
                "{{\"metric\":{{\"__name__\":\"air_quality_pm2_5\",\"model\":\"pms5003\",\"sensor_id\":\"wx-3\"}},\"values\":[7.0,8.0],\"timestamps\":[9050,10050]}}\n\
                 {{\"metric\":{{\"__name__\":\"air_quality_pm10\",\"model\":\"pms5003\",\"sensor_id\":\"wx-3\"}},\"values\":{pm10},\"timestamps\":[9050{}]}}\n",
                if pm10.contains(',') { ",10050" } else { "" }
            )
        };
        assert!(sequence_totals(&entries, &export("[8.0]")).ok());
        // The invalid value stored as a number.
        let t = sequence_totals(&entries, &export("[8.0,0.0]"));
        assert!(!t.ok(), "{t:?}");
    }

    #[test]
    fn longest_measurement_prefix_wins() {
        let mut a = env_entry("e", 1, 1.0);
        a.m = "env".into();
        let mut b = env_entry("e", 1, 1.0);
        b.m = "env_extra".into();
        let shape = Shape::of(&[a, b]);
        assert_eq!(
            shape.split_name("env_extra_pm2_5"),
            Some(("env_extra", "pm2_5"))
        );
        assert_eq!(shape.split_name("env_pm2_5"), Some(("env", "pm2_5")));
        assert_eq!(shape.split_name("other_x"), None);
    }
}
