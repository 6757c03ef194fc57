//! The HTTP API against a real server, buffer and metrics recorder: token, /metrics parsed by a
//! Prometheus-format parser, /readyz reasons, /api/sensors content, the live SSE stream, the
//! `status` command, and that no secret appears in any of them.

mod http_common;

use std::time::Duration;

use http_common::*;
use ioc_gateway::config::Secret;
use ioc_gateway::http::{HttpError, HttpServer};
use ioc_gateway::model::Priority;
use ioc_gateway::output::Flavor;
use ioc_gateway::pipeline::Ingest;
use ioc_gateway::status::InputKind;
use serde_json::json;

const TOKEN: &str = "t0k3n-Very-Secret";

#[tokio::test]
async fn token_required_on_every_route_but_healthz() {
    let gw = TestGateway::start(Some(TOKEN), settings()).await;
    let (code, body) = get_json(&gw.url("/healthz"), None).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "alive");
    // Which build this box runs, without a token.
    assert_eq!(body["version"], ioc_gateway::build_info::VERSION);
    assert_eq!(body["commit"], ioc_gateway::build_info::COMMIT);

    for path in [
        "/",
        "/readyz",
        "/metrics",
        "/api/sensors",
        "/api/live",
        "/assets/app.js",
    ] {
        let (code, body) = get_json(&gw.url(path), None).await;
        assert_eq!(code, 401, "{path} without a token");
        assert_eq!(body["error"], "missing token", "{path}");
        let (code, body) = get_json(&gw.url(path), Some("wrong")).await;
        assert_eq!(code, 401, "{path} with a wrong token");
        assert_eq!(body["error"], "invalid token", "{path}");
    }
    // A 401 offers Basic so that a browser prompts.
    let resp = reqwest::get(gw.url("/")).await.unwrap();
    let challenges: Vec<&str> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        [
            "Bearer realm=\"ioc-gateway\"",
            "Basic realm=\"ioc-gateway\", charset=\"UTF-8\""
        ]
    );
    for path in ["/", "/metrics", "/api/sensors", "/assets/app.js"] {
        let (code, _) = get(&gw.url(path), Some(TOKEN)).await;
        assert_eq!(code, 200, "{path} with the token");
    }
    // Browsers: Basic auth with the token as the password.
    let resp = reqwest::Client::new()
        .get(gw.url("/api/sensors"))
        .basic_auth("operator", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (code, _) = get(&gw.url("/readyz"), Some(TOKEN)).await;
    assert_eq!(code, 503, "no input: authenticated but not ready");
    gw.stop().await;
}

fn sample_value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected value {other:?}"),
        })
}

