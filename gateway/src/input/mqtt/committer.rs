//! The committer: turns the messages the connection hands over into durable readings, then
//! reports each group back so the session may acknowledge it.
//!
//! Why it exists apart from the connection loop: making readings durable waits on the disk
//! (fsync, a full disk, a hung SD card) and the connection must never wait on the disk (it
//! answers keep-alives and sends acks meanwhile). Between the two there is a bounded queue one
//! way and a results channel the other way; backpressure is the session pausing its reads.
//!
//! Per group (everything waiting, up to [`GROUP_MAX`] messages or [`GROUP_MAX_BYTES`] of payload):
//! 1. each message is decoded with **its own receipt time** (stamped by the connection when the
//!    packet was read), and readings stamped with it are kept ≥ 1 ms apart per series by the
//!    shared [`crate::spacer::SeriesSpacer`]; device timestamps are never changed. A plain JSON
//!    object (the usual message) is decoded into one reused [`ReadingBuf`] and encoded from it,
//!    with the same checks as a [`crate::model::Reading`] gets but nothing allocated per message;
//! 2. readings are encoded (validated, `[limits]`) into line protocol, cut into appends of at most
//!    [`APPEND_MAX_BYTES`] at message boundaries; an append the buffer refuses as too large is
//!    split in halves down to single messages, and only a message that can never be stored is
//!    rejected (counted, logged, acked); other buffer errors are retried with backoff, never
//!    acked;
//! 3. with aggregation, validated and limited readings go to the aggregator, windows close by the
//!    clock on every group (whatever the load) once the connection has been up for
//!    [`AGG_SETTLE`], and the aggregator's state is saved off the async runtime before acking;
//! 4. the packet ids of the group are reported ([`Completion`]), per connection generation.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};

use super::config::RawReadings;
use super::session::Completion;
use super::MqttInputConfig;
use crate::aggregate::Aggregator;
use crate::backoff::Backoff;
use crate::buffer::BufferError;
use crate::decode::payload::PayloadDecoder;
use crate::model::{Priority, ReadingBuf};
use crate::pipeline::{count_rejected, ClockNow, Ingest};
use crate::spacer::SeriesSpacer;

/// Messages committed together at most (one buffer append, one fsync).
pub const GROUP_MAX: usize = 4096;
/// Payload bytes committed together at most.
pub const GROUP_MAX_BYTES: usize = 4 << 20;
/// Line-protocol bytes per buffer append at most; a group that encodes to more is committed in
/// several appends (cut at message boundaries).
pub const APPEND_MAX_BYTES: usize = 4 << 20;
/// How long after connecting aggregation waits before closing windows by the clock: the broker
/// first redelivers what it queued for us, which may belong to those windows.
pub const AGG_SETTLE: Duration = Duration::from_secs(2);

/// One message as handed over by the connection.
#[derive(Debug)]
pub struct Inbound {
    pub generation: u64,
    pub pkid: u16,
    pub qos: QoS,
    pub topic: String,
    pub payload: Bytes,
    /// When its packet was read (ns since the epoch): the time of readings without their own.
    pub received_ns: i64,
}

/// How one input's messages become readings.
pub struct Committer {
    pub name: String,
    pub decoder: PayloadDecoder,
    pub max_payload: usize,
    pub priority: Priority,
    pub ingest: Ingest,
    pub aggregation: Option<Aggregation>,
    pub spacer: SeriesSpacer,
    /// The reading every plain JSON message is decoded into, reused (see [`encode_in_place`]).
    pub reading: ReadingBuf,
}

impl Committer {
    pub fn from_config(
        cfg: &MqttInputConfig,
        name: &str,
        ingest: Ingest,
        aggregation: Option<Aggregation>,
    ) -> Result<Self, String> {
        // The config was validated (which compiles the same spec); an error here is reported
        // as a setup error all the same.
        let decoder =
            PayloadDecoder::new(&cfg.payload_spec()).map_err(|e| format!("payload config: {e}"))?;
        Ok(Committer {
            name: name.to_owned(),
            decoder,
            max_payload: cfg.max_payload_bytes,
            priority: cfg.priority.into(),
            ingest,
            aggregation,
            spacer: SeriesSpacer::default(),
            reading: ReadingBuf::default(),
        })
    }
}

