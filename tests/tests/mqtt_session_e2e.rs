//! MQTT session faults, run against the real `ioc-gateway` binary with a scripted broker
//! ([`FakeBroker`]) in front and a real VictoriaMetrics behind.
//!
//! Why it exists: the gateway acks a QoS 1 message only once its reading is durable, and a broker
//! takes a PUBACK as "this packet id of this session is done". Both break in moments mosquitto does
//! not produce on demand: a flood written without waiting for a single PUBACK (the client must keep
//! reading, acking and pinging, or the broker drops it for a silent keep-alive), a connection dropped
//! while acks are pending followed by a session that is *not* resumed (an ack of the old connection
//! sent on the new one names a different message there), a resumed session redelivering with DUP,
//! the same packet id sent twice before any PUBACK, and a SIGTERM in the middle of a group. What
//! each test shows, with exact counts per packet id and connection and the store read back:
//!
//! 1. a 50,000-message flood, never waiting for PUBACKs, keep-alive 5 s: exactly one PUBACK per
//!    message on that one connection, no silence from the gateway as long as the keep-alive while
//!    messages are outstanding, all 50,000 readings in VictoriaMetrics, forwarded once; then, idle,
//!    a PINGREQ of its own within the keep-alive, answered, on the same connection;
//! 2. a drop right after writing 5,000 messages, then `session_present = false`: no PUBACK at all on
//!    the new connection before it carries a new message, a new SUBSCRIBE, exactly one PUBACK for
//!    each of 1,000 new messages reusing packet ids 1.., every message acked on the old connection
//!    stored, none stored twice; and with `session_present = true`: the unacked ones redelivered
//!    with DUP and their packet ids, each acked once, every message stored exactly once;
//! 3. the same packet id twice (DUP on the second) before any PUBACK: one PUBACK for it, one reading;
//! 4. SIGTERM during a flood: exit 0 within 15 s, and every PUBACK the broker got is for a reading
//!    that is in the store after a restart.
//!
//! Every test is heavy (a gateway, VictoriaMetrics, tens of thousands of messages) and takes
//! [`HeavyTestLock`]. Message `k` has device timestamp `BASE_TS_MS + k` and field `n = k`, so the
//! series `sess_n` holds exactly the message numbers stored.

use ioc_e2e::fake_broker::{qos1, Connection, FakeBrokerError};
use ioc_e2e::{
    free_port, metric_in, wait_until, BrokerLog, FakeBroker, GatewayProcess, HeavyTestLock, Script,
    VictoriaMetrics,
};
use rumqttc::mqttbytes::v4::{Packet, Publish};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const GATEWAY_ID: &str = "sess-gw";
const MEASUREMENT: &str = "sess";
const TOPIC_FILTER: &str = "city/+/env/+";
/// 2023-11-14T22:13:20Z; message `k` is stamped `BASE_TS_MS + k` (unique, within retention).
const BASE_TS_MS: i64 = 1_700_000_000_000;
/// Sensors (series) the messages are spread over.
const SENSORS: u64 = 16;
/// The gateway's keep-alive in these tests (its minimum).
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How late after the keep-alive an idle gateway's own PINGREQ may come (see the flood test).
const PING_SLACK: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------------
// Messages.
// ---------------------------------------------------------------------------------------------------

fn topic(k: u64) -> String {
    format!("city/d1/env/s{:02}", k % SENSORS)
}

fn payload(k: u64) -> String {
    format!(
        r#"{{"temp":21.5,"n":{k},"ts":{}}}"#,
        BASE_TS_MS + i64::try_from(k).unwrap()
    )
}

/// Message `k` as a QoS 1 PUBLISH with packet id `pkid`.
fn publish(pkid: u16, k: u64) -> Publish {
    qos1(pkid, &topic(k), payload(k))
}

