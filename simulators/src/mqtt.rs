//! Publishes a message stream over N MQTT connections and records what the broker acknowledged.
//!
//! One generator thread draws messages, paces them to the target rate (bursts skip the pacing)
//! and hands each to the connection of its device (so a device's messages stay in order).
//! Each connection's rumqttc event loop runs in its own task and writes a manifest line when
//! the broker acknowledges a message: on PUBACK for QoS 1, when the packet is handed to the
//! socket for QoS 0 (QoS 0 promises no more).
//!
//! rumqttc assigns packet ids inside its event loop, so acknowledgements are matched by order:
//! messages enter rumqttc's request channel in the order they enter our per-connection queue,
//! and rumqttc reports `Outgoing::Publish(pkid)` in that same order. A publish that rumqttc
//! re-sends after a reconnect keeps its packet id, which is already known and not re-queued.
//! Sessions are persistent (clean session off, unique non-empty client ids) so a reconnect keeps
//! unacknowledged messages; if the broker lost the session anyway, the messages it held are
//! counted as `lost` and left out of the manifest. Reconnect attempts are spaced (rumqttc
//! itself retries with no delay).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Request,
};
use serde::Serialize;
use thiserror::Error;

use crate::manifest::mark_resent;
use crate::models::Message;

/// Why a run could not be carried out.
#[derive(Debug, Error)]
pub enum RunError {
    /// The broker URL is not `mqtt://host:port`.
    #[error("broker URL {0:?}: expected mqtt://HOST:PORT")]
    BrokerUrl(String),
    /// Writing the manifest failed.
    #[error("manifest: {0}")]
    Manifest(#[from] std::io::Error),
    /// No connection could be made to the broker in time.
    #[error("could not connect to the broker at {0} within {1:?}")]
    Connect(String, Duration),
    /// A connection task stopped unexpectedly.
    #[error("MQTT connection {0} stopped")]
    ConnectionGone(usize),
}

/// How to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// QoS 0 or 1.
    pub qos: QoS,
    /// Number of client connections.
    pub clients: usize,
    /// Target messages per second over all clients; 0 = as fast as the broker takes them.
    pub rate: f64,
    /// Stop after this many messages.
    pub messages: Option<u64>,
    /// Stop after this much wall-clock time.
    pub duration: Option<Duration>,
    /// Client ids are `<prefix>-<n>`.
    pub client_id_prefix: String,
    /// Drop each connection after every this many acknowledged messages (0 = never).
    pub disconnect_every: u64,
    /// How long a dropped connection stays away.
    pub disconnect_for: Duration,
    /// Unacknowledged QoS 1 messages per connection.
    pub inflight: u16,
    /// Publish each message when its simulated instant comes (simulated clock = wall clock,
    /// starting at this Unix-ms instant); `rate` is then ignored.
    pub realtime_from_ms: Option<i64>,
    /// Give up waiting for outstanding acknowledgements after this long without progress.
    pub ack_timeout: Duration,
}

impl PublishOptions {
    /// Defaults for `mqtt://host:port`.
    pub fn for_broker(url: &str) -> Result<Self, RunError> {
        let (host, port) = parse_broker_url(url)?;
        Ok(Self {
            host,
            port,
            qos: QoS::AtLeastOnce,
            clients: 1,
            rate: 0.0,
            messages: None,
            duration: None,
            client_id_prefix: format!("sensor-sim-{}", std::process::id()),
            disconnect_every: 0,
            disconnect_for: Duration::from_secs(1),
            inflight: 500,
            realtime_from_ms: None,
            ack_timeout: Duration::from_secs(30),
        })
    }
}

/// Splits `mqtt://host:port` (port defaults to 1883).
pub fn parse_broker_url(url: &str) -> Result<(String, u16), RunError> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| RunError::BrokerUrl(url.to_owned()))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| RunError::BrokerUrl(url.to_owned()))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(RunError::BrokerUrl(url.to_owned()));
    }
    Ok((host.to_owned(), port))
}

/// The one-line result of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunSummary {
    /// Messages handed to the MQTT client.
    pub published: u64,
    /// Messages the broker acknowledged (written to the manifest).
    pub acked: u64,
    /// Wall-clock seconds from first publish to last acknowledgement.
    pub seconds: f64,
    /// `acked / seconds`.
    pub rate: f64,
    /// Connections dropped and re-established (faults and broker trouble).
    pub reconnects: u64,
    /// Messages lost because the broker forgot a session, or never acknowledged in time.
    pub lost: u64,
    /// Messages published inside bursts.
    pub bursts: u64,
    /// Published messages per injected fault.
    pub faults: BTreeMap<String, u64>,
}

/// Unsubscribed from at the end to wake idle event loops (nothing ever subscribes to it).
const NUDGE_TOPIC: &str = "sensor-sim/nudge";

struct Pending {
    line: String,
}

struct Connection {
    client: AsyncClient,
    queue: Mutex<VecDeque<Pending>>,
    connected: AtomicBool,
    alive: AtomicBool,
    published: AtomicU64,
}

