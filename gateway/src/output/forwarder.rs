//! The forwarder: moves batches from the buffer to one output's store, one loop per output.
//!
//! It reads a batch from its output's own cursor over the buffer, keeps the lines the output
//! takes (`include`/`exclude`, see [`crate::output::filter`]), hands them to the sink (which
//! retries, splits and dead-letters) and acks the batch, so the buffer may delete what every
//! output has. A slow or dead output only holds back its own cursor.
//!
//! Urgent data never waits behind normal data:
//! - a commit of urgent data wakes a forwarder that waits for a normal batch to fill;
//! - while a normal batch is being delivered (in retry, being split after a `400`, or held by
//!   the sink's drain spread or uplink budget), urgent batches are read and delivered beside
//!   it, one at a time, and acked out of order (the buffer allows that);
//! - draining a normal backlog keeps up to the sink's adaptive concurrency limit of batches in
//!   flight (Vector's ARC: 1 at first, growing while latency holds, halved on overload);
//! - a steady urgent stream still leaves normal data a share: after [`URGENT_STREAK_MAX`]
//!   urgent batches in a row while normal data waits, the next batch is a normal one.
//!
//! The output's settings come through a `watch` channel so a reload can replace them at a batch
//! boundary without losing or resending anything.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::buffer::{Batch, BufferReader};
use crate::model::Priority;
use crate::output::filter::MeasurementFilter;
use crate::output::SinkError;
use crate::shutdown::Shutdown;
use crate::status::StoreState;

/// After this many urgent batches in a row while normal data waits, the forwarder takes a
/// normal batch next (normal data keeps a share of the uplink under a steady urgent stream).
pub const URGENT_STREAK_MAX: u32 = 4;

/// Forwarding policy from `[output.influxdb]`.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub batch_max_lines: u32,
    /// A batch smaller than `batch_max_lines` waits at most this long for more lines (urgent
    /// readings never wait).
    pub flush_interval: std::time::Duration,
}

/// The output the forwarder sends with: a sink, its batching policy and what it takes. A
/// reload replaces it (see [`run_forwarder`]) and triggers `superseded` on the old one.
#[derive(Debug)]
pub struct OutputSetup {
    /// The output's name (its buffer cursor's), for logs.
    pub name: String,
    pub sink: Arc<crate::output::InfluxSink>,
    pub cfg: ForwarderConfig,
    /// Which measurements go to this output.
    pub filter: MeasurementFilter,
    /// Triggered when a reload has replaced this setup.
    pub superseded: Shutdown,
}

impl OutputSetup {
    pub fn new(
        name: impl Into<String>,
        sink: Arc<crate::output::InfluxSink>,
        cfg: ForwarderConfig,
        filter: MeasurementFilter,
    ) -> Arc<Self> {
        Arc::new(OutputSetup {
            name: name.into(),
            sink,
            cfg,
            filter,
            superseded: Shutdown::new(),
        })
    }
}

/// Moves batches from the buffer to the store: read, deliver (the sink retries, splits and
/// dead-letters), then ack so the buffer may delete them. Runs until `shutdown` turns true; a
/// batch in flight then is abandoned unacked and re-sent on the next start (idempotent).
///
/// The output comes from `output`, read at every batch: a reload puts a new setup there. A
/// batch being retried with the old sink is taken over by the new one at its next wait (a
/// wrong URL or token fixed by a reload takes effect at once); a batch whose request is in
/// flight, or part of which is stored, is finished by the old one. The batch stays in the
/// forwarder's hands throughout, so nothing is lost or sent twice.
///
/// Returns the reader when stopped, so an output a reload removed can give up its cursor.
pub async fn run_forwarder(
    mut reader: BufferReader,
    output: watch::Receiver<Arc<OutputSetup>>,
    store: StoreState,
    shutdown: Shutdown,
) -> BufferReader {
    forward(&mut reader, output, store, shutdown).await;
    reader
}

