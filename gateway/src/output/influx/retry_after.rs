//! `Retry-After`: what a store that sheds load (`429 Too Many Requests`, `503 Service
//! Unavailable`) asks for, parsed and bounded, as pure functions.
//!
//! Why it exists: a shared store (a VictoriaMetrics cluster behind `vmagent`, InfluxDB 3, a
//! proxy with a rate limit) that is overloaded tells its clients when to come back. A fleet that
//! ignores it and retries on its own backoff keeps the store overloaded; a fleet that obeys a
//! broken or hostile value (`Retry-After: 86400`) stops sending for a day. So the value is
//! honoured only for 429 and 503 (RFC 9110 §10.2.3 gives it meaning there; on a 500 or 502 it
//! is most likely a proxy's leftover), in either form RFC 9110 allows — delay-seconds or an
//! HTTP-date, with the two obsolete date forms recipients must accept — and bounded by
//! `max_retry_after_s`: a larger value is cut to it (the sink says so once).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whether a status's `Retry-After` is honoured: 429 and 503 only.
pub fn honoured_for(status: u16) -> bool {
    matches!(status, 429 | 503)
}

/// The delay a `Retry-After` value asks for, measured from `now` (a date in the past asks for
/// no delay). `None` when the value is neither delay-seconds nor an HTTP-date.
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // An absurd number of digits is still a valid "very long": the bound cuts it.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// A told delay after the bound: `(delay, whether it was cut)`.
pub fn bound(told: Duration, max: Duration) -> (Duration, bool) {
    if told > max {
        (max, true)
    } else {
        (told, false)
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Seconds since the Unix epoch of an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) or asctime
/// (`Sun Nov  6 08:49:37 1994`). The weekday is not checked (it is redundant).
pub fn parse_http_date(value: &str) -> Option<u64> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let (day, month, year, clock) = match words.as_slice() {
        // IMF-fixdate
        [wd, d, m, y, t, "GMT"] if wd.ends_with(',') => {
            (d.parse::<u32>().ok()?, *m, y.parse::<i64>().ok()?, *t)
        }
        // RFC 850: two-digit year, "interpreted as ... within 50 years" (we take 19xx/20xx).
        [wd, dmy, t, "GMT"] if wd.ends_with(',') => {
            let mut parts = dmy.split('-');
            let d = parts.next()?.parse::<u32>().ok()?;
            let m = parts.next()?;
            let y = parts.next()?;
            if parts.next().is_some() || y.len() != 2 {
                return None;
            }
            let yy = y.parse::<i64>().ok()?;
            (d, m, if yy < 70 { 2000 + yy } else { 1900 + yy }, *t)
        }
        // asctime
        [_wd, m, d, t, y] => (d.parse::<u32>().ok()?, *m, y.parse::<i64>().ok()?, *t),
        _ => return None,
    };
    let month = u32::try_from(MONTHS.iter().position(|&name| name == month)?).ok()? + 1;
    let mut hms = clock.split(':');
    let hour = hms.next()?.parse::<u64>().ok()?;
    let minute = hms.next()?.parse::<u64>().ok()?;
    let second = hms.next()?.parse::<u64>().ok()?;
    if hms.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let days = u64::try_from(days).ok()?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn only_429_and_503_are_honoured() {
        assert!(honoured_for(429));
        assert!(honoured_for(503));
        for s in [500, 502, 504, 408, 200] {
            assert!(!honoured_for(s), "{s}");
        }
    }

    #[test]
    fn delay_seconds() {
        assert_eq!(parse("2", at(0)), Some(Duration::from_secs(2)));
        assert_eq!(parse(" 120 ", at(0)), Some(Duration::from_secs(120)));
        assert_eq!(parse("0", at(0)), Some(Duration::ZERO));
        assert_eq!(
            parse("99999999999999999999999", at(0)),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-1", "1.5", "soon", "2 s"] {
            assert_eq!(parse(bad, at(0)), None, "{bad:?}");
        }
    }

    #[test]
    fn the_three_http_date_forms() {
        // 1994-11-06T08:49:37Z
        let t = 784_111_777;
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(
            parse_http_date("Thu, 03 Dec 2026 20:00:00 GMT"),
            Some(1_796_328_000)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 00:00:00 GMT"),
            Some(1_835_395_200)
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "yesterday",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_date_is_a_delay_from_now_and_a_past_date_none() {
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            parse(date, at(784_111_777 - 30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse(date, at(784_111_777 + 30)), Some(Duration::ZERO));
    }

    #[test]
    fn the_bound_cuts_and_says_so() {
        let max = Duration::from_secs(60);
        assert_eq!(
            bound(Duration::from_secs(2), max),
            (Duration::from_secs(2), false)
        );
        assert_eq!(bound(max, max), (max, false));
        assert_eq!(bound(Duration::from_secs(3600), max), (max, true));
    }
}
