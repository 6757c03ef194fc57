//! An independent PMS5003 frame encoder, written by hand from the Plantower datasheet table, for
//! the tests that build frames the gateway must decode.
//!
//! Why it exists: the gateway, the firmware and the simulators all take the PMS5003 byte layout
//! from `ioc-frames`. A test that built its frames with `ioc-frames` too would pass with a wrong
//! layout on both sides; frames built here share no code with it, so a bug there shows. Keep it
//! that way: this module must not use `ioc-frames`, `ioc-decode` or the gateway.
//!
//! Frame: `42 4d`, length `00 1c` (28), 13 big-endian `u16` words (PM1.0 / PM2.5 / PM10 CF=1,
//! the same atmospheric, six particle counts, reserved), then the big-endian 16-bit sum of the
//! 30 bytes before it.

/// The values of one frame, in the datasheet's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pms5003Values {
    /// PM1.0, PM2.5, PM10 µg/m³ at CF=1.
    pub cf1: [u16; 3],
    /// PM1.0, PM2.5, PM10 µg/m³, atmospheric environment.
    pub atmospheric: [u16; 3],
    /// Particles per 0.1 L above 0.3, 0.5, 1.0, 2.5, 5.0, 10 µm.
    pub counts: [u16; 6],
    /// Reserved word (firmware version, error code).
    pub reserved: u16,
}

/// The 16-bit sum of `bytes` (a frame's checksum is that of its bytes 0..30).
pub fn pms5003_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u16 = 0;
    for b in bytes {
        sum = sum.wrapping_add(u16::from(*b));
    }
    sum
}

/// The 32 bytes a PMS5003 sends for `values`.
pub fn pms5003_frame(values: &Pms5003Values) -> [u8; 32] {
    let mut frame = [0u8; 32];
    frame[0] = 0x42;
    frame[1] = 0x4d;
    frame[2] = 0x00;
    frame[3] = 0x1c;
    let words = values
        .cf1
        .iter()
        .chain(&values.atmospheric)
        .chain(&values.counts)
        .chain(std::iter::once(&values.reserved));
    for (i, word) in words.enumerate() {
        frame[4 + 2 * i] = (word >> 8) as u8;
        frame[5 + 2 * i] = (word & 0xff) as u8;
    }
    let sum = pms5003_checksum(&frame[..30]);
    frame[30] = (sum >> 8) as u8;
    frame[31] = (sum & 0xff) as u8;
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_a_frame_captured_from_a_real_sensor() {
        // PyPMS `tests/captured_data/PMSx003.hexdump`, first frame.
        let captured: [u8; 32] = [
            0x42, 0x4d, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x08,
            0x00, 0x08, 0x00, 0xd2, 0x00, 0x46, 0x00, 0x2d, 0x00, 0x1e, 0x00, 0x00, 0x00, 0x00,
            0x97, 0x00, 0x02, 0xc5,
        ];
        let values = Pms5003Values {
            cf1: [0, 8, 8],
            atmospheric: [0, 8, 8],
            counts: [210, 70, 45, 30, 0, 0],
            reserved: 0x9700,
        };
        assert_eq!(pms5003_frame(&values), captured);
    }
}
