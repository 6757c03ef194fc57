//! Outputs: line protocol encoding, the HTTP writer to InfluxDB / VictoriaMetrics, and the
//! forwarder that feeds it from the buffer.
//!
//! [`line_protocol`] turns validated readings into lines; [`influx`] sends gzip'd batches of
//! those lines with one policy for every fault a store can show (retry, split a bad batch,
//! dead-letter the lines the store refuses).

pub mod filter;
pub mod forwarder;
pub mod influx;
pub use ioc_model::line_protocol;

pub use forwarder::{run_forwarder, ForwarderConfig, OutputSetup};
pub use influx::{Api, Delivered, InfluxSink, InfluxSinkConfig, SinkError, WriteOutcome};
pub use line_protocol::{encode, Flavor};