/// Messages `ks`, packet ids `first_pkid`, `first_pkid + 1`, ...
fn publishes(first_pkid: u16, ks: std::ops::Range<u64>) -> Vec<Publish> {
    ks.enumerate()
        .map(|(i, k)| publish(first_pkid + u16::try_from(i).unwrap(), k))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// The rig: VictoriaMetrics, the fake broker, the real gateway.
// ---------------------------------------------------------------------------------------------------

/// Fields drop in order: the gateway is killed first, then the broker and the store go.
struct Rig {
    gateway: GatewayProcess,
    broker: FakeBroker,
    vm: VictoriaMetrics,
    _dir: TempDir,
}

fn config_text(broker: &FakeBroker, vm: &VictoriaMetrics, data: &std::path::Path) -> String {
    format!(
        r#"# written by tests/tests/mqtt_session_e2e.rs
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data}"

[[inputs.mqtt]]
url = "{mqtt}"
client_id = "{GATEWAY_ID}"
topics = ["{TOPIC_FILTER}"]
qos = 1
measurement = "{MEASUREMENT}"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
timestamp_unit = "ms"
keep_alive_s = {keep_alive}

[output.influxdb]
url = "{store}"
api = "v2"
org = "ioc"
bucket = "telemetry"
batch_max_lines = 5000
flush_interval_ms = 100

[buffer]
max_disk_mb = 512

[http]
listen = "127.0.0.1:{http}"
"#,
        data = data.display(),
        mqtt = broker.url(),
        keep_alive = KEEP_ALIVE.as_secs(),
        store = vm.url(),
        http = free_port(),
    )
}

impl Rig {
    /// Starts VictoriaMetrics, the fake broker with `scripts` (connections beyond them are answered
    /// `later_session_present` and left idle), and the gateway.
    fn start(scripts: Vec<Script>, later_session_present: bool) -> Rig {
        let vm = VictoriaMetrics::start().unwrap();
        let broker = FakeBroker::start(scripts, later_session_present).unwrap();
        let dir = TempDir::new().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let config: PathBuf = dir.path().join("gateway.toml");
        std::fs::write(&config, config_text(&broker, &vm, &data)).unwrap();
        let gateway = GatewayProcess::spawn(&config).unwrap();
        Rig {
            gateway,
            broker,
            vm,
            _dir: dir,
        }
    }

    fn log(&self) -> BrokerLog {
        self.broker.log()
    }

    /// Everything worth showing when an assertion fails.
    fn state(&mut self) -> String {
        let log = self.log();
        let mut out = format!(
            "gateway running: {}; connections: {}; script errors: {:?}\n",
            self.gateway.is_running(),
            log.connection_count(),
            log.errors()
        );
        for c in 1..=log.connection_count() {
            out.push_str(&format!(
                "  connection {c}: session_present {:?}, written {} PUBLISH, {} PUBACK, {} PINGREQ, {} SUBSCRIBE, closed: {:?}\n",
                log.session_present(c),
                log.publishes(c).len(),
                log.puback_total(c),
                log.count_from_gateway(c, |p| matches!(p, Packet::PingReq)),
                log.count_from_gateway(c, |p| matches!(p, Packet::Subscribe(_))),
                log.closed(c),
            ));
        }
        out.push_str("--- gateway log ---\n");
        out.push_str(&self.gateway.log_tail(30));
        out
    }
}

// ---------------------------------------------------------------------------------------------------
// The store.
// ---------------------------------------------------------------------------------------------------

