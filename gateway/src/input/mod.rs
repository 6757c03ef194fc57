//! Inputs: transport only (MQTT connections, serial ports, webhooks); decoding lives in
//! [`crate::decode`]. [`set`] runs them, each under its own key, so a reload can restart one
//! alone.

pub mod http;
pub mod mqtt;
pub mod serial;
pub mod set;
