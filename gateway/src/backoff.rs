//! One way to wait between retries: exponential backoff with a cap, a reset and a chosen jitter.
//!
//! Why it exists: every retry loop of the gateway (broker reconnects, store writes, commits the
//! disk refused, serial ports that vanished) needs the same properties: it grows so a dead peer
//! is not hammered, it is capped so recovery is noticed within seconds, and, where a fleet of
//! gateways shares the peer, it is jittered so they do not come back in lockstep.
//!
//! The wait before retry *n* (0-based) is drawn below a **ceiling** of `min(cap, base · 2ⁿ)`:
//!
//! | [`Jitter`] | wait | used by |
//! |---|---|---|
//! | `Equal` (default) | uniform in `[ceiling/2, ceiling]` | broker reconnects, buffer commit retries |
//! | `Full` | uniform in `[0, ceiling]` | store writes (many gateways, one store) |
//! | `None` | exactly the ceiling | a local serial port or the local disk, no one else to meet |
//!
//! [`Backoff::reset`] after a success starts again at `base`. A peer that says when to come
//! back (`Retry-After`) is obeyed through [`Backoff::next_wait_or`]: its delay replaces the drawn
//! one, and the ceiling still grows as if the retry had been drawn.

use std::time::Duration;

use rand::Rng;

/// How the wait is drawn below the ceiling (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the ceiling: deterministic doubling.
    None,
    /// Uniform in `[ceiling/2, ceiling]`.
    #[default]
    Equal,
    /// Uniform in `[0, ceiling]`.
    Full,
}

/// Exponential backoff with a cap and jitter (see the module docs).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    current: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// Starts at `base` (at least 1 ms), doubles up to `cap`, with [`Jitter::Equal`].
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.max(Duration::from_millis(1));
        Backoff {
            base,
            cap: cap.max(base),
            current: base,
            jitter: Jitter::Equal,
        }
    }

    /// The same with another jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// After a success: the next wait is short again.
    pub fn reset(&mut self) {
        self.current = self.base;
    }

    /// The next wait; the ceiling doubles (up to the cap) for the one after.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = self.current.saturating_mul(2).min(self.cap);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let wait = match self.jitter {
            Jitter::None => nanos,
            Jitter::Equal => nanos / 2 + rand::rng().random_range(0..=nanos - nanos / 2),
            Jitter::Full => rand::rng().random_range(0..=nanos),
        };
        Duration::from_nanos(wait)
    }

    /// The peer's own delay when it gave one (`Retry-After`), else the next drawn wait; either
    /// way the ceiling grows as for [`Backoff::next_wait`].
    pub fn next_wait_or(&mut self, told: Option<Duration>) -> Duration {
        let drawn = self.next_wait();
        told.unwrap_or(drawn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_within_equal_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let ceilings = [100u64, 200, 400, 800, 1000, 1000];
        for c in ceilings {
            let w = b.next_wait().as_millis() as u64;
            assert!(w >= c / 2 && w <= c, "wait {w} outside [{}, {c}]", c / 2);
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn without_jitter_it_doubles_exactly() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
            .with_jitter(Jitter::None);
        let waits: Vec<u64> = (0..10).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(200));
    }

    #[test]
    fn full_jitter_stays_below_the_ceiling_and_uses_the_range() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400))
            .with_jitter(Jitter::Full);
        let mut below_half = false;
        for c in [100u128, 200, 400, 400, 400] {
            let w = b.next_wait().as_millis();
            assert!(w <= c, "wait {w} above the ceiling {c}");
            below_half |= w < c / 2;
        }
        for _ in 0..200 {
            below_half |= b.next_wait() < Duration::from_millis(200);
        }
        assert!(below_half, "full jitter never went below half the ceiling");
    }

    #[test]
    fn a_told_delay_replaces_the_draw_but_the_ceiling_still_grows() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
            .with_jitter(Jitter::None);
        assert_eq!(
            b.next_wait_or(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(b.next_wait_or(None), Duration::from_millis(200));
    }
}
