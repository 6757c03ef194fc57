//! Sensor-node frames (the `ioc_wire` format spoken by the `ioc-node` firmware) to readings.
//!
//! Exists to turn the byte stream of a `protocol = "node"` serial port into [`Reading`]s and the
//! bytes to send back, with no I/O of its own (the serial input owns the port and the clock):
//!
//! * `Environment` → measurement `environment`, float fields `temperature_c`, `humidity_pct`,
//!   `pm1_0`, `pm2_5`, `pm10`, `noise_db` (absent sensors are simply not written);
//! * `Traffic` → measurement `traffic`, tags `lane`, `direction`, fields `count`, `heavy_count`
//!   (integers), `occupancy`, `speed_avg` (floats, the latter only when measured);
//! * `Status` → measurement `node_status`, integer fields `uptime_s`, `resets`, `sensor_errors`,
//!   `ring_depth`, `ring_dropped`, `sample_interval_ms`, `boot_id`;
//! * every reading gets tag `node_id` (decimal) plus the input's configured tags (`node_id`
//!   wins over a configured tag of the same name).
//!
//! Per node it keeps the boot id, the highest sequence number and a 128-frame window of the
//! sequence numbers seen, so it can tell new readings from duplicates (dropped, counted), count
//! gaps as `frames_lost`, count recovered ones when the node resends them, and see a reboot as a
//! boot id change (the new boot's readings before the first one heard also count as lost).
//! After each chunk it answers every node it heard with `Ack { boot_id, up_to_seq: highest }`,
//! preceded by `RequestStatus` when it saw a gap, a reboot or the node for the first time (the
//! node then resends what it still holds, before the ack lets it forget).
//!
//! Sensor nodes have no wall clock: the caller passes `now_ns` (Unix ns) for each chunk. A
//! reading that arrives late (resent) is back-dated with the node's uptime relative to the
//! latest in-order frame, so it does not overwrite the newest point of its series.

use std::collections::BTreeMap;

use ioc_wire::{
    encode_frame, Command, Frame, FrameDecoder, Header, Payload, WireError, MAX_ENCODED_LEN,
};

use crate::model::{FieldValue, InvalidReading, Reading};

/// Sequence numbers remembered behind the highest one, per node.
pub const SEQ_WINDOW: u32 = 128;

/// Why part of the stream produced no reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    #[error("undecodable node frame: {0}")]
    Wire(WireError),
    #[error("environment frame from node {node_id} carries no value (all sensors failed)")]
    NoValues { node_id: u32 },
    #[error(transparent)]
    Invalid(#[from] InvalidReading),
}

impl NodeError {
    /// A short, stable name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            NodeError::Wire(WireError::BadCrc) => "bad_crc",
            NodeError::Wire(WireError::Cobs) => "cobs",
            NodeError::Wire(WireError::Malformed) => "malformed",
            NodeError::Wire(WireError::TooLong) => "too_long",
            NodeError::Wire(WireError::UnsupportedVersion(_)) => "unsupported_version",
            NodeError::NoValues { .. } => "no_values",
            NodeError::Invalid(e) => e.label(),
        }
    }
}

/// Counters over all nodes of one port (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Frames decoded (any payload).
    pub frames: u64,
    /// Stretches of bytes that did not decode (bad CRC, garbage, truncation, ...).
    pub decode_errors: u64,
    /// Readings produced.
    pub readings: u64,
    /// Sequence numbers skipped (never received in order).
    pub frames_lost: u64,
    /// Skipped sequence numbers that arrived later (resent by the node).
    pub frames_recovered: u64,
    /// Resent readings from before the gateway first heard a node's boot.
    pub frames_backfilled: u64,
    /// Readings received twice (dropped).
    pub duplicates: u64,
    /// Readings older than the sequence window (dropped).
    pub stale: u64,
    /// Boot id changes.
    pub reboots: u64,
    /// Command acknowledgements with `ok = true` / `ok = false`.
    pub command_acks: u64,
    pub command_nacks: u64,
    /// Command frames heard on the line (our own echo on RS-485), ignored.
    pub commands_heard: u64,
}

