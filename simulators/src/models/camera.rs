//! AI cameras: Frigate `frigate/events` messages and licence-plate reads, bursting at incidents.
//!
//! Each camera tracks objects (cars, motorbikes, people, buses, trucks) whose appearance rate
//! follows road traffic and jumps sixfold during an incident. A tracked object produces a
//! `new` message, some `update`s and an `end`, each with Frigate's `before`/`after` objects
//! (field names and order as in Frigate's MQTT documentation; times are float seconds with
//! millisecond resolution). Some vehicle events end with a plate read on
//! `city/<district>/lpr/<camera>`, payload
//! `{"plate":"51F-123.45","confidence":0.93,"camera":"cam-03","time":"2026-11-24T00:31:02.123Z","event_id":"…"}`
//! (`time` is RFC 3339 UTC with milliseconds; `event_id` links it to the Frigate event).
//! Manifest entries follow the gateway's mapping (`gateway/src/decode/camera.rs`): measurement
//! `camera_event`, tags `camera`, `label`, `event_type`, `zones` (Frigate) or
//! `label=license_plate,event_type=plate` (plates), numeric fields `score`, `top_score`
//! (plates: `score` = confidence), time `start_time` / `frame_time` / `end_time` by type, or the
//! plate's `time`. They are written `unchecked`, because a gateway set up without camera inputs
//! stores none; `verify --check-cameras` checks them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::civil_time::format_rfc3339_ms;
use crate::manifest::{Entry, Expect};
use crate::models::{Message, World};
use crate::rng::{round_to, SimRng};

const LABELS: [(&str, f64); 5] = [
    ("motorcycle", 0.42),
    ("car", 0.33),
    ("person", 0.14),
    ("truck", 0.07),
    ("bus", 0.04),
];
const ZONES: [&str; 4] = ["intersection", "crosswalk", "bus_lane", "sidewalk"];
const PLATE_SERIES: &[u8] = b"ABCDEFGHKLMNPSTUVXYZ";

/// Frigate's snapshot sub-object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FrigateSnapshot {
    frame_time: f64,
    #[serde(rename = "box")]
    bbox: [u32; 4],
    area: u32,
    region: [u32; 4],
    score: f64,
    attributes: Vec<String>,
}

/// A tracked object as Frigate publishes it in `before` and `after`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FrigateObject {
    id: String,
    camera: String,
    frame_time: f64,
    snapshot: FrigateSnapshot,
    label: String,
    sub_label: Option<String>,
    top_score: f64,
    false_positive: bool,
    start_time: f64,
    end_time: Option<f64>,
    score: f64,
    #[serde(rename = "box")]
    bbox: [u32; 4],
    area: u32,
    ratio: f64,
    region: [u32; 4],
    current_zones: Vec<String>,
    entered_zones: Vec<String>,
    thumbnail: Option<String>,
    has_snapshot: bool,
    has_clip: bool,
    stationary: bool,
    motionless_count: u32,
    position_changes: u32,
    attributes: BTreeMap<String, f64>,
    current_attributes: Vec<String>,
}

/// A whole `frigate/events` message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FrigateEvent {
    /// `new`, `update` or `end`.
    #[serde(rename = "type")]
    pub kind: String,
    /// State before this change.
    pub before: FrigateObject,
    /// State after this change.
    pub after: FrigateObject,
}

/// A plate-recognition message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlateRead {
    /// Vietnamese-style plate, e.g. `51F-123.45`.
    pub plate: String,
    /// Recogniser confidence in `[0, 1]`.
    pub confidence: f64,
    /// Camera id.
    pub camera: String,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The Frigate event the plate belongs to.
    pub event_id: String,
}

#[derive(Debug, Clone)]
struct Tracked {
    state: FrigateObject,
    end_ms: i64,
    plate: Option<String>,
}

/// One camera and the objects it is tracking.
#[derive(Debug, Clone)]
pub struct Camera {
    /// Global device index.
    pub device: usize,
    /// District the camera watches.
    pub district: String,
    /// Camera id (`cam-01`).
    pub camera: String,
    /// Seconds between two looks.
    pub interval_s: f64,
    /// New objects per minute at full traffic.
    pub events_per_min: f64,
    /// Share of vehicle events that produce a plate read.
    pub lpr_share: f64,
    live: Vec<Tracked>,
}

