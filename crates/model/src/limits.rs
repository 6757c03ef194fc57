//! Limits against hostile or broken input: a buggy or compromised device must not be able to
//! flood the IOC store, blow up the gateway's memory, or smear readings across decades.
//!
//! [`LimitChecker::check`] runs on every reading that passed [`crate::Reading::validate`], and
//! enforces, per input:
//! - the number of fields and tags of one reading,
//! - the length of names (measurement, tag keys, field keys), of tag values and of string fields,
//! - how far in the past or the future a timestamp may be (`reject`, or `clamp` to the edge),
//! - a cardinality guard: at most `max_series_per_hour` distinct series (measurement + tag set)
//!   per input per hour. A reading that would create a series beyond the limit is rejected;
//!   series already seen in the current hour still pass. The guard holds at most that many
//!   64-bit hashes per input and forgets them all at the top of each hour window, so its memory
//!   is bounded by `inputs × max_series_per_hour × ~16 bytes`.
//!
//! The checks are pure: the gateway's pipeline (`ioc_gateway::limits::Limits`) counts and logs
//! what they refuse or clamp, so the fuzz targets can run them without a metrics recorder.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use serde::Deserialize;

use crate::{FieldRef, ReadingMut, ReadingView};

/// The length of a cardinality window.
pub const SERIES_WINDOW_NS: i64 = 3_600 * 1_000_000_000;

/// What happens to a reading whose timestamp is outside `[now - max_past_s, now + max_future_s]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampPolicy {
    /// Refuse the reading (counted under `timestamp_too_old` / `timestamp_in_future`).
    #[default]
    Reject,
    /// Move the timestamp to the nearest allowed instant (counted as clamped).
    Clamp,
}

/// The limit values that apply to one input. Every value must be above 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitValues {
    pub max_fields: usize,
    /// Counts the `gateway` tag the gateway adds.
    pub max_tags: usize,
    /// Measurement, tag key and field key length, in bytes.
    pub max_name_len: usize,
    pub max_tag_value_len: usize,
    pub max_string_field_len: usize,
    /// Distinct series (measurement + tag set) one input may create per hour.
    pub max_series_per_hour: usize,
    /// How old a timestamp may be. The default (10 years) catches devices whose clock reset to
    /// 1970 or 2000 while letting long backlogs through.
    pub max_past_s: u64,
    /// How far ahead a timestamp may be (clock drift, a wrong time zone).
    pub max_future_s: u64,
    pub timestamp_policy: TimestampPolicy,
}

fn d_max_fields() -> usize {
    200
}
fn d_max_tags() -> usize {
    64
}
fn d_max_name_len() -> usize {
    256
}
fn d_max_tag_value_len() -> usize {
    1024
}
fn d_max_string_field_len() -> usize {
    64 * 1024
}
fn d_max_series_per_hour() -> usize {
    10_000
}
fn d_max_past_s() -> u64 {
    10 * 365 * 86_400
}
fn d_max_future_s() -> u64 {
    3_600
}

impl Default for LimitValues {
    fn default() -> Self {
        LimitValues {
            max_fields: d_max_fields(),
            max_tags: d_max_tags(),
            max_name_len: d_max_name_len(),
            max_tag_value_len: d_max_tag_value_len(),
            max_string_field_len: d_max_string_field_len(),
            max_series_per_hour: d_max_series_per_hour(),
            max_past_s: d_max_past_s(),
            max_future_s: d_max_future_s(),
            timestamp_policy: TimestampPolicy::default(),
        }
    }
}

/// A per-input override: only the keys given replace the global value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    pub max_fields: Option<usize>,
    pub max_tags: Option<usize>,
    pub max_name_len: Option<usize>,
    pub max_tag_value_len: Option<usize>,
    pub max_string_field_len: Option<usize>,
    pub max_series_per_hour: Option<usize>,
    pub max_past_s: Option<u64>,
    pub max_future_s: Option<u64>,
    pub timestamp_policy: Option<TimestampPolicy>,
}

