//! SHT3x driver against embedded-hal-mock I2C transactions from the datasheet.

use embedded_hal::i2c::ErrorKind;
use embedded_hal_mock::eh1::delay::{CheckedDelay, Transaction as DelayTx};
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2cTx};
use ioc_node::sht3x::*;

#[test]
fn datasheet_crc_example() {
    // SHT3x datasheet, table 19: CRC(0xBEEF) = 0x92
    assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    assert_eq!(crc8(&[0x00, 0x00]), 0x81);
    assert_eq!(crc8(&[0xFF, 0xFF]), 0xAC);
}

#[test]
fn conversions_match_datasheet_formulas() {
    assert_eq!(temperature_from_raw(0), -45.0);
    assert_eq!(temperature_from_raw(0xFFFF), 130.0);
    assert_eq!(humidity_from_raw(0), 0.0);
    assert_eq!(humidity_from_raw(0xFFFF), 100.0);
    assert!((temperature_from_raw(0x6666) - 25.0).abs() < 0.001);
}

#[test]
fn single_shot_measurement() {
    let expectations = [
        I2cTx::write(0x44, vec![0x24, 0x00]),
        I2cTx::read(0x44, vec![0x66, 0x66, 0x93, 0x80, 0x00, 0xA2]),
    ];
    let mut i2c = I2cMock::new(&expectations);
    let mut delay = CheckedDelay::new(&[DelayTx::delay_ms(16)]);
    let mut sensor = Sht3x::new(i2c.clone(), delay.clone(), DEFAULT_ADDRESS);
    let m = sensor.measure().unwrap();
    assert!((m.temperature_c - 25.0).abs() < 0.001, "{m:?}");
    assert!((m.humidity_pct - 50.000763).abs() < 0.0001, "{m:?}");
    i2c.done();
    delay.done();
}

#[test]
fn alternate_address_is_used() {
    let expectations = [
        I2cTx::write(0x45, vec![0x24, 0x00]),
        I2cTx::read(0x45, vec![0x00, 0x00, 0x81, 0xFF, 0xFF, 0xAC]),
    ];
    let mut i2c = I2cMock::new(&expectations);
    let mut sensor = Sht3x::new(
        i2c.clone(),
        embedded_hal_mock::eh1::delay::NoopDelay::new(),
        ALTERNATE_ADDRESS,
    );
    let m = sensor.measure().unwrap();
    assert_eq!(m.temperature_c, -45.0);
    assert_eq!(m.humidity_pct, 100.0);
    i2c.done();
}

#[test]
fn bad_temperature_crc_is_rejected() {
    let expectations = [
        I2cTx::write(0x44, vec![0x24, 0x00]),
        I2cTx::read(0x44, vec![0x66, 0x66, 0x92, 0x80, 0x00, 0xA2]),
    ];
    let mut i2c = I2cMock::new(&expectations);
    let mut sensor = Sht3x::new(
        i2c.clone(),
        embedded_hal_mock::eh1::delay::NoopDelay::new(),
        DEFAULT_ADDRESS,
    );
    assert_eq!(sensor.measure(), Err(Sht3xError::Crc));
    i2c.done();
}

#[test]
fn bad_humidity_crc_is_rejected() {
    let expectations = [
        I2cTx::write(0x44, vec![0x24, 0x00]),
        I2cTx::read(0x44, vec![0x66, 0x66, 0x93, 0x80, 0x01, 0xA2]),
    ];
    let mut i2c = I2cMock::new(&expectations);
    let mut sensor = Sht3x::new(
        i2c.clone(),
        embedded_hal_mock::eh1::delay::NoopDelay::new(),
        DEFAULT_ADDRESS,
    );
    assert_eq!(sensor.measure(), Err(Sht3xError::Crc));
    i2c.done();
}

#[test]
fn nack_on_command_is_a_bus_error_and_stops() {
    let expectations = [I2cTx::write(0x44, vec![0x24, 0x00]).with_error(ErrorKind::Other)];
    let mut i2c = I2cMock::new(&expectations);
    let mut sensor = Sht3x::new(
        i2c.clone(),
        embedded_hal_mock::eh1::delay::NoopDelay::new(),
        DEFAULT_ADDRESS,
    );
    assert_eq!(sensor.measure(), Err(Sht3xError::I2c(ErrorKind::Other)));
    i2c.done();
}

#[test]
fn nack_on_read_is_a_bus_error() {
    let expectations = [
        I2cTx::write(0x44, vec![0x24, 0x00]),
        I2cTx::read(0x44, vec![0; 6]).with_error(ErrorKind::Other),
    ];
    let mut i2c = I2cMock::new(&expectations);
    let mut sensor = Sht3x::new(
        i2c.clone(),
        embedded_hal_mock::eh1::delay::NoopDelay::new(),
        DEFAULT_ADDRESS,
    );
    assert_eq!(sensor.measure(), Err(Sht3xError::I2c(ErrorKind::Other)));
    i2c.done();
}
