//! Nova Fitness SDS011 frames (9600 baud 8N1 UART), as in the "Laser Dust Sensor Control
//! Protocol V1.3".
//!
//! # Frames the sensor sends (10 bytes)
//!
//! ```text
//! aa c0 P25L P25H P10L P10H ID1 ID2 CS ab    measurement (once a second in active mode)
//! aa c5 D1   D2   D3   D4   ID1 ID2 CS ab    reply to a command (set mode, sleep, firmware...)
//! ```
//!
//! PM2.5 and PM10 are little-endian tenths of µg/m³; `CS` is the low byte of the sum of the six
//! data bytes. The 19-byte `aa b4 …` commands a host may send are not used by ioc-gateway (it
//! reads sensors in their default active mode), so they are not here.

use core::fmt;

/// Bytes in one frame.
pub const FRAME_LEN: usize = 10;
/// First byte of every frame.
pub const HEAD: u8 = 0xaa;
/// Last byte of every frame.
pub const TAIL: u8 = 0xab;
/// Command byte of a measurement frame.
pub const CMD_DATA: u8 = 0xc0;
/// Command byte of a reply to a command.
pub const CMD_REPLY: u8 = 0xc5;
/// Data bytes between the command byte and the checksum.
pub const DATA_LEN: usize = 6;

/// What a measurement frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Measurement {
    /// PM2.5 in tenths of µg/m³.
    pub pm2_5_tenths: u16,
    /// PM10 in tenths of µg/m³.
    pub pm10_tenths: u16,
    /// The sensor's two ID bytes, as sent.
    pub device_id: [u8; 2],
}

/// A valid frame: a measurement, or a reply to a command (its data bytes kept whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Data(Measurement),
    Reply([u8; DATA_LEN]),
}

/// Why 10 bytes are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Not `aa c0` or `aa c5`.
    Header,
    /// The last byte is not `ab`.
    Tail,
    /// The checksum byte is not the sum of the data bytes.
    Checksum {
        /// Checksum carried by the frame.
        expected: u8,
        /// Checksum computed over the data bytes received.
        computed: u8,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Header => write!(f, "SDS011 frame does not start with aa c0 / aa c5"),
            FrameError::Tail => write!(f, "SDS011 frame does not end with ab"),
            FrameError::Checksum { expected, computed } => write!(
                f,
                "SDS011 checksum {expected:#04x} in the frame, {computed:#04x} computed"
            ),
        }
    }
}

/// Low byte of the sum of `data` (the six data bytes).
pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Whether `bytes` begins with a frame header (`aa c0` or `aa c5`).
pub fn is_header(bytes: &[u8]) -> bool {
    matches!(bytes, [HEAD, CMD_DATA | CMD_REPLY, ..])
}

impl Measurement {
    /// The six data bytes of a measurement frame.
    pub fn to_data(&self) -> [u8; DATA_LEN] {
        let [a, b] = self.pm2_5_tenths.to_le_bytes();
        let [c, d] = self.pm10_tenths.to_le_bytes();
        [a, b, c, d, self.device_id[0], self.device_id[1]]
    }

    /// The measurement the six data bytes of a measurement frame carry.
    pub fn from_data(data: &[u8; DATA_LEN]) -> Self {
        Measurement {
            pm2_5_tenths: u16::from_le_bytes([data[0], data[1]]),
            pm10_tenths: u16::from_le_bytes([data[2], data[3]]),
            device_id: [data[4], data[5]],
        }
    }
}

/// The 10 bytes a sensor sends for `frame`.
pub fn encode(frame: &Frame) -> [u8; FRAME_LEN] {
    let (cmd, data) = match frame {
        Frame::Data(m) => (CMD_DATA, m.to_data()),
        Frame::Reply(data) => (CMD_REPLY, *data),
    };
    let mut out = [0u8; FRAME_LEN];
    out[0] = HEAD;
    out[1] = cmd;
    out[2..8].copy_from_slice(&data);
    out[8] = checksum(&data);
    out[9] = TAIL;
    out
}

