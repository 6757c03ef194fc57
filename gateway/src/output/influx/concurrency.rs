//! Adaptive request concurrency (AIMD, after Vector's ARC) as a pure state machine: how many
//! write requests one output may have in flight while it drains a backlog.
//!
//! Why it exists: after an outage a gateway holds minutes or hours of backlog. One request at a
//! time drains it at one batch per round trip, which over a 4G link with 300 ms of latency is
//! slow; a fixed larger number overloads a store that a whole fleet is draining into. So the
//! limit is found the way TCP finds its window:
//!
//! - it starts at **1** request in flight;
//! - every *window* (as many responses as the limit, roughly one round trip) whose requests
//!   were at the limit and whose mean latency stayed within the bound grows it by **1**, up to
//!   `max_in_flight`;
//! - a `429`, a `503` or a timeout (the store says it is overloaded), or a window whose mean
//!   latency rose past the bound (the store or the link queues), **halves** it (at least 1).
//!   Responses to requests started before a decrease do not decrease it again: one overload
//!   seen by eight requests in flight halves once, not eight times;
//! - the bound is `mean + 2.5 × mean deviation` of the past windows' latencies (exponentially
//!   weighted, α = 0.4 as in Vector), never tighter than 5 % of the mean plus 5 ms, so the
//!   noise of a fast loopback store does not read as a rise.
//!
//! Other outcomes (a `400`, a `500`, a refused connection) say nothing about load and leave the
//! limit alone; their latency is not used.
//!
//! The API ([`AdaptiveConcurrency::on_start`] → [`Permit`] →
//! [`AdaptiveConcurrency::on_response`], [`AdaptiveConcurrency::limit`]) takes no clock: the
//! caller measures the latency, so the decisions can be scripted in tests.

use std::time::Duration;

/// EWMA weight of a new window's mean latency.
const ALPHA: f64 = 0.4;
/// How many mean deviations above the mean still count as "latency holds".
const DEVIATION_SCALE: f64 = 2.5;
/// The bound is never tighter than the mean plus this fraction of it ...
const MIN_RELATIVE_SLACK: f64 = 0.05;
/// ... plus this, in seconds.
const MIN_ABSOLUTE_SLACK: f64 = 0.005;

/// What a response said about the store's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Accepted,
    /// `429`, `503`, or the request timed out.
    Overloaded,
    /// Anything else (400, 500, connection refused, ...): no signal.
    Other,
}

impl Outcome {
    /// The outcome of an HTTP status.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Accepted,
            429 | 503 => Outcome::Overloaded,
            _ => Outcome::Other,
        }
    }
}

/// A request in flight, from [`AdaptiveConcurrency::on_start`]; give it back with the response.
#[derive(Debug)]
#[must_use = "give the permit back to on_response"]
pub struct Permit {
    /// The decrease generation the request started in.
    generation: u64,
    /// Whether the request filled the limit when it started.
    at_limit: bool,
}

/// What [`AdaptiveConcurrency::on_response`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Unchanged,
    Increased,
    Decreased,
}

/// The limit and what it is decided from (see the module docs).
#[derive(Debug, Clone)]
pub struct AdaptiveConcurrency {
    limit: usize,
    max: usize,
    in_flight: usize,
    generation: u64,
    /// EWMA of the windows' mean latency and of its absolute deviation, seconds.
    mean: Option<f64>,
    deviation: f64,
    /// The window being collected.
    window_responses: usize,
    window_latency_sum: f64,
    window_at_limit: bool,
}

impl AdaptiveConcurrency {
    /// Starts at 1; never above `max_in_flight` (at least 1).
    pub fn new(max_in_flight: usize) -> Self {
        AdaptiveConcurrency {
            limit: 1,
            max: max_in_flight.max(1),
            in_flight: 0,
            generation: 0,
            mean: None,
            deviation: 0.0,
            window_responses: 0,
            window_latency_sum: 0.0,
            window_at_limit: false,
        }
    }

