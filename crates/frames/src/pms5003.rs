//! Plantower PMS5003 / PMS7003 / PMS5003T frames (9600 baud 8N1 UART), as in the Plantower
//! PMS5003 datasheet ("Appendix I: PMS5003 transport protocol – Active Mode" and the passive
//! mode commands).
//!
//! # Data frame (32 bytes)
//!
//! | bytes  | content                                                                  |
//! |-------:|--------------------------------------------------------------------------|
//! | 0..2   | start `42 4d` (`"BM"`)                                                   |
//! | 2..4   | length of what follows, big-endian: always 28 (13 data words + checksum) |
//! | 4..10  | PM1.0, PM2.5, PM10 µg/m³, "CF=1" (factory standard particle)             |
//! | 10..16 | PM1.0, PM2.5, PM10 µg/m³, atmospheric environment                        |
//! | 16..28 | particles per 0.1 L above 0.3, 0.5, 1.0, 2.5, 5.0, 10 µm                  |
//! | 28..30 | reserved: firmware version, error code                                   |
//! | 30..32 | checksum: 16-bit sum of bytes 0..30, big-endian                          |
//!
//! All words are big-endian `u16`; [`DataWords`] holds the 13 of them in order, indexed by the
//! `PM*`, `N*` and [`RESERVED`] constants.
//!
//! # PMS5003T
//!
//! The PMS5003T sends the same frame with the same length field, but words [`N5_0`] and
//! [`N10`] carry temperature (signed, ×10 °C) and relative humidity (×10 %): [`T_TEMPERATURE`],
//! [`T_HUMIDITY`]. The layout, the parser and the encoder are the same for both; which
//! reading the words make is the user's choice (nothing in the frame tells the variants apart).
//!
//! # Commands (7 bytes) and their answers (8 bytes)
//!
//! `42 4d CMD DATAH DATAL LRCH LRCL`, LRC the 16-bit sum of the first five bytes ([`command`]).
//! A mode change or sleep/wake is answered by an 8-byte frame with length field
//! [`ANSWER_LENGTH_FIELD`]: `42 4d 00 04` and four more bytes (e.g. `e1 00 01 74`).

use core::fmt;

/// Bytes in one data frame.
pub const FRAME_LEN: usize = 32;
/// The start bytes of every frame and command.
pub const START: [u8; 2] = [0x42, 0x4d];
/// The length field of a data frame (PMS5003, PMS7003, PMS5003T).
pub const LENGTH_FIELD: u16 = 28;
/// Data words in a data frame.
pub const DATA_WORDS: usize = 13;
/// Offset of the checksum (the sum covers the bytes before it).
pub const CHECKSUM_AT: usize = 30;
/// Offset of the first data word.
const DATA_AT: usize = 4;

/// The 13 data words of a frame, in frame order.
pub type DataWords = [u16; DATA_WORDS];

/// Word index: PM1.0 µg/m³, CF=1.
pub const PM1_0_CF1: usize = 0;
/// Word index: PM2.5 µg/m³, CF=1.
pub const PM2_5_CF1: usize = 1;
/// Word index: PM10 µg/m³, CF=1.
pub const PM10_CF1: usize = 2;
/// Word index: PM1.0 µg/m³, atmospheric environment.
pub const PM1_0: usize = 3;
/// Word index: PM2.5 µg/m³, atmospheric environment.
pub const PM2_5: usize = 4;
/// Word index: PM10 µg/m³, atmospheric environment.
pub const PM10: usize = 5;
/// Word index: particles > 0.3 µm per 0.1 L (the first of six consecutive count bins).
pub const N0_3: usize = 6;
/// Word index: particles > 0.5 µm per 0.1 L.
pub const N0_5: usize = 7;
/// Word index: particles > 1.0 µm per 0.1 L.
pub const N1_0: usize = 8;
/// Word index: particles > 2.5 µm per 0.1 L.
pub const N2_5: usize = 9;
/// Word index: particles > 5.0 µm per 0.1 L (PMS5003T: [`T_TEMPERATURE`]).
pub const N5_0: usize = 10;
/// Word index: particles > 10 µm per 0.1 L (PMS5003T: [`T_HUMIDITY`]).
pub const N10: usize = 11;
/// Word index: reserved (firmware version high byte, error code low byte).
pub const RESERVED: usize = 12;
/// Word index, PMS5003T: temperature, signed tenths of °C.
pub const T_TEMPERATURE: usize = N5_0;
/// Word index, PMS5003T: relative humidity, tenths of %.
pub const T_HUMIDITY: usize = N10;