async fn forward(
    reader: &mut BufferReader,
    mut output: watch::Receiver<Arc<OutputSetup>>,
    store: StoreState,
    shutdown: Shutdown,
) {
    let first = output.borrow_and_update().cfg.flush_interval;
    let mut last_send = Instant::now() - first;
    let mut urgent_streak = 0;
    loop {
        let setup = output.borrow_and_update().clone();
        match wait_to_send(reader, &mut output, &setup.cfg, last_send, &shutdown).await {
            Wait::Send => {}
            Wait::Changed => continue,
            Wait::Shutdown => return,
        }
        let max = setup.cfg.batch_max_lines;
        let stats = reader.consumer_stats();
        let normal_turn =
            urgent_streak >= URGENT_STREAK_MAX && stats.unsent_lines > stats.urgent_unsent_lines;
        let next = async {
            if normal_turn {
                // Normal data is waiting, so this returns at once; should it not (its lines
                // were counted while being acked), urgent data is not held up for it.
                let normal = reader.next_batch_of(Priority::Normal, max);
                if let Ok(b) = tokio::time::timeout(Duration::from_millis(50), normal).await {
                    return b;
                }
            }
            reader.next_batch(max).await
        };
        let batch = tokio::select! {
            b = next => b,
            () = shutdown.wait() => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(output = %setup.name, "cannot read the buffer: {e}; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.wait() => return,
                }
            }
        };
        last_send = Instant::now();
        let sent = if batch.priority == Priority::Urgent {
            urgent_streak += 1;
            send(
                output.clone(),
                store.clone(),
                setup,
                batch,
                shutdown.clone(),
            )
            .await
        } else {
            urgent_streak = 0;
            if !send_beside_urgent(reader, &output, &store, setup, batch, &shutdown).await {
                return;
            }
            continue;
        };
        let Some(batch) = sent else { return };
        if !ack(reader, &batch, &shutdown).await {
            return;
        }
    }
}

/// What the wait for a batch to fill ended with.
enum Wait {
    Send,
    /// A reload changed the output: take its settings first.
    Changed,
    Shutdown,
}

/// Lets a small batch fill up for `flush_interval` after the last send, unless urgent data
/// waits or a full batch is there; a commit of urgent data ends the wait at once.
async fn wait_to_send(
    reader: &mut BufferReader,
    output: &mut watch::Receiver<Arc<OutputSetup>>,
    cfg: &ForwarderConfig,
    last_send: Instant,
    shutdown: &Shutdown,
) -> Wait {
    loop {
        let since = last_send.elapsed();
        if since >= cfg.flush_interval {
            return Wait::Send;
        }
        let stats = reader.consumer_stats();
        if stats.urgent_unsent_lines > 0 || stats.unsent_lines >= u64::from(cfg.batch_max_lines) {
            return Wait::Send;
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.flush_interval - since) => return Wait::Send,
            // Urgent data committed: the loop sees it waiting and sends.
            Ok(()) = reader.urgent_committed() => {}
            Ok(()) = output.changed() => return Wait::Changed,
            () = shutdown.wait() => return Wait::Shutdown,
        }
    }
}

type Sending = Pin<Box<dyn Future<Output = Option<Batch>> + Send>>;

/// Delivers a normal batch while urgent batches are read and delivered beside it (one at a
/// time, each acked as soon as it is stored). While a normal backlog waits (more than a batch
/// beyond what is in flight), further normal batches are started, up to the sink's adaptive
/// concurrency limit (1 at first, growing while the store's latency holds, halved on
/// overload: see `output::influx::concurrency`). Every batch is acked as it is stored, in any
/// order (the buffer allows that). Returns once all are done; `false` on shutdown.
async fn send_beside_urgent(
    reader: &mut BufferReader,
    output: &watch::Receiver<Arc<OutputSetup>>,
    store: &StoreState,
    setup: Arc<OutputSetup>,
    batch: Batch,
    shutdown: &Shutdown,
) -> bool {
    let max = setup.cfg.batch_max_lines;
    // Every batch of either lane goes out the same way; only its setup and batch differ.
    let sending = |setup: Arc<OutputSetup>, batch: Batch| {
        send(
            output.clone(),
            store.clone(),
            setup,
            batch,
            shutdown.clone(),
        )
    };
    let mut normal = tokio::task::JoinSet::new();
    let mut normal_lines = u64::from(batch.lines);
    normal.spawn(sending(setup, batch));
    let mut urgent: Option<Sending> = None;
    loop {
        if normal.is_empty() && urgent.is_none() {
            return true;
        }
        // Room for another normal batch: below the adaptive limit, and a backlog waits.
        let current = output.borrow().clone();
        let drain = !normal.is_empty() && normal.len() < current.sink.concurrency_limit() && {
            let stats = reader.consumer_stats();
            let waiting = stats.unsent_lines.saturating_sub(stats.urgent_unsent_lines);
            waiting > normal_lines + u64::from(max)
        };
        let urgent_free = urgent.is_none();
        tokio::select! {
            done = normal.join_next(), if !normal.is_empty() => {
                match done {
                    Some(Ok(Some(b))) => {
                        normal_lines = normal_lines.saturating_sub(u64::from(b.lines));
                        if !ack(reader, &b, shutdown).await {
                            return false;
                        }
                    }
                    // Shutdown, or the task failed: its batch is not acked and goes again.
                    _ => return false,
                }
            }
            done = async { urgent.as_mut()?.await }, if urgent.is_some() => {
                urgent = None;
                let Some(b) = done else { return false };
                if !ack(reader, &b, shutdown).await {
                    return false;
                }
            }
            // One read for both lanes: the urgent one while its slot is free, normal batches
            // while a backlog waits and the limit allows (urgent comes first when both).
            next = async {
                match (urgent_free, drain) {
                    (true, true) => reader.next_batch(max).await,
                    (true, false) => reader.next_batch_of(Priority::Urgent, max).await,
                    _ => reader.next_batch_of(Priority::Normal, max).await,
                }
            }, if urgent_free || drain => {
                match next {
                    Ok(b) if b.priority == Priority::Urgent => {
                        tracing::debug!(output = %current.name, lines = b.lines, "urgent batch sent beside normal ones in delivery");
                        urgent = Some(Box::pin(sending(current, b)));
                    }
                    Ok(b) => {
                        normal_lines += u64::from(b.lines);
                        normal.spawn(sending(current, b));
                    }
                    // The main loop reports read errors; the batches in flight go on meanwhile.
                    Err(e) => tracing::debug!("cannot read the buffer beside a delivery: {e}"),
                }
            }
        }
    }
}

