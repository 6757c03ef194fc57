//! Serial particulate sensors: PMS5003 and SDS011 byte streams, with line faults, into a pty.
//!
//! The gateway's serial decoders need byte streams that look like a real UART: frames back to
//! back at the sensor's rate, sometimes garbage between them, a corrupted byte that breaks the
//! checksum, a frame cut short. [`SerialStream`] produces those bytes deterministically from a
//! seed, with concentrations from the environment-station model (so they follow the city day).
//! [`open_pty`] creates a raw-mode pseudo-terminal whose slave path the gateway opens like a
//! USB serial adapter.
//!
//! Frame formats (public datasheets) are `ioc_frames::{pms5003, sds011}`, the codec the gateway
//! decodes with:
//! - PMS5003, 32 bytes: `42 4d`, length `00 1c`, 13 big-endian u16 data words (PM1.0/2.5/10 at
//!   CF=1, the same under atmospheric conditions, particle counts >0.3/0.5/1/2.5/5/10 µm per
//!   0.1 L, reserved), then a u16 sum of the first 30 bytes.
//! - SDS011, 10 bytes: `aa c0`, PM2.5×10 (u16 LE), PM10×10 (u16 LE), device id (2 bytes),
//!   checksum = low byte of the sum of the six data bytes, `ab`.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;

use ioc_frames::{pms5003, sds011};
use thiserror::Error;

use crate::models::env::EnvStation;
use crate::models::World;
use crate::rng::SimRng;

/// Which sensor to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialDevice {
    /// Plantower PMS5003 (active mode, 9600 8N1).
    Pms5003,
    /// Nova SDS011 (active mode, 9600 8N1).
    Sds011,
}

/// The three values of a PMS5003 reading group (µg/m³).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmTriple {
    /// PM1.0.
    pub pm1_0: u16,
    /// PM2.5.
    pub pm2_5: u16,
    /// PM10.
    pub pm10: u16,
}

/// Everything a PMS5003 frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pms5003Reading {
    /// Concentrations at CF=1 (factory calibration particle).
    pub cf1: PmTriple,
    /// Concentrations under atmospheric conditions.
    pub atmospheric: PmTriple,
    /// Particles per 0.1 L beyond 0.3, 0.5, 1.0, 2.5, 5.0 and 10 µm.
    pub counts: [u16; 6],
    /// The reserved word (firmware version and error code on real units).
    pub reserved: u16,
}

/// Encodes a PMS5003 frame.
pub fn pms5003_frame(r: &Pms5003Reading) -> [u8; 32] {
    pms5003::encode(&[
        r.cf1.pm1_0,
        r.cf1.pm2_5,
        r.cf1.pm10,
        r.atmospheric.pm1_0,
        r.atmospheric.pm2_5,
        r.atmospheric.pm10,
        r.counts[0],
        r.counts[1],
        r.counts[2],
        r.counts[3],
        r.counts[4],
        r.counts[5],
        r.reserved,
    ])
}

/// Encodes an SDS011 data frame; concentrations in tenths of µg/m³.
pub fn sds011_frame(pm2_5_tenths: u16, pm10_tenths: u16, device_id: u16) -> [u8; 10] {
    sds011::encode(&sds011::Frame::Data(sds011::Measurement {
        pm2_5_tenths,
        pm10_tenths,
        device_id: device_id.to_be_bytes(),
    }))
}

/// The names of a PMS5003 frame's first twelve data words, as the gateway reports them.
const PMS5003_FIELDS: [&str; 12] = [
    "pm1_0_cf1",
    "pm2_5_cf1",
    "pm10_cf1",
    "pm1_0",
    "pm2_5",
    "pm10",
    "n0_3",
    "n0_5",
    "n1_0",
    "n2_5",
    "n5_0",
    "n10",
];

