//! Serial input: one task per `[[inputs.serial]]` port (UART or RS-485 adapter), transport only.
//!
//! The task opens the port with `tokio-serial` (8N1, raw, no flow control), and then either
//! - **streams** (`pms5003`, `sds011`, `node`): reads whatever arrives, feeds it to the
//!   protocol's pure decoder ([`StreamDecoder`]), stamps each reading with [`now_ns`] when the read
//!   that completed its frame returns, spaces readings of one series that share a read at least
//!   1 ms apart ([`SeriesSpacer`]: frames that piled up while the task was busy would otherwise
//!   carry one timestamp, and a store keeps only one point per series and time), and commits the
//!   readings to the durable buffer (for `node`, the acks are written back to the port only
//!   once the commit has succeeded: see below); or
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
//! `serial_frames_total{port,result=ok|skipped|bad}`, `serial_frames_bad_total{port,reason}`
//! (reasons: [`crate::decode::serial_frame::BadFrame::label`], or the node decoder's labels), `serial_port_up{port}` (0/1),
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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
use crate::decode::modbus::{self, classify_unanswered, ModbusFailure, ModbusRequest};
use crate::decode::node::{NodeDecoder, Pending};
use crate::decode::pms5003::{Pms5003Decoder, Pms5003Variant};
use crate::decode::sds011::{Sds011Decoder, Sds011Frame};
use crate::decode::serial_frame::DecodeEvent;
use crate::model::{Priority, Reading};
use crate::pipeline::Ingest;
pub use crate::status::SerialPortStatus;
use crate::status::StatusRegistry;
pub use config::{SerialInputConfig, SerialProtocol};

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
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Port state changes: logs, gauges and the status registry together.
struct PortHealth {
    port: String,
    down_since: Option<SystemTime>,
    status: StatusRegistry,
}

impl PortHealth {
    fn new(port: &str, path: &Path, status: StatusRegistry) -> Self {
        let now = SystemTime::now();
        status.register_port(port, path, now);
        metrics::gauge!("serial_port_up", "port" => port.to_owned()).set(0.0);
        metrics::gauge!("serial_port_down_since_seconds", "port" => port.to_owned())
            .set(unix_seconds(now));
        PortHealth {
            port: port.to_owned(),
            down_since: Some(now),
            status,
        }
    }

    fn up(&mut self) {
        if let Some(since) = self.down_since.take() {
            let secs = since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
            tracing::info!(port = %self.port, down_for_s = format!("{secs:.1}"), "serial port open");
        }
        metrics::gauge!("serial_port_up", "port" => self.port.clone()).set(1.0);
        metrics::gauge!("serial_port_down_since_seconds", "port" => self.port.clone()).set(0.0);
        self.status.update_port(&self.port, |s| {
            s.up = true;
            s.down_since = None;
            s.up_since = Some(SystemTime::now());
            s.last_error = None;
        });
    }

