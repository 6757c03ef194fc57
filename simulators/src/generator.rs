//! Turns a scenario and a seed into one deterministic, endless stream of MQTT messages.
//!
//! Devices report on their own simulated schedules (a min-heap on next-due time, ties broken by
//! device index), so a thousand stations spread over their interval instead of all speaking in
//! the same second. Simulated time advances only as messages are drawn: the stream is the same
//! whatever the publish rate. Faults are drawn from a second RNG stream, so enabling them does
//! not change the values of the messages they leave alone.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::manifest::{Expect, FaultKind};
use crate::models::camera::Camera;
use crate::models::env::EnvStation;
use crate::models::traffic::TrafficLane;
use crate::models::{Message, World};
use crate::rng::SimRng;
use crate::scenario::{Faults, Scenario, ScenarioError};

/// Any simulated device.
#[derive(Debug, Clone)]
pub enum Device {
    /// An environment station.
    Env(EnvStation),
    /// One lane of a traffic counter.
    Traffic(TrafficLane),
    /// An AI camera.
    Camera(Camera),
}

/// The message stream of a scenario. Never ends; take as many messages as needed.
#[derive(Debug)]
pub struct Generator {
    devices: Vec<Device>,
    intervals_ms: Vec<i64>,
    due: BinaryHeap<Reverse<(i64, usize)>>,
    world: World,
    rng: SimRng,
    fault_rng: SimRng,
    faults: Faults,
    held: Vec<Option<Message>>,
    out: VecDeque<Message>,
    scratch: Vec<Message>,
    seq: u64,
    start_ms: i64,
}

const FAULT_STREAM: u64 = 0x9e37_79b9_7f4a_7c15;

impl Generator {
    /// Builds every device of `scenario`; all randomness comes from `seed`.
    pub fn new(scenario: &Scenario, seed: u64) -> Result<Self, ScenarioError> {
        let start = scenario.start_ms()?;
        let mut rng = SimRng::new(seed);
        let districts = &scenario.districts;
        let district = |i: usize| districts[i % districts.len()].clone();
        let mut devices = Vec::new();
        let mut intervals_ms = Vec::new();
        if let Some(env) = &scenario.env {
            for i in 0..env.count {
                let mut station = EnvStation::new(
                    devices.len(),
                    district(i),
                    format!("env-{:04}", i + 1),
                    &mut rng,
                );
                if i < scenario.faults.clock_skew_devices {
                    station.clock_skew_ms = (scenario.faults.clock_skew_s * 1000.0) as i64;
                }
                devices.push(Device::Env(station));
                intervals_ms.push((env.interval_s * 1000.0) as i64);
            }
        }
        if let Some(t) = &scenario.traffic {
            for site in 0..t.sites {
                for direction in &t.directions {
                    for lane in 1..=t.lanes {
                        let lane = TrafficLane::new(
                            devices.len(),
                            district(site),
                            format!("site-{:02}", site + 1),
                            lane.to_string(),
                            direction.clone(),
                            t.interval_s,
                            &mut rng,
                        );
                        devices.push(Device::Traffic(lane));
                        intervals_ms.push((t.interval_s * 1000.0) as i64);
                    }
                }
            }
        }
        if let Some(c) = &scenario.cameras {
            for i in 0..c.count {
                let cam = Camera::new(
                    devices.len(),
                    district(i),
                    format!("cam-{:02}", i + 1),
                    c.interval_s,
                    c.events_per_min,
                    c.lpr_share,
                );
                devices.push(Device::Camera(cam));
                intervals_ms.push((c.interval_s * 1000.0) as i64);
            }
        }
        let mut due = BinaryHeap::with_capacity(devices.len());
        for (i, interval) in intervals_ms.iter().enumerate() {
            let phase = rng.below((*interval).max(1) as u64) as i64;
            due.push(Reverse((start + phase, i)));
        }
        let world = World {
            utc_offset_hours: scenario.utc_offset_hours,
            incidents: scenario.windows(&scenario.incident)?,
            rain: scenario.windows(&scenario.rain)?,
        };
        Ok(Self {
            held: vec![None; devices.len()],
            devices,
            intervals_ms,
            due,
            world,
            rng,
            fault_rng: SimRng::new(seed ^ FAULT_STREAM),
            faults: scenario.faults.clone(),
            out: VecDeque::new(),
            scratch: Vec::new(),
            seq: 0,
            start_ms: start,
        })
    }

