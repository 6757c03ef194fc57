//! Process-wide totals of sensor readings accepted and refused, read by the gateway's own
//! health reading ([`crate::fleet_health`]).
//!
//! Why it exists apart from the metrics: the `metrics` crate's counters cannot be read back, and
//! the health reading needs the totals as numbers. A leaf module (no imports of the gateway), so
//! the ingest and the limits can count here without depending on the health report.

use std::sync::atomic::{AtomicU64, Ordering};

/// The input name the gateway's own health readings go through the ingest under; they are not
/// counted as sensor readings.
pub const HEALTH_INPUT: &str = "_health";

static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static REJECTED: AtomicU64 = AtomicU64::new(0);

/// `lines` readings of `input` accepted (the health readings themselves are not counted).
pub fn count_accepted(input: &str, lines: u32) {
    if input != HEALTH_INPUT {
        ACCEPTED.fetch_add(u64::from(lines), Ordering::Relaxed);
    }
}

/// One message or reading refused by an input.
pub fn count_rejected() {
    REJECTED.fetch_add(1, Ordering::Relaxed);
}

/// Sensor readings accepted since start.
pub fn accepted() -> u64 {
    ACCEPTED.load(Ordering::Relaxed)
}

/// Messages or readings refused since start.
pub fn rejected() -> u64 {
    REJECTED.load(Ordering::Relaxed)
}
