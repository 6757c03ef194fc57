//! The uplink budget of a metered link (4G with a monthly allowance), as a pure state machine:
//! a byte rate (`max_bytes_per_s`) and a daily byte budget (`daily_budget_mb`), on the
//! compressed bytes the output sends.
//!
//! Why it exists: a cabinet on a prepaid 4G SIM that drains a six-hour backlog at full speed
//! can spend a month's allowance in an afternoon, and the SIM is then cut off — urgent data
//! included. So normal data is paced and capped, and urgent data never waits:
//!
//! - **rate**: a token bucket of `max_bytes_per_s` tokens a second, holding at most one
//!   second's worth. A request may start while the bucket is not in debt; its bytes are then
//!   taken, possibly driving it into debt, so a batch larger than a second's worth still goes
//!   (the average rate holds; a bucket that had to be as large as the largest batch would not
//!   pace at all). A normal batch waits until the debt is paid; an urgent one goes at once and
//!   its bytes still count.
//! - **day**: bytes sent since the start of the current **UTC day** (00:00 UTC; the counter
//!   resets then). The count survives a restart and a config reload: the sink keeps it in
//!   [`STATE_FILE`] in the data directory ([`UplinkBudget::state`] / [`UplinkBudget::restore`];
//!   written at most every [`SAVE_INTERVAL`], so a crash forgets at most that much). A normal batch that would take
//!   the day past `daily_budget_mb` waits for the next UTC midnight; urgent batches may exceed
//!   the budget. UTC rather than local midnight because a gateway's local time zone is not
//!   reliably known to it (no tz database on the smallest images) and an unsynchronised clock
//!   must not reset the budget twice; a carrier's billing day rarely matches either.
//!
//! Every request's bytes are counted (retries and split halves included: they cross the link
//! too), also when no limit is set, for `output_bytes_sent_total` and
//! `output_bytes_sent_today`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

/// Where the day's count is kept, in the data directory.
pub const STATE_FILE: &str = "uplink-budget";
/// The count is written at most this often.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// The text of [`STATE_FILE`]: `day=<UTC day number> bytes=<bytes sent that day>`.
pub fn format_state(day: u64, bytes: u64) -> String {
    format!("day={day} bytes={bytes}\n")
}

/// Reads [`format_state`]'s text back; `None` for anything else (the count then starts at 0).
pub fn parse_state(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split_whitespace();
    let day = words.next()?.strip_prefix("day=")?.parse().ok()?;
    let bytes = words.next()?.strip_prefix("bytes=")?.parse().ok()?;
    words.next().is_none().then_some((day, bytes))
}

/// Why a normal batch waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// It may go now.
    Go,
    /// The rate's debt is paid in this long.
    Rate(Duration),
    /// The daily budget is spent; the next UTC day starts in this long.
    Daily(Duration),
}

/// The budget's state (see the module docs).
#[derive(Debug, Clone)]
pub struct UplinkBudget {
    rate: Option<u64>,
    /// Tokens (bytes); negative is debt.
    tokens: f64,
    refilled_at: Option<Instant>,
    daily: Option<u64>,
    /// The UTC day number `sent_today` counts for.
    day: u64,
    sent_today: u64,
}

fn utc_day(wall: SystemTime) -> (u64, u64) {
    let secs = wall
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (secs / DAY, DAY - secs % DAY)
}

impl UplinkBudget {
    /// `max_bytes_per_s` and `daily_bytes`; `None` (or 0) is no limit.
    pub fn new(max_bytes_per_s: Option<u64>, daily_bytes: Option<u64>) -> Self {
        let rate = max_bytes_per_s.filter(|r| *r > 0);
        UplinkBudget {
            rate,
            tokens: rate.map_or(0.0, |r| r as f64),
            refilled_at: None,
            daily: daily_bytes.filter(|d| *d > 0),
            day: 0,
            sent_today: 0,
        }
    }

