//! The MQTT 3.1.1 client session as a pure state machine: packets, commit results and clock
//! ticks in; packets to send, messages to deliver and events to report out. No I/O, no tokio.
//!
//! Why it exists: every promise of the MQTT input is a rule about *which* packet may be sent
//! *when*, and those rules are easy to get wrong inside an event loop and impossible to test
//! there without a broker. Here they are plain code, unit-tested with a fake clock:
//!
//! - **Generations.** Each connection attempt starts a new generation; every delivered message
//!   carries the generation it arrived on, and a commit result for an older generation never
//!   produces a PUBACK (a broker that lost the session reuses packet ids from 1, so an old ack
//!   would acknowledge a *new* message that is not yet durable). Such results are counted as
//!   stale and dropped; the broker redelivers those messages if it kept the session.
//! - **Acks in order, only after the commit.** A QoS 1 message is acked (QoS 2: PUBREC) only once
//!   the committer reports it durable or rejected-for-good, and acks leave in the order the
//!   messages arrived (MQTT 3.1.1 §4.6), all acks of one result in one batch of packets.
//! - **Duplicates.** A PUBLISH whose packet id is still in flight on this connection (the broker
//!   re-sent it with DUP) is not delivered twice; its ack follows the first copy's.
//! - **Backpressure without blocking.** [`Session::wants_read`] turns false while the messages
//!   handed to the committer and not yet completed exceed a count or a byte bound; the I/O loop
//!   then stops reading the socket (TCP pushes back on the broker) but keeps servicing acks and
//!   keep-alive, so the broker never drops us for silence.
//! - **Keep-alive.** A PINGREQ whenever nothing was sent for `keep_alive`; a missing PINGRESP
//!   closes the connection, except while reads are paused (the answer is then unread in the
//!   socket, not missing).
//! - **Stalls are reported.** Messages outstanding but no commit result for `stall_after`:
//!   [`Action::Stalled`], then [`Action::Unstalled`] when results flow again.
//! - **Subscriptions follow the config across a persistent session.** A broker that kept the
//!   session keeps its subscriptions too, so a topic added to the config since (by a reload or a
//!   restart) would never be subscribed and a removed one would still be delivered. The session
//!   therefore knows which filters the broker holds ([`SessionConfig::held`], persisted by the
//!   task from [`Action::SubscriptionsHeld`]) and, on a resumed session, subscribes only what is
//!   missing and unsubscribes what the config no longer has; unchanged filters are not
//!   re-subscribed (that would make the broker re-send every retained message). With no
//!   session on the broker, everything is subscribed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PubAck, PubComp, PubRec, Publish,
    Subscribe, SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use rumqttc::mqttbytes::QoS;

/// What the session needs to know about the input.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub client_id: String,
    pub keep_alive: Duration,
    /// Username and password.
    pub login: Option<(String, String)>,
    /// Topic filters and the QoS asked for each.
    pub filters: Vec<(String, QoS)>,
    /// The filters the broker's session for this client held when it last confirmed them (from
    /// the input's state file); `None` when not known (first start, or a file of another broker
    /// or client id): then a resumed session is subscribed to every filter again.
    pub held: Option<Vec<(String, QoS)>>,
    /// Messages delivered and not yet completed, at most, before reads pause.
    pub max_outstanding: usize,
    /// Payload bytes delivered and not yet completed, at most, before reads pause.
    pub max_outstanding_bytes: usize,
    /// How long to wait for CONNACK.
    pub connack_timeout: Duration,
    /// Messages outstanding with no commit result for this long is a stall.
    pub stall_after: Duration,
}

/// A message handed to the committer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub generation: u64,
    pub publish: Publish,
}

/// What the committer reports back for a group of messages of one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    pub generation: u64,
    /// Packet ids of the QoS 1/2 messages now durable (or rejected for good).
    pub pkids: Vec<u16>,
    /// Messages of any QoS in the group, and their payload bytes (for the outstanding bound).
    pub messages: usize,
    pub bytes: usize,
}

/// Why the session wants the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    Refused(ConnectReturnCode),
    ConnAckTimeout,
    NoPingResp,
    /// A packet a client must never receive, or a PUBLISH before CONNACK.
    Protocol(String),
    /// Shutdown finished: DISCONNECT was queued.
    Shutdown,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Refused(ConnectReturnCode::BadUserNamePassword)
            | CloseReason::Refused(ConnectReturnCode::NotAuthorized) => {
                write!(f, "broker refused the login: check username and password")
            }
            CloseReason::Refused(code) => write!(f, "broker refused the connection: {code:?}"),
            CloseReason::ConnAckTimeout => {
                write!(
                    f,
                    "the broker accepted the TCP connection but did not answer CONNECT"
                )
            }
            CloseReason::NoPingResp => write!(
                f,
                "the broker did not answer PINGREQ within the keep-alive: connection presumed dead"
            ),
            CloseReason::Protocol(what) => write!(f, "MQTT protocol error from the broker: {what}"),
            CloseReason::Shutdown => write!(f, "disconnected for shutdown"),
        }
    }
}

