//! Sensor-node frames (the `ioc_wire` format spoken by the `ioc-node` firmware) to readings, and
//! the acknowledgements that let a node forget them, in two phases.
//!
//! Exists to turn the byte stream of a `protocol = "node"` serial port into [`Reading`]s and the
//! bytes to send back, with no I/O of its own (the serial input owns the port, the clock and the
//! buffer):
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
//! # Two phases: nothing is acknowledged before it is durable
//!
//! The firmware keeps every reading in a ring until an `Ack { boot_id, up_to_seq }` covers it,
//! and an ack is cumulative: it releases every sequence number up to `up_to_seq`. So the ack is
//! the gateway's promise that all of them are on disk, and it is split from decoding:
//!
//! 1. [`NodeDecoder::push`] decodes a chunk into a [`NodeBatch`]: the readings plus a [`Pending`]
//!    naming the `(node, boot, seq)` they cover. It writes nothing and marks nothing as
//!    durable; it only does the bookkeeping of the line (boot ids, the highest sequence number
//!    heard, gaps counted as `frames_lost`, reboots, duplicates of what is already durable).
//! 2. Once the buffer has the readings, [`NodeDecoder::confirm`] marks the pending sequence
//!    numbers durable and returns the bytes to write: per node heard, an `Ack` up to the last
//!    sequence number before which *everything* is durable (or known to be gone), followed by a
//!    `RequestStatus` when something below is still missing. If the commit fails, the caller
//!    simply drops the `Pending`: nothing is acked, the node keeps those readings, and when
//!    they come again they are accepted (counted as `redelivered`, not as duplicates).
//!
//! Per node the decoder keeps a [`SEQ_WINDOW`]-frame window behind the highest sequence number
//! heard: which ones are durable, which were received, which are missing (a gap on the line),
//! which are gone for good. A sequence number is *settled* when it is durable or gone; the ack
//! never passes an unsettled one. Missing and refused readings are asked for with
//! `RequestStatus`, to which the firmware answers `CommandAck` (its header carrying the next
//! sequence number `S` it will use), then every reading still in its ring, then a new `Status`
//! with sequence number `S`. When a frame with `seq >= S` arrives, the resend run is complete:
//! whatever below `S` did not come in it is not in the node's ring any more and is marked gone
//! (counted in `frames_lost` if it had been received but never made durable), so the ack can
//! pass it. A node heard for the first time at `seq > 0` may hold older readings nobody has
//! seen: it gets no ack at all before its first resend run has completed.
//!
//! The window must be at least as long as the node's ring (the firmware simulator's holds 64);
//! a sequence number that falls out of the window unsettled is no longer waited for (counted
//! in `frames_lost` if it had been received). A node's
//! sequence number is not expected to wrap within one boot (2^32 frames).
//!
//! One [`Pending`] at a time per decoder is the intended use (push, commit, confirm or drop,
//! then the next push): a second push before the first is resolved does not know the first's
//! readings are on their way, so a copy of one of them would be accepted again.
//!
//! Sensor nodes have no wall clock: the caller passes `now_ns` (Unix ns) for each chunk. A
//! reading that arrives late (resent) is back-dated with the node's uptime relative to the
//! latest in-order frame, so it does not overwrite the newest point of its series.

use std::collections::BTreeMap;

use ioc_wire::{
    encode_frame, Command, Frame, FrameDecoder, Header, Payload, WireError, MAX_ENCODED_LEN,
};

use ioc_model::{FieldValue, InvalidReading, Reading};

/// Sequence numbers remembered behind the highest one, per node.
pub const SEQ_WINDOW: u32 = 128;

/// A `RequestStatus` whose resend run has not completed after this long is sent again.
pub const RESEND_TIMEOUT_NS: i64 = 5_000_000_000;

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
    /// Readings produced (a redelivered reading counts again).
    pub readings: u64,
    /// Sequence numbers skipped (never received in order), plus received ones that never
    /// became durable and that the node no longer holds.
    pub frames_lost: u64,
    /// Skipped sequence numbers that arrived later (resent by the node).
    pub frames_recovered: u64,
    /// Resent readings from before the gateway first heard a node's boot.
    pub frames_backfilled: u64,
    /// Readings received again after an earlier copy was not confirmed durable (accepted).
    pub redelivered: u64,
    /// Readings received again after they were confirmed durable, or twice in one chunk
    /// (dropped).
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

/// A `RequestStatus` sent to a node whose resend run has not completed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resend {
    command_id: u32,
    sent_ns: i64,
    /// The node's next sequence number when it answered (from its `CommandAck`): the run is
    /// complete once a frame with this sequence number or a later one arrives.
    until: Option<u32>,
}

