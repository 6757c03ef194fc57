//! Shared by the serial tests: real pseudo-terminals standing in for UART adapters, a udev-like
//! stable symlink, and PMS5003 frames captured from a real sensor.
#![allow(dead_code)]

use std::path::Path;

/// A raw pseudo-terminal pair from the test harness (one helper for these tests and the
/// end-to-end ones). Also takes this test process's clock as synchronised ([`trust_clock`]).
pub fn pty() -> ioc_e2e::Pty {
    trust_clock();
    ioc_e2e::pty()
}

/// These tests run the pipeline in process, where nothing reads a `[clock]` section: say that
/// the clock is synchronised (`assume_synced`), as the end-to-end harness does for the binary,
/// so that receipt-stamped readings carry no `clock_unsynced` tag on a machine whose kernel
/// reports its clock unsynchronised. The unsynced behaviour has its own tests (`clock.rs`,
/// `tests/tests/clock_e2e.rs`).
pub fn trust_clock() {
    ioc_gateway::clock::configure(ioc_gateway::clock::ClockSettings {
        assume_synced: true,
        ..Default::default()
    });
}

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