struct Shared {
    manifest: Mutex<Box<dyn Write + Send>>,
    flush_each: bool,
    acked: AtomicU64,
    reconnects: AtomicU64,
    lost: AtomicU64,
    done: AtomicBool,
    last_ack: Mutex<Instant>,
}

impl Shared {
    fn record(&self, pending: Pending) {
        if let Ok(mut out) = self.manifest.lock() {
            // A failed manifest write is reported when the writer is flushed at the end.
            let _ = out.write_all(pending.line.as_bytes());
            if self.flush_each {
                let _ = out.flush();
            }
        }
        self.acked.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut t) = self.last_ack.lock() {
            *t = Instant::now();
        }
    }
}

async fn drive(
    index: usize,
    conn: Arc<Connection>,
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    opts: PublishOptions,
) {
    let mut inflight: HashMap<u16, Pending> = HashMap::new();
    let mut acked_here = 0u64;
    let mut ever_connected = false;
    let mut queued_at_drop = 0usize;
    loop {
        let finished = shared.done.load(Ordering::Acquire)
            && inflight.is_empty()
            && conn.queue.lock().map(|q| q.is_empty()).unwrap_or(true);
        if finished {
            break;
        }
        if shared.done.load(Ordering::Acquire) {
            let stale = shared
                .last_ack
                .lock()
                .map(|t| t.elapsed())
                .unwrap_or_default();
            if stale > opts.ack_timeout {
                let left = inflight.len() + conn.queue.lock().map(|q| q.len()).unwrap_or(0);
                shared.lost.fetch_add(left as u64, Ordering::Relaxed);
                break;
            }
        }
        // Not wrapped in a timeout: cancelling `poll` mid-write could lose a packet. The
        // publisher nudges idle connections at the end with a harmless UNSUBSCRIBE instead.
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ever_connected {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    if !ack.session_present {
                        // rumqttc dropped what it would have re-sent: the in-flight messages
                        // and those drained from its request channel at the disconnect.
                        let mut lost = inflight.len() as u64;
                        inflight.clear();
                        if let Ok(mut q) = conn.queue.lock() {
                            let n = queued_at_drop.min(q.len());
                            q.drain(..n);
                            lost += n as u64;
                        }
                        shared.lost.fetch_add(lost, Ordering::Relaxed);
                    }
                }
                ever_connected = true;
                conn.connected.store(true, Ordering::Release);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if opts.qos == QoS::AtMostOnce {
                    if let Some(p) = conn.queue.lock().ok().and_then(|mut q| q.pop_front()) {
                        shared.record(p);
                    }
                } else if let Some(p) = inflight.get_mut(&pkid) {
                    // rumqttc re-sent an unacknowledged publish after a reconnect.
                    mark_resent(&mut p.line);
                } else if let Some(p) = conn.queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    inflight.insert(pkid, p);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(p) = inflight.remove(&ack.pkid) {
                    shared.record(p);
                    acked_here += 1;
                    if opts.disconnect_every > 0 && acked_here.is_multiple_of(opts.disconnect_every)
                    {
                        conn.connected.store(false, Ordering::Release);
                        eventloop.clean();
                        queued_at_drop = conn.queue.lock().map(|q| q.len()).unwrap_or(0);
                        tokio::time::sleep(opts.disconnect_for).await;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => {
                conn.connected.store(false, Ordering::Release);
                queued_at_drop = conn.queue.lock().map(|q| q.len()).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let _ = conn.client.try_disconnect();
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    conn.alive.store(false, Ordering::Release);
    let _ = index;
}

/// Publishes `messages` according to `opts`, writing acknowledged entries to `manifest`.
pub async fn publish(
    messages: impl Iterator<Item = Message> + Send + 'static,
    opts: PublishOptions,
    manifest: Box<dyn Write + Send>,
) -> Result<RunSummary, RunError> {
    let shared = Arc::new(Shared {
        manifest: Mutex::new(manifest),
        flush_each: opts.realtime_from_ms.is_some(),
        acked: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        done: AtomicBool::new(false),
        last_ack: Mutex::new(Instant::now()),
    });
    let clients = opts.clients.max(1);
    let mut conns = Vec::with_capacity(clients);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut mqtt = MqttOptions::new(
            format!("{}-{i}", opts.client_id_prefix),
            opts.host.clone(),
            opts.port,
        );
        mqtt.set_clean_session(false);
        mqtt.set_keep_alive(Duration::from_secs(30));
        mqtt.set_inflight(opts.inflight.max(1));
        mqtt.set_max_packet_size(1 << 20, 1 << 20);
        let (client, eventloop) = AsyncClient::new(mqtt, 256);
        let conn = Arc::new(Connection {
            client,
            queue: Mutex::new(VecDeque::new()),
            connected: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            published: AtomicU64::new(0),
        });
        tasks.push(tokio::spawn(drive(
            i,
            conn.clone(),
            eventloop,
            shared.clone(),
            opts.clone(),
        )));
        conns.push(conn);
    }
    let connect_wait = Duration::from_secs(10);
    let waited = Instant::now();
    while !conns.iter().all(|c| c.connected.load(Ordering::Acquire)) {
        if waited.elapsed() > connect_wait {
            shared.done.store(true, Ordering::Release);
            return Err(RunError::Connect(
                format!("{}:{}", opts.host, opts.port),
                connect_wait,
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let feeder_conns = conns.clone();
    let feeder_opts = opts.clone();
    // Ctrl-C / SIGINT ends the run gracefully: stop drawing messages, wait for acks, flush.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_signal = stop.clone();
    let signal_task = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop_on_signal.store(true, Ordering::Release);
        }
    });
    let feeder =
        tokio::task::spawn_blocking(move || feed(messages, &feeder_conns, &feeder_opts, &stop));
    let fed = feeder.await.unwrap_or(Err(RunError::ConnectionGone(0)));
    if let Ok(mut t) = shared.last_ack.lock() {
        *t = Instant::now();
    }
    shared.done.store(true, Ordering::Release);
    while conns.iter().any(|c| c.alive.load(Ordering::Acquire)) {
        for c in conns.iter().filter(|c| c.alive.load(Ordering::Acquire)) {
            let _ = c.client.try_unsubscribe(NUDGE_TOPIC);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    signal_task.abort();
    let (bursts, faults) = fed?;
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(mut out) = shared.manifest.lock() {
        out.flush()?;
    }
    let acked = shared.acked.load(Ordering::Relaxed);
    Ok(RunSummary {
        published: conns
            .iter()
            .map(|c| c.published.load(Ordering::Relaxed))
            .sum(),
        acked,
        seconds: (seconds * 1000.0).round() / 1000.0,
        rate: if seconds > 0.0 {
            (acked as f64 / seconds).round()
        } else {
            0.0
        },
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        lost: shared.lost.load(Ordering::Relaxed),
        bursts,
        faults,
    })
}

type FeedCounts = (u64, BTreeMap<String, u64>);

fn feed(
    messages: impl Iterator<Item = Message>,
    conns: &[Arc<Connection>],
    opts: &PublishOptions,
    stop: &AtomicBool,
) -> Result<FeedCounts, RunError> {
    let started = Instant::now();
    let mut paced = 0u64;
    let mut sent = 0u64;
    let mut bursts = 0u64;
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let limit = opts.messages.unwrap_or(u64::MAX);
    for msg in messages {
        let out_of_time = |elapsed: Duration| opts.duration.is_some_and(|d| elapsed >= d);
        if sent >= limit || out_of_time(started.elapsed()) || stop.load(Ordering::Acquire) {
            break;
        }
        if let Some(origin) = opts.realtime_from_ms {
            let due = Duration::from_millis(msg.due_ms.saturating_sub(origin).max(0) as u64);
            // Sleep in short steps so Ctrl-C and --duration end a quiet real-time run promptly.
            while !msg.burst && !stop.load(Ordering::Acquire) && !out_of_time(started.elapsed()) {
                match due.checked_sub(started.elapsed()) {
                    Some(wait) if !wait.is_zero() => {
                        std::thread::sleep(wait.min(Duration::from_millis(100)))
                    }
                    _ => break,
                }
            }
            if stop.load(Ordering::Acquire) || out_of_time(started.elapsed()) {
                break;
            }
            if msg.burst {
                bursts += 1;
            }
        } else if msg.burst {
            bursts += 1;
        } else if opts.rate > 0.0 {
            let due = Duration::from_secs_f64(paced as f64 / opts.rate);
            let now = started.elapsed();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
            paced += 1;
        }
        if let Some(f) = msg.entry.fault {
            *faults.entry(f.name().to_string()).or_default() += 1;
        }
        let index = msg.device % conns.len();
        let conn = &conns[index];
        let mut line = msg.entry.to_line();
        for also in &msg.also {
            line.push_str(&also.to_line());
        }
        let mut publish = Some((msg.topic, msg.payload));
        while let Some((topic, payload)) = publish.take() {
            if !conn.alive.load(Ordering::Acquire) {
                return Err(RunError::ConnectionGone(index));
            }
            if !conn.connected.load(Ordering::Acquire) {
                publish = Some((topic, payload));
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let Ok(mut queue) = conn.queue.lock() else {
                return Err(RunError::ConnectionGone(index));
            };
            match conn.client.try_publish(topic, opts.qos, false, payload) {
                Ok(()) => {
                    queue.push_back(Pending {
                        line: std::mem::take(&mut line),
                    });
                    conn.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(ClientError::TryRequest(Request::Publish(p)))
                | Err(ClientError::Request(Request::Publish(p))) => {
                    drop(queue);
                    publish = Some((p.topic, p.payload.to_vec()));
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(_) => return Err(RunError::ConnectionGone(index)),
            }
        }
        sent += 1;
    }
    Ok((bursts, faults))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:18830").unwrap(),
            ("127.0.0.1".to_string(), 18830)
        );
        assert_eq!(
            parse_broker_url("mqtt://localhost").unwrap(),
            ("localhost".to_string(), 1883)
        );
        assert!(parse_broker_url("http://x:1").is_err());
        assert!(parse_broker_url("mqtt://:1").is_err());
        assert!(parse_broker_url("mqtt://h:99999").is_err());
    }
}