/// Message number → how many points of it `sess_n` holds (timestamps and sensor checked).
fn stored(vm: &VictoriaMetrics) -> BTreeMap<u64, usize> {
    vm.force_flush().unwrap();
    let mut counts = BTreeMap::new();
    for s in vm
        .export(&format!("{{__name__=\"{MEASUREMENT}_n\"}}"))
        .unwrap()
    {
        for (ts, v) in s.timestamps_ms.iter().zip(&s.values) {
            let k = *v as u64;
            assert_eq!(
                *ts,
                BASE_TS_MS + k as i64,
                "message {k} stored with a wrong timestamp"
            );
            assert_eq!(
                s.label("sensor_id"),
                Some(format!("s{:02}", k % SENSORS).as_str()),
                "message {k} stored under the wrong topic's series: {:?}",
                s.labels
            );
            assert_eq!(s.label("gateway"), Some(GATEWAY_ID));
            *counts.entry(k).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits (up to `timeout`) until every message of `expected` is stored; returns what is stored.
fn wait_stored(
    vm: &VictoriaMetrics,
    expected: &BTreeSet<u64>,
    timeout: Duration,
) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = stored(vm);
        if expected.iter().all(|k| counts.contains_key(k)) || Instant::now() >= deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Rows VictoriaMetrics received over line protocol (every field of every line, duplicates too).
fn vm_rows(vm: &VictoriaMetrics) -> u64 {
    let text = ureq::get(&format!("{}/metrics", vm.url()))
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    metric_in(&text, "vm_rows_inserted_total", &[("type", "influx")]) as u64
}

/// Ranges of consecutive numbers, for readable failure messages (at most 20 shown).
fn ranges<T: Copy + Into<u64>>(numbers: impl IntoIterator<Item = T>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for n in numbers.into_iter().map(Into::into) {
        current = match current {
            Some((a, b)) if n == b + 1 => Some((a, n)),
            Some((a, b)) => {
                out.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}..={b}")
                });
                Some((n, n))
            }
            None => Some((n, n)),
        };
    }
    if let Some((a, b)) = current {
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}..={b}")
        });
    }
    let n = out.len();
    if n > 20 {
        out.truncate(20);
        out.push(format!("... ({n} ranges)"));
    }
    format!("[{}]", out.join(", "))
}

// ---------------------------------------------------------------------------------------------------
// Log analysis.
// ---------------------------------------------------------------------------------------------------

/// The largest silence of the gateway on `conn` between `from` and `until` (both ends count as
/// edges), and when it began.
fn largest_gap(
    log: &BrokerLog,
    conn: usize,
    from: Instant,
    until: Instant,
) -> (Duration, Duration) {
    let mut prev = from;
    let mut largest = (Duration::ZERO, Duration::ZERO);
    let times = log
        .packets(conn, true)
        .into_iter()
        .map(|(at, _)| at)
        .filter(|at| *at > from && *at <= until)
        .chain(std::iter::once(until));
    for at in times {
        let gap = at.duration_since(prev);
        if gap > largest.0 {
            largest = (gap, prev.duration_since(from));
        }
        prev = at;
    }
    largest
}

/// When the first PUBLISH was written on `conn`.
fn first_publish_at(log: &BrokerLog, conn: usize) -> Option<Instant> {
    log.packets(conn, false)
        .into_iter()
        .find(|(_, p)| matches!(p, Packet::Publish(_)))
        .map(|(at, _)| at)
}

/// PUBACKs on `conn` as (when, packet id), in order.
fn pubacks_at(log: &BrokerLog, conn: usize) -> Vec<(Instant, u16)> {
    log.packets(conn, true)
        .into_iter()
        .filter_map(|(at, p)| match p {
            Packet::PubAck(a) => Some((at, a.pkid)),
            _ => None,
        })
        .collect()
}

/// Packet ids whose PUBACK count on `conn` is not exactly one, and PUBACKs for ids never written
/// on `conn`: (wrong counts, unknown ids).
fn ack_errors(log: &BrokerLog, conn: usize, expected: &BTreeSet<u16>) -> (Vec<String>, Vec<u16>) {
    let acks = log.pubacks(conn);
    let wrong = expected
        .iter()
        .filter_map(|id| match acks.get(id).copied().unwrap_or(0) {
            1 => None,
            n => Some(format!("{id}:{n}")),
        })
        .collect();
    let unknown = acks
        .keys()
        .copied()
        .filter(|id| !expected.contains(id))
        .collect();
    (wrong, unknown)
}