/// `[limits]`: global values (same keys and defaults as [`LimitValues`]), and
/// `[limits.input.<input name>]` overrides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "d_max_fields")]
    pub max_fields: usize,
    #[serde(default = "d_max_tags")]
    pub max_tags: usize,
    #[serde(default = "d_max_name_len")]
    pub max_name_len: usize,
    #[serde(default = "d_max_tag_value_len")]
    pub max_tag_value_len: usize,
    #[serde(default = "d_max_string_field_len")]
    pub max_string_field_len: usize,
    #[serde(default = "d_max_series_per_hour")]
    pub max_series_per_hour: usize,
    #[serde(default = "d_max_past_s")]
    pub max_past_s: u64,
    #[serde(default = "d_max_future_s")]
    pub max_future_s: u64,
    #[serde(default)]
    pub timestamp_policy: TimestampPolicy,
    /// Keyed by the input's name (`name`, or `mqtt<index>` / `serial<index>`).
    #[serde(default)]
    pub input: BTreeMap<String, LimitOverride>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig::from_values(LimitValues::default())
    }
}

impl LimitValues {
    fn with(&self, o: &LimitOverride) -> LimitValues {
        LimitValues {
            max_fields: o.max_fields.unwrap_or(self.max_fields),
            max_tags: o.max_tags.unwrap_or(self.max_tags),
            max_name_len: o.max_name_len.unwrap_or(self.max_name_len),
            max_tag_value_len: o.max_tag_value_len.unwrap_or(self.max_tag_value_len),
            max_string_field_len: o.max_string_field_len.unwrap_or(self.max_string_field_len),
            max_series_per_hour: o.max_series_per_hour.unwrap_or(self.max_series_per_hour),
            max_past_s: o.max_past_s.unwrap_or(self.max_past_s),
            max_future_s: o.max_future_s.unwrap_or(self.max_future_s),
            timestamp_policy: o.timestamp_policy.unwrap_or(self.timestamp_policy),
        }
    }

    /// The dotted key (relative to the section) of the first value that is 0.
    fn first_zero(&self) -> Option<&'static str> {
        let sizes = [
            ("max_fields", self.max_fields),
            ("max_tags", self.max_tags),
            ("max_name_len", self.max_name_len),
            ("max_tag_value_len", self.max_tag_value_len),
            ("max_string_field_len", self.max_string_field_len),
            ("max_series_per_hour", self.max_series_per_hour),
        ];
        if let Some((k, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Some(k);
        }
        if self.max_past_s == 0 {
            return Some("max_past_s");
        }
        if self.max_future_s == 0 {
            return Some("max_future_s");
        }
        None
    }
}

impl LimitsConfig {
    /// A config with these global values and no overrides.
    pub fn from_values(v: LimitValues) -> Self {
        LimitsConfig {
            max_fields: v.max_fields,
            max_tags: v.max_tags,
            max_name_len: v.max_name_len,
            max_tag_value_len: v.max_tag_value_len,
            max_string_field_len: v.max_string_field_len,
            max_series_per_hour: v.max_series_per_hour,
            max_past_s: v.max_past_s,
            max_future_s: v.max_future_s,
            timestamp_policy: v.timestamp_policy,
            input: BTreeMap::new(),
        }
    }

    /// The global values.
    pub fn global(&self) -> LimitValues {
        LimitValues {
            max_fields: self.max_fields,
            max_tags: self.max_tags,
            max_name_len: self.max_name_len,
            max_tag_value_len: self.max_tag_value_len,
            max_string_field_len: self.max_string_field_len,
            max_series_per_hour: self.max_series_per_hour,
            max_past_s: self.max_past_s,
            max_future_s: self.max_future_s,
            timestamp_policy: self.timestamp_policy,
        }
    }

    /// The limits that apply to `input`.
    pub fn for_input(&self, input: &str) -> LimitValues {
        match self.input.get(input) {
            Some(o) => self.global().with(o),
            None => self.global(),
        }
    }

    /// Checks every value is above 0; returns the dotted config key and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let global = self.global();
        if let Some(k) = global.first_zero() {
            return Err((format!("limits.{k}"), "must be above 0".into()));
        }
        for (name, o) in &self.input {
            if let Some(k) = global.with(o).first_zero() {
                return Err((format!("limits.input.{name}.{k}"), "must be above 0".into()));
            }
        }
        Ok(())
    }
}

