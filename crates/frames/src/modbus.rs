//! Modbus RTU framing, as in "MODBUS over Serial Line Specification V1.02" (§2.5.1.1 RTU frame,
//! §6.2.2 CRC generation) and "MODBUS Application Protocol Specification V1.1b3" (§6.3/§6.4
//! read holding / input registers, §7 exception responses).
//!
//! # Frames
//!
//! ```text
//! request, functions 1..6     slave fn ADDR_H ADDR_L COUNT_H COUNT_L CRC_L CRC_H     8 bytes
//! request, functions 15, 16   slave fn ADDR(2) COUNT(2) N DATA(N) CRC_L CRC_H     9 + N bytes
//! read answer (3, 4)          slave fn N DATA(N) CRC_L CRC_H                      5 + N bytes
//! exception answer            slave fn|0x80 CODE CRC_L CRC_H                         5 bytes
//! ```
//!
//! Register addresses, counts and data words are big-endian; the CRC-16/MODBUS (reflected
//! polynomial 0xA001, initial value 0xFFFF) covers every byte before it and is sent low byte
//! first.

use core::fmt;

/// Bytes of the CRC at the end of every frame.
pub const CRC_LEN: usize = 2;
/// Bytes of a request for functions 1 to 6 (e.g. a read of holding or input registers).
pub const READ_REQUEST_LEN: usize = 8;
/// Bytes of an exception answer.
pub const EXCEPTION_LEN: usize = 5;
/// Set in the function code of an exception answer.
pub const EXCEPTION_FLAG: u8 = 0x80;

/// Why a frame's CRC does not check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcError {
    /// Fewer bytes than a CRC.
    Short(usize),
    /// The CRC the frame carries is not the CRC of its body.
    Mismatch {
        /// CRC carried by the frame.
        expected: u16,
        /// CRC computed over the body received.
        computed: u16,
    },
}

impl fmt::Display for CrcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrcError::Short(n) => write!(f, "Modbus frame of {n} bytes has no room for a CRC"),
            CrcError::Mismatch { expected, computed } => write!(
                f,
                "Modbus CRC {expected:#06x} in the frame, {computed:#06x} computed"
            ),
        }
    }
}

/// CRC-16/MODBUS of `data` (poly 0xA001 reflected, init 0xFFFF).
pub const fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    let mut i = 0;
    while i < data.len() {
        crc ^= data[i] as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xa001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        i += 1;
    }
    crc
}

/// The two CRC bytes that follow `body` on the wire (low byte first).
pub const fn crc_bytes(body: &[u8]) -> [u8; CRC_LEN] {
    crc16(body).to_le_bytes()
}

/// Appends the CRC (low byte first) to an RTU frame body.
#[cfg(feature = "alloc")]
pub fn with_crc(mut frame: alloc::vec::Vec<u8>) -> alloc::vec::Vec<u8> {
    let crc = crc_bytes(&frame);
    frame.extend_from_slice(&crc);
    frame
}

/// Checks the CRC at the end of `frame`; gives the body before it.
pub fn check_crc(frame: &[u8]) -> Result<&[u8], CrcError> {
    let Some(split) = frame.len().checked_sub(CRC_LEN) else {
        return Err(CrcError::Short(frame.len()));
    };
    let (body, crc) = frame.split_at(split);
    let expected = u16::from_le_bytes([crc[0], crc[1]]);
    let computed = crc16(body);
    if expected == computed {
        Ok(body)
    } else {
        Err(CrcError::Mismatch { expected, computed })
    }
}

/// A request for `count` registers from `address` of `slave`, with function `function`
/// (3 holding, 4 input registers), CRC included.
pub const fn read_request(slave: u8, function: u8, address: u16, count: u16) -> [u8; 8] {
    let [ah, al] = address.to_be_bytes();
    let [ch, cl] = count.to_be_bytes();
    let [crc_l, crc_h] = crc_bytes(&[slave, function, ah, al, ch, cl]);
    [slave, function, ah, al, ch, cl, crc_l, crc_h]
}

/// How long the request that starts at `bytes[0]` is, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLen {
    /// This many bytes, CRC included.
    Bytes(usize),
    /// More bytes are needed to tell.
    Incomplete,
    /// A function whose request length this module does not know (not 1..6, 15, 16).
    UnknownFunction,
}