/// Edge aggregation of one input, with where its raw readings go.
pub struct Aggregation {
    pub aggregator: Aggregator,
    pub raw_log: Option<RawLog>,
}

/// Sets up aggregation for an input, resuming saved windows from `data_dir`.
pub fn aggregation(
    cfg: &MqttInputConfig,
    name: &str,
    data_dir: &std::path::Path,
) -> Result<Option<Aggregation>, String> {
    let Some(a) = &cfg.aggregate else {
        return Ok(None);
    };
    let file = format!("{}.state", sanitize(name));
    let aggregator = Aggregator::open(
        a.window_s,
        a.grace_s,
        Some(data_dir.join("aggregate").join(file)),
    )
    .map_err(|e| e.to_string())?;
    let raw_log = (a.raw == RawReadings::Local).then(|| RawLog {
        path: data_dir.join("raw").join(format!("{}.lp", sanitize(name))),
        file: None,
    });
    Ok(Some(Aggregation {
        aggregator,
        raw_log,
    }))
}

pub(super) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Raw readings of an aggregated input kept locally (`raw = "local"`): line protocol appended to
/// `<data_dir>/raw/<input>.lp`, rotated to `.lp.1` at 64 MiB. Not forwarded, not fsync'd.
pub struct RawLog {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl RawLog {
    const ROTATE_BYTES: u64 = 64 << 20;

    fn write(&mut self, lp: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if lp.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        if let Some(f) = &mut self.file {
            f.write_all(lp)?;
            if f.metadata()?.len() >= Self::ROTATE_BYTES {
                self.file = None;
                std::fs::rename(&self.path, self.path.with_extension("lp.1"))?;
            }
        }
        Ok(())
    }
}

/// What one message contributed to the group's line protocol.
#[derive(Debug, Clone, Copy)]
struct Span {
    generation: u64,
    pkid: Option<u16>,
    payload: usize,
    /// End of its lines in the group's line protocol, and the line count up to there.
    lp_end: usize,
    lines_end: u32,
}

/// A group being committed: line protocol and which message wrote which part of it.
#[derive(Default)]
struct Pending {
    lp: Vec<u8>,
    lines: u32,
    spans: Vec<Span>,
}

/// Why the committer stopped early.
enum Stop {
    /// The buffer is shut down: nothing more can be made durable.
    Closed,
}

/// Runs until the hand-off channel closes (shutdown) or the buffer closes.
pub async fn run(
    mut rx: mpsc::Receiver<Inbound>,
    done: mpsc::Sender<Completion>,
    mut c: Committer,
    connected: watch::Receiver<Option<Instant>>,
) {
    let mut group: Vec<Inbound> = Vec::with_capacity(64);
    let mut limiter = crate::loglimit::LogLimiter::new(10, Duration::from_secs(10));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // With aggregation, windows also close by the clock while no message arrives.
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => Some(p),
                None => break,
            },
            _ = tick.tick(), if c.aggregation.is_some() => None,
        };
        group.extend(first);
        let mut group_bytes: usize = group.iter().map(|p| p.payload.len()).sum();
        while !group.is_empty() && group.len() < GROUP_MAX && group_bytes < GROUP_MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    group_bytes += p.payload.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let settled = matches!(*connected.borrow(), Some(t) if t.elapsed() >= AGG_SETTLE);
        if process_group(&mut c, &mut group, settled, &done, &mut limiter)
            .await
            .is_err()
        {
            return;
        }
        limiter.summarise("more rejected messages (see readings_rejected_total)");
    }
}

