//! What operators and technicians see over HTTP: health, readiness, metrics, the live page.
//!
//! Routes (all but `/healthz` need the bearer token when one is configured):
//! - `GET /healthz`: liveness, JSON, never authenticated;
//! - `GET /readyz`: readiness with reasons (see [`readiness`]), 503 when not ready; `warnings`
//!   name inputs that are down (an unplugged serial port) without making it not ready;
//! - `GET /metrics`: Prometheus text format, with buffer gauges sampled at scrape time; every
//!   name prefixed `ioc_gateway_` and described (`# HELP`) by [`crate::metrics_catalog`];
//! - `GET /api/sensors`: every sensor with its latest values, plus inputs (MQTT connections and
//!   serial ports, with up/down, since when, last error and, for ports, frame counts), buffer
//!   and store;
//! - `GET /api/live`: server-sent events of readings (`?measurement=`, `?sensor=`; `?status=1`
//!   adds a `status` event every 2 s);
//! - `GET /`: the live page (HTML/JS/CSS embedded in the binary, no build step).
//!
//! The token is accepted as `Authorization: Bearer <token>` or, for browsers (whose
//! `EventSource` cannot set headers), HTTP Basic with the token as the password; a 401 offers
//! both so a browser prompts once. Comparison is constant-time. No response ever carries a
//! secret: URLs in errors and targets have their user-info replaced by `***` ([`redact`]).

pub mod board;
pub mod readiness;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::buffer::BufferStats;
use crate::secret::{resolve_secret, Secret, SecretError};
use crate::shutdown::Shutdown;

pub mod config;
use crate::status::{InputState, Observers, StoreSnapshot};
use board::{Board, LiveEvent};
pub use config::HttpSection;
use readiness::{Readiness, ReadinessInput};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Default cap on sensors kept on the live board.
pub const DEFAULT_MAX_SENSORS: usize = 10_000;
/// How often `?status=1` live clients get a status event.
const STATUS_EVENT_INTERVAL: Duration = Duration::from_secs(2);
/// How often the Prometheus handle's upkeep runs and disk errors are sampled.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Most concurrent `/api/live` clients; more get 503 (each costs a task and a queue).
const MAX_LIVE_CLIENTS: usize = 32;
/// Encoded events queued per live client; beyond it the client's task waits on the socket.
const LIVE_CLIENT_QUEUE: usize = 64;

/// Why the HTTP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {listen} for the HTTP server: {source} (is another process using the port? see [http] listen)")]
    Bind {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Settings besides the listen address and the token.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `/readyz` turns not-ready when data waits and no batch was confirmed for this long.
    pub store_unreachable_after: Duration,
    /// The buffer's disk bound (`[buffer] max_disk_mb` in bytes), for the 80 % rule.
    pub buffer_max_bytes: u64,
    /// Most sensors kept on the live board.
    pub max_sensors: usize,
    /// The buffer directory: when its filesystem holds less than `buffer_max_bytes`, the 80 %
    /// rule uses what the filesystem can really hold (buffer + free space).
    pub buffer_dir: Option<std::path::PathBuf>,
}

impl HttpSettings {
    pub fn new(store_unreachable_after: Duration, buffer_max_bytes: u64) -> Self {
        HttpSettings {
            store_unreachable_after,
            buffer_max_bytes,
            max_sensors: DEFAULT_MAX_SENSORS,
            buffer_dir: None,
        }
    }
}

/// Resolves `[http] token_env` / `token_file`.
pub fn resolve_token(http: &HttpSection) -> Result<Option<Secret>, SecretError> {
    resolve_secret(
        "http.token",
        http.token_env.as_deref(),
        http.token_file.as_deref(),
    )
}

/// Installs the gateway's recorder ([`crate::metrics_catalog::recorder`]: Prometheus behind the
/// `ioc_gateway_` prefix, every metric described) as the process's `metrics` recorder and
/// returns its handle. Safe to call more than once: later calls return the same handle. If some
/// other recorder was installed first, logs it and returns a handle that renders an empty page.
pub fn install_metrics_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let (recorder, handle) = crate::metrics_catalog::recorder();
            let handle = match metrics::set_global_recorder(recorder) {
                Ok(()) => handle,
                Err(e) => {
                    tracing::warn!(
                        "cannot install the Prometheus recorder ({e}); /metrics will be empty"
                    );
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            crate::build_info::record_metric();
            handle
        })
        .clone()
}

