//! Modbus RTU slaves on a simulated RS-485 bus: XY-MD02 temperature/humidity transmitters.
//!
//! The gateway's `modbus_rtu` input polls transmitters on a shared bus; to test it without a
//! cabinet, [`ModbusBus`] answers read requests for one or more slave addresses exactly as an
//! XY-MD02 does (the map the gateway ships in `config/xy-md02.toml`), and [`serve_pty`] runs it
//! on the master side of a pseudo-terminal. Everything that produces bytes is a pure function of
//! the seed and the requests received, so the same seed and the same requests give the same
//! answers, byte for byte.
//!
//! Register map (per slave, big-endian words):
//! - function 4 (input registers) and, as many clones do, function 3: register 1 temperature
//!   (signed, tenths of °C), register 2 relative humidity (unsigned, tenths of %);
//! - function 3 only: 0x0101 slave address, 0x0102 baud code (0 = 9600), 0x0103 temperature
//!   correction, 0x0104 humidity correction (0).
//!
//! Any other register gives exception 02 (illegal data address), a count of 0 or over 125
//! exception 03, another function exception 01. Requests for an address not on the bus, and
//! broadcasts (address 0), get no answer, as on a real bus; a request whose CRC is wrong is
//! ignored. Each read that covers register 1 or 2 takes the transmitter's next sample of the
//! environment-station model (diurnal temperature, humidity that falls as it warms), one sample
//! every `sample_ms` of simulated time.
//!
//! Faults, per slave (`2:dead`) or per answer with a probability (`--faults timeout=0.1,...`):
//! no answer (timeout), a bad CRC, an exception (02 for a `:exception` slave, 06 "busy" when
//! drawn at random), noise bytes before an intact answer, a slow answer.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ioc_frames::modbus::{check_crc, request_len, with_crc, RequestLen};
use thiserror::Error;

use crate::models::env::EnvStation;
use crate::models::World;
use crate::rng::SimRng;
use crate::serial::{probability_pairs, write_nonblocking, Pty, PtyError};

/// Most registers one read may ask for (functions 3 and 4).
pub const MAX_READ: u16 = 125;

/// Exception code: the function is not supported.
pub const ILLEGAL_FUNCTION: u8 = 0x01;
/// Exception code: a register in the range does not exist.
pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
/// Exception code: the register count is out of range.
pub const ILLEGAL_DATA_VALUE: u8 = 0x03;
/// Exception code: the slave is busy (the random `exception` fault).
pub const SLAVE_DEVICE_BUSY: u8 = 0x06;

/// How one slave on the bus behaves, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaveMode {
    /// Answers correctly (random `--faults` still apply).
    Normal,
    /// Never answers (a transmitter with a broken wire).
    Dead,
    /// Answers with a wrong CRC.
    BadCrc,
    /// Answers every request with exception 02 (illegal data address).
    Exception,
    /// Noise bytes before every (intact) answer.
    Noise,
    /// Answers every request late (after `slow_ms`).
    Slow,
}

/// A slave address on the bus and its behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveSpec {
    /// Address, 1–247.
    pub address: u8,
    /// Behaviour.
    pub mode: SlaveMode,
}

/// Why a `--slaves` value could not be read.
#[derive(Debug, Error, PartialEq)]
#[error("slaves {0:?}: expected e.g. 1,2:dead,3:bad_crc,4:exception,5:noise,6:slow (addresses 1-247, each once)")]
pub struct SlaveSpecError(String);

