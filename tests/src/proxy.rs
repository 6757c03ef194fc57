//! A fault-injecting HTTP/1.1 proxy in front of a real store, for the faults a real server cannot
//! be made to show on demand: answering slowly, answering 500 or 429 with `Retry-After`, or
//! taking a request and never answering. When no fault is set it forwards every request to the
//! real store unchanged (and its answer back), so what reaches the store is still checked by
//! reading the real store back.
//!
//! It understands just enough HTTP/1.1 for the gateway's writes (`Content-Length` or chunked
//! bodies, keep-alive on both sides): one thread per client connection, each with its own
//! upstream connection. Every request is recorded ([`FaultProxy::requests`]) with when it
//! arrived, what was done to it, and when it ended, so tests can count requests per fault and
//! measure the gaps between them (backoff, `Retry-After`) and how long a hung request lasted
//! before the client gave up (its timeout).
//!
//! ```no_run
//! use ioc_e2e::{Fault, FaultProxy, VictoriaMetrics};
//! let vm = VictoriaMetrics::start().unwrap();
//! let proxy = FaultProxy::start(vm.port()).unwrap();
//! proxy.set_fault(Fault::Status { status: 500, retry_after_s: None });
//! // ... point the gateway at proxy.url() ...
//! proxy.set_fault(Fault::None);
//! ```

use crate::{HarnessError, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to the requests that arrive while it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the store and its answer back.
    None,
    /// Hold each request this long before forwarding it (a store slow to accept). Changing the
    /// fault also shortens the wait of requests already held.
    Delay(Duration),
    /// Answer with this status (and `Retry-After: <seconds>` if set) without forwarding.
    Status {
        status: u16,
        retry_after_s: Option<u64>,
    },
    /// Read the request and never answer; the request ends when the client closes the connection.
    Hang,
}

/// One request as the proxy handled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedRequest {
    /// Method and target, e.g. `POST /api/v2/write?bucket=telemetry&precision=ns`.
    pub request_line: String,
    /// Body length in bytes (as sent, e.g. gzip'd).
    pub body_bytes: usize,
    /// When the whole request had been read.
    pub arrived: Instant,
    /// The fault in force when it arrived.
    pub fault: Fault,
    /// The status answered (the store's, or the injected one); `None` if never answered.
    pub status: Option<u16>,
    /// When it ended: answer written, or the client closed the connection while it hung.
    pub ended: Option<Instant>,
    /// The client closed the connection before any answer (a hung request that timed out).
    pub client_gave_up: bool,
}

/// A per-request fault decided from the request's body (as sent, e.g. gzip'd): how long to
/// hold it first and what to do then; `None` leaves it to the fault set with
/// [`FaultProxy::set_fault`].
pub type Rule = Arc<dyn Fn(&[u8]) -> Option<(Duration, Fault)> + Send + Sync>;

struct Shared {
    fault: Mutex<Fault>,
    rule: Mutex<Option<Rule>>,
    requests: Mutex<Vec<ProxiedRequest>>,
    connections: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, request: ProxiedRequest) -> usize {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.push(request);
        requests.len() - 1
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut ProxiedRequest)) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = requests.get_mut(index) {
            f(r);
        }
    }
}

/// The proxy: listens on a free loopback port, forwards to `127.0.0.1:<upstream_port>`. Stopped
/// (every connection shut down) on `Drop`.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding to `127.0.0.1:<upstream_port>` with no fault set.
    pub fn start(upstream_port: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("bind the fault proxy", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("fault proxy address", e))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("fault proxy nonblocking", e))?;
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            rule: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            connections: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || {
            while !accept_shared.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let _ = client.set_nodelay(true);
                        if let Ok(clone) = client.try_clone() {
                            accept_shared
                                .connections
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(clone);
                        }
                        let shared = Arc::clone(&accept_shared);
                        std::thread::spawn(move || serve_client(client, upstream_port, &shared));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `http://127.0.0.1:PORT`, the URL to give the gateway instead of the store's.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the fault for requests from now on (and the delay of requests being held).
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Sets (or clears) a rule that picks the fault per request from its body, e.g. "answer
    /// 400 after 1 s to every batch holding this line, forward the rest".
    pub fn set_rule(&self, rule: Option<Rule>) {
        *self.shared.rule.lock().unwrap_or_else(|e| e.into_inner()) = rule;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// One HTTP message read off a connection: head (start line and headers, with the final CRLF
/// CRLF) and body, both raw, ready to be written on.
struct Message {
    head: Vec<u8>,
    start_line: String,
    body: Vec<u8>,
    /// The body ran to the end of the connection (no length given): close after forwarding.
    close_after: bool,
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// Reads one message; `Ok(None)` on a clean end of the connection before it started.
/// `body_allowed`: false for responses that never have a body (1xx, 204, 304).
fn read_message(
    reader: &mut impl BufRead,
    body_allowed: impl Fn(&str) -> bool,
) -> std::io::Result<Option<Message>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                head.clear(); // stray empty line between messages
                continue;
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let start_line = text.lines().next().unwrap_or_default().to_owned();
    let mut body = Vec::new();
    let mut close_after = false;
    if body_allowed(&start_line) {
        let chunked = header_value(&text, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let mut size_line = Vec::new();
                reader.read_until(b'\n', &mut size_line)?;
                body.extend_from_slice(&size_line);
                let size_text = String::from_utf8_lossy(&size_line);
                let size_hex = size_text.trim().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        let mut trailer = Vec::new();
                        reader.read_until(b'\n', &mut trailer)?;
                        body.extend_from_slice(&trailer);
                        if trailer == b"\r\n" || trailer == b"\n" || trailer.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0u8; size + 2];
                reader.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk);
            }
        } else if let Some(length) = header_value(&text, "content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad content-length {length:?}")))?;
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        } else if !start_line.starts_with("HTTP/") {
            // A request without a length has no body.
        } else {
            reader.read_to_end(&mut body)?;
            close_after = true;
        }
    }
    Ok(Some(Message {
        head,
        start_line,
        body,
        close_after,
    }))
}

