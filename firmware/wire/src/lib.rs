//! The frame format spoken between roadside sensor nodes and the ioc-gateway.
//!
//! This crate exists so that the firmware (`ioc-node`), the gateway's `node` decoder and the
//! simulators share one definition of the bytes on the UART / RS-485 line. It is `#![no_std]` and
//! uses no heap: encoding writes into a caller's slice and [`FrameDecoder`] keeps a fixed buffer.
//!
//! # Byte layout
//!
//! On the line every frame is COBS-encoded and ends with one `0x00` delimiter. Writers may send
//! extra `0x00` bytes at any time (the firmware sends one at boot); receivers ignore empty frames.
//!
//! ```text
//!  line:  | COBS( raw frame ) | 0x00 |
//!  raw:   | version | postcard body ...      | crc32 (4 bytes, little-endian) |
//! ```
//!
//! | offset (raw)  | size      | field      | encoding                                                         |
//! |---------------|-----------|------------|------------------------------------------------------------------|
//! | 0             | 1         | `version`  | `u8`, currently [`WIRE_VERSION`] = 1                             |
//! | 1             | 1..=5     | `node_id`  | postcard varint `u32`                                            |
//! | ..            | 1..=5     | `boot_id`  | postcard varint `u32` (random per boot)                          |
//! | ..            | 1..=5     | `seq`      | postcard varint `u32` (per node and boot, starts at 0)           |
//! | ..            | 1..=10    | `uptime_ms`| postcard varint `u64` (milliseconds since boot)                  |
//! | ..            | 1         | payload tag| varint: 0 Environment, 1 Traffic, 2 Status, 3 Command, 4 CommandAck |
//! | ..            | ..        | payload    | postcard of the payload struct (see the types; `f32` = 4 bytes LE, `Option` = 1 tag byte + value) |
//! | len-4         | 4         | `crc`      | CRC-32/ISO-HDLC (the zlib/Ethernet CRC) over bytes `0..len-4`, little-endian |
//!
//! A raw frame is at most [`MAX_RAW_LEN`] bytes; on the line (COBS + delimiter) at most
//! [`MAX_ENCODED_LEN`]. The decoder rejects, without panicking, frames that are too long, not
//! valid COBS, shorter than 5 bytes, with a wrong CRC, of another version, or whose body is not
//! exactly one postcard [`Frame`] body (trailing bytes are an error). After any error it
//! resynchronises at the next `0x00`.
//!
//! # Direction and meaning of the header
//!
//! * node → gateway: `node_id` is the sender, `boot_id`/`seq` identify the reading; the gateway
//!   acknowledges with [`Command::Ack`] naming the node's `boot_id` and the highest `seq` seen.
//! * gateway → node: `node_id` is the addressed node ([`BROADCAST_NODE_ID`] for all), `seq` is
//!   the gateway's command id (echoed in [`CommandAck::command_id`]), `boot_id` the gateway's own
//!   random session id and `uptime_ms` the gateway's milliseconds since start.
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

use serde::{Deserialize, Serialize};

/// Version byte written first in every raw frame.
pub const WIRE_VERSION: u8 = 1;
/// Largest raw frame (version + postcard body + CRC) accepted or produced.
pub const MAX_RAW_LEN: usize = 128;
/// Largest frame on the line: COBS overhead plus the `0x00` delimiter.
pub const MAX_ENCODED_LEN: usize = MAX_RAW_LEN + MAX_RAW_LEN / 254 + 1 + 1;
/// `node_id` that addresses every node on the bus (gateway → node only).
pub const BROADCAST_NODE_ID: u32 = u32::MAX;
/// Frame delimiter on the line.
pub const DELIMITER: u8 = 0x00;

const CRC_LEN: usize = 4;
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The CRC-32 at the end of the frame does not match its contents.
    BadCrc,
    /// The bytes between two delimiters are not valid COBS.
    Cobs,
    /// The body is not a postcard-encoded frame (or has trailing bytes, or is too short).
    Malformed,
    /// The frame is longer than [`MAX_ENCODED_LEN`], or the output buffer is too small.
    TooLong,
    /// The frame's version byte is not [`WIRE_VERSION`].
    UnsupportedVersion(u8),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadCrc => f.write_str("frame CRC mismatch"),
            WireError::Cobs => f.write_str("invalid COBS framing"),
            WireError::Malformed => f.write_str("malformed frame body"),
            WireError::TooLong => f.write_str("frame too long"),
            WireError::UnsupportedVersion(v) => write!(f, "unsupported wire version {v}"),
        }
    }
}

impl core::error::Error for WireError {}