/// Parses `1,2:dead,3:bad_crc,4:exception,5:noise,6:slow`.
pub fn parse_slaves(s: &str) -> Result<Vec<SlaveSpec>, SlaveSpecError> {
    let err = || SlaveSpecError(s.to_owned());
    let mut out: Vec<SlaveSpec> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (address, mode) = match part.split_once(':') {
            Some((a, m)) => (a.trim(), m.trim()),
            None => (part, "ok"),
        };
        let address: u8 = address.parse().map_err(|_| err())?;
        if !(1..=247).contains(&address) || out.iter().any(|o| o.address == address) {
            return Err(err());
        }
        let mode = match mode {
            "ok" | "normal" => SlaveMode::Normal,
            "dead" | "timeout" => SlaveMode::Dead,
            "bad_crc" | "crc" => SlaveMode::BadCrc,
            "exception" => SlaveMode::Exception,
            "noise" => SlaveMode::Noise,
            "slow" => SlaveMode::Slow,
            _ => return Err(err()),
        };
        out.push(SlaveSpec { address, mode });
    }
    if out.is_empty() {
        return Err(err());
    }
    Ok(out)
}

/// Probabilities, per answer of a `Normal` slave, of each fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModbusFaults {
    /// No answer.
    pub timeout: f64,
    /// A wrong CRC.
    pub bad_crc: f64,
    /// Exception 06 (slave device busy).
    pub exception: f64,
    /// 1–8 random bytes before the answer.
    pub noise: f64,
    /// The answer after `slow_ms`.
    pub slow: f64,
}

/// Why a Modbus `--faults` value could not be read.
#[derive(Debug, Error, PartialEq)]
#[error("faults {0:?}: expected e.g. timeout=0.05,bad_crc=0.02,exception=0.02,noise=0.02,slow=0.01 (probabilities in [0, 1])")]
pub struct ModbusFaultSpecError(String);

impl FromStr for ModbusFaults {
    type Err = ModbusFaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ModbusFaultSpecError(s.to_owned());
        let mut f = ModbusFaults::default();
        for (k, p) in probability_pairs(s).ok_or_else(err)? {
            match k {
                "timeout" => f.timeout = p,
                "bad_crc" | "crc" | "checksum" => f.bad_crc = p,
                "exception" => f.exception = p,
                "noise" => f.noise = p,
                "slow" => f.slow = p,
                _ => return Err(err()),
            }
        }
        Ok(f)
    }
}

/// What happened to one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnswerFault {
    /// Not answered.
    Timeout,
    /// CRC wrong.
    BadCrc,
    /// An exception instead of the data.
    Exception,
    /// Noise before the answer.
    Noise,
    /// Answered after `slow_ms`.
    Slow,
}

impl AnswerFault {
    /// snake_case name, as in the summary.
    pub fn name(self) -> &'static str {
        match self {
            AnswerFault::Timeout => "timeout",
            AnswerFault::BadCrc => "bad_crc",
            AnswerFault::Exception => "exception",
            AnswerFault::Noise => "noise",
            AnswerFault::Slow => "slow",
        }
    }
}

/// One request on the bus and what the bus did about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// The request frame (CRC included).
    pub request: Vec<u8>,
    /// The slave addressed (`None` for a broadcast or an address not on the bus: no answer).
    pub slave: Option<u8>,
    /// Bytes sent back (empty: no answer).
    pub answer: Vec<u8>,
    /// Extra delay before the answer, ms (the `slow` fault).
    pub delay_ms: u64,
    /// Faults applied (at most one of timeout / exception / bad CRC, plus noise and slow).
    pub faults: Vec<AnswerFault>,
    /// The exception code answered, if any (a correct answer to a bad request included).
    pub exception: Option<u8>,
    /// The XY-MD02 values the answer carries, as the gateway's map decodes them
    /// (`temperature` i16 × 0.1, `humidity` u16 × 0.1), for the fields the read covered. Set
    /// also when a fault spoils the answer (bad CRC) or holds it back (timeout), as these are
    /// the values the slave measured.
    pub values: BTreeMap<String, f64>,
}

impl Exchange {
    /// Whether a master receives a correct, timely, noise-free data answer.
    pub fn clean_answer(&self) -> bool {
        !self.answer.is_empty() && self.faults.is_empty() && self.exception.is_none()
    }
}

/// One XY-MD02 transmitter.
#[derive(Debug)]
struct Transmitter {
    mode: SlaveMode,
    station: EnvStation,
    rng: SimRng,
    samples: i64,
}