/// The gateway's `zones` tag: current zones sorted and comma-joined, entered zones when the
/// object is in none.
fn zones_tag(o: &FrigateObject) -> String {
    let mut z: Vec<&str> = if o.current_zones.is_empty() {
        &o.entered_zones
    } else {
        &o.current_zones
    }
    .iter()
    .map(String::as_str)
    .collect();
    z.sort_unstable();
    z.dedup();
    z.join(",")
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn pick_label(rng: &mut SimRng) -> &'static str {
    let mut x = rng.unit();
    for (label, p) in LABELS {
        if x < p {
            return label;
        }
        x -= p;
    }
    "car"
}

fn plate(rng: &mut SimRng) -> String {
    let province = 29 + rng.below(71);
    let series = char::from(PLATE_SERIES[rng.below(PLATE_SERIES.len() as u64) as usize]);
    format!(
        "{province}{series}-{:03}.{:02}",
        rng.below(1000),
        rng.below(100)
    )
}

impl Camera {
    /// A camera with no tracked objects.
    pub fn new(
        device: usize,
        district: String,
        camera: String,
        interval_s: f64,
        events_per_min: f64,
        lpr_share: f64,
    ) -> Self {
        Self {
            device,
            district,
            camera,
            interval_s,
            events_per_min,
            lpr_share,
            live: Vec::new(),
        }
    }

    fn frigate_message(
        &self,
        kind: &str,
        before: FrigateObject,
        after: FrigateObject,
        ts_ms: i64,
    ) -> Message {
        let entry = Entry {
            m: "camera_event".into(),
            t: BTreeMap::from([
                ("camera".to_string(), after.camera.clone()),
                ("label".to_string(), after.label.clone()),
                ("event_type".to_string(), kind.to_string()),
                ("zones".to_string(), zones_tag(&after)),
            ]),
            ts: ts_ms,
            f: BTreeMap::from([
                ("score".to_string(), after.score),
                ("top_score".to_string(), after.top_score),
            ]),
            x: Expect::Unchecked,
            fault: None,
            resent: false,
        };
        let event = FrigateEvent {
            kind: kind.to_string(),
            before,
            after,
        };
        Message {
            topic: "frigate/events".into(),
            payload: serde_json::to_vec(&event).unwrap_or_default(),
            device: self.device,
            entry,
            also: Vec::new(),
            burst: false,
            due_ms: 0,
        }
    }

    fn plate_message(&self, read: PlateRead, ts_ms: i64) -> Message {
        let entry = Entry {
            m: "camera_event".into(),
            t: BTreeMap::from([
                ("camera".to_string(), read.camera.clone()),
                ("label".to_string(), "license_plate".to_string()),
                ("event_type".to_string(), "plate".to_string()),
            ]),
            ts: ts_ms,
            f: BTreeMap::from([("score".to_string(), read.confidence)]),
            x: Expect::Unchecked,
            fault: None,
            resent: false,
        };
        Message {
            topic: format!("city/{}/lpr/{}", self.district, self.camera),
            payload: serde_json::to_vec(&read).unwrap_or_default(),
            device: self.device,
            entry,
            also: Vec::new(),
            burst: false,
            due_ms: 0,
        }
    }

    fn spawn(&self, ts_ms: i64, rng: &mut SimRng) -> Tracked {
        let label = pick_label(rng);
        let start = secs(ts_ms);
        let id = format!("{start:.6}-{}", rng.alnum(6));
        let x = rng.below(1500) as u32;
        let y = rng.below(800) as u32;
        let (w, h) = match label {
            "person" => (40 + rng.below(40) as u32, 110 + rng.below(80) as u32),
            "motorcycle" => (60 + rng.below(40) as u32, 90 + rng.below(50) as u32),
            "bus" | "truck" => (250 + rng.below(150) as u32, 200 + rng.below(120) as u32),
            _ => (150 + rng.below(90) as u32, 110 + rng.below(60) as u32),
        };
        let score = round_to(rng.uniform(0.62, 0.95), 4);
        let zone = ZONES[rng.below(ZONES.len() as u64) as usize].to_string();
        let bbox = [x, y, x + w, y + h];
        let region = [
            x.saturating_sub(60),
            y.saturating_sub(60),
            x + w + 60,
            y + h + 60,
        ];
        let vehicle = matches!(label, "car" | "truck" | "bus" | "motorcycle");
        let plate = (vehicle && rng.chance(self.lpr_share)).then(|| plate(rng));
        let lifetime_ms = (rng.uniform(3.0, 40.0) * 1000.0) as i64;
        Tracked {
            state: FrigateObject {
                id,
                camera: self.camera.clone(),
                frame_time: start,
                snapshot: FrigateSnapshot {
                    frame_time: start,
                    bbox,
                    area: w * h,
                    region,
                    score,
                    attributes: Vec::new(),
                },
                label: label.to_string(),
                sub_label: None,
                top_score: score,
                false_positive: false,
                start_time: start,
                end_time: None,
                score,
                bbox,
                area: w * h,
                ratio: round_to(f64::from(w) / f64::from(h), 6),
                region,
                current_zones: vec![zone.clone()],
                entered_zones: vec![zone],
                thumbnail: None,
                has_snapshot: true,
                has_clip: true,
                stationary: false,
                motionless_count: 0,
                position_changes: 0,
                attributes: BTreeMap::new(),
                current_attributes: Vec::new(),
            },
            end_ms: ts_ms + lifetime_ms,
            plate,
        }
    }

