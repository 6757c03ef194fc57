//! Runs the real `ioc_node` firmware application on the host with simulated peripherals.
//!
//! This crate exists so the gateway can be tested against the firmware's own logic without
//! hardware: [`SimNode`] wires the SHT3x, PMS5003, microphone and loop-detector models of
//! [`models`] into an [`ioc_node::Node`], and exposes the node's UART as bytes: [`SimNode::step`]
//! returns what the node sends, [`SimNode::feed`] delivers what the gateway sends. Fault hooks
//! force a sequence gap, a reboot (new boot id, sequence restarting at 0) and sensor failures.
//! [`run_node`] drives a node in simulated or real time against any `std::io::Write` (e.g. a
//! pseudo-terminal) with commands read from any `std::io::Read`.

pub mod models;

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ioc_node::noise::{NoiseConfig, NoiseMeter};
use ioc_node::pms5003::Pms5003;
use ioc_node::sht3x::{Sht3x, DEFAULT_ADDRESS};
use ioc_node::traffic::{LaneConfig, LaneCounter};
use ioc_node::{Node, NodeConfig, NodeHealth};
use ioc_wire::Direction;

pub use models::{
    AdcModel, BufferUart, LoopInput, NoDelay, Pms5003Model, Sht3xModel, SimClock, SimFaults, SimRng,
};

/// Lanes of a simulated node: lane 1 northbound, lane 2 southbound.
pub const SIM_LANES: usize = 2;
/// Unacked readings a simulated node keeps.
pub const SIM_RING: usize = 64;
/// Granularity at which [`SimNode::step`] polls the firmware (loop inputs are sampled this often).
pub const POLL_STEP_MS: u64 = 10;

/// The environment sensors of a simulated node.
pub type SimEnvironment = (
    Sht3x<Sht3xModel, NoDelay>,
    Pms5003<Pms5003Model>,
    NoiseMeter<AdcModel>,
);

/// The firmware application as the simulator runs it.
pub type SimApp = Node<BufferUart, SimEnvironment, LoopInput, SIM_LANES, SIM_RING>;

/// Settings of a simulated node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimNodeConfig {
    /// Node id on the bus.
    pub node_id: u32,
    /// Seed of every model; the same seed gives the same bytes.
    pub seed: u64,
    /// Environment and traffic interval at boot, ms.
    pub sample_interval_ms: u32,
    /// Status interval, ms.
    pub status_interval_ms: u32,
}

impl SimNodeConfig {
    /// Defaults: 10 s samples, 30 s status.
    pub fn new(node_id: u32, seed: u64) -> Self {
        Self {
            node_id,
            seed,
            sample_interval_ms: 10_000,
            status_interval_ms: 30_000,
        }
    }
}

/// One simulated sensor node.
pub struct SimNode {
    config: SimNodeConfig,
    clock: Arc<SimClock>,
    faults: Arc<SimFaults>,
    app: SimApp,
    boots: u32,
    boot_at_ms: u64,
    last_poll_ms: Option<u64>,
}

