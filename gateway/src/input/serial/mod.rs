//! Serial input: one task per `[[inputs.serial]]` port (UART or RS-485 adapter), transport only.
//!
//! The task opens the port with `tokio-serial` (8N1, raw, no flow control), and then either
//! - **streams** (`pms5003`, `sds011`, `node`, `nmea0183`, `vaisala`, `lines`): reads whatever arrives, feeds it to the
//!   protocol's pure decoder ([`StreamDecoder`]), stamps each reading with [`now_ns`] when the read
//!   that completed its frame returns, spaces readings of one series that share a read at least
//!   1 ms apart ([`SeriesSpacer`]: frames that piled up while the task was busy would otherwise
//!   carry one timestamp, and a store keeps only one point per series and time), and commits the
//!   readings to the durable buffer (for `node`, the acks are written back to the port only
//!   once the commit has succeeded: see below). The text protocols frame lines
//!   (`decode::text_line`); NMEA fixes and `lines` with a `time` capture keep their own time (the spacer only moves readings
//!   stamped on receipt), and a port with `poll` writes its command every `poll_interval_ms`
//!   (`serial_polls_total{port}`); or
//! - **polls** (`modbus_rtu`): every `poll_interval_ms`, sends the read requests planned from the
//!   register map ([`modbus::plan_requests`]) with `tokio-modbus`, one slave after the other, each
//!   with its own timeout, so a dead or garbling slave costs one timeout per poll and never
//!   blocks the others. A failed request is counted (`modbus_errors_total{port,slave,reason}`)
//!   and simply tried again at the next poll; a bad answer never becomes a reading.
//!
//! A port missing at start, or vanishing (read/write error, end of file: a USB adapter
//! unplugged), is reopened with exponential backoff (0.2 s doubling to 30 s); the logs say which
//! port is down and since when, and so do the status registry ([`StatusRegistry::serial_ports`]) and the metrics. Nothing of
//! this touches the other inputs.
//!
//! # Node acks: only for what is durable
//!
//! A sensor node keeps each reading in its ring until an `Ack` covers it, so an ack written
//! before the buffer has the reading on disk can lose it. The node decoder works in two phases
//! ([`crate::decode::node`]): a chunk gives readings and a [`Pending`]; the readings are
//! committed; only when the commit has succeeded is the `Pending` confirmed, and the acks that
//! confirmation returns (plus a `RequestStatus` when something is missing) are written to the
//! port. A read the port gives while a commit waits stays in the kernel's buffer meanwhile.
//!
//! When the buffer refuses an append, the readings are **dropped unconfirmed, not kept and
//! retried here**: the node still holds them (nothing acked them) and resends them when asked,
//! and the decoder, which knows they were received but never made durable, accepts the resend
//! (as `redelivered`, not as a duplicate) and asks for it with the first confirmation after the
//! buffer takes data again. Keeping a copy here would buffer the same readings twice, need its
//! own byte bound, and stall the port while a retry waits; the node's ring already is the
//! bounded store for unacknowledged readings (if the outage outlasts it, the node drops its
//! oldest and counts `ring_dropped`). After a refusal, node readings are not offered to the
//! buffer for [`NODE_COMMIT_BACKOFF_START`], doubling to [`NODE_COMMIT_BACKOFF_CAP`] (each
//! failed append on a full disk makes the buffer drop an old segment, so hammering it costs
//! data); readings skipped so are not acked either and count in `node_readings_unacked_total`.
//! The other stream protocols and Modbus cannot resend: a refused commit loses their readings,
//! counted in `serial_commit_errors_total` and logged.
//!
//! # Metrics (label `port` = the input's `name`, else its device path)
//!
//! `serial_frames_total{port,result=ok|skipped|no_fix|no_time|no_match|no_values|bad}`, `serial_frames_bad_total{port,reason}`
//! (reasons: [`crate::decode::serial_frame::BadFrame::label`], the node decoder's labels, or
//! the text protocols' [`crate::decode::text_line::BadLine::label`]: `checksum`, `too_long`, …), `serial_port_up{port}` (0/1),
//! `serial_port_down_since_seconds{port}` (Unix time the port went down, 0 while up),
//! `serial_reads_total{port}`, `modbus_requests_total{port,slave}`,
//! `modbus_errors_total{port,slave,reason}` ([`ModbusFailure::label`]),
//! `serial_commit_errors_total{port}`, `node_readings_unacked_total{port}`,
//! `node_frames_lost_total{port}`, `node_reboots_total{port}`, `node_duplicates_total{port}`.
//!
//! Logs: each bad frame is a `debug` line; at the default level a port receiving bad frames
//! gets one `warn` summary (counts by reason) at once, then at most one per
//! [`BAD_FRAME_LOG_INTERVAL`], so a port spewing garbage cannot flood the log.