    /// The port is (still) down because of `error`. Logs a warning when it goes down, and at
    /// most one reminder per backoff step after that.
    fn down(&mut self, error: &str) {
        let since = *self.down_since.get_or_insert_with(SystemTime::now);
        let since_unix = unix_seconds(since);
        let down_for = since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        tracing::warn!(
            port = %self.port,
            down_since_unix = since_unix as u64,
            down_for_s = down_for,
            "serial port down: {error}"
        );
        metrics::gauge!("serial_port_up", "port" => self.port.clone()).set(0.0);
        metrics::gauge!("serial_port_down_since_seconds", "port" => self.port.clone())
            .set(since_unix);
        let error = error.to_owned();
        self.status.update_port(&self.port, |s| {
            s.up = false;
            s.down_since = Some(since);
            s.up_since = None;
            s.last_error = Some(error);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Stream protocols (shared with the probe tool).

/// What one chunk of bytes gave.
#[derive(Debug, Default)]
pub struct StreamOutput {
    pub readings: Vec<Reading>,
    /// Node frames: what the readings cover. Hand it to [`StreamDecoder::confirm`] once they
    /// are durable; its result (the acks) goes back to the port. Dropped if the commit failed.
    pub node_pending: Pending,
    /// Frames decoded.
    pub good: u64,
    /// Valid frames that carry no reading (SDS011 command replies).
    pub skipped: u64,
    /// Bad frames and noise runs, by reason label.
    pub bad: Vec<&'static str>,
    /// Node frames: sequence numbers lost, reboots seen and duplicates dropped in this push.
    pub node_frames_lost: u64,
    pub node_reboots: u64,
    pub node_duplicates: u64,
}

impl StreamOutput {
    pub fn clear(&mut self) {
        self.readings.clear();
        self.node_pending = Pending::default();
        self.good = 0;
        self.skipped = 0;
        self.bad.clear();
        self.node_frames_lost = 0;
        self.node_reboots = 0;
        self.node_duplicates = 0;
    }
}

/// A streaming protocol's decoder plus what turns its frames into readings.
#[derive(Debug)]
pub enum StreamDecoder {
    Pms5003 {
        decoder: Pms5003Decoder,
        variant: Pms5003Variant,
        sensor_id: Option<String>,
        tags: BTreeMap<String, String>,
    },
    Sds011 {
        decoder: Sds011Decoder,
        sensor_id: Option<String>,
        tags: BTreeMap<String, String>,
    },
    /// Our own sensor nodes (`decode::node`); its acks go back to the port once the readings
    /// are durable ([`StreamDecoder::confirm`]).
    Node(Box<NodeDecoder>),
}

impl StreamDecoder {
    /// The decoder for a streaming protocol (`None` for `modbus_rtu`, which is polled).
    ///
    /// PMS5003T: the frame cannot say which variant sent it (see `decode::pms5003`), so the port
    /// says it: `protocol = "pms5003t"` (or, as before, tag `model = "pms5003t"`).
    pub fn for_port(cfg: &SerialInputConfig) -> Option<Self> {
        let mut tags = cfg.tags.clone();
        Some(match cfg.protocol {
            SerialProtocol::Pms5003 | SerialProtocol::Pms5003t => {
                let variant = if cfg.protocol == SerialProtocol::Pms5003t
                    || tags.get("model").map(String::as_str) == Some("pms5003t")
                {
                    Pms5003Variant::T
                } else {
                    Pms5003Variant::Standard
                };
                tags.remove("model");
                StreamDecoder::Pms5003 {
                    decoder: Pms5003Decoder::new(),
                    variant,
                    sensor_id: cfg.sensor_id.clone(),
                    tags,
                }
            }
            SerialProtocol::Sds011 => StreamDecoder::Sds011 {
                decoder: Sds011Decoder::new(),
                sensor_id: cfg.sensor_id.clone(),
                tags,
            },
            SerialProtocol::Node => {
                StreamDecoder::Node(Box::new(NodeDecoder::new(tags, gateway_boot_id())))
            }
            SerialProtocol::ModbusRtu => return None,
        })
    }

    /// Protocol name for logs and the probe tool.
    pub fn protocol_name(&self) -> &'static str {
        match self {
            StreamDecoder::Pms5003 { .. } => "pms5003",
            StreamDecoder::Sds011 { .. } => "sds011",
            StreamDecoder::Node(_) => "node",
        }
    }

    /// Bytes waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        match self {
            StreamDecoder::Pms5003 { decoder, .. } => decoder.buffered(),
            StreamDecoder::Sds011 { decoder, .. } => decoder.buffered(),
            // Node frames are delimited by a zero byte: a partial one is dropped by the next
            // delimiter, so it never needs an idle flush.
            StreamDecoder::Node(_) => 0,
        }
    }

    /// Feeds bytes received at `now_ns`; appends what they gave to `out`.
    pub fn push(&mut self, bytes: &[u8], now_ns: i64, out: &mut StreamOutput) {
        self.run(Some(bytes), now_ns, out);
    }

    /// The readings `pending` covers are durable: the bytes to write back to the port (node
    /// acks, resend requests). Empty for the other protocols, which have no acks.
    pub fn confirm(&mut self, pending: Pending, now_ns: i64) -> Vec<u8> {
        match self {
            StreamDecoder::Node(decoder) => decoder.confirm(pending, now_ns),
            StreamDecoder::Pms5003 { .. } | StreamDecoder::Sds011 { .. } => Vec::new(),
        }
    }

    /// The line went idle: reports a partial frame as truncated.
    pub fn flush(&mut self, out: &mut StreamOutput) {
        self.run(None, 0, out);
    }

    /// Forgets a partial frame (after the port was reopened), without counting it.
    pub fn reset(&mut self) {
        if let StreamDecoder::Node(decoder) = self {
            decoder.reset_stream();
            return;
        }
        let mut scratch = StreamOutput::default();
        self.flush(&mut scratch);
    }

    fn run(&mut self, bytes: Option<&[u8]>, now_ns: i64, out: &mut StreamOutput) {
        match self {
            StreamDecoder::Pms5003 {
                decoder,
                variant,
                sensor_id,
                tags,
            } => {
                let mut events = Vec::new();
                match bytes {
                    Some(b) => decoder.push(b, &mut events),
                    None => decoder.flush(&mut events),
                }
                for e in events {
                    match e {
                        DecodeEvent::Frame(f) => {
                            out.good += 1;
                            out.readings.push(f.to_reading(
                                *variant,
                                sensor_id.as_deref(),
                                tags,
                                now_ns,
                            ));
                        }
                        DecodeEvent::Skipped { .. } => out.skipped += 1,
                        DecodeEvent::Bad { reason, .. } => out.bad.push(reason.label()),
                    }
                }
            }
            StreamDecoder::Sds011 {
                decoder,
                sensor_id,
                tags,
            } => {
                let mut events = Vec::new();
                match bytes {
                    Some(b) => decoder.push(b, &mut events),
                    None => decoder.flush(&mut events),
                }
                for e in events {
                    match e {
                        DecodeEvent::Frame(Sds011Frame::Data(d)) => {
                            out.good += 1;
                            out.readings
                                .push(d.to_reading(sensor_id.as_deref(), tags, now_ns));
                        }
                        DecodeEvent::Frame(Sds011Frame::Reply(_)) | DecodeEvent::Skipped { .. } => {
                            out.skipped += 1
                        }
                        DecodeEvent::Bad { reason, .. } => out.bad.push(reason.label()),
                    }
                }
            }
            StreamDecoder::Node(decoder) => {
                let Some(bytes) = bytes else {
                    return;
                };
                let before = decoder.counters();
                let mut batch = decoder.push(bytes, now_ns);
                let after = decoder.counters();
                out.good += after.frames.saturating_sub(before.frames);
                out.node_frames_lost += after.frames_lost.saturating_sub(before.frames_lost);
                out.node_reboots += after.reboots.saturating_sub(before.reboots);
                out.node_duplicates += after.duplicates.saturating_sub(before.duplicates);
                out.readings.append(&mut batch.readings);
                out.node_pending.merge(batch.pending);
                out.bad.extend(batch.errors.iter().map(|e| e.label()));
            }
        }
    }
}

/// A random id for this gateway process, sent in the header of the frames it sends to nodes.
fn gateway_boot_id() -> u32 {
    rand::random()
}

/// How often a port that keeps receiving bad frames says so in the log (the first time at once).
/// Each bad frame is only a `debug` line: a port spewing garbage must not flood the log.
pub const BAD_FRAME_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The rate-limited warning about bad frames on one port: the first bad frame is reported at
/// once, then at most one summary per [`BAD_FRAME_LOG_INTERVAL`], with the counts by reason
/// since the previous line.
#[derive(Debug)]
struct BadFrameLog {
    lines: LogLimiter,
    good: u64,
    bad: BTreeMap<&'static str, u64>,
}

impl Default for BadFrameLog {
    fn default() -> Self {
        BadFrameLog {
            lines: LogLimiter::new(1, BAD_FRAME_LOG_INTERVAL),
            good: 0,
            bad: BTreeMap::new(),
        }
    }
}

impl BadFrameLog {
    /// Adds what one read gave; returns the summary when it is time to log one (and logs it).
    fn note(&mut self, port: &str, out: &StreamOutput, now: Instant) -> Option<String> {
        self.good += out.good;
        for reason in &out.bad {
            *self.bad.entry(reason).or_default() += 1;
        }
        if self.bad.is_empty() {
            return None;
        }
        self.lines.admit(now)?;
        let total: u64 = self.bad.values().sum();
        let reasons: Vec<String> = self.bad.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let summary = format!(
            "{total} bad frames ({}) and {} good since the last report",
            reasons.join(" "),
            self.good
        );
        tracing::warn!(
            port,
            "{summary}: check the wiring, baud rate and protocol (said at most every {} s)",
            BAD_FRAME_LOG_INTERVAL.as_secs()
        );
        self.good = 0;
        self.bad.clear();
        Some(summary)
    }
}

fn count_frames(port: &str, status: &StatusRegistry, out: &StreamOutput) {
    if out.node_frames_lost > 0 {
        metrics::counter!("node_frames_lost_total", "port" => port.to_owned())
            .increment(out.node_frames_lost);
        tracing::warn!(
            port,
            lost = out.node_frames_lost,
            "node frames lost (sequence gap)"
        );
    }
    if out.node_reboots > 0 {
        metrics::counter!("node_reboots_total", "port" => port.to_owned())
            .increment(out.node_reboots);
        tracing::warn!(port, "a sensor node rebooted (new boot id)");
    }
    if out.node_duplicates > 0 {
        metrics::counter!("node_duplicates_total", "port" => port.to_owned())
            .increment(out.node_duplicates);
    }
    if out.good > 0 {
        metrics::counter!("serial_frames_total", "port" => port.to_owned(), "result" => "ok")
            .increment(out.good);
    }
    if out.skipped > 0 {
        metrics::counter!("serial_frames_total", "port" => port.to_owned(), "result" => "skipped")
            .increment(out.skipped);
    }
    for reason in &out.bad {
        metrics::counter!("serial_frames_total", "port" => port.to_owned(), "result" => "bad")
            .increment(1);
        metrics::counter!("serial_frames_bad_total", "port" => port.to_owned(), "reason" => *reason)
            .increment(1);
        tracing::debug!(port, reason, "bad serial frame");
    }
    let (good, bad) = (out.good, out.bad.len() as u64);
    if good > 0 || bad > 0 {
        status.update_port(port, |s| {
            s.good_frames += good;
            s.bad_frames += bad;
            for reason in &out.bad {
                *s.bad_by_reason.entry((*reason).to_owned()).or_default() += 1;
            }
        });
    }
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
    let mut stream_decoder = StreamDecoder::for_port(&cfg);
    let plan = modbus::plan_requests(&cfg.registers);
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
                        stream_session(stream, decoder, &port, &ingest, shutdown).await
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

/// After the buffer refused node readings, how long the next ones are not even offered to it
/// (doubling up to [`NODE_COMMIT_BACKOFF_CAP`], back to the start after a commit that worked).
pub const NODE_COMMIT_BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest pause in offering node readings to a buffer that refuses them.
pub const NODE_COMMIT_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Node readings the buffer refused: when to offer the next ones, and how long after that.
#[derive(Debug)]
struct NodeCommitBackoff {
    /// While set and in the future, node readings are dropped unacknowledged without a try.
    until: Option<Instant>,
    /// The local disk is the only peer: no jitter.
    backoff: Backoff,
}

impl Default for NodeCommitBackoff {
    fn default() -> Self {
        NodeCommitBackoff {
            until: None,
            backoff: Backoff::new(NODE_COMMIT_BACKOFF_START, NODE_COMMIT_BACKOFF_CAP)
                .with_jitter(Jitter::None),
        }
    }
}

impl NodeCommitBackoff {
    fn waiting(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now < t)
    }

    fn refused(&mut self, now: Instant) -> Duration {
        let wait = self.backoff.next_wait();
        self.until = Some(now + wait);
        wait
    }

    fn worked(&mut self) {
        self.until = None;
        self.backoff.reset();
    }
}

/// Node frames, phase 2: commits the readings; only if they are durable does the decoder
/// confirm them, and only then are its acks written to the port. Returns the port error, if the
/// write failed.
async fn commit_node_readings(
    stream: &mut SerialStream,
    decoder: &mut StreamDecoder,
    port: &str,
    ingest: &Ingest,
    readings: Vec<Reading>,
    pending: Pending,
    backoff: &mut NodeCommitBackoff,
) -> Result<(), io::Error> {
    if pending.is_empty() && readings.is_empty() {
        return Ok(());
    }
    let now = Instant::now();
    if !readings.is_empty() && backoff.waiting(now) {
        // Not offered, not acked: the node keeps them and resends them when asked.
        metrics::counter!("node_readings_unacked_total", "port" => port.to_owned())
            .increment(readings.len() as u64);
        return Ok(());
    }
    let n = readings.len();
    match try_commit(port, ingest, readings).await {
        Ok(()) => {
            backoff.worked();
            let replies = decoder.confirm(pending, now_ns());
            if !replies.is_empty() {
                stream.write_all(&replies).await?;
            }
        }
        Err(e) => {
            let wait = backoff.refused(Instant::now());
            metrics::counter!("node_readings_unacked_total", "port" => port.to_owned())
                .increment(n as u64);
            tracing::warn!(
                port,
                readings = n,
                retry_in_ms = wait.as_millis() as u64,
                "the buffer refused node readings: not acknowledged, the node keeps them and \
                 resends them once the buffer takes data again: {e}"
            );
        }
    }
    Ok(())
}

async fn stream_session(
    mut stream: SerialStream,
    decoder: &mut StreamDecoder,
    port: &str,
    ingest: &Ingest,
    shutdown: &Shutdown,
) -> SessionEnd {
    let mut buf = vec![0u8; 4096];
    let mut out = StreamOutput::default();
    let mut bad_log = BadFrameLog::default();
    let mut spacer = SeriesSpacer::default();
    let mut node_backoff = NodeCommitBackoff::default();
    loop {
        out.clear();
        let read = tokio::select! {
            _ = shutdown.wait() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(IDLE_FLUSH, stream.read(&mut buf)) => r,
        };
        match read {
            Err(_idle) => {
                if decoder.buffered() == 0 {
                    continue;
                }
                decoder.flush(&mut out);
            }
            Ok(Ok(0)) => return SessionEnd::Lost("end of file".into()),
            Ok(Ok(n)) => {
                metrics::counter!("serial_reads_total", "port" => port.to_owned()).increment(1);
                let Some(bytes) = buf.get(..n) else {
                    continue;
                };
                decoder.push(bytes, now_ns(), &mut out);
            }
            Ok(Err(e)) => return SessionEnd::Lost(e.to_string()),
        }
        spacer.space(&mut out.readings);
        count_frames(port, ingest.status(), &out);
        bad_log.note(port, &out, Instant::now());
        let readings = std::mem::take(&mut out.readings);
        if matches!(decoder, StreamDecoder::Node(_)) {
            let pending = std::mem::take(&mut out.node_pending);
            if let Err(e) = commit_node_readings(
                &mut stream,
                decoder,
                port,
                ingest,
                readings,
                pending,
                &mut node_backoff,
            )
            .await
            {
                return SessionEnd::Lost(format!("write: {e}"));
            }
        } else {
            commit(port, ingest, readings).await;
        }
    }
}

/// A transport that keeps a copy of the bytes it reads, so that a Modbus request that got no
/// decodable answer can be classified (timeout vs bad CRC vs garbled): `tokio-modbus` silently
/// drops a frame whose CRC is wrong and keeps waiting.
#[derive(Debug)]
struct TapStream<S> {
    inner: S,
    received: Arc<Mutex<Vec<u8>>>,
}

/// Bytes kept by [`TapStream`] per request, at most (an RTU frame is at most 256 bytes).
const TAP_LIMIT: usize = 256;

impl<S: AsyncRead + Unpin> AsyncRead for TapStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            if let Some(new) = buf.filled().get(before..) {
                let mut log = self.received.lock().unwrap_or_else(|e| e.into_inner());
                let room = TAP_LIMIT.saturating_sub(log.len());
                log.extend_from_slice(&new[..new.len().min(room)]);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TapStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The per-request timeout for a poll interval (see [`MODBUS_REQUEST_TIMEOUT`]).
pub fn modbus_request_timeout(poll_interval: Duration) -> Duration {
    (poll_interval / 2).clamp(Duration::from_millis(100), MODBUS_REQUEST_TIMEOUT)
}

async fn modbus_session(
    stream: SerialStream,
    cfg: &SerialInputConfig,
    plan: &[ModbusRequest],
    port: &str,
    ingest: &Ingest,
    shutdown: &Shutdown,
) -> SessionEnd {
    let received = Arc::new(Mutex::new(Vec::new()));
    let tap = TapStream {
        inner: stream,
        received: Arc::clone(&received),
    };
    let mut ctx = tokio_modbus::client::rtu::attach_slave(tap, Slave(1));
    let poll_interval = Duration::from_millis(cfg.poll_interval_ms.max(1));
    let request_timeout = modbus_request_timeout(poll_interval);
    let port_tags = modbus::PortTags {
        sensor_id: cfg.sensor_id.clone(),
        tags: cfg.tags.clone(),
    };
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return SessionEnd::Shutdown,
            _ = ticker.tick() => {}
        }
        let mut readings = Vec::new();
        for request in plan {
            if shutdown.is_triggered() {
                commit(port, ingest, readings).await;
                return SessionEnd::Shutdown;
            }
            received.lock().unwrap_or_else(|e| e.into_inner()).clear();
            let outcome = poll_one(&mut ctx, request, request_timeout, &received).await;
            let slave = request.slave.to_string();
            metrics::counter!("modbus_requests_total", "port" => port.to_owned(), "slave" => slave.clone())
                .increment(1);
            match outcome {
                PollOutcome::Answer(words) => {
                    let (mut r, errors) =
                        modbus::readings_from_answer(request, &words, &port_tags, now_ns());
                    for (field, e) in &errors {
                        count_modbus_error(port, ingest.status(), &slave, ModbusFailure::Value);
                        tracing::warn!(
                            port,
                            slave = request.slave,
                            field,
                            "register value rejected: {e}"
                        );
                    }
                    if !r.is_empty() {
                        ingest.status().update_port(port, |s| s.good_frames += 1);
                    }
                    readings.append(&mut r);
                }
                PollOutcome::Failed(failure, detail) => {
                    count_modbus_error(port, ingest.status(), &slave, failure);
                    tracing::warn!(
                        port,
                        slave = request.slave,
                        function = request.function,
                        address = request.address,
                        reason = failure.label(),
                        "modbus request failed, retried next poll: {detail}"
                    );
                }
                PollOutcome::PortLost(e) => {
                    // Answers decoded earlier in this poll are good readings: keep them.
                    commit(port, ingest, readings).await;
                    return SessionEnd::Lost(e);
                }
            }
        }
        commit(port, ingest, readings).await;
    }
}