/// Why a reading broke a limit. [`label`](Self::label) is the metric's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitViolation {
    #[error("{count} fields, more than the limit of {limit}")]
    TooManyFields { count: usize, limit: usize },
    #[error("{count} tags, more than the limit of {limit}")]
    TooManyTags { count: usize, limit: usize },
    #[error("{what} is {len} bytes long, more than the limit of {limit} (starts {start:?})")]
    NameTooLong {
        what: &'static str,
        len: usize,
        limit: usize,
        start: String,
    },
    #[error("tag {key:?} has a value of {len} bytes, more than the limit of {limit}")]
    TagValueTooLong {
        key: String,
        len: usize,
        limit: usize,
    },
    #[error("string field {key:?} is {len} bytes long, more than the limit of {limit}")]
    StringFieldTooLong {
        key: String,
        len: usize,
        limit: usize,
    },
    #[error("timestamp {timestamp_ns} ns is more than {max_past_s} s in the past")]
    TimestampTooOld { timestamp_ns: i64, max_past_s: u64 },
    #[error("timestamp {timestamp_ns} ns is more than {max_future_s} s in the future")]
    TimestampInFuture {
        timestamp_ns: i64,
        max_future_s: u64,
    },
    #[error("a new series beyond the limit of {limit} distinct series per hour for this input")]
    SeriesLimit { limit: usize },
}

impl LimitViolation {
    /// Short, stable, distinct names for the `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            LimitViolation::TooManyFields { .. } => "too_many_fields",
            LimitViolation::TooManyTags { .. } => "too_many_tags",
            LimitViolation::NameTooLong { .. } => "name_too_long",
            LimitViolation::TagValueTooLong { .. } => "tag_value_too_long",
            LimitViolation::StringFieldTooLong { .. } => "string_field_too_long",
            LimitViolation::TimestampTooOld { .. } => "timestamp_too_old",
            LimitViolation::TimestampInFuture { .. } => "timestamp_in_future",
            LimitViolation::SeriesLimit { .. } => "series_limit",
        }
    }
}
/// What [`LimitChecker::check`] did to a reading it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    Unchanged,
    /// The timestamp was moved to the edge of the allowed window.
    Clamped {
        from_ns: i64,
    },
}

/// The distinct series one input created in the current hour window.
#[derive(Debug)]
struct SeriesWindow {
    started_ns: i64,
    seen: HashSet<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Bounded: one entry per input, each holding at most `max_series_per_hour` hashes.
    series: HashMap<String, SeriesWindow>,
}

/// The limits of all inputs and the cardinality guard's state. Shared by all inputs; the lock is
/// held only for a hash-set lookup.
#[derive(Debug, Default)]
pub struct LimitChecker {
    config: LimitsConfig,
    state: Mutex<State>,
}

