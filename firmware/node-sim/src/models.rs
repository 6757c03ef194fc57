//! Host models of the node's peripherals: an SHT3x on I2C, a PMS5003 on a UART, a microphone
//! ADC, loop-detector inputs, a no-op delay and a byte-buffer UART to the gateway.
//!
//! They exist so the real `ioc_node` drivers and application run unchanged on the host. Every
//! model reads simulated time from a shared [`SimClock`] and draws its values from a seeded
//! generator, so a run with the same seed produces the same bytes. Faults are injected through
//! the shared [`SimFaults`] counters ("fail the next N reads").

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use embedded_hal::i2c::{ErrorKind as I2cErrorKind, NoAcknowledgeSource, Operation};
use embedded_io::ErrorKind as IoErrorKind;
use ioc_node::noise::AdcChannel;
use ioc_node::pms5003::{CMD_PASSIVE_MODE, CMD_READ_PASSIVE};
use ioc_node::sht3x::{crc8, MEASURE_HIGH_REPEATABILITY};

/// Simulated milliseconds since the node booted, shared by all models of one node.
#[derive(Debug, Default)]
pub struct SimClock(AtomicU64);

impl SimClock {
    /// Current time, ms.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Set the time, ms.
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::Relaxed)
    }
}

/// Fault injection counters: each makes the next N operations of a model fail.
#[derive(Debug, Default)]
pub struct SimFaults {
    /// SHT3x: NACK the next N measurement commands.
    pub sht_bus_errors: AtomicU32,
    /// SHT3x: corrupt the temperature CRC of the next N answers.
    pub sht_bad_crc: AtomicU32,
    /// PMS5003: answer nothing to the next N read requests (the driver sees a timeout).
    pub pms_silent: AtomicU32,
    /// PMS5003: corrupt the checksum of the next N frames.
    pub pms_bad_checksum: AtomicU32,
    /// ADC: fail the next N conversions.
    pub adc_errors: AtomicU32,
}