pub use crate::spacer::SeriesSpacer;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_modbus::client::{Context as ModbusContext, Reader};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::Slave;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tracing::Instrument;

use crate::backoff::{Backoff, Jitter};
use crate::clock::now_ns;
use crate::loglimit::LogLimiter;
use crate::shutdown::Shutdown;
pub mod config;
mod health;
mod poll;
mod stream;

use crate::decode::lines::LinesDecoder;
use crate::decode::modbus::{self, classify_unanswered, ModbusFailure, ModbusRequest};
use crate::decode::nmea0183::{NmeaDecoder, NmeaSpec};
use crate::decode::node::{NodeDecoder, Pending};
use crate::decode::pms5003::{Pms5003Decoder, Pms5003Variant};
use crate::decode::sds011::{Sds011Decoder, Sds011Frame};
use crate::decode::serial_frame::DecodeEvent;
use crate::decode::text_line::LineOutput;
use crate::decode::vaisala::{VaisalaDecoder, VaisalaSpec};
use crate::model::{Priority, Reading};
use crate::pipeline::Ingest;
pub use crate::status::SerialPortStatus;
use crate::status::StatusRegistry;
pub use config::{SerialInputConfig, SerialProtocol};
use health::PortHealth;
pub use poll::modbus_request_timeout;
use poll::modbus_session;
use stream::stream_session;
pub use stream::{
    PollCommand, StreamDecoder, StreamOutput, BAD_FRAME_LOG_INTERVAL, NODE_COMMIT_BACKOFF_CAP,
    NODE_COMMIT_BACKOFF_START,
};

