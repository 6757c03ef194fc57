//! ioc-gateway: an edge telemetry gateway for smart-city operations centres.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//!  sensors ─► input ─► decode ─► model::Reading ─► buffer (disk) ─► output ─► IOC store
//!            (mqtt,    (pure fns   (validated)      (segments, CRC,  (gzip'd line protocol,
//!             serial)   over bytes)                  group commit)    retry, ack ⇒ delete)
//! ```
//!
//! An input acknowledges a message to its source only once the buffer says the readings are
//! durable; the buffer deletes data only once the store has confirmed it.

pub mod aggregate;
pub mod app;
pub mod backoff;
pub mod buffer;
pub mod buffercmd;
pub mod clock;
pub mod config;
pub mod decode;
pub mod http;
pub mod input;
pub mod limits;
pub mod loglimit;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod probe;
pub mod spacer;
pub mod status;
pub mod statuscmd;
