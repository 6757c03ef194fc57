//! The gateway's clock for readings stamped on receipt (serial sensors have no clock).
//!
//! Wall-clock time read once at start, advanced by the monotonic clock: it cannot go backwards
//! within a run, even if NTP steps the system clock (common when a 4G link comes up after boot).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static START: OnceLock<(i64, Instant)> = OnceLock::new();

/// Nanoseconds since the Unix epoch, never decreasing within this process.
pub fn now_ns() -> i64 {
    let (wall, mono) = START.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        (wall, Instant::now())
    });
    wall.saturating_add(mono.elapsed().as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_goes_backwards_and_is_near_wall_time() {
        let a = super::now_ns();
        let b = super::now_ns();
        assert!(b >= a);
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((wall - b).abs() < 5_000_000_000);
    }
}
