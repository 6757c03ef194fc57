//! The forwarder: moves batches from the buffer to one output's store, one loop per output.
//!
//! It reads a batch from its own cursor over the buffer, hands it to the sink (which retries,
//! splits and dead-letters) and acks it, so the buffer may delete what every output has. The
//! output's settings come through a `watch` channel so a reload can replace them at a batch
//! boundary without losing or resending anything.

use std::sync::Arc;

use crate::shutdown::Shutdown;

/// Forwarding policy from `[output.influxdb]`.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub batch_max_lines: u32,
    /// A batch smaller than `batch_max_lines` waits at most this long for more lines (urgent
    /// readings never wait).
    pub flush_interval: std::time::Duration,
}

/// The output the forwarder sends with: a sink and its batching policy. A reload replaces it
/// (see [`run_forwarder`]) and triggers `superseded` on the old one.
#[derive(Debug)]
pub struct OutputSetup {
    pub sink: Arc<crate::output::InfluxSink>,
    pub cfg: ForwarderConfig,
    /// Triggered when a reload has replaced this setup.
    pub superseded: Shutdown,
}

impl OutputSetup {
    pub fn new(sink: Arc<crate::output::InfluxSink>, cfg: ForwarderConfig) -> Arc<Self> {
        Arc::new(OutputSetup {
            sink,
            cfg,
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
pub async fn run_forwarder(
    mut reader: crate::buffer::BufferReader,
    mut output: tokio::sync::watch::Receiver<Arc<OutputSetup>>,
    store: crate::status::StoreState,
    shutdown: Shutdown,
) {
    use crate::output::SinkError;
    use std::time::{Duration, Instant};
    let first = output.borrow_and_update().cfg.flush_interval;
    let mut last_send = Instant::now() - first;
    loop {
        let setup = output.borrow_and_update().clone();
        let cfg = &setup.cfg;
        // Let a small batch fill up for a while, unless urgent data waits or a backlog exists.
        let since = last_send.elapsed();
        if since < cfg.flush_interval {
            let stats = reader.stats();
            if stats.urgent_unsent_lines == 0 && stats.unsent_lines < u64::from(cfg.batch_max_lines)
            {
                tokio::select! {
                    _ = tokio::time::sleep(cfg.flush_interval - since) => {}
                    // A new policy applies from now.
                    Ok(()) = output.changed() => continue,
                    _ = shutdown.wait() => return,
                }
            }
        }
        let batch = tokio::select! {
            b = reader.next_batch(cfg.batch_max_lines) => b,
            _ = shutdown.wait() => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot read the buffer: {e}; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.wait() => return,
                }
            }
        };
        last_send = Instant::now();
        store.sending();
        let mut setup = setup;
        loop {
            let sink = &setup.sink;
            match sink
                .deliver_unless_superseded(
                    &batch.body_gz,
                    batch.lines,
                    &shutdown,
                    Some(&setup.superseded),
                )
                .await
            {
                Ok(d) => {
                    if d.lines_dead_lettered > 0 {
                        tracing::warn!(
                            lines = d.lines_dead_lettered,
                            path = %sink.dead_letter_path().display(),
                            "the store refused some lines; they are in the dead-letter file"
                        );
                    }
                    store.delivered(d.lines_sent);
                    break;
                }
                Err(SinkError::Shutdown) => return,
                Err(SinkError::Superseded) => {
                    tracing::info!(
                        lines = batch.lines,
                        "the output was reloaded; sending the waiting batch with the new settings"
                    );
                    setup = output.borrow_and_update().clone();
                }
                Err(e) => {
                    store.failed(e.to_string());
                    tracing::error!("batch not delivered: {e}; retrying in 5 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = setup.superseded.wait() => setup = output.borrow_and_update().clone(),
                        _ = shutdown.wait() => return,
                    }
                }
            }
        }
        while let Err(e) = reader.ack(&batch).await {
            tracing::error!("cannot record the store's confirmation: {e}; retrying in 1 s");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}