/// What the decoder knows about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub boot_id: u32,
    /// Highest sequence number heard in this boot (durable or not).
    pub highest_seq: u32,
    /// Readings (not counting duplicates; a redelivery counts again) from this node.
    pub readings: u64,
    pub frames_lost: u64,
    pub duplicates: u64,
    pub reboots: u64,
    // Windows: bit `i` is about `highest_seq - i`.
    /// Confirmed durable.
    durable: u128,
    /// Received at least once (durable or not).
    received: u128,
    /// In a gap: never received, counted lost, asked for.
    missing: u128,
    /// Gone for good (not in the node's ring, or before sequence number 0): not waited for.
    gone: u128,
    /// Received during the current resend run (after its `CommandAck`).
    run_seen: u128,
    /// Whether every sequence number below the window is settled (false for a node first heard
    /// at `seq > 0` until its first resend run completes: it may hold older readings).
    synced: bool,
    resend: Option<Resend>,
    /// Lowest sequence number of this boot whose absence counts as lost.
    base_seq: u32,
    /// Unix ns at which the node's uptime was 0 (from the latest in-order frame).
    boot_epoch_ns: i64,
}

/// Bit for the sequence number `back` behind the highest (0 when outside the window).
fn bit(back: u32) -> u128 {
    if back < SEQ_WINDOW {
        1u128 << back
    } else {
        0
    }
}

/// Bits `from..=to` (clamped to the window).
fn bits(from: u32, to: u32) -> u128 {
    (from..=to.min(SEQ_WINDOW - 1)).fold(0, |acc, b| acc | bit(b))
}

/// Bits for sequence numbers below 0 when the highest is `highest` (they do not exist).
fn before_zero(highest: u32) -> u128 {
    if highest >= SEQ_WINDOW - 1 {
        0
    } else {
        u128::MAX << (highest + 1)
    }
}

impl NodeState {
    fn new_boot(boot_id: u32, seq: u32, synced: bool, epoch_ns: i64) -> Self {
        NodeState {
            boot_id,
            highest_seq: seq,
            readings: 0,
            frames_lost: 0,
            duplicates: 0,
            reboots: 0,
            durable: 0,
            received: 0,
            missing: 0,
            gone: before_zero(seq),
            run_seen: 0,
            synced,
            resend: None,
            base_seq: seq,
            boot_epoch_ns: epoch_ns,
        }
    }

    /// Moves the window up by `n`; returns how many received but never durable sequence
    /// numbers fell out of it (lost: no longer waited for).
    fn shift(&mut self, n: u32) -> u64 {
        let kept = if n >= SEQ_WINDOW { 0 } else { u128::MAX >> n };
        let lost =
            u64::from((self.unsettled() & self.received & !self.missing & !kept).count_ones());
        self.frames_lost += lost;
        for w in [
            &mut self.durable,
            &mut self.received,
            &mut self.missing,
            &mut self.gone,
            &mut self.run_seen,
        ] {
            *w = w.checked_shl(n).unwrap_or(0);
        }
        lost
    }

    fn unsettled(&self) -> u128 {
        !(self.durable | self.gone)
    }

    /// The highest sequence number the node may forget: every one up to it is durable or gone.
    /// `None` while nothing may be acked.
    pub fn ack_point(&self) -> Option<u32> {
        if !self.synced {
            return None;
        }
        let unsettled = self.unsettled();
        if unsettled == 0 {
            return Some(self.highest_seq);
        }
        // the oldest unsettled sequence number; the ack stops just before it
        let oldest_back = 127 - unsettled.leading_zeros();
        let oldest = self.highest_seq.wrapping_sub(oldest_back);
        oldest.checked_sub(1)
    }

    /// Whether some sequence number in the window still has to come from the node.
    fn wants_resend(&self) -> bool {
        !self.synced || self.unsettled() != 0
    }

    /// A reading frame with `seq` arrived: completes the resend run if it was the last of it.
    fn maybe_complete_run(&mut self, seq: u32) -> u64 {
        let Some(Resend {
            until: Some(until), ..
        }) = self.resend
        else {
            return 0;
        };
        if (seq.wrapping_sub(until) as i32) < 0 {
            return 0;
        }
        // every sequence number below `until` that did not come in the run is not in the ring
        let above = self.highest_seq.wrapping_sub(until);
        let below_until = if above >= SEQ_WINDOW - 1 {
            0
        } else {
            u128::MAX << (above + 1)
        };
        let give_up = below_until & self.unsettled() & !self.run_seen;
        let lost = u64::from((give_up & self.received & !self.missing).count_ones());
        self.gone |= give_up;
        self.missing &= !give_up;
        self.synced = true;
        self.resend = None;
        self.run_seen = 0;
        self.frames_lost += lost;
        lost
    }
}

/// One sequence number a batch's readings cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PendingSeq {
    pub node_id: u32,
    pub boot_id: u32,
    pub seq: u32,
}

/// What a [`NodeBatch`] covers, to hand to [`NodeDecoder::confirm`] once its readings are
/// durable, or to drop if they could not be made so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "confirm it once the readings are durable, so the node gets its ack"]
pub struct Pending {
    seqs: Vec<PendingSeq>,
    /// Nodes heard in the batch (with a reading frame, new or not): each gets an ack.
    nodes: Vec<u32>,
}

