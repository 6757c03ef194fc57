//! Shared set-up for the HTTP tests: a real disk buffer, real observers, the server on a free
//! port, and small HTTP helpers.
#![allow(dead_code)]

use ioc_gateway::shutdown::Shutdown;
use std::net::SocketAddr;
use std::time::Duration;

use ioc_gateway::buffer::{self, BufferConfig, BufferReader, BufferWriter};
use ioc_gateway::config::Secret;
use ioc_gateway::http::{install_metrics_recorder, HttpError, HttpServer, HttpSettings};
use ioc_gateway::model::{FieldValue, Reading};
use ioc_gateway::status::Observers;
use tokio::task::JoinHandle;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub observers: Observers,
    pub writer: BufferWriter,
    pub reader: BufferReader,
    stop: Shutdown,
    task: Option<JoinHandle<Result<(), HttpError>>>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    pub async fn start(token: Option<&str>, settings: HttpSettings) -> TestGateway {
        let metrics = install_metrics_recorder();
        ioc_gateway::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader, _report) =
            buffer::open(BufferConfig::new(dir.path().join("buffer"), 64 << 20)).unwrap();
        let observers = Observers::new("gw-test".to_owned(), writer.clone());
        let server = HttpServer::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr();
        let stop = Shutdown::new();
        let stop_rx = stop.clone();
        let task = tokio::spawn(server.run(
            token.map(Secret::new),
            observers.clone(),
            metrics,
            settings,
            stop_rx,
        ));
        // Once /healthz answers, the server runs and its board follows the live feed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        TestGateway {
            addr,
            observers,
            writer,
            reader,
            stop,
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server and checks it ended cleanly and promptly.
    pub async fn stop(mut self) {
        self.stop.trigger();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("server did not stop within 5 s of shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

pub fn settings() -> HttpSettings {
    HttpSettings::new(Duration::from_secs(30), 64 << 20)
}

/// GET with an optional bearer token: (status, body).
pub async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    ioc_gateway::tls::install_crypto_provider();
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap())
}

pub async fn get_json(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (code, body) = get(url, token).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"));
    (code, v)
}

pub fn air(sensor: &str, pm25: f64, pm10: i64, ts_ns: i64) -> Reading {
    Reading::new("air_quality", ts_ns)
        .tag("sensor_id", sensor)
        .tag("district", "north")
        .field("pm25", FieldValue::Float(pm25))
        .field("pm10", FieldValue::Int(pm10))
}

pub fn camera(camera: &str, label: &str, ts_ns: i64) -> Reading {
    Reading::new("camera_event", ts_ns)
        .tag("camera", camera)
        .tag("zone", "crossing")
        .field("label", FieldValue::Str(label.to_owned()))
        .field("score", FieldValue::Float(0.91))
}

/// What the ingest path does with a committed reading while someone watches: its line protocol
/// offered to the live feed (armed first, as a page or `/api/sensors` request would).
pub fn publish(observers: &Observers, input: &str, reading: &Reading) {
    observers.live.watch();
    let mut lines = Vec::new();
    ioc_gateway::model::encode(reading, ioc_gateway::model::Flavor::V2, &mut lines);
    observers.live.offer(input, &lines);
}

/// Polls `/api/sensors` until `pred` holds (up to 5 s) and returns the body.
pub async fn wait_for_sensors(
    gw: &TestGateway,
    token: Option<&str>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = get_json(&gw.url("/api/sensors"), token).await;
        assert_eq!(code, 200, "{body}");
        if pred(&body) {
            return body;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not met within 5 s; last /api/sensors: {body:#}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn now_ns() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}
