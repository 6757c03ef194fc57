//! One way to keep a flood of bad input from flooding the log.
//!
//! Why it exists: a sensor spewing garbage or a misconfigured publisher can produce thousands of
//! rejections a second; each is counted in the metrics, but the log should say what happens in a
//! few lines a technician can read. [`LogLimiter`] lets the first `max` events of each period
//! through, then counts the rest and, at the end of the period, logs one summary line with how
//! many were suppressed.

use std::time::{Duration, Instant};

/// Lets at most `max` log lines through per `period`, then summarises (see the module docs).
#[derive(Debug)]
pub struct LogLimiter {
    max: u32,
    period: Duration,
    seen: u32,
    since: Instant,
}

impl LogLimiter {
    pub fn new(max: u32, period: Duration) -> Self {
        LogLimiter {
            max,
            period,
            seen: 0,
            since: Instant::now(),
        }
    }

    /// Whether this event may be logged in full.
    pub fn allow(&mut self) -> bool {
        self.seen = self.seen.saturating_add(1);
        self.seen <= self.max
    }

    /// Events suppressed so far in this period.
    pub fn suppressed(&self) -> u32 {
        self.seen.saturating_sub(self.max)
    }

    /// At the end of a period: logs `what` with the suppressed count (if any) and starts a new
    /// period. Call it regularly (e.g. once per batch); it does nothing mid-period.
    pub fn summarise(&mut self, what: &str) {
        self.summarise_at(what, Instant::now());
    }

    fn summarise_at(&mut self, what: &str, now: Instant) -> bool {
        if now.duration_since(self.since) < self.period {
            return false;
        }
        let suppressed = self.suppressed();
        if suppressed > 0 {
            tracing::warn!(suppressed, "{what}");
        }
        self.seen = 0;
        self.since = now;
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
}