fn count_modbus_error(port: &str, status: &StatusRegistry, slave: &str, failure: ModbusFailure) {
    metrics::counter!(
        "modbus_errors_total",
        "port" => port.to_owned(),
        "slave" => slave.to_owned(),
        "reason" => failure.label()
    )
    .increment(1);
    status.update_port(port, |s| {
        s.bad_frames += 1;
        *s.bad_by_reason
            .entry(format!("slave={slave},reason={}", failure.label()))
            .or_default() += 1;
    });
}

enum PollOutcome {
    Answer(Vec<u16>),
    Failed(ModbusFailure, String),
    PortLost(String),
}

async fn poll_one(
    ctx: &mut ModbusContext,
    request: &ModbusRequest,
    timeout: Duration,
    received: &Mutex<Vec<u8>>,
) -> PollOutcome {
    ctx.set_slave(Slave(request.slave));
    let call = async {
        if request.function == 3 {
            ctx.read_holding_registers(request.address, request.count)
                .await
        } else {
            ctx.read_input_registers(request.address, request.count)
                .await
        }
    };
    let result = tokio::time::timeout(timeout, call).await;
    let classify = || {
        let bytes = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
        classify_unanswered(request.slave, request.function, &bytes)
    };
    match result {
        Err(_elapsed) => {
            let failure = classify();
            PollOutcome::Failed(
                failure,
                format!("no valid answer within {} ms", timeout.as_millis()),
            )
        }
        Ok(Ok(Ok(words))) if words.len() == usize::from(request.count) => {
            PollOutcome::Answer(words)
        }
        Ok(Ok(Ok(words))) => PollOutcome::Failed(
            ModbusFailure::Protocol,
            format!("asked for {} registers, got {}", request.count, words.len()),
        ),
        Ok(Ok(Err(exception))) => {
            PollOutcome::Failed(ModbusFailure::Exception, format!("{exception:?}"))
        }
        Ok(Err(tokio_modbus::Error::Protocol(e))) => {
            PollOutcome::Failed(ModbusFailure::Protocol, e.to_string())
        }
        Ok(Err(tokio_modbus::Error::Transport(e))) if e.kind() == io::ErrorKind::InvalidData => {
            PollOutcome::Failed(classify(), e.to_string())
        }
        Ok(Err(tokio_modbus::Error::Transport(e))) => PollOutcome::PortLost(e.to_string()),
    }
}