/// A bus of simulated transmitters (pure: requests in, answers out).
#[derive(Debug)]
pub struct ModbusBus {
    slaves: BTreeMap<u8, Transmitter>,
    world: World,
    faults: ModbusFaults,
    fault_rng: SimRng,
    start_ms: i64,
    sample_ms: i64,
    slow_ms: u64,
}

/// Tenths of a value, as a transmitter quantises it.
fn tenths(v: f64) -> i64 {
    (v * 10.0).round() as i64
}

/// The value the gateway decodes from `raw` tenths (`raw / 10`, nearest f64).
fn from_tenths(raw: i64) -> f64 {
    raw as f64 / 10.0
}

impl ModbusBus {
    /// A bus with `slaves`, simulated time starting at `start_ms`, one sample every `sample_ms`
    /// per transmitter, slow answers after `slow_ms`.
    pub fn new(
        seed: u64,
        slaves: &[SlaveSpec],
        faults: ModbusFaults,
        start_ms: i64,
        sample_ms: i64,
        slow_ms: u64,
    ) -> Self {
        let slaves = slaves
            .iter()
            .map(|s| {
                let mut rng = SimRng::new(seed ^ (u64::from(s.address) << 32) ^ 0x6d6f_6462);
                let station = EnvStation::new(
                    usize::from(s.address),
                    "bus".into(),
                    format!("th-{}", s.address),
                    &mut rng,
                );
                (
                    s.address,
                    Transmitter {
                        mode: s.mode,
                        station,
                        rng,
                        samples: 0,
                    },
                )
            })
            .collect();
        Self {
            slaves,
            world: World {
                utc_offset_hours: 7.0,
                ..World::default()
            },
            faults,
            fault_rng: SimRng::new(seed ^ 0x0b05_fa17),
            start_ms,
            sample_ms: sample_ms.max(1),
            slow_ms,
        }
    }

