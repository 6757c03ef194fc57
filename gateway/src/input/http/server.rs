//! One listen address: the accept loop (TCP, or TLS with rustls), HTTP/1.1 connections with
//! keep-alive, and the request handler that holds the durability contract:
//!
//! | answer | when |
//! | --- | --- |
//! | `204` | every reading the body gave is durable (the buffer's commit returned `Ok`); parts of the body the decoder refused (a bad line of line protocol) are counted and logged |
//! | `400` + reason | nothing in the body can ever be stored (not JSON, a missing timestamp, a truncated multipart body, ...); counted by label |
//! | `401` | token missing or wrong (`Authorization: Bearer` or `?token=`) |
//! | `404` / `405` / `415` | unknown path / not `POST` / a content type or encoding not accepted |
//! | `408` | the body did not arrive within [`BODY_TIMEOUT`] |
//! | `413` | body larger than `max_body_bytes`, before or after gzip decompression |
//! | `503` + `Retry-After` | the buffer cannot persist (disk full, shutting down): the sender keeps the webhook and retries |
//!
//! Memory is bounded: at most `max_concurrent_requests` requests of an address hold a body at
//! once (a semaphore taken before the body is read and released after the commit); others wait
//! in the kernel's and hyper's buffers, which is backpressure on the senders.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rumqttc::tokio_rustls::TlsAcceptor;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::auth::authorized;
use super::body::{self, BodyError};
use crate::buffer::BufferError;
use crate::decode::payload::PayloadDecoder;
use crate::model::Priority;
use crate::pipeline::{count_rejected, Ingest};
use crate::secret::Secret;
use crate::shutdown::Shutdown;
use crate::spacer::SeriesSpacer;

/// How long a request's body may take to arrive once its headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// What a `503` asks the sender to wait before retrying, in seconds.
pub const RETRY_AFTER_S: u32 = 5;

/// One `[[inputs.http]]` input: its path on the address and what it does with a body.
pub struct Webhook {
    pub name: String,
    pub decoder: PayloadDecoder,
    pub priority: Priority,
    pub max_body: usize,
    pub token: Option<Secret>,
    pub ingest: Ingest,
    /// Receipt-stamped readings of one series ≥ 1 ms apart, across this input's requests.
    pub spacer: Mutex<SeriesSpacer>,
}

/// Every input on one address, by path.
pub struct Listener {
    pub addr: SocketAddr,
    pub routes: HashMap<String, Arc<Webhook>>,
    pub tls: Option<TlsAcceptor>,
    pub permits: Arc<Semaphore>,
}

/// Loads the HTTPS certificate chain and key (PEM), through [`crate::tls::server_config`].
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, String> {
    let config = crate::tls::server_config(cert_file, key_file).map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Listener {
    /// Accepts connections until `shutdown`, then stops accepting and lets every connection
    /// finish the request it is in (its commit included) before returning.
    pub async fn run(self, socket: TcpListener, shutdown: Shutdown) {
        let listener = Arc::new(self);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true);
        let mut accept_errors = crate::loglimit::LogLimiter::new(5, Duration::from_secs(60));
        loop {
            let (tcp, _peer) = tokio::select! {
                r = socket.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: wait a little rather than spin.
                        if accept_errors.allow() {
                            tracing::warn!(listen = %listener.addr, "cannot accept a connection: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = shutdown.wait() => break,
            };
            let _ = tcp.set_nodelay(true);
            let l = listener.clone();
            let service = hyper::service::service_fn(move |req| handle(l.clone(), req));
            match &listener.tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = watched.await;
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    let addr = listener.addr;
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(listen = %addr, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => return,
                        };
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        let _ = watcher.watch(conn).await;
                    });
                }
            }
        }
        drop(socket);
        graceful.shutdown().await;
    }
}

/// A response with a short text body (the reason, for the sender's logs).
fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from({
        let mut s: String = body.into();
        s.push('\n');
        s
    })));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn count_request(input: &str, status: StatusCode) {
    metrics::counter!(
        "http_input_requests_total",
        "input" => input.to_owned(),
        "status" => status.as_u16().to_string()
    )
    .increment(1);
}

