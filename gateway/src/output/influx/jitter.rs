//! Spreading a fleet in time: a random jitter on every retry (`flush_jitter_ms`) and a
//! deterministic *drain start spread* after an outage (`drain_spread_ms`), as pure state.
//!
//! Why it exists: hundreds of gateways behind one store fail together when the store goes
//! away, and without care they come back together: every retry lands in the same instant
//! (worst with a `Retry-After`, which tells all of them the same delay), and when the store
//! answers again every box starts draining its backlog at once — the storm that knocks the
//! store over a second time. Two measures, one random and one deterministic:
//!
//! - [`JitterSource`]: each retry's delay gets `U[0, flush_jitter)` added. The generator is
//!   seeded from a hash of the gateway id *and* process randomness, so two boxes never draw
//!   the same sequence even when cloned from one image with one id by mistake.
//! - [`drain_offset`]: a box's offset in `[0, drain_spread)` is a hash of its gateway id
//!   mapped evenly onto the range (multiply-shift of a 64-bit FNV-1a with a final mix): the
//!   same box always gets the same offset, and 500 ids fill the range evenly. [`DrainPacer`]
//!   holds *normal* batches after a recovery until that offset has passed; urgent batches are
//!   never held.

use std::time::{Duration, Instant};

/// 64-bit FNV-1a of `id`, with SplitMix64's finaliser so close ids (`gw-001`, `gw-002`) land
/// far apart. Stable across versions and platforms (unlike `std`'s `DefaultHasher`): a box's
/// offset must not move when the gateway is upgraded.
pub fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// This gateway's drain start offset in `[0, spread)` (zero when `spread` is zero), whole
/// milliseconds.
pub fn drain_offset(gateway_id: &str, spread: Duration) -> Duration {
    let ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    let scaled = (u128::from(id_hash(gateway_id)) * u128::from(ms)) >> 64;
    Duration::from_millis(u64::try_from(scaled).unwrap_or(0))
}

/// The retry jitter generator (SplitMix64: small, fast, good enough for spreading timers; not
/// for secrets).
#[derive(Debug, Clone)]
pub struct JitterSource {
    state: u64,
    max: Duration,
}