/// Bytes in a command.
pub const COMMAND_LEN: usize = 7;
/// Command: read one frame in passive mode (data 0).
pub const CMD_READ_PASSIVE: u8 = 0xe2;
/// Command: change mode (data 0 passive, 1 active).
pub const CMD_CHANGE_MODE: u8 = 0xe1;
/// Command: sleep (data 0) or wake (data 1).
pub const CMD_SLEEP_WAKE: u8 = 0xe4;
/// Length field of the answer to a mode change or sleep/wake command.
pub const ANSWER_LENGTH_FIELD: u16 = 4;
/// Bytes in that answer (start, length field, four bytes).
pub const ANSWER_LEN: usize = 8;

/// Why 32 bytes are not a valid data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The frame does not begin with [`START`].
    Start,
    /// The length field is not [`LENGTH_FIELD`].
    Length(u16),
    /// The checksum the frame carries is not the sum of its bytes.
    Checksum {
        /// Sum carried by the frame.
        expected: u16,
        /// Sum computed over the bytes received.
        computed: u16,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Start => write!(f, "PMS5003 frame does not start with 42 4d"),
            FrameError::Length(l) => write!(f, "PMS5003 frame length field {l}, expected 28"),
            FrameError::Checksum { expected, computed } => write!(
                f,
                "PMS5003 checksum {expected:#06x} in the frame, {computed:#06x} computed"
            ),
        }
    }
}

/// The 16-bit sum of `bytes` (the check code of frames and commands).
pub const fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u16;
    let mut i = 0;
    while i < bytes.len() {
        sum = sum.wrapping_add(bytes[i] as u16);
        i += 1;
    }
    sum
}

