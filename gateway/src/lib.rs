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
pub mod build_info;
pub mod cli;
pub mod clock;
pub mod config;
pub mod fleet_health;
pub mod http;
pub mod input;
pub mod limits;
pub mod loglimit;
pub mod metrics_catalog;
pub mod output;
pub mod pipeline;
pub mod reload;
pub mod secret;
pub mod shutdown;
pub mod spacer;
pub mod status;
pub mod supervise;
pub mod tls;
pub mod totals;

// The pipeline's pure stages are crates of their own; these names keep `crate::model::Reading`
// and friends reading as the pipeline they are.
pub use ioc_buffer as buffer;
pub use ioc_decode as decode;
pub use ioc_model as model;