    /// Simulated instant of the first report, Unix ms.
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// Number of devices in the scenario.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    fn step(&mut self) {
        let Some(Reverse((ts, idx))) = self.due.pop() else {
            return;
        };
        self.due
            .push(Reverse((ts + self.intervals_ms[idx].max(1), idx)));
        let mut produced = std::mem::take(&mut self.scratch);
        match &mut self.devices[idx] {
            Device::Env(s) => produced.push(s.emit(ts, &self.world, &mut self.rng)),
            Device::Traffic(l) => produced.push(l.emit(ts, &self.world, &mut self.rng)),
            Device::Camera(c) => c.emit(ts, &self.world, &mut self.rng, &mut produced),
        }
        for mut msg in produced.drain(..) {
            msg.due_ms = ts;
            if matches!(self.devices[idx], Device::Env(ref s) if s.clock_skew_ms != 0) {
                msg.entry.fault = Some(FaultKind::ClockSkew);
            }
            self.apply_faults(idx, msg);
        }
        self.scratch = produced;
    }

    fn apply_faults(&mut self, idx: usize, mut msg: Message) {
        let held = self.held[idx].take();
        let faultable = msg.entry.x == Expect::Stored;
        let f = &self.faults;
        let rng = &mut self.fault_rng;
        // Draw every decision each time, so one fault's setting never shifts another's choices.
        let (malformed, nan, ooo, dup) = (
            rng.chance(f.malformed_json),
            rng.chance(f.nan_token),
            rng.chance(f.out_of_order),
            rng.chance(f.duplicate),
        );
        if faultable && malformed {
            msg.payload = malform(&msg.payload, rng);
            msg.entry.x = Expect::Rejected;
            msg.entry.fault = Some(FaultKind::MalformedJson);
            self.out.push_back(msg);
        } else if faultable && nan {
            let fields: Vec<String> = msg.entry.f.keys().cloned().collect();
            let field = &fields[rng.below(fields.len() as u64) as usize];
            if let Some(p) = replace_value(&msg.payload, field, "NaN") {
                msg.payload = p;
                msg.entry.f.remove(field);
                msg.entry.x = Expect::Rejected;
                msg.entry.fault = Some(FaultKind::NanToken);
            }
            self.out.push_back(msg);
        } else if faultable && ooo && held.is_none() {
            msg.entry.fault = Some(FaultKind::OutOfOrder);
            self.held[idx] = Some(msg);
            return;
        } else if faultable && dup {
            let mut copy = msg.clone();
            copy.entry.fault = Some(FaultKind::Duplicate);
            self.out.push_back(msg);
            self.out.push_back(copy);
        } else {
            self.out.push_back(msg);
        }
        if let Some(h) = held {
            self.out.push_back(h);
        }
    }
}

/// Makes a JSON object payload invalid in one of three ways: cut short, a trailing comma, a
/// single quote where a double quote belongs.
pub fn malform(payload: &[u8], rng: &mut SimRng) -> Vec<u8> {
    let len = payload.len();
    match rng.below(3) {
        0 if len > 2 => payload[..1 + rng.below(len as u64 - 2) as usize].to_vec(),
        1 if payload.last() == Some(&b'}') => {
            let mut p = payload[..len - 1].to_vec();
            p.extend_from_slice(b",}");
            p
        }
        _ => {
            let mut p = payload.to_vec();
            if let Some(q) = p.iter().position(|&b| b == b'"') {
                p[q] = b'\'';
            } else {
                p.push(b'{');
            }
            p
        }
    }
}