    /// How many requests may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many are ([`on_start`](Self::on_start) without its `on_response` yet).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The latency bound of the next window, when there is a past to judge by.
    pub fn latency_bound(&self) -> Option<Duration> {
        self.bound().map(Duration::from_secs_f64)
    }

    fn bound(&self) -> Option<f64> {
        let mean = self.mean?;
        let slack =
            (DEVIATION_SCALE * self.deviation).max(MIN_RELATIVE_SLACK * mean + MIN_ABSOLUTE_SLACK);
        Some(mean + slack)
    }

    /// A request starts. It is the caller's job not to start more than [`limit`](Self::limit)
    /// (this only counts them).
    pub fn on_start(&mut self) -> Permit {
        self.in_flight += 1;
        Permit {
            generation: self.generation,
            at_limit: self.in_flight >= self.limit,
        }
    }

    /// The request of `permit` ended after `latency` with `outcome`.
    pub fn on_response(&mut self, permit: Permit, latency: Duration, outcome: Outcome) -> Decision {
        self.in_flight = self.in_flight.saturating_sub(1);
        let fresh = permit.generation == self.generation;
        match outcome {
            Outcome::Other => Decision::Unchanged,
            Outcome::Overloaded if fresh => self.decrease(),
            Outcome::Overloaded => Decision::Unchanged,
            Outcome::Accepted => {
                self.window_responses += 1;
                self.window_latency_sum += latency.as_secs_f64();
                self.window_at_limit |= permit.at_limit;
                if self.window_responses < self.limit {
                    return Decision::Unchanged;
                }
                let window_mean = self.window_latency_sum / self.window_responses as f64;
                let at_limit = self.window_at_limit;
                self.reset_window();
                let decision = match self.bound() {
                    Some(bound) if window_mean > bound => {
                        if fresh {
                            self.decrease()
                        } else {
                            Decision::Unchanged
                        }
                    }
                    _ if at_limit && self.limit < self.max => {
                        self.limit += 1;
                        Decision::Increased
                    }
                    _ => Decision::Unchanged,
                };
                self.fold(window_mean);
                decision
            }
        }
    }

    fn fold(&mut self, window_mean: f64) {
        match self.mean {
            None => self.mean = Some(window_mean),
            Some(mean) => {
                let next = mean + ALPHA * (window_mean - mean);
                self.deviation += ALPHA * ((window_mean - mean).abs() - self.deviation);
                self.mean = Some(next);
            }
        }
    }

    fn reset_window(&mut self) {
        self.window_responses = 0;
        self.window_latency_sum = 0.0;
        self.window_at_limit = false;
    }

