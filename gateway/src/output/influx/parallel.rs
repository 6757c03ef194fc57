//! Several batches in flight to one output, as many as the sink's adaptive concurrency allows.
//!
//! Why it exists: draining a backlog one request at a time runs at one batch per round trip;
//! [`Deliveries`] keeps up to [`InfluxSink::concurrency_limit`] deliveries going (each under
//! the full policy of [`InfluxSink::deliver_batch`]) and hands back each batch when it is done,
//! in the order they finish. The buffer's reader acks batches out of order ("acked ahead of the
//! cursor"), so the caller acks each as it comes back; a batch not handed back (shutdown,
//! dropped set) is simply not acked and is sent again on the next start (idempotent).
//!
//! How a forwarder uses it:
//!
//! ```ignore
//! let mut flight = Deliveries::new(sink.clone(), shutdown.clone());
//! loop {
//!     while flight.has_room() && backlog_waits(&reader) {
//!         flight.start(reader.next_batch(max_lines).await?, Some(setup.superseded.clone()));
//!     }
//!     match flight.next_done().await {
//!         Some((batch, Ok(_delivered))) => reader.ack(&batch).await?,
//!         Some((batch, Err(SinkError::Superseded))) => /* start it again with the new sink */,
//!         Some((_, Err(SinkError::Shutdown))) | None => break,
//!         Some((batch, Err(e))) => /* keep it; start it again later */,
//!     }
//! }
//! ```

use std::sync::Arc;

use super::{Delivered, InfluxSink, SinkError};
use crate::buffer::Batch;
use crate::shutdown::Shutdown;

/// Deliveries in flight to one sink (see the module docs).
pub struct Deliveries {
    sink: Arc<InfluxSink>,
    shutdown: Shutdown,
    set: tokio::task::JoinSet<(Batch, Result<Delivered, SinkError>)>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("in_flight", &self.set.len())
            .finish()
    }
}

impl Deliveries {
    pub fn new(sink: Arc<InfluxSink>, shutdown: Shutdown) -> Self {
        Deliveries {
            sink,
            shutdown,
            set: tokio::task::JoinSet::new(),
        }
    }

    /// Deliveries in flight.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Whether another delivery may start now (below the sink's adaptive limit).
    pub fn has_room(&self) -> bool {
        self.set.len() < self.sink.concurrency_limit()
    }

    /// Starts delivering `batch` ([`InfluxSink::deliver_batch`] with its priority);
    /// `superseded` as there.
    pub fn start(&mut self, batch: Batch, superseded: Option<Shutdown>) {
        let sink = self.sink.clone();
        let shutdown = self.shutdown.clone();
        self.set.spawn(async move {
            let result = sink
                .deliver_batch(
                    &batch.body_gz,
                    batch.lines,
                    batch.priority,
                    &shutdown,
                    superseded.as_ref(),
                )
                .await;
            (batch, result)
        });
    }

    /// The next delivery to finish, with its batch; `None` when none is in flight.
    pub async fn next_done(&mut self) -> Option<(Batch, Result<Delivered, SinkError>)> {
        loop {
            match self.set.join_next().await? {
                Ok(done) => return Some(done),
                // A delivery panicked (a bug): its batch is not acked and comes back on the
                // next start; the others go on.
                Err(e) => tracing::error!("a delivery task failed: {e}"),
            }
        }
    }
}