/// Decrement `counter` if positive; true when a fault should be injected now.
pub(crate) fn take_fault(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// Daily cycle in `[-1, 1]` peaking in the afternoon, from ms since boot (boot at midnight).
fn diurnal(now_ms: u64) -> f64 {
    let day = 86_400_000.0;
    let phase = (now_ms as f64 % day) / day;
    (2.0 * std::f64::consts::PI * (phase - 0.375)).sin()
}

/// SHT3x device model on I2C: answers the single-shot command with plausible values.
#[derive(Debug)]
pub struct Sht3xModel {
    address: u8,
    clock: Arc<SimClock>,
    faults: Arc<SimFaults>,
    rng: SimRng,
    measured: Option<[u8; 6]>,
}

impl Sht3xModel {
    /// A sensor at `address`.
    pub fn new(address: u8, seed: u64, clock: Arc<SimClock>, faults: Arc<SimFaults>) -> Self {
        Self {
            address,
            clock,
            faults,
            rng: SimRng::new(seed),
            measured: None,
        }
    }

    /// The bytes the sensor answers for a temperature and humidity (raw words and CRCs).
    pub fn encode(temperature_c: f64, humidity_pct: f64) -> [u8; 6] {
        let t_raw = (((temperature_c + 45.0) / 175.0) * 65535.0)
            .round()
            .clamp(0.0, 65535.0) as u16;
        let h_raw = ((humidity_pct / 100.0) * 65535.0)
            .round()
            .clamp(0.0, 65535.0) as u16;
        let [t0, t1] = t_raw.to_be_bytes();
        let [h0, h1] = h_raw.to_be_bytes();
        [t0, t1, crc8(&[t0, t1]), h0, h1, crc8(&[h0, h1])]
    }

    fn measure(&mut self) -> [u8; 6] {
        let d = diurnal(self.clock.now_ms());
        let t = 16.0 + 6.0 * d + (self.rng.next_f64() - 0.5) * 0.4;
        let h = 60.0 - 15.0 * d + (self.rng.next_f64() - 0.5) * 2.0;
        let mut bytes = Self::encode(t, h);
        if take_fault(&self.faults.sht_bad_crc) {
            bytes[2] ^= 0xFF;
        }
        bytes
    }
}

impl embedded_hal::i2c::ErrorType for Sht3xModel {
    type Error = I2cErrorKind;
}

impl embedded_hal::i2c::I2c for Sht3xModel {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != self.address {
            return Err(I2cErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        }
        for op in operations {
            match op {
                Operation::Write(bytes) => {
                    if take_fault(&self.faults.sht_bus_errors) {
                        return Err(I2cErrorKind::NoAcknowledge(NoAcknowledgeSource::Data));
                    }
                    if *bytes == MEASURE_HIGH_REPEATABILITY.as_slice() {
                        self.measured = Some(self.measure());
                    } else {
                        return Err(I2cErrorKind::NoAcknowledge(NoAcknowledgeSource::Data));
                    }
                }
                Operation::Read(buf) => {
                    // no measurement pending: the sensor NACKs its address
                    let answer = self
                        .measured
                        .take()
                        .ok_or(I2cErrorKind::NoAcknowledge(NoAcknowledgeSource::Address))?;
                    for (dst, src) in buf
                        .iter_mut()
                        .zip(answer.iter().chain(std::iter::repeat(&0xFF)))
                    {
                        *dst = *src;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Delay that takes no time (simulated time is driven by the caller).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDelay;

impl embedded_hal::delay::DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

/// PMS5003 model on a UART: answers passive-mode commands with valid frames.
#[derive(Debug)]
pub struct Pms5003Model {
    clock: Arc<SimClock>,
    faults: Arc<SimFaults>,
    rng: SimRng,
    command: Vec<u8>,
    answer: VecDeque<u8>,
}

impl Pms5003Model {
    /// A sensor in active mode, not yet asked anything.
    pub fn new(seed: u64, clock: Arc<SimClock>, faults: Arc<SimFaults>) -> Self {
        Self {
            clock,
            faults,
            rng: SimRng::new(seed),
            command: Vec::new(),
            answer: VecDeque::new(),
        }
    }

    /// A valid 32-byte data frame with these atmospheric PM values (CF=1 equal to them).
    pub fn frame(pm1_0: u16, pm2_5: u16, pm10: u16, particles: [u16; 6]) -> [u8; 32] {
        ioc_frames::pms5003::encode(&[
            pm1_0,
            pm2_5,
            pm10,
            pm1_0,
            pm2_5,
            pm10,
            particles[0],
            particles[1],
            particles[2],
            particles[3],
            particles[4],
            particles[5],
            0x9700,
        ])
    }

    fn on_command(&mut self, cmd: &[u8]) {
        if cmd == CMD_READ_PASSIVE {
            if take_fault(&self.faults.pms_silent) {
                return;
            }
            let d = diurnal(self.clock.now_ms() + 12 * 3_600_000); // worst at night/rush hour
            let pm2_5 = (12.0 + 6.0 * d + self.rng.next_f64() * 4.0).max(0.0) as u16;
            let pm1_0 = pm2_5 * 2 / 3;
            let pm10 = pm2_5 + 4 + (self.rng.next_u64() % 6) as u16;
            let mut f = Self::frame(pm1_0, pm2_5, pm10, [900, 260, 40, 8, 2, 1]);
            if take_fault(&self.faults.pms_bad_checksum) {
                f[31] ^= 0x5A;
            }
            self.answer.extend(f);
        } else if cmd.get(..3) == CMD_PASSIVE_MODE.get(..3) {
            // mode change answer
            self.answer
                .extend([0x42, 0x4D, 0x00, 0x04, 0xE1, 0x00, 0x01, 0x74]);
        }
    }
}

impl embedded_io::ErrorType for Pms5003Model {
    type Error = IoErrorKind;
}

impl embedded_io::Read for Pms5003Model {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.answer.is_empty() {
            // a real UART driver times out when the sensor stays silent
            return Err(IoErrorKind::TimedOut);
        }
        let n = buf.len().min(self.answer.len());
        for (dst, src) in buf.iter_mut().zip(self.answer.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl embedded_io::Write for Pms5003Model {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            if self.command.is_empty() && b != 0x42 {
                continue;
            }
            self.command.push(b);
            if self.command.len() == 7 {
                let cmd = std::mem::take(&mut self.command);
                self.on_command(&cmd);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Microphone on a 12-bit ADC: a tone plus noise around a 2048 bias, louder by day.
#[derive(Debug)]
pub struct AdcModel {
    clock: Arc<SimClock>,
    faults: Arc<SimFaults>,
    rng: SimRng,
    n: u64,
}

impl AdcModel {
    /// A microphone channel.
    pub fn new(seed: u64, clock: Arc<SimClock>, faults: Arc<SimFaults>) -> Self {
        Self {
            clock,
            faults,
            rng: SimRng::new(seed),
            n: 0,
        }
    }
}

/// ADC model failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdcFault;

impl AdcChannel for AdcModel {
    type Error = AdcFault;
    fn read_sample(&mut self) -> Result<u16, AdcFault> {
        if take_fault(&self.faults.adc_errors) {
            return Err(AdcFault);
        }
        self.n += 1;
        let amplitude = 60.0 + 40.0 * (diurnal(self.clock.now_ms()) + 1.0);
        let tone = (self.n as f64 * 0.7).sin() * amplitude;
        let noise = (self.rng.next_f64() - 0.5) * amplitude * 0.5;
        Ok((2048.0 + tone + noise).round().clamp(0.0, 4095.0) as u16)
    }
}

/// A loop-detector input toggled by a deterministic schedule of vehicles.
///
/// Either an explicit list of `[start, end)` presence windows, or generated from a seed: random
/// headways of 1.5..12 s, presences of 150..600 ms, one vehicle in ten heavy (1.2..2.5 s).
#[derive(Debug)]
pub struct LoopInput {
    clock: Arc<SimClock>,
    source: Schedule,
}

#[derive(Debug)]
enum Schedule {
    Fixed(Vec<(u64, u64)>),
    Random { rng: SimRng, current: (u64, u64) },
}

impl LoopInput {
    /// Vehicles drawn from `seed`.
    pub fn random(seed: u64, clock: Arc<SimClock>) -> Self {
        let mut rng = SimRng::new(seed);
        let first = rng.range(500, 6_000);
        let current = (first, first + rng.range(150, 600));
        Self {
            clock,
            source: Schedule::Random { rng, current },
        }
    }

    /// Vehicles present exactly in the given `[start_ms, end_ms)` windows.
    pub fn fixed(windows: Vec<(u64, u64)>, clock: Arc<SimClock>) -> Self {
        Self {
            clock,
            source: Schedule::Fixed(windows),
        }
    }

    fn present_at(&mut self, now: u64) -> bool {
        match &mut self.source {
            Schedule::Fixed(windows) => windows.iter().any(|&(s, e)| (s..e).contains(&now)),
            Schedule::Random { rng, current } => {
                while now >= current.1 {
                    let start = current.1 + rng.range(1_500, 12_000);
                    let length = if rng.range(0, 10) == 0 {
                        rng.range(1_200, 2_500)
                    } else {
                        rng.range(150, 600)
                    };
                    *current = (start, start + length);
                }
                now >= current.0
            }
        }
    }
}

impl embedded_hal::digital::ErrorType for LoopInput {
    type Error = Infallible;
}

impl embedded_hal::digital::InputPin for LoopInput {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        let now = self.clock.now_ms();
        Ok(self.present_at(now))
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        self.is_high().map(|h| !h)
    }
}

/// The node's UART to the gateway as two byte buffers.
#[derive(Debug, Default)]
pub struct BufferUart {
    /// Bytes the node wrote (to the gateway).
    pub tx: Vec<u8>,
    /// Bytes waiting for the node (from the gateway).
    pub rx: VecDeque<u8>,
}

impl embedded_io::ErrorType for BufferUart {
    type Error = Infallible;
}

impl embedded_io::Read for BufferUart {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let n = buf.len().min(self.rx.len());
        for (dst, src) in buf.iter_mut().zip(self.rx.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl embedded_io::ReadReady for BufferUart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(!self.rx.is_empty())
    }
}

impl embedded_io::Write for BufferUart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.tx.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}