/// Validates a complete frame (header, tail, checksum, in that order).
pub fn parse(frame: &[u8; FRAME_LEN]) -> Result<Frame, FrameError> {
    if !is_header(frame) {
        return Err(FrameError::Header);
    }
    if frame[9] != TAIL {
        return Err(FrameError::Tail);
    }
    let mut data = [0u8; DATA_LEN];
    data.copy_from_slice(&frame[2..8]);
    let computed = checksum(&data);
    if computed != frame[8] {
        return Err(FrameError::Checksum {
            expected: frame[8],
            computed,
        });
    }
    Ok(if frame[1] == CMD_DATA {
        Frame::Data(Measurement::from_data(&data))
    } else {
        Frame::Reply(data)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; FRAME_LEN] {
        let mut out = [0u8; FRAME_LEN];
        let mut n = 0;
        for (slot, byte) in out.iter_mut().zip(s.split_whitespace()) {
            *slot = u8::from_str_radix(byte, 16).unwrap();
            n += 1;
        }
        assert_eq!(n, FRAME_LEN, "{s}");
        out
    }

    /// Measurement example of protocol V1.3: PM2.5 123.6, PM10 261.8, ID a160.
    const DATASHEET_DATA: &str = "aa c0 d4 04 3a 0a a1 60 1d ab";
    /// Reply example of protocol V1.3 (query data reporting mode: active).
    const DATASHEET_REPLY: &str = "aa c5 02 00 00 00 a1 60 03 ab";
    /// First two frames of PyPMS `tests/captured_data/SDS01x.hexdump` (CSV: 0.6/0.6, 0.9/0.9).
    const CAPTURE_1: &str = "aa c0 06 00 06 00 58 d9 3d ab";
    const CAPTURE_2: &str = "aa c0 09 00 09 00 58 d9 43 ab";

    #[test]
    fn datasheet_and_captured_frames_parse_to_their_values() {
        assert_eq!(
            parse(&hex(DATASHEET_DATA)),
            Ok(Frame::Data(Measurement {
                pm2_5_tenths: 1236,
                pm10_tenths: 2618,
                device_id: [0xa1, 0x60],
            }))
        );
        assert_eq!(
            parse(&hex(DATASHEET_REPLY)),
            Ok(Frame::Reply([0x02, 0, 0, 0, 0xa1, 0x60]))
        );
        let tenths = |s| match parse(&hex(s)) {
            Ok(Frame::Data(m)) => (m.pm2_5_tenths, m.pm10_tenths),
            other => panic!("{other:?}"),
        };
        assert_eq!(tenths(CAPTURE_1), (6, 6));
        assert_eq!(tenths(CAPTURE_2), (9, 9));
    }

    #[test]
    fn encode_reproduces_datasheet_and_captured_bytes() {
        for f in [DATASHEET_DATA, DATASHEET_REPLY, CAPTURE_1, CAPTURE_2] {
            let bytes = hex(f);
            assert_eq!(encode(&parse(&bytes).unwrap()), bytes);
        }
    }

    #[test]
    fn bad_header_tail_and_checksum_are_told_apart() {
        let mut b = hex(CAPTURE_2);
        b[1] = 0xc1;
        assert_eq!(parse(&b), Err(FrameError::Header));
        let mut b = hex(CAPTURE_2);
        b[9] = 0x00;
        assert_eq!(parse(&b), Err(FrameError::Tail));
        let mut b = hex(CAPTURE_2);
        b[3] ^= 0x10;
        assert_eq!(
            parse(&b),
            Err(FrameError::Checksum {
                expected: 0x43,
                computed: 0x53
            })
        );
        assert!(is_header(&b) && !is_header(&b[..1]));
    }

    proptest::proptest! {
        #[test]
        fn encode_then_parse_is_identity(
            body in proptest::array::uniform6(proptest::num::u8::ANY),
            reply in proptest::bool::ANY,
        ) {
            let frame = if reply {
                Frame::Reply(body)
            } else {
                Frame::Data(Measurement::from_data(&body))
            };
            proptest::prop_assert_eq!(parse(&encode(&frame)), Ok(frame));
        }

        #[test]
        fn every_frame_that_parses_reencodes_to_its_bytes(
            bytes in proptest::array::uniform10(proptest::sample::select(&[0xaa, 0xab, 0xc0, 0xc5, 0x00, 0x42, 0x6b][..])),
        ) {
            if let Ok(frame) = parse(&bytes) {
                proptest::prop_assert_eq!(encode(&frame), bytes);
            }
        }
    }
}
