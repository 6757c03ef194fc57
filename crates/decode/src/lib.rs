//! Decoders: pure functions from bytes (or JSON) to validated [`ioc_model::Reading`]s.
//! They know nothing of tokio, so they are easy to test, fuzz and share.

pub mod camera;
pub mod csv;
pub mod json;
pub mod line_protocol;
pub mod lines;
pub mod mapping;
pub mod modbus;
pub mod nmea0183;
pub mod node;
pub mod payload;
pub mod pms5003;
pub mod presets;
pub mod scalar;
pub mod sds011;
pub mod serial_frame;
pub mod text_line;
pub mod timefmt;
pub mod vaisala;