fn first<T: std::fmt::Debug>(items: &[T], n: usize) -> String {
    format!(
        "{:?}{}",
        &items[..items.len().min(n)],
        if items.len() > n { " ..." } else { "" }
    )
}

// ---------------------------------------------------------------------------------------------------
// 1. Flood without waiting.
// ---------------------------------------------------------------------------------------------------

#[test]
fn heavy_flood_of_50k_unacked_qos1_is_acked_once_each_without_a_keep_alive_gap() {
    const N: u64 = 50_000;
    let _lock = HeavyTestLock::acquire();
    let mut rig = Rig::start(
        vec![Script::new()
            .timeout(Duration::from_secs(60))
            .connack(false)
            .wait_subscribe()
            .publish(publishes(1, 0..N))
            .wait_pubacks()],
        false,
    );
    let log = rig.log();
    let started = Instant::now();
    let all_acked = wait_until(Duration::from_secs(45), || {
        log.puback_total(1) >= N as usize
    });
    let elapsed = started.elapsed();
    let last_ack_at = pubacks_at(&log, 1).last().map(|(at, _)| *at);
    let flood_from = first_publish_at(&log, 1);
    let (gap, gap_at) = match flood_from {
        Some(from) => largest_gap(
            &log,
            1,
            from,
            if all_acked {
                last_ack_at.unwrap_or_else(Instant::now)
            } else {
                Instant::now()
            },
        ),
        None => (Duration::ZERO, Duration::ZERO),
    };
    let pings = log.count_from_gateway(1, |p| matches!(p, Packet::PingReq));
    eprintln!(
        "flood: {} of {N} PUBACKed in {elapsed:?}; {pings} PINGREQ; largest silence of the gateway {gap:?} (at +{gap_at:?} into the flood)",
        log.puback_total(1)
    );
    assert!(
        all_acked,
        "only {} of {N} messages PUBACKed within 45 s of a flood written without waiting (largest silence of the gateway {gap:?}, at +{gap_at:?}):\n{}",
        log.puback_total(1),
        rig.state()
    );
    assert_eq!(
        log.connection_count(),
        1,
        "the gateway reconnected during the flood:\n{}",
        rig.state()
    );
    let expected: BTreeSet<u16> = (1..=N as u16).collect();
    let (wrong, unknown) = ack_errors(&log, 1, &expected);
    assert!(
        wrong.is_empty() && unknown.is_empty(),
        "PUBACKs per packet id not exactly one: {} (id:count); for ids never sent: {}",
        first(&wrong, 20),
        ranges(unknown)
    );
    assert!(
        gap < KEEP_ALIVE,
        "the gateway was silent for {gap:?} (from +{gap_at:?} into the flood) while messages were outstanding; keep-alive is {KEEP_ALIVE:?}, a broker would drop it"
    );
    assert!(log.errors().is_empty(), "script: {:?}", log.errors());

    let all: BTreeSet<u64> = (0..N).collect();
    let counts = wait_stored(&rig.vm, &all, Duration::from_secs(30));
    let missing: Vec<u64> = all
        .iter()
        .copied()
        .filter(|k| !counts.contains_key(k))
        .collect();
    let doubled: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(k, _)| *k)
        .collect();
    assert!(
        missing.is_empty() && doubled.is_empty() && counts.len() == N as usize,
        "store: {} distinct, missing {}, stored twice {}, beyond the flood {}",
        counts.len(),
        ranges(missing.iter().copied()),
        ranges(doubled.iter().copied()),
        ranges(counts.keys().copied().filter(|k| *k >= N))
    );
    // Two fields (temp, n) per message: each message forwarded exactly once.
    assert_eq!(
        vm_rows(&rig.vm),
        2 * N,
        "VictoriaMetrics received a different number of rows than 2 per message"
    );

    // Then idle past the keep-alive: the gateway must ping on its own, in time, and, answered, stay
    // on the same connection. The gateway's clock ticks every 250 ms and pings once nothing was
    // sent for the keep-alive, so its PINGREQ comes up to a tick late; the slack also covers a busy
    // 2-core machine and stays well inside the 1.5 x keep-alive after which a broker drops a client.
    let idle_from = last_ack_at.unwrap_or_else(Instant::now);
    let idle_until = idle_from + KEEP_ALIVE + Duration::from_secs(2);
    std::thread::sleep(idle_until.saturating_duration_since(Instant::now()));
    let (idle_gap, idle_gap_at) = largest_gap(&log, 1, idle_from, Instant::now());
    let idle_pings = log.count_from_gateway(1, |p| matches!(p, Packet::PingReq)) - pings;
    eprintln!("idle after the flood: {idle_pings} PINGREQ, largest silence {idle_gap:?} (at +{idle_gap_at:?})");
    assert!(
        idle_pings >= 1 && idle_gap <= KEEP_ALIVE + PING_SLACK,
        "idle for {:?} after the flood: {idle_pings} PINGREQ, the gateway silent for {idle_gap:?} (keep-alive {KEEP_ALIVE:?}):\n{}",
        idle_from.elapsed(),
        rig.state()
    );
    assert_eq!(log.connection_count(), 1, "{}", rig.state());
    assert!(rig.gateway.is_running(), "{}", rig.state());
}

