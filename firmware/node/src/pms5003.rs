//! Plantower PMS5003 particulate sensor driver over `embedded_io` (9600 8N1 UART).
//!
//! Exists so the node can run the sensor in passive mode (it answers only when asked, so the
//! node decides the sample rate and the fan/laser can sleep between samples) and validate its
//! 32-byte data frames:
//!
//! | bytes | content                                                        |
//! |-------|----------------------------------------------------------------|
//! | 0..2  | start `0x42 0x4D`                                              |
//! | 2..4  | frame length, big-endian, always 28 (= 2*13 data + 2 check)    |
//! | 4..30 | 13 big-endian words: PM1.0/2.5/10 CF=1, PM1.0/2.5/10 atmospheric, 6 particle counts, reserved |
//! | 30..32| check: 16-bit sum of bytes 0..30, big-endian                   |
//!
//! Commands are `42 4D CMD DATAH DATAL LRCH LRCL` with LRC the 16-bit sum of the first five
//! bytes; mode changes and sleep/wake are answered by an 8-byte frame of length 4, which
//! [`Pms5003::read_frame`] skips.

use embedded_io::{Read, ReadExactError, Write};

/// Start bytes of every frame.
pub const START: [u8; 2] = [0x42, 0x4D];
/// Length of a data frame, bytes.
pub const FRAME_LEN: usize = 32;
/// Length field of a data frame.
pub const DATA_LENGTH_FIELD: u16 = 28;
/// Change to passive mode.
pub const CMD_PASSIVE_MODE: [u8; 7] = [0x42, 0x4D, 0xE1, 0x00, 0x00, 0x01, 0x70];
/// Change to active mode.
pub const CMD_ACTIVE_MODE: [u8; 7] = [0x42, 0x4D, 0xE1, 0x00, 0x01, 0x01, 0x71];
/// Request one data frame in passive mode.
pub const CMD_READ_PASSIVE: [u8; 7] = [0x42, 0x4D, 0xE2, 0x00, 0x00, 0x01, 0x71];
/// Sleep (fan and laser off).
pub const CMD_SLEEP: [u8; 7] = [0x42, 0x4D, 0xE4, 0x00, 0x00, 0x01, 0x73];
/// Wake up (the sensor needs ~30 s before readings are stable).
pub const CMD_WAKE: [u8; 7] = [0x42, 0x4D, 0xE4, 0x00, 0x01, 0x01, 0x74];
/// Bytes skipped while looking for a start sequence before giving up.
pub const MAX_SYNC_BYTES: usize = 96;

/// A PMS5003 failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pms5003Error<E> {
    /// The UART failed.
    Io(E),
    /// The UART reported end of stream (nothing more will come).
    UnexpectedEof,
    /// No `0x42 0x4D` start found within [`MAX_SYNC_BYTES`].
    NoStart,
    /// A frame announced a length other than 28 (data) or 4 (command answer).
    BadLength(u16),
    /// The 16-bit sum did not match.
    Checksum {
        /// Sum carried by the frame.
        expected: u16,
        /// Sum computed over the bytes received.
        computed: u16,
    },
}

impl<E> From<ReadExactError<E>> for Pms5003Error<E> {
    fn from(e: ReadExactError<E>) -> Self {
        match e {
            ReadExactError::UnexpectedEof => Pms5003Error::UnexpectedEof,
            ReadExactError::Other(e) => Pms5003Error::Io(e),
        }
    }
}

/// One validated data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmsReading {
    /// PM1.0 µg/m³, CF=1 (factory calibration aerosol).
    pub pm1_0_cf1: u16,
    /// PM2.5 µg/m³, CF=1.
    pub pm2_5_cf1: u16,
    /// PM10 µg/m³, CF=1.
    pub pm10_cf1: u16,
    /// PM1.0 µg/m³, atmospheric environment (what the node reports).
    pub pm1_0: u16,
    /// PM2.5 µg/m³, atmospheric environment.
    pub pm2_5: u16,
    /// PM10 µg/m³, atmospheric environment.
    pub pm10: u16,
    /// Particles per 0.1 L beyond 0.3, 0.5, 1.0, 2.5, 5.0 and 10 µm.
    pub particles: [u16; 6],
}

/// 16-bit sum of `bytes` (the PMS5003 check code).
pub fn checksum(bytes: &[u8]) -> u16 {
    bytes
        .iter()
        .fold(0u16, |sum, &b| sum.wrapping_add(u16::from(b)))
}

