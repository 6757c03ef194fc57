//! Traffic counters: per-lane counts, mean speed, occupancy and heavy vehicles on
//! `city/<district>/traffic/<site>`.
//!
//! Demand follows the day (rush hours, night lull); speed falls as demand nears capacity;
//! occupancy is derived from count and speed (vehicle length over speed, as a loop detector
//! measures it), so the three stay consistent. Heavy vehicles are a larger share at night.
//! During an incident flow halves, speed collapses and occupancy climbs.
//! Payload: `{"ts":<ms>,"lane":"1","direction":"nb","count":..,"speed_avg":..,"occupancy":..,"heavy_count":..}`.

use std::collections::BTreeMap;

use crate::manifest::{Entry, Expect};
use crate::models::{Message, World};
use crate::rng::{round_to, SimRng};

/// Vehicles per lane per minute at saturation.
const LANE_CAPACITY_PER_MIN: f64 = 30.0;
/// Detector-effective vehicle length, metres.
const EFFECTIVE_LENGTH_M: f64 = 6.5;

/// One lane and direction of a counting site.
#[derive(Debug, Clone)]
pub struct TrafficLane {
    /// Global device index.
    pub device: usize,
    /// District (tag `district`).
    pub district: String,
    /// Site id (tag `site`).
    pub site: String,
    /// Lane number as text (tag `lane`).
    pub lane: String,
    /// Direction (tag `direction`).
    pub direction: String,
    /// Counting interval, seconds.
    pub interval_s: f64,
    free_flow_kmh: f64,
    demand_factor: f64,
}

/// One counting interval's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficReading {
    /// Vehicles counted.
    pub count: u64,
    /// Mean speed km/h, 1 decimal.
    pub speed_avg: f64,
    /// Occupancy %, 1 decimal.
    pub occupancy: f64,
    /// Heavy vehicles among `count`.
    pub heavy_count: u64,
}

impl TrafficLane {
    /// A lane with its own free-flow speed and demand share.
    pub fn new(
        device: usize,
        district: String,
        site: String,
        lane: String,
        direction: String,
        interval_s: f64,
        rng: &mut SimRng,
    ) -> Self {
        Self {
            device,
            district,
            site,
            lane,
            direction,
            interval_s,
            free_flow_kmh: rng.uniform(42.0, 62.0),
            demand_factor: rng.uniform(0.7, 1.05),
        }
    }

    /// The counts for the interval ending at `ts_ms`.
    pub fn read(&self, ts_ms: i64, world: &World, rng: &mut SimRng) -> TrafficReading {
        let hour = world.hour(ts_ms);
        let incident = world.incident(ts_ms, &self.district);
        let minutes = self.interval_s / 60.0;
        let capacity = LANE_CAPACITY_PER_MIN * minutes;
        let load = (world.traffic(ts_ms) * self.demand_factor).min(1.0);
        let (mean_count, speed) = if incident {
            (capacity * load * 0.45, 6.0 + 4.0 * rng.unit())
        } else {
            let speed = self.free_flow_kmh * (1.0 - 0.55 * load.powi(2)) + 2.0 * rng.normal();
            (capacity * load, speed)
        };
        let count = rng.count(mean_count);
        let speed = speed.clamp(3.0, 90.0);
        let occupied_s = count as f64 * EFFECTIVE_LENGTH_M / (speed / 3.6);
        let occupancy = (100.0 * occupied_s / self.interval_s).clamp(0.0, 98.0);
        let heavy_share = if !(5.0..22.0).contains(&hour) {
            0.18
        } else {
            0.06
        };
        let heavy_count = (0..count).filter(|_| rng.chance(heavy_share)).count() as u64;
        TrafficReading {
            count,
            speed_avg: if count == 0 { 0.0 } else { round_to(speed, 1) },
            occupancy: round_to(occupancy, 1),
            heavy_count,
        }
    }