    /// Whether any limit is set.
    pub fn limited(&self) -> bool {
        self.rate.is_some() || self.daily.is_some()
    }

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.rate else { return };
        if let Some(then) = self.refilled_at {
            let earned = now.saturating_duration_since(then).as_secs_f64() * rate as f64;
            self.tokens = (self.tokens + earned).min(rate as f64);
        }
        self.refilled_at = Some(now);
    }

    fn roll_day(&mut self, wall: SystemTime) {
        let (day, _) = utc_day(wall);
        if day != self.day {
            self.day = day;
            self.sent_today = 0;
        }
    }

    /// Whether a daily budget is set (the count is then worth keeping across restarts).
    pub fn has_daily(&self) -> bool {
        self.daily.is_some()
    }

    /// `(UTC day, bytes sent that day)`, for [`format_state`].
    pub fn state(&mut self, wall: SystemTime) -> (u64, u64) {
        self.roll_day(wall);
        (self.day, self.sent_today)
    }

    /// Takes over a count saved by an earlier process (or the sink a reload replaced); a count
    /// of another day is ignored.
    pub fn restore(&mut self, wall: SystemTime, day: u64, bytes: u64) {
        self.roll_day(wall);
        if day == self.day {
            self.sent_today = self.sent_today.max(bytes);
        }
    }

    /// Bytes sent in the current UTC day.
    pub fn sent_today(&mut self, wall: SystemTime) -> u64 {
        self.roll_day(wall);
        self.sent_today
    }

    /// Whether a request of `bytes` may start now. Urgent requests always may.
    pub fn check(&mut self, now: Instant, wall: SystemTime, bytes: u64, urgent: bool) -> Hold {
        self.refill(now);
        self.roll_day(wall);
        if urgent {
            return Hold::Go;
        }
        if let Some(daily) = self.daily {
            // A batch larger than the whole budget goes first thing in a day, or never would.
            if self.sent_today > 0 && self.sent_today.saturating_add(bytes) > daily {
                return Hold::Daily(Duration::from_secs(utc_day(wall).1));
            }
        }
        if let Some(rate) = self.rate {
            if self.tokens < 0.0 {
                return Hold::Rate(Duration::from_secs_f64(-self.tokens / rate as f64));
            }
        }
        Hold::Go
    }

    /// A request of `bytes` went out.
    pub fn spent(&mut self, now: Instant, wall: SystemTime, bytes: u64) {
        self.refill(now);
        self.roll_day(wall);
        self.sent_today = self.sent_today.saturating_add(bytes);
        if self.rate.is_some() {
            self.tokens -= bytes as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn no_limits_never_hold_but_count() {
        let t = Instant::now();
        let mut b = UplinkBudget::new(None, Some(0));
        assert!(!b.limited());
        for _ in 0..100 {
            assert_eq!(b.check(t, wall(0), 1 << 20, false), Hold::Go);
            b.spent(t, wall(0), 1 << 20);
        }
        assert_eq!(b.sent_today(wall(0)), 100 << 20);
    }

    #[test]
    fn the_rate_paces_normal_data_and_lets_urgent_through() {
        let t0 = Instant::now();
        let w = wall(1000);
        let mut b = UplinkBudget::new(Some(1000), None);
        assert_eq!(b.check(t0, w, 3000, false), Hold::Go, "a full bucket");
        b.spent(t0, w, 3000);
        // 1000 tokens minus 3000: 2 s of debt.
        assert_eq!(
            b.check(t0, w, 100, false),
            Hold::Rate(Duration::from_secs(2))
        );
        assert_eq!(b.check(t0, w, 100, true), Hold::Go, "urgent goes");
        b.spent(t0, w, 500);
        assert_eq!(
            b.check(t0 + Duration::from_secs(1), w, 100, false),
            Hold::Rate(Duration::from_millis(1500)),
            "urgent bytes count"
        );
        assert_eq!(
            b.check(t0 + Duration::from_millis(2500), w, 100, false),
            Hold::Go
        );
        // Idle time earns at most one second's worth.
        b.spent(t0 + Duration::from_millis(2500), w, 0);
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.check(later, w, 0, false), Hold::Go);
        b.spent(later, w, 1500);
        assert_eq!(
            b.check(later, w, 1, false),
            Hold::Rate(Duration::from_millis(500))
        );
    }

    #[test]
    fn the_daily_budget_holds_normal_data_until_utc_midnight() {
        let t = Instant::now();
        let day = 20_000 * DAY;
        let noon = wall(day + 12 * 3600);
        let mut b = UplinkBudget::new(None, Some(10_000));
        assert!(b.limited());
        b.spent(t, noon, 9_000);
        assert_eq!(
            b.check(t, noon, 1_000, false),
            Hold::Go,
            "exactly the budget"
        );
        b.spent(t, noon, 1_000);
        assert_eq!(
            b.check(t, noon, 1, false),
            Hold::Daily(Duration::from_secs(12 * 3600))
        );
        assert_eq!(
            b.check(t, noon, 5_000, true),
            Hold::Go,
            "urgent may exceed it"
        );
        b.spent(t, noon, 5_000);
        assert_eq!(b.sent_today(noon), 15_000);
        let next_day = wall(day + DAY + 1);
        assert_eq!(b.check(t, next_day, 1, false), Hold::Go, "a new UTC day");
        assert_eq!(b.sent_today(next_day), 0);
        // One batch larger than the whole budget goes first thing in the day.
        assert_eq!(b.check(t, next_day, 50_000, false), Hold::Go);
        b.spent(t, next_day, 50_000);
        assert!(matches!(b.check(t, next_day, 1, false), Hold::Daily(_)));
    }

    #[test]
    fn the_days_count_is_restored_only_for_the_same_day() {
        let noon = wall(20_000 * DAY + 12 * 3600);
        let mut b = UplinkBudget::new(None, Some(10_000));
        assert!(b.has_daily());
        b.restore(noon, 20_000, 10_000);
        assert!(matches!(
            b.check(Instant::now(), noon, 1, false),
            Hold::Daily(_)
        ));
        assert_eq!(b.state(noon), (20_000, 10_000));
        let mut fresh = UplinkBudget::new(None, Some(10_000));
        fresh.restore(noon, 19_999, 10_000);
        assert_eq!(
            fresh.state(noon),
            (20_000, 0),
            "yesterday's count does not hold today"
        );
        let text = format_state(20_000, 10_000);
        assert_eq!(text, "day=20000 bytes=10000\n");
        assert_eq!(parse_state(&text), Some((20_000, 10_000)));
        for bad in [
            "",
            "day=1",
            "bytes=2 day=1",
            "day=x bytes=2",
            "day=1 bytes=2 more",
        ] {
            assert_eq!(parse_state(bad), None, "{bad:?}");
        }
        assert!(!UplinkBudget::new(Some(1000), None).has_daily());
    }
}