/// Header carried by every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Sending node (node → gateway) or addressed node (gateway → node).
    pub node_id: u32,
    /// Random per boot of the sender; a change means the sender restarted.
    pub boot_id: u32,
    /// Per-sender, per-boot sequence number, starting at 0 and incremented per new frame.
    pub seq: u32,
    /// Milliseconds since the sender booted.
    pub uptime_ms: u64,
}

/// A complete frame: header and one typed payload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Who, which boot, which sequence number, when.
    pub header: Header,
    /// What the frame says.
    pub payload: Payload,
}

/// The typed content of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// node → gateway: one environment sample (gateway measurement `environment`).
    Environment(Environment),
    /// node → gateway: one lane's counts for one interval (gateway measurement `traffic`).
    Traffic(TrafficLane),
    /// node → gateway: the node's own health (gateway measurement `node_status`).
    Status(Status),
    /// gateway → node: a command.
    Command(Command),
    /// node → gateway: the answer to a command.
    CommandAck(CommandAck),
}

impl Payload {
    /// Whether the payload is a reading the node keeps until the gateway acks it.
    pub fn is_reading(&self) -> bool {
        matches!(
            self,
            Payload::Environment(_) | Payload::Traffic(_) | Payload::Status(_)
        )
    }
}

/// Environment sample. `None` means the sensor is not fitted or failed this time.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Environment {
    /// Air temperature, °C (SHT3x). Gateway field `temperature_c`.
    pub temperature_c: Option<f32>,
    /// Relative humidity, % (SHT3x). Gateway field `humidity_pct`.
    pub humidity_pct: Option<f32>,
    /// PM1.0 µg/m³ (PMS5003, atmospheric). Gateway field `pm1_0`.
    pub pm1_0: Option<f32>,
    /// PM2.5 µg/m³ (PMS5003, atmospheric). Gateway field `pm2_5`.
    pub pm2_5: Option<f32>,
    /// PM10 µg/m³ (PMS5003, atmospheric). Gateway field `pm10`.
    pub pm10: Option<f32>,
    /// Sound level, dB (microphone on an ADC). Gateway field `noise_db`.
    pub noise_db: Option<f32>,
}

/// Direction of travel of a lane (gateway tag `direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Travelling north.
    Northbound,
    /// Travelling south.
    Southbound,
    /// Travelling east.
    Eastbound,
    /// Travelling west.
    Westbound,
}

impl Direction {
    /// The tag value the gateway writes.
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Northbound => "northbound",
            Direction::Southbound => "southbound",
            Direction::Eastbound => "eastbound",
            Direction::Westbound => "westbound",
        }
    }
}

/// One lane's vehicle counts over one interval (gateway measurement `traffic`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrafficLane {
    /// Lane number at the site (gateway tag `lane`).
    pub lane: u8,
    /// Direction of travel (gateway tag `direction`).
    pub direction: Direction,
    /// Vehicles counted in the interval (gateway field `count`).
    pub count: u32,
    /// Of which heavy vehicles (long presence), gateway field `heavy_count`.
    pub heavy_count: u32,
    /// Average speed, km/h, when the detector can measure it (gateway field `speed_avg`).
    pub speed_avg_kmh: Option<f32>,
    /// Share of the interval the detector was occupied, 0..=100 (gateway field `occupancy`).
    pub occupancy_pct: f32,
}

/// The node's own health (gateway measurement `node_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Status {
    /// Seconds since boot.
    pub uptime_s: u32,
    /// Number of resets since the node was installed (kept by the platform).
    pub resets: u32,
    /// Sensor read failures since boot (bus errors, bad CRCs, timeouts), all sensors.
    pub sensor_errors: u32,
    /// Readings kept unacknowledged in the node's ring.
    pub ring_depth: u16,
    /// Readings dropped from the full ring before the gateway acked them, since boot.
    pub ring_dropped: u32,
    /// Current sample interval, ms.
    pub sample_interval_ms: u32,
}

/// gateway → node commands. Every command is answered with a [`CommandAck`] except [`Command::Ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set the sample interval (environment and traffic), ms. Rejected (ack `ok = false`) outside
    /// the node's allowed range.
    SetSampleInterval {
        /// New interval in milliseconds.
        interval_ms: u32,
    },
    /// Blink the identification LED for this many seconds.
    Identify {
        /// Blink duration, seconds.
        blink_s: u16,
    },
    /// Send a [`Status`] now, then resend every reading not yet acknowledged.
    RequestStatus,
    /// The gateway has every reading of boot `boot_id` up to and including `up_to_seq`; the node
    /// may forget them. Not answered.
    Ack {
        /// The node boot the ack is for (a stale ack for an earlier boot is ignored).
        boot_id: u32,
        /// Highest sequence number received.
        up_to_seq: u32,
    },
}