    /// The lane's MQTT message for the interval ending at `ts_ms`.
    pub fn emit(&mut self, ts_ms: i64, world: &World, rng: &mut SimRng) -> Message {
        let r = self.read(ts_ms, world, rng);
        let payload = format!(
            "{{\"ts\":{ts_ms},\"lane\":\"{}\",\"direction\":\"{}\",\"count\":{},\"speed_avg\":{},\"occupancy\":{},\"heavy_count\":{}}}",
            self.lane, self.direction, r.count, r.speed_avg, r.occupancy, r.heavy_count
        );
        let entry = Entry {
            m: "traffic".into(),
            t: BTreeMap::from([
                ("district".to_string(), self.district.clone()),
                ("site".to_string(), self.site.clone()),
                ("lane".to_string(), self.lane.clone()),
                ("direction".to_string(), self.direction.clone()),
            ]),
            ts: ts_ms,
            f: BTreeMap::from([
                ("count".to_string(), r.count as f64),
                ("speed_avg".to_string(), r.speed_avg),
                ("occupancy".to_string(), r.occupancy),
                ("heavy_count".to_string(), r.heavy_count as f64),
            ]),
            x: Expect::Stored,
            fault: None,
            resent: false,
        };
        Message {
            topic: format!("city/{}/traffic/{}", self.district, self.site),
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

    fn lane() -> (TrafficLane, SimRng) {
        let mut rng = SimRng::new(3);
        let l = TrafficLane::new(
            0,
            "d1".into(),
            "site-01".into(),
            "1".into(),
            "nb".into(),
            60.0,
            &mut rng,
        );
        (l, rng)
    }

    fn means(hour: i64, world: &World) -> (f64, f64, f64) {
        let (l, mut rng) = lane();
        let n = 300;
        let (mut c, mut s, mut o, mut moving) = (0.0, 0.0, 0.0, 0);
        for i in 0..n {
            let r = l.read(hour * 3_600_000 + i * 1000, world, &mut rng);
            assert!(r.heavy_count <= r.count);
            c += r.count as f64;
            if r.count > 0 {
                s += r.speed_avg;
                moving += 1;
            } else {
                assert_eq!(r.speed_avg, 0.0, "no vehicles, no speed");
            }
            o += r.occupancy;
        }
        (c / n as f64, s / f64::from(moving.max(1)), o / n as f64)
    }

    #[test]
    fn rush_hour_is_busy_and_slow_night_is_quiet_and_fast() {
        let world = World::default();
        let (night_c, night_s, night_o) = means(3, &world);
        let (rush_c, rush_s, rush_o) = means(8, &world);
        assert!(rush_c > 4.0 * night_c, "{night_c} {rush_c}");
        assert!(rush_s < night_s - 8.0, "{night_s} {rush_s}");
        assert!(rush_o > night_o * 3.0, "{night_o} {rush_o}");
    }

    #[test]
    fn incident_drops_speed_and_raises_occupancy() {
        let world = World::default();
        let blocked = World {
            incidents: vec![Window {
                start_ms: 0,
                end_ms: 24 * 3_600_000,
                district: Some("d1".into()),
            }],
            ..World::default()
        };
        let (_, free_s, free_o) = means(12, &world);
        let (_, inc_s, inc_o) = means(12, &blocked);
        assert!(inc_s < 12.0 && free_s > 30.0, "{free_s} {inc_s}");
        assert!(inc_o > free_o * 1.5, "{free_o} {inc_o}");
    }

    #[test]
    fn payload_shape() {
        let (mut l, mut rng) = lane();
        let m = l.emit(1_795_480_200_000, &World::default(), &mut rng);
        assert_eq!(m.topic, "city/d1/traffic/site-01");
        let text = String::from_utf8(m.payload.clone()).unwrap();
        assert!(
            text.starts_with(
                "{\"ts\":1795480200000,\"lane\":\"1\",\"direction\":\"nb\",\"count\":"
            ),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["count"].as_f64().unwrap(), m.entry.f["count"]);
        assert_eq!(v["speed_avg"].as_f64().unwrap(), m.entry.f["speed_avg"]);
    }
}
