//! UTC calendar arithmetic without a date crate.
//!
//! Scenarios name their start as an RFC 3339 UTC instant and plate-recognition events carry an
//! RFC 3339 `time`; this module converts both ways between that text and Unix milliseconds
//! (proleptic Gregorian calendar, Howard Hinnant's days-from-civil algorithms).

use thiserror::Error;

/// Why an RFC 3339 instant could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid UTC instant {text:?}: expected YYYY-MM-DDTHH:MM:SS[.mmm]Z")]
pub struct InstantError {
    /// The text that was rejected.
    pub text: String,
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` into Unix milliseconds (fraction truncated to ms).
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, InstantError> {
    let err = || InstantError {
        text: text.to_owned(),
    };
    let body = text.strip_suffix('Z').ok_or_else(err)?;
    let (date, time) = body.split_once('T').ok_or_else(err)?;
    let mut date_parts = date.splitn(3, '-');
    let num = |s: Option<&str>, len: usize| -> Result<i64, InstantError> {
        let s = s.ok_or_else(err)?;
        if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        s.parse::<i64>().map_err(|_| err())
    };
    let year = num(date_parts.next(), 4)?;
    let month = num(date_parts.next(), 2)?;
    let day = num(date_parts.next(), 2)?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (time, None),
    };
    let mut time_parts = hms.splitn(3, ':');
    let hour = num(time_parts.next(), 2)?;
    let minute = num(time_parts.next(), 2)?;
    let second = num(time_parts.next(), 2)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(err());
    }
    let millis = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            let mut ms = 0i64;
            for (i, b) in f.bytes().take(3).enumerate() {
                ms += i64::from(b - b'0') * [100, 10, 1][i];
            }
            ms
        }
        Some(_) => return Err(err()),
    };
    let days = days_from_civil(year, month, day);
    Ok(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
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