/// node → gateway answer to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandAck {
    /// The `seq` of the command frame being answered.
    pub command_id: u32,
    /// Whether the command was accepted.
    pub ok: bool,
}

/// Encode `frame` as it goes on the line (COBS + trailing `0x00`) into `out`.
///
/// Returns the number of bytes written. Fails with [`WireError::TooLong`] if `out` is too small
/// (an `out` of [`MAX_ENCODED_LEN`] bytes always suffices).
pub fn encode_frame(frame: &Frame, out: &mut [u8]) -> Result<usize, WireError> {
    let mut raw = [0u8; MAX_RAW_LEN];
    let raw_len = encode_raw(frame, &mut raw)?;
    let raw = raw.get(..raw_len).ok_or(WireError::TooLong)?;
    let encoded_len = cobs::try_encode(raw, out).map_err(|_| WireError::TooLong)?;
    let delimiter = out.get_mut(encoded_len).ok_or(WireError::TooLong)?;
    *delimiter = DELIMITER;
    Ok(encoded_len + 1)
}

/// Encode `frame` without COBS: version, postcard body and CRC. Returns the length written.
pub fn encode_raw(frame: &Frame, out: &mut [u8]) -> Result<usize, WireError> {
    let (version, rest) = out.split_first_mut().ok_or(WireError::TooLong)?;
    *version = WIRE_VERSION;
    let body_len = postcard::to_slice(frame, rest)
        .map_err(|_| WireError::TooLong)?
        .len();
    let crc_start = 1 + body_len;
    let total = crc_start + CRC_LEN;
    if total > MAX_RAW_LEN {
        return Err(WireError::TooLong);
    }
    let crc = CRC32.checksum(out.get(..crc_start).ok_or(WireError::TooLong)?);
    out.get_mut(crc_start..total)
        .ok_or(WireError::TooLong)?
        .copy_from_slice(&crc.to_le_bytes());
    Ok(total)
}

/// Decode one raw frame (COBS already removed): check length, CRC and version, then the body.
pub fn decode_raw(raw: &[u8]) -> Result<Frame, WireError> {
    if raw.len() > MAX_RAW_LEN {
        return Err(WireError::TooLong);
    }
    if raw.len() < 1 + CRC_LEN {
        return Err(WireError::Malformed);
    }
    let (checked, crc_bytes) = raw.split_at(raw.len() - CRC_LEN);
    let mut crc = [0u8; CRC_LEN];
    crc.copy_from_slice(crc_bytes);
    if CRC32.checksum(checked) != u32::from_le_bytes(crc) {
        return Err(WireError::BadCrc);
    }
    let (&version, body) = checked.split_first().ok_or(WireError::Malformed)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let (frame, rest) =
        postcard::take_from_bytes::<Frame>(body).map_err(|_| WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::Malformed);
    }
    Ok(frame)
}

/// Decode one COBS-encoded frame as found between two delimiters (without the `0x00`).
/// `scratch` is overwritten; it must be at least as long as `encoded`.
pub fn decode_frame(encoded: &[u8], scratch: &mut [u8]) -> Result<Frame, WireError> {
    if encoded.len() > MAX_ENCODED_LEN - 1 {
        return Err(WireError::TooLong);
    }
    let buf = scratch.get_mut(..encoded.len()).ok_or(WireError::TooLong)?;
    buf.copy_from_slice(encoded);
    decode_cobs_in_place(buf)
}

fn decode_cobs_in_place(buf: &mut [u8]) -> Result<Frame, WireError> {
    if buf.contains(&DELIMITER) {
        return Err(WireError::Cobs);
    }
    let raw_len = cobs::decode_in_place(buf).map_err(|_| WireError::Cobs)?;
    decode_raw(buf.get(..raw_len).ok_or(WireError::Cobs)?)
}

