//! PMS5003 driver: exact command bytes, and frames captured from real sensors (PyPMS test data).

mod common;

use common::{hex, FakeSerial};
use embedded_io::ErrorKind;
use ioc_node::pms5003::*;

/// Captured PMS5003 frame (PyPMS "known good data"): PM 5/13/22 CF=1 and atmospheric.
const CAPTURE_A: &str = "424d001c0005000d00160005000d001602fd00fc001d000f00060006970003c5";
/// Another capture (PyPMS captured data): PM 0/8/11.
const CAPTURE_B: &str = "424d001c00000008000b00000008000b00b40039002e001e00000000970002a1";

#[test]
fn command_bytes_are_exact() {
    assert_eq!(CMD_PASSIVE_MODE, [0x42, 0x4D, 0xE1, 0x00, 0x00, 0x01, 0x70]);
    assert_eq!(CMD_READ_PASSIVE, [0x42, 0x4D, 0xE2, 0x00, 0x00, 0x01, 0x71]);
    assert_eq!(CMD_ACTIVE_MODE, [0x42, 0x4D, 0xE1, 0x00, 0x01, 0x01, 0x71]);
    assert_eq!(CMD_SLEEP, [0x42, 0x4D, 0xE4, 0x00, 0x00, 0x01, 0x73]);
    assert_eq!(CMD_WAKE, [0x42, 0x4D, 0xE4, 0x00, 0x01, 0x01, 0x74]);
    for cmd in [
        CMD_PASSIVE_MODE,
        CMD_READ_PASSIVE,
        CMD_ACTIVE_MODE,
        CMD_SLEEP,
        CMD_WAKE,
    ] {
        assert_eq!(checksum(&cmd[..5]).to_be_bytes(), [cmd[5], cmd[6]]);
    }
}

#[test]
fn driver_writes_each_command() {
    let mut pms = Pms5003::new(FakeSerial::default());
    pms.set_passive().unwrap();
    pms.set_active().unwrap();
    pms.sleep().unwrap();
    pms.wake().unwrap();
    let serial = pms.release();
    let expected: Vec<u8> = [CMD_PASSIVE_MODE, CMD_ACTIVE_MODE, CMD_SLEEP, CMD_WAKE].concat();
    assert_eq!(serial.tx, expected);
}

#[test]
fn passive_read_of_captured_frame() {
    let mut pms = Pms5003::new(FakeSerial::with_rx(&hex(CAPTURE_A)));
    let r = pms.read_passive().unwrap();
    assert_eq!(
        r,
        PmsReading {
            pm1_0_cf1: 5,
            pm2_5_cf1: 13,
            pm10_cf1: 22,
            pm1_0: 5,
            pm2_5: 13,
            pm10: 22,
            particles: [765, 252, 29, 15, 6, 6],
        }
    );
    let serial = pms.release();
    assert_eq!(serial.tx, CMD_READ_PASSIVE);
}

#[test]
fn skips_noise_and_mode_change_answer() {
    // garbage, then the 8-byte answer to "change to passive", then a data frame
    let mut rx = vec![0x00, 0x42, 0x13, 0xFF];
    rx.extend(hex("424d0004e1000174"));
    rx.extend(hex(CAPTURE_B));
    let mut pms = Pms5003::new(FakeSerial::with_rx(&rx));
    let r = pms.read_frame().unwrap();
    assert_eq!((r.pm1_0, r.pm2_5, r.pm10), (0, 8, 11));
    assert_eq!(r.particles, [180, 57, 46, 30, 0, 0]);
}

#[test]
fn bad_checksum_is_rejected() {
    let mut frame = hex(CAPTURE_A);
    frame[12] ^= 0x01; // PM2.5 atmospheric, high byte 0x00 -> 0x01
    let mut pms = Pms5003::new(FakeSerial::with_rx(&frame));
    assert_eq!(
        pms.read_frame(),
        Err(Pms5003Error::Checksum {
            expected: 0x03c5,
            computed: 0x03c6
        })
    );
}

#[test]
fn bad_length_is_rejected() {
    // PyPMS "wrong length" case: length field 0
    let frame = hex("424d00000005000d00160005000d001602fd00fc001d000f00060006970003a9");
    let mut pms = Pms5003::new(FakeSerial::with_rx(&frame));
    assert_eq!(pms.read_frame(), Err(Pms5003Error::BadLength(0)));
}

#[test]
fn short_frame_is_unexpected_eof() {
    let mut pms = Pms5003::new(FakeSerial::with_rx(&hex("424d001c0005000d0016")));
    assert_eq!(pms.read_frame(), Err(Pms5003Error::UnexpectedEof));
}

#[test]
fn no_start_within_limit() {
    let mut pms = Pms5003::new(FakeSerial::with_rx(&[0x55; 200]));
    assert_eq!(pms.read_frame(), Err(Pms5003Error::NoStart));
}

#[test]
fn uart_errors_are_reported() {
    let mut serial = FakeSerial::with_rx(&hex(CAPTURE_A));
    serial.fail_read = Some(ErrorKind::TimedOut);
    let mut pms = Pms5003::new(serial);
    assert_eq!(pms.read_frame(), Err(Pms5003Error::Io(ErrorKind::TimedOut)));

    let serial = FakeSerial {
        fail_write: Some(ErrorKind::BrokenPipe),
        ..FakeSerial::default()
    };
    let mut pms = Pms5003::new(serial);
    assert_eq!(
        pms.read_passive(),
        Err(Pms5003Error::Io(ErrorKind::BrokenPipe))
    );
}

#[test]
fn parse_frame_checks_start() {
    let mut frame = [0u8; FRAME_LEN];
    frame.copy_from_slice(&hex(CAPTURE_A));
    assert!(parse_frame(&frame).is_ok());
    frame[0] = 0x43;
    assert_eq!(parse_frame(&frame), Err(Pms5003Error::NoStart));
}