/// First reopen delay after a port is lost or missing.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest reopen delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A partial frame with no byte for this long is reported as truncated and dropped.
pub const IDLE_FLUSH: Duration = Duration::from_millis(500);
/// Longest wait for one Modbus answer (shorter when the poll interval is short: half of it,
/// but at least 100 ms).
pub const MODBUS_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a serial input cannot run at all (it never retries these).
#[derive(Debug, thiserror::Error)]
pub enum SerialInputError {
    #[error("serial input {port}: protocol \"modbus_rtu\" needs at least one [[inputs.serial.registers]] entry")]
    NoRegisters { port: String },
    #[error("serial input {port}: key `{key}`: {message}")]
    BadDecoder {
        port: String,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The task.

/// Opens a serial device 8N1, raw, without flow control.
pub fn open_port(path: &Path, baud: u32) -> Result<SerialStream, tokio_serial::Error> {
    tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native_async()
}

/// How a session on an open port ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// The `port` label of an input: its name, else its device path.
pub fn port_label(cfg: &SerialInputConfig) -> String {
    cfg.name
        .clone()
        .unwrap_or_else(|| cfg.port.display().to_string())
}

/// Runs one serial input until `shutdown` turns true (or its sender is dropped). Returns an error
/// only for a configuration this build cannot run (a `modbus_rtu` port without registers);
/// a missing or vanishing port is retried forever.
pub async fn run_serial_input(
    cfg: SerialInputConfig,
    index: usize,
    ingest: Ingest,
    shutdown: Shutdown,
) -> Result<(), SerialInputError> {
    let port = port_label(&cfg);
    let span = tracing::info_span!("serial", input = index, port = %port);
    run_port(cfg, port, ingest, &shutdown)
        .instrument(span)
        .await
}

async fn run_port(
    cfg: SerialInputConfig,
    port: String,
    ingest: Ingest,
    shutdown: &Shutdown,
) -> Result<(), SerialInputError> {
    let mut stream_decoder =
        StreamDecoder::for_port(&cfg).map_err(|(key, message)| SerialInputError::BadDecoder {
            port: port.clone(),
            key,
            message,
        })?;
    let plan = modbus::plan_requests(&cfg.registers);
    let poll = PollCommand::for_port(&cfg);
    if stream_decoder.is_none() && plan.is_empty() {
        return Err(SerialInputError::NoRegisters { port });
    }
    let mut health = PortHealth::new(&port, &cfg.port, ingest.status().clone());
    // A local device: nobody else to meet on reconnect, so no jitter.
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP).with_jitter(Jitter::None);
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        match open_port(&cfg.port, cfg.baud) {
            Ok(stream) => {
                health.up();
                backoff.reset();
                let end = match stream_decoder.as_mut() {
                    Some(decoder) => {
                        decoder.reset();
                        stream_session(stream, decoder, poll.as_ref(), &port, &ingest, shutdown)
                            .await
                    }
                    None => modbus_session(stream, &cfg, &plan, &port, &ingest, shutdown).await,
                };
                match end {
                    SessionEnd::Shutdown => return Ok(()),
                    SessionEnd::Lost(e) => {
                        health.down(&format!("{} lost: {e}", cfg.port.display()))
                    }
                }
            }
            Err(e) => health.down(&format!("cannot open {}: {e}", cfg.port.display())),
        }
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

async fn commit(port: &str, ingest: &Ingest, readings: Vec<Reading>) {
    if let Err(e) = try_commit(port, ingest, readings).await {
        // A PMS5003, SDS011 or Modbus slave cannot resend: these readings are lost. Counted.
        tracing::error!(port, "readings lost, the buffer refused them: {e}");
    }
}

/// Encodes and appends `readings`; `Ok` once they are durable (or there was nothing to write).
async fn try_commit(
    port: &str,
    ingest: &Ingest,
    readings: Vec<Reading>,
) -> Result<(), crate::buffer::BufferError> {
    if readings.is_empty() {
        return Ok(());
    }
    let mut lp = Vec::new();
    let lines = ingest.encode(port, readings, &mut lp);
    let result = ingest.commit(Priority::Normal, lines, lp).await;
    if result.is_err() {
        metrics::counter!("serial_commit_errors_total", "port" => port.to_owned()).increment(1);
    }
    result
}

#[cfg(test)]
mod series_spacer_tests {
    use super::*;
    use crate::model::FieldValue;

    fn reading(sensor: &str, ts: i64, v: f64) -> Reading {
        Reading {
            measurement: "pms5003".into(),
            tags: BTreeMap::from([("sensor_id".to_string(), sensor.to_string())]),
            fields: BTreeMap::from([("pm2_5".to_string(), FieldValue::Float(v))]),
            timestamp_ns: ts,
        }
    }

    #[test]
    fn frames_of_one_read_get_distinct_increasing_times_per_series() {
        let t = 1_700_000_000_000_000_000;
        let mut spacer = SeriesSpacer::default();
        let mut rs = vec![
            reading("a", t, 1.0),
            reading("b", t, 9.0),
            reading("a", t, 2.0),
            reading("a", t, 3.0),
            reading("b", t, 8.0),
        ];
        spacer.space(&mut rs);
        let times: Vec<i64> = rs.iter().map(|r| r.timestamp_ns - t).collect();
        assert_eq!(times, vec![0, 0, 1_000_000, 2_000_000, 1_000_000]);
        // The next read, 0.5 ms later than the first: after the last of its series.
        let mut next = vec![
            reading("a", t + 500_000, 4.0),
            reading("b", t + 40_000_000, 7.0),
        ];
        spacer.space(&mut next);
        assert_eq!(next[0].timestamp_ns - t, 3_000_000);
        assert_eq!(next[1].timestamp_ns - t, 40_000_000);
    }

    #[test]
    fn clearly_older_readings_are_left_alone() {
        let t = 1_700_000_000_000_000_000;
        let mut spacer = SeriesSpacer::default();
        let mut rs = vec![reading("a", t, 1.0), reading("a", t - 60_000_000_000, 2.0)];
        spacer.space(&mut rs);
        assert_eq!(rs[1].timestamp_ns, t - 60_000_000_000);
        let mut later = vec![reading("a", t, 3.0)];
        spacer.space(&mut later);
        assert_eq!(later[0].timestamp_ns, t + 1_000_000);
    }
}