/// Replaces the value of top-level `"field":<value>` in a flat JSON object with `token`.
pub fn replace_value(payload: &[u8], field: &str, token: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(payload).ok()?;
    let key = format!("\"{field}\":");
    let start = text.find(&key)? + key.len();
    let end = start + text[start..].find([',', '}'])?;
    Some(format!("{}{}{}", &text[..start], token, &text[end..]).into_bytes())
}

impl Iterator for Generator {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(mut m) = self.out.pop_front() {
                let f = &self.faults;
                if f.burst_every > 0 && self.seq % f.burst_every < f.burst_len {
                    m.burst = true;
                }
                self.seq += 1;
                return Some(m);
            }
            if self.due.is_empty() {
                return None;
            }
            self.step();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Expect;
    use std::collections::{BTreeMap, HashMap};

    const BASE: &str = r#"
name = "t"
start = "2026-11-24T00:30:00Z"
districts = ["d1", "d2"]
[env]
count = 20
[traffic]
sites = 3
lanes = 2
[cameras]
count = 2
"#;

    fn scenario(extra: &str) -> Scenario {
        Scenario::parse(&format!("{BASE}{extra}"), "t").unwrap()
    }

    fn take(s: &Scenario, seed: u64, n: usize) -> Vec<Message> {
        Generator::new(s, seed).unwrap().take(n).collect()
    }

    #[test]
    fn devices_and_topics() {
        let s = scenario("");
        let g = Generator::new(&s, 1).unwrap();
        assert_eq!(g.device_count(), 20 + 3 * 2 * 2 + 2);
        let msgs = take(&s, 1, 3000);
        let topics: std::collections::BTreeSet<&str> = msgs
            .iter()
            .map(|m| m.topic.split('/').nth(2).unwrap_or("events"))
            .collect();
        assert_eq!(
            topics.into_iter().collect::<Vec<_>>(),
            ["env", "events", "lpr", "traffic"]
        );
    }

    #[test]
    fn timestamps_per_series_increase_without_faults() {
        let msgs = take(&scenario(""), 2, 5000);
        let mut last: HashMap<String, i64> = HashMap::new();
        for m in msgs.iter().filter(|m| m.entry.x == Expect::Stored) {
            let key = format!("{:?}", m.entry.t);
            if let Some(prev) = last.insert(key, m.entry.ts) {
                assert!(m.entry.ts > prev);
            }
        }
    }

    fn faulty(extra: &str, n: usize) -> Vec<Message> {
        take(&scenario(&format!("[faults]\n{extra}\n")), 11, n)
    }

    fn count(msgs: &[Message], kind: FaultKind) -> usize {
        msgs.iter().filter(|m| m.entry.fault == Some(kind)).count()
    }

    #[test]
    fn malformed_payloads_do_not_parse() {
        let msgs = faulty("malformed_json = 0.1", 4000);
        let bad: Vec<_> = msgs
            .iter()
            .filter(|m| m.entry.fault == Some(FaultKind::MalformedJson))
            .collect();
        assert!(bad.len() > 200 && bad.len() < 500, "{}", bad.len());
        for m in &bad {
            assert_eq!(m.entry.x, Expect::Rejected);
            assert!(
                serde_json::from_slice::<serde_json::Value>(&m.payload).is_err(),
                "{}",
                String::from_utf8_lossy(&m.payload)
            );
        }
        for m in msgs.iter().filter(|m| m.entry.fault.is_none()) {
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap();
        }
    }

