//! A scripted MQTT 3.1.1 server, for the session faults a real broker cannot show on demand.
//!
//! Why it exists: mosquitto decides by itself when it redelivers, how fast it floods, and when a
//! connection dies; it never drops a socket right after writing 5,000 messages, never answers
//! `session_present = false` to a client whose acks are still on their way, and never sends the same
//! packet id twice before the first PUBACK. Those are the moments where a client can ack the wrong
//! message (a stale PUBACK of an old connection naming a different message on the new one), stall
//! its keep-alive under a flood, or store a redelivery twice. [`FakeBroker`] is a real TCP peer on
//! `127.0.0.1:<free port>` that speaks MQTT 3.1.1 with `rumqttc`'s own v4 codec and does exactly
//! what a [`Script`] says, so the real `ioc-gateway` binary can be driven into those moments.
//!
//! What it shows: every packet the gateway sends is recorded ([`Record`]) with the connection it came
//! on (numbered from 1 in accept order) and the instant it was read, beside every packet the peer
//! wrote; tests read the log back ([`BrokerLog`]) and assert on exact PUBACK counts per packet id
//! and connection, on SUBSCRIBEs, and on the gaps between the gateway's packets.
//!
//! Per connection there are three threads: a reader (decodes, records, and answers PINGREQ with
//! PINGRESP and SUBSCRIBE with SUBACK on its own, whatever the script does), a writer (the only one
//! touching the socket for writes, fed by a queue, so the reader never blocks on a full socket), and
//! the script. The script's publishes wait while more than [`MAX_QUEUED_BYTES`] are queued: they go
//! out as fast as the socket takes them, never waiting for PUBACKs, with memory bounded. The log
//! itself grows with the test (one entry per packet): this is a test tool, sized for 100k packets.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, SubAck, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest packet the fake broker reads (remaining length); larger ones close the connection.
pub const MAX_PACKET_BYTES: usize = 1 << 20;
/// Bytes the script may have queued for the writer before its publishes wait for the socket.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;
/// Bytes encoded into one write at most.
const CHUNK_BYTES: usize = 64 * 1024;
/// How often waits look at the log again.
const POLL: Duration = Duration::from_millis(5);

