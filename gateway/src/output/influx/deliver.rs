//! The delivery policy: one batch until the store has it all (or the refused lines are
//! dead-lettered), retrying what may pass with the one [`Backoff`], bisecting what the store
//! refuses, and saying what goes on in a few log lines ([`FailureLog`]).

use std::time::{Duration, Instant};

use super::*;

/// While the store keeps failing the same way, its failure is logged again at most this often
/// (every attempt still counts in `output_retries_total`); a new kind of failure, and the
/// recovery, are logged at once.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Rate limit of the store-failure log lines: one line per kind of failure per
/// [`FAILURE_LOG_INTERVAL`] (a new kind at once), saying how many attempts failed since the
/// last line.
#[derive(Debug)]
pub(super) struct FailureLog {
    kind: Option<&'static str>,
    lines: LogLimiter,
    failed_since_success: u64,
}

impl Default for FailureLog {
    fn default() -> Self {
        FailureLog {
            kind: None,
            lines: LogLimiter::new(1, FAILURE_LOG_INTERVAL),
            failed_since_success: 0,
        }
    }
}

impl FailureLog {
    /// Counts a failed attempt of `kind`; `Some(failed attempts since the last line)` when a line
    /// is due now.
    fn failure(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        self.failed_since_success += 1;
        if self.kind != Some(kind) {
            self.kind = Some(kind);
            self.lines.open(now);
        }
        // The attempts held back, and this one.
        self.lines.admit(now).map(|held| held + 1)
    }

    /// An accepted write: `Some(failed attempts)` when the store had been failing.
    fn success(&mut self) -> Option<u64> {
        let failed = self.failed_since_success;
        *self = FailureLog::default();
        (failed > 0).then_some(failed)
    }
}

/// A failure to get any HTTP answer, in words that say what to check; `kind` for the log's rate
/// limit. A name that does not resolve is told apart from a store that is down: the fix differs
/// (the URL's host name or this box's DNS, not the store).
fn describe_transport(store: &str, reason: &str, timeout: bool) -> (&'static str, String) {
    if timeout {
        return ("timeout", format!("timeout reaching the store at {store}"));
    }
    if let Some(at) = reason.find("dns error") {
        let detail = reason.get(at..).unwrap_or(reason);
        return (
            "dns",
            format!(
                "cannot resolve the store's host name: {store} ({detail}); check the url in \
                 [output.influxdb] and this box's DNS"
            ),
        );
    }
    if reason.contains("Connection refused") {
        return (
            "refused",
            format!("the store at {store} refused the connection: is it running on that port?"),
        );
    }
    (
        "connection",
        format!("cannot reach the store at {store}: {reason}"),
    )
}

impl InfluxSink {
    /// Delivers one batch under the full policy (see the module doc) and returns only when the
    /// batch is fully handled — every line either accepted by the store or appended to the
    /// dead-letter file — or when shutdown is requested.
    ///
    /// `shutdown`: the forwarder's stop signal. On shutdown the in-flight request is abandoned
    /// and [`SinkError::Shutdown`] is returned: the caller must keep the batch and send it again
    /// later (the store may already hold some of its lines; re-sending them is idempotent). If
    /// shutdown is already requested when called, no request is made.
    ///
    /// Other errors: [`SinkError::DeadLetter`] when the dead-letter file cannot be written (the
    /// batch is not handled; keep it), and config errors from [`write`](Self::write).
    pub async fn deliver(
        &self,
        body_gz: &[u8],
        lines: u32,
        shutdown: &Shutdown,
    ) -> Result<Delivered, SinkError> {
        self.deliver_unless_superseded(body_gz, lines, shutdown, None)
            .await
    }