// ---------------------------------------------------------------------------------------------------
// 2. Dropped with acks pending, then a new connection with or without the session.
// ---------------------------------------------------------------------------------------------------

/// Connection 1: 5,000 messages (0..5000, packet ids 1..=5000), closed right after the last one is
/// handed to the socket.
fn flood_then_drop(n: u64) -> Script {
    Script::new()
        .connack(false)
        .wait_subscribe()
        .publish(publishes(1, 0..n))
        .close()
}

#[test]
fn heavy_drop_with_acks_pending_then_no_session_sends_no_stale_ack_and_acks_new_ids_once() {
    const OLD: u64 = 5_000;
    const NEW: u64 = 1_000;
    const QUIET: Duration = Duration::from_millis(2_500);
    let _lock = HeavyTestLock::acquire();
    let mut rig = Rig::start(
        vec![
            flood_then_drop(OLD),
            Script::new()
                .connack(false)
                .wait_subscribe()
                .quiet(QUIET)
                .publish(publishes(1, OLD..OLD + NEW))
                .wait_pubacks(),
        ],
        false,
    );
    let log = rig.log();
    let done = wait_until(Duration::from_secs(40), || {
        log.connection_count() >= 2
            && log.publishes(2).len() == NEW as usize
            && log.puback_total(2) >= NEW as usize
    });
    assert!(
        log.connection_count() >= 2,
        "the gateway did not reconnect after the drop:\n{}",
        rig.state()
    );
    let acked_on_1: BTreeSet<u16> = log.pubacks(1).into_keys().collect();
    let pubacks_2 = pubacks_at(&log, 2);
    let first_new = first_publish_at(&log, 2);
    let stale: Vec<u16> = pubacks_2
        .iter()
        .filter(|(at, _)| first_new.is_none_or(|f| *at < f))
        .map(|(_, id)| *id)
        .collect();
    eprintln!(
        "connection 1: {OLD} written, {} PUBACKed before the drop; connection 2: {} PUBACK in the quiet period",
        acked_on_1.len(),
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "{} PUBACKs arrived on connection 2 (session_present = false) before it carried any message: stale acks of connection 1 now naming other messages, packet ids {}\n{}",
        stale.len(),
        ranges(stale.iter().copied()),
        rig.state()
    );
    assert!(
        log.count_from_gateway(2, |p| matches!(p, Packet::Subscribe(_))) >= 1,
        "no SUBSCRIBE on connection 2 although the broker had no session:\n{}",
        rig.state()
    );
    assert!(
        done,
        "connection 2: {} of {NEW} new messages PUBACKed within 40 s:\n{}",
        log.puback_total(2),
        rig.state()
    );
    let expected: BTreeSet<u16> = (1..=NEW as u16).collect();
    let (wrong, unknown) = ack_errors(&log, 2, &expected);
    assert!(
        wrong.is_empty() && unknown.is_empty(),
        "connection 2: PUBACKs per packet id not exactly one: {} (id:count); for ids never sent on it: {}",
        first(&wrong, 20),
        ranges(unknown)
    );
    // Each PUBACK after the PUBLISH it answers (on this connection).
    let written: BTreeMap<u16, Instant> = log
        .packets(2, false)
        .into_iter()
        .filter_map(|(at, p)| match p {
            Packet::Publish(p) => Some((p.pkid, at)),
            _ => None,
        })
        .collect();
    let early: Vec<u16> = pubacks_2
        .iter()
        .filter(|(at, id)| written.get(id).is_none_or(|w| at < w))
        .map(|(_, id)| *id)
        .collect();
    assert!(
        early.is_empty(),
        "PUBACKs before their PUBLISH: {}",
        ranges(early)
    );
    assert_eq!(log.connection_count(), 2, "{}", rig.state());
    assert!(log.errors().is_empty(), "script: {:?}", log.errors());

    // Acked on connection 1 ⇒ durable ⇒ in the store; the new ones all there; nothing twice.
    let must: BTreeSet<u64> = acked_on_1
        .iter()
        .map(|id| u64::from(*id) - 1)
        .chain(OLD..OLD + NEW)
        .collect();
    let counts = wait_stored(&rig.vm, &must, Duration::from_secs(30));
    let missing: Vec<u64> = must
        .iter()
        .copied()
        .filter(|k| !counts.contains_key(k))
        .collect();
    let doubled: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(k, _)| *k)
        .collect();
    let old_stored = counts.keys().filter(|k| **k < OLD).count();
    eprintln!(
        "store: {old_stored} of the {OLD} old messages, {} of the {NEW} new",
        counts.len() - old_stored
    );
    assert!(
        missing.is_empty(),
        "not stored although PUBACKed (or new): {}",
        ranges(missing)
    );
    assert!(doubled.is_empty(), "stored twice: {}", ranges(doubled));
    assert!(
        counts.keys().all(|k| *k < OLD + NEW),
        "stored messages never published"
    );
}