/// What can go wrong while a script runs.
#[derive(Debug, thiserror::Error)]
pub enum FakeBrokerError {
    /// Something the script waited for did not happen in time.
    #[error("connection {conn}: timeout after {timeout:?} waiting for {what}")]
    Timeout {
        conn: usize,
        timeout: Duration,
        what: String,
    },
    /// The connection is gone (closed by the gateway, by the script, or a socket error).
    #[error("connection {conn} is closed: {reason}")]
    Closed { conn: usize, reason: String },
    /// A packet could not be encoded or decoded.
    #[error("MQTT codec: {0}")]
    Codec(String),
    /// Socket setup failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------------------------------
// Codec: rumqttc's v4 packets over a byte stream that arrives in arbitrary pieces.
// ---------------------------------------------------------------------------------------------------

/// Splits a byte stream into MQTT 3.1.1 packets: bytes go in as they were read (a packet may be cut
/// anywhere, several may arrive at once), whole packets come out, the rest is kept for the next read.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Appends `bytes` and returns every packet that is now complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Packet>, CodecError> {
        self.buf.extend_from_slice(bytes);
        let mut packets = Vec::new();
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET_BYTES) {
                Ok(packet) => packets.push(packet),
                Err(CodecError::InsufficientBytes(_)) => return Ok(packets),
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes held back because they do not make a whole packet yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Encodes `packets` back to back.
pub fn encode(packets: &[Packet]) -> Result<Vec<u8>, FakeBrokerError> {
    let mut buf = BytesMut::new();
    for p in packets {
        p.write(&mut buf, MAX_PACKET_BYTES)
            .map_err(|e| FakeBrokerError::Codec(e.to_string()))?;
    }
    Ok(buf.to_vec())
}

/// A QoS 1 PUBLISH with packet id `pkid` (DUP unset; set `.dup = true` for a redelivery).
pub fn qos1(pkid: u16, topic: &str, payload: impl Into<Vec<u8>>) -> Publish {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
    p.pkid = pkid;
    p
}

// ---------------------------------------------------------------------------------------------------
// The log.
// ---------------------------------------------------------------------------------------------------

/// One packet seen on a connection.
#[derive(Clone, Debug)]
pub struct Record {
    /// Connection number, 1 for the first accepted connection.
    pub conn: usize,
    /// When it was read (from the gateway) or handed to the socket (to the gateway).
    pub at: Instant,
    /// `true` for packets the gateway sent, `false` for packets the fake broker wrote.
    pub from_gateway: bool,
    pub packet: Packet,
}

#[derive(Default)]
struct ConnState {
    connect: Option<Connect>,
    session_present: Option<bool>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
    stream: Option<TcpStream>,
}

#[derive(Default)]
struct State {
    records: Vec<Record>,
    conns: Vec<ConnState>,
    errors: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conn<R>(&self, conn: usize, f: impl FnOnce(&mut ConnState) -> R) -> Option<R> {
        let mut state = self.lock();
        state.conns.get_mut(conn.checked_sub(1)?).map(f)
    }

    fn mark_closed(&self, conn: usize, reason: &str) {
        self.conn(conn, |c| {
            if c.closed.is_none() {
                c.closed = Some(reason.to_owned());
            }
        });
    }
}

/// Read access to what happened on every connection. Cheap to clone.
#[derive(Clone)]
pub struct BrokerLog {
    shared: Arc<Shared>,
}

impl BrokerLog {
    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// A copy of the whole log, in the order packets were recorded.
    pub fn records(&self) -> Vec<Record> {
        self.shared.lock().records.clone()
    }

    /// The packets of connection `conn` from the gateway (`from_gateway = true`) or to it.
    pub fn packets(&self, conn: usize, from_gateway: bool) -> Vec<(Instant, Packet)> {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|r| r.conn == conn && r.from_gateway == from_gateway)
            .map(|r| (r.at, r.packet.clone()))
            .collect()
    }

    /// PUBACKs the gateway sent on connection `conn`: packet id → how many.
    pub fn pubacks(&self, conn: usize) -> BTreeMap<u16, u32> {
        self.count(conn, true, |p| match p {
            Packet::PubAck(a) => Some(a.pkid),
            _ => None,
        })
    }

    /// QoS 1 PUBLISHes the fake broker wrote on connection `conn`: packet id → how many times
    /// (a redelivery with DUP counts again).
    pub fn published(&self, conn: usize) -> BTreeMap<u16, u32> {
        self.count(conn, false, |p| match p {
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce => Some(p.pkid),
            _ => None,
        })
    }

    /// The QoS 1 PUBLISHes written on `conn`, in order.
    pub fn publishes(&self, conn: usize) -> Vec<Publish> {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|r| r.conn == conn && !r.from_gateway)
            .filter_map(|r| match &r.packet {
                Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many packets of the gateway on `conn` match `kind` (e.g. `|p| matches!(p, Packet::PingReq)`).
    pub fn count_from_gateway(&self, conn: usize, kind: impl Fn(&Packet) -> bool) -> usize {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|r| r.conn == conn && r.from_gateway && kind(&r.packet))
            .count()
    }

    /// Total PUBACKs on `conn` (cheaper than [`BrokerLog::pubacks`]).
    pub fn puback_total(&self, conn: usize) -> usize {
        self.count_from_gateway(conn, |p| matches!(p, Packet::PubAck(_)))
    }

    /// The CONNECT of connection `conn`, once read.
    pub fn connect(&self, conn: usize) -> Option<Connect> {
        self.shared.conn(conn, |c| c.connect.clone()).flatten()
    }

    /// The `session_present` flag connection `conn` was answered with, once answered.
    pub fn session_present(&self, conn: usize) -> Option<bool> {
        self.shared.conn(conn, |c| c.session_present).flatten()
    }

    /// Why connection `conn` ended (`None` while it is open).
    pub fn closed(&self, conn: usize) -> Option<String> {
        self.shared.conn(conn, |c| c.closed.clone()).flatten()
    }

    /// Script failures and protocol errors so far (empty when every script ran to its end).
    pub fn errors(&self) -> Vec<String> {
        self.shared.lock().errors.clone()
    }

    /// Packet ids written on `conn` that have no PUBACK on `conn` (yet).
    pub fn unacked(&self, conn: usize) -> Vec<u16> {
        let acked = self.pubacks(conn);
        self.published(conn)
            .into_keys()
            .filter(|id| !acked.contains_key(id))
            .collect()
    }

    fn count(
        &self,
        conn: usize,
        from_gateway: bool,
        key: impl Fn(&Packet) -> Option<u16>,
    ) -> BTreeMap<u16, u32> {
        let mut counts = BTreeMap::new();
        for r in self.shared.lock().records.iter() {
            if r.conn == conn && r.from_gateway == from_gateway {
                if let Some(id) = key(&r.packet) {
                    *counts.entry(id).or_insert(0) += 1;
                }
            }
        }
        counts
    }
}

// ---------------------------------------------------------------------------------------------------
// Scripts.
// ---------------------------------------------------------------------------------------------------

type RunFn = Box<dyn FnOnce(&Connection) -> Result<(), FakeBrokerError> + Send>;

enum Step {
    Connack(bool),
    WaitSubscribe,
    Publish(Vec<Publish>),
    Flush,
    WaitPubacks,
    Quiet(Duration),
    Close,
    Run(RunFn),
}

/// What the fake broker does on one connection, step by step. A failing step (a timeout, the
/// connection gone) ends the script and is reported in [`BrokerLog::errors`]; after the last step
/// the connection stays open, still answering PINGREQ and SUBSCRIBE.
pub struct Script {
    steps: Vec<Step>,
    timeout: Duration,
}

impl Default for Script {
    fn default() -> Self {
        Script::new()
    }
}

impl Script {
    /// An empty script; waits time out after 30 s unless [`Script::timeout`] says otherwise.
    pub fn new() -> Self {
        Script {
            steps: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// How long each waiting step may wait.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Wait for CONNECT, answer CONNACK (accepted) with this `session_present`.
    pub fn connack(mut self, session_present: bool) -> Self {
        self.steps.push(Step::Connack(session_present));
        self
    }

    /// Wait until the gateway has sent a SUBSCRIBE on this connection (answered automatically).
    pub fn wait_subscribe(mut self) -> Self {
        self.steps.push(Step::WaitSubscribe);
        self
    }

    /// Write these PUBLISHes as fast as the socket takes them, without waiting for PUBACKs.
    pub fn publish(mut self, packets: Vec<Publish>) -> Self {
        self.steps.push(Step::Publish(packets));
        self
    }

    /// Wait until everything queued has been handed to the socket.
    pub fn flush(mut self) -> Self {
        self.steps.push(Step::Flush);
        self
    }

    /// Wait until every packet id written on this connection has at least one PUBACK on it.
    pub fn wait_pubacks(mut self) -> Self {
        self.steps.push(Step::WaitPubacks);
        self
    }

    /// Send nothing for `d` (the reader keeps recording and answering pings).
    pub fn quiet(mut self, d: Duration) -> Self {
        self.steps.push(Step::Quiet(d));
        self
    }

    /// Hand what is queued to the socket, then close it at once in both directions (no
    /// DISCONNECT, PUBACKs on their way are never read).
    pub fn close(mut self) -> Self {
        self.steps.push(Step::Close);
        self
    }

    /// Anything else, with the connection at hand (e.g. redeliver what another connection left
    /// unacked, which is only known when this step runs).
    pub fn run(
        mut self,
        f: impl FnOnce(&Connection) -> Result<(), FakeBrokerError> + Send + 'static,
    ) -> Self {
        self.steps.push(Step::Run(Box::new(f)));
        self
    }
}

// ---------------------------------------------------------------------------------------------------
// A connection, as the script sees it.
// ---------------------------------------------------------------------------------------------------

struct Chunk {
    bytes: Vec<u8>,
    packets: Vec<Packet>,
}

/// The fake broker's side of one accepted connection: what script steps (and [`Script::run`]
/// closures) act on.
pub struct Connection {
    number: usize,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Chunk>,
    queued: Arc<AtomicUsize>,
    write_failed: Arc<AtomicBool>,
    stream: TcpStream,
    timeout: Duration,
}

impl Connection {
    /// This connection's number (1 for the first accepted).
    pub fn number(&self) -> usize {
        self.number
    }

    /// The log of all connections.
    pub fn log(&self) -> BrokerLog {
        BrokerLog {
            shared: self.shared.clone(),
        }
    }

    fn closed_reason(&self) -> Option<String> {
        if self.write_failed.load(Ordering::SeqCst) {
            return Some(
                self.log()
                    .closed(self.number)
                    .unwrap_or_else(|| "write failed".into()),
            );
        }
        self.log().closed(self.number)
    }

    fn closed_error(&self) -> Option<FakeBrokerError> {
        self.closed_reason().map(|reason| FakeBrokerError::Closed {
            conn: self.number,
            reason,
        })
    }

    /// Polls `done` until it holds, the connection closes, or the script's timeout passes.
    pub fn wait_for(
        &self,
        what: &str,
        mut done: impl FnMut(&BrokerLog) -> bool,
    ) -> Result<(), FakeBrokerError> {
        let deadline = Instant::now() + self.timeout;
        let log = self.log();
        loop {
            if done(&log) {
                return Ok(());
            }
            if let Some(e) = self.closed_error() {
                return Err(e);
            }
            if Instant::now() >= deadline || self.shared.stop.load(Ordering::SeqCst) {
                return Err(FakeBrokerError::Timeout {
                    conn: self.number,
                    timeout: self.timeout,
                    what: what.to_owned(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Queues packets for the writer (never waits: for answers and small packets).
    fn send_now(&self, packets: Vec<Packet>) -> Result<(), FakeBrokerError> {
        let bytes = encode(&packets)?;
        self.queued.fetch_add(bytes.len(), Ordering::SeqCst);
        let len = bytes.len();
        if self.tx.send(Chunk { bytes, packets }).is_err() {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            return Err(FakeBrokerError::Closed {
                conn: self.number,
                reason: "writer gone".into(),
            });
        }
        Ok(())
    }

    /// Waits for the CONNECT, then answers CONNACK (accepted) with `session_present`.
    pub fn connack(&self, session_present: bool) -> Result<(), FakeBrokerError> {
        let number = self.number;
        self.wait_for("CONNECT", |log| log.connect(number).is_some())?;
        self.send_now(vec![Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            session_present,
        ))])?;
        // Set only once CONNACK is queued: the reader holds its answers back until then.
        self.shared
            .conn(number, |c| c.session_present = Some(session_present));
        Ok(())
    }

    /// Writes `packets` as fast as the socket takes them (waiting only while more than
    /// [`MAX_QUEUED_BYTES`] are queued), never for PUBACKs. Returns how many were queued.
    pub fn publish(
        &self,
        packets: impl IntoIterator<Item = Publish>,
    ) -> Result<usize, FakeBrokerError> {
        let mut count = 0;
        let mut chunk: Vec<Packet> = Vec::new();
        let mut chunk_bytes = 0;
        for p in packets {
            chunk_bytes += p.size();
            chunk.push(Packet::Publish(p));
            count += 1;
            if chunk_bytes >= CHUNK_BYTES {
                self.send_paced(std::mem::take(&mut chunk))?;
                chunk_bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.send_paced(chunk)?;
        }
        Ok(count)
    }

    fn send_paced(&self, packets: Vec<Packet>) -> Result<(), FakeBrokerError> {
        while self.queued.load(Ordering::SeqCst) > MAX_QUEUED_BYTES {
            if let Some(e) = self.closed_error() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        if let Some(e) = self.closed_error() {
            return Err(e);
        }
        self.send_now(packets)
    }

    /// Waits until every queued byte has been handed to the socket.
    pub fn flush(&self) -> Result<(), FakeBrokerError> {
        let queued = self.queued.clone();
        self.wait_for("the queue to drain into the socket", move |_| {
            queued.load(Ordering::SeqCst) == 0
        })
    }

    /// Waits until the gateway has sent a SUBSCRIBE on this connection.
    pub fn wait_subscribe(&self) -> Result<(), FakeBrokerError> {
        let number = self.number;
        self.wait_for("SUBSCRIBE", |log| {
            log.count_from_gateway(number, |p| matches!(p, Packet::Subscribe(_))) > 0
        })
    }

    /// Waits until every packet id written on this connection has a PUBACK on it.
    pub fn wait_pubacks(&self) -> Result<(), FakeBrokerError> {
        let number = self.number;
        self.wait_for("a PUBACK for every packet id written", |log| {
            log.unacked(number).is_empty()
        })
    }

    /// Hands what is queued to the socket (up to the script's timeout), then shuts the socket down
    /// in both directions at once.
    pub fn close(&self) -> Result<(), FakeBrokerError> {
        let flushed = self.flush();
        self.shared.mark_closed(self.number, "closed by the script");
        let _ = self.stream.shutdown(Shutdown::Both);
        flushed
    }

    fn run_step(&self, step: Step) -> Result<(), FakeBrokerError> {
        match step {
            Step::Connack(sp) => self.connack(sp),
            Step::WaitSubscribe => self.wait_subscribe(),
            Step::Publish(packets) => self.publish(packets).map(|_| ()),
            Step::Flush => self.flush(),
            Step::WaitPubacks => self.wait_pubacks(),
            Step::Quiet(d) => {
                std::thread::sleep(d);
                Ok(())
            }
            Step::Close => self.close(),
            Step::Run(f) => f(self),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------------------------

/// The scripted MQTT server. Connection `n` (from 1) runs the `n`-th script; connections beyond
/// the scripts are answered CONNACK with the `later_session_present` flag and left idle (pings and
/// subscriptions answered). Everything is closed on `Drop`.
pub struct FakeBroker {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeBroker {
    /// Listens on `127.0.0.1:<free port>` and serves connections with `scripts`.
    pub fn start(
        scripts: Vec<Script>,
        later_session_present: bool,
    ) -> Result<Self, FakeBrokerError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| FakeBrokerError::Io {
            context: "bind 127.0.0.1:0".into(),
            source,
        })?;
        let addr = listener
            .local_addr()
            .map_err(|source| FakeBrokerError::Io {
                context: "local_addr".into(),
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| FakeBrokerError::Io {
                context: "set_nonblocking".into(),
                source,
            })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fake-broker-accept".into())
            .spawn(move || accept_loop(listener, accept_shared, scripts, later_session_present))
            .map_err(|source| FakeBrokerError::Io {
                context: "spawn accept thread".into(),
                source,
            })?;
        Ok(FakeBroker {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `mqtt://127.0.0.1:PORT`, for the gateway's config.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What happened so far.
    pub fn log(&self) -> BrokerLog {
        BrokerLog {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let mut state = self.shared.lock();
            for c in state.conns.iter_mut() {
                if let Some(s) = c.stream.take() {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    scripts: Vec<Script>,
    later_session_present: bool,
) {
    let mut scripts = scripts.into_iter();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let script = scripts
                    .next()
                    .unwrap_or_else(|| Script::new().connack(later_session_present));
                if let Err(e) = serve(stream, &shared, script) {
                    shared.lock().errors.push(format!("accept: {e}"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                shared.lock().errors.push(format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Starts the reader, writer and script threads of a fresh connection.
fn serve(stream: TcpStream, shared: &Arc<Shared>, script: Script) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let number = {
        let mut state = shared.lock();
        state.conns.push(ConnState {
            stream: Some(stream.try_clone()?),
            ..ConnState::default()
        });
        state.conns.len()
    };
    let (tx, rx) = mpsc::channel::<Chunk>();
    let queued = Arc::new(AtomicUsize::new(0));
    let write_failed = Arc::new(AtomicBool::new(false));

    let writer_stream = stream.try_clone()?;
    let (w_shared, w_queued, w_failed) = (shared.clone(), queued.clone(), write_failed.clone());
    std::thread::Builder::new()
        .name(format!("fake-broker-w{number}"))
        .spawn(move || writer(number, writer_stream, rx, w_shared, w_queued, w_failed))?;

    let connection = Connection {
        number,
        shared: shared.clone(),
        tx,
        queued,
        write_failed,
        stream: stream.try_clone()?,
        timeout: script.timeout,
    };
    let reader_conn = Connection {
        number,
        shared: shared.clone(),
        tx: connection.tx.clone(),
        queued: connection.queued.clone(),
        write_failed: connection.write_failed.clone(),
        stream: stream.try_clone()?,
        timeout: script.timeout,
    };
    std::thread::Builder::new()
        .name(format!("fake-broker-r{number}"))
        .spawn(move || reader(stream, reader_conn))?;
    std::thread::Builder::new()
        .name(format!("fake-broker-s{number}"))
        .spawn(move || {
            for step in script.steps {
                if let Err(e) = connection.run_step(step) {
                    connection
                        .shared
                        .lock()
                        .errors
                        .push(format!("script of connection {number}: {e}"));
                    return;
                }
            }
            // Idle: keep `connection` (its queue sender) alive until the socket is gone.
            while connection.closed_reason().is_none()
                && !connection.shared.stop.load(Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
    Ok(())
}

fn writer(
    number: usize,
    mut stream: TcpStream,
    rx: mpsc::Receiver<Chunk>,
    shared: Arc<Shared>,
    queued: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
) {
    while let Ok(chunk) = rx.recv() {
        let len = chunk.bytes.len();
        if !failed.load(Ordering::SeqCst) {
            {
                let at = Instant::now();
                let mut state = shared.lock();
                for packet in chunk.packets {
                    state.records.push(Record {
                        conn: number,
                        at,
                        from_gateway: false,
                        packet,
                    });
                }
            }
            if let Err(e) = stream.write_all(&chunk.bytes) {
                shared.mark_closed(number, &format!("write: {e}"));
                failed.store(true, Ordering::SeqCst);
            }
        }
        queued.fetch_sub(len, Ordering::SeqCst);
    }
}

fn reader(mut stream: TcpStream, conn: Connection) {
    let number = conn.number;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                conn.shared
                    .mark_closed(number, "closed by the gateway (EOF)");
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                conn.shared.mark_closed(number, &format!("read: {e}"));
                break;
            }
        };
        let packets = match decoder.feed(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                let why = format!("connection {number}: undecodable packet from the gateway: {e}");
                conn.shared.lock().errors.push(why.clone());
                conn.shared.mark_closed(number, &why);
                let _ = stream.shutdown(Shutdown::Both);
                break;
            }
        };
        let at = Instant::now();
        let mut answers = Vec::new();
        let mut disconnect = false;
        {
            let mut state = conn.shared.lock();
            for packet in packets {
                match &packet {
                    Packet::Connect(c) => {
                        if let Some(cs) = state.conns.get_mut(number - 1) {
                            cs.connect = Some(c.clone());
                        }
                    }
                    Packet::PingReq => answers.push(Packet::PingResp),
                    Packet::Subscribe(s) => answers.push(Packet::SubAck(SubAck::new(
                        s.pkid,
                        s.filters
                            .iter()
                            .map(|f| SubscribeReasonCode::Success(f.qos))
                            .collect(),
                    ))),
                    Packet::Disconnect => disconnect = true,
                    _ => {}
                }
                state.records.push(Record {
                    conn: number,
                    at,
                    from_gateway: true,
                    packet,
                });
            }
        }
        if !answers.is_empty() {
            // A client that sends SUBSCRIBE or PINGREQ before its CONNACK is answered in order:
            // nothing goes out before the script's CONNACK.
            let deadline = Instant::now() + conn.timeout;
            while conn.log().session_present(number).is_none()
                && conn.log().closed(number).is_none()
                && Instant::now() < deadline
            {
                std::thread::sleep(POLL);
            }
        }
        if !answers.is_empty() && conn.send_now(answers).is_err() {
            break;
        }
        if disconnect {
            conn.shared
                .mark_closed(number, "DISCONNECT from the gateway");
            let _ = stream.shutdown(Shutdown::Both);
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Packet> {
        vec![
            Packet::Publish(qos1(1, "city/d1/env/s1", br#"{"temp":21.5}"#.to_vec())),
            Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(7)),
            Packet::PingReq,
            // 300-byte payload: a two-byte remaining length, so a cut can fall inside it.
            Packet::Publish(qos1(65535, "t", vec![b'x'; 300])),
        ]
    }

    #[test]
    fn several_packets_in_one_read_come_out_in_order() {
        let packets = sample();
        let bytes = encode(&packets).unwrap();
        let mut d = Decoder::new();
        assert_eq!(d.feed(&bytes).unwrap(), packets);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_stream_fed_one_byte_at_a_time_gives_the_same_packets() {
        let packets = sample();
        let bytes = encode(&packets).unwrap();
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for b in &bytes {
            out.extend(d.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(out, packets);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn every_cut_point_keeps_the_tail_for_the_next_read() {
        let packets = sample();
        let bytes = encode(&packets).unwrap();
        for cut in 0..=bytes.len() {
            let mut d = Decoder::new();
            let mut out = d.feed(&bytes[..cut]).unwrap();
            out.extend(d.feed(&bytes[cut..]).unwrap());
            assert_eq!(out, packets, "cut at {cut}");
        }
    }

    #[test]
    fn dup_flag_and_packet_id_survive_the_round_trip() {
        let mut p = qos1(42, "a/b", b"x".to_vec());
        p.dup = true;
        let bytes = encode(&[Packet::Publish(p)]).unwrap();
        assert_eq!(bytes[0], 0x3A, "PUBLISH, DUP, QoS 1");
        match Decoder::new().feed(&bytes).unwrap().as_slice() {
            [Packet::Publish(q)] => {
                assert!(q.dup);
                assert_eq!(q.pkid, 42);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_malformed_packet_is_an_error_not_a_hang() {
        // Packet type 0 is reserved: the decoder must say so instead of waiting for more bytes.
        let mut d = Decoder::new();
        assert!(d.feed(&[0x00, 0x00]).is_err());
    }

    #[test]
    fn the_server_answers_connect_subscribe_and_ping_and_records_acks() {
        let broker = FakeBroker::start(
            vec![Script::new()
                .timeout(Duration::from_secs(5))
                .connack(true)
                .wait_subscribe()
                .publish(vec![qos1(3, "a/b", b"1".to_vec())])
                .wait_pubacks()],
            false,
        )
        .unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", broker.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut connect = Connect::new("c1");
        connect.clean_session = false;
        let mut sub = rumqttc::mqttbytes::v4::Subscribe::new("a/#", QoS::AtLeastOnce);
        sub.pkid = 9;
        s.write_all(
            &encode(&[
                Packet::Connect(connect),
                Packet::Subscribe(sub),
                Packet::PingReq,
            ])
            .unwrap(),
        )
        .unwrap();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.len() < 4 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "server closed early; got {got:?}");
            got.extend(d.feed(&buf[..n]).unwrap());
        }
        assert!(matches!(&got[0], Packet::ConnAck(a) if a.session_present));
        assert!(got
            .iter()
            .any(|p| matches!(p, Packet::SubAck(a) if a.pkid == 9)));
        assert!(got.iter().any(|p| matches!(p, Packet::PingResp)));
        assert!(got
            .iter()
            .any(|p| matches!(p, Packet::Publish(p) if p.pkid == 3)));
        s.write_all(&encode(&[Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(3))]).unwrap())
            .unwrap();
        let log = broker.log();
        assert!(crate::wait_until(Duration::from_secs(5), || log
            .unacked(1)
            .is_empty()));
        assert_eq!(log.pubacks(1), BTreeMap::from([(3, 1)]));
        assert_eq!(log.session_present(1), Some(true));
        assert_eq!(log.connect(1).unwrap().client_id, "c1");
        assert!(log.errors().is_empty(), "{:?}", log.errors());
    }
}