    /// The answer to one request frame (its CRC already checked by [`RequestFramer`]).
    pub fn handle(&mut self, request: &[u8]) -> Exchange {
        let mut ex = Exchange {
            request: request.to_vec(),
            slave: None,
            answer: Vec::new(),
            delay_ms: 0,
            faults: Vec::new(),
            exception: None,
            values: BTreeMap::new(),
        };
        let (Some(&address), Some(&function)) = (request.first(), request.get(1)) else {
            return ex;
        };
        let Some(tx) = self.slaves.get_mut(&address) else {
            return ex;
        };
        ex.slave = Some(address);

        // The correct answer first (sampling the model when the read covers the values).
        let mut body = match (function, request.get(2..6)) {
            (3 | 4, Some(&[ah, al, ch, cl])) => {
                let start = u16::from_be_bytes([ah, al]);
                let count = u16::from_be_bytes([ch, cl]);
                let end = u32::from(start) + u32::from(count);
                if count == 0 || count > MAX_READ {
                    vec![address, function | 0x80, ILLEGAL_DATA_VALUE]
                } else {
                    let covers_values =
                        (start..).take(usize::from(count)).any(|r| r == 1 || r == 2);
                    let sample = if covers_values {
                        let ts = self.start_ms + tx.samples * self.sample_ms;
                        tx.samples += 1;
                        let r = tx.station.read(ts, &self.world, &mut tx.rng);
                        Some((
                            tenths(r.temperature).clamp(-400, 1250) as i16,
                            tenths(r.humidity).clamp(0, 1000) as u16,
                        ))
                    } else {
                        None
                    };
                    let register = |r: u32| -> Option<u16> {
                        match (function, r, sample) {
                            (_, 1, Some((t, _))) => Some(t as u16),
                            (_, 2, Some((_, h))) => Some(h),
                            (3, 0x0101, _) => Some(u16::from(address)),
                            (3, 0x0102..=0x0104, _) => Some(0),
                            _ => None,
                        }
                    };
                    let words: Option<Vec<u16>> = (u32::from(start)..end).map(register).collect();
                    match words {
                        Some(words) => {
                            if let Some((t, h)) = sample {
                                if (u32::from(start)..end).contains(&1) {
                                    ex.values
                                        .insert("temperature".into(), from_tenths(i64::from(t)));
                                }
                                if (u32::from(start)..end).contains(&2) {
                                    ex.values
                                        .insert("humidity".into(), from_tenths(i64::from(h)));
                                }
                            }
                            let mut b = vec![address, function, (count * 2) as u8];
                            for w in words {
                                b.extend(w.to_be_bytes());
                            }
                            b
                        }
                        None => vec![address, function | 0x80, ILLEGAL_DATA_ADDRESS],
                    }
                }
            }
            _ => vec![address, function | 0x80, ILLEGAL_FUNCTION],
        };

        // Faults: the random draws are made for every answer, so the fault stream does not
        // depend on which slave is faulty.
        let f = self.faults;
        let rng = &mut self.fault_rng;
        let draws = [
            rng.chance(f.timeout),
            rng.chance(f.exception),
            rng.chance(f.bad_crc),
            rng.chance(f.noise),
            rng.chance(f.slow),
        ];
        let normal = tx.mode == SlaveMode::Normal;
        let timeout = tx.mode == SlaveMode::Dead || (normal && draws[0]);
        let exception_mode = tx.mode == SlaveMode::Exception;
        let exception = exception_mode || (normal && draws[1]);
        let bad_crc = tx.mode == SlaveMode::BadCrc || (normal && draws[2]);
        let noise = tx.mode == SlaveMode::Noise || (normal && draws[3]);
        let slow = tx.mode == SlaveMode::Slow || (normal && draws[4]);
        if timeout {
            ex.faults.push(AnswerFault::Timeout);
            return ex;
        }
        if exception {
            let code = if exception_mode {
                ILLEGAL_DATA_ADDRESS
            } else {
                SLAVE_DEVICE_BUSY
            };
            body = vec![address, function | 0x80, code];
            ex.faults.push(AnswerFault::Exception);
            ex.values.clear();
        }
        if let Some(&code) = body
            .get(2)
            .filter(|_| body.get(1).is_some_and(|f| f & 0x80 != 0))
        {
            ex.exception = Some(code);
        }
        let mut frame = with_crc(body);
        if bad_crc {
            let at = frame.len() - 2;
            frame[at] ^= 1 + rng.below(255) as u8;
            ex.faults.push(AnswerFault::BadCrc);
        }
        if noise {
            let n = 1 + rng.below(8) as usize;
            let mut bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
            bytes.extend_from_slice(&frame);
            frame = bytes;
            ex.faults.push(AnswerFault::Noise);
        }
        if slow {
            ex.delay_ms = self.slow_ms;
            ex.faults.push(AnswerFault::Slow);
        }
        ex.answer = frame;
        ex
    }
}

/// Splits the byte stream a master sends into request frames.
///
/// Requests for functions 1–6 are 8 bytes, 15 and 16 are 9 + byte count; a frame whose CRC
/// does not match, or that starts with another function code, is resynchronised one byte
/// further on (what a slave hears as line noise; so other functions get no answer). A partial
/// frame is dropped at the next silence ([`RequestFramer::silence`]), as RTU frames end with
/// 3.5 character times of silence.
#[derive(Debug, Default)]
pub struct RequestFramer {
    buf: Vec<u8>,
}

impl RequestFramer {
    /// Adds received bytes; returns the complete requests (CRC checked) they finish.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let len = match request_len(&self.buf) {
                RequestLen::Incomplete => break,
                RequestLen::Bytes(n) => n,
                RequestLen::UnknownFunction => {
                    // not a function this bus can delimit: treat the byte as noise
                    self.buf.remove(0);
                    continue;
                }
            };
            let Some(frame) = self.buf.get(..len) else {
                break;
            };
            if check_crc(frame).is_ok() {
                out.push(frame.to_vec());
                self.buf.drain(..len);
            } else {
                self.buf.remove(0);
            }
        }
        out
    }

    /// The line went quiet: whatever is buffered is not a frame we can complete.
    pub fn silence(&mut self) {
        self.buf.clear();
    }

    /// Bytes waiting for the rest of their frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Totals of a bus run.
