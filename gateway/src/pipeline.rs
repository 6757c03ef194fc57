//! The ingest side of the spine: from an input's readings to durable lines in the buffer.
//!
//! [`Ingest`] is what every input holds: it validates readings, adds the `gateway` tag, encodes
//! them to line protocol and appends them to the durable buffer. An input acknowledges its source
//! (MQTT PUBACK) only after [`Ingest::commit`] has returned `Ok`.

use std::sync::Arc;

use crate::buffer::{BufferError, BufferWriter};
use crate::model::{encode, Flavor};
use crate::model::{Priority, Reading, ReadingMut};
use crate::status::{LiveFeed, StatusRegistry};

/// Shared by all inputs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Ingest {
    inner: Arc<IngestInner>,
}

#[derive(Debug)]
struct IngestInner {
    writer: BufferWriter,
    gateway_id: String,
    flavor: Flavor,
    live: Option<LiveFeed>,
    status: StatusRegistry,
    /// Limits against hostile input (`[limits]`); defaults until [`Ingest::with_limits`].
    limits: crate::limits::Limits,
}

impl Ingest {
    pub fn new(writer: BufferWriter, gateway_id: impl Into<String>, flavor: Flavor) -> Self {
        Ingest {
            inner: Arc::new(IngestInner {
                writer,
                gateway_id: gateway_id.into(),
                flavor,
                live: None,
                status: StatusRegistry::default(),
                limits: crate::limits::Limits::default(),
            }),
        }
    }

    /// The same, offering committed lines to `live` (while watched) and input states to `status`.
    pub fn with_observers(
        writer: BufferWriter,
        gateway_id: impl Into<String>,
        flavor: Flavor,
        live: LiveFeed,
        status: StatusRegistry,
    ) -> Self {
        Ingest {
            inner: Arc::new(IngestInner {
                writer,
                gateway_id: gateway_id.into(),
                flavor,
                live: Some(live),
                status,
                limits: crate::limits::Limits::default(),
            }),
        }
    }

