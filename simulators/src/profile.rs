//! Shapes of a city day: traffic intensity, the temperature cycle, incidents and rain.
//!
//! The device models take their trends from here so that PM and noise follow traffic, humidity
//! follows temperature and rain, and everything follows the local clock (rush hours at 07:45 and
//! 17:45, a night lull, a mid-afternoon temperature peak).

/// Hour of the local day in `[0, 24)` for a Unix-ms instant and a UTC offset in hours.
pub fn local_hour(ts_ms: i64, utc_offset_hours: f64) -> f64 {
    let h = ts_ms as f64 / 3_600_000.0 + utc_offset_hours;
    h.rem_euclid(24.0)
}

/// A Gaussian bump on the 24-hour circle.
fn bump(hour: f64, centre: f64, width: f64) -> f64 {
    let mut d = (hour - centre).rem_euclid(24.0);
    if d > 12.0 {
        d -= 24.0;
    }
    (-0.5 * (d / width).powi(2)).exp()
}

/// Relative road traffic in `[0.05, 1]`: night lull, morning and evening rush, a midday plateau.
pub fn traffic_intensity(hour: f64) -> f64 {
    let v = 0.06
        + 0.94 * bump(hour, 7.75, 0.9)
        + 0.88 * bump(hour, 17.75, 1.1)
        + 0.45 * bump(hour, 12.5, 2.8);
    v.clamp(0.05, 1.0)
}

/// The diurnal temperature shape in `[-1, 1]`, peaking at 14:30 local time.
pub fn temperature_shape(hour: f64) -> f64 {
    (std::f64::consts::TAU * (hour - 14.5) / 24.0).cos()
}

/// A time window in simulated Unix milliseconds, optionally limited to one district.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// First instant inside the window.
    pub start_ms: i64,
    /// First instant after the window.
    pub end_ms: i64,
    /// The district it affects; `None` for the whole city.
    pub district: Option<String>,
}

impl Window {
    /// Whether `ts_ms` in `district` falls inside the window.
    pub fn covers(&self, ts_ms: i64, district: &str) -> bool {
        ts_ms >= self.start_ms
            && ts_ms < self.end_ms
            && self.district.as_deref().is_none_or(|d| d == district)
    }

    /// Rain strength in `[0, 1]`: ramps up over the first tenth, down over the last tenth.
    pub fn strength(&self, ts_ms: i64) -> f64 {
        if ts_ms < self.start_ms || ts_ms >= self.end_ms {
            return 0.0;
        }
        let len = (self.end_ms - self.start_ms).max(1) as f64;
        let x = (ts_ms - self.start_ms) as f64 / len;
        (x / 0.1).min((1.0 - x) / 0.1).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rush_hours_beat_the_night() {
        let night = traffic_intensity(3.0);
        let morning = traffic_intensity(7.75);
        let evening = traffic_intensity(17.75);
        let noon = traffic_intensity(12.5);
        assert!(night < 0.1, "{night}");
        assert!(morning > 0.95, "{morning}");
        assert!(evening > 0.9, "{evening}");
        assert!(noon > 0.4 && noon < morning, "{noon}");
    }

    #[test]
    fn temperature_peaks_mid_afternoon() {
        assert!((temperature_shape(14.5) - 1.0).abs() < 1e-12);
        assert!((temperature_shape(2.5) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn local_hour_wraps() {
        assert_eq!(local_hour(0, 7.0), 7.0);
        assert_eq!(local_hour(20 * 3_600_000, 7.0), 3.0);
        assert_eq!(local_hour(0, -5.0), 19.0);
    }

    #[test]
    fn window_strength_ramps() {
        let w = Window {
            start_ms: 0,
            end_ms: 1000,
            district: Some("d1".into()),
        };
        assert_eq!(w.strength(-1), 0.0);
        assert_eq!(w.strength(50), 0.5);
        assert_eq!(w.strength(500), 1.0);
        assert!(w.covers(10, "d1"));
        assert!(!w.covers(10, "d2"));
        assert!(!w.covers(1000, "d1"));
    }
}
