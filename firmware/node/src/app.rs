//! The node application: a poll-driven scheduler that samples the sensors, frames readings with
//! the [`ioc_wire`] format, keeps them until the gateway acks them, and answers commands.
//!
//! Exists so the whole firmware behaviour is plain `no_std` code over traits, which the real
//! board's `main` loop and the host simulator (`ioc-node-sim`) both drive by calling
//! [`Node::poll`] with the milliseconds since boot. It never allocates: readings wait in a
//! `heapless::Deque` of `RING` frames (the oldest is dropped and counted when it is full), and
//! line bytes go through a fixed-size [`FrameDecoder`] and a stack buffer.
//!
//! Protocol behaviour (see `ioc_wire` for the frame layout):
//! * Readings (`Environment`, `Traffic`, `Status`) each take the next `seq` and enter the ring.
//! * `CommandAck`s carry the next unused `seq` without consuming it; the gateway tracks `seq`
//!   on readings only.
//! * `Ack { boot_id, up_to_seq }` for this boot drops ring entries up to `up_to_seq`.
//! * `RequestStatus` resends every unacked reading (original header, same `seq`), then sends a
//!   new `Status`.
//! * `SetSampleInterval` is accepted within `[min_sample_interval_ms, max_sample_interval_ms]`.
//! * `Identify { blink_s }` makes [`Node::is_identifying`] true for that long (the board blinks
//!   its LED while it is).
//! * At start the node writes one `0x00` so the gateway's decoder drops any partial frame, then
//!   sends a `Status` (announcing the new boot) and a first `Environment` sample.

use embedded_io::{Read, ReadReady, Write};
use heapless::Deque;
use ioc_wire::{
    encode_frame, Command, CommandAck, Environment, Frame, FrameDecoder, Header, Payload, Status,
    TrafficLane, BROADCAST_NODE_ID, DELIMITER, MAX_ENCODED_LEN,
};

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::InputPin;
use embedded_hal::i2c::I2c;

use crate::noise::{AdcChannel, NoiseMeter};
use crate::pms5003::Pms5003;
use crate::sht3x::Sht3x;
use crate::traffic::LaneCounter;

/// Most bytes taken from the UART per [`Node::poll`], so a babbling line cannot starve sampling.
pub const MAX_RX_BYTES_PER_POLL: usize = 512;

/// A sensor that contributes fields to an [`Environment`] sample.
pub trait EnvironmentSensor {
    /// Fill this sensor's fields of `env`. Returns the number of failures (0 on success); on
    /// failure the fields stay `None`.
    fn sample_into(&mut self, env: &mut Environment) -> u32;
}

/// Placeholder for a sensor that is not fitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSensor;

impl EnvironmentSensor for NoSensor {
    fn sample_into(&mut self, _env: &mut Environment) -> u32 {
        0
    }
}

impl<I2C: I2c, D: DelayNs> EnvironmentSensor for Sht3x<I2C, D> {
    fn sample_into(&mut self, env: &mut Environment) -> u32 {
        match self.measure() {
            Ok(m) => {
                env.temperature_c = Some(m.temperature_c);
                env.humidity_pct = Some(m.humidity_pct);
                0
            }
            Err(_) => 1,
        }
    }
}

impl<S: Read + Write> EnvironmentSensor for Pms5003<S> {
    fn sample_into(&mut self, env: &mut Environment) -> u32 {
        match self.read_passive() {
            Ok(r) => {
                env.pm1_0 = Some(f32::from(r.pm1_0));
                env.pm2_5 = Some(f32::from(r.pm2_5));
                env.pm10 = Some(f32::from(r.pm10));
                0
            }
            Err(_) => 1,
        }
    }
}

impl<A: AdcChannel> EnvironmentSensor for NoiseMeter<A> {
    fn sample_into(&mut self, env: &mut Environment) -> u32 {
        match self.measure() {
            Ok(db) => {
                env.noise_db = Some(db);
                0
            }
            Err(_) => 1,
        }
    }
}

impl<T: EnvironmentSensor> EnvironmentSensor for Option<T> {
    fn sample_into(&mut self, env: &mut Environment) -> u32 {
        self.as_mut().map_or(0, |s| s.sample_into(env))
    }
}