    /// Applies `[limits]`. Call right after construction, before the `Ingest` is cloned; on a
    /// shared `Ingest` the default limits stay (and an error is logged).
    pub fn with_limits(mut self, config: crate::limits::LimitsConfig) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.limits = crate::limits::Limits::new(config),
            None => tracing::error!("limits set on a shared Ingest; the default limits apply"),
        }
        self
    }

    /// The limits in force and the cardinality guard's state.
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.inner.limits
    }

    /// The line protocol dialect of the output.
    pub fn flavor(&self) -> Flavor {
        self.inner.flavor
    }

    /// Where inputs report whether they are connected.
    pub fn status(&self) -> &StatusRegistry {
        &self.inner.status
    }

    pub fn gateway_id(&self) -> &str {
        &self.inner.gateway_id
    }

    /// Validates `readings`, adds `gateway=<id>`, and appends their line protocol to `out`.
    /// Invalid readings are counted under `readings_rejected_total{input,reason}` and skipped;
    /// returns how many lines were added.
    pub fn encode(&self, input: &str, mut readings: Vec<Reading>, out: &mut Vec<u8>) -> u32 {
        self.encode_slice(input, &mut readings, out)
    }

    /// [`Ingest::encode`] for readings of any shape, such as one [`crate::model::ReadingBuf`]
    /// refilled per message (`std::slice::from_mut`): the checks and the encoding are the same.
    pub fn encode_slice<R: ReadingMut>(
        &self,
        input: &str,
        readings: &mut [R],
        out: &mut Vec<u8>,
    ) -> u32 {
        self.encode_slice_at(input, readings, ClockNow::read(), out)
    }

    /// [`Ingest::encode_slice`] judging the readings by a clock read before ([`ClockNow::read`]):
    /// a caller encoding many messages at once (a commit group, a few milliseconds) reads it
    /// once for all of them.
    pub fn encode_slice_at<R: ReadingMut>(
        &self,
        input: &str,
        readings: &mut [R],
        clock: ClockNow,
        out: &mut Vec<u8>,
    ) -> u32 {
        let mut lines = 0;
        let start = out.len();
        for reading in readings.iter_mut() {
            if !self.check(input, reading, clock) {
                continue;
            }
            encode(reading, self.inner.flavor, out);
            lines += 1;
        }
        if let Some(live) = &self.inner.live {
            // One relaxed load while nobody watches; a copy of the lines while someone does.
            live.offer(input, out.get(start..).unwrap_or_default());
        }
        accepted_counter(input).increment(u64::from(lines));
        crate::totals::count_accepted(input, lines);
        lines
    }

    /// The same checks as [`Ingest::encode`] (validation, `gateway` tag, `[limits]`), without
    /// encoding: what an aggregating input may put into its windows. Refusals are counted and
    /// logged as in `encode`.
    pub fn admit(&self, input: &str, readings: Vec<Reading>) -> Vec<Reading> {
        let clock = ClockNow::read();
        readings
            .into_iter()
            .filter_map(|mut r| self.check(input, &mut r, clock).then_some(r))
            .collect()
    }

    /// Adds the gateway tag, validates and applies `[limits]` (which may clamp the timestamp);
    /// false (counted, logged) when the reading cannot be forwarded.
    fn check<R: ReadingMut>(&self, input: &str, reading: &mut R, clock: ClockNow) -> bool {
        reading.insert_tag("gateway", &self.inner.gateway_id);
        if let Err(e) = crate::model::validate(reading) {
            let sensor = reading.tag_value("sensor_id").unwrap_or("-");
            tracing::warn!(input, sensor, reason = e.label(), "reading rejected: {e}");
            count_rejected(input, e.label());
            return false;
        }
        // Counts and logs (rate-limited) what it refuses; may clamp the timestamp.
        self.inner
            .limits
            .check_clock(input, reading, clock.now_ns, clock.trusted)
            .is_ok()
    }

    /// Appends encoded lines to the buffer; resolves when they are durable (fsync'd).
    pub async fn commit(
        &self,
        priority: Priority,
        lines: u32,
        lp: Vec<u8>,
    ) -> Result<(), BufferError> {
        if lines == 0 {
            return Ok(());
        }
        self.inner.writer.append(priority, lines, lp).await
    }

    /// The buffer writer, for shutdown.
    pub fn writer(&self) -> &BufferWriter {
        &self.inner.writer
    }
}

/// `readings_accepted_total{input}` for `input`, looked up in the registry once per thread and
/// input rather than per message (the lookup hashes and allocates the label).
fn accepted_counter(input: &str) -> metrics::Counter {
    thread_local! {
        static ACCEPTED: std::cell::RefCell<Vec<(Box<str>, metrics::Counter)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    ACCEPTED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((_, c)) = cache.iter().find(|(name, _)| &**name == input) {
            return c.clone();
        }
        let c = metrics::counter!("readings_accepted_total", "input" => input.to_owned());
        // Inputs are few and fixed by the config; the bound only guards against a caller
        // inventing names.
        if cache.len() < 256 {
            cache.push((input.into(), c.clone()));
        }
        c
    })
}

/// Counts a message or reading an input refused (`readings_rejected_total{input,reason}`); the
/// one counter the limits use too.
pub use crate::limits::count_rejected;

/// The clock as `[limits]` judges one call's readings by: read once per [`Ingest::encode`] or
/// [`Ingest::admit`] (a message's or a group's readings), or once per commit group
/// ([`Ingest::encode_slice_at`]), not once per reading, since the process clock takes a lock
/// and notes steps on every read.
#[derive(Debug, Clone, Copy)]
pub struct ClockNow {
    now_ns: i64,
    trusted: bool,
}

impl ClockNow {
    /// The process clock now, and whether it is trusted.
    pub fn read() -> Self {
        ClockNow {
            now_ns: crate::clock::now_ns(),
            trusted: crate::clock::trusted(),
        }
    }
}