    /// Everything the camera publishes when it looks at simulated instant `ts_ms`.
    ///
    /// Each message of one look is stamped one millisecond after the previous one (objects are
    /// detected in successive frames), so no two events of a camera share a timestamp: the store
    /// keys a point by series and time, and `event_id` is a field, not a tag.
    pub fn emit(&mut self, look_ms: i64, world: &World, rng: &mut SimRng, out: &mut Vec<Message>) {
        let mut frame = 0i64;
        let mut next_ms = || {
            frame += 1;
            look_ms + frame - 1
        };
        let mut live = std::mem::take(&mut self.live);
        let mut kept = Vec::with_capacity(live.len());
        for mut obj in live.drain(..) {
            let before = obj.state.clone();
            if look_ms >= obj.end_ms {
                let ts_ms = next_ms();
                obj.state.frame_time = secs(ts_ms);
                obj.state.end_time = Some(secs(ts_ms));
                if let Some(p) = &obj.plate {
                    obj.state.sub_label = Some(p.clone());
                }
                out.push(self.frigate_message("end", before, obj.state.clone(), ts_ms));
                if let Some(p) = obj.plate.take() {
                    let ts_ms = next_ms();
                    let read = PlateRead {
                        plate: p,
                        confidence: round_to(rng.uniform(0.72, 0.99), 2),
                        camera: self.camera.clone(),
                        time: format_rfc3339_ms(ts_ms),
                        event_id: obj.state.id.clone(),
                    };
                    out.push(self.plate_message(read, ts_ms));
                }
            } else if rng.chance(0.35) {
                let ts_ms = next_ms();
                obj.state.frame_time = secs(ts_ms);
                let moved = rng.chance(0.7);
                if moved {
                    let dx = rng.below(60) as u32;
                    obj.state.bbox = [
                        obj.state.bbox[0] + dx,
                        obj.state.bbox[1],
                        obj.state.bbox[2] + dx,
                        obj.state.bbox[3],
                    ];
                    obj.state.position_changes += 1;
                    obj.state.motionless_count = 0;
                } else {
                    obj.state.motionless_count += 1;
                }
                obj.state.stationary = obj.state.motionless_count >= 2;
                obj.state.score = round_to(rng.uniform(0.6, 0.97), 4);
                if obj.state.score > obj.state.top_score {
                    obj.state.top_score = obj.state.score;
                    obj.state.snapshot.frame_time = secs(ts_ms);
                    obj.state.snapshot.score = obj.state.score;
                    obj.state.snapshot.bbox = obj.state.bbox;
                }
                if rng.chance(0.2) {
                    let zone = ZONES[rng.below(ZONES.len() as u64) as usize].to_string();
                    if !obj.state.entered_zones.contains(&zone) {
                        obj.state.entered_zones.push(zone.clone());
                    }
                    obj.state.current_zones = vec![zone];
                }
                out.push(self.frigate_message("update", before, obj.state.clone(), ts_ms));
                kept.push(obj);
            } else {
                kept.push(obj);
            }
        }
        let incident = world.incident(look_ms, &self.district);
        let rate = self.events_per_min * self.interval_s / 60.0
            * world.traffic(look_ms)
            * if incident { 6.0 } else { 1.0 };
        for _ in 0..rng.count(rate) {
            let ts_ms = next_ms();
            let obj = self.spawn(ts_ms, rng);
            out.push(self.frigate_message("new", obj.state.clone(), obj.state.clone(), ts_ms));
            kept.push(obj);
        }
        self.live = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Window;

    fn run(world: &World, looks: i64) -> Vec<Message> {
        let mut rng = SimRng::new(5);
        let mut cam = Camera::new(0, "d1".into(), "cam-01".into(), 2.0, 4.0, 0.5);
        let mut out = Vec::new();
        for i in 0..looks {
            cam.emit(8 * 3_600_000 + i * 2000, world, &mut rng, &mut out);
        }
        out
    }

    #[test]
    fn events_have_frigate_shape_and_lifecycle() {
        let out = run(&World::default(), 600);
        let mut new = 0;
        let mut end = 0;
        let mut plates = 0;
        let mut open = std::collections::HashSet::new();
        for m in &out {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            if m.topic == "frigate/events" {
                let kind = v["type"].as_str().unwrap();
                let id = v["after"]["id"].as_str().unwrap().to_string();
                assert_eq!(v["before"]["id"], v["after"]["id"]);
                for key in [
                    "camera",
                    "label",
                    "sub_label",
                    "top_score",
                    "score",
                    "start_time",
                    "end_time",
                    "current_zones",
                    "entered_zones",
                    "stationary",
                    "frame_time",
                    "box",
                    "snapshot",
                ] {
                    assert!(v["after"].get(key).is_some(), "{key} missing");
                }
                match kind {
                    "new" => {
                        new += 1;
                        assert!(open.insert(id));
                        assert!(v["after"]["end_time"].is_null());
                    }
                    "update" => assert!(open.contains(&id)),
                    "end" => {
                        end += 1;
                        assert!(open.remove(&id));
                        assert!(
                            v["after"]["end_time"].as_f64().unwrap()
                                >= v["after"]["start_time"].as_f64().unwrap()
                        );
                    }
                    other => panic!("{other}"),
                }
            } else {
                plates += 1;
                assert_eq!(m.topic, "city/d1/lpr/cam-01");
                let p = v["plate"].as_str().unwrap();
                assert_eq!(p.len(), 10, "{p}");
                assert_eq!(&p[3..4], "-");
                assert!(v["time"].as_str().unwrap().ends_with('Z'));
            }
        }
        assert!(new > 50, "{new}");
        assert!(end > 40 && end <= new, "{end}");
        assert!(plates > 5, "{plates}");
    }

    #[test]
    fn no_two_events_share_a_store_key_and_entries_follow_the_payload() {
        let world = World {
            incidents: vec![Window {
                start_ms: 0,
                end_ms: i64::MAX,
                district: None,
            }],
            ..World::default()
        };
        let out = run(&world, 600);
        let mut keys = std::collections::HashSet::new();
        for m in &out {
            let tags = format!("{:?}", m.entry.t);
            assert!(
                keys.insert((tags, m.entry.ts)),
                "two events at one series and time: {:?}",
                m.entry
            );
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            if m.topic == "frigate/events" {
                let after = &v["after"];
                let time_key = match v["type"].as_str().unwrap() {
                    "new" => "start_time",
                    "update" => "frame_time",
                    _ => "end_time",
                };
                assert_eq!(
                    (after[time_key].as_f64().unwrap() * 1000.0).round() as i64,
                    m.entry.ts
                );
                assert_eq!(after["score"].as_f64().unwrap(), m.entry.f["score"]);
                assert_eq!(after["top_score"].as_f64().unwrap(), m.entry.f["top_score"]);
                assert_eq!(
                    after["current_zones"][0].as_str().unwrap(),
                    m.entry.t["zones"]
                );
            } else {
                assert_eq!(v["confidence"].as_f64().unwrap(), m.entry.f["score"]);
                assert_eq!(
                    crate::civil_time::parse_rfc3339_ms(v["time"].as_str().unwrap()).unwrap(),
                    m.entry.ts
                );
            }
        }
        assert!(keys.len() > 1000, "{}", keys.len());
    }

    #[test]
    fn incident_makes_a_burst() {
        let calm = run(&World::default(), 300).len();
        let world = World {
            incidents: vec![Window {
                start_ms: 0,
                end_ms: i64::MAX,
                district: None,
            }],
            ..World::default()
        };
        let busy = run(&world, 300).len();
        assert!(busy > 3 * calm, "{calm} {busy}");
    }
}