#[test]
fn heavy_drop_with_acks_pending_then_resumed_session_redelivers_with_dup_and_stores_all_once() {
    const N: u64 = 5_000;
    let _lock = HeavyTestLock::acquire();
    let redelivered = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::<u16>::new()));
    let noted = redelivered.clone();
    let mut rig = Rig::start(
        vec![
            flood_then_drop(N),
            Script::new()
                .connack(true)
                .run(move |c: &Connection| -> Result<(), FakeBrokerError> {
                    // What a broker holding the session does at once: resend every message
                    // connection 1 left unacked, same packet id, DUP set.
                    let log = c.log();
                    let unacked: BTreeSet<u16> = log.unacked(1).into_iter().collect();
                    let again: Vec<Publish> = log
                        .publishes(1)
                        .into_iter()
                        .filter(|p| unacked.contains(&p.pkid))
                        .map(|mut p| {
                            p.dup = true;
                            p
                        })
                        .collect();
                    *noted.lock().unwrap() = unacked;
                    c.publish(again)?;
                    c.wait_pubacks()
                }),
        ],
        true,
    );
    let log = rig.log();
    let done = wait_until(Duration::from_secs(40), || {
        log.connection_count() >= 2 && {
            let r = redelivered.lock().unwrap();
            !r.is_empty() && log.puback_total(2) >= r.len()
        }
    });
    let redelivered = redelivered.lock().unwrap().clone();
    eprintln!(
        "connection 1: {N} written, {} PUBACKed before the drop; {} redelivered with DUP on connection 2",
        log.pubacks(1).len(),
        redelivered.len()
    );
    assert!(
        !redelivered.is_empty() || log.connection_count() < 2,
        "precondition: the gateway acked all {N} before the drop, nothing to redeliver; the test shows nothing"
    );
    assert!(
        done,
        "connection 2 (session_present = true): {} PUBACKs for {} redelivered messages within 40 s:\n{}",
        log.puback_total(2),
        redelivered.len(),
        rig.state()
    );
    let dups = log.publishes(2);
    assert!(dups.iter().all(|p| p.dup), "redeliveries carry DUP");
    let (wrong, unknown) = ack_errors(&log, 2, &redelivered);
    assert!(
        wrong.is_empty() && unknown.is_empty(),
        "connection 2: PUBACKs per redelivered packet id not exactly one: {} (id:count); for ids not redelivered (already acked on connection 1): {}",
        first(&wrong, 20),
        ranges(unknown)
    );
    assert_eq!(log.connection_count(), 2, "{}", rig.state());
    assert!(log.errors().is_empty(), "script: {:?}", log.errors());

    let all: BTreeSet<u64> = (0..N).collect();
    let counts = wait_stored(&rig.vm, &all, Duration::from_secs(30));
    let missing: Vec<u64> = all
        .iter()
        .copied()
        .filter(|k| !counts.contains_key(k))
        .collect();
    let doubled: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(k, _)| *k)
        .collect();
    assert!(
        missing.is_empty() && doubled.is_empty() && counts.len() == N as usize,
        "store: {} distinct of {N}, missing {}, stored twice {}",
        counts.len(),
        ranges(missing),
        ranges(doubled)
    );
    eprintln!(
        "VictoriaMetrics rows received: {} (2 per message forwarded)",
        vm_rows(&rig.vm)
    );
}