/// A hash of measurement + sorted tag set: the identity of a series in the store.
pub fn series_hash<R: ReadingView + ?Sized>(reading: &R) -> u64 {
    // SipHash with fixed keys: stable within the process, no allocation.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    reading.measurement().hash(&mut h);
    for (k, v) in reading.tags() {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

impl LimitChecker {
    pub fn new(config: LimitsConfig) -> Self {
        LimitChecker {
            config,
            state: Mutex::new(State::default()),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Checks `reading` (already validated, `gateway` tag added) against `input`'s limits at
    /// wall-clock `now_ns`; may clamp its timestamp (then [`Passed::Clamped`]).
    pub fn check<R: ReadingMut + ?Sized>(
        &self,
        input: &str,
        reading: &mut R,
        now_ns: i64,
    ) -> Result<Passed, LimitViolation> {
        self.check_clock(input, reading, now_ns, true)
    }

    /// [`LimitChecker::check`], saying whether `now_ns` can be trusted: with
    /// `clock_trusted == false` (the box's clock is not synchronised) the past/future window is
    /// not applied, so a correctly stamped device reading is never refused or clamped because
    /// the box's own clock is wrong. Every other limit applies.
    pub fn check_clock<R: ReadingMut + ?Sized>(
        &self,
        input: &str,
        reading: &mut R,
        now_ns: i64,
        clock_trusted: bool,
    ) -> Result<Passed, LimitViolation> {
        let values = self.config.for_input(input);
        self.check_values(&values, input, reading, now_ns, clock_trusted)
    }

    fn check_values<R: ReadingMut + ?Sized>(
        &self,
        v: &LimitValues,
        input: &str,
        reading: &mut R,
        now_ns: i64,
        clock_trusted: bool,
    ) -> Result<Passed, LimitViolation> {
        if reading.field_count() > v.max_fields {
            return Err(LimitViolation::TooManyFields {
                count: reading.field_count(),
                limit: v.max_fields,
            });
        }
        if reading.tag_count() > v.max_tags {
            return Err(LimitViolation::TooManyTags {
                count: reading.tag_count(),
                limit: v.max_tags,
            });
        }
        let long_name = |what: &'static str, s: &str| {
            (s.len() > v.max_name_len).then(|| LimitViolation::NameTooLong {
                what,
                len: s.len(),
                limit: v.max_name_len,
                start: s.chars().take(32).collect(),
            })
        };
        if let Some(e) = long_name("measurement", reading.measurement()) {
            return Err(e);
        }
        for (key, value) in reading.tags() {
            if let Some(e) = long_name("tag key", key) {
                return Err(e);
            }
            if value.len() > v.max_tag_value_len {
                return Err(LimitViolation::TagValueTooLong {
                    key: key.to_owned(),
                    len: value.len(),
                    limit: v.max_tag_value_len,
                });
            }
        }
        for (key, value) in reading.fields() {
            if let Some(e) = long_name("field key", key) {
                return Err(e);
            }
            if let FieldRef::Str(s) = value {
                if s.len() > v.max_string_field_len {
                    return Err(LimitViolation::StringFieldTooLong {
                        key: key.to_owned(),
                        len: s.len(),
                        limit: v.max_string_field_len,
                    });
                }
            }
        }

        let mut passed = Passed::Unchanged;
        let earliest = now_ns.saturating_sub(secs_to_ns(v.max_past_s));
        let latest = now_ns.saturating_add(secs_to_ns(v.max_future_s));
        let ts = reading.timestamp_ns();
        if clock_trusted && (ts < earliest || ts > latest) {
            match v.timestamp_policy {
                TimestampPolicy::Reject if ts < earliest => {
                    return Err(LimitViolation::TimestampTooOld {
                        timestamp_ns: ts,
                        max_past_s: v.max_past_s,
                    })
                }
                TimestampPolicy::Reject => {
                    return Err(LimitViolation::TimestampInFuture {
                        timestamp_ns: ts,
                        max_future_s: v.max_future_s,
                    })
                }
                TimestampPolicy::Clamp => {
                    reading.set_timestamp_ns(ts.clamp(earliest, latest));
                    passed = Passed::Clamped { from_ns: ts };
                }
            }
        }

        // Last, so readings refused for other reasons take no slot.
        let hash = series_hash(reading);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.series.contains_key(input) {
            // Once per input: the name is not copied on every reading.
            state.series.insert(
                input.to_owned(),
                SeriesWindow {
                    started_ns: now_ns,
                    seen: HashSet::new(),
                },
            );
        }
        let Some(window) = state.series.get_mut(input) else {
            return Ok(passed);
        };
        if now_ns.saturating_sub(window.started_ns) >= SERIES_WINDOW_NS
            || now_ns < window.started_ns
        {
            window.started_ns = now_ns;
            window.seen.clear();
            window.seen.shrink_to(v.max_series_per_hour.min(1024));
        }
        if !window.seen.contains(&hash) {
            if window.seen.len() >= v.max_series_per_hour {
                return Err(LimitViolation::SeriesLimit {
                    limit: v.max_series_per_hour,
                });
            }
            window.seen.insert(hash);
        }
        Ok(passed)
    }

    /// How many distinct series `input` has created in its current hour window.
    pub fn series_in_window(&self, input: &str) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.series.get(input).map_or(0, |w| w.seen.len())
    }
}

/// The `sensor_id` tag, or the series (measurement and tags, shortened) when there is none.
pub fn sensor_of<R: ReadingView + ?Sized>(reading: &R) -> String {
    if let Some(id) = reading.tag_value("sensor_id") {
        return id.chars().take(128).collect();
    }
    let mut s = reading.measurement().chars().take(64).collect::<String>();
    for (k, v) in reading.tags().filter(|(k, _)| *k != "gateway").take(8) {
        s.push(',');
        s.extend(k.chars().take(32));
        s.push('=');
        s.extend(v.chars().take(32));
    }
    s
}

fn secs_to_ns(s: u64) -> i64 {
    i64::try_from(s)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000_000)
}
