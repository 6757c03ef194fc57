//! One way to keep a flood of events from flooding the log.
//!
//! Why it exists: a sensor spewing garbage, a misconfigured publisher or a store that is down
//! can produce thousands of the same event a second; each is counted in the metrics, but the log
//! should say what happens in a few lines a technician can read. Every rate-limited log line of
//! the gateway goes through [`LogLimiter`]: at most `max` lines per `period` get through, the
//! rest are counted as suppressed, and the count is reported either with the next line let
//! through ([`LogLimiter::admit`]: "…, 41 suppressed since the last line") or in a summary at
//! the end of the period ([`LogLimiter::summarise`]).
//!
//! Its users: the MQTT committer's rejected messages (10 per 10 s, then a summary), the limits'
//! refusals (one line per input and reason per 10 s), the store's failures (one line per kind
//! of failure per minute, a new kind at once: [`LogLimiter::open`]) and a serial port's bad
//! frames (one summary per minute).

use std::time::{Duration, Instant};

/// Lets at most `max` log lines through per `period`, counting the rest (see the module docs).
#[derive(Debug, Clone)]
pub struct LogLimiter {
    max: u32,
    period: Duration,
    /// Events seen in the current period.
    seen: u32,
    /// When the current period started.
    since: Instant,
    /// Events held back since the last line that reported them.
    held: u64,
}

impl LogLimiter {
    /// A limiter whose first period starts now.
    pub fn new(max: u32, period: Duration) -> Self {
        LogLimiter {
            max,
            period,
            seen: 0,
            since: Instant::now(),
            held: 0,
        }
    }

    /// Whether this event may be logged in full, in the current period (periods advance only
    /// in [`LogLimiter::summarise`]).
    pub fn allow(&mut self) -> bool {
        self.seen = self.seen.saturating_add(1);
        if self.seen <= self.max {
            true
        } else {
            self.held = self.held.saturating_add(1);
            false
        }
    }

    /// Counts an event at `now`; a period starts with its first event (or when the last one is
    /// over), so two lines let through are always at least `period` apart when `max` is 1.
    /// `Some(events held back since the last line)` when this one may be logged (the line should
    /// say that count), `None` when it is held back.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.seen == 0 || now.saturating_duration_since(self.since) >= self.period {
            self.open(now);
        }
        self.allow().then(|| std::mem::take(&mut self.held))
    }

    /// Starts a new period at `now`: the next event is let through (e.g. a new kind of failure).
    pub fn open(&mut self, now: Instant) {
        self.seen = 0;
        self.since = now;
    }

    /// Events held back since the last line that reported them.
    pub fn suppressed(&self) -> u64 {
        self.held
    }

    /// At the end of a period: logs `what` with the suppressed count (if any) and starts a new
    /// period. Call it regularly (e.g. once per batch); it does nothing mid-period.
    pub fn summarise(&mut self, what: &str) {
        self.summarise_at(what, Instant::now());
    }

    fn summarise_at(&mut self, what: &str, now: Instant) -> bool {
        if now.saturating_duration_since(self.since) < self.period {
            return false;
        }
        let suppressed = std::mem::take(&mut self.held);
        if suppressed > 0 {
            tracing::warn!(suppressed, "{what}");
        }
        self.open(now);
        suppressed > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_max_through_per_period_then_summarises_and_starts_again() {
        let mut l = LogLimiter::new(3, Duration::from_secs(10));
        let start = l.since;
        let allowed = (0..10).filter(|_| l.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(l.suppressed(), 7);
        assert!(
            !l.summarise_at("x", start + Duration::from_secs(5)),
            "mid-period"
        );
        assert!(l.summarise_at("x", start + Duration::from_secs(10)));
        assert!(l.allow());
        assert_eq!(l.suppressed(), 0);
    }

    #[test]
    fn admit_lets_one_line_per_period_through_and_reports_what_it_held_back() {
        let mut l = LogLimiter::new(1, Duration::from_secs(60));
        let t0 = l.since;
        assert_eq!(l.admit(t0), Some(0), "the first event at once");
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(59)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(61)), None);
        l.open(t0 + Duration::from_secs(62));
        assert_eq!(
            l.admit(t0 + Duration::from_secs(62)),
            Some(1),
            "a new period lets the next one through at once"
        );
    }
}