impl Pending {
    /// Whether there is nothing to confirm nor anyone to answer.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.nodes.is_empty()
    }

    /// The sequence numbers covered, in arrival order.
    pub fn seqs(&self) -> &[PendingSeq] {
        &self.seqs
    }

    fn contains(&self, s: PendingSeq) -> bool {
        self.seqs.contains(&s)
    }

    fn heard(&mut self, node_id: u32) {
        if !self.nodes.contains(&node_id) {
            self.nodes.push(node_id);
        }
    }

    /// Adds `other` (a later batch) to this one.
    pub fn merge(&mut self, other: Pending) {
        for s in other.seqs {
            if !self.contains(s) {
                self.seqs.push(s);
            }
        }
        for n in other.nodes {
            self.heard(n);
        }
    }
}

/// The result of one chunk of bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeBatch {
    pub readings: Vec<Reading>,
    /// What the readings cover: [`NodeDecoder::confirm`] it once they are durable.
    pub pending: Pending,
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

    /// Phase 1: decode `bytes` received at `now_ns` (Unix ns). Nothing is marked durable and
    /// nothing is to be written yet: commit the readings, then [`confirm`](Self::confirm) the
    /// batch's `pending` (or drop it if the commit failed).
    pub fn push(&mut self, bytes: &[u8], now_ns: i64) -> NodeBatch {
        self.started_ns.get_or_insert(now_ns);
        let mut batch = NodeBatch::default();
        for &byte in bytes {
            match self.frames.push(byte) {
                None => {}
                Some(Err(e)) => {
                    self.counters.decode_errors += 1;
                    batch.errors.push(NodeError::Wire(e));
                }
                Some(Ok(frame)) => {
                    self.counters.frames += 1;
                    self.handle(&frame, now_ns, &mut batch);
                }
            }
        }
        batch
    }

    /// Phase 2: the readings of `pending`'s batch are durable. Marks them so and returns the
    /// bytes to write to the port: per node heard, an `Ack` up to the last sequence number
    /// before which everything is settled, then a `RequestStatus` if something below is still
    /// missing (at most one outstanding per node, repeated after [`RESEND_TIMEOUT_NS`]).
    pub fn confirm(&mut self, pending: Pending, now_ns: i64) -> Vec<u8> {
        for s in &pending.seqs {
            let Some(state) = self.nodes.get_mut(&s.node_id) else {
                continue;
            };
            if state.boot_id != s.boot_id {
                continue; // the node rebooted since: its old boot's ring is gone anyway
            }
            let back = state.highest_seq.wrapping_sub(s.seq);
            state.durable |= bit(back);
        }
        let mut out = Vec::new();
        for node_id in pending.nodes {
            let Some(state) = self.nodes.get(&node_id).copied() else {
                continue;
            };
            if let Some(up_to_seq) = state.ack_point() {
                let ack = Command::Ack {
                    boot_id: state.boot_id,
                    up_to_seq,
                };
                self.command_into(node_id, ack, now_ns, &mut out);
            }
            let due = state
                .resend
                .is_none_or(|r| now_ns.saturating_sub(r.sent_ns) >= RESEND_TIMEOUT_NS);
            if state.wants_resend() && due {
                let command_id = self.next_command_id;
                self.command_into(node_id, Command::RequestStatus, now_ns, &mut out);
                if let Some(state) = self.nodes.get_mut(&node_id) {
                    state.resend = Some(Resend {
                        command_id,
                        sent_ns: now_ns,
                        until: None,
                    });
                    state.run_seen = 0;
                }
            }
        }
        out
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

    fn handle(&mut self, frame: &Frame, now_ns: i64, batch: &mut NodeBatch) {
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
                // the answer to our RequestStatus: the resend run follows, up to `h.seq`
                if let Some(state) = self.nodes.get_mut(&h.node_id) {
                    if state.boot_id == h.boot_id {
                        if let Some(r) = state.resend.as_mut() {
                            if r.command_id == ack.command_id && r.until.is_none() {
                                r.until = Some(h.seq);
                                state.run_seen = 0;
                            }
                        }
                    }
                }
                return;
            }
            Payload::Environment(_) | Payload::Traffic(_) | Payload::Status(_) => {}
        }
        batch.pending.heard(h.node_id);
        let uptime_ns = i64::try_from(h.uptime_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        let this = PendingSeq {
            node_id: h.node_id,
            boot_id: h.boot_id,
            seq: h.seq,
        };
        let epoch = now_ns.saturating_sub(uptime_ns);
        let verdict = match self.nodes.get_mut(&h.node_id) {
            None => {
                // first contact: a node heard at seq > 0 may hold older readings
                self.nodes.insert(
                    h.node_id,
                    NodeState::new_boot(h.boot_id, h.seq, h.seq == 0, epoch),
                );
                Verdict::New
            }
            Some(state) if state.boot_id != h.boot_id => {
                // new boot: seq restarts at 0, so anything before this seq was lost
                self.counters.reboots += 1;
                let lost = u64::from(h.seq);
                self.counters.frames_lost += lost;
                let fresh = NodeState {
                    reboots: state.reboots + 1,
                    frames_lost: state.frames_lost + lost,
                    readings: state.readings,
                    duplicates: state.duplicates,
                    missing: if h.seq > 0 { bits(1, h.seq) } else { 0 },
                    base_seq: 0,
                    ..NodeState::new_boot(h.boot_id, h.seq, true, epoch)
                };
                *state = fresh;
                Verdict::New
            }
            Some(state) => {
                let ahead = h.seq.wrapping_sub(state.highest_seq) as i32;
                if ahead > 0 {
                    let ahead = ahead.unsigned_abs();
                    let missed = ahead - 1;
                    if missed > 0 {
                        self.counters.frames_lost += u64::from(missed);
                        state.frames_lost += u64::from(missed);
                    }
                    self.counters.frames_lost += state.shift(ahead);
                    if missed > 0 {
                        state.missing |= bits(1, missed);
                    }
                    state.highest_seq = h.seq;
                    state.boot_epoch_ns = epoch;
                    Verdict::New
                } else {
                    let back = ahead.unsigned_abs();
                    let b = bit(back);
                    if back >= SEQ_WINDOW {
                        self.counters.stale += 1;
                        Verdict::Drop
                    } else if state.durable & b != 0 || batch.pending.contains(this) {
                        self.counters.duplicates += 1;
                        state.duplicates += 1;
                        Verdict::Drop
                    } else if state.received & b != 0 {
                        self.counters.redelivered += 1;
                        Verdict::Late
                    } else if state.missing & b != 0 {
                        state.missing &= !b;
                        self.counters.frames_recovered += 1;
                        Verdict::Late
                    } else if (h.seq.wrapping_sub(state.base_seq) as i32) < 0 {
                        self.counters.frames_backfilled += 1;
                        Verdict::Late
                    } else {
                        // given up earlier (a resend run that lost it), yet here it is
                        state.gone &= !b;
                        self.counters.frames_recovered += 1;
                        Verdict::Late
                    }
                }
            }
        };
        let Some(state) = self.nodes.get_mut(&h.node_id) else {
            return;
        };
        let back = state.highest_seq.wrapping_sub(h.seq);
        if state.resend.is_some_and(|r| r.until.is_some()) {
            state.run_seen |= bit(back);
        }
        let lost = state.maybe_complete_run(h.seq);
        self.counters.frames_lost += lost;
        let timestamp_ns = match verdict {
            Verdict::Drop => return,
            Verdict::New => now_ns,
            Verdict::Late => state.boot_epoch_ns.saturating_add(uptime_ns).min(now_ns),
        };
        state.received |= bit(back);
        state.gone &= !bit(back);
        state.readings += 1;
        batch.pending.seqs.push(this);
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

    /// The node's answer to RequestStatus `command_id`: its header carries `next_seq`.
    fn command_ack(node_id: u32, boot_id: u32, next_seq: u32, command_id: u32) -> Vec<u8> {
        frame(
            node_id,
            boot_id,
            next_seq,
            0,
            Payload::CommandAck(CommandAck {
                command_id,
                ok: true,
            }),
        )
    }

    fn decoder() -> NodeDecoder {
        let tags = BTreeMap::from([
            ("district".to_owned(), "d1".to_owned()),
            ("node_id".to_owned(), "configured".to_owned()),
        ]);
        NodeDecoder::new(tags, 0xAAAA)
    }

    /// Commands in `bytes`: (node id, command id, command).
    fn commands(bytes: &[u8]) -> Vec<(u32, u32, Command)> {
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        dec.push_slice(bytes, |r| {
            let f = r.unwrap();
            match f.payload {
                Payload::Command(c) => out.push((f.header.node_id, f.header.seq, c)),
                other => panic!("reply is not a command: {other:?}"),
            }
        });
        out
    }

    fn replies(bytes: &[u8]) -> Vec<(u32, Command)> {
        commands(bytes)
            .into_iter()
            .map(|(n, _, c)| (n, c))
            .collect()
    }

    fn ack(node: u32, boot_id: u32, up_to_seq: u32) -> (u32, Command) {
        (node, Command::Ack { boot_id, up_to_seq })
    }

    /// Push and confirm (a commit that worked); returns the batch and the replies.
    fn durable(d: &mut NodeDecoder, bytes: &[u8], now: i64) -> (Vec<Reading>, Vec<u8>) {
        let b = d.push(bytes, now);
        assert_eq!(b.errors, vec![]);
        let replies = d.confirm(b.pending, now);
        (b.readings, replies)
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
        assert_eq!(
            b.pending.seqs(),
            &[PendingSeq {
                node_id: 7,
                boot_id: 1,
                seq: 0
            }]
        );
        // nothing durable yet: nothing may be acked
        assert_eq!(d.node(7).unwrap().ack_point(), None);
        // seq 0 is the first of a boot: nothing older to ask for, just the ack
        assert_eq!(replies(&d.confirm(b.pending, NOW)), vec![ack(7, 1, 0)]);
        assert_eq!(d.node(7).unwrap().ack_point(), Some(0));
    }

    #[test]
    fn failed_commit_then_resend_is_accepted_not_a_duplicate() {
        let mut d = decoder();
        let mut bytes = Vec::new();
        for seq in 0..3 {
            bytes.extend(frame(1, 5, seq, u64::from(seq) * 1000, env(seq as f32)));
        }
        let (r, out) = durable(&mut d, &bytes, NOW);
        assert_eq!(r.len(), 3);
        assert_eq!(replies(&out), vec![ack(1, 5, 2)]);
        // seq 3 and 4: the buffer refuses them, the pending is dropped, nothing written
        let mut refused = frame(1, 5, 3, 3000, env(3.0));
        refused.extend(frame(1, 5, 4, 4000, env(4.0)));
        let b = d.push(&refused, NOW + 4_000_000_000);
        assert_eq!(b.readings.len(), 2);
        drop(b.pending);
        assert_eq!(d.node(1).unwrap().ack_point(), Some(2));
        // seq 5 is committed: the ack stops before 3, and the node is asked to resend
        let (r, out) = durable(&mut d, &frame(1, 5, 5, 5000, env(5.0)), NOW + 5_000_000_000);
        assert_eq!(r.len(), 1);
        let cmds = commands(&out);
        assert_eq!(
            cmds.iter().map(|(n, _, c)| (*n, *c)).collect::<Vec<_>>(),
            vec![ack(1, 5, 2), (1, Command::RequestStatus)]
        );
        let request = cmds[1].1;
        // the firmware answers: CommandAck (next seq 6), its ring (3, 4, 5), a new Status 6
        let mut run = command_ack(1, 5, 6, request);
        run.extend(frame(1, 5, 3, 3000, env(3.0)));
        run.extend(frame(1, 5, 4, 4000, env(4.0)));
        run.extend(frame(1, 5, 5, 5000, env(5.0)));
        run.extend(frame(1, 5, 6, 6000, env(6.0)));
        let (r, out) = durable(&mut d, &run, NOW + 6_000_000_000);
        let temps: Vec<&FieldValue> = r.iter().map(|r| &r.fields["temperature_c"]).collect();
        assert_eq!(
            temps,
            vec![
                &FieldValue::Float(3.0),
                &FieldValue::Float(4.0),
                &FieldValue::Float(6.0)
            ]
        );
        // the resent 3 and 4 keep (about) their original time: back-dated by uptime
        assert_eq!(r[0].timestamp_ns, NOW + 3_000_000_000);
        assert_eq!(replies(&out), vec![ack(1, 5, 6)]);
        let c = d.counters();
        assert_eq!(
            (
                c.redelivered,
                c.duplicates,
                c.frames_lost,
                c.frames_recovered
            ),
            (2, 1, 0, 0)
        );
        assert_eq!(c.readings, 3 + 2 + 1 + 3);
    }

    #[test]
    fn confirmed_then_resend_is_a_duplicate() {
        let mut d = decoder();
        let f = frame(1, 5, 0, 0, env(1.0));
        let (r, _) = durable(&mut d, &f, NOW);
        assert_eq!(r.len(), 1);
        let b = d.push(&f, NOW + 1);
        assert!(b.readings.is_empty());
        assert!(b.pending.seqs().is_empty());
        assert_eq!(d.counters().duplicates, 1);
        assert_eq!(d.counters().redelivered, 0);
        assert_eq!(d.counters().readings, 1);
        // the node is still answered (the ack it may have missed)
        assert_eq!(replies(&d.confirm(b.pending, NOW + 1)), vec![ack(1, 5, 0)]);
    }

    #[test]
    fn twice_in_one_chunk_is_a_duplicate_even_unconfirmed() {
        let mut d = decoder();
        let mut bytes = frame(1, 5, 0, 0, env(1.0));
        bytes.extend(frame(1, 5, 1, 0, env(1.0)));
        bytes.extend(frame(1, 5, 0, 0, env(1.0)));
        let b = d.push(&bytes, NOW);
        assert_eq!(b.readings.len(), 2);
        assert_eq!(b.pending.seqs().len(), 2);
        assert_eq!(d.counters().duplicates, 1);
    }

    #[test]
    fn ack_covers_exactly_the_confirmed_sequence_numbers() {
        let mut d = decoder();
        let batches: Vec<Pending> = (0..6)
            .map(|seq| d.push(&frame(1, 5, seq, 0, env(1.0)), NOW).pending)
            .collect();
        let mut it = batches.into_iter();
        let (p0, p1, p2, p3, p4, p5) = (
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
        );
        // confirmed out of order: the ack only passes a contiguous durable prefix
        let acks = |out: Vec<u8>| -> Vec<u32> {
            replies(&out)
                .into_iter()
                .filter_map(|(_, c)| match c {
                    Command::Ack { up_to_seq, .. } => Some(up_to_seq),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(acks(d.confirm(p1, NOW)), Vec::<u32>::new());
        assert_eq!(acks(d.confirm(p0, NOW)), vec![1]);
        assert_eq!(acks(d.confirm(p3, NOW)), vec![1]);
        drop(p2); // refused
        assert_eq!(acks(d.confirm(p5, NOW)), vec![1]);
        assert_eq!(acks(d.confirm(p4, NOW)), vec![1]);
        assert_eq!(d.node(1).unwrap().ack_point(), Some(1));
        // seq 2 comes again (redelivered) and is confirmed: everything up to 5 is durable
        let b = d.push(&frame(1, 5, 2, 0, env(1.0)), NOW);
        assert_eq!(b.readings.len(), 1);
        assert_eq!(acks(d.confirm(b.pending, NOW)), vec![5]);
        assert_eq!(d.counters().redelivered, 1);
    }

    #[test]
    fn gap_counts_lost_then_resend_run_recovers_and_gives_up_the_rest() {
        let mut d = decoder();
        durable(&mut d, &frame(1, 5, 0, 0, env(1.0)), NOW);
        durable(&mut d, &frame(1, 5, 1, 0, env(1.0)), NOW);
        let (_, out) = durable(&mut d, &frame(1, 5, 5, 0, env(1.0)), NOW);
        assert_eq!(d.counters().frames_lost, 3);
        assert_eq!(d.node(1).unwrap().frames_lost, 3);
        // 2, 3, 4 never arrived: the ack does not pass them, the node is asked to resend
        let cmds = commands(&out);
        assert_eq!(
            cmds.iter().map(|(n, _, c)| (*n, *c)).collect::<Vec<_>>(),
            vec![ack(1, 5, 1), (1, Command::RequestStatus)]
        );
        // the node still holds 2, 3 (4 is gone for good) and 5
        let mut run = command_ack(1, 5, 6, cmds[1].1);
        run.extend(frame(1, 5, 2, 0, env(2.0)));
        run.extend(frame(1, 5, 3, 0, env(3.0)));
        // while the run is incomplete the ack still stops before 4
        let (r, out) = durable(&mut d, &run, NOW + 1);
        assert_eq!(r.len(), 2);
        assert_eq!(replies(&out), vec![ack(1, 5, 3)]);
        let mut rest = frame(1, 5, 5, 0, env(1.0));
        rest.extend(frame(1, 5, 6, 0, env(1.0))); // the Status that ends the run
        let (r, out) = durable(&mut d, &rest, NOW + 2);
        assert_eq!(r.len(), 1);
        assert_eq!(replies(&out), vec![ack(1, 5, 6)]);
        let c = d.counters();
        assert_eq!(
            (
                c.frames_lost,
                c.frames_recovered,
                c.duplicates,
                c.redelivered
            ),
            (3, 2, 1, 0)
        );
    }

    #[test]
    fn a_lost_run_is_requested_again_after_the_timeout_only() {
        let mut d = decoder();
        durable(&mut d, &frame(1, 5, 0, 0, env(1.0)), NOW);
        let (_, out) = durable(&mut d, &frame(1, 5, 2, 0, env(1.0)), NOW);
        assert_eq!(replies(&out)[1], (1, Command::RequestStatus));
        // no answer: the next frames get acks, but no second request before the timeout
        let (_, out) = durable(&mut d, &frame(1, 5, 3, 0, env(1.0)), NOW + 1);
        assert_eq!(replies(&out), vec![ack(1, 5, 0)]);
        let (_, out) = durable(
            &mut d,
            &frame(1, 5, 4, 0, env(1.0)),
            NOW + RESEND_TIMEOUT_NS,
        );
        assert_eq!(
            replies(&out),
            vec![ack(1, 5, 0), (1, Command::RequestStatus)]
        );
    }

    #[test]
    fn first_contact_after_seq_zero_acks_nothing_before_the_resend_run() {
        let mut d = decoder();
        let (r, out) = durable(&mut d, &frame(1, 5, 50, 0, env(1.0)), NOW);
        assert_eq!(r.len(), 1);
        // the node may hold readings from before we heard it: ask, and ack nothing yet
        let cmds = commands(&out);
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].2, Command::RequestStatus);
        let mut run = command_ack(1, 5, 51, cmds[0].1);
        run.extend(frame(1, 5, 40, 0, env(1.0)));
        run.extend(frame(1, 5, 50, 0, env(1.0)));
        let (r, out) = durable(&mut d, &run, NOW);
        assert_eq!(r.len(), 1);
        assert!(out.is_empty(), "{out:?}");
        let (r, out) = durable(&mut d, &frame(1, 5, 51, 0, env(1.0)), NOW);
        assert_eq!(r.len(), 1);
        assert_eq!(replies(&out), vec![ack(1, 5, 51)]);
        let c = d.counters();
        assert_eq!(
            (
                c.frames_lost,
                c.frames_recovered,
                c.frames_backfilled,
                c.duplicates
            ),
            (0, 0, 1, 1)
        );
        // far ahead, then far behind: stale
        durable(&mut d, &frame(1, 5, 500, 0, env(1.0)), NOW);
        let b = d.push(&frame(1, 5, 300, 0, env(1.0)), NOW);
        assert!(b.readings.is_empty());
        assert_eq!(d.counters().stale, 1);
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
    fn reboot_detected_by_boot_id() {
        let mut d = decoder();
        for seq in 0..10 {
            durable(&mut d, &frame(1, 5, seq, 0, env(1.0)), NOW);
        }
        let (r, out) = durable(&mut d, &frame(1, 6, 0, 0, env(1.0)), NOW);
        assert_eq!(r.len(), 1);
        let c = d.counters();
        assert_eq!((c.reboots, c.frames_lost), (1, 0));
        assert_eq!(d.node(1).unwrap().boot_id, 6);
        assert_eq!(replies(&out), vec![ack(1, 6, 0)]);
        // a reboot whose first frames were lost: no ack before them, a request to resend
        let (r, out) = durable(&mut d, &frame(1, 7, 2, 0, env(1.0)), NOW);
        assert_eq!(r.len(), 1);
        assert_eq!((d.counters().reboots, d.counters().frames_lost), (2, 2));
        assert_eq!(replies(&out), vec![(1, Command::RequestStatus)]);
        assert_eq!(d.node(1).unwrap().reboots, 2);
    }

    #[test]
    fn a_reboot_in_a_refused_chunk_is_counted_once() {
        let mut d = decoder();
        durable(&mut d, &frame(1, 5, 0, 0, env(1.0)), NOW);
        let b = d.push(&frame(1, 6, 0, 0, env(1.0)), NOW);
        drop(b.pending);
        let b = d.push(&frame(1, 6, 0, 0, env(1.0)), NOW);
        assert_eq!(b.readings.len(), 1);
        assert_eq!(replies(&d.confirm(b.pending, NOW)), vec![ack(1, 6, 0)]);
        let c = d.counters();
        assert_eq!((c.reboots, c.redelivered, c.duplicates), (1, 1, 0));
    }

    #[test]
    fn late_reading_is_back_dated_by_uptime() {
        let mut d = decoder();
        durable(&mut d, &frame(1, 5, 0, 10_000, env(1.0)), NOW);
        durable(
            &mut d,
            &frame(1, 5, 2, 30_000, env(1.0)),
            NOW + 20_000_000_000,
        );
        let b = d.push(&frame(1, 5, 1, 20_000, env(1.0)), NOW + 25_000_000_000);
        assert_eq!(b.readings[0].timestamp_ns, NOW + 10_000_000_000);
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
    fn empty_environment_is_an_error_not_a_reading_but_is_acked() {
        let mut d = decoder();
        let b = d.push(
            &frame(4, 1, 0, 0, Payload::Environment(Environment::default())),
            NOW,
        );
        assert!(b.readings.is_empty());
        assert_eq!(b.errors, vec![NodeError::NoValues { node_id: 4 }]);
        assert_eq!(b.errors[0].label(), "no_values");
        // nothing to store, so nothing to wait for: the node may forget it
        assert_eq!(replies(&d.confirm(b.pending, NOW)), vec![ack(4, 1, 0)]);
    }

    #[test]
    fn command_acks_and_echo_are_counted_not_read() {
        let mut d = decoder();
        let mut bytes = command_ack(1, 5, 0, 0);
        bytes.extend(frame(
            1,
            0xAAAA,
            0,
            0,
            Payload::Command(Command::RequestStatus),
        ));
        let b = d.push(&bytes, NOW);
        assert!(b.readings.is_empty() && b.pending.is_empty());
        assert!(d.confirm(b.pending, NOW).is_empty());
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
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                 proptest::prelude::any::<bool>()),
                0..8,
            )
        ) {
            let mut d = decoder();
            for (c, ok) in chunks {
                let b = d.push(&c, NOW);
                for r in &b.readings {
                    proptest::prop_assert_eq!(r.validate(), Ok(()));
                }
                if ok {
                    let _ = d.confirm(b.pending, NOW);
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
/// acks flow back, a forced gap and a reboot show up in the counters, nothing is duplicated,
/// and with commits that fail now and then no ack ever covers a reading that is not durable.
#[cfg(test)]
mod with_firmware {
    use super::*;
    use ioc_node_sim::SimNode;
    use std::collections::BTreeSet;

    const T0: i64 = 1_700_000_000_000_000_000;

    #[test]
    fn simulated_node_gap_and_reboot() {
        let mut node = SimNode::new(21, 5);
        let mut dec = NodeDecoder::new(BTreeMap::new(), 7);
        let mut readings = 0usize;
        let mut t = 0u64;
        let mut run = |node: &mut SimNode, dec: &mut NodeDecoder, until: u64, t: &mut u64| {
            while *t <= until {
                let out = node.step(*t);
                let now = T0 + (*t as i64) * 1_000_000;
                let b = dec.push(&out, now);
                assert!(b.errors.is_empty(), "{:?}", b.errors);
                readings += b.readings.len();
                node.feed(&dec.confirm(b.pending, now));
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
        assert_eq!(c.redelivered, 0);
        assert_eq!(dec.node(21).map(|n| n.boot_id), Some(node.boot_id()));
        // let the node take the last ack (same time: nothing new is due)
        assert!(node.step(t - 1000).is_empty());
        assert_eq!(
            node.health().ring_depth,
            0,
            "the gap did not stall the acks"
        );
        // every reading the firmware produced arrived exactly once
        assert_eq!(readings as u32, boot1_seqs - 3 + node.health().next_seq);
    }

    /// What [`run_with_refusals`] saw.
    struct Outcome {
        /// The firmware's `ring_dropped`, `ring_depth` and `next_seq` at the end.
        ring_dropped: u32,
        ring_depth: u16,
        next_seq: u32,
        boot_id: u32,
        durable: BTreeSet<(u32, u32)>,
        stored: usize,
        produced: u64,
        refused_chunks: u32,
        acks: u32,
        counters: NodeCounters,
    }

    /// Runs a node (1 s samples, 5 s status: about 3.2 readings per second) for 150 s while
    /// commits fail for all of `[20 s, 20 s + outage_ms)`, for `[70 s, 71 s)` and for every 7th
    /// chunk otherwise, then 50 s with working commits. At every ack the node receives, checks
    /// that each reading it still holds and the ack releases is durable, and that no reading is
    /// stored twice.
    fn run_with_refusals(outage_ms: u64) -> Outcome {
        let mut config = ioc_node_sim::SimNodeConfig::new(4, 9);
        config.sample_interval_ms = 1000;
        config.status_interval_ms = 5000;
        let mut node = SimNode::with_config(config);
        let mut dec = NodeDecoder::new(BTreeMap::new(), 7);
        let mut durable: BTreeSet<(u32, u32)> = BTreeSet::new();
        let (mut stored, mut produced, mut acks, mut refused_chunks) = (0usize, 0u64, 0u32, 0u32);
        let refuses = |t: u64, i: u64| {
            t < 150_000
                && ((20_000..20_000 + outage_ms).contains(&t)
                    || (70_000..71_000).contains(&t)
                    || i % 7 == 3)
        };
        let mut t = 0u64;
        let mut i = 0u64;
        while t <= 200_000 {
            let out = node.step(t);
            let now = T0 + (t as i64) * 1_000_000;
            let b = dec.push(&out, now);
            assert!(b.errors.is_empty(), "{:?}", b.errors);
            produced += b.readings.len() as u64;
            if !b.readings.is_empty() && refuses(t, i) {
                refused_chunks += 1;
                drop(b.pending);
            } else {
                for s in b.pending.seqs() {
                    assert!(durable.insert((s.boot_id, s.seq)), "stored twice: {s:?}");
                }
                stored += b.readings.len();
                let replies = dec.confirm(b.pending, now);
                let mut fd = FrameDecoder::new();
                fd.push_slice(&replies, |f| {
                    if let Ok(Frame {
                        payload: Payload::Command(Command::Ack { boot_id, up_to_seq }),
                        ..
                    }) = f
                    {
                        acks += 1;
                        for held in node.app().unacked() {
                            let h = held.header;
                            if h.boot_id == boot_id && h.seq <= up_to_seq {
                                assert!(
                                    durable.contains(&(h.boot_id, h.seq)),
                                    "ack up to {up_to_seq} releases seq {} which is not durable",
                                    h.seq
                                );
                            }
                        }
                    }
                });
                node.feed(&replies);
            }
            t += 1000;
            i += 1;
        }
        // let the node take the last ack (same time: nothing new is due)
        assert!(node.step(t - 1000).is_empty());
        Outcome {
            ring_dropped: node.health().ring_dropped,
            ring_depth: node.health().ring_depth,
            next_seq: node.health().next_seq,
            boot_id: node.boot_id(),
            durable,
            stored,
            produced,
            refused_chunks,
            acks,
            counters: dec.counters(),
        }
    }

    /// Outages shorter than the node's ring: every reading ends up durable exactly once.
    #[test]
    fn refused_commits_are_resent_and_acks_never_run_ahead_of_durability() {
        let o = run_with_refusals(15_000);
        assert!(o.refused_chunks >= 20, "refused {}", o.refused_chunks);
        assert!(o.acks > 100, "{} acks", o.acks);
        assert_eq!(o.ring_dropped, 0);
        assert_eq!(o.ring_depth, 0, "everything acked in the end");
        let expected: BTreeSet<(u32, u32)> = (0..o.next_seq).map(|s| (o.boot_id, s)).collect();
        assert_eq!(o.durable, expected);
        assert_eq!(o.stored, expected.len());
        let c = o.counters;
        assert_eq!(c.frames_lost, 0);
        assert!(c.redelivered >= 40, "{c:?}");
        assert_eq!(c.readings, o.produced);
        assert_eq!(c.readings, o.stored as u64 + c.redelivered);
    }

    /// An outage longer than the ring: the node drops its oldest readings; the gateway counts
    /// exactly the readings that never became durable as lost, stores the rest once, and the acks
    /// do not stall on the hole.
    #[test]
    fn an_outage_longer_than_the_ring_loses_exactly_what_the_node_dropped() {
        let o = run_with_refusals(40_000);
        let dropped = o.ring_dropped;
        assert!(dropped > 10, "dropped {dropped}");
        assert_eq!(o.ring_depth, 0);
        // what never became durable is exactly what the gateway counts lost; the node's count
        // is higher, because some readings it dropped were durable but not yet acked (the ack
        // stops at the oldest hole)
        let never_durable = u64::from(o.next_seq) - o.durable.len() as u64;
        assert_eq!(o.counters.frames_lost, never_durable);
        assert!(never_durable > 10 && never_durable <= u64::from(dropped));
        assert_eq!(o.stored, o.durable.len());
    }
}