/// What the decoder knows about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub boot_id: u32,
    pub highest_seq: u32,
    /// Readings (not counting duplicates) from this node since the gateway started.
    pub readings: u64,
    pub frames_lost: u64,
    pub duplicates: u64,
    pub reboots: u64,
    /// Bit `i` set: `highest_seq - i` was received.
    window: u128,
    /// Lowest sequence number of this boot whose absence counts as lost.
    base_seq: u32,
    /// Unix ns at which the node's uptime was 0 (from the latest in-order frame).
    boot_epoch_ns: i64,
}

/// The result of one chunk of bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeBatch {
    pub readings: Vec<Reading>,
    /// Encoded frames (acks, status requests) to write back to the port, in order.
    pub replies: Vec<u8>,
    pub errors: Vec<NodeError>,
}

/// Streaming decoder for one serial port carrying node frames.
#[derive(Debug)]
pub struct NodeDecoder {
    frames: FrameDecoder,
    static_tags: BTreeMap<String, String>,
    nodes: BTreeMap<u32, NodeState>,
    counters: NodeCounters,
    gateway_boot_id: u32,
    next_command_id: u32,
    started_ns: Option<i64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    ack: bool,
    request_status: bool,
}

enum Verdict {
    New,
    Late,
    Drop,
}

impl NodeDecoder {
    /// A decoder adding `static_tags` to every reading. `gateway_boot_id` (random per gateway
    /// start) goes into the header of the frames the gateway sends.
    pub fn new(static_tags: BTreeMap<String, String>, gateway_boot_id: u32) -> Self {
        Self {
            frames: FrameDecoder::new(),
            static_tags,
            nodes: BTreeMap::new(),
            counters: NodeCounters::default(),
            gateway_boot_id,
            next_command_id: 0,
            started_ns: None,
        }
    }

    /// Counters over all nodes.
    pub fn counters(&self) -> NodeCounters {
        self.counters
    }

    /// What is known about `node_id`.
    pub fn node(&self, node_id: u32) -> Option<&NodeState> {
        self.nodes.get(&node_id)
    }

    /// Drop a partial frame (after the port was reopened).
    pub fn reset_stream(&mut self) {
        self.frames.reset();
    }

    /// Decode `bytes` received at `now_ns` (Unix ns).
    pub fn push(&mut self, bytes: &[u8], now_ns: i64) -> NodeBatch {
        self.started_ns.get_or_insert(now_ns);
        let mut batch = NodeBatch::default();
        let mut pending: BTreeMap<u32, Pending> = BTreeMap::new();
        for &byte in bytes {
            match self.frames.push(byte) {
                None => {}
                Some(Err(e)) => {
                    self.counters.decode_errors += 1;
                    batch.errors.push(NodeError::Wire(e));
                }
                Some(Ok(frame)) => {
                    self.counters.frames += 1;
                    self.handle(&frame, now_ns, &mut batch, &mut pending);
                }
            }
        }
        for (node_id, p) in pending {
            let Some(state) = self.nodes.get(&node_id).copied() else {
                continue;
            };
            if p.request_status {
                self.command_into(node_id, Command::RequestStatus, now_ns, &mut batch.replies);
            }
            if p.ack {
                self.command_into(
                    node_id,
                    Command::Ack {
                        boot_id: state.boot_id,
                        up_to_seq: state.highest_seq,
                    },
                    now_ns,
                    &mut batch.replies,
                );
            }
        }
        batch
    }

    /// Encode a command for `node_id` (or `ioc_wire::BROADCAST_NODE_ID`); its command id (the
    /// frame's `seq`) is returned with the bytes so a `CommandAck` can be matched.
    pub fn command(&mut self, node_id: u32, command: Command, now_ns: i64) -> (u32, Vec<u8>) {
        let id = self.next_command_id;
        let mut out = Vec::new();
        self.command_into(node_id, command, now_ns, &mut out);
        (id, out)
    }