async fn process_group(
    c: &mut Committer,
    group: &mut Vec<Inbound>,
    settled: bool,
    done: &mpsc::Sender<Completion>,
    limiter: &mut crate::loglimit::LogLimiter,
) -> Result<(), Stop> {
    let mut pending = Pending::default();
    let mut raw = Vec::new();
    // One clock read judges the whole group's readings against `[limits]` (it takes a lock).
    let clock = ClockNow::read();
    for msg in group.drain(..) {
        let pkid = (msg.qos != QoS::AtMostOnce).then_some(msg.pkid);
        let payload = msg.payload.len();
        if payload > c.max_payload {
            count_rejected(&c.name, "payload_too_large");
            if limiter.allow() {
                tracing::warn!(topic = %msg.topic, bytes = payload, limit = c.max_payload,
                    "message rejected: payload larger than max_payload_bytes");
            }
        } else if c.aggregation.is_none() && encode_in_place(c, &msg, clock, &mut pending, limiter)
        {
            // The usual message (a JSON object) went straight into the line protocol.
        } else {
            let decoded = c.decoder.decode(&msg.topic, &msg.payload, msg.received_ns);
            let mut readings = decoded.readings;
            c.spacer
                .space_receipt_stamped(&mut readings, msg.received_ns);
            match &mut c.aggregation {
                None => {
                    if !readings.is_empty() {
                        pending.lines += c.ingest.encode(&c.name, readings, &mut pending.lp);
                    }
                }
                Some(a) => {
                    for r in c.ingest.admit(&c.name, readings) {
                        if let Err(e) = a.aggregator.add(&r) {
                            count_rejected(&c.name, e.label());
                            if limiter.allow() {
                                tracing::warn!(topic = %msg.topic, "reading rejected: {e}");
                            }
                        } else if a.raw_log.is_some() {
                            crate::model::encode(&r, c.ingest.flavor(), &mut raw);
                        }
                    }
                }
            }
            for rejection in decoded.rejected {
                note_rejection(&c.name, &msg.topic, rejection, limiter);
            }
        }
        pending.spans.push(Span {
            generation: msg.generation,
            pkid,
            payload,
            lp_end: pending.lp.len(),
            lines_end: pending.lines,
        });
        if pending.lp.len() >= APPEND_MAX_BYTES {
            // Aggregated inputs never get here (their raw readings are not encoded).
            commit(c, &mut pending, limiter).await?;
            report(done, &pending.spans).await;
            pending = Pending::default();
        }
    }
    // Windows close by the clock on every group, busy or not.
    if let (Some(a), true) = (&mut c.aggregation, settled) {
        let closed = a.aggregator.flush_due(crate::clock::now_ns());
        if !closed.is_empty() {
            let start = pending.lp.len();
            pending.lines += c.ingest.encode(&c.name, closed, &mut pending.lp);
            if pending.lp.len() > start {
                // Not a message: a span of its own so that splitting keeps it whole.
                pending.spans.push(Span {
                    generation: 0,
                    pkid: None,
                    payload: 0,
                    lp_end: pending.lp.len(),
                    lines_end: pending.lines,
                });
            }
        }
    }
    commit(c, &mut pending, limiter).await?;
    if c.aggregation.is_some() {
        save_aggregation(c, &raw).await;
    }
    report(done, &pending.spans).await;
    Ok(())
}

/// The hot path of a message without aggregation: decoded into the committer's reused
/// [`ReadingBuf`] and encoded from it, with the same checks, spacing and refusals as the
/// general path but no reading allocated. False (nothing done) where the payload needs the
/// general path (another format, a mapping, an array of objects).
fn encode_in_place(
    c: &mut Committer,
    msg: &Inbound,
    clock: ClockNow,
    pending: &mut Pending,
    limiter: &mut crate::loglimit::LogLimiter,
) -> bool {
    let buf = &mut c.reading;
    match c
        .decoder
        .decode_into(&msg.topic, &msg.payload, msg.received_ns, buf)
    {
        None => return false,
        Some(Ok(())) => {
            let one = std::slice::from_mut(buf);
            c.spacer.space_receipt_stamped(one, msg.received_ns);
            pending.lines += c
                .ingest
                .encode_slice_at(&c.name, one, clock, &mut pending.lp);
        }
        Some(Err(rejection)) => note_rejection(&c.name, &msg.topic, rejection, limiter),
    }
    true
}

/// Counts and (rate-limited) logs a message or part of one the decoder refused.
fn note_rejection(
    input: &str,
    topic: &str,
    rejection: crate::decode::payload::Rejection,
    limiter: &mut crate::loglimit::LogLimiter,
) {
    let crate::decode::payload::Rejection {
        label,
        reason: message,
    } = rejection;
    count_rejected(input, label);
    if limiter.allow() {
        tracing::warn!(topic = %topic, reason = label, "message rejected: {message}");
    }
}