/// The big-endian length field of a frame or answer that starts at `bytes[0]`, once its four
/// first bytes are there.
pub fn length_field(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [_, _, high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// The 32 bytes a sensor sends for `words`.
pub fn encode(words: &DataWords) -> [u8; FRAME_LEN] {
    let mut out = [0u8; FRAME_LEN];
    out[..2].copy_from_slice(&START);
    out[2..DATA_AT].copy_from_slice(&LENGTH_FIELD.to_be_bytes());
    for (i, w) in words.iter().enumerate() {
        let at = DATA_AT + 2 * i;
        out[at..at + 2].copy_from_slice(&w.to_be_bytes());
    }
    let sum = checksum(&out[..CHECKSUM_AT]);
    out[CHECKSUM_AT..].copy_from_slice(&sum.to_be_bytes());
    out
}

/// The data words of `frame` as they are, unchecked (see [`parse`] for a validated frame).
pub fn data_words(frame: &[u8; FRAME_LEN]) -> DataWords {
    let mut words = [0u16; DATA_WORDS];
    for (i, w) in words.iter_mut().enumerate() {
        let at = DATA_AT + 2 * i;
        *w = u16::from_be_bytes([frame[at], frame[at + 1]]);
    }
    words
}

/// Validates a complete data frame (start, length field, checksum, in that order) and returns
/// its data words.
pub fn parse(frame: &[u8; FRAME_LEN]) -> Result<DataWords, FrameError> {
    if frame[..2] != START {
        return Err(FrameError::Start);
    }
    let length = u16::from_be_bytes([frame[2], frame[3]]);
    if length != LENGTH_FIELD {
        return Err(FrameError::Length(length));
    }
    let expected = u16::from_be_bytes([frame[CHECKSUM_AT], frame[CHECKSUM_AT + 1]]);
    let computed = checksum(&frame[..CHECKSUM_AT]);
    if expected != computed {
        return Err(FrameError::Checksum { expected, computed });
    }
    Ok(data_words(frame))
}

/// The 7 bytes of command `cmd` with its 16-bit `data`.
pub const fn command(cmd: u8, data: u16) -> [u8; COMMAND_LEN] {
    let [high, low] = data.to_be_bytes();
    let body = [START[0], START[1], cmd, high, low];
    let [lrc_high, lrc_low] = checksum(&body).to_be_bytes();
    [body[0], body[1], cmd, high, low, lrc_high, lrc_low]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        let mut n = 0;
        for (slot, byte) in out.iter_mut().zip(s.split_whitespace()) {
            *slot = u8::from_str_radix(byte, 16).unwrap();
            n += 1;
        }
        assert_eq!(n, N, "{s}");
        out
    }

    /// First frames of PyPMS `tests/captured_data/PMSx003.hexdump` (a PMS5003 capture).
    const CAPTURE_1: &str = "42 4d 00 1c 00 00 00 08 00 08 00 00 00 08 00 08 00 d2 00 46 00 2d 00 1e 00 00 00 00 97 00 02 c5";
    const CAPTURE_2: &str = "42 4d 00 1c 00 00 00 07 00 07 00 00 00 07 00 07 00 bd 00 3f 00 2a 00 1b 00 00 00 00 97 00 02 9f";
    /// First frame of PyPMS `tests/captured_data/PMS5003T.hexdump` (temp 21.2, rhum 22.4).
    const CAPTURE_T: &str = "42 4d 00 1c 00 17 00 27 00 29 00 16 00 23 00 29 10 08 04 a9 01 16 00 0c 00 d4 00 e0 9a 00 04 aa";
    /// PyPMS "known good data": PM 5/13/22, checksum 0x03c5.
    const GOOD_DATA: &str = "42 4d 00 1c 00 05 00 0d 00 16 00 05 00 0d 00 16 02 fd 00 fc 00 1d 00 0f 00 06 00 06 97 00 03 c5";
    /// PyPMS "wrong length" case: length field 0.
    const WRONG_LENGTH: &str = "42 4d 00 00 00 05 00 0d 00 16 00 05 00 0d 00 16 02 fd 00 fc 00 1d 00 0f 00 06 00 06 97 00 03 a9";

    #[test]
    fn captured_frames_parse_to_their_published_values() {
        assert_eq!(
            parse(&hex(CAPTURE_1)),
            Ok([0, 8, 8, 0, 8, 8, 210, 70, 45, 30, 0, 0, 0x9700])
        );
        assert_eq!(
            parse(&hex(CAPTURE_2)),
            Ok([0, 7, 7, 0, 7, 7, 189, 63, 42, 27, 0, 0, 0x9700])
        );
        assert_eq!(
            parse(&hex(GOOD_DATA)),
            Ok([5, 13, 22, 5, 13, 22, 765, 252, 29, 15, 6, 6, 0x9700])
        );
        let t = parse(&hex(CAPTURE_T)).unwrap();
        assert_eq!((t[PM1_0], t[PM2_5], t[PM10], t[N0_3]), (22, 35, 41, 4104));
        assert_eq!(t[T_TEMPERATURE] as i16, 212);
        assert_eq!(t[T_HUMIDITY], 224);
    }

    #[test]
    fn encode_reproduces_the_captured_bytes() {
        for cap in [CAPTURE_1, CAPTURE_2, CAPTURE_T, GOOD_DATA] {
            let bytes: [u8; FRAME_LEN] = hex(cap);
            assert_eq!(encode(&data_words(&bytes)), bytes);
        }
    }

    #[test]
    fn bad_start_length_and_checksum_are_told_apart() {
        let mut bytes: [u8; FRAME_LEN] = hex(GOOD_DATA);
        bytes[0] = 0x43;
        assert_eq!(parse(&bytes), Err(FrameError::Start));
        assert_eq!(parse(&hex(WRONG_LENGTH)), Err(FrameError::Length(0)));
        let mut bytes: [u8; FRAME_LEN] = hex(GOOD_DATA);
        bytes[12] ^= 0x01;
        assert_eq!(
            parse(&bytes),
            Err(FrameError::Checksum {
                expected: 0x03c5,
                computed: 0x03c6
            })
        );
        assert_eq!(length_field(&bytes[..3]), None);
        assert_eq!(length_field(&bytes[..4]), Some(28));
    }

    #[test]
    fn commands_match_the_datasheet() {
        assert_eq!(
            command(CMD_CHANGE_MODE, 0),
            [0x42, 0x4d, 0xe1, 0x00, 0x00, 0x01, 0x70]
        );
        assert_eq!(
            command(CMD_CHANGE_MODE, 1),
            [0x42, 0x4d, 0xe1, 0x00, 0x01, 0x01, 0x71]
        );
        assert_eq!(
            command(CMD_READ_PASSIVE, 0),
            [0x42, 0x4d, 0xe2, 0x00, 0x00, 0x01, 0x71]
        );
        assert_eq!(
            command(CMD_SLEEP_WAKE, 0),
            [0x42, 0x4d, 0xe4, 0x00, 0x00, 0x01, 0x73]
        );
        assert_eq!(
            command(CMD_SLEEP_WAKE, 1),
            [0x42, 0x4d, 0xe4, 0x00, 0x01, 0x01, 0x74]
        );
    }

    proptest::proptest! {
        #[test]
        fn encode_then_parse_is_identity(words in proptest::array::uniform13(proptest::num::u16::ANY)) {
            proptest::prop_assert_eq!(parse(&encode(&words)), Ok(words));
        }

        #[test]
        fn every_frame_that_parses_reencodes_to_its_bytes(
            body in proptest::array::uniform28(proptest::num::u8::ANY),
            valid_header in proptest::bool::ANY,
        ) {
            let mut bytes = [0u8; FRAME_LEN];
            bytes[2..30].copy_from_slice(&body);
            if valid_header {
                bytes[..4].copy_from_slice(&[0x42, 0x4d, 0x00, 0x1c]);
            }
            let sum = checksum(&bytes[..30]);
            bytes[30..].copy_from_slice(&sum.to_be_bytes());
            match parse(&bytes) {
                Ok(words) => proptest::prop_assert_eq!(encode(&words), bytes),
                Err(_) => proptest::prop_assert!(!valid_header),
            }
        }
    }
}
