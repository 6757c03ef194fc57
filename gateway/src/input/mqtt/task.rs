//! The event loop of one MQTT input: moves bytes between the broker and the
//! [`Session`](super::session::Session), and messages between the session and the committer.
//!
//! Why it exists apart from the session: it is the only part that waits, and it waits on
//! everything at once (`select!`): socket readable, socket writable, commit results, the clock,
//! shutdown. Nothing in it waits on the committer or the disk, so keep-alive and acks are always
//! serviced; backpressure is not reading the socket while the session says so.
//!
//! - **Reads** take whatever the socket has (up to [`READ_CHUNK`] per call), and every complete
//!   packet in it is decoded at once: many packets per syscall. Each PUBLISH is stamped with its
//!   receipt time here: the time the read that completed it returned.
//! - **Writes**: every packet the session emits in one step is encoded into one buffer and
//!   written with as few syscalls as the socket allows: the PUBACKs of a whole commit group leave
//!   in one write. Writing is a `select!` branch too, so a broker that stops reading cannot wedge
//!   the loop.
//! - **Reconnects** use the shared [`Backoff`]; commit results that arrive meanwhile are still
//!   taken (and dropped as stale by the session).
//! - **Shutdown**: stop reading, close the hand-off, keep servicing results until the committer
//!   has finished what it holds (or a deadline passes), send their PUBACKs, DISCONNECT.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::committer::Inbound;
use super::connection::{self, Endpoint};
use super::session::{Action, CloseReason, Completion, Session};
use crate::backoff::Backoff;
use crate::shutdown::Shutdown;

/// Bytes asked of the socket per read.
pub const READ_CHUNK: usize = 64 * 1024;
/// How long shutdown waits for the committer's last results.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Everything the loop needs besides the session.
pub struct Wiring {
    pub name: String,
    pub endpoint: Endpoint,
    /// Largest packet read at all.
    pub max_packet: usize,
    pub completions: mpsc::Receiver<Completion>,
    /// When the current broker session began (None while disconnected).
    pub connected_tx: watch::Sender<Option<Instant>>,
    pub status: crate::status::StatusRegistry,
    pub shutdown: Shutdown,
    /// Where the filters the broker's session holds are recorded.
    pub held: super::held::HeldFile,
    /// The topic filters the config asks for now (a reload changes them in place).
    pub filters: watch::Receiver<Vec<(String, rumqttc::mqttbytes::QoS)>>,
}

/// How one connection ended.
enum Ended {
    /// Lost or closed; reconnect after a backoff.
    Lost(String),
    /// Refused by the broker (login, ...): reconnect after a backoff, say it as an error.
    Refused(String),
    /// Shutdown done (or given up after the deadline).
    Shutdown,
}

struct Metrics {
    /// `messages_received_total{input}`, looked up once rather than per message.
    received: metrics::Counter,
    connected: metrics::Gauge,
    connection_errors: metrics::Counter,
    duplicates: metrics::Counter,
    stale: metrics::Counter,
    stalled: metrics::Gauge,
}

