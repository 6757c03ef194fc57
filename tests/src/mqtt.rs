//! Test-only MQTT clients built on `rumqttc`'s synchronous client, so tests can publish and subscribe
//! without the simulator.
//!
//! [`MqttPublisher`] publishes at QoS 1 and records, per message, whether the broker answered with a
//! PUBACK. That is the ground truth of the crash tests: "every message the broker acknowledged is in the
//! store afterwards". Mapping a PUBACK to a message: `rumqttc` sends publish requests in the order they
//! were queued and reports each as `Outgoing::Publish(pkid)`; a pkid is in flight from that event until its
//! PUBACK, and is only reused after it. A retransmission (after a reconnect) reuses the pkid while it is in
//! flight, so it is recognised and not counted as a new message.

use crate::{HarnessError, Result};
use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, Outgoing, QoS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest packet the test clients send or accept (the bad-input tests publish a 1 MB payload).
const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

fn options(url: &str, client_id: &str) -> Result<MqttOptions> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
        HarnessError::Mqtt(format!("only mqtt:// URLs are supported here: {url}"))
    })?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| HarnessError::Mqtt(format!("no port in {url}")))?;
    let port: u16 = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| HarnessError::Mqtt(format!("bad port in {url}")))?;
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    Ok(options)
}

#[derive(Default)]
struct PublishLedger {
    /// Per message (index = order of `publish` calls): PUBACK received.
    acked: Vec<bool>,
    acked_count: usize,
    /// Index of the next message that has not yet been reported as sent.
    next_unsent: usize,
    /// pkid → message index, from `Outgoing::Publish` until its PUBACK.
    in_flight: HashMap<u16, usize>,
    connected: bool,
    connection_errors: Vec<String>,
}

/// A QoS 1 publisher that records which messages the broker acknowledged (PUBACK).
///
/// ```no_run
/// # use std::time::Duration;
/// let mut publisher = ioc_e2e::MqttPublisher::connect("mqtt://127.0.0.1:1883", "test-pub").unwrap();
/// publisher.publish("city/d1/env/s1", br#"{"pm2_5":1.5}"#.to_vec()).unwrap();
/// assert!(publisher.wait_all_acked(Duration::from_secs(10)));
/// ```
pub struct MqttPublisher {
    client: Client,
    ledger: Arc<Mutex<PublishLedger>>,
    stop: Arc<AtomicBool>,
    published: usize,
}

impl MqttPublisher {
    /// Connects (clean session) and waits up to 10 s for the CONNACK. While connected, a background
    /// thread drives the connection; after a broker restart it reconnects every 100 ms and resends what
    /// was not acknowledged.
    pub fn connect(url: &str, client_id: &str) -> Result<Self> {
        let mut options = options(url, client_id)?;
        options.set_inflight(100);
        let (client, connection) = Client::new(options, 1000);
        let ledger = Arc::new(Mutex::new(PublishLedger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let ledger = Arc::clone(&ledger);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("mqtt-pub-{client_id}"))
                .spawn(move || drive_publisher(connection, ledger, stop))
                .map_err(|e| HarnessError::io("spawn publisher thread", e))?;
        }
        let publisher = MqttPublisher {
            client,
            ledger,
            stop,
            published: 0,
        };
        let connected = crate::wait_until(Duration::from_secs(10), || publisher.lock().connected);
        if !connected {
            let errors = publisher.lock().connection_errors.clone();
            return Err(HarnessError::Mqtt(format!(
                "publisher {client_id} could not connect to {url}: {errors:?}"
            )));
        }
        Ok(publisher)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PublishLedger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one QoS 1 message (blocks while 1000 requests are queued) and returns its index, which
    /// [`MqttPublisher::is_acked`] takes.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<usize> {
        let index = self.published;
        self.lock().acked.push(false);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .map_err(|e| HarnessError::Mqtt(format!("publish to {topic}: {e}")))?;
        self.published += 1;
        Ok(index)
    }