impl JitterSource {
    /// Seeded from `gateway_id` and `process_random` (the sink passes `rand::random()`; tests
    /// pass a constant to get a deterministic sequence).
    pub fn new(gateway_id: &str, process_random: u64, max: Duration) -> Self {
        JitterSource {
            state: id_hash(gateway_id) ^ process_random,
            max,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// A draw in `[0, max)` (zero when `max` is zero).
    pub fn draw(&mut self) -> Duration {
        let nanos = u64::try_from(self.max.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        let scaled = (u128::from(self.next_u64()) * u128::from(nanos)) >> 64;
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(0))
    }

    /// `delay` plus a draw.
    pub fn jittered(&mut self, delay: Duration) -> Duration {
        delay.saturating_add(self.draw())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The store takes batches; nothing is held.
    Steady,
    /// Attempts have failed since the last success.
    Failing,
    /// The store took a batch again at `since`: normal batches wait until `since + offset`.
    Recovered { since: Instant },
}

/// Holds the backlog after an outage until this gateway's [`drain_offset`] has passed.
#[derive(Debug, Clone)]
pub struct DrainPacer {
    offset: Duration,
    phase: Phase,
}

impl DrainPacer {
    pub fn new(gateway_id: &str, spread: Duration) -> Self {
        DrainPacer {
            offset: drain_offset(gateway_id, spread),
            phase: Phase::Steady,
        }
    }

    /// This gateway's offset.
    pub fn offset(&self) -> Duration {
        self.offset
    }

    /// An attempt failed in a way that is retried (no answer, 5xx, 429, ...).
    pub fn on_failure(&mut self) {
        self.phase = Phase::Failing;
    }

    /// The store took a request. After failures this starts the hold.
    pub fn on_success(&mut self, now: Instant) {
        if self.phase == Phase::Failing {
            self.phase = if self.offset.is_zero() {
                Phase::Steady
            } else {
                Phase::Recovered { since: now }
            };
        }
    }

    /// How long a batch is to wait before its first request: zero for urgent data and outside
    /// a recovery; for a normal batch the rest of the offset. Once the offset has passed the
    /// pacer is steady again.
    pub fn hold(&mut self, now: Instant, urgent: bool) -> Duration {
        let Phase::Recovered { since } = self.phase else {
            return Duration::ZERO;
        };
        let left = (since + self.offset).saturating_duration_since(now);
        if left.is_zero() {
            self.phase = Phase::Steady;
        }
        if urgent {
            Duration::ZERO
        } else {
            left
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_deterministic_different_and_inside_the_spread() {
        let spread = Duration::from_secs(30);
        let a = drain_offset("gw-kota-001", spread);
        assert_eq!(
            a,
            drain_offset("gw-kota-001", spread),
            "same id, same offset"
        );
        assert_ne!(a, drain_offset("gw-kota-002", spread));
        assert!(a < spread);
        assert_eq!(drain_offset("gw-kota-001", Duration::ZERO), Duration::ZERO);
        // Pinned: an upgrade must not move a box's offset (the hash is ours, not std's).
        assert_eq!(id_hash(""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(
            drain_offset("gw-kota-001", spread),
            drain_offset("gw-kota-001", spread)
        );
    }

    #[test]
    fn five_hundred_boxes_fill_the_spread_evenly() {
        let spread = Duration::from_millis(10_000);
        let mut buckets = [0u32; 10];
        for i in 0..500 {
            let o = drain_offset(&format!("gw-{i:03}"), spread);
            assert!(o < spread);
            buckets[usize::try_from(o.as_millis() / 1000).unwrap()] += 1;
        }
        // 50 expected per second of the spread; a fair hash stays well within 25..=75.
        for (i, n) in buckets.iter().enumerate() {
            assert!(
                (25..=75).contains(n),
                "second {i} got {n} of 500: {buckets:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_in_range_and_differs_between_boxes() {
        let max = Duration::from_millis(500);
        let mut a = JitterSource::new("gw-a", 7, max);
        let mut b = JitterSource::new("gw-b", 7, max);
        let da: Vec<Duration> = (0..100).map(|_| a.draw()).collect();
        let db: Vec<Duration> = (0..100).map(|_| b.draw()).collect();
        assert!(da.iter().chain(&db).all(|d| *d < max));
        assert_ne!(da, db);
        assert!(da.iter().any(|d| *d < max / 4) && da.iter().any(|d| *d > max * 3 / 4));
        let mut again = JitterSource::new("gw-a", 7, max);
        assert_eq!(da[0], again.draw(), "same seed, same sequence");
        let mut other_process = JitterSource::new("gw-a", 8, max);
        assert_ne!(da[0], other_process.draw(), "same id, other process");
        let mut off = JitterSource::new("gw-a", 7, Duration::ZERO);
        assert_eq!(off.jittered(Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn the_pacer_holds_normal_batches_after_a_recovery_only() {
        let t0 = Instant::now();
        let mut p = DrainPacer::new("gw-1", Duration::from_secs(10));
        let offset = p.offset();
        assert!(!offset.is_zero());
        assert_eq!(p.hold(t0, false), Duration::ZERO, "steady: nothing held");
        p.on_success(t0);
        assert_eq!(p.hold(t0, false), Duration::ZERO, "success without outage");
        p.on_failure();
        assert_eq!(
            p.hold(t0, false),
            Duration::ZERO,
            "failing: the retry paces"
        );
        p.on_success(t0);
        assert_eq!(p.hold(t0, true), Duration::ZERO, "urgent is never held");
        assert_eq!(p.hold(t0, false), offset);
        let half = offset / 2;
        assert_eq!(p.hold(t0 + half, false), offset - half);
        assert_eq!(p.hold(t0 + offset, false), Duration::ZERO);
        assert_eq!(p.hold(t0, false), Duration::ZERO, "steady again");
    }

    #[test]
    fn no_spread_no_hold() {
        let t0 = Instant::now();
        let mut p = DrainPacer::new("gw-1", Duration::ZERO);
        p.on_failure();
        p.on_success(t0);
        assert_eq!(p.hold(t0, false), Duration::ZERO);
    }
}
