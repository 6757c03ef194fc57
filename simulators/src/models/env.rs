//! Environment stations: PM2.5, PM10, temperature, humidity and noise on `city/<district>/env/<id>`.
//!
//! Temperature follows the day (peak 14:30 local), humidity moves against it, PM and noise follow
//! road traffic (rush hours, incidents), rain washes PM out, cools the air and raises humidity.
//! Each station has its own offsets and an AR(1) term, so neighbours differ but stay plausible.
//! Payload: `{"ts":<ms>,"pm2_5":..,"pm10":..,"temperature":..,"humidity":..,"noise_db":..}`.

use std::collections::BTreeMap;

use crate::manifest::{Entry, Expect};
use crate::models::{Message, World};
use crate::profile::temperature_shape;
use crate::rng::{round_to, SimRng};

/// One environment station.
#[derive(Debug, Clone)]
pub struct EnvStation {
    /// Global device index.
    pub device: usize,
    /// District (second topic level, tag `district`).
    pub district: String,
    /// Station id (fourth topic level, tag `sensor_id`).
    pub sensor_id: String,
    /// Clock error added to every timestamp, ms.
    pub clock_skew_ms: i64,
    site_pm_factor: f64,
    site_temp_offset: f64,
    site_noise_offset: f64,
    pm_noise: f64,
    noise_noise: f64,
}

/// The values of one reading, already rounded as the station reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnvReading {
    /// µg/m³, 1 decimal.
    pub pm2_5: f64,
    /// µg/m³, 1 decimal.
    pub pm10: f64,
    /// °C, 2 decimals.
    pub temperature: f64,
    /// %RH, 1 decimal.
    pub humidity: f64,
    /// dB(A), 1 decimal.
    pub noise_db: f64,
}

impl EnvStation {
    /// A station with per-site offsets drawn from `rng`.
    pub fn new(device: usize, district: String, sensor_id: String, rng: &mut SimRng) -> Self {
        Self {
            device,
            district,
            sensor_id,
            clock_skew_ms: 0,
            site_pm_factor: rng.uniform(0.75, 1.35),
            site_temp_offset: rng.uniform(-0.8, 0.8),
            site_noise_offset: rng.uniform(-4.0, 6.0),
            pm_noise: 0.0,
            noise_noise: 0.0,
        }
    }

    /// The station's reading for simulated instant `ts_ms`.
    pub fn read(&mut self, ts_ms: i64, world: &World, rng: &mut SimRng) -> EnvReading {
        let hour = world.hour(ts_ms);
        let incident = world.incident(ts_ms, &self.district);
        let traffic = world.traffic(ts_ms) * if incident { 1.35 } else { 1.0 };
        let rain = world.rain(ts_ms, &self.district);

        let temperature = 28.3 + 3.6 * temperature_shape(hour) + self.site_temp_offset - 2.8 * rain
            + 0.12 * rng.normal();
        let humidity = (74.0 - 3.1 * (temperature - 28.3) + 18.0 * rain + 1.2 * rng.normal())
            .clamp(30.0, 99.5);
        self.pm_noise = 0.85 * self.pm_noise + 1.6 * rng.normal();
        let pm2_5 = ((11.0 + 31.0 * traffic) * self.site_pm_factor * (1.0 - 0.6 * rain)
            + self.pm_noise)
            .max(1.0);
        let coarse = (1.55 + 0.08 * rng.normal()).max(1.05) * (1.0 - 0.3 * rain);
        let pm10 = (pm2_5 * coarse).max(pm2_5);
        self.noise_noise = 0.7 * self.noise_noise + 1.1 * rng.normal();
        let noise_db =
            (47.0 + 25.0 * traffic + self.site_noise_offset + 4.0 * rain + self.noise_noise)
                .clamp(32.0, 105.0);
        EnvReading {
            pm2_5: round_to(pm2_5, 1),
            pm10: round_to(pm10, 1).max(round_to(pm2_5, 1)),
            temperature: round_to(temperature, 2),
            humidity: round_to(humidity, 1),
            noise_db: round_to(noise_db, 1),
        }
    }

