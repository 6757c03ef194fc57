//! ioc-model: what flows through the gateway's pipeline, and nothing that moves it.
//!
//! ```text
//!  input ─► decode ─► Reading ─► limits ─► line protocol ─► buffer ─► output
//!                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ this crate
//! ```
//!
//! - [`Reading`] and [`Reading::validate`]: the one shape every input produces;
//! - [`ReadingView`], [`ReadingMut`] and [`ReadingBuf`]: what the checks and the encoder read, and
//!   a reusable reading for the hot path that allocates nothing per message;
//! - [`limits`]: the configurable checks against hostile or broken input (pure: the gateway
//!   counts and logs what they refuse);
//! - [`line_protocol`]: the encoder every output and the buffer share.
//!
//! It depends on no runtime, network or file format, so decoders, the buffer, the simulators
//! and the fuzz targets can all use it.

pub mod limits;
pub mod line_protocol;
mod reading;
mod view;

pub use line_protocol::{encode, encode_all, Flavor};
pub use reading::*;
pub use view::{FieldRef, ReadingBuf, ReadingMut, ReadingView};