/// The fields the gateway decodes from an intact frame (measurement `air_quality`, tag
/// `model` = `pms5003` / `sds011`): PMS5003 `pm1_0_cf1`, `pm2_5_cf1`, `pm10_cf1`, `pm1_0`,
/// `pm2_5`, `pm10` (µg/m³) and `n0_3` … `n10` (per 0.1 L); SDS011 `pm2_5`, `pm10` (raw / 10).
/// Empty if `frame` is not a whole frame of `device`.
pub fn frame_fields(device: SerialDevice, frame: &[u8]) -> BTreeMap<String, f64> {
    match device {
        SerialDevice::Pms5003 => match <&[u8; pms5003::FRAME_LEN]>::try_from(frame) {
            Ok(frame) => PMS5003_FIELDS
                .iter()
                .zip(pms5003::data_words(frame))
                .map(|(name, word)| ((*name).to_owned(), f64::from(word)))
                .collect(),
            Err(_) => BTreeMap::new(),
        },
        SerialDevice::Sds011 => match *frame {
            [_, _, a, b, c, d, e, f, _, _] => {
                let m = sds011::Measurement::from_data(&[a, b, c, d, e, f]);
                BTreeMap::from([
                    ("pm2_5".into(), f64::from(m.pm2_5_tenths) / 10.0),
                    ("pm10".into(), f64::from(m.pm10_tenths) / 10.0),
                ])
            }
            _ => BTreeMap::new(),
        },
    }
}

/// Probabilities, per frame, of each line fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SerialFaults {
    /// 1–8 random bytes before the frame.
    pub noise: f64,
    /// One data byte changed, checksum left as it was.
    pub checksum: f64,
    /// The frame cut short (the next frame follows at once).
    pub truncate: f64,
}

/// Why a `--faults` value could not be read.
#[derive(Debug, Error, PartialEq)]
#[error(
    "faults {0:?}: expected e.g. noise=0.05,checksum=0.02,truncate=0.01 (probabilities in [0, 1])"
)]
pub struct FaultSpecError(String);

impl FromStr for SerialFaults {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FaultSpecError(s.to_owned());
        let mut f = SerialFaults::default();
        for (k, p) in probability_pairs(s).ok_or_else(err)? {
            match k {
                "noise" => f.noise = p,
                "checksum" => f.checksum = p,
                "truncate" => f.truncate = p,
                _ => return Err(err()),
            }
        }
        Ok(f)
    }
}

/// The `name=probability` pairs of a `--faults` value (`noise=0.05,checksum=0.02`), or `None`
/// when a part has no `=`, a value is not a number, or a probability is outside [0, 1].
pub(crate) fn probability_pairs(s: &str) -> Option<Vec<(&str, f64)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=')?;
            let p: f64 = v.trim().parse().ok()?;
            (0.0..=1.0).contains(&p).then_some((k.trim(), p))
        })
        .collect()
}

/// A line fault that was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LineFault {
    /// Garbage bytes before a frame.
    Noise,
    /// A frame whose checksum does not match.
    Checksum,
    /// A frame cut short.
    Truncate,
}

/// One chunk of the stream: the bytes to write and what they contain.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Bytes to write.
    pub bytes: Vec<u8>,
    /// The intact frame as the sensor meant it (before faults).
    pub frame: Vec<u8>,
    /// Faults applied to this chunk.
    pub faults: Vec<LineFault>,
}

/// A deterministic serial sensor.
#[derive(Debug)]
pub struct SerialStream {
    device: SerialDevice,
    station: EnvStation,
    world: World,
    rng: SimRng,
    fault_rng: SimRng,
    faults: SerialFaults,
    ts_ms: i64,
    period_ms: i64,
    device_id: u16,
}

impl SerialStream {
    /// A sensor starting at simulated `start_ms`, one frame every `period_ms`.
    pub fn new(
        device: SerialDevice,
        seed: u64,
        faults: SerialFaults,
        start_ms: i64,
        period_ms: i64,
    ) -> Self {
        let mut rng = SimRng::new(seed);
        let station = EnvStation::new(0, "serial".into(), "serial-0".into(), &mut rng);
        let device_id = rng.below(0x10000) as u16;
        Self {
            device,
            station,
            world: World {
                utc_offset_hours: 7.0,
                ..World::default()
            },
            rng,
            fault_rng: SimRng::new(seed ^ 0x5e71_a1f0),
            faults,
            ts_ms: start_ms,
            period_ms: period_ms.max(1),
            device_id,
        }
    }

