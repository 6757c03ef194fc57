//! Shared by the serial tests: real pseudo-terminals standing in for UART adapters, a udev-like
//! stable symlink, and PMS5003 frames captured from a real sensor.
#![allow(dead_code)]

use std::path::Path;

/// A raw pseudo-terminal pair from the test harness (one helper for these tests and the
/// end-to-end ones).
pub use ioc_e2e::pty;

/// Points the symlink `link` at `target` (a stable device path, as udev gives a USB adapter),
/// atomically replacing what it pointed to.
pub fn relink(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Bytes from a hex dump ("42 4d 00 1c …").
pub fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

// PMS5003 frames captured from a real sensor (PyPMS `tests/captured_data/PMSx003.hexdump`).
pub const PMS_1: &str = "42 4d 00 1c 00 00 00 08 00 08 00 00 00 08 00 08 00 d2 00 46 00 2d 00 1e 00 00 00 00 97 00 02 c5";
pub const PMS_2: &str = "42 4d 00 1c 00 00 00 07 00 07 00 00 00 07 00 07 00 bd 00 3f 00 2a 00 1b 00 00 00 00 97 00 02 9f";