// ---------------------------------------------------------------------------------------------------
// 3. The same packet id twice before any PUBACK.
// ---------------------------------------------------------------------------------------------------

#[test]
fn heavy_redelivery_with_dup_before_the_first_puback_is_acked_once_and_stored_once() {
    const N: u16 = 100;
    let _lock = HeavyTestLock::acquire();
    let mut rig = Rig::start(
        vec![Script::new().connack(false).wait_subscribe().run(
            |c: &Connection| -> Result<(), FakeBrokerError> {
                // Message 0 as packet id 1, at once again with DUP, then messages 1..N as ids
                // 2..=N: all in one write, so no PUBACK can come between the two copies.
                let mut dup = publish(1, 0);
                dup.dup = true;
                let mut batch = vec![publish(1, 0), dup];
                batch.extend(publishes(2, 1..u64::from(N)));
                c.publish(batch)?;
                c.wait_pubacks()
            },
        )],
        false,
    );
    let log = rig.log();
    let done = wait_until(Duration::from_secs(30), || {
        log.unacked(1).is_empty() && log.publishes(1).len() == usize::from(N) + 1
    });
    // Let a late second PUBACK for id 1 show itself.
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        done,
        "not every packet id PUBACKed within 30 s:\n{}",
        rig.state()
    );
    let written = log.publishes(1);
    assert_eq!(
        written
            .iter()
            .filter(|p| p.pkid == 1)
            .map(|p| p.dup)
            .collect::<Vec<_>>(),
        vec![false, true]
    );
    let expected: BTreeSet<u16> = (1..=N).collect();
    let (wrong, unknown) = ack_errors(&log, 1, &expected);
    assert!(
        wrong.is_empty() && unknown.is_empty(),
        "PUBACKs per packet id not exactly one (id 1 was sent twice, the second time with DUP, before any PUBACK): {} (id:count); for ids never sent: {}",
        first(&wrong, 20),
        ranges(unknown)
    );
    assert!(log.errors().is_empty(), "script: {:?}", log.errors());

    let all: BTreeSet<u64> = (0..u64::from(N)).collect();
    let counts = wait_stored(&rig.vm, &all, Duration::from_secs(20));
    assert_eq!(
        counts,
        all.iter().map(|k| (*k, 1)).collect::<BTreeMap<_, _>>(),
        "every message stored exactly once"
    );
    eprintln!(
        "VictoriaMetrics rows received: {} ({} for one copy of each message)",
        vm_rows(&rig.vm),
        2 * u64::from(N)
    );
    assert!(rig.gateway.is_running(), "{}", rig.state());
}