fn response_has_body(start_line: &str) -> bool {
    let status: u16 = start_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    !(100..200).contains(&status) && status != 204 && status != 304
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Injected Fault",
    }
}

fn serve_client(client: TcpStream, upstream_port: u16, shared: &Shared) {
    let Ok(mut client_writer) = client.try_clone() else {
        return;
    };
    let mut client_reader = BufReader::new(client);
    let mut upstream: Option<(TcpStream, BufReader<TcpStream>)> = None;
    loop {
        let request = match read_message(&mut client_reader, |_| true) {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return,
        };
        let rule = shared
            .rule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let ruled = rule.and_then(|rule| rule(&request.body));
        if let Some((hold, _)) = ruled {
            std::thread::sleep(hold);
        }
        let fault = ruled.map_or_else(|| shared.fault(), |(_, fault)| fault);
        let arrived = Instant::now();
        let index = shared.record(ProxiedRequest {
            request_line: request.start_line.clone(),
            body_bytes: request.body.len(),
            arrived,
            fault,
            status: None,
            ended: None,
            client_gave_up: false,
        });
        match fault {
            Fault::Hang => {
                // Never answer: wait for the client to give up (EOF or error) or the proxy to stop.
                let mut sink = [0u8; 4096];
                loop {
                    match client_reader.read(&mut sink) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                shared.update(index, |r| {
                    r.ended = Some(Instant::now());
                    r.client_gave_up = true;
                });
                return;
            }
            Fault::Status {
                status,
                retry_after_s,
            } => {
                let body = format!("injected fault: HTTP {status}\n");
                let retry = retry_after_s
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                let answer = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{retry}\r\n{body}",
                    reason_phrase(status),
                    body.len()
                );
                if client_writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                shared.update(index, |r| {
                    r.status = Some(status);
                    r.ended = Some(Instant::now());
                });
            }
            Fault::Delay(_) | Fault::None => {
                // Hold the request while a delay is set (re-read: it may be lifted meanwhile).
                while let Fault::Delay(delay) = shared.fault() {
                    if arrived.elapsed() >= delay || shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let answer = match forward(&mut upstream, upstream_port, &request) {
                    Ok(answer) => answer,
                    Err(_) => {
                        // Store unreachable: behave as a gateway in front of it would.
                        upstream = None;
                        let body = "fault proxy: upstream unreachable\n";
                        let text = format!(
                            "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if client_writer.write_all(text.as_bytes()).is_err() {
                            return;
                        }
                        shared.update(index, |r| {
                            r.status = Some(502);
                            r.ended = Some(Instant::now());
                        });
                        continue;
                    }
                };
                let status = answer
                    .start_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok());
                let written = client_writer
                    .write_all(&answer.head)
                    .and_then(|()| client_writer.write_all(&answer.body));
                if written.is_err() {
                    return;
                }
                shared.update(index, |r| {
                    r.status = status;
                    r.ended = Some(Instant::now());
                });
                if answer.close_after {
                    let _ = client_writer.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// Sends `request` upstream (connecting first if needed; once more on a stale connection) and
/// reads the answer.
fn forward(
    upstream: &mut Option<(TcpStream, BufReader<TcpStream>)>,
    upstream_port: u16,
    request: &Message,
) -> std::io::Result<Message> {
    for attempt in 0..2 {
        if upstream.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", upstream_port))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            let reader = BufReader::new(stream.try_clone()?);
            *upstream = Some((stream, reader));
        }
        let Some((stream, reader)) = upstream.as_mut() else {
            continue;
        };
        let result = stream
            .write_all(&request.head)
            .and_then(|()| stream.write_all(&request.body))
            .and_then(|()| read_message(reader, response_has_body));
        match result {
            Ok(Some(answer)) => {
                if answer.close_after {
                    *upstream = None;
                }
                return Ok(answer);
            }
            Ok(None) | Err(_) if attempt == 0 => *upstream = None,
            Ok(None) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::ErrorKind::UnexpectedEof.into())
}
