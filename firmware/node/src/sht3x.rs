//! Sensirion SHT3x temperature / humidity driver over `embedded_hal::i2c::I2c`.
//!
//! Exists so the node can take a single-shot, high-repeatability measurement without clock
//! stretching (command `0x24 0x00`), wait for it (max 15.5 ms per datasheet table 4, we wait
//! [`MEASUREMENT_WAIT_MS`]), read the 6-byte answer (T msb, T lsb, CRC, RH msb, RH lsb, CRC),
//! check the CRC-8 of each word and convert with the datasheet formulas:
//! `T = -45 + 175 * raw / 65535` °C and `RH = 100 * raw / 65535` %.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Default I2C address (ADDR pin low).
pub const DEFAULT_ADDRESS: u8 = 0x44;
/// Alternate I2C address (ADDR pin high).
pub const ALTERNATE_ADDRESS: u8 = 0x45;
/// Single shot, high repeatability, clock stretching disabled.
pub const MEASURE_HIGH_REPEATABILITY: [u8; 2] = [0x24, 0x00];
/// Time to wait between the measurement command and the read, ms.
pub const MEASUREMENT_WAIT_MS: u32 = 16;

/// A failed SHT3x measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sht3xError<E> {
    /// The I2C bus failed (NACK, arbitration loss, ...).
    I2c(E),
    /// A word's CRC-8 did not match: the answer was corrupted.
    Crc,
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sht3xMeasurement {
    /// Temperature, °C.
    pub temperature_c: f32,
    /// Relative humidity, %.
    pub humidity_pct: f32,
}

/// CRC-8 of the SHT3x: polynomial 0x31, init 0xFF, no reflection, no final XOR.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc: u8 = 0xFF;
    for &byte in data {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Temperature in °C from the raw 16-bit word.
pub fn temperature_from_raw(raw: u16) -> f32 {
    -45.0 + 175.0 * f32::from(raw) / 65535.0
}

/// Relative humidity in % from the raw 16-bit word.
pub fn humidity_from_raw(raw: u16) -> f32 {
    100.0 * f32::from(raw) / 65535.0
}

/// Check and convert the 6 bytes read after a measurement command.
pub fn parse_measurement(bytes: &[u8; 6]) -> Result<Sht3xMeasurement, Sht3xError<()>> {
    let [t_hi, t_lo, t_crc, h_hi, h_lo, h_crc] = *bytes;
    if crc8(&[t_hi, t_lo]) != t_crc || crc8(&[h_hi, h_lo]) != h_crc {
        return Err(Sht3xError::Crc);
    }
    Ok(Sht3xMeasurement {
        temperature_c: temperature_from_raw(u16::from_be_bytes([t_hi, t_lo])),
        humidity_pct: humidity_from_raw(u16::from_be_bytes([h_hi, h_lo])),
    })
}

/// An SHT3x on an I2C bus.
#[derive(Debug)]
pub struct Sht3x<I2C, D> {
    i2c: I2C,
    delay: D,
    address: u8,
}

impl<I2C: I2c, D: DelayNs> Sht3x<I2C, D> {
    /// A driver for the sensor at `address` ([`DEFAULT_ADDRESS`] or [`ALTERNATE_ADDRESS`]).
    pub fn new(i2c: I2C, delay: D, address: u8) -> Self {
        Self {
            i2c,
            delay,
            address,
        }
    }

    /// Single-shot high-repeatability measurement: write `0x24 0x00`, wait, read 6 bytes.
    pub fn measure(&mut self) -> Result<Sht3xMeasurement, Sht3xError<I2C::Error>> {
        self.i2c
            .write(self.address, &MEASURE_HIGH_REPEATABILITY)
            .map_err(Sht3xError::I2c)?;
        self.delay.delay_ms(MEASUREMENT_WAIT_MS);
        let mut answer = [0u8; 6];
        self.i2c
            .read(self.address, &mut answer)
            .map_err(Sht3xError::I2c)?;
        parse_measurement(&answer).map_err(|_| Sht3xError::Crc)
    }

    /// Give back the bus and the delay.
    pub fn release(self) -> (I2C, D) {
        (self.i2c, self.delay)
    }
}