// ---------------------------------------------------------------------------------------------------
// 4. SIGTERM in the middle of a flood.
// ---------------------------------------------------------------------------------------------------

#[test]
fn heavy_sigterm_mid_flood_exits_0_and_every_acked_message_is_stored() {
    const N: u64 = 40_000;
    let _lock = HeavyTestLock::acquire();
    let mut rig = Rig::start(
        // After the restart the broker resumes the session and sends nothing: the test is about
        // what was acked, not about redelivery.
        vec![Script::new()
            .timeout(Duration::from_secs(60))
            .connack(false)
            .wait_subscribe()
            .publish(publishes(1, 0..N))],
        true,
    );
    let log = rig.log();
    let flowing = wait_until(Duration::from_secs(30), || log.puback_total(1) >= 1_000);
    assert!(
        flowing,
        "fewer than 1,000 PUBACKs within 30 s:\n{}",
        rig.state()
    );
    let (written_at_term, acked_at_term) = (log.publishes(1).len(), log.puback_total(1));
    let term_at = Instant::now();
    rig.gateway.sigterm();
    let status = rig.gateway.wait_exit(Duration::from_secs(15));
    let took = term_at.elapsed();
    eprintln!(
        "SIGTERM with {written_at_term} written and {acked_at_term} PUBACKed; exited after {took:?}: {status:?}; {} PUBACKed in all",
        log.puback_total(1)
    );
    assert!(
        (acked_at_term as u64) < N && acked_at_term < written_at_term,
        "precondition: messages must be outstanding at SIGTERM ({acked_at_term} acked of {written_at_term} written)"
    );
    let status = status.unwrap_or_else(|e| panic!("{e}\n{}", rig.state()));
    assert!(status.success(), "exit status {status:?}:\n{}", rig.state());
    assert!(took < Duration::from_secs(15));

    // The gateway is gone: once the reader has seen the end of the socket, every PUBACK is logged.
    assert!(wait_until(Duration::from_secs(5), || log
        .closed(1)
        .is_some()));
    // What the broker was told is durable must be in the store after a restart with the store up.
    let acks = log.pubacks(1);
    let doubled_acks: Vec<u16> = acks
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        doubled_acks.is_empty(),
        "PUBACKed twice: {}",
        ranges(doubled_acks)
    );
    let unknown: Vec<u16> = acks
        .keys()
        .copied()
        .filter(|id| u64::from(*id) > N)
        .collect();
    assert!(
        unknown.is_empty(),
        "PUBACKs for ids never sent: {}",
        ranges(unknown)
    );
    let acked: BTreeSet<u64> = acks.keys().map(|id| u64::from(*id) - 1).collect();
    rig.gateway.start_again().unwrap();
    let counts = wait_stored(&rig.vm, &acked, Duration::from_secs(30));
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|k| !counts.contains_key(k))
        .collect();
    let doubled: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(k, _)| *k)
        .collect();
    eprintln!(
        "store after the restart: {} messages ({} PUBACKed)",
        counts.len(),
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "{} messages PUBACKed before the shutdown are not in the store after a restart: {}\n{}",
        missing.len(),
        ranges(missing.iter().copied()),
        rig.state()
    );
    assert!(doubled.is_empty(), "stored twice: {}", ranges(doubled));
    assert!(counts.keys().all(|k| *k < N));
    assert!(
        log.connection_count() >= 2,
        "the restarted gateway did not connect:\n{}",
        rig.state()
    );
}
