//! `vmalert` (from Debian's `victoria-metrics` package) evaluating a rules file against a real
//! VictoriaMetrics, and a notifier that takes what it sends.
//!
//! Why it exists: alert rules shipped with the gateway are only worth something if they fire
//! when they should. vmalert evaluates them as it would in an IOC; the tests read its
//! `/api/v1/alerts` and the notifications it posted. vmalert 1.79 needs a notifier URL (it has
//! no `-notifier.blackhole`), so [`Notifier`] answers like an Alertmanager (`200` to
//! `POST /api/v2/alerts`) and keeps the bodies.

use crate::server::{ChildServer, ReadyProbe};
use crate::{free_port, HarnessError, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

/// One alert as vmalert reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    pub gateway: Option<String>,
}

/// A vmalert child process. Killed on `Drop`.
pub struct VmAlert {
    port: u16,
    server: ChildServer,
    _dir: TempDir,
}

impl VmAlert {
    /// Starts vmalert on `rules`, querying `datasource` (a VictoriaMetrics URL) every
    /// `interval`, notifying `notifier`.
    pub fn start(
        rules: &Path,
        datasource: &str,
        notifier: &str,
        interval: Duration,
    ) -> Result<Self> {
        let dir = crate::harness_temp_dir("ioc-e2e-vmalert-")?;
        let mut last_error = None;
        for _attempt in 0..3 {
            let port = free_port();
            let args = vec![
                format!("-rule={}", rules.display()),
                format!("-datasource.url={datasource}"),
                format!("-notifier.url={notifier}"),
                format!("-httpListenAddr=127.0.0.1:{port}"),
                format!("-evaluationInterval={}ms", interval.as_millis()),
                "-loggerLevel=WARN".into(),
            ];
            let mut server = ChildServer::new(
                "vmalert",
                "vmalert",
                args,
                dir.path().join("vmalert.log"),
                ReadyProbe::Http(format!("http://127.0.0.1:{port}/health")),
            );
            match server.start(Duration::from_secs(30)) {
                Ok(()) => {
                    return Ok(VmAlert {
                        port,
                        server,
                        _dir: dir,
                    })
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Timeout("vmalert start".into())))
    }

    /// The alerts vmalert holds now (pending or firing).
    pub fn alerts(&self) -> Vec<Alert> {
        let url = format!("http://127.0.0.1:{}/api/v1/alerts", self.port);
        let Ok(resp) = ureq::get(&url).timeout(Duration::from_secs(10)).call() else {
            return Vec::new();
        };
        let Ok(v) = resp.into_json::<serde_json::Value>() else {
            return Vec::new();
        };
        v["data"]["alerts"]
            .as_array()
            .map(|alerts| {
                alerts
                    .iter()
                    .map(|a| Alert {
                        name: a["name"].as_str().unwrap_or_default().to_owned(),
                        state: a["state"].as_str().unwrap_or_default().to_owned(),
                        gateway: a["labels"]["gateway"].as_str().map(str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `name` is firing for `gateway`.
    pub fn firing(&self, name: &str, gateway: &str) -> bool {
        self.alerts()
            .iter()
            .any(|a| a.name == name && a.state == "firing" && a.gateway.as_deref() == Some(gateway))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }
}

/// An Alertmanager stand-in: answers `200` to every request and keeps the bodies.
pub struct Notifier {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Notifier {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("bind the notifier", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("notifier address", e))?
            .port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let into = bodies.clone();
        std::thread::Builder::new()
            .name("vmalert-notifier".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let into = into.clone();
                    std::thread::spawn(move || {
                        let mut reader = BufReader::new(match stream.try_clone() {
                            Ok(s) => s,
                            Err(_) => return,
                        });
                        let mut writer = stream;
                        // Keep-alive: one request after the other on the connection.
                        loop {
                            let mut length = 0usize;
                            let mut line = String::new();
                            let mut first = true;
                            loop {
                                line.clear();
                                match reader.read_line(&mut line) {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {}
                                }
                                if first {
                                    first = false;
                                    continue;
                                }
                                let l = line.trim_end();
                                if l.is_empty() {
                                    break;
                                }
                                if let Some((k, v)) = l.split_once(':') {
                                    if k.eq_ignore_ascii_case("content-length") {
                                        length = v.trim().parse().unwrap_or(0);
                                    }
                                }
                            }
                            let mut body = vec![0; length.min(16 << 20)];
                            if reader.read_exact(&mut body).is_err() {
                                return;
                            }
                            if let Ok(mut b) = into.lock() {
                                b.push(String::from_utf8_lossy(&body).into_owned());
                            }
                            if writer
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            })
            .map_err(|e| HarnessError::io("spawn the notifier", e))?;
        Ok(Notifier { port, bodies })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every body posted so far (vmalert posts JSON lists of alerts).
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}
