//! MQTT input: one broker connection per `[[inputs.mqtt]]`, with acknowledgements tied to
//! durability.
//!
//! Two tasks per input:
//! - the **poll loop** drives `rumqttc`'s event loop (connect, reconnect with backoff and jitter,
//!   subscribe when the broker has no session for us) and hands each PUBLISH to
//! - the **committer**, which takes every message waiting (group commit), decodes them, appends
//!   the readings to the durable buffer in one append, and only then sends the PUBACKs.
//!
//! The session is persistent (`clean_session = false`) and acks are manual, so a message whose
//! readings are not yet durable is redelivered by the broker after a crash. Rejected messages
//! (not JSON, no usable field, too large) are counted and acked: they would never get better.
//! The channel between the tasks is bounded, so a slow disk stops the poll loop, which stops
//! reading the socket, which makes the broker hold back (backpressure, not memory).

use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::aggregate::Aggregator;
use crate::config::{parse_mqtt_url, resolve_secret, MqttInputConfig};
use crate::config::{PayloadFormat, RawReadings};
use crate::decode::json::{self, JsonMapping};
use crate::decode::{camera, line_protocol};
use crate::model::{Priority, Reading};
use crate::pipeline::{count_received, count_rejected, Ingest};

/// Messages handed from the poll loop to the committer, at most.
const QUEUE: usize = 4096;
/// Messages committed together at most (one buffer append, one fsync).
const GROUP_MAX: usize = 4096;
/// How long after connecting aggregation waits before closing windows by the clock.
const AGG_SETTLE: Duration = Duration::from_secs(2);
/// Payload bytes committed together at most, so one append stays well inside the buffer's limits.
const GROUP_MAX_BYTES: usize = 4 << 20;
/// Largest MQTT packet the client reads at all. Larger packets cannot be received (and so cannot
/// be acked); set the broker's `message_size_limit` below this.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Errors that stop an input from starting (bad TLS files, secrets).
#[derive(Debug, thiserror::Error)]
pub enum MqttInputError {
    #[error("input {input}: {message}")]
    Setup { input: String, message: String },
}

/// Runs one MQTT input until `shutdown` turns true; then stops taking messages, commits and acks
/// what it holds, and disconnects.
pub async fn run_mqtt_input(
    cfg: MqttInputConfig,
    index: usize,
    ingest: Ingest,
    data_dir: std::path::PathBuf,
    shutdown: watch::Receiver<bool>,
) -> Result<(), MqttInputError> {
    let name = cfg.name.clone().unwrap_or_else(|| format!("mqtt{index}"));
    let span = tracing::info_span!("mqtt", input = %name, url = %cfg.url);
    run(cfg, name, ingest, data_dir, shutdown)
        .instrument(span)
        .await
}