/// Makes `pending` durable: one append if it fits, else halves down to single messages.
/// Retries errors that may pass (disk full, I/O) with backoff; returns only once every span is
/// durable or rejected for good, or the buffer is closed.
async fn commit(
    c: &Committer,
    pending: &mut Pending,
    limiter: &mut crate::loglimit::LogLimiter,
) -> Result<(), Stop> {
    if pending.lines == 0 {
        return Ok(());
    }
    // Ranges of spans still to commit, as a stack (first range on top).
    let mut todo = vec![(0usize, pending.spans.len())];
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while let Some((lo, hi)) = todo.pop() {
        let (start, start_lines) = match lo {
            0 => (0, 0),
            _ => (
                pending.spans[lo - 1].lp_end,
                pending.spans[lo - 1].lines_end,
            ),
        };
        let (end, end_lines) = (
            pending.spans[hi - 1].lp_end,
            pending.spans[hi - 1].lines_end,
        );
        let lines = end_lines - start_lines;
        if lines == 0 {
            continue;
        }
        let bytes = pending.lp[start..end].to_vec();
        match c.ingest.commit(c.priority, lines, bytes).await {
            Ok(()) => backoff.reset(),
            Err(BufferError::Closed) => {
                tracing::error!(
                    "buffer closed; {} messages left unacked for redelivery",
                    pending.spans.len()
                );
                return Err(Stop::Closed);
            }
            Err(e @ BufferError::TooLarge { .. }) if hi - lo > 1 => {
                tracing::debug!("append refused as too large ({e}); splitting the group");
                let mid = lo + (hi - lo) / 2;
                todo.push((mid, hi));
                todo.push((lo, mid));
            }
            Err(e @ BufferError::TooLarge { .. }) => {
                // One message whose readings can never be stored: refuse it alone.
                count_rejected(&c.name, "too_large_for_buffer");
                if limiter.allow() {
                    tracing::error!(
                        lines,
                        bytes = end - start,
                        "message rejected: its readings can never be stored: {e}"
                    );
                }
            }
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::error!(
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot make readings durable, not acking: {e}"
                );
                tokio::time::sleep(wait).await;
                todo.push((lo, hi));
            }
        }
    }
    Ok(())
}

/// Saves the aggregator (blocking file I/O, so on the blocking pool) until it succeeds: the open
/// windows hold readings about to be acked.
async fn save_aggregation(c: &mut Committer, raw: &[u8]) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let Some(mut a) = c.aggregation.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || {
            let res = a.aggregator.save();
            (a, res)
        })
        .await;
        let (a, res) = match joined {
            Ok(x) => x,
            Err(e) => {
                // The closure cannot panic short of a bug; the state is then lost with it.
                tracing::error!("aggregation state save task failed: {e}");
                return;
            }
        };
        c.aggregation = Some(a);
        match res {
            Ok(()) => break,
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::error!(
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot save aggregation windows, not acking yet: {e}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
    if let Some(log) = c.aggregation.as_mut().and_then(|a| a.raw_log.as_mut()) {
        if let Err(e) = log.write(raw) {
            tracing::warn!(path = %log.path.display(), "cannot keep raw readings locally: {e}");
        }
    }
}

/// Reports the spans' messages as done, one [`Completion`] per run of one generation.
async fn report(done: &mpsc::Sender<Completion>, spans: &[Span]) {
    let mut current: Option<Completion> = None;
    for s in spans.iter().filter(|s| s.generation != 0) {
        match &mut current {
            Some(cur) if cur.generation == s.generation => {}
            _ => {
                if let Some(cur) = current.take() {
                    let _ = done.send(cur).await;
                }
                current = Some(Completion {
                    generation: s.generation,
                    ..Completion::default()
                });
            }
        }
        if let Some(cur) = &mut current {
            cur.pkids.extend(s.pkid);
            cur.messages += 1;
            cur.bytes += s.payload;
        }
    }
    if let Some(cur) = current {
        let _ = done.send(cur).await;
    }
}
