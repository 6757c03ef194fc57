//! `sensor-sim`: deterministic city sensor simulators for ioc-gateway.
//!
//! Nobody should need a roadside cabinet to test the gateway: this crate plays whole city
//! scenarios (environment stations, traffic counters, AI cameras) over MQTT, records what the
//! broker acknowledged in a manifest, and checks a time-series store against that manifest.
//! Everything that produces bytes is a pure function of the scenario and the seed, so the same
//! seed always gives the same byte stream.

pub mod civil_time;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fleet;
pub mod generator;
pub mod line_sensor;
pub mod manifest;
pub mod modbus_slave;
pub mod models;
pub mod mqtt;
pub mod nmea;
pub mod presets;
pub mod profile;
pub mod rng;
pub mod scenario;
pub mod serial;
pub mod vaisala;
pub mod verify;
pub mod webhook;
