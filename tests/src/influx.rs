//! A real InfluxDB 1.x for a test (`influxd run -config FILE`, Debian's 1.6), for the gateway's
//! `api = "v1"` output. Always started with a generated config: without one influxd would use /etc and
//! the default ports. InfluxDB 1.x keeps nanoseconds exactly, makes writes queryable at once, and
//! overwrites a point with the same series and timestamp (so replays are idempotent).

use crate::server::{ChildServer, ReadyProbe};
use crate::victoria::http_error;
use crate::{free_port, gzip, HarnessError, Result, READY_TIMEOUT};
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;

/// An influxd child process. Killed on `Drop`.
pub struct Influx1 {
    http_port: u16,
    rpc_port: u16,
    /// `http`, or `https` when started with a certificate.
    scheme: &'static str,
    server: ChildServer,
    agent: ureq::Agent,
    dir: TempDir,
}

impl Influx1 {
    /// Starts influxd with its HTTP API on a free loopback port (and its RPC bind address on another).
    pub fn start() -> Result<Self> {
        Self::start_plain()
    }

    /// The same serving HTTPS with `cert` and `key` (PEM), with `databases` already created.
    /// The harness's own queries ([`Influx1::query`], …) speak plain HTTP, so the databases are
    /// created on a first plain-HTTP run, which is then restarted serving HTTPS on the same port
    /// and data; a test of an HTTPS store then talks to it with its own client.
    pub fn start_https(cert: &Path, key: &Path, databases: &[&str]) -> Result<Self> {
        let mut store = Self::start_plain()?;
        for db in databases {
            store.create_database(db)?;
        }
        store.stop();
        std::fs::write(
            store.dir.path().join("influxdb.conf"),
            config_text(
                store.dir.path(),
                store.http_port,
                store.rpc_port,
                Some((cert, key)),
            ),
        )
        .map_err(|e| HarnessError::io("write influxdb.conf", e))?;
        store.server.set_probe(ReadyProbe::Tcp(store.http_port));
        store.scheme = "https";
        store.server.start(READY_TIMEOUT)?;
        Ok(store)
    }

    fn start_plain() -> Result<Self> {
        let dir = crate::harness_temp_dir("ioc-e2e-influx-")?;
        let mut last_error = None;
        for _attempt in 0..3 {
            let http_port = free_port();
            let rpc_port = free_port();
            let config_path = dir.path().join("influxdb.conf");
            std::fs::write(
                &config_path,
                config_text(dir.path(), http_port, rpc_port, None),
            )
            .map_err(|e| HarnessError::io("write influxdb.conf", e))?;
            let probe = ReadyProbe::Http(format!("http://127.0.0.1:{http_port}/ping"));
            let mut server = ChildServer::new(
                "influxd",
                "influxd",
                vec![
                    "run".into(),
                    "-config".into(),
                    config_path.display().to_string(),
                ],
                dir.path().join("influxd.log"),
                probe,
            );
            match server.start(READY_TIMEOUT) {
                Ok(()) => {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(60))
                        .build();
                    return Ok(Influx1 {
                        http_port,
                        rpc_port,
                        scheme: "http",
                        server,
                        agent,
                        dir,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Timeout("influxd start".into())))
    }

    /// `http://127.0.0.1:PORT` (the gateway's `[output.influxdb] url` with `api = "v1"`), or
    /// `https://…` when started with [`Influx1::start_https`].
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.http_port)
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.http_port
    }

    /// The temp dir (config, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PID of the running server, if running.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }

    /// Graceful stop (SIGTERM), SIGKILL after 15 s.
    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(15));
    }

    /// Starts it again on the same port with the same data.
    pub fn start_again(&mut self) -> Result<()> {
        self.server.start(READY_TIMEOUT)
    }

    /// `stop()` then `start_again()`.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }

    /// `CREATE DATABASE "name"` (idempotent in InfluxDB 1.x).
    pub fn create_database(&self, name: &str) -> Result<()> {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        let answer = self.post_query(None, &format!("CREATE DATABASE \"{escaped}\""))?;
        check_statement_errors(&answer)
    }

    /// Runs an InfluxQL query against `db` with `epoch=ns` (times are integer nanoseconds) and returns
    /// the JSON answer as is: `{"results":[{"statement_id":0,"series":[{"name":..,"columns":[..],
    /// "values":[[..],..]}]}]}`. A statement error is returned as `HarnessError::Http`.
    pub fn query(&self, db: &str, influxql: &str) -> Result<serde_json::Value> {
        let url = format!("{}/query", self.url());
        let answer: serde_json::Value = self
            .agent
            .get(&url)
            .query("db", db)
            .query("epoch", "ns")
            .query("q", influxql)
            .call()
            .map_err(|e| http_error("GET", &url, e))?
            .into_json()
            .map_err(|e| HarnessError::io("read /query answer", e))?;
        check_statement_errors(&answer)?;
        Ok(answer)
    }

    /// Like [`Influx1::query`], but returns the rows of the first series as JSON objects keyed by
    /// column name (empty when the query matched nothing).
    pub fn query_rows(
        &self,
        db: &str,
        influxql: &str,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let answer = self.query(db, influxql)?;
        let mut rows = Vec::new();
        let Some(series) = answer["results"][0]["series"].as_array() else {
            return Ok(rows);
        };
        for s in series {
            let columns: Vec<String> = s["columns"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|v| v.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default();
            for row in s["values"].as_array().into_iter().flatten() {
                let mut map = serde_json::Map::new();
                if let Some(tags) = s["tags"].as_object() {
                    map.extend(tags.clone());
                }
                for (column, value) in columns.iter().zip(row.as_array().into_iter().flatten()) {
                    map.insert(column.clone(), value.clone());
                }
                rows.push(map);
            }
        }
        Ok(rows)
    }

    /// Writes line protocol (nanosecond timestamps) gzip'd to `/write?db=..&precision=ns`.
    pub fn write_line_protocol(&self, db: &str, lines: &str) -> Result<()> {
        let url = format!("{}/write", self.url());
        self.agent
            .post(&url)
            .query("db", db)
            .query("precision", "ns")
            .set("Content-Encoding", "gzip")
            .send_bytes(&gzip(lines.as_bytes()))
            .map_err(|e| http_error("POST", &url, e))?;
        Ok(())
    }

    fn post_query(&self, db: Option<&str>, influxql: &str) -> Result<serde_json::Value> {
        let url = format!("{}/query", self.url());
        let mut request = self.agent.post(&url);
        if let Some(db) = db {
            request = request.query("db", db);
        }
        request
            .send_form(&[("q", influxql)])
            .map_err(|e| http_error("POST", &url, e))?
            .into_json()
            .map_err(|e| HarnessError::io("read /query answer", e))
    }
}

fn check_statement_errors(answer: &serde_json::Value) -> Result<()> {
    let error = answer["error"].as_str().map(str::to_string).or_else(|| {
        answer["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| r["error"].as_str().map(str::to_string))
    });
    match error {
        Some(error) => Err(HarnessError::Http {
            method: "GET",
            url: "/query".into(),
            detail: error,
        }),
        None => Ok(()),
    }
}

fn config_text(dir: &Path, http_port: u16, rpc_port: u16, tls: Option<(&Path, &Path)>) -> String {
    let d = dir.display();
    let https = match tls {
        Some((cert, key)) => format!(
            "  https-enabled = true\n  https-certificate = \"{}\"\n  https-private-key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    format!(
        r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{d}/meta"

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  max-row-limit = 0
{https}
[continuous_queries]
  enabled = false

[subscriber]
  enabled = false
"#
    )
}
