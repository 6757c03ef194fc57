//! The stream protocols (`pms5003`, `sds011`, `node`, and the text protocols `nmea0183`,
//! `vaisala` and `lines`): bytes as they arrive, through the protocol's pure decoder ([`StreamDecoder`],
//! shared with the probe tool), to readings that are spaced, counted and committed; for `node`,
//! the acks that go back once they are durable; for a text instrument in polled mode, its poll
//! command written every `poll_interval_ms`.

use super::*;

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
    /// Text protocols: valid sentences saying the receiver has no fix.
    pub no_fix: u64,
    /// NMEA: valid VTG sentences that could not be placed at a fix time.
    pub no_time: u64,
    /// Text protocols: lines no pattern matched, and the first of them (for the probe).
    pub no_match: u64,
    pub unmatched: Vec<String>,
    /// `lines`: lines whose every field was empty or a sentinel.
    pub no_values: u64,
    /// `lines` traced (the probe): every line with its outcome.
    pub traced: Vec<(String, &'static str)>,
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
        self.no_fix = 0;
        self.no_time = 0;
        self.no_match = 0;
        self.unmatched.clear();
        self.no_values = 0;
        self.traced.clear();
    }

    /// Adds what a text decoder gave.
    fn add_lines(&mut self, lines: &mut LineOutput) {
        self.readings.append(&mut lines.readings);
        self.good += lines.good;
        self.skipped += lines.skipped;
        self.no_fix += lines.no_fix;
        self.no_time += lines.no_time;
        self.no_match += lines.no_match;
        self.unmatched.append(&mut lines.unmatched);
        self.no_values += lines.no_values;
        self.traced.append(&mut lines.traced);
        self.bad.extend(lines.bad.iter().map(|b| b.label()));
        lines.clear();
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
    /// NMEA 0183 GNSS sentences (`decode::nmea0183`).
    Nmea0183(Box<NmeaDecoder>),
    /// Vaisala weather stations (`decode::vaisala`).
    Vaisala(Box<VaisalaDecoder>),
    /// Any line-based sensor, read by its configured pattern (`decode::lines`).
    Lines(Box<LinesDecoder>),
}

impl StreamDecoder {
    /// The decoder for a streaming protocol (`Ok(None)` for `modbus_rtu`, which is polled);
    /// `Err` (key, message) for a `lines` table that does not compile (the config's validation
    /// refuses it first).
    ///
    /// PMS5003T: the frame cannot say which variant sent it (see `decode::pms5003`), so the port
    /// says it: `protocol = "pms5003t"` (or, as before, tag `model = "pms5003t"`).
    pub fn for_port(cfg: &SerialInputConfig) -> Result<Option<Self>, (String, String)> {
        let mut tags = cfg.tags.clone();
        Ok(Some(match cfg.protocol {
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
            SerialProtocol::Nmea0183 => StreamDecoder::Nmea0183(Box::new(NmeaDecoder::new(
                NmeaSpec {
                    measurement: cfg.measurement.clone(),
                    sensor_id: cfg.sensor_id.clone(),
                    tags,
                },
                cfg.max_line_bytes,
            ))),
            SerialProtocol::Vaisala => StreamDecoder::Vaisala(Box::new(VaisalaDecoder::new(
                VaisalaSpec {
                    measurement: cfg.measurement.clone(),
                    sensor_id: cfg.sensor_id.clone(),
                    tags,
                    wmt700_items: cfg.wmt700_items.clone(),
                },
                cfg.max_line_bytes,
            ))),
            SerialProtocol::Lines => match cfg.compile_lines()? {
                Some(lines) => {
                    StreamDecoder::Lines(Box::new(LinesDecoder::new(lines, cfg.max_line_bytes)))
                }
                None => return Ok(None),
            },
            SerialProtocol::ModbusRtu => return Ok(None),
        }))
    }

    /// The same decoder, recording every line with its outcome in [`StreamOutput::traced`]
    /// (`lines`; the other protocols are unchanged).
    pub fn traced(self) -> Self {
        match self {
            StreamDecoder::Lines(d) => StreamDecoder::Lines(Box::new(d.traced())),
            other => other,
        }
    }