#[cfg(test)]
mod bad_frame_log_tests {
    use super::*;

    fn output(good: u64, bad: &[&'static str]) -> StreamOutput {
        StreamOutput {
            good,
            bad: bad.to_vec(),
            ..StreamOutput::default()
        }
    }

    #[test]
    fn first_bad_frame_is_reported_at_once_then_one_summary_per_interval() {
        let mut log = BadFrameLog::default();
        let t0 = Instant::now();
        assert_eq!(
            log.note("p", &output(3, &[]), t0),
            None,
            "good frames alone say nothing"
        );
        assert_eq!(
            log.note("p", &output(1, &["noise", "checksum", "noise"]), t0)
                .as_deref(),
            Some("3 bad frames (checksum=1 noise=2) and 4 good since the last report")
        );
        for i in 1..1000u64 {
            let at = t0 + Duration::from_millis(i * 50);
            assert_eq!(log.note("p", &output(1, &["length", "noise"]), at), None);
        }
        let next = log.note("p", &output(0, &["noise"]), t0 + BAD_FRAME_LOG_INTERVAL);
        assert_eq!(
            next.as_deref(),
            Some("1999 bad frames (length=999 noise=1000) and 999 good since the last report")
        );
        assert_eq!(
            log.note("p", &output(0, &["noise"]), t0 + BAD_FRAME_LOG_INTERVAL),
            None
        );
    }
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
