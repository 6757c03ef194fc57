//! Limits against hostile or broken input, applied where every input's readings pass
//! (`pipeline::Ingest`): the checks are [`ioc_model::limits`]; this wrapper counts every
//! rejection as `readings_rejected_total{input,reason}` (reasons: [`LimitViolation::label`]),
//! every clamp as `readings_clamped_total{input}`, and logs both with the input and the sensor
//! (`sensor_id` tag, else the series), at most once per [`LOG_INTERVAL`] per input and reason so
//! a flooding device cannot flood the log too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use ioc_model::limits::{
    sensor_of, series_hash, LimitChecker, LimitOverride, LimitValues, LimitViolation, LimitsConfig,
    Passed, TimestampPolicy, SERIES_WINDOW_NS,
};
use ioc_model::{ReadingMut, ReadingView};

use crate::loglimit::LogLimiter;

/// The shortest time between two warnings for the same input and reason.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits of all inputs, shared by all inputs (inside `Ingest`), with their counting and
/// logging.
#[derive(Debug, Default)]
pub struct Limits {
    checker: LimitChecker,
    /// One rate limit per input and reason.
    logs: Mutex<HashMap<(String, &'static str), LogLimiter>>,
}

/// Counts a message or reading an input refused (`readings_rejected_total{input,reason}`).
pub fn count_rejected(input: &str, reason: &'static str) {
    metrics::counter!("readings_rejected_total", "input" => input.to_owned(), "reason" => reason)
        .increment(1);
    crate::totals::count_rejected();
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        Limits {
            checker: LimitChecker::new(config),
            logs: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        self.checker.config()
    }

    /// Checks `reading` (already validated, `gateway` tag added) against `input`'s limits at
    /// wall-clock `now_ns`; may clamp its timestamp. Counts and logs what it refuses or clamps.
    pub fn check<R: ReadingMut + ?Sized>(
        &self,
        input: &str,
        reading: &mut R,
        now_ns: i64,
    ) -> Result<Passed, LimitViolation> {
        self.check_clock(input, reading, now_ns, true)
    }

    /// [`Limits::check`]; with `clock_trusted == false` (the box's clock is not synchronised)
    /// the past/future window is not applied.
    pub fn check_clock<R: ReadingMut + ?Sized>(
        &self,
        input: &str,
        reading: &mut R,
        now_ns: i64,
        clock_trusted: bool,
    ) -> Result<Passed, LimitViolation> {
        let result = self
            .checker
            .check_clock(input, reading, now_ns, clock_trusted);
        match &result {
            Err(v) => {
                count_rejected(input, v.label());
                self.warn(input, v.label(), reading, &v.to_string());
            }
            Ok(Passed::Clamped { from_ns }) => {
                metrics::counter!("readings_clamped_total", "input" => input.to_owned())
                    .increment(1);
                let values = self.config().for_input(input);
                let msg = format!(
                    "timestamp {from_ns} ns clamped to {} ns (outside -{} s .. +{} s)",
                    reading.timestamp_ns(),
                    values.max_past_s,
                    values.max_future_s
                );
                self.warn(input, "clamped", reading, &msg);
            }
            Ok(Passed::Unchanged) => {}
        }
        result
    }

    /// How many distinct series `input` has created in its current hour window.
    pub fn series_in_window(&self, input: &str) -> usize {
        self.checker.series_in_window(input)
    }

    /// Logs a warning for `input` and `reason`, at most once per [`LOG_INTERVAL`]; the next
    /// warning says how many were suppressed in between. Returns whether it logged.
    fn warn<R: ReadingView + ?Sized>(
        &self,
        input: &str,
        reason: &'static str,
        reading: &R,
        msg: &str,
    ) -> bool {
        let suppressed = {
            let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            let gate = logs
                .entry((input.to_owned(), reason))
                .or_insert_with(|| LogLimiter::new(1, LOG_INTERVAL));
            match gate.admit(Instant::now()) {
                Some(suppressed) => suppressed,
                None => return false,
            }
        };
        let sensor = sensor_of(reading);
        tracing::warn!(
            input,
            sensor = %sensor,
            reason,
            suppressed_since_last = suppressed,
            "reading refused or changed by a limit: {msg}"
        );
        true
    }
}