    /// Protocol name for logs and the probe tool.
    pub fn protocol_name(&self) -> &'static str {
        match self {
            StreamDecoder::Pms5003 { .. } => "pms5003",
            StreamDecoder::Sds011 { .. } => "sds011",
            StreamDecoder::Node(_) => "node",
            StreamDecoder::Nmea0183(_) => "nmea0183",
            StreamDecoder::Vaisala(_) => "vaisala",
            StreamDecoder::Lines(_) => "lines",
        }
    }

    /// Whether its readings are stamped on receipt only when they carry no time of their own
    /// (NMEA fixes carry the fix's time, and so do `lines` with a `time` capture, which the
    /// spacer must never move).
    pub fn has_device_time(&self) -> bool {
        match self {
            StreamDecoder::Nmea0183(_) => true,
            StreamDecoder::Lines(d) => d.has_time(),
            _ => false,
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
            StreamDecoder::Nmea0183(d) => d.buffered(),
            StreamDecoder::Vaisala(d) => d.buffered(),
            StreamDecoder::Lines(d) => d.buffered(),
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
            _ => Vec::new(),
        }
    }

    /// The line went idle: reports a partial frame as truncated.
    pub fn flush(&mut self, out: &mut StreamOutput) {
        self.run(None, 0, out);
    }

    /// Forgets a partial frame (after the port was reopened), without counting it.
    pub fn reset(&mut self) {
        match self {
            StreamDecoder::Node(decoder) => return decoder.reset_stream(),
            StreamDecoder::Nmea0183(decoder) => return decoder.reset(),
            StreamDecoder::Vaisala(decoder) => return decoder.reset(),
            StreamDecoder::Lines(decoder) => return decoder.reset(),
            _ => {}
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
            StreamDecoder::Nmea0183(decoder) => {
                let mut lines = LineOutput::default();
                match bytes {
                    Some(b) => decoder.push(b, now_ns, &mut lines),
                    None => decoder.flush(&mut lines),
                }
                out.add_lines(&mut lines);
            }
            StreamDecoder::Vaisala(decoder) => {
                let mut lines = LineOutput::default();
                match bytes {
                    Some(b) => decoder.push(b, now_ns, &mut lines),
                    None => decoder.flush(&mut lines),
                }
                out.add_lines(&mut lines);
            }
            StreamDecoder::Lines(decoder) => {
                let mut lines = LineOutput::default();
                match bytes {
                    Some(b) => decoder.push(b, now_ns, &mut lines),
                    None => decoder.flush(&mut lines),
                }
                out.add_lines(&mut lines);
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
    if out.no_fix > 0 {
        metrics::counter!("serial_frames_total", "port" => port.to_owned(), "result" => "no_fix")
            .increment(out.no_fix);
    }
    if out.no_time > 0 {
        metrics::counter!("serial_frames_total", "port" => port.to_owned(), "result" => "no_time")
            .increment(out.no_time);
    }
    if out.no_match > 0 {
        metrics::counter!("serial_frames_total", "port" => port.to_owned(), "result" => "no_match")
            .increment(out.no_match);
    }
    if out.no_values > 0 {
        metrics::counter!("serial_frames_total", "port" => port.to_owned(), "result" => "no_values")
            .increment(out.no_values);
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

/// A command written to the port at a fixed interval (a text instrument in polled mode).
#[derive(Debug, Clone)]
pub struct PollCommand {
    /// The command with its CR LF.
    pub bytes: Vec<u8>,
    pub interval: Duration,
}

impl PollCommand {
    /// The port's `poll`, if it has one.
    pub fn for_port(cfg: &SerialInputConfig) -> Option<Self> {
        let cmd = cfg.poll.as_ref()?;
        let mut bytes = cmd.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        Some(PollCommand {
            bytes,
            interval: Duration::from_millis(cfg.poll_interval_ms.max(1)),
        })
    }
}

enum SessionEvent {
    Read(Result<io::Result<usize>, tokio::time::error::Elapsed>),
    Poll,
}

pub(super) async fn stream_session(
    mut stream: SerialStream,
    decoder: &mut StreamDecoder,
    poll: Option<&PollCommand>,
    port: &str,
    ingest: &Ingest,
    shutdown: &Shutdown,
) -> SessionEnd {
    let mut ticker = tokio::time::interval(poll.map_or(Duration::from_secs(3600), |p| p.interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 4096];
    let mut out = StreamOutput::default();
    let mut bad_log = BadFrameLog::default();
    let mut spacer = SeriesSpacer::default();
    let mut node_backoff = NodeCommitBackoff::default();
    loop {
        out.clear();
        let event = tokio::select! {
            _ = shutdown.wait() => return SessionEnd::Shutdown,
            _ = ticker.tick(), if poll.is_some() => SessionEvent::Poll,
            r = tokio::time::timeout(IDLE_FLUSH, stream.read(&mut buf)) => SessionEvent::Read(r),
        };
        let read = match event {
            SessionEvent::Poll => {
                let Some(cmd) = poll else { continue };
                if let Err(e) = stream.write_all(&cmd.bytes).await {
                    return SessionEnd::Lost(format!("write: {e}"));
                }
                metrics::counter!("serial_polls_total", "port" => port.to_owned()).increment(1);
                continue;
            }
            SessionEvent::Read(r) => r,
        };
        let received_ns = now_ns();
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
                decoder.push(bytes, received_ns, &mut out);
            }
            Ok(Err(e)) => return SessionEnd::Lost(e.to_string()),
        }
        if decoder.has_device_time() {
            spacer.space_receipt_stamped(&mut out.readings, received_ns);
        } else {
            spacer.space(&mut out.readings);
        }
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

#[cfg(test)]
mod tests {
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