/// Runs until shutdown.
pub async fn run(mut session: Session, mut w: Wiring, handoff: mpsc::Sender<Inbound>) {
    let m = Metrics {
        received: metrics::counter!("messages_received_total", "input" => w.name.clone()),
        connected: metrics::gauge!("mqtt_connected", "input" => w.name.clone()),
        connection_errors: metrics::counter!("mqtt_connection_errors_total", "input" => w.name.clone()),
        duplicates: metrics::counter!("mqtt_duplicates_total", "input" => w.name.clone()),
        stale: metrics::counter!("mqtt_stale_acks_dropped_total", "input" => w.name.clone()),
        stalled: metrics::gauge!("ingest_stalled", "input" => w.name.clone()),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    // The only sender: dropping it on shutdown closes the hand-off, so the committer finishes
    // what it holds and stops.
    let mut handoff = Some(handoff);
    let mut shutting_down = w.shutdown.is_triggered();
    while !shutting_down {
        let ended = match connection::open(&w.endpoint).await {
            Ok(stream) => serve(&mut session, &mut w, &m, &mut handoff, stream, &mut backoff).await,
            Err(e) => Ended::Lost(e.to_string()),
        };
        session.connection_lost();
        m.connected.set(0.0);
        let _ = w.connected_tx.send(None);
        let wait = backoff.next_wait();
        let retry_in_ms = wait.as_millis() as u64;
        let why = match ended {
            Ended::Shutdown => break,
            Ended::Lost(why) => {
                tracing::warn!(retry_in_ms, "{why}");
                why
            }
            Ended::Refused(why) => {
                tracing::error!(retry_in_ms, "{why}");
                why
            }
        };
        w.status.set(&w.name, false, Some(why.clone()));
        m.connection_errors.increment(1);
        // Wait, still taking results (they are stale now) so the committer never blocks on us.
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                c = w.completions.recv() => match c {
                    Some(c) => {
                        for a in session.completed(c, Instant::now()) {
                            note(&a, &m, &w);
                        }
                    }
                    None => { shutting_down = true; break; }
                },
                _ = w.shutdown.wait() => { shutting_down = true; break; }
            }
        }
        shutting_down |= w.shutdown.is_triggered();
    }
    // Not connected (or done): let the committer finish what it holds, briefly.
    handoff.take();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
    while session.outstanding() > 0 {
        tokio::select! {
            c = w.completions.recv() => match c {
                Some(c) => { session.completed(c, Instant::now()); }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    m.connected.set(0.0);
    tracing::info!("stopped");
}

/// Logs and counts what an action reports (everything but I/O).
fn note(a: &Action, m: &Metrics, w: &Wiring) {
    match a {
        Action::Duplicate { pkid } => {
            m.duplicates.increment(1);
            tracing::debug!(
                pkid,
                "broker re-sent a message still in flight; not delivered twice"
            );
        }
        Action::Stale { pkids } => {
            m.stale.increment(*pkids as u64);
            tracing::info!(
                messages = pkids,
                "results for messages of an earlier connection: not acked (the broker redelivers them if it kept the session)"
            );
        }
        Action::Stalled {
            outstanding,
            silent_for,
        } => {
            m.stalled.set(1.0);
            let why = format!(
                "{outstanding} messages received but nothing committed for {} s (is the disk blocked? see buffer errors above)",
                silent_for.as_secs()
            );
            tracing::error!("ingest stalled: {why}");
            w.status.set_stalled(&w.name, Some(why));
        }
        Action::Unstalled => {
            m.stalled.set(0.0);
            tracing::warn!("ingest moving again after a stall");
            w.status.set_stalled(&w.name, None);
        }
        Action::SubscriptionRefused { filter } => {
            tracing::error!(topic = %filter, "broker refused the subscription: check the broker's ACL for this client");
        }
        Action::SubscriptionsHeld(filters) => {
            // A few hundred bytes, written when the subscriptions change (a connect after a
            // config change), so writing it in the loop costs nothing that matters.
            match w.held.store(filters) {
                Ok(()) => tracing::info!(
                    topics = ?filters.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
                    "broker confirmed the subscriptions"
                ),
                Err(e) => tracing::warn!(
                    path = %w.held.path().display(),
                    "cannot record the broker's subscriptions ({e}); the next start subscribes every topic again"
                ),
            }
        }
        Action::Connected { session_present } => {
            tracing::info!(session_present, "connected to broker");
        }
        Action::Send(_) | Action::Deliver(_) | Action::Close(_) => {}
    }
}

/// Serves one open connection until it ends.
async fn serve(
    session: &mut Session,
    w: &mut Wiring,
    m: &Metrics,
    handoff: &mut Option<mpsc::Sender<Inbound>>,
    stream: Box<dyn connection::Stream>,
    backoff: &mut Backoff,
) -> Ended {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(4096);
    let mut need_flush = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown_deadline: Option<tokio::time::Instant> = None;
    // Filters changed while disconnected are asked for by the coming CONNACK.
    let filters = w.filters.borrow_and_update().clone();
    session.set_filters(filters, Instant::now());
    let mut filters_open = true;
    let mut pending = session.connect(Instant::now());
    // When the latest read returned: the receipt time of every packet it completed (one clock
    // read per read syscall, not per message; a packet decoded later because reads were paused
    // was still received then).
    let mut read_ns = crate::clock::now_ns();
    loop {
        // Carry out what the session asked for; decode what is buffered while it wants more.
        loop {
            for a in pending.drain(..) {
                match a {
                    Action::Send(p) => {
                        if let Err(e) = p.write(&mut wbuf, usize::MAX) {
                            return Ended::Lost(format!("cannot encode an MQTT packet: {e}"));
                        }
                    }
                    Action::Deliver(d) => {
                        m.received.increment(1);
                        let inbound = Inbound {
                            generation: d.generation,
                            pkid: d.publish.pkid,
                            qos: d.publish.qos,
                            topic: d.publish.topic,
                            payload: d.publish.payload,
                            received_ns: read_ns,
                        };
                        let sent = match handoff {
                            Some(h) => h.try_send(inbound).is_ok(),
                            None => false,
                        };
                        if !sent {
                            // The session bounds the queue below its capacity, so this is a
                            // bug or a shutdown race; the message stays unacked, and a fresh
                            // connection makes the broker redeliver it.
                            return Ended::Lost(
                                "internal: hand-off queue refused a message; reconnecting so the broker redelivers it"
                                    .into(),
                            );
                        }
                    }
                    Action::Connected { .. } => {
                        backoff.reset();
                        m.connected.set(1.0);
                        w.status.set(&w.name, true, None);
                        let _ = w.connected_tx.send(Some(Instant::now()));
                        note(&a, m, w);
                    }
                    Action::Close(CloseReason::Shutdown) => {
                        finish_writes(&mut wr, &mut wbuf).await;
                        return Ended::Shutdown;
                    }
                    Action::Close(reason @ CloseReason::Refused(_)) => {
                        return Ended::Refused(reason.to_string())
                    }
                    Action::Close(reason) => return Ended::Lost(reason.to_string()),
                    other => note(&other, m, w),
                }
            }
            if !session.wants_read() {
                break;
            }
            match Packet::read(&mut rbuf, w.max_packet) {
                Ok(p) => pending = session.incoming(p, Instant::now()),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => {
                    return Ended::Lost(format!(
                        "unreadable packet from the broker ({e}); packets over {} bytes cannot be received: set the broker's message_size_limit below that",
                        w.max_packet
                    ))
                }
            }
        }
        if shutdown_deadline.is_some() && session.drained() && wbuf.is_empty() {
            pending = session.disconnect(Instant::now());
            continue;
        }
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        let reading = session.wants_read();
        tokio::select! {
            biased;
            c = w.completions.recv() => match c {
                Some(c) => pending = session.completed(c, Instant::now()),
                // The committer is gone (buffer closed): nothing more can be acked.
                None => {
                    if shutdown_deadline.is_none() {
                        tracing::error!("the committer stopped; no more messages can be made durable");
                    }
                    pending = session.disconnect(Instant::now());
                }
            },
            r = write_some(&mut wr, &wbuf), if !wbuf.is_empty() || need_flush => match r {
                Ok(Some(0)) => return Ended::Lost("broker connection closed while writing".into()),
                Ok(Some(n)) => {
                    let _ = wbuf.split_to(n);
                    need_flush = true;
                }
                Ok(None) => need_flush = false,
                Err(e) => return Ended::Lost(format!("broker connection lost while writing: {e}")),
            },
            r = rd.read_buf(&mut rbuf), if reading => match r {
                Ok(0) => return Ended::Lost("broker closed the connection".into()),
                Ok(_) => read_ns = crate::clock::now_ns(),
                Err(e) => return Ended::Lost(format!("broker connection lost: {e}")),
            },
            _ = tick.tick() => pending = session.tick(Instant::now()),
            changed = w.filters.changed(), if filters_open => {
                if changed.is_err() {
                    // Nobody can change them any more (no reload in this process).
                    filters_open = false;
                    continue;
                }
                let filters = w.filters.borrow_and_update().clone();
                tracing::info!(topics = ?filters.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), "topics changed by a reload; telling the broker without reconnecting");
                pending = session.set_filters(filters, Instant::now());
            }
            _ = w.shutdown.wait(), if shutdown_deadline.is_none() => {
                session.begin_shutdown();
                // Closing the hand-off lets the committer finish what it holds and stop.
                handoff.take();
                shutdown_deadline = Some(tokio::time::Instant::now() + SHUTDOWN_DEADLINE);
            }
            _ = sleep_until_opt(shutdown_deadline) => {
                tracing::warn!(
                    outstanding = session.outstanding(),
                    "shutdown: gave up waiting for the committer after {} s; unacked messages will be redelivered",
                    SHUTDOWN_DEADLINE.as_secs()
                );
                pending = session.disconnect(Instant::now());
            }
        }
    }
}

/// One write of what is pending (`Some(bytes written)`), or a flush once all is written (`None`).
/// Cancel-safe: a write either happened (and is reported) or did not.
async fn write_some<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    wbuf: &[u8],
) -> std::io::Result<Option<usize>> {
    if wbuf.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(wbuf).await.map(Some)
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Best effort on the way out: the last PUBACKs and DISCONNECT, within a second.
async fn finish_writes<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W, wbuf: &mut BytesMut) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        wr.write_all(wbuf).await?;
        wr.flush().await?;
        wr.shutdown().await
    })
    .await;
    wbuf.clear();
}