/// Streaming decoder: feed it line bytes, get frames (or errors) at each delimiter.
///
/// It keeps a fixed [`MAX_ENCODED_LEN`]-byte buffer. Garbage, truncated frames, over-long
/// runs and bad CRCs produce one error at the next `0x00`, after which decoding continues
/// with the following frame. Empty frames (repeated delimiters) are ignored silently.
#[derive(Clone)]
pub struct FrameDecoder {
    buf: [u8; MAX_ENCODED_LEN],
    len: usize,
    overflowed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.len)
            .field("overflowed", &self.overflowed)
            .finish()
    }
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_ENCODED_LEN],
            len: 0,
            overflowed: false,
        }
    }

    /// Feed one byte. Returns `Some` when the byte was a delimiter ending a non-empty frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, WireError>> {
        if byte == DELIMITER {
            let len = core::mem::replace(&mut self.len, 0);
            if core::mem::replace(&mut self.overflowed, false) {
                return Some(Err(WireError::TooLong));
            }
            if len == 0 {
                return None;
            }
            let buf = self.buf.get_mut(..len)?;
            return Some(decode_cobs_in_place(buf));
        }
        if self.overflowed {
            return None;
        }
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
        None
    }

    /// Feed a slice, calling `on_frame` for every frame or error completed by it.
    pub fn push_slice<F>(&mut self, bytes: &[u8], mut on_frame: F)
    where
        F: FnMut(Result<Frame, WireError>),
    {
        for &byte in bytes {
            if let Some(result) = self.push(byte) {
                on_frame(result);
            }
        }
    }

    /// Bytes of a frame in progress (not yet delimited).
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Drop any partial frame, e.g. after the serial port was reopened.
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame {
            header: Header {
                node_id: 7,
                boot_id: 0xDEAD_BEEF,
                seq: 300,
                uptime_ms: 1_234_567,
            },
            payload: Payload::Environment(Environment {
                temperature_c: Some(21.5),
                humidity_pct: Some(48.25),
                pm1_0: None,
                pm2_5: Some(12.0),
                pm10: Some(20.0),
                noise_db: Some(61.5),
            }),
        }
    }

    #[test]
    fn crc_is_the_zlib_crc32() {
        assert_eq!(CRC32.checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn exact_bytes_of_a_small_frame() {
        let frame = Frame {
            header: Header {
                node_id: 1,
                boot_id: 2,
                seq: 3,
                uptime_ms: 4,
            },
            payload: Payload::Command(Command::RequestStatus),
        };
        let mut raw = [0u8; MAX_RAW_LEN];
        let n = encode_raw(&frame, &mut raw).unwrap();
        // version, node_id, boot_id, seq, uptime, Payload::Command (3), Command::RequestStatus (2)
        let body = [1u8, 1, 2, 3, 4, 3, 2];
        assert_eq!(&raw[..7], &body);
        assert_eq!(&raw[7..n], &CRC32.checksum(&body).to_le_bytes());
        assert_eq!(n, 11);
    }

    #[test]
    fn largest_payloads_fit() {
        let header = Header {
            node_id: u32::MAX,
            boot_id: u32::MAX,
            seq: u32::MAX,
            uptime_ms: u64::MAX,
        };
        let big_env = Environment {
            temperature_c: Some(f32::MAX),
            humidity_pct: Some(f32::MAX),
            pm1_0: Some(f32::MAX),
            pm2_5: Some(f32::MAX),
            pm10: Some(f32::MAX),
            noise_db: Some(f32::MAX),
        };
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = encode_frame(
            &Frame {
                header,
                payload: Payload::Environment(big_env),
            },
            &mut out,
        )
        .unwrap();
        assert!(n <= MAX_ENCODED_LEN);
        assert_eq!(out[n - 1], 0);
    }

    #[test]
    fn round_trip_through_decoder() {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = encode_frame(&sample(), &mut out).unwrap();
        assert!(!out[..n - 1].contains(&0));
        let mut dec = FrameDecoder::new();
        let mut got = None;
        dec.push_slice(&out[..n], |r| got = Some(r));
        assert_eq!(got, Some(Ok(sample())));
    }

    #[test]
    fn small_output_buffer_is_too_long_not_panic() {
        let mut out = [0u8; 10];
        assert_eq!(encode_frame(&sample(), &mut out), Err(WireError::TooLong));
    }

    #[test]
    fn other_version_is_rejected() {
        let mut raw = [0u8; MAX_RAW_LEN];
        let n = encode_raw(&sample(), &mut raw).unwrap();
        raw[0] = 2;
        let crc = CRC32.checksum(&raw[..n - 4]);
        raw[n - 4..n].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_raw(&raw[..n]), Err(WireError::UnsupportedVersion(2)));
    }

    #[test]
    fn trailing_body_bytes_are_malformed() {
        let mut raw = [0u8; MAX_RAW_LEN];
        let n = encode_raw(&sample(), &mut raw).unwrap();
        // insert an extra byte before the CRC and re-CRC
        let body_end = n - 4;
        raw[body_end] = 0x55;
        let crc = CRC32.checksum(&raw[..body_end + 1]);
        raw[body_end + 1..body_end + 5].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_raw(&raw[..n + 1]), Err(WireError::Malformed));
    }
}