    fn decrease(&mut self) -> Decision {
        self.generation += 1;
        self.reset_window();
        let before = self.limit;
        self.limit = (self.limit / 2).max(1);
        if self.limit < before {
            Decision::Decreased
        } else {
            Decision::Unchanged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs one full window at the limit, every response with `latency`.
    fn window(c: &mut AdaptiveConcurrency, latency: Duration) -> Vec<Decision> {
        let permits: Vec<Permit> = (0..c.limit()).map(|_| c.on_start()).collect();
        permits
            .into_iter()
            .map(|p| c.on_response(p, latency, Outcome::Accepted))
            .collect()
    }

    #[test]
    fn starts_at_one_and_grows_by_one_per_window_while_latency_holds() {
        let mut c = AdaptiveConcurrency::new(4);
        assert_eq!(c.limit(), 1);
        let mut limits = vec![];
        for _ in 0..6 {
            window(&mut c, ms(100));
            limits.push(c.limit());
        }
        assert_eq!(
            limits,
            [2, 3, 4, 4, 4, 4],
            "+1 per window, capped at max_in_flight"
        );
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_window_not_at_the_limit_does_not_grow_it() {
        let mut c = AdaptiveConcurrency::new(4);
        window(&mut c, ms(100));
        assert_eq!(c.limit(), 2);
        // Only one request at a time though two are allowed: no evidence more would help.
        for _ in 0..6 {
            let p = c.on_start();
            c.on_response(p, ms(100), Outcome::Accepted);
        }
        assert_eq!(c.limit(), 2);
    }

    #[test]
    fn overload_halves_once_per_generation() {
        let mut c = AdaptiveConcurrency::new(16);
        while c.limit() < 8 {
            window(&mut c, ms(50));
        }
        assert_eq!(c.limit(), 8);
        let permits: Vec<Permit> = (0..8).map(|_| c.on_start()).collect();
        let decisions: Vec<Decision> = permits
            .into_iter()
            .map(|p| c.on_response(p, ms(50), Outcome::Overloaded))
            .collect();
        assert_eq!(decisions[0], Decision::Decreased);
        assert!(decisions[1..].iter().all(|d| *d == Decision::Unchanged));
        assert_eq!(c.limit(), 4, "eight 429s of one burst halve once");
        // A request started after the decrease that is refused again halves again.
        let p = c.on_start();
        assert_eq!(
            c.on_response(p, ms(50), Outcome::Overloaded),
            Decision::Decreased
        );
        assert_eq!(c.limit(), 2);
        let p = c.on_start();
        c.on_response(p, ms(50), Outcome::Overloaded);
        let p = c.on_start();
        c.on_response(p, ms(50), Outcome::Overloaded);
        assert_eq!(c.limit(), 1, "never below 1");
    }

    #[test]
    fn rising_latency_halves_and_steady_latency_grows_again() {
        let mut c = AdaptiveConcurrency::new(8);
        for _ in 0..4 {
            window(&mut c, ms(100));
        }
        assert_eq!(c.limit(), 5);
        let bound = c.latency_bound().unwrap();
        assert!(bound >= ms(105) && bound < ms(200), "{bound:?}");
        // The store starts queueing: latency triples.
        let decisions = window(&mut c, ms(300));
        assert_eq!(decisions.last(), Some(&Decision::Decreased));
        assert_eq!(c.limit(), 2);
        // It settles at the new level (the mean follows it) and growth resumes.
        let mut grew = false;
        for _ in 0..10 {
            grew |= window(&mut c, ms(300)).contains(&Decision::Increased);
        }
        assert!(grew, "limit stuck at {}", c.limit());
    }

    #[test]
    fn small_noise_is_not_a_rise() {
        let mut c = AdaptiveConcurrency::new(4);
        for latency in [2, 3, 2, 4, 3, 2, 3, 4, 2, 3] {
            window(&mut c, ms(latency));
        }
        assert_eq!(c.limit(), 4, "millisecond jitter of a loopback store");
    }

    #[test]
    fn other_failures_say_nothing() {
        let mut c = AdaptiveConcurrency::new(4);
        window(&mut c, ms(100));
        window(&mut c, ms(100));
        assert_eq!(c.limit(), 3);
        for _ in 0..10 {
            let p = c.on_start();
            assert_eq!(
                c.on_response(p, ms(9000), Outcome::Other),
                Decision::Unchanged
            );
        }
        assert_eq!(c.limit(), 3);
        assert_eq!(Outcome::of_status(204), Outcome::Accepted);
        assert_eq!(Outcome::of_status(429), Outcome::Overloaded);
        assert_eq!(Outcome::of_status(503), Outcome::Overloaded);
        assert_eq!(Outcome::of_status(500), Outcome::Other);
        assert_eq!(Outcome::of_status(400), Outcome::Other);
    }

    #[test]
    fn max_one_stays_one() {
        let mut c = AdaptiveConcurrency::new(0);
        for _ in 0..5 {
            window(&mut c, ms(10));
        }
        assert_eq!(c.limit(), 1);
    }
}
