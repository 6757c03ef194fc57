//! Shared by the fuzz targets: what every decoded reading must satisfy.

use ioc_model::limits::LimitChecker;
use ioc_model::Reading;
use ioc_model::{encode, Flavor};

/// Every reading a decoder returns must be valid, encodable in both dialects, and go through
/// the limits without panicking.
#[allow(dead_code)]
pub fn check_readings(readings: Vec<Reading>) {
    let limits = LimitChecker::default();
    for mut r in readings {
        if let Err(e) = r.validate() {
            panic!("decoder returned an invalid reading ({e}): {r:?}");
        }
        let mut out = Vec::new();
        encode(&r, Flavor::V2, &mut out);
        encode(&r, Flavor::V1, &mut out);
        assert!(std::str::from_utf8(&out).is_ok());
        let _ = limits.check("fuzz", &mut r, 1_800_000_000_000_000_000);
    }
}
