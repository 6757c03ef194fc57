//! Decoders: pure functions from bytes (or JSON) to validated [`crate::model::Reading`]s.
//! They know nothing of tokio, so they are easy to test, fuzz and share.

pub mod json;
pub mod modbus;
pub mod pms5003;
pub mod sds011;
pub mod serial_frame;
pub mod node;