impl<A: EnvironmentSensor, B: EnvironmentSensor, C: EnvironmentSensor> EnvironmentSensor
    for (A, B, C)
{
    fn sample_into(&mut self, env: &mut Environment) -> u32 {
        self.0.sample_into(env) + self.1.sample_into(env) + self.2.sample_into(env)
    }
}

/// Settings of the node application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id on the bus.
    pub node_id: u32,
    /// Environment sample and traffic interval at boot, ms.
    pub sample_interval_ms: u32,
    /// Status report interval, ms.
    pub status_interval_ms: u32,
    /// Smallest interval `SetSampleInterval` accepts, ms.
    pub min_sample_interval_ms: u32,
    /// Largest interval `SetSampleInterval` accepts, ms.
    pub max_sample_interval_ms: u32,
}

impl NodeConfig {
    /// Defaults: 60 s samples and status, intervals settable from 1 s to 1 h.
    pub const fn new(node_id: u32) -> Self {
        Self {
            node_id,
            sample_interval_ms: 60_000,
            status_interval_ms: 60_000,
            min_sample_interval_ms: 1_000,
            max_sample_interval_ms: 3_600_000,
        }
    }
}

/// Counters describing the node's own state (more than what a `Status` frame carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeHealth {
    /// The `seq` the next reading will carry.
    pub next_seq: u32,
    /// Readings waiting for an ack.
    pub ring_depth: u16,
    /// Readings dropped from the full ring before being acked.
    pub ring_dropped: u32,
    /// Sensor failures since boot.
    pub sensor_errors: u32,
    /// UART write failures since boot.
    pub uart_errors: u32,
    /// Undecodable frames received since boot.
    pub rx_errors: u32,
    /// Frames written (readings, resends and command acks).
    pub frames_sent: u32,
    /// Commands received for this node.
    pub commands_received: u32,
}

/// The node application over a gateway UART `U`, environment sensors `E` and `LANES` lane
/// inputs of type `P`, keeping at most `RING` unacked readings.
pub struct Node<U, E, P, const LANES: usize, const RING: usize> {
    uart: U,
    environment: E,
    lanes: [LaneCounter<P>; LANES],
    config: NodeConfig,
    boot_id: u32,
    resets: u32,
    sample_interval_ms: u32,
    next_seq: u32,
    next_environment_ms: u64,
    next_traffic_ms: u64,
    next_status_ms: u64,
    identify_until_ms: u64,
    ring: Deque<Frame, RING>,
    decoder: FrameDecoder,
    started: bool,
    health: NodeHealth,
}

