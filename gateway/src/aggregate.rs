//! Edge aggregation: for high-rate sensors on a metered 4G uplink, forward `mean`, `min`, `max`
//! and `count` per field and time window instead of every raw reading.
//!
//! Windows are tumbling and aligned to the epoch (`[k·w, (k+1)·w)`), one per series
//! (measurement + tags). A window is closed, and its aggregate emitted, when a reading of the
//! same series arrives for a later window, or when the clock passes its end plus a grace period
//! (late readings within the grace still count). The aggregate reading keeps the measurement and
//! tags, adds tag `agg=<w>s`, is stamped with the window start, and has fields `<f>_mean`,
//! `<f>_min`, `<f>_max`, `<f>_count` for every numeric field `f` (bool and string fields are not
//! aggregated).
//!
//! Durability: the open windows are part of what an input acknowledges, so the state is saved
//! ([`Aggregator::save`], write-temp + fsync + rename) before the raw messages are acked, and
//! loaded on start: a window that spans a gateway restart still aggregates every reading of it.
//! An aggregate that was emitted but whose state change was not yet saved is emitted again after a
//! crash, with the same series, timestamp and values: the store keeps one point.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{FieldValue, Reading};

/// Running statistics of one field in one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FieldStats {
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
}

impl FieldStats {
    fn new(v: f64) -> Self {
        FieldStats {
            sum: v,
            min: v,
            max: v,
            count: 1,
        }
    }
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.count += 1;
    }
}

/// One open window of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub measurement: String,
    pub tags: BTreeMap<String, String>,
    pub start_ns: i64,
    pub fields: BTreeMap<String, FieldStats>,
    /// Timestamps already counted: a redelivered reading (same series and time, as after a crash
    /// between saving the windows and acking) is not counted twice, as the store would keep one.
    #[serde(default)]
    pub seen: std::collections::BTreeSet<i64>,
}

/// Why the aggregation state could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("aggregation state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A reading for a window that was already closed and emitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("reading at {timestamp_ns} ns is too late: its window was already closed and forwarded")]
pub struct LateReading {
    pub timestamp_ns: i64,
}

/// What is saved between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    closed_before_ns: i64,
    windows: Vec<Window>,
}

/// The aggregation state of one input.
#[derive(Debug)]
pub struct Aggregator {
    window_ns: i64,
    grace_ns: i64,
    /// Keyed by series (measurement + sorted tags) and window start.
    open: BTreeMap<(String, i64), Window>,
    /// Every window ending (plus grace) at or before this was emitted.
    closed_before_ns: i64,
    path: Option<PathBuf>,
    dirty: bool,
}

fn series_key(measurement: &str, tags: &BTreeMap<String, String>) -> String {
    let mut k = measurement.to_owned();
    for (t, v) in tags {
        k.push('\u{1f}');
        k.push_str(t);
        k.push('=');
        k.push_str(v);
    }
    k
}

fn numeric(v: &FieldValue) -> Option<f64> {
    match v {
        FieldValue::Float(f) => Some(*f),
        FieldValue::Int(i) => Some(*i as f64),
        FieldValue::UInt(u) => Some(*u as f64),
        FieldValue::Bool(_) | FieldValue::Str(_) => None,
    }
}