    /// [`InfluxSink::deliver_unless_superseded`] for a batch of known priority: a normal batch
    /// may first wait for the drain start offset after an outage and for the uplink budget
    /// (both logged and in the metrics); an urgent one never waits for either. This is the
    /// entry point for a forwarder; the priority is `Batch::priority` of the buffer.
    pub async fn deliver_batch(
        &self,
        body_gz: &[u8],
        lines: u32,
        priority: ioc_model::Priority,
        shutdown: &Shutdown,
        superseded: Option<&Shutdown>,
    ) -> Result<Delivered, SinkError> {
        let class = Class::of(priority);
        let hold = lock(&self.citizen.pacer).hold(Instant::now(), class == Class::Urgent);
        if class.held() && !hold.is_zero() {
            tracing::info!(
                wait = ?hold,
                "the store is back after an outage; this gateway's backlog starts after its \
                 drain offset (drain_spread_ms), so a fleet does not drain at once"
            );
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Err(SinkError::Shutdown),
                () = wait_opt(superseded) => return Err(SinkError::Superseded),
                () = tokio::time::sleep(hold) => {}
            }
        }
        self.deliver_classified(body_gz, lines, class, shutdown, superseded)
            .await
    }

    /// How long a normal batch started now would be held (drain offset or uplink budget), so a
    /// forwarder with one batch in flight can keep reading urgent data meanwhile instead of
    /// starting a normal batch that waits. Zero when nothing holds normal data.
    pub fn normal_hold(&self) -> Duration {
        let now = Instant::now();
        let drain = lock(&self.citizen.pacer).hold(now, false);
        let budget = match lock(&self.citizen.budget).check(now, SystemTime::now(), 0, false) {
            budget::Hold::Go => Duration::ZERO,
            budget::Hold::Rate(d) | budget::Hold::Daily(d) => d,
        };
        drain.max(budget)
    }

    /// How many batches may be in flight at once now (adaptive, 1 to `max_in_flight`).
    pub fn concurrency_limit(&self) -> usize {
        lock(&self.citizen.concurrency).limit()
    }

    /// [`InfluxSink::deliver`], giving up with [`SinkError::Superseded`] when `superseded` is
    /// triggered while waiting to retry the whole batch (so a reload that fixes a wrong URL or
    /// token takes effect at once). Never while a request is in flight, and never once part of
    /// a split batch is stored: the batch is then finished with this sink, so nothing is sent
    /// twice.
    pub async fn deliver_unless_superseded(
        &self,
        body_gz: &[u8],
        lines: u32,
        shutdown: &Shutdown,
        superseded: Option<&Shutdown>,
    ) -> Result<Delivered, SinkError> {
        self.deliver_classified(body_gz, lines, Class::Unknown, shutdown, superseded)
            .await
    }

    async fn deliver_classified(
        &self,
        body_gz: &[u8],
        lines: u32,
        class: Class,
        shutdown: &Shutdown,
        superseded: Option<&Shutdown>,
    ) -> Result<Delivered, SinkError> {
        let mut delivered = Delivered::default();
        let result = match self
            .send_until_settled(body_gz, lines, class, shutdown, superseded, &mut delivered)
            .await?
        {
            Settled::Accepted => {
                delivered.lines_sent = lines;
                Ok(delivered)
            }
            Settled::Rejected { status, message } => {
                tracing::warn!(
                    status,
                    error = %message,
                    lines,
                    "the store refused the batch; splitting it to find the bad lines"
                );
                self.split_and_deliver(body_gz, status, message, class, shutdown, &mut delivered)
                    .await
                    .map(|()| delivered)
            }
        };
        if result.is_ok() {
            metrics::counter!("output_batches_sent_total", "output" => self.output()).increment(1);
        }
        result
    }

    /// Sends one body until the store accepts it or refuses it as a bad batch, retrying
    /// everything else with backoff.
    async fn send_until_settled(
        &self,
        body_gz: &[u8],
        lines: u32,
        class: Class,
        shutdown: &Shutdown,
        superseded: Option<&Shutdown>,
        delivered: &mut Delivered,
    ) -> Result<Settled, SinkError> {
        let mut backoff = self.retry_backoff();
        loop {
            // Whether the store said when to come back (a Retry-After).
            let mut told = false;
            if class.held() {
                self.wait_for_budget(body_gz.len(), shutdown, superseded)
                    .await?;
            }
            // A `Retry-After` another delivery of this sink was given holds this one too.
            let not_before = *lock(&self.citizen.not_before);
            if let Some(at) = not_before.filter(|at| *at > Instant::now()) {
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => return Err(SinkError::Shutdown),
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            let (result, can_switch) = tokio::select! {
                biased;
                _ = shutdown.wait() => return Err(SinkError::Shutdown),
                attempt = self.attempt(body_gz, lines) => attempt,
            };
            delivered.requests += 1;
            let delay = match result {
                Ok(WriteOutcome::Accepted { .. }) => {
                    lock(&self.citizen.pacer).on_success(Instant::now());
                    if let Some(failed) = self.failure_log().success() {
                        tracing::info!(
                            store = %self.store_authority,
                            failed_attempts = failed,
                            "the store takes batches again"
                        );
                    }
                    return Ok(Settled::Accepted);
                }
                Ok(WriteOutcome::BadBatch { status, message }) => {
                    self.count_failure("bad_batch");
                    return Ok(Settled::Rejected { status, message });
                }
                Ok(WriteOutcome::Retry {
                    status,
                    retry_after,
                    message,
                }) => {
                    let reason = if status == 429 {
                        "throttled"
                    } else {
                        "server_error"
                    };
                    self.count_failure(reason);
                    let delay = backoff.next_wait_or(retry_after);
                    told = retry_after.is_some();
                    if let Some(failed) = self.failure_due(reason) {
                        tracing::warn!(status, error = %message, retry_in = ?delay, failed_attempts = failed,
                            "store did not take the batch; will retry (said again every 60 s while it goes on)");
                    }
                    self.observe(format!("HTTP {status}: {message}"));
                    delay
                }
                Ok(WriteOutcome::Unauthorized { status, message }) => {
                    self.count_failure("unauthorized");
                    let delay = backoff.next_wait();
                    if let Some(failed) = self.failure_due("unauthorized") {
                        tracing::error!(status, error = %message, url = %self.write_url, retry_in = ?delay,
                            failed_attempts = failed,
                            "the store refused our credentials: check the token (token_env/token_file) \
                             and its write permission on the bucket/database; the batch is kept and retried");
                    }
                    self.observe(format!("HTTP {status}: credentials refused"));
                    delay
                }
                Ok(WriteOutcome::Misconfigured { status, message }) => {
                    self.count_failure("misconfigured");
                    let delay = backoff.next_wait();
                    if let Some(failed) = self.failure_due("misconfigured") {
                        tracing::error!(status, error = %message, url = %self.write_url, retry_in = ?delay,
                            failed_attempts = failed,
                            "the store has no such write endpoint, database or bucket: check url, api, \
                             database/bucket/org in [output.influxdb]; the batch is kept and retried");
                    }
                    self.observe(format!(
                        "HTTP {status}: no such endpoint, database or bucket"
                    ));
                    delay
                }
                Err(SinkError::Transport { reason, timeout }) => {
                    let label = if timeout { "timeout" } else { "connection" };
                    self.count_failure(label);
                    let delay = backoff.next_wait();
                    let (kind, what) = describe_transport(&self.store_authority, &reason, timeout);
                    if let Some(failed) = self.failure_due(kind) {
                        if kind == "dns" {
                            tracing::error!(error = %reason, retry_in = ?delay, failed_attempts = failed,
                                "{what}; readings stay in the buffer (said again every 60 s while it goes on)");
                        } else {
                            tracing::warn!(error = %reason, timeout, retry_in = ?delay, failed_attempts = failed,
                                "{what}; will retry (said again every 60 s while it goes on)");
                        }
                    }
                    self.observe(what);
                    delay
                }
                Err(other) => return Err(other),
            };
            // Another URL of this output is not resting: try it now. Otherwise the wait gets
            // this gateway's random jitter, so a fleet that failed together does not retry
            // together (a Retry-After tells every box the same delay).
            let delay = if can_switch {
                Duration::ZERO
            } else {
                lock(&self.citizen.jitter).jittered(delay)
            };
            // A Retry-After holds every delivery of this sink (several are in flight while
            // draining) until the same jittered instant, unless the retry goes to another URL
            // at once (a 503 of one of several URLs: the others are not asked to wait).
            if told && !can_switch {
                self.hold_all_until(Instant::now() + delay);
            }
            lock(&self.citizen.pacer).on_failure();
            metrics::counter!("output_retries_total", "output" => self.output()).increment(1);
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Err(SinkError::Shutdown),
                () = wait_opt(superseded) => return Err(SinkError::Superseded),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Holds a normal request of `bytes` until the uplink budget lets it go. A hold is logged
    /// when it starts (the daily one as a warning: data stays in the buffer until 00:00 UTC)
    /// and shows in `output_budget_held{reason}` while it lasts and in
    /// `output_budget_holds_total{reason}`.
    async fn wait_for_budget(
        &self,
        bytes: usize,
        shutdown: &Shutdown,
        superseded: Option<&Shutdown>,
    ) -> Result<(), SinkError> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let mut held: Option<&'static str> = None;
        let result = loop {
            let hold =
                lock(&self.citizen.budget).check(Instant::now(), SystemTime::now(), bytes, false);
            let (reason, wait) = match hold {
                budget::Hold::Go => break Ok(()),
                budget::Hold::Rate(d) => ("rate", d),
                // Looked at again every minute: a reload or a clock step may end it sooner.
                budget::Hold::Daily(d) => ("daily", d.min(Duration::from_secs(60))),
            };
            if held != Some(reason) {
                if let Some(before) = held {
                    metrics::gauge!("output_budget_held", "output" => self.output(), "reason" => before).set(0.0);
                }
                metrics::gauge!("output_budget_held", "output" => self.output(), "reason" => reason).set(1.0);
                metrics::counter!("output_budget_holds_total", "output" => self.output(), "reason" => reason).increment(1);
                if reason == "daily" {
                    let sent = lock(&self.citizen.budget).sent_today(SystemTime::now());
                    tracing::warn!(
                        sent_today_bytes = sent,
                        "daily_budget_mb is spent: normal data waits in the buffer until 00:00 UTC \
                         (urgent data is still sent)"
                    );
                } else {
                    tracing::debug!(wait = ?wait, "max_bytes_per_s: a normal batch waits for the uplink budget");
                }
                held = Some(reason);
            }
            let interrupted = tokio::select! {
                biased;
                _ = shutdown.wait() => Some(SinkError::Shutdown),
                () = wait_opt(superseded) => Some(SinkError::Superseded),
                () = tokio::time::sleep(wait) => None,
            };
            if let Some(e) = interrupted {
                break Err(e);
            }
        };
        if let Some(reason) = held {
            metrics::gauge!("output_budget_held", "output" => self.output(), "reason" => reason)
                .set(0.0);
            if reason == "daily" {
                tracing::info!("the daily uplink budget allows normal data again");
            }
        }
        result
    }

    /// Holds every delivery of this sink until `until` (a later hold stays).
    fn hold_all_until(&self, until: Instant) {
        let mut not_before = lock(&self.citizen.not_before);
        if not_before.is_none_or(|at| at < until) {
            *not_before = Some(until);
        }
    }

    /// Counts a failed attempt under its reason (`output_batches_failed_total`).
    fn count_failure(&self, reason: &'static str) {
        metrics::counter!("output_batches_failed_total", "output" => self.output(), "reason" => reason)
            .increment(1);
    }

    /// The wait between attempts at one body: full jitter, because many gateways share a store.
    fn retry_backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max).with_jitter(Jitter::Full)
    }

    fn failure_log(&self) -> std::sync::MutexGuard<'_, FailureLog> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a failed attempt; `Some(failed attempts since the last line)` when it is to be logged.
    fn failure_due(&self, kind: &'static str) -> Option<u64> {
        self.failure_log().failure(kind, Instant::now())
    }

    fn observe(&self, error: String) {
        if let Some(o) = &self.observer {
            o.failed(error);
        }
    }

    /// Bisects a refused batch: halves are re-sent until each refused line stands alone, then
    /// that line is dead-lettered with the store's error for it.
    async fn split_and_deliver(
        &self,
        body_gz: &[u8],
        status: u16,
        message: String,
        class: Class,
        shutdown: &Shutdown,
        delivered: &mut Delivered,
    ) -> Result<(), SinkError> {
        let text = match decompress(body_gz) {
            Ok(text) => text,
            Err(e) => {
                // Cannot happen for batches this gateway made; keep the bytes rather than block.
                let path = self.dead_letter_path.with_file_name(format!(
                    "undecodable-{}.gz",
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0)
                ));
                tracing::error!(error = %e, path = %path.display(), "a refused batch is not valid gzip; saving it aside");
                self.save_undecodable(&path, body_gz).await?;
                return Ok(());
            }
        };
        let all_lines: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .collect();
        // Work list of line ranges, handled left to right (a stack: right half pushed first).
        let mut stack = vec![Part {
            start: 0,
            end: all_lines.len(),
            refusal: Some((status, message)),
        }];
        while let Some(Part {
            start,
            end,
            refusal,
        }) = stack.pop()
        {
            let Some(part) = all_lines.get(start..end) else {
                continue;
            };
            if part.is_empty() {
                continue;
            }
            match refusal {
                Some((status, message)) if part.len() == 1 => {
                    self.dead_letter(part, status, &message).await?;
                    delivered.lines_dead_lettered += 1;
                }
                Some(_) => {
                    let middle = start + part.len() / 2;
                    stack.push(Part {
                        start: middle,
                        end,
                        refusal: None,
                    });
                    stack.push(Part {
                        start,
                        end: middle,
                        refusal: None,
                    });
                }
                None => {
                    let body = gzip_lines(part);
                    let count = u32::try_from(part.len()).unwrap_or(u32::MAX);
                    match self
                        .send_until_settled(&body, count, class, shutdown, None, delivered)
                        .await?
                    {
                        Settled::Accepted => delivered.lines_sent += count,
                        Settled::Rejected { status, message } => stack.push(Part {
                            start,
                            end,
                            refusal: Some((status, message)),
                        }),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Waits for `signal`, or for ever without one.
async fn wait_opt(signal: Option<&Shutdown>) {
    match signal {
        Some(s) => s.wait().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let mut config = InfluxSinkConfig::new("http://127.0.0.1:1", Api::V1, "/tmp");
        config.database = "d".into();
        config.backoff_initial = Duration::from_millis(100);
        config.backoff_max = Duration::from_secs(1);
        let sink = InfluxSink::new(config).unwrap();
        for _ in 0..50 {
            let mut backoff = sink.retry_backoff();
            for attempt in 0..45u32 {
                let ceiling = Duration::from_millis(100 * (1u64 << attempt.min(20)))
                    .min(Duration::from_secs(1));
                assert!(backoff.next_wait() <= ceiling);
            }
        }
    }

    #[test]
    fn failure_lines_are_rate_limited_per_kind_and_recovery_is_told() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.failure("dns", t0), Some(1));
        assert_eq!(log.failure("dns", t0 + Duration::from_secs(1)), None);
        assert_eq!(log.failure("dns", t0 + Duration::from_secs(59)), None);
        assert_eq!(log.failure("dns", t0 + FAILURE_LOG_INTERVAL), Some(3));
        assert_eq!(
            log.failure("refused", t0 + FAILURE_LOG_INTERVAL),
            Some(1),
            "a new kind of failure is logged at once"
        );
        assert_eq!(log.success(), Some(5));
        assert_eq!(log.success(), None);
        assert_eq!(
            log.failure("refused", t0),
            Some(1),
            "logged at once after a recovery"
        );
    }

    #[test]
    fn transport_failures_name_the_store_and_tell_dns_apart() {
        let dns = "error sending request for url (http://ioc-store.invalid:8428/api/v2/write): \
                   client error (Connect): dns error: failed to lookup address information: \
                   Name or service not known";
        assert_eq!(
            describe_transport("ioc-store.invalid:8428", dns, false),
            (
                "dns",
                "cannot resolve the store's host name: ioc-store.invalid:8428 (dns error: failed \
                 to lookup address information: Name or service not known); check the url in \
                 [output.influxdb] and this box's DNS"
                    .to_owned()
            )
        );
        let refused = "error sending request: client error (Connect): tcp connect error: \
                       Connection refused (os error 111)";
        assert_eq!(describe_transport("db:8086", refused, false).0, "refused");
        assert_eq!(
            describe_transport("db:8086", "operation timed out", true),
            (
                "timeout",
                "timeout reaching the store at db:8086".to_owned()
            )
        );
        assert_eq!(
            describe_transport("db:8086", "connection reset by peer", false),
            (
                "connection",
                "cannot reach the store at db:8086: connection reset by peer".to_owned()
            )
        );
    }
}