/// What the I/O loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Encode and write (the loop writes all packets of one step in one write).
    Send(Packet),
    /// Hand to the committer.
    Deliver(Delivery),
    Connected {
        session_present: bool,
    },
    /// The broker refused a subscription (ACL).
    SubscriptionRefused {
        filter: String,
    },
    /// The broker confirmed a change of the session's subscriptions: these filters are what it
    /// holds now (to be persisted, so the next start knows them).
    SubscriptionsHeld(Vec<(String, QoS)>),
    /// A PUBLISH re-sent while its first copy is in flight: not delivered again.
    Duplicate {
        pkid: u16,
    },
    /// Commit results for messages of an older connection: not acked.
    Stale {
        pkids: usize,
    },
    Stalled {
        outstanding: usize,
        silent_for: Duration,
    },
    Unstalled,
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    AwaitConnAck { since: Instant },
    Up,
}

/// One in-flight QoS 1/2 message of the current connection.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    qos: QoS,
    done: bool,
}

/// The session. See the module docs for its rules.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    link: Link,
    generation: u64,
    /// Packet ids of the current connection in arrival order, and their state.
    order: VecDeque<u16>,
    inflight: HashMap<u16, InFlight>,
    /// QoS 2 messages whose PUBREC was sent, waiting for PUBREL.
    awaiting_rel: HashSet<u16>,
    /// Delivered and not completed, over all generations (memory held by the committer).
    outstanding: usize,
    outstanding_bytes: usize,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    /// Since when reads have been paused by the outstanding bound.
    paused_since: Option<Instant>,
    last_progress: Instant,
    stalled: bool,
    shutting_down: bool,
    next_pkid: u16,
    /// What the broker's session holds, as far as confirmed (`None`: unknown).
    held: Option<BTreeMap<String, QoS>>,
    /// SUBSCRIBE and UNSUBSCRIBE of this connection waiting for their ack, by packet id.
    pending_subscribe: HashMap<u16, Vec<(String, QoS)>>,
    pending_unsubscribe: HashMap<u16, Vec<String>>,
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        let held = cfg
            .held
            .as_ref()
            .map(|filters| filters.iter().cloned().collect());
        Session {
            cfg,
            link: Link::Down,
            generation: 0,
            order: VecDeque::new(),
            inflight: HashMap::new(),
            awaiting_rel: HashSet::new(),
            outstanding: 0,
            outstanding_bytes: 0,
            last_sent: now,
            ping_sent: None,
            paused_since: None,
            last_progress: now,
            stalled: false,
            shutting_down: false,
            next_pkid: 0,
            held,
            pending_subscribe: HashMap::new(),
            pending_unsubscribe: HashMap::new(),
        }
    }

    /// The generation of the current (or last) connection.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_up(&self) -> bool {
        self.link == Link::Up
    }

    /// Messages delivered to the committer and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Whether the I/O loop should read (and decode) more packets now.
    pub fn wants_read(&self) -> bool {
        match self.link {
            Link::Down => false,
            Link::AwaitConnAck { .. } => true,
            Link::Up => !self.shutting_down && !self.over_bound(),
        }
    }

    fn over_bound(&self) -> bool {
        self.outstanding >= self.cfg.max_outstanding
            || self.outstanding_bytes >= self.cfg.max_outstanding_bytes
    }

    /// A new TCP (or TLS) connection is open: starts a new generation and sends CONNECT.
    pub fn connect(&mut self, now: Instant) -> Vec<Action> {
        self.generation += 1;
        self.reset_connection();
        self.link = Link::AwaitConnAck { since: now };
        let mut connect = Connect::new(self.cfg.client_id.clone());
        connect.clean_session = false;
        connect.keep_alive = u16::try_from(self.cfg.keep_alive.as_secs()).unwrap_or(u16::MAX);
        if let Some((user, password)) = &self.cfg.login {
            connect.login = Some(Login::new(user.clone(), password.clone()));
        }
        let mut out = Vec::new();
        self.send(Packet::Connect(connect), now, &mut out);
        out
    }

    /// The connection is gone (read error, EOF, write error, or a [`Action::Close`] carried
    /// out). Nothing of this generation will be acked any more.
    pub fn connection_lost(&mut self) {
        self.link = Link::Down;
        self.reset_connection();
    }

    fn reset_connection(&mut self) {
        self.order.clear();
        self.inflight.clear();
        self.awaiting_rel.clear();
        self.ping_sent = None;
        self.paused_since = None;
        self.pending_subscribe.clear();
        self.pending_unsubscribe.clear();
    }

    /// The config's topic filters changed (a reload): on a live connection the broker is told at
    /// once (SUBSCRIBE what is new, UNSUBSCRIBE what is gone; the connection and every message
    /// in flight stay as they are); while down, the next CONNACK does it.
    pub fn set_filters(&mut self, filters: Vec<(String, QoS)>, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if filters == self.cfg.filters {
            return out;
        }
        self.cfg.filters = filters;
        if self.link == Link::Up && self.held.is_some() {
            self.reconcile_subscriptions(now, &mut out);
        }
        out
    }

    /// Stop reading new messages; the loop keeps servicing results until
    /// [`Session::drained`], then calls [`Session::disconnect`].
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Shutting down and nothing outstanding for this connection.
    pub fn drained(&self) -> bool {
        self.outstanding == 0
    }

    /// DISCONNECT (when up), then close.
    pub fn disconnect(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.link == Link::Up {
            self.send(Packet::Disconnect, now, &mut out);
        }
        out.push(Action::Close(CloseReason::Shutdown));
        out
    }

    /// A packet from the broker.
    pub fn incoming(&mut self, packet: Packet, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match packet {
            Packet::ConnAck(ack) => self.on_connack(ack, now, &mut out),
            Packet::Publish(p) => self.on_publish(p, now, &mut out),
            Packet::PubRel(rel) => {
                if self.link == Link::Up {
                    // Whether or not we still know the id, PUBCOMP ends the exchange.
                    self.awaiting_rel.remove(&rel.pkid);
                    self.send(Packet::PubComp(PubComp::new(rel.pkid)), now, &mut out);
                }
            }
            Packet::PingResp => self.ping_sent = None,
            Packet::SubAck(ack) => self.on_suback(&ack, &mut out),
            Packet::UnsubAck(ack) => self.on_unsuback(ack.pkid, &mut out),
            // Acks for packets we never publish: nothing to do.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect => out.push(Action::Close(CloseReason::Protocol(format!(
                "a broker never sends {}",
                packet_name(&packet)
            )))),
        }
        out
    }

    fn on_connack(&mut self, ack: ConnAck, now: Instant, out: &mut Vec<Action>) {
        if !matches!(self.link, Link::AwaitConnAck { .. }) {
            out.push(Action::Close(CloseReason::Protocol(
                "CONNACK outside the connect handshake".into(),
            )));
            return;
        }
        if ack.code != ConnectReturnCode::Success {
            out.push(Action::Close(CloseReason::Refused(ack.code)));
            return;
        }
        self.link = Link::Up;
        self.last_progress = now;
        out.push(Action::Connected {
            session_present: ack.session_present,
        });
        if !ack.session_present {
            // The broker has no session for us (first start, or it lost it): nothing subscribed.
            self.held = Some(BTreeMap::new());
        }
        self.reconcile_subscriptions(now, out);
    }

    /// Subscribes the configured filters the broker's session lacks (all of them when what it
    /// holds is unknown) and unsubscribes those the config no longer has.
    fn reconcile_subscriptions(&mut self, now: Instant, out: &mut Vec<Action>) {
        // What the broker will hold once the requests in flight are answered.
        let expected = self.held.as_ref().map(|held| {
            let mut expected = held.clone();
            for asked in self.pending_subscribe.values() {
                expected.extend(asked.iter().cloned());
            }
            for gone in self.pending_unsubscribe.values().flatten() {
                expected.remove(gone);
            }
            expected
        });
        let (subscribe, unsubscribe): (Vec<(String, QoS)>, Vec<String>) = match &expected {
            None => (self.cfg.filters.clone(), Vec::new()),
            Some(held) => (
                self.cfg
                    .filters
                    .iter()
                    .filter(|(path, qos)| held.get(path) != Some(qos))
                    .cloned()
                    .collect(),
                held.keys()
                    .filter(|path| !self.cfg.filters.iter().any(|(p, _)| p == *path))
                    .cloned()
                    .collect(),
            ),
        };
        if !subscribe.is_empty() {
            let mut packet = Subscribe::new_many(
                subscribe
                    .iter()
                    .map(|(path, qos)| SubscribeFilter::new(path.clone(), *qos)),
            );
            packet.pkid = self.next_pkid();
            self.pending_subscribe.insert(packet.pkid, subscribe);
            self.send(Packet::Subscribe(packet), now, out);
        }
        if !unsubscribe.is_empty() {
            let pkid = self.next_pkid();
            self.pending_unsubscribe.insert(pkid, unsubscribe.clone());
            self.send(
                Packet::Unsubscribe(Unsubscribe {
                    pkid,
                    topics: unsubscribe,
                }),
                now,
                out,
            );
        }
    }

    fn on_suback(&mut self, ack: &rumqttc::mqttbytes::v4::SubAck, out: &mut Vec<Action>) {
        let Some(asked) = self.pending_subscribe.remove(&ack.pkid) else {
            return;
        };
        let held = self.held.get_or_insert_with(BTreeMap::new);
        for (code, (filter, qos)) in ack.return_codes.iter().zip(asked) {
            if matches!(code, SubscribeReasonCode::Failure) {
                held.remove(&filter);
                out.push(Action::SubscriptionRefused { filter });
            } else {
                held.insert(filter, qos);
            }
        }
        out.push(self.held_action());
    }

    fn on_unsuback(&mut self, pkid: u16, out: &mut Vec<Action>) {
        let Some(gone) = self.pending_unsubscribe.remove(&pkid) else {
            return;
        };
        if let Some(held) = self.held.as_mut() {
            for filter in gone {
                held.remove(&filter);
            }
        }
        out.push(self.held_action());
    }

    fn held_action(&self) -> Action {
        Action::SubscriptionsHeld(
            self.held
                .iter()
                .flatten()
                .map(|(path, qos)| (path.clone(), *qos))
                .collect(),
        )
    }

    fn on_publish(&mut self, p: Publish, now: Instant, out: &mut Vec<Action>) {
        if self.link != Link::Up {
            out.push(Action::Close(CloseReason::Protocol(
                "PUBLISH before CONNACK".into(),
            )));
            return;
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                if p.qos == QoS::ExactlyOnce && self.awaiting_rel.contains(&p.pkid) {
                    // Our PUBREC was lost: say it again, never deliver twice.
                    self.send(Packet::PubRec(PubRec::new(p.pkid)), now, out);
                    out.push(Action::Duplicate { pkid: p.pkid });
                    return;
                }
                if self.inflight.contains_key(&p.pkid) {
                    out.push(Action::Duplicate { pkid: p.pkid });
                    return;
                }
                self.inflight.insert(
                    p.pkid,
                    InFlight {
                        qos: p.qos,
                        done: false,
                    },
                );
                self.order.push_back(p.pkid);
            }
        }
        if self.outstanding == 0 {
            self.last_progress = now;
        }
        self.outstanding += 1;
        self.outstanding_bytes += p.payload.len();
        if self.over_bound() && self.paused_since.is_none() {
            self.paused_since = Some(now);
        }
        out.push(Action::Deliver(Delivery {
            generation: self.generation,
            publish: p,
        }));
    }

    /// The committer's result for a group.
    pub fn completed(&mut self, c: Completion, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.outstanding = self.outstanding.saturating_sub(c.messages);
        self.outstanding_bytes = self.outstanding_bytes.saturating_sub(c.bytes);
        self.last_progress = now;
        if self.stalled {
            self.stalled = false;
            out.push(Action::Unstalled);
        }
        // Reads resume: a PINGRESP that waited unread in the socket gets its chance.
        if !self.over_bound() && self.paused_since.take().is_some() && self.ping_sent.is_some() {
            self.ping_sent = Some(now);
        }
        if c.generation != self.generation || self.link == Link::Down {
            if !c.pkids.is_empty() {
                out.push(Action::Stale {
                    pkids: c.pkids.len(),
                });
            }
            return out;
        }
        let mut unknown = 0;
        for pkid in &c.pkids {
            match self.inflight.get_mut(pkid) {
                Some(f) => f.done = true,
                None => unknown += 1,
            }
        }
        if unknown > 0 {
            out.push(Action::Stale { pkids: unknown });
        }
        while let Some(pkid) = self.order.front().copied() {
            let Some(f) = self.inflight.get(&pkid).copied() else {
                self.order.pop_front();
                continue;
            };
            if !f.done {
                break;
            }
            self.order.pop_front();
            self.inflight.remove(&pkid);
            if f.qos == QoS::ExactlyOnce {
                self.awaiting_rel.insert(pkid);
                self.send(Packet::PubRec(PubRec::new(pkid)), now, &mut out);
            } else {
                self.send(Packet::PubAck(PubAck::new(pkid)), now, &mut out);
            }
        }
        out
    }

    /// The clock: keep-alive, CONNACK timeout, stall detection.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Link::AwaitConnAck { since } = self.link {
            if now.duration_since(since) >= self.cfg.connack_timeout {
                out.push(Action::Close(CloseReason::ConnAckTimeout));
                return out;
            }
        }
        if self.link == Link::Up && now.duration_since(self.last_sent) >= self.cfg.keep_alive {
            match self.ping_sent {
                Some(sent)
                    if self.paused_since.is_none()
                        && now.duration_since(sent) >= self.cfg.keep_alive =>
                {
                    out.push(Action::Close(CloseReason::NoPingResp));
                    return out;
                }
                _ => {
                    if self.ping_sent.is_none() {
                        self.ping_sent = Some(now);
                    }
                    self.send(Packet::PingReq, now, &mut out);
                }
            }
        }
        let silent = now.duration_since(self.last_progress);
        if self.outstanding > 0 && !self.stalled && silent >= self.cfg.stall_after {
            self.stalled = true;
            out.push(Action::Stalled {
                outstanding: self.outstanding,
                silent_for: silent,
            });
        }
        out
    }

    fn send(&mut self, packet: Packet, now: Instant, out: &mut Vec<Action>) {
        self.last_sent = now;
        out.push(Action::Send(packet));
    }

    fn next_pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{PubRel, SubAck};

    fn cfg() -> SessionConfig {
        SessionConfig {
            client_id: "gw".into(),
            keep_alive: Duration::from_secs(10),
            login: None,
            filters: vec![("city/#".into(), QoS::AtLeastOnce)],
            max_outstanding: 100,
            max_outstanding_bytes: 1 << 20,
            connack_timeout: Duration::from_secs(5),
            stall_after: Duration::from_secs(15),
            held: None,
        }
    }

    fn publish(pkid: u16, payload: &str) -> Packet {
        let mut p = Publish::new("city/a", QoS::AtLeastOnce, payload.as_bytes().to_vec());
        p.pkid = pkid;
        Packet::Publish(p)
    }

    fn up(s: &mut Session, t: Instant, session_present: bool) -> Vec<Action> {
        s.connect(t);
        s.incoming(
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present)),
            t,
        )
    }

    fn sent(actions: &[Action]) -> Vec<Packet> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn delivered(actions: &[Action]) -> Vec<Delivery> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Deliver(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    fn pubacks(actions: &[Action]) -> Vec<u16> {
        sent(actions)
            .into_iter()
            .filter_map(|p| match p {
                Packet::PubAck(a) => Some(a.pkid),
                _ => None,
            })
            .collect()
    }

    fn done(generation: u64, pkids: &[u16], bytes: usize) -> Completion {
        Completion {
            generation,
            pkids: pkids.to_vec(),
            messages: pkids.len(),
            bytes,
        }
    }

    #[test]
    fn connect_sends_a_persistent_connect_and_subscribes_only_without_a_session() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        let a = s.connect(t);
        match sent(&a).as_slice() {
            [Packet::Connect(c)] => {
                assert!(!c.clean_session);
                assert_eq!(c.client_id, "gw");
                assert_eq!(c.keep_alive, 10);
            }
            other => panic!("{other:?}"),
        }
        let a = s.incoming(
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
            t,
        );
        assert!(a.contains(&Action::Connected {
            session_present: false
        }));
        assert!(
            matches!(sent(&a).as_slice(), [Packet::Subscribe(sub)] if sub.filters[0].path == "city/#")
        );
        let a = s.incoming(
            Packet::SubAck(SubAck::new(
                1,
                vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            )),
            t,
        );
        assert_eq!(
            a,
            vec![Action::SubscriptionsHeld(vec![(
                "city/#".into(),
                QoS::AtLeastOnce
            )])]
        );
        s.connection_lost();
        let a = up(&mut s, t, true);
        assert!(sent(&a).is_empty(), "a resumed session needs no SUBSCRIBE");
    }

    #[test]
    fn a_subscribe_lost_with_its_connection_is_sent_again() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, false);
        // No SUBACK before the connection died: the broker may or may not hold it.
        s.connection_lost();
        let a = up(&mut s, t, true);
        assert!(matches!(sent(&a).as_slice(), [Packet::Subscribe(_)]));
    }

    fn with_filters(filters: &[&str], held: Option<&[&str]>) -> SessionConfig {
        let f = |list: &[&str]| {
            list.iter()
                .map(|p| (p.to_string(), QoS::AtLeastOnce))
                .collect::<Vec<_>>()
        };
        SessionConfig {
            filters: f(filters),
            held: held.map(f),
            ..cfg()
        }
    }

    #[test]
    fn a_resumed_session_gets_only_the_filters_it_lacks_and_loses_the_removed_ones() {
        let t = Instant::now();
        let mut s = Session::new(
            with_filters(&["city/a/#", "city/b/#"], Some(&["city/a/#", "city/old/#"])),
            t,
        );
        let a = up(&mut s, t, true);
        let packets = sent(&a);
        assert_eq!(packets.len(), 2, "{packets:?}");
        let Packet::Subscribe(sub) = &packets[0] else {
            panic!("{packets:?}")
        };
        assert_eq!(
            sub.filters
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>(),
            ["city/b/#"],
            "city/a/# is held already: re-subscribing it would re-send retained messages"
        );
        let Packet::Unsubscribe(unsub) = &packets[1] else {
            panic!("{packets:?}")
        };
        assert_eq!(unsub.topics, ["city/old/#"]);
        let a = s.incoming(
            Packet::SubAck(SubAck::new(
                sub.pkid,
                vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            )),
            t,
        );
        let held = |names: &[&str]| {
            Action::SubscriptionsHeld(
                names
                    .iter()
                    .map(|p| (p.to_string(), QoS::AtLeastOnce))
                    .collect(),
            )
        };
        assert_eq!(a, vec![held(&["city/a/#", "city/b/#", "city/old/#"])]);
        let a = s.incoming(
            Packet::UnsubAck(rumqttc::mqttbytes::v4::UnsubAck::new(unsub.pkid)),
            t,
        );
        assert_eq!(a, vec![held(&["city/a/#", "city/b/#"])]);
        // Nothing left to change on the next resume.
        s.connection_lost();
        assert!(sent(&up(&mut s, t, true)).is_empty());
    }

    #[test]
    fn unknown_held_filters_or_a_lost_session_subscribe_everything() {
        let t = Instant::now();
        let mut s = Session::new(with_filters(&["a/#", "b/#"], None), t);
        let a = up(&mut s, t, true);
        assert!(matches!(sent(&a).as_slice(), [Packet::Subscribe(sub)] if sub.filters.len() == 2));
        // The broker lost the session although we thought it held everything.
        let mut s = Session::new(with_filters(&["a/#", "b/#"], Some(&["a/#", "b/#"])), t);
        let a = up(&mut s, t, false);
        assert!(
            matches!(sent(&a).as_slice(), [Packet::Subscribe(sub)] if sub.filters.len() == 2),
            "no UNSUBSCRIBE either: the broker holds nothing"
        );
    }

    #[test]
    fn filters_changed_on_a_live_connection_are_subscribed_without_reconnecting() {
        let t = Instant::now();
        let mut s = Session::new(with_filters(&["a/#"], Some(&["a/#"])), t);
        up(&mut s, t, true);
        let g = s.generation();
        s.incoming(publish(7, "x"), t);
        let a = s.set_filters(
            vec![
                ("a/#".into(), QoS::AtLeastOnce),
                ("b/#".into(), QoS::AtLeastOnce),
            ],
            t,
        );
        assert!(
            matches!(sent(&a).as_slice(), [Packet::Subscribe(sub)] if sub.filters.len() == 1 && sub.filters[0].path == "b/#"),
            "{a:?}"
        );
        assert_eq!(s.generation(), g, "same connection");
        // The message in flight is still acked on it.
        assert_eq!(pubacks(&s.completed(done(g, &[7], 1), t)), [7]);
        // Setting the same filters again sends nothing; removing one unsubscribes it.
        assert!(s
            .set_filters(
                vec![
                    ("a/#".into(), QoS::AtLeastOnce),
                    ("b/#".into(), QoS::AtLeastOnce)
                ],
                t
            )
            .is_empty());
        let a = s.set_filters(vec![("b/#".into(), QoS::AtLeastOnce)], t);
        assert!(matches!(sent(&a).as_slice(), [Packet::Unsubscribe(u)] if u.topics == ["a/#"]));
        // While down, nothing is sent; the next CONNACK reconciles.
        s.connection_lost();
        assert!(s
            .set_filters(vec![("c/#".into(), QoS::AtLeastOnce)], t)
            .is_empty());
        let a = up(&mut s, t, true);
        assert!(
            matches!(sent(&a).as_slice(), [Packet::Subscribe(sub), Packet::Unsubscribe(_)] if sub.filters[0].path == "c/#"),
            "{a:?}"
        );
    }

    #[test]
    fn a_changed_qos_is_subscribed_again() {
        let t = Instant::now();
        let mut c = with_filters(&["a/#"], Some(&["a/#"]));
        c.filters[0].1 = QoS::AtMostOnce;
        let mut s = Session::new(c, t);
        let a = up(&mut s, t, true);
        assert!(
            matches!(sent(&a).as_slice(), [Packet::Subscribe(sub)] if sub.filters[0].qos == QoS::AtMostOnce)
        );
    }

    #[test]
    fn acks_only_after_completion_in_arrival_order() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        let g = s.generation();
        for id in [5, 3, 9] {
            let a = s.incoming(publish(id, "x"), t);
            assert_eq!(delivered(&a).len(), 1);
            assert!(sent(&a).is_empty(), "no ack before the commit");
        }
        // The committer finishes 3 and 9 first (never happens with one committer, but the
        // order rule must hold anyway): nothing may be acked before 5.
        let a = s.completed(done(g, &[3, 9], 2), t);
        assert!(pubacks(&a).is_empty());
        let a = s.completed(done(g, &[5], 1), t);
        assert_eq!(pubacks(&a), vec![5, 3, 9]);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn flood_pauses_reads_at_the_bound_and_acks_keep_flowing() {
        let t = Instant::now();
        let mut c = cfg();
        c.max_outstanding = 1000;
        let mut s = Session::new(c, t);
        up(&mut s, t, true);
        let g = s.generation();
        let mut ids = Vec::new();
        let mut id: u16 = 0;
        while s.wants_read() {
            id += 1;
            s.incoming(publish(id, "p"), t);
            ids.push(id);
        }
        assert_eq!(ids.len(), 1000, "reads pause exactly at the bound");
        // While paused, keep-alive still goes out.
        let later = t + Duration::from_secs(11);
        assert!(matches!(sent(&s.tick(later)).as_slice(), [Packet::PingReq]));
        // Still paused and no PINGRESP read: not a dead connection.
        let much_later = later + Duration::from_secs(11);
        let a = s.tick(much_later);
        assert!(!a.iter().any(|a| matches!(a, Action::Close(_))), "{a:?}");
        assert_eq!(sent(&a), vec![Packet::PingReq]);
        let a = s.completed(done(g, &ids[..500], 500), much_later);
        assert_eq!(pubacks(&a), ids[..500].to_vec());
        assert!(s.wants_read());
    }

    #[test]
    fn byte_bound_pauses_reads() {
        let t = Instant::now();
        let mut c = cfg();
        c.max_outstanding_bytes = 10;
        let mut s = Session::new(c, t);
        up(&mut s, t, true);
        s.incoming(publish(1, "123456"), t);
        assert!(s.wants_read());
        s.incoming(publish(2, "123456"), t);
        assert!(!s.wants_read());
        s.completed(done(s.generation(), &[1], 6), t);
        assert!(s.wants_read());
    }

    #[test]
    fn results_of_an_old_connection_are_never_acked_on_a_new_one() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        let old = s.generation();
        for id in 1..=3 {
            s.incoming(publish(id, "old"), t);
        }
        s.connection_lost();
        // The broker lost our session: packet ids start at 1 again, naming new messages.
        up(&mut s, t, false);
        let d = delivered(&s.incoming(publish(1, "new"), t));
        assert_eq!(d[0].generation, old + 1);
        let a = s.completed(done(old, &[1, 2, 3], 9), t);
        assert!(pubacks(&a).is_empty(), "stale PUBACK: {a:?}");
        assert!(a.contains(&Action::Stale { pkids: 3 }));
        // The new message is acked once its own result arrives.
        let a = s.completed(done(old + 1, &[1], 3), t);
        assert_eq!(pubacks(&a), vec![1]);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn results_while_down_are_dropped() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        let g = s.generation();
        s.incoming(publish(7, "x"), t);
        s.connection_lost();
        let a = s.completed(done(g, &[7], 1), t);
        assert!(sent(&a).is_empty());
        assert!(a.contains(&Action::Stale { pkids: 1 }));
    }

    #[test]
    fn a_redelivered_message_in_flight_is_not_delivered_twice() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        assert_eq!(delivered(&s.incoming(publish(4, "x"), t)).len(), 1);
        let Packet::Publish(mut dup) = publish(4, "x") else {
            unreachable!()
        };
        dup.dup = true;
        let a = s.incoming(Packet::Publish(dup), t);
        assert!(delivered(&a).is_empty());
        assert!(a.contains(&Action::Duplicate { pkid: 4 }));
        let a = s.completed(done(s.generation(), &[4], 1), t);
        assert_eq!(pubacks(&a), vec![4]);
        // Once acked, the id is free again: a new message with it is delivered.
        assert_eq!(delivered(&s.incoming(publish(4, "y"), t)).len(), 1);
    }

    #[test]
    fn redelivery_after_reconnect_with_session_is_delivered_and_acked_on_the_new_connection() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        s.incoming(publish(2, "x"), t);
        s.connection_lost();
        up(&mut s, t, true);
        let Packet::Publish(mut again) = publish(2, "x") else {
            unreachable!()
        };
        again.dup = true;
        assert_eq!(delivered(&s.incoming(Packet::Publish(again), t)).len(), 1);
        let g = s.generation();
        let a = s.completed(done(g - 1, &[2], 1), t);
        assert!(pubacks(&a).is_empty());
        let a = s.completed(done(g, &[2], 1), t);
        assert_eq!(pubacks(&a), vec![2]);
    }

    #[test]
    fn qos2_gets_pubrec_after_commit_and_pubcomp_on_pubrel() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        let mut p = Publish::new("city/a", QoS::ExactlyOnce, b"x".to_vec());
        p.pkid = 11;
        s.incoming(Packet::Publish(p.clone()), t);
        let a = s.completed(done(s.generation(), &[11], 1), t);
        assert_eq!(sent(&a), vec![Packet::PubRec(PubRec::new(11))]);
        // PUBREC lost, broker re-sends the PUBLISH: PUBREC again, no second delivery.
        p.dup = true;
        let a = s.incoming(Packet::Publish(p), t);
        assert!(delivered(&a).is_empty());
        assert_eq!(sent(&a), vec![Packet::PubRec(PubRec::new(11))]);
        let a = s.incoming(Packet::PubRel(PubRel::new(11)), t);
        assert_eq!(sent(&a), vec![Packet::PubComp(PubComp::new(11))]);
    }

    #[test]
    fn keep_alive_pings_and_a_missing_pingresp_closes() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        assert!(s.tick(t + Duration::from_secs(9)).is_empty());
        let t1 = t + Duration::from_secs(10);
        assert_eq!(sent(&s.tick(t1)), vec![Packet::PingReq]);
        s.incoming(Packet::PingResp, t1);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(sent(&s.tick(t2)), vec![Packet::PingReq]);
        let t3 = t2 + Duration::from_secs(10);
        assert_eq!(
            s.tick(t3),
            vec![Action::Close(CloseReason::NoPingResp)],
            "no PINGRESP for a whole keep-alive"
        );
    }

    #[test]
    fn acks_count_as_traffic_for_keep_alive() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        s.incoming(publish(1, "x"), t);
        let t1 = t + Duration::from_secs(8);
        s.completed(done(s.generation(), &[1], 1), t1);
        assert!(s.tick(t + Duration::from_secs(12)).is_empty());
    }

    #[test]
    fn connack_timeout_and_refusal_close() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        s.connect(t);
        assert!(s.wants_read());
        assert_eq!(
            s.tick(t + Duration::from_secs(5)),
            vec![Action::Close(CloseReason::ConnAckTimeout)]
        );
        s.connection_lost();
        s.connect(t);
        let a = s.incoming(
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::BadUserNamePassword, false)),
            t,
        );
        assert_eq!(
            a,
            vec![Action::Close(CloseReason::Refused(
                ConnectReturnCode::BadUserNamePassword
            ))]
        );
        assert!(a[0].clone() != Action::Unstalled);
        let text = match &a[0] {
            Action::Close(r) => r.to_string(),
            _ => String::new(),
        };
        assert!(text.contains("broker refused the login"), "{text}");
    }

    #[test]
    fn publish_before_connack_is_a_protocol_error() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        s.connect(t);
        let a = s.incoming(publish(1, "x"), t);
        assert!(matches!(
            a.as_slice(),
            [Action::Close(CloseReason::Protocol(_))]
        ));
    }

    #[test]
    fn a_stall_is_reported_once_and_cleared_by_progress() {
        let t = Instant::now();
        let mut c = cfg();
        c.keep_alive = Duration::from_secs(600);
        let mut s = Session::new(c, t);
        up(&mut s, t, true);
        // Idle for a long time with nothing outstanding: no stall.
        let idle = t + Duration::from_secs(100);
        s.incoming(Packet::PingResp, idle);
        assert!(!s
            .tick(idle)
            .iter()
            .any(|a| matches!(a, Action::Stalled { .. })));
        s.incoming(publish(1, "x"), idle);
        let later = idle + Duration::from_secs(16);
        let a = s.tick(later);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Stalled { outstanding: 1, .. })),
            "{a:?}"
        );
        assert!(!s
            .tick(later + Duration::from_secs(1))
            .iter()
            .any(|a| matches!(a, Action::Stalled { .. })));
        let a = s.completed(done(s.generation(), &[1], 1), later);
        assert!(a.contains(&Action::Unstalled));
    }

    #[test]
    fn shutdown_stops_reads_and_waits_for_outstanding_results() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        s.incoming(publish(1, "x"), t);
        s.incoming(publish(2, "x"), t);
        s.begin_shutdown();
        assert!(!s.wants_read());
        assert!(!s.drained());
        let a = s.completed(done(s.generation(), &[1, 2], 2), t);
        assert_eq!(pubacks(&a), vec![1, 2]);
        assert!(s.drained());
        let a = s.disconnect(t);
        assert_eq!(
            a,
            vec![
                Action::Send(Packet::Disconnect),
                Action::Close(CloseReason::Shutdown)
            ]
        );
    }

    #[test]
    fn qos0_is_delivered_never_acked_but_counted_outstanding() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, true);
        let p = Publish::new("city/a", QoS::AtMostOnce, b"abc".to_vec());
        let a = s.incoming(Packet::Publish(p), t);
        assert_eq!(delivered(&a).len(), 1);
        assert_eq!(s.outstanding(), 1);
        let a = s.completed(
            Completion {
                generation: s.generation(),
                pkids: vec![],
                messages: 1,
                bytes: 3,
            },
            t,
        );
        assert!(sent(&a).is_empty());
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn refused_subscription_is_reported() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), t);
        up(&mut s, t, false);
        let a = s.incoming(
            Packet::SubAck(SubAck::new(1, vec![SubscribeReasonCode::Failure])),
            t,
        );
        assert_eq!(
            a,
            vec![
                Action::SubscriptionRefused {
                    filter: "city/#".into()
                },
                Action::SubscriptionsHeld(vec![])
            ]
        );
    }
}