async fn run(
    cfg: MqttInputConfig,
    name: String,
    ingest: Ingest,
    data_dir: std::path::PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MqttInputError> {
    let options = mqtt_options(&cfg, &name)?;
    let agg = aggregation(&cfg, &name, &data_dir)?;
    // The request channel carries our PUBACKs; it must hold more than the broker can have in
    // flight to us (at most 65535 packet ids), so acking never waits on the poll loop.
    let (client, mut eventloop) = AsyncClient::new(options, 70_000);
    let filters: Vec<SubscribeFilter> = cfg
        .topics
        .iter()
        .map(|t| SubscribeFilter::new(t.clone(), qos(cfg.qos)))
        .collect();

    let (tx, rx) = mpsc::channel::<Publish>(QUEUE);
    // When the current broker session began (None while disconnected): aggregation closes windows
    // by the clock only once the broker has had time to redeliver what it queued for us.
    let (connected_tx, connected_rx) = watch::channel::<Option<std::time::Instant>>(None);
    let committer = tokio::spawn(
        commit_loop(
            rx,
            client.clone(),
            ingest.clone(),
            Committer {
                name: name.clone(),
                mapping: JsonMapping::from_config(&cfg),
                format: cfg.format,
                line_unit_ns: cfg
                    .timestamp_unit
                    .unwrap_or(crate::config::TimestampUnit::Ns)
                    .nanos(),
                max_payload: cfg.max_payload_bytes,
                priority: cfg.priority.into(),
            },
            agg,
            connected_rx,
        )
        .in_current_span(),
    );

    let connected = metrics::gauge!("mqtt_connected", "input" => name.clone());
    let status = ingest.status().clone();
    status.register(&name, crate::status::InputKind::Mqtt, &cfg.url);
    let mut backoff = Backoff::new();
    let mut tx = Some(tx);
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected.set(1.0);
                status.set(&name, true, None);
                let _ = connected_tx.send(Some(std::time::Instant::now()));
                backoff.reset();
                tracing::info!(session_present = ack.session_present, "connected to broker");
                if !ack.session_present {
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        tracing::error!("cannot queue SUBSCRIBE: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for (code, topic) in ack.return_codes.iter().zip(&cfg.topics) {
                    if matches!(code, SubscribeReasonCode::Failure) {
                        tracing::error!(topic, "broker refused the subscription: check the broker's ACL for this client");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                count_received(&name);
                if let Some(tx) = &tx {
                    // Waits while the committer is busy: backpressure towards the broker. A
                    // shutdown while waiting leaves this message unacked (the broker redelivers).
                    tokio::select! {
                        sent = tx.send(publish) => if sent.is_err() { break },
                        _ = shutdown.changed() => break,
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                connected.set(0.0);
                status.set(&name, false, Some(explain(&e)));
                let _ = connected_tx.send(None);
                metrics::counter!("mqtt_connection_errors_total", "input" => name.clone())
                    .increment(1);
                let wait = backoff.next();
                tracing::warn!(retry_in_ms = wait.as_millis() as u64, "{}", explain(&e));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }

    // Shutdown: stop handing over messages, let the committer finish its group, keep polling so
    // its PUBACKs reach the broker, then disconnect. Messages never committed are not acked and
    // come back with the next session.
    tx.take();
    let drain = async {
        let mut committer = committer;
        loop {
            tokio::select! {
                res = &mut committer => { let _ = res; break; }
                ev = eventloop.poll() => if ev.is_err() { tokio::time::sleep(Duration::from_millis(50)).await },
            }
        }
        let _ = client.try_disconnect();
        for _ in 0..100 {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("shutdown: gave up waiting for the broker after 10 s; unacked messages will be redelivered");
    }
    connected.set(0.0);
    tracing::info!("stopped");
    Ok(())
}

/// Decodes one message with the input's format: the readings, and what was rejected and why.
fn decode_payload(
    c: &Committer,
    topic: &str,
    payload: &[u8],
    now: i64,
) -> (Vec<Reading>, Vec<(&'static str, String)>) {
    let one = |r: Result<Reading, camera::CameraError>| match r {
        Ok(r) => (vec![r], Vec::new()),
        Err(e) => (Vec::new(), vec![(e.label(), e.to_string())]),
    };
    let tags = match json::topic_and_static_tags(&c.mapping, topic) {
        Ok(t) => t,
        Err(e) => return (Vec::new(), vec![(e.label(), e.to_string())]),
    };
    match c.format {
        PayloadFormat::Json => match json::decode_with_tags(&c.mapping, &tags, payload, now) {
            Ok(r) => (r, Vec::new()),
            Err(e) => (Vec::new(), vec![(e.label(), e.to_string())]),
        },
        PayloadFormat::Frigate => one(camera::decode_frigate(
            &c.mapping.measurement,
            &tags,
            payload,
        )),
        PayloadFormat::Lpr => one(camera::decode_lpr(
            &c.mapping.measurement,
            &tags,
            payload,
            now,
        )),
        PayloadFormat::Influx => {
            let (r, errors) = line_protocol::decode(&tags, payload, c.line_unit_ns, now);
            (
                r,
                errors
                    .into_iter()
                    .map(|e| (e.label(), e.to_string()))
                    .collect(),
            )
        }
    }
}

struct Committer {
    format: PayloadFormat,
    /// Timestamp unit of line protocol payloads, in ns.
    line_unit_ns: i64,
    name: String,
    mapping: JsonMapping,
    max_payload: usize,
    priority: Priority,
}

/// Edge aggregation of one input, with where its raw readings go.
struct Aggregation {
    aggregator: Aggregator,
    raw_log: Option<RawLog>,
}

/// Raw readings of an aggregated input kept locally (`raw = "local"`): line protocol appended to
/// `<data_dir>/raw/<input>.lp`, rotated to `.lp.1` at 64 MiB. Not forwarded, not fsync'd.
struct RawLog {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl RawLog {
    const ROTATE_BYTES: u64 = 64 << 20;

    fn write(&mut self, lp: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
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

/// Sets up aggregation for an input, resuming saved windows from `data_dir`.
fn aggregation(
    cfg: &MqttInputConfig,
    name: &str,
    data_dir: &std::path::Path,
) -> Result<Option<Aggregation>, MqttInputError> {
    let Some(a) = &cfg.aggregate else {
        return Ok(None);
    };
    let file = format!("{}.state", sanitize(name));
    let aggregator = Aggregator::open(
        a.window_s,
        a.grace_s,
        Some(data_dir.join("aggregate").join(file)),
    )
    .map_err(|e| MqttInputError::Setup {
        input: name.to_owned(),
        message: e.to_string(),
    })?;
    let raw_log = (a.raw == RawReadings::Local).then(|| RawLog {
        path: data_dir.join("raw").join(format!("{}.lp", sanitize(name))),
        file: None,
    });
    Ok(Some(Aggregation {
        aggregator,
        raw_log,
    }))
}

fn sanitize(name: &str) -> String {
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

async fn commit_loop(
    mut rx: mpsc::Receiver<Publish>,
    client: AsyncClient,
    ingest: Ingest,
    c: Committer,
    mut agg: Option<Aggregation>,
    connected: watch::Receiver<Option<std::time::Instant>>,
) {
    let mut group = Vec::with_capacity(64);
    let mut limiter = LogLimiter::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // With aggregation, windows also close by the clock while no message arrives.
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => Some(p),
                None => break,
            },
            _ = tick.tick(), if agg.is_some() => None,
        };
        group.extend(first);
        let mut group_bytes: usize = group.iter().map(|p| p.payload.len()).sum();
        while group.len() < GROUP_MAX && group_bytes < GROUP_MAX_BYTES && !group.is_empty() {
            match rx.try_recv() {
                Ok(p) => {
                    group_bytes += p.payload.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let mut lp = Vec::with_capacity(group.len() * 160);
        let mut lines = 0;
        let now = crate::clock::now_ns();
        let mut raw = Vec::new();
        for p in &group {
            if p.payload.len() > c.max_payload {
                count_rejected(&c.name, "payload_too_large");
                if limiter.allow() {
                    tracing::warn!(topic = %p.topic, bytes = p.payload.len(), limit = c.max_payload,
                        "message rejected: payload larger than max_payload_bytes");
                }
                continue;
            }
            let (readings, errors) = decode_payload(&c, &p.topic, &p.payload, now);
            match &mut agg {
                None if !readings.is_empty() => lines += ingest.encode(&c.name, readings, &mut lp),
                None => {}
                Some(a) => {
                    for r in readings {
                        if let Err(e) = a.aggregator.add(&r) {
                            count_rejected(&c.name, "late_for_window");
                            if limiter.allow() {
                                tracing::warn!(topic = %p.topic, "reading rejected: {e}");
                            }
                        } else if a.raw_log.is_some() {
                            crate::output::encode(&r, ingest.flavor(), &mut raw);
                        }
                    }
                }
            }
            for (label, message) in errors {
                count_rejected(&c.name, label);
                if limiter.allow() {
                    tracing::warn!(topic = %p.topic, reason = label, "message rejected: {message}");
                }
            }
        }
        // Close windows by the clock only while connected for a while with nothing queued: after
        // a reconnect the broker first redelivers what it held, which may belong to those windows.
        let settled =
            matches!(*connected.borrow(), Some(t) if t.elapsed() >= AGG_SETTLE) && rx.is_empty();
        if let (Some(a), true) = (&mut agg, settled) {
            let closed = a.aggregator.flush_due(now);
            if !closed.is_empty() {
                lines += ingest.encode(&c.name, closed, &mut lp);
            }
        }
        // Durable first; keep retrying (the buffer makes room by dropping its oldest data) rather
        // than ack something that is not on disk.
        let mut backoff = Backoff::with(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match ingest.commit(c.priority, lines, lp.clone()).await {
                Ok(()) => break,
                Err(crate::buffer::BufferError::Closed) => {
                    tracing::error!(
                        "buffer closed; {} messages left unacked for redelivery",
                        group.len()
                    );
                    return;
                }
                Err(e @ crate::buffer::BufferError::TooLarge { .. }) => {
                    // Permanent: retrying cannot help. Only possible with max_payload_bytes set
                    // near the buffer's per-line limit; refuse these messages, say so, move on.
                    tracing::error!(
                        messages = group.len(),
                        "readings refused by the buffer: {e}; lower max_payload_bytes"
                    );
                    for _ in 0..group.len() {
                        count_rejected(&c.name, "too_large_for_buffer");
                    }
                    break;
                }
                Err(e) => {
                    let wait = backoff.next();
                    tracing::error!(
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot make readings durable, not acking: {e}"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if let Some(a) = &mut agg {
            // The open windows hold readings we are about to ack: save them first.
            if let Err(e) = a.aggregator.save() {
                tracing::error!(
                    "cannot save aggregation windows, not acking (the broker will redeliver): {e}"
                );
                group.clear();
                continue;
            }
            if let Some(log) = &mut a.raw_log {
                if let Err(e) = log.write(&raw) {
                    tracing::warn!(path = %log.path.display(), "cannot keep raw readings locally: {e}");
                }
            }
        }
        for p in group.drain(..) {
            if let Err(e) = client.ack(&p).await {
                tracing::warn!("cannot queue PUBACK (broker will redeliver): {e}");
            }
        }
        limiter.tick();
    }
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn mqtt_options(cfg: &MqttInputConfig, name: &str) -> Result<MqttOptions, MqttInputError> {
    let setup = |message: String| MqttInputError::Setup {
        input: name.to_owned(),
        message,
    };
    let addr = parse_mqtt_url(&cfg.url).map_err(setup)?;
    let mut o = MqttOptions::new(cfg.client_id.clone(), addr.host.clone(), addr.port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)))
        .set_max_packet_size(MAX_PACKET.max(cfg.max_payload_bytes + 65_536), 1024 * 1024);
    let password = resolve_secret(
        &format!("{name}.password"),
        cfg.password_env.as_deref(),
        cfg.password_file.as_deref(),
    )
    .map_err(|e| setup(e.to_string()))?;
    if let Some(user) = &cfg.username {
        o.set_credentials(
            user.clone(),
            password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        );
    } else if password.is_some() {
        return Err(setup("a password is configured but no username".into()));
    }
    if addr.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| setup(format!("cannot read {}: {e}", p.display())))
        };
        let client_auth = match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let tls = match &cfg.ca_file {
            Some(ca) => TlsConfiguration::Simple {
                ca: read(ca)?,
                alpn: None,
                client_auth,
            },
            None if client_auth.is_none() => TlsConfiguration::default(),
            None => return Err(setup("mutual TLS needs ca_file too".into())),
        };
        o.set_transport(Transport::tls_with_config(tls));
    }
    Ok(o)
}

/// A sentence a technician can act on, for each kind of connection failure.
fn explain(e: &ConnectionError) -> String {
    use rumqttc::ConnectReturnCode as C;
    match e {
        ConnectionError::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized) => {
            "broker refused the login: check username and password".into()
        }
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "cannot connect: nothing listens at that address (is the broker running? right port?)"
                .into()
        }
        ConnectionError::Tls(t) => {
            format!("TLS handshake failed (check ca_file, certificate dates and host name): {t}")
        }
        ConnectionError::NetworkTimeout => "network timeout reaching the broker".into(),
        other => format!("broker connection lost: {other}"),
    }
}

/// Exponential backoff with full jitter.
struct Backoff {
    base: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self::with(Duration::from_millis(500), Duration::from_secs(30))
    }
    fn with(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            current: base,
        }
    }
    fn reset(&mut self) {
        self.current = self.base;
    }
    fn next(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.cap);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(ms / 2 + rand::thread_rng().gen_range(0..=ms / 2))
    }
}

/// At most a few warnings per committed group burst, so a flood of bad messages cannot flood
/// the log; the metrics still count every one.
#[derive(Default)]
struct LogLimiter {
    logged: u32,
    since: Option<std::time::Instant>,
}

impl LogLimiter {
    fn allow(&mut self) -> bool {
        self.logged += 1;
        self.logged <= 10
    }
    fn tick(&mut self) {
        let now = std::time::Instant::now();
        match self.since {
            Some(t) if now.duration_since(t) < Duration::from_secs(10) => {}
            _ => {
                if self.logged > 10 {
                    tracing::warn!(
                        suppressed = self.logged - 10,
                        "more rejected messages (see readings_rejected_total)"
                    );
                }
                self.logged = 0;
                self.since = Some(now);
            }
        }
    }
}