async fn scrape(gw: &TestGateway) -> prometheus_parse::Scrape {
    let (code, text) = get(&gw.url("/metrics"), None).await;
    assert_eq!(code, 200);
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// Every metric of the catalogue, touched with its labels, shows on `/metrics` under
/// `ioc_gateway_<name>` with its type and its `# HELP` text, and nothing on the page lacks
/// either (the e2e tests check the same on a real run's page).
#[tokio::test]
async fn every_metric_on_metrics_has_the_prefix_type_and_help() {
    use ioc_gateway::metrics_catalog::{Kind, CATALOG};
    let gw = TestGateway::start(None, settings()).await;
    for m in CATALOG {
        let labels: Vec<metrics::Label> = m
            .labels
            .iter()
            .map(|k| metrics::Label::new(*k, "catalogue-test"))
            .collect();
        // Registered, values untouched: the other tests of this binary read some of them.
        match m.kind {
            Kind::Counter => drop(metrics::counter!(m.name, labels)),
            Kind::Gauge => drop(metrics::gauge!(m.name, labels)),
            Kind::Histogram => drop(metrics::histogram!(m.name, labels)),
        }
    }
    let (code, text) = get(&gw.url("/metrics"), None).await;
    assert_eq!(code, 200);
    let problems = ioc_e2e::metrics_page_problems(&text);
    assert!(problems.is_empty(), "{}\n{text}", problems.join("\n"));
    for m in CATALOG {
        let name = m.exported_name();
        let help = format!("# HELP {name} {}\n", m.help);
        let kind = format!("# TYPE {name} {}\n", m.kind.as_str());
        assert!(text.contains(&help), "{help:?} not on /metrics:\n{text}");
        assert!(text.contains(&kind), "{kind:?} not on /metrics:\n{text}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn metrics_parse_and_counters_move_with_readings_and_rejects() {
    let gw = TestGateway::start(None, settings()).await;
    gw.observers
        .inputs
        .register("metrics-in", InputKind::Mqtt, "mqtt://127.0.0.1:1883");
    gw.observers.inputs.set("metrics-in", true, None);
    let ingest = Ingest::with_observers(
        gw.writer.clone(),
        "gw-test",
        Flavor::V2,
        gw.observers.live.clone(),
        gw.observers.inputs.clone(),
    );

    let before = scrape(&gw).await;
    assert_eq!(
        sample_value(
            &before,
            "ioc_gateway_build_info",
            &[
                ("version", ioc_gateway::build_info::VERSION),
                ("commit", ioc_gateway::build_info::COMMIT)
            ]
        ),
        Some(1.0),
        "ioc_gateway_build_info{{version,commit}} 1"
    );
    let accepted = |s: &prometheus_parse::Scrape| {
        sample_value(
            s,
            "ioc_gateway_readings_accepted_total",
            &[("input", "metrics-in")],
        )
        .unwrap_or(0.0)
    };
    let rejected = |s: &prometheus_parse::Scrape| {
        sample_value(
            s,
            "ioc_gateway_readings_rejected_total",
            &[("input", "metrics-in"), ("reason", "non_finite")],
        )
        .unwrap_or(0.0)
    };
    let ts = now_ns();
    let mut lp = Vec::new();
    let lines = ingest.encode(
        "metrics-in",
        vec![
            air("m-1", 1.5, 3, ts),
            air("m-2", 2.5, 4, ts),
            air("m-3", f64::NAN, 5, ts),
        ],
        &mut lp,
    );
    assert_eq!(lines, 2);
    ingest.commit(Priority::Normal, lines, lp).await.unwrap();
    // Nothing in this test binary writes to a store: these are the only samples.
    metrics::histogram!("output_write_seconds").record(0.03);
    metrics::histogram!("output_write_seconds").record(0.2);

    let after = scrape(&gw).await;
    assert_eq!(accepted(&after), accepted(&before) + 2.0);
    assert_eq!(rejected(&after), rejected(&before) + 1.0);
    assert_eq!(
        sample_value(
            &after,
            "ioc_gateway_input_up",
            &[("input", "metrics-in"), ("kind", "mqtt")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&after, "ioc_gateway_buffer_unsent_lines", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample_value(&after, "ioc_gateway_buffer_max_bytes", &[]),
        Some(f64::from(64u32 << 20))
    );
    let age = sample_value(&after, "ioc_gateway_buffer_oldest_unsent_age_seconds", &[]).unwrap();
    assert!((0.0..5.0).contains(&age), "oldest unsent age {age}");
    assert_eq!(sample_value(&after, "ioc_gateway_ready", &[]), Some(1.0));
    // Histograms are real Prometheus histograms with buckets.
    let hist = after
        .samples
        .iter()
        .find(|s| s.metric == "ioc_gateway_output_write_seconds")
        .expect("histogram present");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let at = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
            assert_eq!(at(0.025), 0.0);
            assert_eq!(at(0.05), 1.0);
            assert_eq!(at(0.25), 2.0);
            assert_eq!(at(f64::INFINITY), 2.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // Nobody watched: the live board was not fed (the ingest path did nothing for it).
    assert!(!gw.observers.live.is_armed());
    let (_, body) = get_json(&gw.url("/api/sensors"), None).await;
    assert_eq!(body["sensors_total"], 0, "{body}");
    // That request armed it: what is accepted from now on reaches the board.
    assert!(gw.observers.live.is_armed());
    let mut lp = Vec::new();
    let lines = ingest.encode(
        "metrics-in",
        vec![air("m-1", 1.5, 3, ts + 1), air("m-2", 2.5, 4, ts + 1)],
        &mut lp,
    );
    ingest.commit(Priority::Normal, lines, lp).await.unwrap();
    let body = wait_for_sensors(&gw, None, |b| b["sensors_total"] == 2).await;
    assert_eq!(body["sensors"][0]["key"], "m-1/air_quality");
    assert_eq!(body["sensors"][1]["fields"]["pm25"]["value"], 2.5);
    assert_eq!(body["sensors"][1]["fields"]["pm10"]["value"], 4);
    assert_eq!(body["sensors"][1]["input"], "metrics-in");
    assert!(body["live_since_ms"].as_u64().is_some(), "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn readyz_reasons_and_store_going_away() {
    let mut s = settings();
    s.store_unreachable_after = Duration::from_secs(1);
    let gw = TestGateway::start(None, s).await;
    let started = tokio::time::Instant::now();
    let ready = |v: &serde_json::Value| -> Vec<String> {
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["code"].as_str().unwrap().to_owned())
            .collect()
    };

    let (code, body) = get_json(&gw.url("/readyz"), None).await;
    assert_eq!((code, ready(&body)), (503, vec!["no_input".to_owned()]));
    assert_eq!(body["ready"], false);

    let inputs = &gw.observers.inputs;
    inputs.register("mqtt-0", InputKind::Mqtt, "mqtt://user:hunter2@broker:1883");
    inputs.set(
        "mqtt-0",
        false,
        Some("cannot connect to mqtt://user:hunter2@broker:1883: refused".into()),
    );
    let (code, body) = get_json(&gw.url("/readyz"), None).await;
    assert_eq!(
        (code, ready(&body)),
        (503, vec!["no_input_connected".to_owned()])
    );
    assert_eq!(
        body["reasons"][0]["message"],
        "no input connected: mqtt-0 down for 0 s (cannot connect to mqtt://***@broker:1883: refused)"
    );

    inputs.set("mqtt-0", true, None);
    let (code, body) = get_json(&gw.url("/readyz"), None).await;
    assert_eq!(
        (code, body),
        (200, json!({"ready": true, "reasons": [], "warnings": []}))
    );

    // Data waits and the store has never confirmed anything since start.
    let store = gw.observers.outputs.register("default");
    gw.writer
        .append(Priority::Normal, 3, b"a v=1 1\na v=2 2\na v=3 3\n".to_vec())
        .await
        .unwrap();
    tokio::time::sleep_until(started + Duration::from_millis(1100)).await;
    let (code, body) = get_json(&gw.url("/readyz"), None).await;
    assert_eq!(
        (code, ready(&body)),
        (503, vec!["store_unreachable".to_owned()])
    );

    // The store confirms a batch: ready again although lines still wait.
    store.delivered(3);
    let (code, _) = get_json(&gw.url("/readyz"), None).await;
    assert_eq!(code, 200);

    // The store goes away: failures, nothing confirmed for over 1 s while data waits.
    store.failed("HTTP 503 from http://admin:hunter2@db:8086/write".into());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, body) = get_json(&gw.url("/readyz"), None).await;
    assert_eq!(
        (code, ready(&body)),
        (503, vec!["store_unreachable".to_owned()])
    );
    assert_eq!(
        body["reasons"][0]["message"],
        "store unreachable: no batch confirmed for 1 s while 3 lines wait \
         (last error: HTTP 503 from http://***@db:8086/write)"
    );
    // No secret leaks through the status API either.
    let (_, sensors) = get(&gw.url("/api/sensors"), None).await;
    assert!(!sensors.contains("hunter2"), "{sensors}");
    assert!(sensors.contains("mqtt://***@broker:1883"), "{sensors}");
    let (_, metrics) = get(&gw.url("/metrics"), None).await;
    assert!(!metrics.contains("hunter2"));
    gw.stop().await;
}

#[tokio::test]
async fn readyz_buffer_over_80_percent() {
    let mut s = settings();
    s.buffer_max_bytes = 300;
    let gw = TestGateway::start(None, s).await;
    gw.observers
        .inputs
        .register("in", InputKind::Serial, "/dev/ttyUSB0");
    gw.observers.inputs.set("in", true, None);
    assert_eq!(gw.writer.stats().disk_bytes, 0);
    let (code, _) = get_json(&gw.url("/readyz"), None).await;
    assert_eq!(code, 200);
    let mut lp = Vec::new();
    for i in 0..100 {
        lp.extend_from_slice(format!("air,sensor_id=s{i} pm25=1.5 {i}\n").as_bytes());
    }
    gw.writer.append(Priority::Normal, 100, lp).await.unwrap();
    // Records are compressed on disk: take the size the buffer reports.
    let disk = gw.writer.stats().disk_bytes;
    assert!(disk > 240, "disk bytes {disk}");
    let (code, body) = get_json(&gw.url("/readyz"), None).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["reasons"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["reasons"][0]["code"], "buffer_nearly_full");
    assert_eq!(
        body["reasons"][0]["message"],
        format!(
            "buffer {:.0} % full ({disk} of 300 bytes); the oldest data is dropped at 100 %",
            disk as f64 / 3.0
        )
    );
    gw.stop().await;
}

#[tokio::test]
async fn api_sensors_shows_latest_values_inputs_buffer_and_camera_events() {
    let gw = TestGateway::start(Some(TOKEN), settings()).await;
    gw.observers
        .inputs
        .register("mqtt-a", InputKind::Mqtt, "mqtt://127.0.0.1:1883");
    gw.observers.inputs.set("mqtt-a", true, None);
    let ts = 1_764_000_000_000_000_000;
    publish(&gw.observers, "mqtt-a", &air("s-1", 10.5, 19, ts));
    publish(&gw.observers, "mqtt-a", &air("s-2", 7.0, 9, ts));
    publish(
        &gw.observers,
        "mqtt-a",
        &air("s-1", 11.25, 20, ts + 1_000_000_000),
    );
    publish(&gw.observers, "frigate", &camera("cam-3", "person", ts));
    let body = wait_for_sensors(&gw, Some(TOKEN), |b| {
        b["sensors_total"] == 3 && b["sensors"][1]["readings"] == 2
    })
    .await;
    let keys: Vec<&str> = body["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["cam-3/camera_event", "s-1/air_quality", "s-2/air_quality"]
    );
    let s1 = &body["sensors"][1];
    assert_eq!(s1["sensor_id"], "s-1");
    assert_eq!(s1["input"], "mqtt-a");
    assert_eq!(s1["tags"], json!({"district": "north", "sensor_id": "s-1"}));
    assert_eq!(s1["ts_ms"], 1_764_000_001_000i64);
    assert_eq!(
        s1["fields"]["pm25"],
        json!({"value": 11.25, "history": [10.5, 11.25]})
    );
    assert_eq!(
        s1["fields"]["pm10"],
        json!({"value": 20, "history": [19.0, 20.0]})
    );
    let age = body["now_ms"].as_u64().unwrap() - s1["received_ms"].as_u64().unwrap();
    assert!(age < 5000, "age {age}");
    assert_eq!(
        body["camera_events"][0]["fields"],
        json!({"label": "person", "score": 0.91})
    );
    assert_eq!(body["camera_events"][0]["input"], "frigate");
    assert_eq!(body["inputs"]["mqtt-a"]["up"], true);
    assert_eq!(body["inputs"]["mqtt-a"]["kind"], "mqtt");
    assert_eq!(body["buffer"]["max_bytes"], 64 << 20);
    assert_eq!(body["buffer"]["unsent_lines"], 0);
    assert_eq!(body["store"]["batches_sent"], 0);
    assert_eq!(body["gateway_id"], "gw-test");
    assert_eq!(body["ready"]["ready"], true);
    gw.stop().await;
}

/// Reads the SSE stream until a complete `event: reading` block arrives; returns (events seen
/// before it, its data).
async fn next_reading(resp: &mut reqwest::Response, buf: &mut String) -> serde_json::Value {
    loop {
        if let Some(start) = buf.find("event: reading\n") {
            if let Some(end) = buf[start..].find("\n\n") {
                let block = buf[start..start + end].to_owned();
                buf.replace_range(..start + end + 2, "");
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("data line");
                return serde_json::from_str(data).unwrap();
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("no SSE event within 5 s")
            .unwrap()
            .expect("stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn live_stream_delivers_filtered_readings_and_ends_on_shutdown() {
    let gw = TestGateway::start(None, settings()).await;
    let mut resp = reqwest::get(gw.url("/api/live?measurement=air_quality&sensor=s-2"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let ts = now_ns();
    publish(&gw.observers, "mqtt-a", &air("s-1", 1.0, 1, ts));
    publish(&gw.observers, "frigate", &camera("s-2", "car", ts));
    publish(&gw.observers, "mqtt-a", &air("s-2", 42.5, 77, ts));
    publish(&gw.observers, "mqtt-a", &air("s-2", 43.5, 78, ts));
    let mut buf = String::new();
    let ev = next_reading(&mut resp, &mut buf).await;
    assert_eq!(ev["key"], "s-2/air_quality");
    assert_eq!(ev["input"], "mqtt-a");
    assert_eq!(ev["fields"], json!({"pm10": 77, "pm25": 42.5}));
    assert_eq!(ev["ts_ms"], ts / 1_000_000);
    let ev = next_reading(&mut resp, &mut buf).await;
    assert_eq!(ev["fields"]["pm25"], 43.5);

    // Unfiltered, with status events.
    let mut all = reqwest::get(gw.url("/api/live?status=1")).await.unwrap();
    publish(&gw.observers, "frigate", &camera("cam-1", "bicycle", ts));
    let mut buf2 = String::new();
    let ev = next_reading(&mut all, &mut buf2).await;
    assert_eq!(ev["measurement"], "camera_event");
    assert_eq!(ev["fields"]["label"], "bicycle");
    // A status event follows within ~2 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !buf2.contains("event: status\n") {
        assert!(tokio::time::Instant::now() < deadline, "no status event");
        if let Ok(Ok(Some(c))) = tokio::time::timeout(Duration::from_secs(1), all.chunk()).await {
            buf2.push_str(std::str::from_utf8(&c).unwrap());
        }
    }
    // Shutdown ends open streams instead of hanging (checked inside stop()).
    gw.stop().await;
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "stream did not end at shutdown");
}

#[tokio::test]
async fn status_command_prints_a_summary_without_secrets() {
    let gw = TestGateway::start(Some(TOKEN), settings()).await;
    gw.observers.inputs.register(
        "mqtt-0",
        InputKind::Mqtt,
        "mqtts://user:hunter2@broker:8883",
    );
    gw.observers.inputs.set("mqtt-0", true, None);
    gw.observers
        .inputs
        .register("pm-port", InputKind::Serial, "/dev/ttyUSB0");
    let ts = now_ns();
    publish(&gw.observers, "mqtt-0", &air("s-9", 3.0, 4, ts));
    wait_for_sensors(&gw, Some(TOKEN), |b| b["sensors_total"] == 1).await;
    let base = format!("http://{}", gw.addr);

    let err = ioc_gateway::cli::status::status(&base, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the gateway at {base} requires a token: pass --token-env VAR naming a variable that holds it")
    );
    let text = ioc_gateway::cli::status::status(&format!("{base}/"), Some(Secret::new(TOKEN)))
        .await
        .unwrap();
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("gateway gw-test at {base}: READY, DEGRADED (up ")),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "  warning: serial port /dev/ttyUSB0 (input pm-port) down for 0 s: not connected yet",
        "{text}"
    );
    assert!(text.contains("\nInputs:\n"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  mqtt-0   mqtt    UP   since ")
                && l.ends_with("mqtts://***@broker:8883")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  pm-port  serial  DOWN since ")),
        "{text}"
    );
    assert!(
        text.contains("Buffer:  0 unsent readings (0 urgent), oldest unsent none waiting"),
        "{text}"
    );
    assert!(
        text.contains(
            "Store:   last batch confirmed never; 0 batches, 0 lines sent; last error: none"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Sensors: 1 reporting since start\n  stalest:\n    s-9/air_quality  last seen "
        ),
        "{text}"
    );
    assert!(text.ends_with(" s ago via mqtt-0\n"), "{text}");
    assert!(!text.contains("hunter2") && !text.contains(TOKEN), "{text}");
    gw.stop().await;

    let err = ioc_gateway::cli::status::status(&base, None)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").starts_with(&format!("cannot reach the gateway at {base}")),
        "{err:#}"
    );
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    match HttpServer::bind(&addr).await {
        Err(e @ HttpError::Bind { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("cannot listen on {addr} for the HTTP server: ")),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bound a taken port"),
    }
}
