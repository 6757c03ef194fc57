//! One way to wait between retries: exponential backoff with "equal jitter".
//!
//! Why it exists: every retry loop of the gateway (broker reconnects, commits the disk refused)
//! needs the same three properties: it grows so a dead peer is not hammered, it is capped so
//! recovery is noticed within seconds, and it is jittered so a fleet of gateways that lost the
//! same broker does not come back in lockstep. The jitter is "equal jitter": each wait is drawn
//! uniformly from `[ceiling/2, ceiling]`, where the ceiling starts at `base` and doubles per
//! attempt up to `cap`; [`Backoff::reset`] after a success starts again at `base`.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with equal jitter (see the module docs).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.max(Duration::from_millis(1));
        Backoff {
            base,
            cap: cap.max(base),
            current: base,
        }
    }

    /// After a success: the next wait is short again.
    pub fn reset(&mut self) {
        self.current = self.base;
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.cap);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(ms / 2 + rand::thread_rng().gen_range(0..=ms / 2))
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
}
