//! Firmware of a roadside sensor node: drivers and the node application, `#![no_std]`, no heap.
//!
//! Everything is generic over `embedded-hal` 1.0 (I2C, delays, digital inputs) and `embedded-io`
//! (UARTs), so it runs on any MCU with a HAL and is tested on the host with `embedded-hal-mock`
//! and the peripheral models of `ioc-node-sim`.
//!
//! * [`sht3x`]: Sensirion SHT3x temperature/humidity (I2C, single shot, CRC-8 per word).
//! * [`pms5003`]: Plantower PMS5003 particulate matter (UART, passive mode, 16-bit sum).
//! * [`traffic`]: vehicle counter per lane on a loop/beam detector input (debounce, occupancy).
//! * [`noise`]: sound level in dB from an ADC channel ([`noise::AdcChannel`] is our own trait).
//! * [`app`]: the scheduler [`app::Node`] that samples, frames ([`ioc_wire`]), keeps unacked
//!   readings in a ring, and answers gateway commands.
#![no_std]
#![forbid(unsafe_code)]

pub mod app;
pub mod noise;
pub mod pms5003;
pub mod sht3x;
pub mod traffic;

pub use app::{EnvironmentSensor, NoSensor, Node, NodeConfig, NodeHealth};