/// Delivers the part of `batch` its output takes, retrying until it is stored (or
/// dead-lettered); returns the batch for the ack, `None` on shutdown. A reload that replaces
/// the output while the batch waits to retry moves it to the new setup.
async fn send(
    mut output: watch::Receiver<Arc<OutputSetup>>,
    store: StoreState,
    mut setup: Arc<OutputSetup>,
    batch: Batch,
    shutdown: Shutdown,
) -> Option<Batch> {
    store.sending();
    loop {
        let Some((body, lines)) = payload(&setup, &batch) else {
            metrics::counter!("output_lines_filtered_total", "output" => setup.name.clone())
                .increment(u64::from(batch.lines));
            return Some(batch);
        };
        if lines < batch.lines {
            metrics::counter!("output_lines_filtered_total", "output" => setup.name.clone())
                .increment(u64::from(batch.lines - lines));
        }
        let sink = &setup.sink;
        match sink
            .deliver_batch(
                &body,
                lines,
                batch.priority,
                &shutdown,
                Some(&setup.superseded),
            )
            .await
        {
            Ok(d) => {
                if d.lines_dead_lettered > 0 {
                    tracing::warn!(
                        output = %setup.name,
                        lines = d.lines_dead_lettered,
                        path = %sink.dead_letter_path().display(),
                        "the store refused some lines; they are in the dead-letter file"
                    );
                }
                store.delivered(d.lines_sent);
                return Some(batch);
            }
            Err(SinkError::Shutdown) => return None,
            Err(SinkError::Superseded) => {
                tracing::info!(
                    output = %setup.name,
                    lines = batch.lines,
                    "the output was reloaded; sending the waiting batch with the new settings"
                );
                setup = output.borrow_and_update().clone();
            }
            Err(e) => {
                store.failed(e.to_string());
                tracing::error!(output = %setup.name, "batch not delivered: {e}; retrying in 5 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = setup.superseded.wait() => setup = output.borrow_and_update().clone(),
                    () = shutdown.wait() => return None,
                }
            }
        }
    }
}

/// The body and line count this output sends for `batch`: the buffer's bytes as they are
/// when it takes every measurement, else the lines it takes, gzip'd again; `None` when it
/// takes none of them (the batch is acked without a request).
fn payload<'b>(setup: &OutputSetup, batch: &'b Batch) -> Option<(Cow<'b, [u8]>, u32)> {
    if setup.filter.takes_all() {
        return Some((Cow::Borrowed(&batch.body_gz), batch.lines));
    }
    let lp = match batch.line_protocol() {
        Ok(lp) => lp,
        Err(e) => {
            // Records are checksummed in the buffer, so this is not expected; the store (and
            // the dead-letter file) judge the batch as it is rather than losing it here.
            tracing::error!(output = %setup.name, "cannot decompress a batch to filter it: {e}; sending it whole");
            return Some((Cow::Borrowed(&batch.body_gz), batch.lines));
        }
    };
    let mut kept = Vec::with_capacity(lp.len());
    let lines = setup.filter.filter(&lp, &mut kept);
    if lines == 0 {
        return None;
    }
    // The filter ends every kept line with `\n`: the text is gzip'd as it is.
    Some((Cow::Owned(crate::output::influx::gzip_text(&kept)), lines))
}

/// Records the store's confirmation of `batch`, retrying a failing disk every second; false on
/// shutdown.
async fn ack(reader: &mut BufferReader, batch: &Batch, shutdown: &Shutdown) -> bool {
    while let Err(e) = reader.ack(batch).await {
        tracing::error!("cannot record the store's confirmation: {e}; retrying in 1 s");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.wait() => return false,
        }
    }
    true
}