/// Replaces the user-info of every URL in `text` (`scheme://user:pass@host` →
/// `scheme://***@host`), so that no password in a broker or store URL reaches a response.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Tracks when the buffer's append error count last went up.
#[derive(Debug, Default)]
struct DiskErrorWatch {
    seen: u64,
    last_increase_ms: Option<u64>,
}

struct AppState {
    token: Option<Secret>,
    observers: Observers,
    board: Board,
    metrics: PrometheusHandle,
    settings: HttpSettings,
    disk_errors: Mutex<DiskErrorWatch>,
    live_clients: AtomicUsize,
    /// Each reading the board took, for the open `/api/live` streams.
    live_events: broadcast::Sender<Arc<LiveEvent>>,
    shutdown: Shutdown,
}

type Shared = Arc<AppState>;

impl AppState {
    fn buffer_stats(&self) -> BufferStats {
        let stats = self.observers.buffer.stats();
        if let Ok(mut w) = self.disk_errors.lock() {
            if stats.append_errors > w.seen {
                w.seen = stats.append_errors;
                w.last_increase_ms = Some(now_ms());
            }
        }
        stats
    }

    fn last_append_error_ms(&self) -> Option<u64> {
        self.disk_errors
            .lock()
            .ok()
            .and_then(|w| w.last_increase_ms)
    }

    /// Every input's state: MQTT connections from the registry, serial ports from the serial
    /// input's own registry (with frame counts), secrets redacted.
    fn inputs(&self) -> BTreeMap<String, InputState> {
        let mut inputs = self.raw_inputs();
        for s in inputs.values_mut() {
            s.target = redact(&s.target);
            s.last_error = s.last_error.as_deref().map(redact);
        }
        inputs
    }

    fn raw_inputs(&self) -> BTreeMap<String, InputState> {
        self.observers.inputs.snapshot()
    }

    /// Each output's view of its store, errors redacted.
    fn outputs(&self) -> Vec<(String, StoreSnapshot)> {
        let mut all = self.observers.outputs.snapshots();
        for (_, s) in &mut all {
            s.last_error = s.last_error.as_deref().map(redact);
        }
        all
    }

    fn readiness(
        &self,
        now: u64,
        inputs: &BTreeMap<String, InputState>,
        outputs: &[(String, StoreSnapshot)],
        buffer: &BufferStats,
    ) -> Readiness {
        readiness::evaluate(&ReadinessInput {
            now_ms: now,
            started_ms: self.observers.started_ms,
            inputs,
            outputs,
            buffer,
            buffer_max_bytes: self.effective_buffer_max(buffer),
            store_unreachable_after_ms: u64::try_from(
                self.settings.store_unreachable_after.as_millis(),
            )
            .unwrap_or(u64::MAX),
            last_append_error_ms: self.last_append_error_ms(),
        })
    }

    /// The buffer's real bound: `max_disk_mb`, or less when the filesystem cannot hold that.
    fn effective_buffer_max(&self, buffer: &BufferStats) -> u64 {
        let configured = self.settings.buffer_max_bytes;
        match self
            .settings
            .buffer_dir
            .as_deref()
            .and_then(crate::buffer::filesystem_free_bytes)
        {
            Some(free) => configured.min(buffer.disk_bytes.saturating_add(free)),
            None => configured,
        }
    }

    /// Inputs, buffer, store and readiness: the head of `/api/sensors` and the `status` event.
    fn status_json(&self) -> Value {
        let now = now_ms();
        let inputs = self.inputs();
        let outputs = self.outputs();
        let buffer = self.buffer_stats();
        let ready = self.readiness(now, &inputs, &outputs, &buffer);
        let max = self.effective_buffer_max(&buffer);
        // `store` is the output furthest behind (the only one, mostly); `outputs` has each.
        let store = crate::status::OutputStates::worst_of(&outputs)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let outputs_json: Vec<Value> = outputs
            .iter()
            .map(|(name, s)| {
                let c = buffer.consumer(name);
                json!({
                    "name": name,
                    "store": s,
                    "unsent_lines": c.map(|c| c.unsent_lines),
                    "oldest_unsent_age_ms": c.and_then(|c| c.oldest_unsent_age_ms),
                    "dropped_oldest_lines": c.map(|c| c.dropped_oldest_lines),
                })
            })
            .collect();
        json!({
            "gateway_id": self.observers.gateway_id,
            "build": {
                "version": crate::build_info::VERSION,
                "commit": crate::build_info::COMMIT,
            },
            "now_ms": now,
            "started_ms": self.observers.started_ms,
            "ready": ready,
            "inputs": inputs,
            "store": store,
            "outputs": outputs_json,
            "buffer": {
                "disk_bytes": buffer.disk_bytes,
                "max_bytes": max,
                "configured_max_bytes": self.settings.buffer_max_bytes,
                "fill_ratio": if max > 0 { buffer.disk_bytes as f64 / max as f64 } else { 0.0 },
                "segments": buffer.segments,
                "unsent_lines": buffer.unsent_lines,
                "urgent_unsent_lines": buffer.urgent_unsent_lines,
                "unsent_bytes": buffer.unsent_bytes,
                "oldest_unsent_age_ms": buffer.oldest_unsent_age_ms,
                "dropped_oldest_lines": buffer.dropped_oldest_lines,
                "recovery_dropped_bytes": buffer.recovery_dropped_bytes,
                "append_errors": buffer.append_errors,
            },
            "sensors_total": self.board.sensor_count(),
            "live_clients": self.live_clients.load(Ordering::Relaxed),
        })
    }

