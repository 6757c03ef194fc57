//! The delivery policy of `InfluxSink` against a fake store: a minimal hand-written HTTP/1.1
//! responder that shows the faults a real store cannot be made to show on demand (500, 429 with
//! Retry-After, 401, a stalled response, a refused connection, 400 for batches holding a marked
//! line). What real stores do is tested in `line_protocol_real_stores.rs`.

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
