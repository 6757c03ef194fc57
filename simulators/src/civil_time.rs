//! UTC instants as text.
//!
//! Scenarios name their start as an RFC 3339 UTC instant and plate-recognition events carry an
//! RFC 3339 `time`; this module converts both ways between that text and Unix milliseconds, with
//! the `time` crate the gateway uses too.

use thiserror::Error;

/// Why an RFC 3339 instant could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid UTC instant {text:?}: expected YYYY-MM-DDTHH:MM:SS[.mmm]Z")]
pub struct InstantError {
    /// The text that was rejected.
    pub text: String,
}

/// `YYYY-MM-DDTHH:MM:SS[.fff…]Z`: the profile of RFC 3339 the scenarios and events use.
const INSTANT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]Z"
);

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
const INSTANT_MS: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` into Unix milliseconds (fraction truncated to ms).
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, InstantError> {
    let err = || InstantError {
        text: text.to_owned(),
    };
    let t = time::PrimitiveDateTime::parse(text, INSTANT).map_err(|_| err())?;
    let ns = t.assume_utc().unix_timestamp_nanos();
    i64::try_from(ns.div_euclid(1_000_000)).map_err(|_| err())
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(INSTANT_MS).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-24T23:30:00Z"),
            Ok(1_795_563_000_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T12:00:00.5Z"),
            Ok(951_825_600_500)
        );
        assert_eq!(
            format_rfc3339_ms(951_825_600_500),
            "2000-02-29T12:00:00.500Z"
        );
    }

    #[test]
    fn round_trip_over_centuries() {
        let mut ms = -2_000_000_000_000i64;
        while ms < 5_000_000_000_000 {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
            ms += 7_777_777_777;
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "2026-11-24",
            "2026-11-24T23:30:00",
            "2026-13-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
            "2026-11-24T23:30:00.Z",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }
}