    fn frame(&mut self) -> Vec<u8> {
        let r = self.station.read(self.ts_ms, &self.world, &mut self.rng);
        self.ts_ms += self.period_ms;
        match self.device {
            SerialDevice::Sds011 => {
                let tenths = |v: f64| (v * 10.0).round().clamp(0.0, 9999.0) as u16;
                sds011_frame(tenths(r.pm2_5), tenths(r.pm10), self.device_id).to_vec()
            }
            SerialDevice::Pms5003 => {
                let ug = |v: f64| v.round().clamp(0.0, 999.0) as u16;
                let atmospheric = PmTriple {
                    pm1_0: ug(r.pm2_5 * 0.68),
                    pm2_5: ug(r.pm2_5),
                    pm10: ug(r.pm10),
                };
                let cf = |v: u16| {
                    if v <= 30 {
                        v
                    } else {
                        (f64::from(v) * (1.0 + f64::from(v - 30) / 100.0))
                            .round()
                            .min(1500.0) as u16
                    }
                };
                let cf1 = PmTriple {
                    pm1_0: cf(atmospheric.pm1_0),
                    pm2_5: cf(atmospheric.pm2_5),
                    pm10: cf(atmospheric.pm10),
                };
                let n03 = (r.pm2_5 * 62.0 * self.rng.uniform(0.9, 1.1)).min(65_000.0);
                let counts = [
                    n03 as u16,
                    (n03 * 0.31) as u16,
                    (n03 * 0.06) as u16,
                    (n03 * 0.008 * (r.pm10 / r.pm2_5.max(1.0))) as u16,
                    (n03 * 0.002) as u16,
                    (n03 * 0.0006) as u16,
                ];
                pms5003_frame(&Pms5003Reading {
                    cf1,
                    atmospheric,
                    counts,
                    reserved: 0x9700,
                })
                .to_vec()
            }
        }
    }

    /// The next frame, with any faults applied.
    pub fn next_chunk(&mut self) -> Chunk {
        let frame = self.frame();
        let f = self.faults;
        let rng = &mut self.fault_rng;
        let (noise, corrupt, truncate) = (
            rng.chance(f.noise),
            rng.chance(f.checksum),
            rng.chance(f.truncate),
        );
        let mut faults = Vec::new();
        let mut bytes = Vec::with_capacity(frame.len() + 8);
        if noise {
            for _ in 0..1 + rng.below(8) {
                bytes.push(rng.below(256) as u8);
            }
            faults.push(LineFault::Noise);
        }
        let mut body = frame.clone();
        if corrupt {
            // A data byte (never the header, checksum or tail), changed by a non-zero delta.
            let (first, last) = match self.device {
                SerialDevice::Pms5003 => (4, 29),
                SerialDevice::Sds011 => (2, 7),
            };
            let i = first + rng.below((last - first + 1) as u64) as usize;
            body[i] = body[i].wrapping_add(1 + rng.below(255) as u8);
            faults.push(LineFault::Checksum);
        }
        if truncate {
            let keep = 1 + rng.below((body.len() - 2) as u64) as usize;
            body.truncate(keep);
            faults.push(LineFault::Truncate);
        }
        bytes.extend_from_slice(&body);
        Chunk {
            bytes,
            frame,
            faults,
        }
    }
}

/// Why a pseudo-terminal could not be set up.
#[derive(Debug, Error)]
pub enum PtyError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// Which step.
        what: &'static str,
        /// The errno.
        source: nix::Error,
    },
}

/// A raw-mode pseudo-terminal: write to `master`, the gateway opens `path`.
#[derive(Debug)]
pub struct Pty {
    /// Our end (non-blocking: bytes nobody reads are dropped, as on a real line).
    pub master: OwnedFd,
    /// Kept open so the terminal survives the reader closing and reopening it (the terminal
    /// survives that anyway while `master` is open; [`Pty::wait_for_reader`] lets it go so that
    /// it can tell when someone else opens the terminal).
    pub slave: Option<OwnedFd>,
    /// The slave's path, e.g. `/dev/pts/7`.
    pub path: PathBuf,
}