    #[test]
    fn nan_payloads_carry_a_bare_nan() {
        let msgs = faulty("nan_token = 0.05", 4000);
        let bad: Vec<_> = msgs
            .iter()
            .filter(|m| m.entry.fault == Some(FaultKind::NanToken))
            .collect();
        assert!(bad.len() > 100, "{}", bad.len());
        for m in &bad {
            let text = String::from_utf8(m.payload.clone()).unwrap();
            assert!(text.contains(":NaN,") || text.contains(":NaN}"), "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
            assert_eq!(m.entry.x, Expect::Rejected);
            assert_eq!(
                m.entry.f.len() + 1,
                if m.entry.m == "environment" { 5 } else { 4 }
            );
        }
    }

    #[test]
    fn duplicates_follow_their_original() {
        let msgs = faulty("duplicate = 0.05", 4000);
        let mut seen = 0;
        for (i, m) in msgs.iter().enumerate() {
            if m.entry.fault == Some(FaultKind::Duplicate) {
                seen += 1;
                let prev = &msgs[i - 1];
                assert_eq!(prev.payload, m.payload);
                assert_eq!(prev.topic, m.topic);
                assert_eq!(prev.entry.fault, None);
            }
        }
        assert!(seen > 100, "{seen}");
    }

    #[test]
    fn out_of_order_messages_come_after_a_later_one() {
        let msgs = faulty("out_of_order = 0.05", 4000);
        let mut last: HashMap<usize, i64> = HashMap::new();
        let mut late = 0;
        for m in &msgs {
            let prev = last.insert(m.device, m.entry.ts);
            if m.entry.fault == Some(FaultKind::OutOfOrder) {
                late += 1;
                assert!(
                    m.entry.ts < prev.unwrap(),
                    "held message must follow a newer one"
                );
                assert_eq!(m.entry.x, Expect::Stored);
            }
        }
        assert!(late > 50, "{late}");
    }

    #[test]
    fn clock_skew_shifts_the_first_stations() {
        let skewed = faulty("clock_skew_devices = 2\nclock_skew_s = -3600", 2000);
        let plain = take(&scenario(""), 11, 2000);
        for (a, b) in plain.iter().zip(&skewed) {
            assert_eq!(a.entry.f, b.entry.f, "values must not change");
            let sensor = b.entry.t.get("sensor_id").map(String::as_str);
            if matches!(sensor, Some("env-0001") | Some("env-0002")) {
                assert_eq!(b.entry.ts, a.entry.ts - 3_600_000);
                assert_eq!(b.entry.fault, Some(FaultKind::ClockSkew));
                let v: serde_json::Value = serde_json::from_slice(&b.payload).unwrap();
                assert_eq!(v["ts"].as_i64().unwrap(), b.entry.ts);
            } else {
                assert_eq!(b.entry.ts, a.entry.ts);
                assert_eq!(a.payload, b.payload);
            }
        }
        assert!(count(&skewed, FaultKind::ClockSkew) > 50);
    }

    #[test]
    fn bursts_mark_the_configured_share() {
        let msgs = faulty("burst_every = 100\nburst_len = 10", 1000);
        let flags: Vec<bool> = msgs.iter().map(|m| m.burst).collect();
        assert_eq!(flags.iter().filter(|b| **b).count(), 100);
        assert!(flags[..10].iter().all(|b| *b) && !flags[10] && flags[100]);
    }

    #[test]
    fn faults_leave_untouched_messages_alone() {
        let clean = take(&scenario(""), 21, 3000);
        let dirty = take(
            &scenario("[faults]\nmalformed_json = 0.05\nduplicate = 0.05\n"),
            21,
            3000,
        );
        let clean_by_key: BTreeMap<(String, i64), &Vec<u8>> = clean
            .iter()
            .filter(|m| m.entry.x == Expect::Stored)
            .map(|m| ((format!("{:?}", m.entry.t), m.entry.ts), &m.payload))
            .collect();
        let mut compared = 0;
        for m in dirty
            .iter()
            .filter(|m| m.entry.fault.is_none() && m.entry.x == Expect::Stored)
        {
            if let Some(p) = clean_by_key.get(&(format!("{:?}", m.entry.t), m.entry.ts)) {
                assert_eq!(
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(&m.payload)
                );
                compared += 1;
            }
        }
        assert!(compared > 1500, "{compared}");
    }
}