fn mix(seed: u64, salt: u64) -> u64 {
    SimRng::new(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

impl SimNode {
    /// A node with default settings, booted at time 0.
    pub fn new(node_id: u32, seed: u64) -> Self {
        Self::with_config(SimNodeConfig::new(node_id, seed))
    }

    /// A node with `config`, booted at time 0.
    pub fn with_config(config: SimNodeConfig) -> Self {
        let clock = Arc::new(SimClock::default());
        let faults = Arc::new(SimFaults::default());
        let app = Self::boot(&config, &clock, &faults, 0, 0, 0);
        Self {
            config,
            clock,
            faults,
            app,
            boots: 0,
            boot_at_ms: 0,
            last_poll_ms: None,
        }
    }

    fn boot(
        config: &SimNodeConfig,
        clock: &Arc<SimClock>,
        faults: &Arc<SimFaults>,
        boots: u32,
        resets: u32,
        uptime_ms: u64,
    ) -> SimApp {
        let seed = mix(config.seed, u64::from(boots) + 1);
        clock.set_ms(uptime_ms);
        let sht = Sht3x::new(
            Sht3xModel::new(DEFAULT_ADDRESS, mix(seed, 1), clock.clone(), faults.clone()),
            NoDelay,
            DEFAULT_ADDRESS,
        );
        let pms = Pms5003::new(Pms5003Model::new(
            mix(seed, 2),
            clock.clone(),
            faults.clone(),
        ));
        let mic = NoiseMeter::new(
            AdcModel::new(mix(seed, 3), clock.clone(), faults.clone()),
            NoiseConfig {
                samples: 256,
                reference_rms: 1000.0,
                offset_db: 94.0,
                min_rms: 1.0,
            },
        );
        let lane = |n: u8, direction| {
            LaneCounter::new(
                LoopInput::random(mix(seed, 10 + u64::from(n)), clock.clone()),
                LaneConfig {
                    lane: n,
                    direction,
                    debounce_ms: 30,
                    heavy_min_presence_ms: 1_000,
                    active_high: true,
                },
                uptime_ms,
            )
        };
        let lanes = [
            lane(1, Direction::Northbound),
            lane(2, Direction::Southbound),
        ];
        let node_config = NodeConfig {
            node_id: config.node_id,
            sample_interval_ms: config.sample_interval_ms,
            status_interval_ms: config.status_interval_ms,
            min_sample_interval_ms: 1_000,
            max_sample_interval_ms: 3_600_000,
        };
        let boot_id = mix(config.seed, 0xB007_0000 + u64::from(boots)) as u32;
        Node::new(
            BufferUart::default(),
            (sht, pms, mic),
            lanes,
            node_config,
            boot_id,
            resets,
            uptime_ms,
        )
    }

    /// Advance to `now_ms` (the caller's clock, ms; any origin, non-decreasing) and return the
    /// bytes the node wrote to its UART meanwhile. The firmware is polled every
    /// [`POLL_STEP_MS`] of simulated time in between, so loop inputs are sampled as on hardware.
    pub fn step(&mut self, now_ms: u64) -> Vec<u8> {
        let from = self.last_poll_ms.map_or(now_ms, |t| t + POLL_STEP_MS);
        let mut t = from.min(now_ms);
        loop {
            self.poll_at(t);
            if t >= now_ms {
                break;
            }
            t = (t + POLL_STEP_MS).min(now_ms);
        }
        std::mem::take(&mut self.app.uart_mut().tx)
    }

    fn poll_at(&mut self, now_ms: u64) {
        if self.last_poll_ms.is_none() {
            // first call fixes the caller's time origin to this boot
            self.boot_at_ms = now_ms;
        }
        let uptime = now_ms.saturating_sub(self.boot_at_ms);
        self.clock.set_ms(uptime);
        self.app.poll(uptime);
        self.last_poll_ms = Some(now_ms);
    }

    /// Deliver bytes from the gateway; they are handled at the next [`SimNode::step`].
    pub fn feed(&mut self, bytes_from_gateway: &[u8]) {
        self.app
            .uart_mut()
            .rx
            .extend(bytes_from_gateway.iter().copied());
    }

    /// Fault: lose `n` readings (their sequence numbers are skipped; they cannot be resent).
    pub fn force_gap(&mut self, n: u32) {
        self.app.skip_seq(n);
    }

    /// Fault: reboot now (at the time of the last step). RAM is lost (unacked readings, partial
    /// frames), the reset counter goes up, a new boot id is drawn, and `seq` restarts at 0.
    pub fn reboot(&mut self) {
        self.boots += 1;
        let now = self.last_poll_ms.unwrap_or(0);
        self.boot_at_ms = now;
        self.app = Self::boot(
            &self.config,
            &self.clock,
            &self.faults,
            self.boots,
            self.boots,
            0,
        );
    }

    /// Fault counters shared with the peripheral models.
    pub fn faults(&self) -> &SimFaults {
        &self.faults
    }

    /// Make the next `n` SHT3x measurements fail with a bus error.
    pub fn fail_sht3x(&self, n: u32) {
        self.faults.sht_bus_errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Make the next `n` PMS5003 reads time out.
    pub fn silence_pms5003(&self, n: u32) {
        self.faults.pms_silent.fetch_add(n, Ordering::Relaxed);
    }

    /// The node id.
    pub fn node_id(&self) -> u32 {
        self.config.node_id
    }

    /// The current boot id.
    pub fn boot_id(&self) -> u32 {
        self.app.boot_id()
    }

    /// Reboots so far.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// The firmware's counters.
    pub fn health(&self) -> NodeHealth {
        self.app.health()
    }

    /// The firmware application itself.
    pub fn app(&mut self) -> &mut SimApp {
        &mut self.app
    }
}

/// How [`run_node`] advances time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Wall-clock time: sleep `tick_ms` between steps.
    RealTime,
    /// As fast as possible: each step advances `tick_ms` of simulated time.
    Simulated,
}

/// What [`run_node`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Bytes written to the output.
    pub bytes_out: u64,
    /// Bytes received from the input.
    pub bytes_in: u64,
    /// Steps taken.
    pub steps: u64,
}

/// Read `input` on a thread and hand its chunks over a channel (ends at EOF or error).
pub fn spawn_reader<R: Read + Send + 'static>(mut input: R) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => break,
            }
        }
    });
    rx
}

/// Drive `node` for `duration_ms` in steps of `tick_ms`, writing its bytes to `output` and
/// feeding it whatever arrives on `input` (see [`spawn_reader`]). Time starts at 0.
pub fn run_node<W: Write>(
    node: &mut SimNode,
    output: &mut W,
    input: Option<&Receiver<Vec<u8>>>,
    duration_ms: u64,
    tick_ms: u64,
    pace: Pace,
) -> io::Result<RunStats> {
    let tick_ms = tick_ms.max(1);
    let started = Instant::now();
    let mut stats = RunStats::default();
    let mut now_ms = 0u64;
    loop {
        if let Some(rx) = input {
            while let Ok(bytes) = rx.try_recv() {
                stats.bytes_in += bytes.len() as u64;
                node.feed(&bytes);
            }
        }
        let out = node.step(now_ms);
        if !out.is_empty() {
            output.write_all(&out)?;
            output.flush()?;
            stats.bytes_out += out.len() as u64;
        }
        stats.steps += 1;
        if now_ms >= duration_ms {
            break;
        }
        now_ms = (now_ms + tick_ms).min(duration_ms);
        if pace == Pace::RealTime {
            let target = started + Duration::from_millis(now_ms);
            let wait = target.saturating_duration_since(Instant::now());
            std::thread::sleep(wait);
        }
    }
    Ok(stats)
}
