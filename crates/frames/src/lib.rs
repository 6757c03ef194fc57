//! `ioc-frames`: the byte-level formats of the serial sensors ioc-gateway reads, in one place.
//!
//! Why it exists: the gateway's decoders, the sensor-node firmware and the simulators all read or
//! write the same frames; each used to carry its own copy of the layout and checksum. This crate
//! holds only the bytes: frame layouts, encoders, validating parsers and checksums. Streaming
//! (resynchronisation over a noisy line), readings and I/O stay with their users.
//!
//! `#![no_std]` and heap-free, so the firmware can use it; the `alloc` feature adds
//! [`modbus::with_crc`] on `Vec`s for std users.
//!
//! | module | format |
//! |---|---|
//! | [`pms5003`] | Plantower PMS5003 / PMS7003 / PMS5003T: 32-byte data frames, 7-byte commands |
//! | [`sds011`] | Nova Fitness SDS011: 10-byte measurement and command-reply frames |
//! | [`modbus`] | Modbus RTU: CRC-16/MODBUS, read requests and answers |
//! | [`text`] | the XOR checksum of NMEA 0183 sentences and Vaisala WMT700 messages |
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;
// proptest's macros name `std` items.
#[cfg(test)]
extern crate std;

pub mod modbus;
pub mod pms5003;
pub mod sds011;
pub mod text;