impl<U, E, P, const LANES: usize, const RING: usize> Node<U, E, P, LANES, RING>
where
    U: Read + Write + ReadReady,
    E: EnvironmentSensor,
    P: InputPin,
{
    /// A node booted at `now_ms` with a random `boot_id` and the platform's reset counter.
    pub fn new(
        uart: U,
        environment: E,
        lanes: [LaneCounter<P>; LANES],
        config: NodeConfig,
        boot_id: u32,
        resets: u32,
        now_ms: u64,
    ) -> Self {
        let interval = u64::from(config.sample_interval_ms);
        Self {
            uart,
            environment,
            lanes,
            config,
            boot_id,
            resets,
            sample_interval_ms: config.sample_interval_ms,
            next_seq: 0,
            next_environment_ms: now_ms,
            next_traffic_ms: now_ms + interval,
            next_status_ms: now_ms,
            identify_until_ms: 0,
            ring: Deque::new(),
            decoder: FrameDecoder::new(),
            started: false,
            health: NodeHealth::default(),
        }
    }

    /// Do everything that is due at `now_ms` (ms since boot): read commands, sample the lane
    /// inputs, and send readings whose interval has come.
    pub fn poll(&mut self, now_ms: u64) {
        if !self.started {
            self.started = true;
            self.write_bytes(&[DELIMITER]);
        }
        self.receive(now_ms);
        for lane in self.lanes.iter_mut() {
            if lane.poll(now_ms).is_err() {
                self.health.sensor_errors = self.health.sensor_errors.saturating_add(1);
            }
        }
        if now_ms >= self.next_status_ms {
            self.next_status_ms =
                next_due(self.next_status_ms, self.config.status_interval_ms, now_ms);
            self.send_status(now_ms);
        }
        if now_ms >= self.next_environment_ms {
            self.next_environment_ms =
                next_due(self.next_environment_ms, self.sample_interval_ms, now_ms);
            let mut env = Environment::default();
            let errors = self.environment.sample_into(&mut env);
            self.health.sensor_errors = self.health.sensor_errors.saturating_add(errors);
            self.send_reading(Payload::Environment(env), now_ms);
        }
        if now_ms >= self.next_traffic_ms {
            self.next_traffic_ms = next_due(self.next_traffic_ms, self.sample_interval_ms, now_ms);
            for i in 0..LANES {
                let Some(lane) = self.lanes.get_mut(i) else {
                    break;
                };
                let stats = lane.take_interval(now_ms);
                self.send_reading(
                    Payload::Traffic(TrafficLane {
                        lane: stats.lane,
                        direction: stats.direction,
                        count: stats.count,
                        heavy_count: stats.heavy_count,
                        speed_avg_kmh: None,
                        occupancy_pct: stats.occupancy_pct,
                    }),
                    now_ms,
                );
            }
        }
    }

    /// Whether the identification LED should blink now.
    pub fn is_identifying(&self, now_ms: u64) -> bool {
        now_ms < self.identify_until_ms
    }

    /// The current sample interval, ms.
    pub fn sample_interval_ms(&self) -> u32 {
        self.sample_interval_ms
    }

    /// This boot's id.
    pub fn boot_id(&self) -> u32 {
        self.boot_id
    }

    /// The node's counters.
    pub fn health(&self) -> NodeHealth {
        NodeHealth {
            next_seq: self.next_seq,
            ring_depth: self.ring_depth(),
            ring_dropped: self.health.ring_dropped,
            ..self.health
        }
    }

    /// Unacked readings, oldest first.
    pub fn unacked(&self) -> impl Iterator<Item = &Frame> {
        self.ring.iter()
    }

    /// The gateway UART (the simulator drains and fills its buffers through this).
    pub fn uart_mut(&mut self) -> &mut U {
        &mut self.uart
    }

    /// The environment sensors (e.g. to inject faults in a simulator).
    pub fn environment_mut(&mut self) -> &mut E {
        &mut self.environment
    }

    /// The lane counters.
    pub fn lanes_mut(&mut self) -> &mut [LaneCounter<P>; LANES] {
        &mut self.lanes
    }

    /// Fault injection: skip `n` sequence numbers, as if `n` readings had been lost on the line
    /// (they never enter the ring, so they cannot be resent).
    pub fn skip_seq(&mut self, n: u32) {
        self.next_seq = self.next_seq.wrapping_add(n);
    }

    /// Give back the peripherals.
    pub fn release(self) -> (U, E, [LaneCounter<P>; LANES]) {
        (self.uart, self.environment, self.lanes)
    }

    fn ring_depth(&self) -> u16 {
        u16::try_from(self.ring.len()).unwrap_or(u16::MAX)
    }

    fn header(&self, seq: u32, now_ms: u64) -> Header {
        Header {
            node_id: self.config.node_id,
            boot_id: self.boot_id,
            seq,
            uptime_ms: now_ms,
        }
    }

    fn send_status(&mut self, now_ms: u64) {
        let status = Status {
            uptime_s: u32::try_from(now_ms / 1000).unwrap_or(u32::MAX),
            resets: self.resets,
            sensor_errors: self.health.sensor_errors,
            ring_depth: self.ring_depth(),
            ring_dropped: self.health.ring_dropped,
            sample_interval_ms: self.sample_interval_ms,
        };
        self.send_reading(Payload::Status(status), now_ms);
    }

    fn send_reading(&mut self, payload: Payload, now_ms: u64) {
        let frame = Frame {
            header: self.header(self.next_seq, now_ms),
            payload,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        if self.ring.is_full() {
            self.ring.pop_front();
            self.health.ring_dropped = self.health.ring_dropped.saturating_add(1);
        }
        // cannot fail: a slot was freed above when the ring was full
        let _ = self.ring.push_back(frame);
        self.send_frame(&frame);
    }

    fn send_frame(&mut self, frame: &Frame) {
        let mut buf = [0u8; MAX_ENCODED_LEN];
        match encode_frame(frame, &mut buf) {
            Ok(n) => {
                if let Some(bytes) = buf.get(..n) {
                    self.write_bytes(bytes);
                    self.health.frames_sent = self.health.frames_sent.saturating_add(1);
                }
            }
            Err(_) => self.health.uart_errors = self.health.uart_errors.saturating_add(1),
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        if self.uart.write_all(bytes).is_err() || self.uart.flush().is_err() {
            self.health.uart_errors = self.health.uart_errors.saturating_add(1);
        }
    }

    fn receive(&mut self, now_ms: u64) {
        let mut taken = 0usize;
        let mut buf = [0u8; 32];
        while taken < MAX_RX_BYTES_PER_POLL {
            match self.uart.read_ready() {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => {
                    self.health.uart_errors = self.health.uart_errors.saturating_add(1);
                    break;
                }
            }
            let n = match self.uart.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => {
                    self.health.uart_errors = self.health.uart_errors.saturating_add(1);
                    break;
                }
            };
            taken += n;
            for &byte in buf.get(..n).unwrap_or(&[]) {
                match self.decoder.push(byte) {
                    None => {}
                    Some(Ok(frame)) => self.handle_frame(&frame, now_ms),
                    Some(Err(_)) => self.health.rx_errors = self.health.rx_errors.saturating_add(1),
                }
            }
        }
    }

    fn handle_frame(&mut self, frame: &Frame, now_ms: u64) {
        let to = frame.header.node_id;
        if to != self.config.node_id && to != BROADCAST_NODE_ID {
            return;
        }
        let Payload::Command(command) = frame.payload else {
            return;
        };
        self.health.commands_received = self.health.commands_received.saturating_add(1);
        let command_id = frame.header.seq;
        match command {
            Command::Ack { boot_id, up_to_seq } => {
                if boot_id == self.boot_id {
                    while let Some(front) = self.ring.front() {
                        if seq_at_or_before(front.header.seq, up_to_seq) {
                            self.ring.pop_front();
                        } else {
                            break;
                        }
                    }
                }
            }
            Command::SetSampleInterval { interval_ms } => {
                let ok = (self.config.min_sample_interval_ms..=self.config.max_sample_interval_ms)
                    .contains(&interval_ms);
                if ok {
                    self.sample_interval_ms = interval_ms;
                    let next = now_ms + u64::from(interval_ms);
                    self.next_environment_ms = self.next_environment_ms.min(next);
                    self.next_traffic_ms = self.next_traffic_ms.min(next);
                }
                self.send_command_ack(command_id, ok, now_ms);
            }
            Command::Identify { blink_s } => {
                self.identify_until_ms = now_ms + u64::from(blink_s) * 1000;
                self.send_command_ack(command_id, true, now_ms);
            }
            Command::RequestStatus => {
                self.send_command_ack(command_id, true, now_ms);
                for i in 0..self.ring.len() {
                    let Some(frame) = self.ring.iter().nth(i).copied() else {
                        break;
                    };
                    self.send_frame(&frame);
                }
                self.send_status(now_ms);
            }
        }
    }

    fn send_command_ack(&mut self, command_id: u32, ok: bool, now_ms: u64) {
        let frame = Frame {
            header: self.header(self.next_seq, now_ms),
            payload: Payload::CommandAck(CommandAck { command_id, ok }),
        };
        self.send_frame(&frame);
    }
}

/// `a` is `b` or earlier in wrapping sequence order.
fn seq_at_or_before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

fn next_due(previous_due: u64, interval_ms: u32, now_ms: u64) -> u64 {
    let interval = u64::from(interval_ms.max(1));
    let next = previous_due + interval;
    if next <= now_ms {
        now_ms + interval
    } else {
        next
    }
}