impl Pty {
    /// Whether a process other than us has the terminal open (the master then stops
    /// reporting a hang-up). Always true while we hold `slave` ourselves.
    pub fn has_reader(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = nix::libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: nix::libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { nix::libc::poll(&mut pfd, 1, 0) };
        n >= 0 && pfd.revents & nix::libc::POLLHUP == 0
    }

    /// Closes our own handle on the terminal and waits until another process (the gateway)
    /// opens it, at most `timeout`. Returns whether it did.
    pub fn wait_for_reader(&mut self, timeout: std::time::Duration) -> bool {
        self.slave = None;
        let until = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < until {
            if self.has_reader() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.has_reader()
    }
}

/// Opens a pseudo-terminal in raw mode (no echo, no line editing, 8-bit clean).
pub fn open_pty() -> Result<Pty, PtyError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let sys = |what| move |source| PtyError::Sys { what, source };
    let pair = nix::pty::openpty(None, None).map_err(sys("openpty"))?;
    let mut tio = tcgetattr(pair.slave.as_fd()).map_err(sys("tcgetattr"))?;
    cfmakeraw(&mut tio);
    tcsetattr(pair.slave.as_fd(), SetArg::TCSANOW, &tio).map_err(sys("tcsetattr"))?;
    let flags = fcntl(pair.master.as_fd(), FcntlArg::F_GETFL).map_err(sys("fcntl(F_GETFL)"))?;
    fcntl(
        pair.master.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(sys("fcntl(F_SETFL)"))?;
    let path = nix::unistd::ttyname(pair.slave.as_fd()).map_err(sys("ttyname"))?;
    Ok(Pty {
        master: pair.master,
        slave: Some(pair.slave),
        path,
    })
}

/// Totals of a serial run.
#[derive(Debug, Default, Clone, serde::Serialize, PartialEq)]
pub struct SerialSummary {
    /// Frames produced.
    pub frames: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Bytes dropped because nobody read them in time.
    pub dropped_bytes: u64,
    /// Injected faults by kind.
    pub faults: BTreeMap<String, u64>,
}

/// Writes `chunk` to a non-blocking fd, dropping what does not fit. Returns bytes written.
pub fn write_nonblocking(fd: &OwnedFd, bytes: &[u8]) -> Result<usize, PtyError> {
    let mut written = 0;
    while written < bytes.len() {
        match nix::unistd::write(fd, &bytes[written..]) {
            Ok(n) => written += n,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(source) => {
                return Err(PtyError::Sys {
                    what: "write",
                    source,
                })
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PMS5003 frame captured from a real sensor (PyPMS test data): checksum 0x03c5.
    const PMS_CAPTURE: &str = "424d001c0005000d00160005000d001602fd00fc001d000f00060006970003c5";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn pms5003_encoder_reproduces_a_real_capture() {
        let r = Pms5003Reading {
            cf1: PmTriple {
                pm1_0: 5,
                pm2_5: 13,
                pm10: 22,
            },
            atmospheric: PmTriple {
                pm1_0: 5,
                pm2_5: 13,
                pm10: 22,
            },
            counts: [765, 252, 29, 15, 6, 6],
            reserved: 0x9700,
        };
        assert_eq!(pms5003_frame(&r).to_vec(), hex(PMS_CAPTURE));
    }

    #[test]
    fn sds011_encoder_reproduces_the_datasheet_example() {
        // Nova SDS011 protocol V1.3: AA C0 D4 04 3A 0A A1 60 1D AB = PM2.5 123.6, PM10 261.8.
        assert_eq!(
            sds011_frame(1236, 2618, 0xa160).to_vec(),
            hex("aac0d4043a0aa1601dab")
        );
    }

    fn pms_ok(f: &[u8]) -> bool {
        <&[u8; 32]>::try_from(f).is_ok_and(|f| pms5003::parse(f).is_ok())
    }

    fn sds_ok(f: &[u8]) -> bool {
        <&[u8; 10]>::try_from(f)
            .is_ok_and(|f| matches!(sds011::parse(f), Ok(sds011::Frame::Data(_))))
    }

    #[test]
    fn clean_streams_are_valid_frames_back_to_back() {
        for (device, ok, len) in [
            (SerialDevice::Pms5003, pms_ok as fn(&[u8]) -> bool, 32),
            (SerialDevice::Sds011, sds_ok, 10),
        ] {
            let mut s =
                SerialStream::new(device, 1, SerialFaults::default(), 1_795_480_200_000, 1000);
            for _ in 0..500 {
                let c = s.next_chunk();
                assert_eq!(c.bytes, c.frame);
                assert_eq!(c.bytes.len(), len);
                assert!(ok(&c.bytes), "{:02x?}", c.bytes);
                assert!(c.faults.is_empty());
            }
        }
    }

    #[test]
    fn each_fault_does_what_it_says() {
        let faults: SerialFaults = "noise=0.2,checksum=0.2,truncate=0.2".parse().unwrap();
        for (device, ok) in [
            (SerialDevice::Pms5003, pms_ok as fn(&[u8]) -> bool),
            (SerialDevice::Sds011, sds_ok),
        ] {
            let mut s = SerialStream::new(device, 2, faults, 0, 1000);
            let mut seen = BTreeMap::new();
            for _ in 0..2000 {
                let c = s.next_chunk();
                assert!(ok(&c.frame));
                for f in &c.faults {
                    *seen.entry(*f).or_insert(0) += 1;
                }
                let noise = c.faults.contains(&LineFault::Noise);
                let corrupt = c.faults.contains(&LineFault::Checksum);
                let truncated = c.faults.contains(&LineFault::Truncate);
                if !noise && !corrupt && !truncated {
                    assert_eq!(c.bytes, c.frame);
                }
                if !noise && !truncated {
                    assert_eq!(c.bytes.len(), c.frame.len());
                    assert_eq!(
                        ok(&c.bytes),
                        !corrupt,
                        "corrupt frames must fail their checksum"
                    );
                    assert_eq!(&c.bytes[..2], &c.frame[..2], "header kept");
                }
                if truncated && !noise {
                    assert!(c.bytes.len() < c.frame.len() && !c.bytes.is_empty());
                }
                if noise && !truncated && !corrupt {
                    assert!(c.bytes.len() > c.frame.len() && c.bytes.len() <= c.frame.len() + 8);
                    assert_eq!(&c.bytes[c.bytes.len() - c.frame.len()..], &c.frame[..]);
                }
            }
            for f in [LineFault::Noise, LineFault::Checksum, LineFault::Truncate] {
                let n = seen.get(&f).copied().unwrap_or(0);
                assert!((300..500).contains(&n), "{device:?} {f:?}: {n}");
            }
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let faults: SerialFaults = "noise=0.1,checksum=0.1,truncate=0.1".parse().unwrap();
        let run = |seed| {
            let mut s = SerialStream::new(SerialDevice::Pms5003, seed, faults, 0, 1000);
            (0..300)
                .flat_map(|_| s.next_chunk().bytes)
                .collect::<Vec<u8>>()
        };
        assert_eq!(run(4), run(4));
        assert_ne!(run(4), run(5));
    }

    #[test]
    fn fault_spec_parsing() {
        assert_eq!("".parse::<SerialFaults>(), Ok(SerialFaults::default()));
        assert_eq!(
            "checksum=0.5".parse::<SerialFaults>().unwrap().checksum,
            0.5
        );
        assert!("noise=2".parse::<SerialFaults>().is_err());
        assert!("colour=0.1".parse::<SerialFaults>().is_err());
        assert!("noise".parse::<SerialFaults>().is_err());
    }

    #[test]
    fn pty_carries_frames_to_a_reader() {
        use std::io::Read;
        let pty = open_pty().unwrap();
        let mut reader = std::fs::File::open(&pty.path).unwrap();
        let mut s = SerialStream::new(SerialDevice::Sds011, 3, SerialFaults::default(), 0, 1000);
        let mut sent = Vec::new();
        for _ in 0..20 {
            let c = s.next_chunk();
            assert_eq!(
                write_nonblocking(&pty.master, &c.bytes).unwrap(),
                c.bytes.len()
            );
            sent.extend_from_slice(&c.bytes);
        }
        let mut got = vec![0u8; sent.len()];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(
            got, sent,
            "raw mode must pass every byte unchanged (0x0d, 0x0a, 0x11 included)"
        );
    }
}
