//! Modbus RTU polling: the planned requests sent one slave after the other, each with its own
//! timeout, every failure classified from the bytes the port really gave ([`TapStream`]).

use super::*;

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

pub(super) async fn modbus_session(
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
