//! Which of an output's URLs (`urls = [...]`) the next request goes to, as a pure state
//! machine: request results in, the URL to use out.
//!
//! Why it exists: an IOC puts two or more ingest points (e.g. `vmagent` instances) in front of
//! its store so that one can be restarted or fail. The gateway must then move to another at
//! once, not retry the dead one with backoff while the buffer fills, and must come back to the
//! preferred one when it is healthy again. The rules:
//! - URLs are in order of preference; the first one not resting is used;
//! - a URL whose request failed (no response, or a 5xx) rests, for 1 s after its first failure,
//!   doubling up to [`MAX_REST`] while it keeps failing; a success clears that;
//! - after a failure the next request goes to another URL straight away if one is not
//!   resting; when every URL rests, the one whose rest ends first is used (the caller backs off
//!   as it does with one URL);
//! - with a single URL nothing rests: the caller's backoff alone paces the retries.

use std::time::{Duration, Instant};

/// The longest a failing URL rests.
pub const MAX_REST: Duration = Duration::from_secs(60);
const FIRST_REST: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default)]
struct UrlState {
    resting_until: Option<Instant>,
    failures: u32,
}

/// The state of one output's URLs.
#[derive(Debug, Clone)]
pub struct Failover {
    urls: Vec<UrlState>,
    /// The URL the last request went to.
    current: usize,
}

impl Failover {
    /// `n` URLs (at least one).
    pub fn new(n: usize) -> Self {
        Failover {
            urls: vec![UrlState::default(); n.max(1)],
            current: 0,
        }
    }

    fn resting(&self, i: usize, now: Instant) -> bool {
        self.urls[i].resting_until.is_some_and(|until| until > now)
    }

    /// The URL for the next request.
    pub fn pick(&mut self, now: Instant) -> usize {
        let chosen = (0..self.urls.len())
            .find(|&i| !self.resting(i, now))
            .unwrap_or_else(|| {
                (0..self.urls.len())
                    .min_by_key(|&i| self.urls[i].resting_until)
                    .unwrap_or(0)
            });
        self.current = chosen;
        chosen
    }

    /// The URL the last request went to.
    pub fn current(&self) -> usize {
        self.current
    }

    /// A request to `i` failed; whether another URL can be tried at once.
    pub fn failed(&mut self, i: usize, now: Instant) -> bool {
        if self.urls.len() == 1 {
            return false;
        }
        let Some(url) = self.urls.get_mut(i) else {
            return false;
        };
        let rest = FIRST_REST
            .saturating_mul(1u32 << url.failures.min(16))
            .min(MAX_REST);
        url.failures = url.failures.saturating_add(1);
        url.resting_until = Some(now + rest);
        (0..self.urls.len()).any(|j| !self.resting(j, now))
    }

    /// A request to `i` got an answer that is not a server failure.
    pub fn succeeded(&mut self, i: usize) {
        if let Some(url) = self.urls.get_mut(i) {
            *url = UrlState::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_never_rests() {
        let t = Instant::now();
        let mut f = Failover::new(1);
        assert_eq!(f.pick(t), 0);
        assert!(!f.failed(0, t));
        assert_eq!(f.pick(t), 0);
    }

    #[test]
    fn a_failure_moves_to_the_next_url_at_once_and_back_when_the_first_has_rested() {
        let t = Instant::now();
        let mut f = Failover::new(2);
        assert_eq!(f.pick(t), 0);
        assert!(f.failed(0, t), "the second URL can be tried at once");
        assert_eq!(f.pick(t), 1);
        f.succeeded(1);
        assert_eq!(
            f.pick(t + Duration::from_millis(500)),
            1,
            "the first still rests"
        );
        // Rest over: the preferred URL is tried again.
        assert_eq!(f.pick(t + Duration::from_secs(1)), 0);
    }

    #[test]
    fn rests_double_while_a_url_keeps_failing_and_a_success_clears_them() {
        let t = Instant::now();
        let mut f = Failover::new(2);
        f.failed(0, t); // rests 1 s
        f.failed(0, t + Duration::from_secs(1)); // 2 s
        f.failed(0, t + Duration::from_secs(3)); // 4 s, until t + 7 s
        assert_eq!(f.pick(t + Duration::from_millis(6_900)), 1);
        assert_eq!(f.pick(t + Duration::from_secs(7)), 0);
        f.succeeded(0);
        f.failed(0, t + Duration::from_secs(8)); // back to 1 s
        assert_eq!(f.pick(t + Duration::from_secs(9)), 0);
    }

    #[test]
    fn when_every_url_rests_the_one_resting_least_is_used_and_no_immediate_retry() {
        let t = Instant::now();
        let mut f = Failover::new(2);
        assert!(f.failed(0, t));
        f.failed(0, t); // 0 rests 2 s now
        assert!(!f.failed(1, t), "nothing left to try at once: back off");
        assert_eq!(f.pick(t), 1, "1 rests 1 s, 0 rests 2 s");
        for _ in 0..40 {
            f.failed(1, t);
        }
        assert_eq!(
            f.urls[1].resting_until,
            Some(t + MAX_REST),
            "the rest is capped"
        );
    }
}