    /// Number of messages queued with [`MqttPublisher::publish`].
    pub fn published(&self) -> usize {
        self.published
    }

    /// Number of messages the broker acknowledged.
    pub fn acked_count(&self) -> usize {
        self.lock().acked_count
    }

    /// Whether message `index` was acknowledged.
    pub fn is_acked(&self, index: usize) -> bool {
        self.lock().acked.get(index).copied().unwrap_or(false)
    }

    /// A copy of the per-message acknowledgement flags (index = publish order).
    pub fn acked_flags(&self) -> Vec<bool> {
        self.lock().acked.clone()
    }

    /// Connection errors seen so far (e.g. while the broker was down).
    pub fn connection_errors(&self) -> Vec<String> {
        self.lock().connection_errors.clone()
    }

    /// Waits until every published message has been acknowledged; false on timeout.
    pub fn wait_all_acked(&self, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.acked_count() == self.published)
    }

    /// Sends DISCONNECT (after waiting up to 2 s for the request queue to drain) and stops the thread.
    pub fn disconnect(self) {
        drop(self);
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

fn drive_publisher(
    mut connection: Connection,
    ledger: Arc<Mutex<PublishLedger>>,
    stop: Arc<AtomicBool>,
) {
    for notification in connection.iter() {
        let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
        match notification {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => ledger.connected = true,
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if !ledger.in_flight.contains_key(&pkid) {
                    let index = ledger.next_unsent;
                    ledger.next_unsent += 1;
                    ledger.in_flight.insert(pkid, index);
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(index) = ledger.in_flight.remove(&ack.pkid) {
                    if let Some(flag) = ledger.acked.get_mut(index) {
                        if !*flag {
                            *flag = true;
                            ledger.acked_count += 1;
                        }
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                ledger.connected = false;
                if ledger.connection_errors.len() < 1000 {
                    ledger.connection_errors.push(e.to_string());
                }
                drop(ledger);
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A message received by [`MqttSubscriber`].
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedMessage {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A plain subscriber (clean session, auto-acks) for checking what goes through a broker.
pub struct MqttSubscriber {
    client: Client,
    messages: mpsc::Receiver<ReceivedMessage>,
    stop: Arc<AtomicBool>,
}

impl MqttSubscriber {
    /// Connects, subscribes to `topic_filter` at `qos` (0, 1 or 2) and waits up to 10 s for the SUBACK.
    pub fn connect(url: &str, client_id: &str, topic_filter: &str, qos: u8) -> Result<Self> {
        let qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let (client, connection) = Client::new(options(url, client_id)?, 100);
        client
            .subscribe(topic_filter, qos)
            .map_err(|e| HarnessError::Mqtt(format!("subscribe {topic_filter}: {e}")))?;
        let (messages_tx, messages) = mpsc::channel();
        let (subacked_tx, subacked) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("mqtt-sub-{client_id}"))
                .spawn(move || drive_subscriber(connection, messages_tx, subacked_tx, stop))
                .map_err(|e| HarnessError::io("spawn subscriber thread", e))?;
        }
        match subacked.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(MqttSubscriber {
                client,
                messages,
                stop,
            }),
            Err(_) => Err(HarnessError::Mqtt(format!(
                "subscriber {client_id}: no SUBACK from {url} within 10 s"
            ))),
        }
    }

    /// The next message, or `None` after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<ReceivedMessage> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// Collects messages until `count` have arrived or `timeout` has passed.
    pub fn collect(&self, count: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(message) => out.push(message),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

fn drive_subscriber(
    mut connection: Connection,
    messages: mpsc::Sender<ReceivedMessage>,
    subacked: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) {
    for notification in connection.iter() {
        match notification {
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                let _ = subacked.send(());
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let message = ReceivedMessage {
                    topic: publish.topic.clone(),
                    payload: publish.payload.to_vec(),
                };
                if messages.send(message).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) if stop.load(Ordering::SeqCst) => return,
            Ok(_) => {}
            Err(_) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