    /// Gauges that are sampled rather than pushed, set just before a scrape renders.
    fn publish_scrape_gauges(&self) {
        let now = now_ms();
        let inputs = self.raw_inputs();
        let outputs = self.observers.outputs.snapshots();
        let buffer = self.buffer_stats();
        let ready = self.readiness(now, &inputs, &outputs, &buffer);
        metrics::gauge!("buffer_unsent_lines").set(buffer.unsent_lines as f64);
        metrics::gauge!("buffer_unsent_bytes").set(buffer.unsent_bytes as f64);
        metrics::gauge!("buffer_max_bytes").set(self.settings.buffer_max_bytes as f64);
        metrics::gauge!("buffer_segments").set(buffer.segments as f64);
        metrics::gauge!("buffer_oldest_unsent_age_seconds")
            .set(buffer.oldest_unsent_age_ms.unwrap_or(0) as f64 / 1000.0);
        // The same per output (buffer consumer); the two above are the worst of these.
        for consumer in &buffer.consumers {
            let output = consumer.name.clone();
            metrics::gauge!("output_buffer_unsent_lines", "output" => output.clone())
                .set(consumer.unsent_lines as f64);
            metrics::gauge!("output_buffer_oldest_unsent_age_seconds", "output" => output)
                .set(consumer.oldest_unsent_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        metrics::gauge!("ready").set(if ready.ready { 1.0 } else { 0.0 });
        metrics::gauge!("uptime_seconds")
            .set(now.saturating_sub(self.observers.started_ms) as f64 / 1000.0);
        // The output furthest behind, and each one.
        let age = |ok: u64| now.saturating_sub(ok) as f64 / 1000.0;
        if let Some(ok) = outputs.iter().filter_map(|(_, s)| s.last_success_ms).min() {
            if outputs.iter().all(|(_, s)| s.last_success_ms.is_some()) {
                metrics::gauge!("store_last_success_age_seconds").set(age(ok));
            }
        }
        for (name, s) in &outputs {
            if let Some(ok) = s.last_success_ms {
                metrics::gauge!("output_last_success_age_seconds", "output" => name.clone())
                    .set(age(ok));
            }
        }
        for (name, s) in &inputs {
            let kind = match s.kind {
                crate::status::InputKind::Mqtt => "mqtt",
                crate::status::InputKind::Serial => "serial",
                crate::status::InputKind::Http => "http",
            };
            metrics::gauge!("input_up", "input" => name.clone(), "kind" => kind).set(if s.up {
                1.0
            } else {
                0.0
            });
        }
        metrics::gauge!("live_sensors").set(self.board.sensor_count() as f64);
        metrics::gauge!("live_clients").set(self.live_clients.load(Ordering::Relaxed) as f64);
    }
}

/// A bound, not yet serving HTTP server: bind first (so a busy port is a clear startup error),
/// then [`run`](Self::run).
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Binds `listen` (`host:port`; port 0 picks a free one).
    pub async fn bind(listen: &str) -> Result<Self, HttpError> {
        let bind_err = |source| HttpError::Bind {
            listen: listen.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(HttpServer {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` turns true; live streams end then too.
    pub async fn run(
        self,
        token: Option<Secret>,
        observers: Observers,
        metrics: PrometheusHandle,
        settings: HttpSettings,
        shutdown: Shutdown,
    ) -> Result<(), HttpError> {
        let board = Board::new(settings.max_sensors);
        let state = Arc::new(AppState {
            token,
            board: board.clone(),
            metrics,
            settings,
            disk_errors: Mutex::default(),
            live_clients: AtomicUsize::new(0),
            live_events: broadcast::channel(LIVE_EVENTS_QUEUE).0,
            shutdown: shutdown.clone(),
            observers,
        });
        let board_task = tokio::spawn(run_board(
            Arc::clone(&state),
            state.live_events.clone(),
            shutdown.clone(),
        ));
        let upkeep_task = tokio::spawn(run_upkeep(Arc::clone(&state), shutdown.clone()));
        tracing::info!(
            listen = %self.local_addr,
            auth = state.token.is_some(),
            "HTTP server listening (live page, /metrics, /healthz, /readyz)"
        );
        let stop = shutdown;
        let result = axum::serve(self.listener, router(state))
            .with_graceful_shutdown(async move {
                stop.wait().await;
            })
            .await
            .map_err(HttpError::Serve);
        board_task.abort();
        upkeep_task.abort();
        result
    }
}

/// Binds `listen` and serves until `shutdown` turns true. See the module docs for the routes.
pub async fn serve(
    listen: &str,
    token: Option<Secret>,
    observers: Observers,
    metrics: PrometheusHandle,
    settings: HttpSettings,
    shutdown: Shutdown,
) -> Result<(), HttpError> {
    HttpServer::bind(listen)
        .await?
        .run(token, observers, metrics, settings, shutdown)
        .await
}

/// How often the board takes what the live feed collected.
const LIVE_TAKE_INTERVAL: Duration = Duration::from_millis(250);
/// Live events queued for `/api/live` streams; a stream that falls further behind skips ahead.
const LIVE_EVENTS_QUEUE: usize = 4096;

/// Takes the live feed's lines into the board every [`LIVE_TAKE_INTERVAL`] until shutdown,
/// parses them (the ingest path only copied them) and passes each reading's event on to the
/// open `/api/live` streams. Disarms the feed when nobody watches.
async fn run_board(state: Shared, events: broadcast::Sender<Arc<LiveEvent>>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(LIVE_TAKE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = state.observers.live.clone();
    let mut batch = crate::status::LiveBatch::default();
    let mut sampled_out = 0;
    let no_tags = std::collections::BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        feed.take(state.live_clients.load(Ordering::Relaxed), &mut batch);
        for (chunk, lines) in batch.chunks() {
            let received_ns = i64::try_from(chunk.received_ms)
                .unwrap_or(i64::MAX / 1_000_000)
                .saturating_mul(1_000_000);
            // Lines the gateway itself encoded: errors cannot happen, and would only mean a
            // reading missing from the page.
            let (readings, _) = ioc_decode::line_protocol::decode(&no_tags, lines, 1, received_ns);
            for reading in &readings {
                let ev = LiveEvent::from_reading(&chunk.input, reading, chunk.received_ms);
                state.board.record(&ev, reading);
                if events.receiver_count() > 0 {
                    let _ = events.send(Arc::new(ev));
                }
            }
        }
        let now_sampled_out = feed.sampled_out();
        state
            .board
            .lagged(now_sampled_out.saturating_sub(sampled_out));
        sampled_out = now_sampled_out;
    }
}

async fn run_upkeep(state: Shared, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.metrics.run_upkeep();
                let _ = state.buffer_stats();
            }
            _ = shutdown.wait() => return,
        }
    }
}

fn router(state: Shared) -> Router {
    let protected = Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/api/sensors", get(api_sensors))
        .route("/api/live", get(api_live))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(protected)
        .with_state(state)
}

/// Extracts the presented token from `Authorization: Bearer …` or `Basic …` (password part).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_user, password) = text.split_once(':')?;
        Some(password.to_owned())
    } else {
        None
    }
}

fn token_matches(expected: &Secret, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(expected.expose().as_bytes().ct_eq(presented.as_bytes()))
}

async fn require_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    let (error, status) = match presented_token(request.headers()) {
        Some(t) if token_matches(expected, &t) => return next.run(request).await,
        Some(_) => ("invalid token", StatusCode::UNAUTHORIZED),
        None => ("missing token", StatusCode::UNAUTHORIZED),
    };
    let mut resp = (
        status,
        Json(json!({
            "error": error,
            "hint": "send `Authorization: Bearer <token>` (the token configured by [http] token_env or token_file); browsers: user any, password the token",
        })),
    )
        .into_response();
    let h = resp.headers_mut();
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ioc-gateway\""),
    );
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ioc-gateway\", charset=\"UTF-8\""),
    );
    resp
}

async fn healthz(State(state): State<Shared>) -> Json<Value> {
    Json(json!({
        "status": "alive",
        "uptime_s": now_ms().saturating_sub(state.observers.started_ms) / 1000,
        "version": crate::build_info::VERSION,
        "commit": crate::build_info::COMMIT,
    }))
}

async fn readyz(State(state): State<Shared>) -> Response {
    let now = now_ms();
    let inputs = state.inputs();
    let outputs = state.outputs();
    let buffer = state.buffer_stats();
    let r = state.readiness(now, &inputs, &outputs, &buffer);
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

async fn metrics_page(State(state): State<Shared>) -> Response {
    state.publish_scrape_gauges();
    let body = state.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn api_sensors(State(state): State<Shared>) -> Json<Value> {
    state.observers.live.watch();
    let mut body = state.status_json();
    let snap = state.board.snapshot();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("sensors".into(), json!(snap.sensors));
        obj.insert("camera_events".into(), json!(snap.camera_events));
        obj.insert("sensors_evicted".into(), json!(snap.sensors_evicted));
        obj.insert("live_feed_lagged".into(), json!(snap.live_feed_lagged));
        obj.insert("max_sensors".into(), json!(snap.max_sensors));
        obj.insert(
            "live_since_ms".into(),
            json!(state.observers.live.armed_since_ms()),
        );
    }
    Json(body)
}

/// `/api/live` filters.
#[derive(Debug, Default, Deserialize)]
struct LiveQuery {
    measurement: Option<String>,
    /// Matches the `sensor_id` tag or the board key.
    sensor: Option<String>,
    /// `1`/`true`: also send a `status` event every 2 s.
    status: Option<String>,
}

impl LiveQuery {
    fn wants(&self, ev: &LiveEvent) -> bool {
        if let Some(m) = &self.measurement {
            if &ev.measurement != m {
                return false;
            }
        }
        if let Some(s) = &self.sensor {
            if ev.sensor_id.as_deref() != Some(s.as_str()) && &ev.key != s {
                return false;
            }
        }
        true
    }
}

/// Decrements the live client count when a live stream's task ends.
struct LiveClientGuard(Shared);

impl Drop for LiveClientGuard {
    fn drop(&mut self) {
        self.0.live_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Serialize)]
struct LaggedNotice {
    missed: u64,
}

async fn api_live(State(state): State<Shared>, Query(q): Query<LiveQuery>) -> Response {
    if state.live_clients.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE_CLIENTS {
        state.live_clients.fetch_sub(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "too many live clients", "max": MAX_LIVE_CLIENTS})),
        )
            .into_response();
    }
    let guard = LiveClientGuard(Arc::clone(&state));
    let with_status = matches!(q.status.as_deref(), Some("1" | "true" | "yes"));
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(LIVE_CLIENT_QUEUE);
    state.observers.live.watch();
    let mut feed = state.live_events.subscribe();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut status_tick = tokio::time::interval(STATUS_EVENT_INTERVAL);
        loop {
            let event = tokio::select! {
                msg = feed.recv() => match msg {
                    Ok(ev) => {
                        if !q.wants(&ev) {
                            continue;
                        }
                        Event::default().event("reading").json_data(&*ev).ok()
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("lagged").json_data(LaggedNotice { missed: n }).ok()
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = status_tick.tick(), if with_status => {
                    Event::default().event("status").json_data(guard.0.status_json()).ok()
                }
                _ = shutdown.wait() => return,
                _ = tx.closed() => return,
            };
            let Some(event) = event else { continue };
            // A slow browser makes this task wait; the feed then skips ahead for it (`lagged`)
            // instead of queueing here: memory stays bounded by the feed's capacity.
            tokio::select! {
                sent = tx.send(Ok(event)) => if sent.is_err() { return },
                _ = shutdown.wait() => return,
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
                ),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index(State(state): State<Shared>) -> Response {
    state.observers.live.watch();
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_userinfo_only() {
        assert_eq!(
            redact("connect to mqtts://user:s3cret@broker:8883/x failed"),
            "connect to mqtts://***@broker:8883/x failed"
        );
        assert_eq!(redact("http://db:8086/write"), "http://db:8086/write");
        assert_eq!(
            redact("a http://u:p@h b https://h2 c"),
            "a http://***@h b https://h2 c"
        );
        assert_eq!(redact("/dev/ttyUSB0"), "/dev/ttyUSB0");
    }

    #[test]
    fn token_from_bearer_and_basic() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("abc"));
        // "op:abc" in base64
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic b3A6YWJj"),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(presented_token(&h), None);
        let s = Secret::new("abc");
        assert!(token_matches(&s, "abc"));
        assert!(!token_matches(&s, "abd"));
        assert!(!token_matches(&s, "ab"));
    }
}