    /// The station's MQTT message for simulated instant `ts_ms` (skew applied to the payload).
    pub fn emit(&mut self, ts_ms: i64, world: &World, rng: &mut SimRng) -> Message {
        let r = self.read(ts_ms, world, rng);
        let ts = ts_ms + self.clock_skew_ms;
        let payload = format!(
            "{{\"ts\":{ts},\"pm2_5\":{},\"pm10\":{},\"temperature\":{},\"humidity\":{},\"noise_db\":{}}}",
            r.pm2_5, r.pm10, r.temperature, r.humidity, r.noise_db
        );
        let entry = Entry {
            m: "environment".into(),
            t: BTreeMap::from([
                ("district".to_string(), self.district.clone()),
                ("sensor_id".to_string(), self.sensor_id.clone()),
            ]),
            ts,
            f: BTreeMap::from([
                ("pm2_5".to_string(), r.pm2_5),
                ("pm10".to_string(), r.pm10),
                ("temperature".to_string(), r.temperature),
                ("humidity".to_string(), r.humidity),
                ("noise_db".to_string(), r.noise_db),
            ]),
            x: Expect::Stored,
            fault: None,
            resent: false,
        };
        Message {
            topic: format!("city/{}/env/{}", self.district, self.sensor_id),
            payload: payload.into_bytes(),
            device: self.device,
            entry,
            also: Vec::new(),
            burst: false,
            due_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Window;

    fn station() -> (EnvStation, SimRng) {
        let mut rng = SimRng::new(1);
        let s = EnvStation::new(0, "d1".into(), "env-0001".into(), &mut rng);
        (s, rng)
    }

    fn mean_over(hour_utc: i64, world: &World, f: impl Fn(&EnvReading) -> f64) -> f64 {
        let (mut s, mut rng) = station();
        let base = hour_utc * 3_600_000;
        let n = 200;
        (0..n)
            .map(|i| f(&s.read(base + i * 10_000, world, &mut rng)))
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn payload_has_the_contract_shape_and_matches_entry() {
        let (mut s, mut rng) = station();
        let world = World {
            utc_offset_hours: 7.0,
            ..World::default()
        };
        let m = s.emit(1_795_480_200_000, &world, &mut rng);
        assert_eq!(m.topic, "city/d1/env/env-0001");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["humidity", "noise_db", "pm10", "pm2_5", "temperature", "ts"]
        );
        let text = std::str::from_utf8(&m.payload).unwrap();
        assert!(
            text.starts_with("{\"ts\":1795480200000,\"pm2_5\":"),
            "{text}"
        );
        for (k, val) in &m.entry.f {
            assert_eq!(v[k].as_f64().unwrap(), *val, "{k}");
        }
        assert!(m.entry.f["pm10"] >= m.entry.f["pm2_5"]);
    }

    #[test]
    fn rush_hour_raises_pm_and_noise_and_rain_washes_pm() {
        let world = World {
            utc_offset_hours: 0.0,
            ..World::default()
        };
        let night_pm = mean_over(3, &world, |r| r.pm2_5);
        let rush_pm = mean_over(7, &world, |r| r.pm2_5);
        let night_noise = mean_over(3, &world, |r| r.noise_db);
        let rush_noise = mean_over(7, &world, |r| r.noise_db);
        assert!(rush_pm > night_pm + 15.0, "{night_pm} {rush_pm}");
        assert!(
            rush_noise > night_noise + 15.0,
            "{night_noise} {rush_noise}"
        );
        let rainy = World {
            rain: vec![Window {
                start_ms: 0,
                end_ms: 24 * 3_600_000,
                district: None,
            }],
            ..world.clone()
        };
        let wet_pm = mean_over(7, &rainy, |r| r.pm2_5);
        let wet_hum = mean_over(7, &rainy, |r| r.humidity);
        let dry_hum = mean_over(7, &world, |r| r.humidity);
        assert!(wet_pm < rush_pm * 0.6, "{wet_pm} {rush_pm}");
        assert!(wet_hum > dry_hum + 10.0, "{wet_hum} {dry_hum}");
    }

    #[test]
    fn afternoon_is_warmer_and_drier_than_dawn() {
        let world = World::default();
        let dawn_t = mean_over(3, &world, |r| r.temperature);
        let noon_t = mean_over(14, &world, |r| r.temperature);
        let dawn_h = mean_over(3, &world, |r| r.humidity);
        let noon_h = mean_over(14, &world, |r| r.humidity);
        assert!(noon_t > dawn_t + 5.0, "{dawn_t} {noon_t}");
        assert!(noon_h < dawn_h - 10.0, "{dawn_h} {noon_h}");
    }
}