#[derive(Debug, Default, Clone, serde::Serialize, PartialEq)]
pub struct BusSummary {
    /// Request frames received (any address).
    pub requests: u64,
    /// Requests for addresses on the bus.
    pub for_our_slaves: u64,
    /// Answers sent (exceptions included).
    pub answers: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Bytes the master never read (dropped).
    pub dropped_bytes: u64,
    /// Faults applied, by kind.
    pub faults: BTreeMap<String, u64>,
}

/// When [`serve_pty`] stops.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// After this many requests for our slaves.
    pub requests: Option<u64>,
    /// After this much wall time.
    pub duration: Option<Duration>,
    /// Turnaround: how long a slave takes before answering (a few ms on real devices).
    pub turnaround: Duration,
}

/// Runs `bus` on the master side of `pty` until a limit is reached: reads requests, answers
/// them, and calls `on_exchange(exchange, bytes_written, unix_ms_when_written)` for each
/// request addressed to one of our slaves.
pub fn serve_pty(
    pty: &Pty,
    bus: &mut ModbusBus,
    limits: ServeLimits,
    mut on_exchange: impl FnMut(&Exchange, usize, i64),
) -> Result<BusSummary, PtyError> {
    let started = Instant::now();
    let mut framer = RequestFramer::default();
    let mut summary = BusSummary::default();
    let mut buf = [0u8; 512];
    let mut last_byte = Instant::now();
    loop {
        if limits.requests.is_some_and(|n| summary.for_our_slaves >= n)
            || limits.duration.is_some_and(|d| started.elapsed() >= d)
        {
            return Ok(summary);
        }
        // The master fd is non-blocking: poll it every millisecond. 4 ms without a byte
        // (≈ 3.5 characters at 9600 baud) ends an RTU frame.
        let n = match nix::unistd::read(pty.master.as_fd(), &mut buf) {
            Ok(n) => n,
            // EAGAIN: nothing to read; EIO: no reader has the terminal open (yet, or any more).
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EIO) => 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(source) => {
                return Err(PtyError::Sys {
                    what: "read",
                    source,
                })
            }
        };
        if n == 0 {
            if framer.pending() > 0 && last_byte.elapsed() >= Duration::from_millis(4) {
                framer.silence();
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        last_byte = Instant::now();
        for request in framer.push(buf.get(..n).unwrap_or_default()) {
            summary.requests += 1;
            let ex = bus.handle(&request);
            if ex.slave.is_none() {
                continue;
            }
            summary.for_our_slaves += 1;
            for f in &ex.faults {
                *summary.faults.entry(f.name().to_owned()).or_default() += 1;
            }
            let mut written = 0;
            if !ex.answer.is_empty() {
                std::thread::sleep(limits.turnaround + Duration::from_millis(ex.delay_ms));
                written = write_nonblocking(&pty.master, &ex.answer)?;
                summary.answers += 1;
                summary.bytes += written as u64;
                summary.dropped_bytes += (ex.answer.len() - written) as u64;
            }
            on_exchange(&ex, written, unix_ms());
            if limits.requests.is_some_and(|n| summary.for_our_slaves >= n) {
                return Ok(summary);
            }
        }
    }
}

/// The wall clock, Unix milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    use ioc_frames::modbus::crc16;

    fn read_req(slave: u8, function: u8, address: u16, count: u16) -> Vec<u8> {
        ioc_frames::modbus::read_request(slave, function, address, count).to_vec()
    }

    fn bus(slaves: &str, faults: &str) -> ModbusBus {
        ModbusBus::new(
            7,
            &parse_slaves(slaves).unwrap(),
            faults.parse().unwrap(),
            1_795_480_200_000,
            5_000,
            1_500,
        )
    }

    #[test]
    fn xy_md02_request_from_the_config_comment_is_answered() {
        // 01 04 00 01 00 02 20 0b: the request config/xy-md02.toml documents.
        let req = read_req(1, 4, 1, 2);
        assert_eq!(req, vec![0x01, 0x04, 0x00, 0x01, 0x00, 0x02, 0x20, 0x0b]);
        let mut b = bus("1", "");
        let ex = b.handle(&req);
        assert!(ex.clean_answer());
        let a = &ex.answer;
        assert_eq!(a.len(), 9);
        assert_eq!(&a[..3], &[1, 4, 4]);
        assert_eq!(crc16(&a[..7]).to_le_bytes(), [a[7], a[8]]);
        let t = f64::from(i16::from_be_bytes([a[3], a[4]])) / 10.0;
        let h = f64::from(u16::from_be_bytes([a[5], a[6]])) / 10.0;
        assert_eq!(ex.values["temperature"], t);
        assert_eq!(ex.values["humidity"], h);
        assert!((15.0..40.0).contains(&t), "{t}");
        assert!((30.0..=99.5).contains(&h), "{h}");
    }

    #[test]
    fn unknown_slaves_and_broadcasts_get_no_answer() {
        let mut b = bus("1,2", "");
        for req in [read_req(3, 4, 1, 2), read_req(0, 4, 1, 2)] {
            let ex = b.handle(&req);
            assert_eq!((ex.slave, ex.answer.len()), (None, 0));
        }
    }

    #[test]
    fn bad_requests_get_the_right_exception() {
        let mut b = bus("1", "");
        let exc = |b: &mut ModbusBus, req: Vec<u8>| {
            let ex = b.handle(&req);
            assert_eq!(ex.answer.len(), 5);
            assert_eq!(
                crc16(&ex.answer[..3]).to_le_bytes(),
                [ex.answer[3], ex.answer[4]]
            );
            (ex.answer[1], ex.exception)
        };
        assert_eq!(exc(&mut b, read_req(1, 4, 3, 1)), (0x84, Some(2)));
        assert_eq!(exc(&mut b, read_req(1, 4, 0, 2)), (0x84, Some(2)));
        assert_eq!(exc(&mut b, read_req(1, 4, 1, 0)), (0x84, Some(3)));
        assert_eq!(exc(&mut b, read_req(1, 4, 1, 126)), (0x84, Some(3)));
        assert_eq!(exc(&mut b, read_req(1, 6, 1, 1)), (0x86, Some(1)));
        assert_eq!(exc(&mut b, read_req(1, 4, 0x0101, 1)), (0x84, Some(2)));
        // function 3: the values and the configuration registers
        let ex = b.handle(&read_req(1, 3, 0x0101, 4));
        assert_eq!(ex.answer[..11], [1, 3, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(ex.values.is_empty());
        let ex = b.handle(&read_req(1, 3, 2, 1));
        assert_eq!(ex.values.keys().collect::<Vec<_>>(), vec!["humidity"]);
    }

    #[test]
    fn per_slave_modes_do_what_they_say() {
        let mut b = bus("1,2:dead,3:bad_crc,4:exception,5:noise,6:slow", "");
        for _ in 0..20 {
            let ok = b.handle(&read_req(1, 4, 1, 2));
            assert!(ok.clean_answer());
            let dead = b.handle(&read_req(2, 4, 1, 2));
            assert_eq!(
                (dead.answer.len(), &dead.faults[..]),
                (0, &[AnswerFault::Timeout][..])
            );
            assert_eq!(dead.values.len(), 2, "the dead slave still measured");
            let crc = b.handle(&read_req(3, 4, 1, 2));
            assert_eq!(crc.answer.len(), 9);
            assert_eq!(&crc.answer[..3], &[3, 4, 4]);
            assert_ne!(
                crc16(&crc.answer[..7]).to_le_bytes(),
                [crc.answer[7], crc.answer[8]]
            );
            let exc = b.handle(&read_req(4, 4, 1, 2));
            assert_eq!(exc.answer, with_crc(vec![4, 0x84, 2]));
            assert!(exc.values.is_empty());
            let noise = b.handle(&read_req(5, 4, 1, 2));
            let n = noise.answer.len() - 9;
            assert!((1..=8).contains(&n));
            let tail = &noise.answer[n..];
            assert_eq!(&tail[..3], &[5, 4, 4]);
            assert_eq!(crc16(&tail[..7]).to_le_bytes(), [tail[7], tail[8]]);
            let slow = b.handle(&read_req(6, 4, 1, 2));
            assert_eq!((slow.delay_ms, slow.answer.len()), (1_500, 9));
        }
    }

    #[test]
    fn random_faults_hit_at_their_rates() {
        let mut b = bus(
            "1",
            "timeout=0.1,bad_crc=0.1,exception=0.1,noise=0.1,slow=0.1",
        );
        let mut seen: BTreeMap<AnswerFault, u32> = BTreeMap::new();
        for _ in 0..3000 {
            let ex = b.handle(&read_req(1, 4, 1, 2));
            for f in &ex.faults {
                *seen.entry(*f).or_default() += 1;
            }
            if ex.faults.contains(&AnswerFault::Exception) {
                assert_eq!(ex.exception, Some(SLAVE_DEVICE_BUSY));
            }
        }
        for f in [
            AnswerFault::Timeout,
            AnswerFault::BadCrc,
            AnswerFault::Exception,
            AnswerFault::Noise,
            AnswerFault::Slow,
        ] {
            let n = seen.get(&f).copied().unwrap_or(0);
            assert!((180..420).contains(&n), "{f:?}: {n}");
        }
    }

    #[test]
    fn same_seed_same_answers() {
        let run = |seed| {
            let mut b = ModbusBus::new(
                seed,
                &parse_slaves("1,2,9").unwrap(),
                "noise=0.2,bad_crc=0.1".parse().unwrap(),
                0,
                1000,
                100,
            );
            (0..300u16)
                .flat_map(|i| {
                    b.handle(&read_req([1, 2, 9][usize::from(i % 3)], 4, 1, 2))
                        .answer
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn framer_finds_requests_in_noise_and_pieces() {
        let mut f = RequestFramer::default();
        let a = read_req(1, 4, 1, 2);
        let b = read_req(2, 3, 0x101, 1);
        let mut stream = vec![0x00, 0xff, 0x01];
        stream.extend(&a);
        stream.extend(&b);
        let mut got = Vec::new();
        for piece in stream.chunks(3) {
            got.extend(f.push(piece));
        }
        assert_eq!(got, vec![a, b]);
        // write multiple registers: 9 + 4 bytes
        let w = with_crc(vec![1, 16, 0, 1, 0, 2, 4, 0, 1, 0, 2]);
        assert_eq!(f.push(&w), vec![w.clone()]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn slave_spec_parsing() {
        assert_eq!(
            parse_slaves("1, 7:dead,8:crc").unwrap(),
            vec![
                SlaveSpec {
                    address: 1,
                    mode: SlaveMode::Normal
                },
                SlaveSpec {
                    address: 7,
                    mode: SlaveMode::Dead
                },
                SlaveSpec {
                    address: 8,
                    mode: SlaveMode::BadCrc
                },
            ]
        );
        for bad in ["", "0", "248", "1,1", "1:broken", "x"] {
            assert!(parse_slaves(bad).is_err(), "{bad}");
        }
        assert!("slow=2".parse::<ModbusFaults>().is_err());
        assert_eq!("crc=0.5".parse::<ModbusFaults>().unwrap().bad_crc, 0.5);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut f = RequestFramer::default();
            let mut b = bus("1,2:bad_crc,3:noise", "noise=0.3");
            for req in f.push(&bytes) {
                let _ = b.handle(&req);
            }
            let _ = b.handle(&bytes);
        }
    }
}
