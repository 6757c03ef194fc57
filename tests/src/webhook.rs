//! A keep-alive HTTP/1.1 client for webhook inputs, on a plain `TcpStream`.
//!
//! Why not `ureq`: the tests need what a library hides: the exact bytes sent (a truncated
//! multipart body, a declared length the body never reaches), one connection kept across
//! requests (keep-alive, as senders do), and a missing response told apart from an answer
//! (the durability test retries on both). Responses are read by `Content-Length` (what the
//! gateway's server always sends) or up to a `204`/`304`'s empty body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One answer: status, headers (names lower-cased), body as text.
#[derive(Debug, Clone)]
pub struct WebhookResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl WebhookResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A connection to `127.0.0.1:port`, opened on first use and again after any error.
pub struct WebhookClient {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

impl WebhookClient {
    pub fn new(port: u16) -> Self {
        WebhookClient {
            port,
            conn: None,
            timeout: Duration::from_secs(20),
        }
    }

    /// Sends `POST path` with `headers` and `body`; an `Err` when no complete answer came (the
    /// connection is dropped then, the next request opens a new one).
    pub fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<WebhookResponse> {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.raw(head.as_bytes(), body)
    }

    /// Sends `head` and `body` as they are, then reads one response.
    pub fn raw(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<WebhookResponse> {
        let result = self.exchange(head, body);
        if result.is_err() {
            self.conn = None;
        }
        if let Ok(r) = &result {
            if r.header("connection") == Some("close") {
                self.conn = None;
            }
        }
        result
    }

    fn exchange(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<WebhookResponse> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut msg = Vec::with_capacity(head.len() + body.len());
        msg.extend_from_slice(head);
        msg.extend_from_slice(body);
        conn.get_mut().write_all(&msg)?;
        read_response(conn)
    }
}

fn read_response(conn: &mut BufReader<TcpStream>) -> std::io::Result<WebhookResponse> {
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(eof());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(eof());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    Ok(WebhookResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