    fn command_into(&mut self, node_id: u32, command: Command, now_ns: i64, out: &mut Vec<u8>) {
        let started = self.started_ns.unwrap_or(now_ns);
        let frame = Frame {
            header: Header {
                node_id,
                boot_id: self.gateway_boot_id,
                seq: self.next_command_id,
                uptime_ms: u64::try_from(now_ns.saturating_sub(started) / 1_000_000).unwrap_or(0),
            },
            payload: Payload::Command(command),
        };
        self.next_command_id = self.next_command_id.wrapping_add(1);
        let mut buf = [0u8; MAX_ENCODED_LEN];
        // a command frame is far below MAX_ENCODED_LEN, so this cannot fail
        if let Ok(n) = encode_frame(&frame, &mut buf) {
            out.extend_from_slice(buf.get(..n).unwrap_or(&[]));
        }
    }

    fn handle(
        &mut self,
        frame: &Frame,
        now_ns: i64,
        batch: &mut NodeBatch,
        pending: &mut BTreeMap<u32, Pending>,
    ) {
        let h = frame.header;
        match frame.payload {
            Payload::Command(_) => {
                self.counters.commands_heard += 1;
                return;
            }
            Payload::CommandAck(ack) => {
                if ack.ok {
                    self.counters.command_acks += 1;
                } else {
                    self.counters.command_nacks += 1;
                }
                return;
            }
            Payload::Environment(_) | Payload::Traffic(_) | Payload::Status(_) => {}
        }
        let p = pending.entry(h.node_id).or_default();
        p.ack = true;
        let uptime_ns = i64::try_from(h.uptime_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        let verdict = match self.nodes.get_mut(&h.node_id) {
            None => {
                p.request_status = true;
                self.nodes.insert(
                    h.node_id,
                    NodeState {
                        boot_id: h.boot_id,
                        highest_seq: h.seq,
                        readings: 0,
                        frames_lost: 0,
                        duplicates: 0,
                        reboots: 0,
                        window: 1,
                        base_seq: h.seq,
                        boot_epoch_ns: now_ns.saturating_sub(uptime_ns),
                    },
                );
                Verdict::New
            }
            Some(state) if state.boot_id != h.boot_id => {
                // new boot: seq restarts at 0, so anything before this seq was lost
                self.counters.reboots += 1;
                state.reboots += 1;
                let lost = u64::from(h.seq);
                self.counters.frames_lost += lost;
                state.frames_lost += lost;
                if lost > 0 {
                    p.request_status = true;
                }
                state.boot_id = h.boot_id;
                state.highest_seq = h.seq;
                state.window = 1;
                state.base_seq = 0;
                state.boot_epoch_ns = now_ns.saturating_sub(uptime_ns);
                Verdict::New
            }
            Some(state) => {
                let ahead = h.seq.wrapping_sub(state.highest_seq) as i32;
                if ahead > 0 {
                    let missed = u64::from(ahead.unsigned_abs() - 1);
                    if missed > 0 {
                        self.counters.frames_lost += missed;
                        state.frames_lost += missed;
                        p.request_status = true;
                    }
                    state.window = state.window.checked_shl(ahead.unsigned_abs()).unwrap_or(0) | 1;
                    state.highest_seq = h.seq;
                    state.boot_epoch_ns = now_ns.saturating_sub(uptime_ns);
                    Verdict::New
                } else {
                    let back = ahead.unsigned_abs();
                    if back >= SEQ_WINDOW {
                        self.counters.stale += 1;
                        Verdict::Drop
                    } else if state.window & (1u128 << back) != 0 {
                        self.counters.duplicates += 1;
                        state.duplicates += 1;
                        Verdict::Drop
                    } else {
                        state.window |= 1u128 << back;
                        let from_base = h.seq.wrapping_sub(state.base_seq) as i32;
                        if from_base >= 0 {
                            self.counters.frames_recovered += 1;
                        } else {
                            self.counters.frames_backfilled += 1;
                        }
                        Verdict::Late
                    }
                }
            }
        };
        let timestamp_ns = match verdict {
            Verdict::Drop => return,
            Verdict::New => now_ns,
            Verdict::Late => self
                .nodes
                .get(&h.node_id)
                .map_or(now_ns, |s| s.boot_epoch_ns.saturating_add(uptime_ns))
                .min(now_ns),
        };
        if let Some(state) = self.nodes.get_mut(&h.node_id) {
            state.readings += 1;
        }
        match self.reading(frame, timestamp_ns) {
            Ok(reading) => {
                self.counters.readings += 1;
                batch.readings.push(reading);
            }
            Err(e) => batch.errors.push(e),
        }
    }

    fn reading(&self, frame: &Frame, timestamp_ns: i64) -> Result<Reading, NodeError> {
        let node_id = frame.header.node_id;
        let base = |measurement: &str| {
            let mut r = Reading::new(measurement, timestamp_ns);
            r.tags = self.static_tags.clone();
            r.tag("node_id", node_id.to_string())
        };
        let reading = match frame.payload {
            Payload::Environment(e) => {
                let mut r = base("environment");
                for (key, value) in [
                    ("temperature_c", e.temperature_c),
                    ("humidity_pct", e.humidity_pct),
                    ("pm1_0", e.pm1_0),
                    ("pm2_5", e.pm2_5),
                    ("pm10", e.pm10),
                    ("noise_db", e.noise_db),
                ] {
                    if let Some(v) = value {
                        r = r.field(key, FieldValue::Float(f64::from(v)));
                    }
                }
                if r.fields.is_empty() {
                    return Err(NodeError::NoValues { node_id });
                }
                r
            }
            Payload::Traffic(t) => {
                let mut r = base("traffic")
                    .tag("lane", t.lane.to_string())
                    .tag("direction", t.direction.as_str())
                    .field("count", FieldValue::Int(i64::from(t.count)))
                    .field("heavy_count", FieldValue::Int(i64::from(t.heavy_count)))
                    .field("occupancy", FieldValue::Float(f64::from(t.occupancy_pct)));
                if let Some(speed) = t.speed_avg_kmh {
                    r = r.field("speed_avg", FieldValue::Float(f64::from(speed)));
                }
                r
            }
            Payload::Status(s) => base("node_status")
                .field("uptime_s", FieldValue::Int(i64::from(s.uptime_s)))
                .field("resets", FieldValue::Int(i64::from(s.resets)))
                .field("sensor_errors", FieldValue::Int(i64::from(s.sensor_errors)))
                .field("ring_depth", FieldValue::Int(i64::from(s.ring_depth)))
                .field("ring_dropped", FieldValue::Int(i64::from(s.ring_dropped)))
                .field(
                    "sample_interval_ms",
                    FieldValue::Int(i64::from(s.sample_interval_ms)),
                )
                .field("boot_id", FieldValue::Int(i64::from(frame.header.boot_id))),
            Payload::Command(_) | Payload::CommandAck(_) => {
                return Err(NodeError::NoValues { node_id });
            }
        };
        reading.validate()?;
        Ok(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_wire::{CommandAck, Direction, Environment, Status, TrafficLane};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn frame(node_id: u32, boot_id: u32, seq: u32, uptime_ms: u64, payload: Payload) -> Vec<u8> {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let f = Frame {
            header: Header {
                node_id,
                boot_id,
                seq,
                uptime_ms,
            },
            payload,
        };
        let n = encode_frame(&f, &mut out).unwrap();
        out[..n].to_vec()
    }

    fn env(t: f32) -> Payload {
        Payload::Environment(Environment {
            temperature_c: Some(t),
            pm2_5: Some(12.0),
            ..Environment::default()
        })
    }

    fn decoder() -> NodeDecoder {
        let tags = BTreeMap::from([
            ("district".to_owned(), "d1".to_owned()),
            ("node_id".to_owned(), "configured".to_owned()),
        ]);
        NodeDecoder::new(tags, 0xAAAA)
    }

    fn replies(bytes: &[u8]) -> Vec<(u32, Command)> {
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        dec.push_slice(bytes, |r| {
            let f = r.unwrap();
            match f.payload {
                Payload::Command(c) => out.push((f.header.node_id, c)),
                other => panic!("reply is not a command: {other:?}"),
            }
        });
        out
    }

    #[test]
    fn environment_frame_to_reading() {
        let mut d = decoder();
        let b = d.push(&frame(7, 1, 0, 500, env(21.5)), NOW);
        assert_eq!(b.errors, vec![]);
        assert_eq!(
            b.readings,
            vec![Reading::new("environment", NOW)
                .tag("district", "d1")
                .tag("node_id", "7")
                .field("temperature_c", FieldValue::Float(21.5))
                .field("pm2_5", FieldValue::Float(12.0))]
        );
        // first contact: ask for resends, then ack
        assert_eq!(
            replies(&b.replies),
            vec![
                (7, Command::RequestStatus),
                (
                    7,
                    Command::Ack {
                        boot_id: 1,
                        up_to_seq: 0
                    }
                )
            ]
        );
    }

    #[test]
    fn traffic_and_status_mapping() {
        let mut d = decoder();
        let traffic = Payload::Traffic(TrafficLane {
            lane: 2,
            direction: Direction::Southbound,
            count: 14,
            heavy_count: 3,
            speed_avg_kmh: None,
            occupancy_pct: 12.5,
        });
        let status = Payload::Status(Status {
            uptime_s: 3600,
            resets: 2,
            sensor_errors: 5,
            ring_depth: 1,
            ring_dropped: 0,
            sample_interval_ms: 60_000,
        });
        let mut bytes = frame(3, 9, 0, 0, traffic);
        bytes.extend(frame(3, 9, 1, 0, status));
        let b = d.push(&bytes, NOW);
        assert_eq!(b.readings.len(), 2);
        assert_eq!(
            b.readings[0],
            Reading::new("traffic", NOW)
                .tag("district", "d1")
                .tag("node_id", "3")
                .tag("lane", "2")
                .tag("direction", "southbound")
                .field("count", FieldValue::Int(14))
                .field("heavy_count", FieldValue::Int(3))
                .field("occupancy", FieldValue::Float(12.5))
        );
        let s = &b.readings[1];
        assert_eq!(s.measurement, "node_status");
        assert_eq!(s.fields["uptime_s"], FieldValue::Int(3600));
        assert_eq!(s.fields["resets"], FieldValue::Int(2));
        assert_eq!(s.fields["sensor_errors"], FieldValue::Int(5));
        assert_eq!(s.fields["boot_id"], FieldValue::Int(9));
        assert_eq!(s.fields.len(), 7);
    }

    #[test]
    fn gap_counts_lost_and_requests_status_before_ack() {
        let mut d = decoder();
        d.push(&frame(1, 5, 0, 0, env(1.0)), NOW);
        d.push(&frame(1, 5, 1, 0, env(1.0)), NOW);
        let b = d.push(&frame(1, 5, 5, 0, env(1.0)), NOW);
        assert_eq!(d.counters().frames_lost, 3);
        assert_eq!(d.node(1).unwrap().frames_lost, 3);
        assert_eq!(
            replies(&b.replies),
            vec![
                (1, Command::RequestStatus),
                (
                    1,
                    Command::Ack {
                        boot_id: 5,
                        up_to_seq: 5
                    }
                )
            ]
        );
        // the node resends 2 and 3 (4 is gone for good) and 5 again
        let mut resend = frame(1, 5, 2, 0, env(2.0));
        resend.extend(frame(1, 5, 3, 0, env(3.0)));
        resend.extend(frame(1, 5, 5, 0, env(1.0)));
        let b = d.push(&resend, NOW + 1);
        assert_eq!(b.readings.len(), 2);
        let c = d.counters();
        assert_eq!((c.frames_lost, c.frames_recovered, c.duplicates), (3, 2, 1));
        // no new gap: only an ack
        assert_eq!(
            replies(&b.replies),
            vec![(
                1,
                Command::Ack {
                    boot_id: 5,
                    up_to_seq: 5
                }
            )]
        );
    }

    #[test]
    fn duplicate_is_dropped_and_counted() {
        let mut d = decoder();
        let f = frame(1, 5, 0, 0, env(1.0));
        assert_eq!(d.push(&f, NOW).readings.len(), 1);
        let b = d.push(&f, NOW + 1);
        assert!(b.readings.is_empty());
        assert_eq!(d.counters().duplicates, 1);
        assert_eq!(d.counters().readings, 1);
    }

    #[test]
    fn reboot_detected_by_boot_id() {
        let mut d = decoder();
        for seq in 0..10 {
            d.push(&frame(1, 5, seq, 0, env(1.0)), NOW);
        }
        let b = d.push(&frame(1, 6, 0, 0, env(1.0)), NOW);
        assert_eq!(b.readings.len(), 1);
        let c = d.counters();
        assert_eq!((c.reboots, c.frames_lost), (1, 0));
        assert_eq!(d.node(1).unwrap().boot_id, 6);
        // a reboot whose first frames were lost
        let b = d.push(&frame(1, 7, 2, 0, env(1.0)), NOW);
        assert_eq!(b.readings.len(), 1);
        assert_eq!((d.counters().reboots, d.counters().frames_lost), (2, 2));
        assert_eq!(replies(&b.replies)[0], (1, Command::RequestStatus));
    }

    #[test]
    fn late_reading_is_back_dated_by_uptime() {
        let mut d = decoder();
        d.push(&frame(1, 5, 0, 10_000, env(1.0)), NOW);
        d.push(&frame(1, 5, 2, 30_000, env(1.0)), NOW + 20_000_000_000);
        let b = d.push(&frame(1, 5, 1, 20_000, env(1.0)), NOW + 25_000_000_000);
        assert_eq!(b.readings[0].timestamp_ns, NOW + 10_000_000_000);
    }

    #[test]
    fn backfill_before_first_contact_is_not_recovered() {
        let mut d = decoder();
        d.push(&frame(1, 5, 50, 0, env(1.0)), NOW);
        let b = d.push(&frame(1, 5, 40, 0, env(1.0)), NOW);
        assert_eq!(b.readings.len(), 1);
        let c = d.counters();
        assert_eq!(
            (c.frames_lost, c.frames_recovered, c.frames_backfilled),
            (0, 0, 1)
        );
        let b = d.push(&frame(1, 5, 500, 0, env(1.0)), NOW);
        assert_eq!(b.readings.len(), 1);
        let b = d.push(&frame(1, 5, 300, 0, env(1.0)), NOW);
        assert!(b.readings.is_empty());
        assert_eq!(d.counters().stale, 1);
    }

    #[test]
    fn garbage_and_bad_frames_are_errors_then_resync() {
        let mut d = decoder();
        let mut bytes = vec![0x12, 0x34, 0x00];
        let mut bad = frame(1, 5, 0, 0, env(1.0));
        bad[3] ^= 0x40;
        bytes.extend(bad);
        bytes.extend(frame(1, 5, 1, 0, env(1.0)));
        let b = d.push(&bytes, NOW);
        assert_eq!(b.readings.len(), 1);
        assert_eq!(b.errors.len(), 2);
        assert_eq!(d.counters().decode_errors, 2);
    }

    #[test]
    fn frame_split_across_chunks() {
        let mut d = decoder();
        let f = frame(1, 5, 0, 0, env(1.0));
        let (a, b) = f.split_at(5);
        assert!(d.push(a, NOW).readings.is_empty());
        assert_eq!(d.push(b, NOW).readings.len(), 1);
    }

    #[test]
    fn empty_environment_is_an_error_not_a_reading() {
        let mut d = decoder();
        let b = d.push(
            &frame(4, 1, 0, 0, Payload::Environment(Environment::default())),
            NOW,
        );
        assert!(b.readings.is_empty());
        assert_eq!(b.errors, vec![NodeError::NoValues { node_id: 4 }]);
        assert_eq!(b.errors[0].label(), "no_values");
    }

    #[test]
    fn command_acks_and_echo_are_counted_not_read() {
        let mut d = decoder();
        let mut bytes = frame(
            1,
            5,
            0,
            0,
            Payload::CommandAck(CommandAck {
                command_id: 0,
                ok: true,
            }),
        );
        bytes.extend(frame(
            1,
            0xAAAA,
            0,
            0,
            Payload::Command(Command::RequestStatus),
        ));
        let b = d.push(&bytes, NOW);
        assert!(b.readings.is_empty() && b.replies.is_empty());
        assert_eq!(d.counters().command_acks, 1);
        assert_eq!(d.counters().commands_heard, 1);
    }

    #[test]
    fn gateway_commands_carry_increasing_ids() {
        let mut d = decoder();
        let (id0, bytes0) = d.command(9, Command::Identify { blink_s: 3 }, NOW);
        let (id1, _) = d.command(9, Command::RequestStatus, NOW);
        assert_eq!((id0, id1), (0, 1));
        assert_eq!(
            replies(&bytes0),
            vec![(9, Command::Identify { blink_s: 3 })]
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                0..8,
            )
        ) {
            let mut d = decoder();
            for c in chunks {
                let b = d.push(&c, NOW);
                for r in &b.readings {
                    proptest::prop_assert_eq!(r.validate(), Ok(()));
                }
            }
        }

        #[test]
        fn valid_frames_after_garbage_are_read(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            seq in 0u32..1000,
        ) {
            let mut d = decoder();
            let mut bytes = garbage;
            bytes.push(0);
            bytes.extend(frame(11, 3, seq, 0, env(4.5)));
            let b = d.push(&bytes, NOW);
            proptest::prop_assert_eq!(b.readings.last().map(|r| r.tags["node_id"].as_str()), Some("11"));
        }
    }

    #[test]
    fn node_id_tag_wins_over_configured() {
        let mut d = decoder();
        let b = d.push(&frame(77, 1, 0, 0, env(1.0)), NOW);
        assert_eq!(b.readings[0].tags["node_id"], "77");
    }
}

/// The real firmware application (`ioc-node`, run by `ioc-node-sim`) talking to this decoder:
/// acks flow back, a forced gap and a reboot show up in the counters, nothing is duplicated.
#[cfg(test)]
mod with_firmware {
    use super::*;
    use ioc_node_sim::SimNode;

    #[test]
    fn simulated_node_gap_and_reboot() {
        let mut node = SimNode::new(21, 5);
        let mut dec = NodeDecoder::new(BTreeMap::new(), 7);
        let mut readings = 0usize;
        let mut t = 0u64;
        let mut run = |node: &mut SimNode, dec: &mut NodeDecoder, until: u64, t: &mut u64| {
            while *t <= until {
                let out = node.step(*t);
                let b = dec.push(&out, 1_700_000_000_000_000_000 + (*t as i64) * 1_000_000);
                assert!(b.errors.is_empty(), "{:?}", b.errors);
                readings += b.readings.len();
                node.feed(&b.replies);
                *t += 1000;
            }
        };
        run(&mut node, &mut dec, 60_000, &mut t);
        assert!(node.step(t).is_empty());
        assert_eq!(node.health().ring_depth, 0, "every reading acked");
        node.force_gap(3);
        run(&mut node, &mut dec, 120_000, &mut t);
        let boot1_seqs = node.health().next_seq;
        node.reboot();
        run(&mut node, &mut dec, 180_000, &mut t);
        let c = dec.counters();
        assert_eq!(c.frames_lost, 3);
        assert_eq!(c.frames_recovered, 0, "a forced gap cannot be resent");
        assert_eq!(c.reboots, 1);
        assert_eq!(c.decode_errors, 0);
        assert_eq!(dec.node(21).map(|n| n.boot_id), Some(node.boot_id()));
        // every reading the firmware produced arrived exactly once
        assert_eq!(readings as u32, boot1_seqs - 3 + node.health().next_seq);
    }
}
