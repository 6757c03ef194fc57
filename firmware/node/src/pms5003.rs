//! Plantower PMS5003 particulate sensor driver over `embedded_io` (9600 8N1 UART).
//!
//! Exists so the node can run the sensor in passive mode (it answers only when asked, so the
//! node decides the sample rate and the fan/laser can sleep between samples) and validate its
//! 32-byte data frames. The byte layout (start `42 4D`, length field 28, 13 big-endian data
//! words, 16-bit sum) and the 7-byte commands `42 4D CMD DATAH DATAL LRCH LRCL` are
//! `ioc_frames::pms5003`, shared with the gateway's decoder and the simulators; mode changes and
//! sleep/wake are answered by an 8-byte frame of length 4, which [`Pms5003::read_frame`] skips.

use embedded_io::{Read, ReadExactError, Write};
use ioc_frames::pms5003::{self as layout, command, FrameError};

/// 16-bit sum of `bytes` (the PMS5003 check code).
pub use ioc_frames::pms5003::checksum;
/// Length of a data frame, bytes.
pub use ioc_frames::pms5003::FRAME_LEN;
/// Start bytes of every frame.
pub use ioc_frames::pms5003::START;
/// Length field of a data frame.
pub const DATA_LENGTH_FIELD: u16 = layout::LENGTH_FIELD;
/// Change to passive mode.
pub const CMD_PASSIVE_MODE: [u8; 7] = command(layout::CMD_CHANGE_MODE, 0);
/// Change to active mode.
pub const CMD_ACTIVE_MODE: [u8; 7] = command(layout::CMD_CHANGE_MODE, 1);
/// Request one data frame in passive mode.
pub const CMD_READ_PASSIVE: [u8; 7] = command(layout::CMD_READ_PASSIVE, 0);
/// Sleep (fan and laser off).
pub const CMD_SLEEP: [u8; 7] = command(layout::CMD_SLEEP_WAKE, 0);
/// Wake up (the sensor needs ~30 s before readings are stable).
pub const CMD_WAKE: [u8; 7] = command(layout::CMD_SLEEP_WAKE, 1);
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

impl<E> From<FrameError> for Pms5003Error<E> {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Start => Pms5003Error::NoStart,
            FrameError::Length(l) => Pms5003Error::BadLength(l),
            FrameError::Checksum { expected, computed } => {
                Pms5003Error::Checksum { expected, computed }
            }
        }
    }
}

impl PmsReading {
    fn from_words(w: &layout::DataWords) -> Self {
        PmsReading {
            pm1_0_cf1: w[layout::PM1_0_CF1],
            pm2_5_cf1: w[layout::PM2_5_CF1],
            pm10_cf1: w[layout::PM10_CF1],
            pm1_0: w[layout::PM1_0],
            pm2_5: w[layout::PM2_5],
            pm10: w[layout::PM10],
            particles: [
                w[layout::N0_3],
                w[layout::N0_5],
                w[layout::N1_0],
                w[layout::N2_5],
                w[layout::N5_0],
                w[layout::N10],
            ],
        }
    }
}

/// Validate and decode a complete 32-byte data frame.
pub fn parse_frame(frame: &[u8; FRAME_LEN]) -> Result<PmsReading, Pms5003Error<()>> {
    parse(frame)
}

fn parse<E>(frame: &[u8; FRAME_LEN]) -> Result<PmsReading, Pms5003Error<E>> {
    Ok(PmsReading::from_words(&layout::parse(frame)?))
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
                if length == layout::ANSWER_LENGTH_FIELD {
                    // answer to a mode/sleep command: 4 more bytes, then keep looking
                    let mut answer = [0u8; layout::ANSWER_LEN - 4];
                    self.serial.read_exact(&mut answer)?;
                    previous = None;
                    continue;
                }
                if length != DATA_LENGTH_FIELD {
                    return Err(Pms5003Error::BadLength(length));
                }
                self.serial.read_exact(&mut frame[4..])?;
                return parse(&frame);
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