/// The length of the request that starts at `bytes[0]`: 8 bytes for functions 1 to 6, 9 + the
/// byte count for 15 and 16 (write multiple coils / registers).
pub fn request_len(bytes: &[u8]) -> RequestLen {
    match bytes.get(1) {
        None => RequestLen::Incomplete,
        Some(1..=6) => RequestLen::Bytes(READ_REQUEST_LEN),
        Some(15 | 16) => match bytes.get(6) {
            Some(n) => RequestLen::Bytes(9 + usize::from(*n)),
            None => RequestLen::Incomplete,
        },
        Some(_) => RequestLen::UnknownFunction,
    }
}

/// The length an answer to a read with `function` claims, from its first bytes: a read answer
/// is 5 + its byte count, an exception [`EXCEPTION_LEN`]. `None` if `answer` does not start like
/// either (wrong function, or too short to tell).
pub fn answer_len(function: u8, answer: &[u8]) -> Option<usize> {
    match answer {
        [_, f, n, ..] if *f == function => Some(3 + usize::from(*n) + CRC_LEN),
        [_, f, ..] if *f == function | EXCEPTION_FLAG => Some(EXCEPTION_LEN),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_modbus_reference() {
        // Modbus spec example (read holding registers): 01 03 00 00 00 0a c5 cd
        assert_eq!(crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0a]), 0xcdc5);
        // "Read input registers 1..2 of slave 1" as sent by XY-MD02 tools: 01 04 00 01 00 02 20 0b
        assert_eq!(
            read_request(1, 4, 1, 2),
            [0x01, 0x04, 0x00, 0x01, 0x00, 0x02, 0x20, 0x0b]
        );
        assert_eq!(
            crc_bytes(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0a]),
            [0xc5, 0xcd]
        );
        // CRC-16/MODBUS check value (catalogue of parametrised CRC algorithms)
        assert_eq!(crc16(b"123456789"), 0x4b37);
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn with_crc_appends_the_crc_low_byte_first() {
        assert_eq!(
            with_crc(alloc::vec![0x01, 0x04, 0x00, 0x01, 0x00, 0x02]),
            [0x01, 0x04, 0x00, 0x01, 0x00, 0x02, 0x20, 0x0b]
        );
    }

    #[test]
    fn check_crc_gives_the_body_or_why_not() {
        let req = read_request(1, 4, 1, 2);
        assert_eq!(check_crc(&req), Ok(&req[..6]));
        let mut bad = req;
        bad[3] ^= 1;
        assert_eq!(
            check_crc(&bad),
            Err(CrcError::Mismatch {
                expected: 0x0b20,
                computed: crc16(&bad[..6])
            })
        );
        assert_eq!(check_crc(&[1]), Err(CrcError::Short(1)));
        assert_eq!(check_crc(&[0xff, 0xff]), Ok(&[][..]));
    }

    #[test]
    fn request_and_answer_lengths() {
        assert_eq!(request_len(&[1]), RequestLen::Incomplete);
        assert_eq!(request_len(&[1, 4]), RequestLen::Bytes(8));
        assert_eq!(request_len(&[1, 16, 0, 1, 0, 2]), RequestLen::Incomplete);
        assert_eq!(request_len(&[1, 16, 0, 1, 0, 2, 4]), RequestLen::Bytes(13));
        assert_eq!(request_len(&[1, 0x2b]), RequestLen::UnknownFunction);
        // XY-MD02 answer: 01 04 04 00 de 02 64 + CRC; exception 01 84 02 + CRC
        assert_eq!(answer_len(4, &[1, 4, 4, 0, 0xde]), Some(9));
        assert_eq!(answer_len(4, &[1, 0x84]), Some(5));
        assert_eq!(answer_len(4, &[1, 4]), None);
        assert_eq!(answer_len(4, &[1, 3, 4]), None);
    }

    proptest::proptest! {
        #[test]
        fn a_frame_with_its_crc_checks_and_any_one_bit_flip_does_not(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            flip in proptest::num::usize::ANY,
            bit in 0u8..8,
        ) {
            let mut frame = body.clone();
            frame.extend_from_slice(&crc_bytes(&body));
            proptest::prop_assert_eq!(check_crc(&frame), Ok(&body[..]));
            let at = flip % frame.len();
            frame[at] ^= 1 << bit;
            proptest::prop_assert!(check_crc(&frame).is_err());
        }

        #[test]
        fn read_requests_have_the_length_they_claim(
            slave in proptest::num::u8::ANY,
            function in 1u8..=6,
            address in proptest::num::u16::ANY,
            count in proptest::num::u16::ANY,
        ) {
            let req = read_request(slave, function, address, count);
            proptest::prop_assert_eq!(request_len(&req), RequestLen::Bytes(req.len()));
            proptest::prop_assert!(check_crc(&req).is_ok());
        }
    }
}
