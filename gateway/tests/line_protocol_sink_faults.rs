//! The delivery policy of `InfluxSink` against a fake store: a minimal hand-written HTTP/1.1
//! responder that shows the faults a real store cannot be made to show on demand (500, 429 with
//! Retry-After, 401, a stalled response, a refused connection, 400 for batches holding a marked
//! line). What real stores do is tested in `line_protocol_real_stores.rs`.
//!
//! The good-citizen policies are here too: a store that answers `429` with `Retry-After: 2` for
//! 30 s (drained through the real buffer with several batches in flight), the uplink budget,
//! and the drain start spread after an outage.

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use ioc_gateway::output::influx::{
    Api, Delivered, InfluxSink, InfluxSinkConfig, Secret, SinkError, WriteOutcome, DEAD_LETTER_FILE,
};
use ioc_gateway::shutdown::Shutdown;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the fake store saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// When the request's head and body had arrived.
    at: Instant,
    target: String,
    headers: Vec<(String, String)>,
    lines: Vec<String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Reply {
    Status(u16, Vec<(&'static str, String)>, String),
    Stall,
}

type Script = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

struct FakeStore {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeStore {
    async fn start(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> FakeStore {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(script))
    }

    fn serve(listener: TcpListener, script: Script) -> FakeStore {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_server = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(connection(stream, script.clone(), seen_by_server.clone()));
            }
        });
        FakeStore { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn connection(mut stream: TcpStream, script: Script, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buffer = Vec::new();
    loop {
        // Read the head.
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let mut head_lines = head.split("\r\n");
        let request_line = head_lines.next().unwrap().to_owned();
        let target = request_line.split(' ').nth(1).unwrap().to_owned();
        let headers: Vec<(String, String)> = head_lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..head_end + length).skip(head_end).collect();
        let mut text = String::new();
        MultiGzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        let request = Seen {
            at: Instant::now(),
            target,
            headers,
            lines: text.lines().map(str::to_owned).collect(),
        };
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(request.clone());
            seen.len() - 1
        };
        match script(index, &request) {
            Reply::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Reply::Status(code, extra, body) => {
                let mut response =
                    format!("HTTP/1.1 {code} Fake\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in extra {
                    response.push_str(&format!("{k}: {v}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&body);
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn no_content() -> Reply {
    Reply::Status(204, vec![], String::new())
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// `count` lines, gzip'd as one member per `per_member` lines (as the buffer concatenates them).
fn batch(count: usize, per_member: usize, marked: &[usize]) -> (Vec<String>, Vec<u8>) {
    let lines: Vec<String> = (0..count)
        .map(|i| {
            let mark = if marked.contains(&i) { "BAD" } else { "ok" };
            format!(
                "env,sensor=s{i},mark={mark} pm2_5={i}.5 {}",
                1_700_000_000_000_000_000i64 + i as i64
            )
        })
        .collect();
    let mut body = Vec::new();
    for chunk in lines.chunks(per_member) {
        body.extend(gzip(&(chunk.join("\n") + "\n")));
    }
    (lines, body)
}

fn config(url: String, dir: &std::path::Path) -> InfluxSinkConfig {
    let mut config = InfluxSinkConfig::new(url, Api::V2, dir);
    config.org = "ioc".into();
    config.bucket = "telemetry".into();
    config.token = Some(Secret::new("t0ken"));
    config.backoff_initial = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(40);
    config.request_timeout = Duration::from_secs(5);
    // Fast retries for the fault tests; the good-citizen tests put the jitter back.
    config.flush_jitter = Duration::ZERO;
    config
}

fn no_shutdown() -> Shutdown {
    Shutdown::new()
}

#[tokio::test]
async fn one_attempt_sends_gzip_with_token_to_the_v2_endpoint() {
    let store = FakeStore::start(|_, _| no_content()).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = InfluxSink::new(config(store.url(), dir.path())).unwrap();
    let (lines, body) = batch(3, 2, &[]);
    let outcome = sink.write(&body, 3).await.unwrap();
    assert_eq!(outcome, WriteOutcome::Accepted { status: 204 });
    let seen = store.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].target,
        "/api/v2/write?org=ioc&bucket=telemetry&precision=ns"
    );
    assert_eq!(seen[0].header("content-encoding"), Some("gzip"));
    assert_eq!(seen[0].header("authorization"), Some("Token t0ken"));
    assert_eq!(seen[0].lines, lines);
}

#[tokio::test]
async fn v1_uses_write_endpoint_and_basic_auth() {
    let store = FakeStore::start(|_, _| no_content()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = InfluxSinkConfig::new(store.url(), Api::V1, dir.path());
    config.database = "telemetry".into();
    config.username = Some("gw".into());
    config.password = Some(Secret::new("pw"));
    let sink = InfluxSink::new(config).unwrap();
    let (_, body) = batch(1, 1, &[]);
    assert_eq!(
        sink.write(&body, 1).await.unwrap(),
        WriteOutcome::Accepted { status: 204 }
    );
    let seen = store.seen();
    assert_eq!(seen[0].target, "/write?db=telemetry&precision=ns");
    // base64("gw:pw")
    assert_eq!(seen[0].header("authorization"), Some("Basic Z3c6cHc="));
}

#[tokio::test]
async fn server_errors_are_retried_until_accepted() {
    let store = FakeStore::start(|i, _| {
        if i < 3 {
            Reply::Status(500, vec![], "engine hiccup".into())
        } else {
            no_content()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = InfluxSink::new(config(store.url(), dir.path())).unwrap();
    let (lines, body) = batch(10, 4, &[]);
    let rx = no_shutdown();
    let delivered = sink.deliver(&body, 10, &rx).await.unwrap();
    assert_eq!(
        delivered,
        Delivered {
            lines_sent: 10,
            lines_dead_lettered: 0,
            requests: 4
        }
    );
    let seen = store.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.lines == lines));
    assert!(!dir.path().join(DEAD_LETTER_FILE).exists());
}

#[tokio::test]
async fn retry_after_of_a_429_is_honoured() {
    let store = FakeStore::start(|i, _| {
        if i == 0 {
            Reply::Status(
                429,
                vec![("Retry-After", "1".into())],
                "too many requests".into(),
            )
        } else {
            no_content()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = InfluxSink::new(config(store.url(), dir.path())).unwrap();
    let (_, body) = batch(2, 2, &[]);
    let rx = no_shutdown();
    let started = Instant::now();
    let delivered = sink.deliver(&body, 2, &rx).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        delivered,
        Delivered {
            lines_sent: 2,
            lines_dead_lettered: 0,
            requests: 2
        }
    );
    // The backoff alone would be at most 40 ms.
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn a_stalled_store_times_out_and_is_retried() {
    let store = FakeStore::start(|i, _| if i == 0 { Reply::Stall } else { no_content() }).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(store.url(), dir.path());
    config.request_timeout = Duration::from_millis(300);
    let sink = InfluxSink::new(config).unwrap();
    let (_, body) = batch(2, 1, &[]);
    let err = sink.write(&body, 2).await.unwrap_err();
    assert!(
        matches!(err, SinkError::Transport { timeout: true, .. }),
        "{err:?}"
    );
    let rx = no_shutdown();
    let started = Instant::now();
    let delivered = sink.deliver(&body, 2, &rx).await.unwrap();
    assert_eq!(
        delivered,
        Delivered {
            lines_sent: 2,
            lines_dead_lettered: 0,
            requests: 1
        }
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(store.seen().len(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_store_is_up() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = InfluxSink::new(config(format!("http://127.0.0.1:{port}"), dir.path())).unwrap();
    let (_, body) = batch(5, 5, &[]);
    let err = sink.write(&body, 5).await.unwrap_err();
    assert!(
        matches!(err, SinkError::Transport { timeout: false, .. }),
        "{err:?}"
    );
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    let seen = Arc::new(Mutex::new(None));
    let seen_for_starter = seen.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let store = FakeStore::serve(listener, Arc::new(|_, _| no_content()));
        *seen_for_starter.lock().unwrap() = Some(store);
    });
    let rx = no_shutdown();
    let delivered = sink.deliver(&body, 5, &rx).await.unwrap();
    assert_eq!(delivered.lines_sent, 5);
    assert!(delivered.requests >= 2, "{delivered:?}");
    let store = seen.lock().unwrap().take().unwrap();
    assert_eq!(store.seen().len(), 1);
}

#[tokio::test]
async fn bad_lines_are_split_out_and_dead_lettered() {
    // 400 for any batch holding a marked line; the good lines are recorded as stored.
    let store =
        FakeStore::start(
            |_, seen| match seen.lines.iter().find(|l| l.contains("mark=BAD")) {
                Some(bad) => Reply::Status(
                    400,
                    vec![("Content-Type", "application/json".into())],
                    format!(r#"{{"error":"unable to parse '{bad}': marked bad"}}"#),
                ),
                None => no_content(),
            },
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let dead_dir = dir.path().join("dead");
    let sink = InfluxSink::new(config(store.url(), &dead_dir)).unwrap();
    let (lines, body) = batch(20, 3, &[3, 4, 17]);
    let rx = no_shutdown();
    let delivered = sink.deliver(&body, 20, &rx).await.unwrap();
    assert_eq!(delivered.lines_sent, 17);
    assert_eq!(delivered.lines_dead_lettered, 3);

    let accepted: Vec<String> = store
        .seen()
        .into_iter()
        .filter(|s| s.lines.iter().all(|l| !l.contains("BAD")))
        .flat_map(|s| s.lines)
        .collect();
    let good: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| ![3, 4, 17].contains(i))
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(
        accepted, good,
        "every good line stored exactly once, in order"
    );
    assert_eq!(delivered.requests as usize, store.seen().len());

    let dead = std::fs::read_to_string(dead_dir.join(DEAD_LETTER_FILE)).unwrap();
    let dead_lines: Vec<&str> = dead.lines().collect();
    assert_eq!(dead_lines.len(), 6, "{dead}");
    for (entry, index) in dead_lines.chunks(2).zip([3, 4, 17]) {
        assert!(entry[0].starts_with("# dead-lettered 20"), "{}", entry[0]);
        assert!(
            entry[0].ends_with(&format!(
                "status=400 error: unable to parse '{}': marked bad",
                lines[index]
            )),
            "{}",
            entry[0]
        );
        assert_eq!(entry[1], lines[index]);
    }
}

#[tokio::test]
async fn a_batch_of_one_bad_line_is_dead_lettered_at_once() {
    let store =
        FakeStore::start(|_, _| Reply::Status(422, vec![], "unprocessable\nsecond line".into()))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = InfluxSink::new(config(store.url(), dir.path())).unwrap();
    let (lines, body) = batch(1, 1, &[0]);
    let rx = no_shutdown();
    let delivered = sink.deliver(&body, 1, &rx).await.unwrap();
    assert_eq!(
        delivered,
        Delivered {
            lines_sent: 0,
            lines_dead_lettered: 1,
            requests: 1
        }
    );
    let dead = std::fs::read_to_string(dir.path().join(DEAD_LETTER_FILE)).unwrap();
    let dead_lines: Vec<&str> = dead.lines().collect();
    assert_eq!(dead_lines.len(), 2);
    assert!(dead_lines[0].ends_with("status=422 error: unprocessable second line"));
    assert_eq!(dead_lines[1], lines[0]);
}

#[tokio::test]
async fn unauthorized_is_retried_and_never_dead_lettered() {
    let store = FakeStore::start(|i, _| {
        if i < 2 {
            Reply::Status(401, vec![], r#"{"error":"authorization failed"}"#.into())
        } else {
            no_content()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = InfluxSink::new(config(store.url(), dir.path())).unwrap();
    let (_, body) = batch(4, 4, &[]);
    assert_eq!(
        sink.write(&body, 4).await.unwrap(),
        WriteOutcome::Unauthorized {
            status: 401,
            message: "authorization failed".into()
        }
    );
    let rx = no_shutdown();
    let delivered = sink.deliver(&body, 4, &rx).await.unwrap();
    assert_eq!(
        delivered,
        Delivered {
            lines_sent: 4,
            lines_dead_lettered: 0,
            requests: 2
        }
    );
    assert!(!dir.path().join(DEAD_LETTER_FILE).exists());
}

#[tokio::test]
async fn shutdown_ends_a_delivery_that_cannot_finish() {
    let store = FakeStore::start(|_, _| Reply::Status(503, vec![], "down".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = InfluxSink::new(config(store.url(), dir.path())).unwrap();
    let (_, body) = batch(2, 2, &[]);
    let tx = Shutdown::new();
    let rx = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.trigger();
    });
    let started = Instant::now();
    let err = sink.deliver(&body, 2, &rx).await.unwrap_err();
    assert!(matches!(err, SinkError::Shutdown), "{err:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert!(store.seen().len() >= 2);

    // Already shut down: no request at all. A stalled request is abandoned too.
    let before = store.seen().len();
    let stopped = Shutdown::new();
    stopped.trigger();
    assert!(matches!(
        sink.deliver(&body, 2, &stopped).await,
        Err(SinkError::Shutdown)
    ));
    assert_eq!(store.seen().len(), before);

    let stalling = FakeStore::start(|_, _| Reply::Stall).await;
    let sink = InfluxSink::new(config(stalling.url(), dir.path())).unwrap();
    let tx = Shutdown::new();
    let rx = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.trigger();
    });
    let started = Instant::now();
    assert!(matches!(
        sink.deliver(&body, 2, &rx).await,
        Err(SinkError::Shutdown)
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The sink of `config` with the good-citizen settings of a test.
fn citizen_config(url: String, dir: &std::path::Path, gateway_id: &str) -> InfluxSinkConfig {
    let mut c = config(url, dir);
    c.gateway_id = gateway_id.into();
    c.flush_jitter = InfluxSinkConfig::new("http://x", Api::V2, dir).flush_jitter;
    c
}

#[tokio::test]
async fn a_store_answering_429_retry_after_2_for_30_s_is_obeyed_and_loses_nothing() {
    use ioc_gateway::buffer::{self, BufferConfig};
    use ioc_gateway::output::influx::parallel::Deliveries;
    use ioc_model::Priority;
    use std::collections::{HashMap, HashSet};

    const REFUSING: Duration = Duration::from_secs(30);
    let opened = Instant::now();
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let accepted_by_store = accepted.clone();
    let store = FakeStore::start(move |i, _| {
        if opened.elapsed() < REFUSING {
            Reply::Status(
                429,
                vec![("Retry-After", "2".into())],
                "ingestion rate limit exceeded".into(),
            )
        } else {
            accepted_by_store.lock().unwrap().insert(i);
            no_content()
        }
    })
    .await;

    // A backlog in the real buffer: 40 normal records of 50 lines and 4 urgent ones.
    let data = tempfile::tempdir().unwrap();
    let (writer, mut reader, _) =
        buffer::open(BufferConfig::new(data.path().join("buffer"), 64 << 20)).unwrap();
    let mut all = Vec::new();
    for record in 0..44 {
        let priority = if record % 11 == 5 {
            Priority::Urgent
        } else {
            Priority::Normal
        };
        let lines: Vec<String> = (0..50)
            .map(|i| {
                format!(
                    "env,gw=g429,rec=r{record} v={i} {}",
                    1_700_000_000_000_000_000i64 + i
                )
            })
            .collect();
        writer
            .append(priority, 50, (lines.join("\n") + "\n").into_bytes())
            .await
            .unwrap();
        all.extend(lines);
    }
    let total = all.len() as u32;

    let mut cfg = citizen_config(store.url(), data.path(), "gw-429");
    cfg.backoff_initial = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_secs(5);
    cfg.drain_spread = Duration::from_secs(2);
    let sink = Arc::new(InfluxSink::new(cfg).unwrap());
    let shutdown = Shutdown::new();
    let mut flight = Deliveries::new(sink.clone(), shutdown.clone());
    let (mut handed, mut acked, mut most_in_flight) = (0u32, 0u32, 0usize);
    let run = async {
        while acked < total {
            while flight.has_room() && handed < total {
                let batch = reader.next_batch(100).await.unwrap();
                handed += batch.lines;
                flight.start(batch, None);
                most_in_flight = most_in_flight.max(flight.len());
            }
            let (batch, result) = flight.next_done().await.expect("a delivery in flight");
            let delivered = result.unwrap();
            assert_eq!(delivered.lines_sent, batch.lines);
            reader.ack(&batch).await.unwrap();
            acked += batch.lines;
        }
    };
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the backlog drains once the store accepts");

    let seen = store.seen();
    let accepted = accepted.lock().unwrap().clone();
    // While refused: one request at a time (the limit starts at 1 and 429s halve it), each
    // after the 2 s asked for (plus jitter; a loaded machine only makes the gaps longer).
    let refused: Vec<&Seen> = seen
        .iter()
        .enumerate()
        .filter(|(i, _)| !accepted.contains(i))
        .map(|(_, s)| s)
        .collect();
    assert!(refused.len() >= 2, "{} refused requests", refused.len());
    for pair in refused.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(1900),
            "two refused requests {gap:?} apart: Retry-After 2 not obeyed"
        );
    }
    assert!(
        refused.len() <= 16,
        "{} requests in 30 s of Retry-After: 2",
        refused.len()
    );
    // Nothing lost, nothing twice: each line in exactly one accepted request.
    let mut count: HashMap<&str, u32> = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        if accepted.contains(&i) {
            for line in &s.lines {
                *count.entry(line.as_str()).or_default() += 1;
            }
        }
    }
    for line in &all {
        assert_eq!(count.get(line.as_str()), Some(&1), "{line}");
    }
    assert_eq!(count.len(), all.len());
    assert_eq!(reader.stats().unsent_lines, 0);
    eprintln!(
        "refused requests: {}, accepted requests: {}, most batches in flight: {most_in_flight}, \
         concurrency limit at the end: {}",
        refused.len(),
        accepted.len(),
        sink.concurrency_limit()
    );
    writer.shutdown().await;
}

#[tokio::test]
async fn a_retry_after_above_the_bound_is_cut_and_a_500s_is_ignored() {
    let store = FakeStore::start(|i, _| match i {
        0 => Reply::Status(429, vec![("Retry-After", "3600".into())], "later".into()),
        1 => Reply::Status(500, vec![("Retry-After", "3600".into())], "oops".into()),
        _ => no_content(),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = citizen_config(store.url(), dir.path(), "gw-bound");
    cfg.max_retry_after = Duration::from_secs(1);
    cfg.flush_jitter = Duration::ZERO;
    let sink = InfluxSink::new(cfg).unwrap();
    let (_, body) = batch(2, 2, &[]);
    let delivered = tokio::time::timeout(
        Duration::from_secs(60),
        sink.deliver(&body, 2, &no_shutdown()),
    )
    .await
    .expect("an hour's Retry-After is cut to max_retry_after")
    .unwrap();
    assert_eq!(delivered.requests, 3);
    let seen = store.seen();
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(950));
}

#[tokio::test]
async fn a_retry_after_http_date_is_obeyed() {
    let store = FakeStore::start(|i, _| {
        if i == 0 {
            // Two seconds from now as an IMF-fixdate (whole seconds: 1 to 2 s of wait).
            let at = std::time::SystemTime::now() + Duration::from_secs(2);
            let date = httpdate(at);
            Reply::Status(503, vec![("Retry-After", date)], "maintenance".into())
        } else {
            no_content()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = citizen_config(store.url(), dir.path(), "gw-date");
    cfg.flush_jitter = Duration::ZERO;
    let sink = InfluxSink::new(cfg).unwrap();
    let (_, body) = batch(1, 1, &[]);
    sink.deliver(&body, 1, &no_shutdown()).await.unwrap();
    let seen = store.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(900),
        "the date was not obeyed"
    );
}

/// An IMF-fixdate, e.g. `Thu, 03 Dec 2026 20:00:00 GMT`.
fn httpdate(at: std::time::SystemTime) -> String {
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&format).unwrap()
}

#[tokio::test]
async fn the_daily_budget_holds_normal_data_and_urgent_still_goes() {
    use ioc_model::Priority;
    let store = FakeStore::start(|_, _| no_content()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = citizen_config(store.url(), dir.path(), "gw-4g");
    cfg.daily_budget_bytes = Some(100);
    let sink = Arc::new(InfluxSink::new(cfg).unwrap());
    let shutdown = Shutdown::new();
    let (first, body1) = batch(20, 20, &[]);
    assert!(body1.len() > 100);
    // The first batch of the day goes (the budget is then spent: it was larger).
    sink.deliver_batch(&body1, 20, Priority::Normal, &shutdown, None)
        .await
        .unwrap();
    assert!(sink.normal_hold() > Duration::ZERO, "the budget is spent");
    // The next normal batch waits ...
    let held = {
        let (sink, shutdown) = (sink.clone(), shutdown.clone());
        tokio::spawn(async move {
            let (_, body2) = batch(5, 5, &[]);
            sink.deliver_batch(&body2, 5, Priority::Normal, &shutdown, None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "normal data went past a spent budget");
    // ... while urgent data still goes.
    let (urgent, body3) = batch(3, 3, &[]);
    let d = sink
        .deliver_batch(&body3, 3, Priority::Urgent, &shutdown, None)
        .await
        .unwrap();
    assert_eq!(d.lines_sent, 3);
    let seen = store.seen();
    assert_eq!(seen.len(), 2, "the held batch was not sent");
    assert_eq!(seen[0].lines, first);
    assert_eq!(seen[1].lines, urgent);
    assert!(!held.is_finished());
    // Held data is kept, not lost: a shutdown hands it back unsent.
    shutdown.trigger();
    assert!(matches!(held.await.unwrap(), Err(SinkError::Shutdown)));
    // The day's count outlives the sink (a restart, a reload): the next one is held at once.
    let mut again = citizen_config(store.url(), dir.path(), "gw-4g");
    again.daily_budget_bytes = Some(100);
    let again = InfluxSink::new(again).unwrap();
    assert!(
        again.normal_hold() > Duration::ZERO,
        "the spent budget was forgotten"
    );
    // A batch whose priority the caller does not know (the old entry point) is never held.
    let (_, body4) = batch(2, 2, &[]);
    again.deliver(&body4, 2, &no_shutdown()).await.unwrap();
    assert_eq!(store.seen().len(), 3);
}

#[tokio::test]
async fn the_rate_limit_paces_normal_batches() {
    use ioc_model::Priority;
    let store = FakeStore::start(|_, _| no_content()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = citizen_config(store.url(), dir.path(), "gw-rate");
    cfg.max_bytes_per_s = Some(1000);
    let sink = InfluxSink::new(cfg).unwrap();
    let (_, body) = batch(60, 1, &[]);
    assert!(body.len() > 1500, "{}", body.len());
    let started = Instant::now();
    for _ in 0..2 {
        sink.deliver_batch(&body, 60, Priority::Normal, &no_shutdown(), None)
            .await
            .unwrap();
    }
    // A full bucket of 1000 lets the first go; the second waits for its debt to be paid.
    let debt = Duration::from_secs_f64((body.len() - 1000) as f64 / 1000.0);
    assert!(
        started.elapsed() >= debt,
        "{:?} < {debt:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn after_an_outage_normal_data_waits_the_drain_offset_and_urgent_does_not() {
    use ioc_gateway::output::influx::jitter::drain_offset;
    use ioc_model::Priority;
    // An id whose offset in a one-hour spread is long, so nothing here depends on timing.
    let spread = Duration::from_secs(3600);
    let id = (0..)
        .map(|i| format!("gw-drain-{i}"))
        .find(|id| drain_offset(id, spread) > Duration::from_secs(1200))
        .unwrap();
    let offset = drain_offset(&id, spread);
    assert_eq!(offset, drain_offset(&id, spread), "deterministic");
    assert_ne!(
        offset,
        drain_offset("gw-other", spread),
        "another box, another offset"
    );

    let store = FakeStore::start(|i, _| {
        if i < 2 {
            Reply::Status(502, vec![], "the store tier is down".into())
        } else {
            no_content()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = citizen_config(store.url(), dir.path(), &id);
    cfg.drain_spread = spread;
    let sink = Arc::new(InfluxSink::new(cfg).unwrap());
    let shutdown = Shutdown::new();
    let (_, body) = batch(4, 4, &[]);
    assert_eq!(sink.normal_hold(), Duration::ZERO, "no outage yet");
    // The batch in hand when the store comes back goes with its retry ...
    sink.deliver_batch(&body, 4, Priority::Normal, &shutdown, None)
        .await
        .unwrap();
    // ... then the backlog waits the offset.
    let hold = sink.normal_hold();
    assert!(
        hold <= offset && hold > offset - Duration::from_secs(600),
        "{hold:?} vs {offset:?}"
    );
    let waiting = {
        let (sink, shutdown) = (sink.clone(), shutdown.clone());
        tokio::spawn(async move {
            let (_, body) = batch(2, 2, &[]);
            sink.deliver_batch(&body, 2, Priority::Normal, &shutdown, None)
                .await
        })
    };
    let (_, urgent) = batch(1, 1, &[]);
    sink.deliver_batch(&urgent, 1, Priority::Urgent, &shutdown, None)
        .await
        .unwrap();
    assert_eq!(
        store.seen().len(),
        4,
        "three tries of the first batch and the urgent one"
    );
    assert!(!waiting.is_finished());
    shutdown.trigger();
    assert!(matches!(waiting.await.unwrap(), Err(SinkError::Shutdown)));
}

/// A `503` with `Retry-After` from one of several URLs moves the retry to the next URL at once:
/// the Retry-After holds the sink only when no other URL can take the request.
#[tokio::test]
async fn a_503_with_retry_after_of_one_url_fails_over_at_once() {
    let down = FakeStore::start(|_, _| {
        Reply::Status(
            503,
            vec![("Retry-After", "60".into())],
            "maintenance".into(),
        )
    })
    .await;
    let up = FakeStore::start(|_, _| no_content()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = citizen_config(down.url(), dir.path(), "gw-503");
    cfg.fallback_urls = vec![up.url()];
    let sink = InfluxSink::new(cfg).unwrap();
    let (_, body) = batch(2, 2, &[]);
    let delivered = tokio::time::timeout(
        Duration::from_secs(20),
        sink.deliver(&body, 2, &no_shutdown()),
    )
    .await
    .expect("held for the 503's Retry-After although another URL was up")
    .unwrap();
    assert_eq!(delivered.lines_sent, 2);
    assert_eq!((down.seen().len(), up.seen().len()), (1, 1));
    // The next batch goes to the healthy URL straight away too (the failed one rests).
    let delivered = tokio::time::timeout(
        Duration::from_secs(20),
        sink.deliver(&body, 2, &no_shutdown()),
    )
    .await
    .expect("the next batch was held")
    .unwrap();
    assert_eq!(delivered.requests, 1);
}