/// Validate and decode a complete 32-byte data frame.
pub fn parse_frame(frame: &[u8; FRAME_LEN]) -> Result<PmsReading, Pms5003Error<()>> {
    let word = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
    if frame[..2] != START {
        return Err(Pms5003Error::NoStart);
    }
    let length = word(2);
    if length != DATA_LENGTH_FIELD {
        return Err(Pms5003Error::BadLength(length));
    }
    let expected = word(30);
    let computed = checksum(&frame[..30]);
    if expected != computed {
        return Err(Pms5003Error::Checksum { expected, computed });
    }
    Ok(PmsReading {
        pm1_0_cf1: word(4),
        pm2_5_cf1: word(6),
        pm10_cf1: word(8),
        pm1_0: word(10),
        pm2_5: word(12),
        pm10: word(14),
        particles: [word(16), word(18), word(20), word(22), word(24), word(26)],
    })
}

fn retag<E>(e: Pms5003Error<()>) -> Pms5003Error<E> {
    match e {
        Pms5003Error::Io(()) | Pms5003Error::UnexpectedEof => Pms5003Error::UnexpectedEof,
        Pms5003Error::NoStart => Pms5003Error::NoStart,
        Pms5003Error::BadLength(l) => Pms5003Error::BadLength(l),
        Pms5003Error::Checksum { expected, computed } => {
            Pms5003Error::Checksum { expected, computed }
        }
    }
}

/// A PMS5003 on a UART. The UART's `read` should time out (return an error) on a real board,
/// or a missing sensor blocks the caller.
#[derive(Debug)]
pub struct Pms5003<S> {
    serial: S,
}

impl<S: Read + Write> Pms5003<S> {
    /// A driver over `serial`. Call [`Pms5003::set_passive`] once at start.
    pub fn new(serial: S) -> Self {
        Self { serial }
    }

    fn command(&mut self, cmd: &[u8; 7]) -> Result<(), Pms5003Error<S::Error>> {
        self.serial.write_all(cmd).map_err(Pms5003Error::Io)?;
        self.serial.flush().map_err(Pms5003Error::Io)
    }

    /// Switch to passive mode (answers only [`CMD_READ_PASSIVE`]).
    pub fn set_passive(&mut self) -> Result<(), Pms5003Error<S::Error>> {
        self.command(&CMD_PASSIVE_MODE)
    }

    /// Switch to active mode (the sensor streams a frame every 200..2300 ms).
    pub fn set_active(&mut self) -> Result<(), Pms5003Error<S::Error>> {
        self.command(&CMD_ACTIVE_MODE)
    }

    /// Put the sensor to sleep.
    pub fn sleep(&mut self) -> Result<(), Pms5003Error<S::Error>> {
        self.command(&CMD_SLEEP)
    }

    /// Wake the sensor.
    pub fn wake(&mut self) -> Result<(), Pms5003Error<S::Error>> {
        self.command(&CMD_WAKE)
    }

    /// Passive mode: request a frame and read it.
    pub fn read_passive(&mut self) -> Result<PmsReading, Pms5003Error<S::Error>> {
        self.command(&CMD_READ_PASSIVE)?;
        self.read_frame()
    }

    /// Read the next data frame: find `0x42 0x4D` (skipping at most [`MAX_SYNC_BYTES`] bytes of
    /// noise and any 8-byte command answers), then validate length and checksum.
    pub fn read_frame(&mut self) -> Result<PmsReading, Pms5003Error<S::Error>> {
        let mut skipped = 0usize;
        let mut previous: Option<u8> = None;
        loop {
            let mut byte = [0u8; 1];
            self.serial.read_exact(&mut byte)?;
            if previous == Some(START[0]) && byte[0] == START[1] {
                let mut frame = [0u8; FRAME_LEN];
                frame[..2].copy_from_slice(&START);
                self.serial.read_exact(&mut frame[2..4])?;
                let length = u16::from_be_bytes([frame[2], frame[3]]);
                if length == 4 {
                    // answer to a mode/sleep command: 4 more bytes, then keep looking
                    let mut answer = [0u8; 4];
                    self.serial.read_exact(&mut answer)?;
                    previous = None;
                    continue;
                }
                if length != DATA_LENGTH_FIELD {
                    return Err(Pms5003Error::BadLength(length));
                }
                self.serial.read_exact(&mut frame[4..])?;
                return parse_frame(&frame).map_err(retag);
            }
            skipped += 1;
            if skipped > MAX_SYNC_BYTES {
                return Err(Pms5003Error::NoStart);
            }
            previous = Some(byte[0]);
        }
    }

    /// Give back the UART.
    pub fn release(self) -> S {
        self.serial
    }
}