async fn handle(
    listener: Arc<Listener>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(hook) = listener.routes.get(req.uri().path()).cloned() else {
        count_request("", StatusCode::NOT_FOUND);
        return Ok(text(StatusCode::NOT_FOUND, "no webhook input on this path"));
    };
    let response = handle_webhook(&listener, &hook, req).await;
    count_request(&hook.name, response.status());
    Ok(response)
}

async fn handle_webhook(
    listener: &Listener,
    hook: &Webhook,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let name = hook.name.as_str();
    let refuse = |e: BodyError| {
        count_rejected(name, e.label());
        tracing::debug!(input = name, reason = e.label(), "webhook refused: {e}");
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        text(status, format!("{}: {e}", e.label()))
    };
    if req.method() != Method::POST && req.method() != Method::PUT {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "send webhooks with POST");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
        return r;
    }
    if let Some(token) = &hook.token {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !authorized(token, auth, req.uri().query()) {
            count_rejected(name, "unauthorized");
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "unauthorized: a valid token is needed (Authorization: Bearer <token> or ?token=<token>)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let header_str = |h: header::HeaderName| {
        req.headers().get(h).map(|v| {
            v.to_str()
                .map(str::to_owned)
                .unwrap_or_else(|_| "<not text>".into())
        })
    };
    let kind = match body::body_kind(header_str(header::CONTENT_TYPE).as_deref()) {
        Ok(k) => k,
        Err(e) => return refuse(e),
    };
    let encoding = header_str(header::CONTENT_ENCODING);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > hook.max_body as u64) {
        return refuse(BodyError::TooLarge {
            limit: hook.max_body,
            inflated: false,
        });
    }
    // Backpressure: at most `max_concurrent_requests` bodies of this address in memory.
    let Ok(_permit) = listener.permits.clone().acquire_owned().await else {
        return busy("the input is stopping");
    };
    let received = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), hook.max_body).collect(),
    )
    .await;
    let raw = match received {
        Err(_) => {
            count_rejected(name, "body_timeout");
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout: the body did not arrive in time",
            );
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(BodyError::TooLarge {
                limit: hook.max_body,
                inflated: false,
            })
        }
        Ok(Err(e)) => {
            count_rejected(name, "body_incomplete");
            return text(StatusCode::BAD_REQUEST, format!("body_incomplete: {e}"));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let payload = match body::decode_content(encoding.as_deref(), raw, hook.max_body) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let payload = match body::payload(&kind, payload).await {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    commit(hook, &payload).await
}

/// Decodes the payload and makes its readings durable; the answer says how that went.
async fn commit(hook: &Webhook, payload: &[u8]) -> Response<Full<Bytes>> {
    let name = hook.name.as_str();
    let received_ns = crate::clock::now_ns();
    let mut decoded = hook.decoder.decode("", payload, received_ns);
    for r in &decoded.rejected {
        count_rejected(name, r.label);
        tracing::debug!(
            input = name,
            reason = r.label,
            "webhook payload refused: {}",
            r.reason
        );
    }
    let reasons = || {
        decoded
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.label, r.reason))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if decoded.readings.is_empty() {
        let why = if decoded.rejected.is_empty() {
            count_rejected(name, "no_readings");
            "no_readings: the payload holds no reading".to_owned()
        } else {
            reasons()
        };
        return text(StatusCode::BAD_REQUEST, why);
    }
    if let Ok(mut spacer) = hook.spacer.lock() {
        spacer.space_receipt_stamped(&mut decoded.readings, received_ns);
    }
    let given = decoded.readings.len();
    let mut lp = Vec::with_capacity(payload.len());
    let lines = hook.ingest.encode(name, decoded.readings, &mut lp);
    if lines == 0 {
        return text(
            StatusCode::BAD_REQUEST,
            format!("invalid_reading: none of the payload's {given} readings can be stored (see readings_rejected_total and the log)"),
        );
    }
    match hook.ingest.commit(hook.priority, lines, lp).await {
        Ok(()) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(BufferError::TooLarge { bytes, limit }) => {
            count_rejected(name, "too_large");
            text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "too_large: the readings encode to {bytes} bytes, above the buffer's {limit}"
                ),
            )
        }
        Err(e) => {
            tracing::warn!(input = name, "webhook not stored, answered 503: {e}");
            busy(&format!("the buffer cannot store it now: {e}"))
        }
    }
}

/// `503` with `Retry-After`: nothing was stored, the sender should retry.
fn busy(why: &str) -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("unavailable: {why}"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    r
}
