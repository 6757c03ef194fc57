//! The XOR checksum of the text protocols: NMEA 0183 sentences (`$…*hh`) and the Vaisala
//! WMT700's `$`-framed data messages (`$…,hh`).
//!
//! Why it is here: the gateway's decoders verify it and the simulators write it (including
//! deliberately wrong ones), so both take it from one place.
//!
//! - NMEA 0183 (IEC 61162-1 §7.3.1): the XOR of every byte between `$` (or `!`) and `*`, both
//!   excluded, written as two hexadecimal digits after the `*`.
//! - WMT700 (User Guide M211095EN, "WMT700 data message 24/25"): the XOR of every byte from
//!   the checksum start point, which is *before* the `$`, to the end point after the last
//!   comma, so the `$` and the last comma are included; printed as two hexadecimal digits.

/// XOR of all bytes.
pub fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// Two upper-case hexadecimal digits of `value`, as the instruments print their checksums.
pub fn hex2(value: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    [
        DIGITS[usize::from(value >> 4)],
        DIGITS[usize::from(value & 0x0f)],
    ]
}

/// Reads two hexadecimal digits (either case); `None` for anything else.
pub fn parse_hex2(digits: &[u8]) -> Option<u8> {
    let [hi, lo] = digits else {
        return None;
    };
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    Some((nibble(*hi)? << 4) | nibble(*lo)?)
}

/// The checksum of an NMEA sentence body (the bytes between `$` and `*`).
pub fn nmea_checksum(body: &[u8]) -> u8 {
    xor(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_of_published_sentences() {
        // AeroRust/nmea src/sentences/rmc.rs: "$GPRMC,225446.33,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E,A*2B"
        let body = b"GPRMC,225446.33,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E,A";
        assert_eq!(nmea_checksum(body), 0x2b);
        assert_eq!(hex2(0x2b), *b"2B");
        // WMT700 User Guide M211095EN-K, "WMT700 data message 25":
        // "$03.22,75.29,03.38,03.07,22.13,0,3E" (the `$` and the last comma are summed).
        assert_eq!(xor(b"$03.22,75.29,03.38,03.07,22.13,0,"), 0x3e);
    }

    #[test]
    fn hex_digits_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(parse_hex2(&hex2(v)), Some(v));
        }
        assert_eq!(parse_hex2(b"2b"), Some(0x2b));
        assert_eq!(parse_hex2(b"2g"), None);
        assert_eq!(parse_hex2(b"2"), None);
    }
}