impl Aggregator {
    /// An aggregator with windows of `window_s` seconds and `grace_s` seconds for late readings,
    /// keeping its state in `path` (if any) and resuming from it.
    pub fn open(
        window_s: u64,
        grace_s: u64,
        path: Option<PathBuf>,
    ) -> Result<Self, AggregateError> {
        let mut a = Aggregator {
            window_ns: (window_s.max(1) as i64).saturating_mul(1_000_000_000),
            grace_ns: (grace_s as i64).saturating_mul(1_000_000_000),
            open: BTreeMap::new(),
            closed_before_ns: i64::MIN,
            path,
            dirty: false,
        };
        if let Some(p) = &a.path {
            match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<SavedState>(&bytes) {
                    Ok(state) => {
                        a.closed_before_ns = state.closed_before_ns;
                        for w in state.windows {
                            a.open
                                .insert((series_key(&w.measurement, &w.tags), w.start_ns), w);
                        }
                    }
                    Err(e) => tracing::warn!(
                        path = %p.display(),
                        "aggregation state unreadable ({e}); starting with empty windows"
                    ),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(AggregateError::Io {
                        path: p.clone(),
                        source,
                    })
                }
            }
        }
        Ok(a)
    }

    /// Start of the window that holds `ts_ns`.
    pub fn window_start(&self, ts_ns: i64) -> i64 {
        ts_ns.div_euclid(self.window_ns) * self.window_ns
    }

    fn window_due(&self, start_ns: i64) -> i64 {
        start_ns
            .saturating_add(self.window_ns)
            .saturating_add(self.grace_ns)
    }

    /// Adds a reading to its window. A reading whose window was already closed and forwarded
    /// is refused (the caller counts it): folding it in would overwrite the forwarded aggregate
    /// with a partial one.
    pub fn add(&mut self, reading: &Reading) -> Result<(), LateReading> {
        let start = self.window_start(reading.timestamp_ns);
        if self.window_due(start) <= self.closed_before_ns {
            return Err(LateReading {
                timestamp_ns: reading.timestamp_ns,
            });
        }
        let key = (series_key(&reading.measurement, &reading.tags), start);
        let w = self.open.entry(key).or_insert_with(|| Window {
            measurement: reading.measurement.clone(),
            tags: reading.tags.clone(),
            start_ns: start,
            fields: BTreeMap::new(),
            seen: Default::default(),
        });
        if !w.seen.insert(reading.timestamp_ns) {
            return Ok(());
        }
        for (name, value) in &reading.fields {
            if let Some(v) = numeric(value) {
                w.fields
                    .entry(name.clone())
                    .and_modify(|s| s.add(v))
                    .or_insert_with(|| FieldStats::new(v));
            }
        }
        self.dirty = true;
        Ok(())
    }

    /// Closes every window whose end plus grace is at or before `now_ns` (the gateway's clock),
    /// and returns their aggregates.
    pub fn flush_due(&mut self, now_ns: i64) -> Vec<Reading> {
        let due: Vec<(String, i64)> = self
            .open
            .iter()
            .filter(|(_, w)| self.window_due(w.start_ns) <= now_ns)
            .map(|(k, _)| k.clone())
            .collect();
        if now_ns > self.closed_before_ns {
            self.closed_before_ns = now_ns;
            self.dirty = true;
        }
        let mut out = Vec::with_capacity(due.len());
        for k in due {
            if let Some(w) = self.open.remove(&k) {
                out.push(self.emit(&w));
            }
        }
        out
    }

    fn emit(&self, w: &Window) -> Reading {
        let mut r = Reading::new(w.measurement.clone(), w.start_ns);
        r.tags = w.tags.clone();
        r.tags
            .insert("agg".into(), format!("{}s", self.window_ns / 1_000_000_000));
        for (name, s) in &w.fields {
            r.fields.insert(
                format!("{name}_mean"),
                FieldValue::Float(s.sum / s.count as f64),
            );
            r.fields
                .insert(format!("{name}_min"), FieldValue::Float(s.min));
            r.fields
                .insert(format!("{name}_max"), FieldValue::Float(s.max));
            r.fields
                .insert(format!("{name}_count"), FieldValue::Int(s.count as i64));
        }
        r
    }

    /// Open windows, for inspection.
    pub fn windows(&self) -> impl Iterator<Item = &Window> {
        self.open.values()
    }

    /// Saves the open windows durably if they changed (write temp, fsync, rename, fsync dir).
    pub fn save(&mut self) -> Result<(), AggregateError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let io = |source| AggregateError::Io {
            path: path.clone(),
            source,
        };
        let state = SavedState {
            closed_before_ns: self.closed_before_ns,
            windows: self.open.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&state).map_err(|e| io(e.into()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn r(sensor: &str, ts_s: f64, pm: f64) -> Reading {
        Reading::new("environment", (ts_s * S as f64) as i64)
            .tag("sensor_id", sensor)
            .field("pm2_5", FieldValue::Float(pm))
            .field("ok", FieldValue::Bool(true))
    }

    fn field(r: &Reading, name: &str) -> FieldValue {
        r.fields[name].clone()
    }

    #[test]
    fn windows_give_exact_mean_min_max_count() {
        let mut a = Aggregator::open(60, 5, None).unwrap();
        let t0 = 1_700_000_040; // window [1_700_000_040, 1_700_000_100)
        assert_eq!(t0 % 60, 0);
        a.add(&r("s1", 1_700_000_040.0, 10.0)).unwrap();
        a.add(&r("s1", 1_700_000_099.9, 30.0)).unwrap();
        a.add(&r("s2", 1_700_000_050.0, 7.5)).unwrap();
        a.add(&r("s1", 1_700_000_045.0, 20.0)).unwrap();
        a.add(&r("s1", 1_700_000_101.0, 99.0)).unwrap(); // next window
        assert!(a.flush_due((t0 + 64) * S).is_empty(), "grace not over yet");
        a.add(&r("s1", 1_700_000_098.0, 0.5)).unwrap(); // late, but within grace
        let mut out = a.flush_due((t0 + 65) * S);
        out.sort_by(|x, y| x.tags["sensor_id"].cmp(&y.tags["sensor_id"]));
        assert_eq!(out.len(), 2);
        let c = &out[0];
        assert_eq!(c.timestamp_ns, t0 * S);
        assert_eq!(c.tags["agg"], "60s");
        assert_eq!(c.tags["sensor_id"], "s1");
        assert_eq!(field(c, "pm2_5_mean"), FieldValue::Float(15.125));
        assert_eq!(field(c, "pm2_5_min"), FieldValue::Float(0.5));
        assert_eq!(field(c, "pm2_5_max"), FieldValue::Float(30.0));
        assert_eq!(field(c, "pm2_5_count"), FieldValue::Int(4));
        assert!(
            !c.fields.contains_key("ok_mean"),
            "bools are not aggregated"
        );
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(field(&out[1], "pm2_5_mean"), FieldValue::Float(7.5));
        assert_eq!(field(&out[1], "pm2_5_count"), FieldValue::Int(1));

        // Too late: that window is gone.
        assert!(a.add(&r("s1", 1_700_000_050.0, 1.0)).is_err());
        // The next window is still open and closes later.
        let out = a.flush_due((t0 + 60 + 65) * S);
        assert_eq!(out.len(), 1);
        assert_eq!(field(&out[0], "pm2_5_mean"), FieldValue::Float(99.0));
    }

    #[test]
    fn a_window_spans_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agg").join("env.state");
        {
            let mut a = Aggregator::open(60, 5, Some(path.clone())).unwrap();
            a.add(&r("s1", 1_700_000_041.0, 1.0)).unwrap();
            a.add(&r("s1", 1_700_000_042.0, 5.0)).unwrap();
            a.save().unwrap();
            // dropped without flushing: a crash or restart
        }
        let mut a = Aggregator::open(60, 5, Some(path)).unwrap();
        a.add(&r("s1", 1_700_000_043.0, 6.0)).unwrap();
        let out = a.flush_due(1_700_000_200 * S);
        assert_eq!(out.len(), 1);
        assert_eq!(field(&out[0], "pm2_5_mean"), FieldValue::Float(4.0));
        assert_eq!(field(&out[0], "pm2_5_min"), FieldValue::Float(1.0));
        assert_eq!(field(&out[0], "pm2_5_max"), FieldValue::Float(6.0));
        assert_eq!(field(&out[0], "pm2_5_count"), FieldValue::Int(3));
    }

    #[test]
    fn a_redelivered_reading_is_counted_once() {
        let mut a = Aggregator::open(60, 5, None).unwrap();
        a.add(&r("s1", 1_700_000_041.0, 1.0)).unwrap();
        a.add(&r("s1", 1_700_000_041.0, 1.0)).unwrap();
        a.add(&r("s1", 1_700_000_042.0, 3.0)).unwrap();
        let out = a.flush_due(1_700_000_200 * S);
        assert_eq!(field(&out[0], "pm2_5_count"), FieldValue::Int(2));
        assert_eq!(field(&out[0], "pm2_5_mean"), FieldValue::Float(2.0));
    }

    #[test]
    fn corrupt_state_starts_empty_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.state");
        std::fs::write(&path, b"{not json").unwrap();
        let a = Aggregator::open(60, 5, Some(path)).unwrap();
        assert_eq!(a.windows().count(), 0);
    }
}
