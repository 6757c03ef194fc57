//! The live page in a real headless Chromium (Debian's `chromium`): sensors, values, sparklines
//! and a camera event appear; values pushed over `/api/live` to the open page update its DOM; it
//! stays quick with 1,000 sensors. A screenshot is kept at `target/test-artifacts/live-page.png`.
//!
//! Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (fd 3/4, JSON
//! messages ending in NUL) rather than `--dump-dom --virtual-time-budget`: virtual time never
//! runs out while a server-sent-events stream is open, so a live page can't be dumped that way.
//!
//! Skips, loudly, only when `chromium` is not installed (`apt-get install -y chromium`).

mod http_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use http_common::*;
use ioc_gateway::status::InputKind;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

fn chromium() -> Option<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        for name in ["chromium", "chromium-browser"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium with one page, driven over the DevTools pipe.
struct Browser {
    child: Child,
    to_chrome: ChildStdin,
    from_chrome: BufReader<ChildStdout>,
    next_id: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(artifacts_dir().join("chromium.log")).unwrap();
        // Chromium reads the protocol on fd 3 and writes on fd 4: hand it our pipes there.
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut child = child;
        let to_chrome = child.stdin.take().unwrap();
        let from_chrome = BufReader::new(child.stdout.take().unwrap());
        let mut b = Browser {
            child,
            to_chrome,
            from_chrome,
            next_id: 0,
            session: None,
            _profile: profile,
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        b.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_chrome.write_all(&bytes).await.unwrap();
        self.to_chrome.flush().await.unwrap();
        loop {
            let mut buf = Vec::new();
            let n = tokio::time::timeout(
                Duration::from_secs(30),
                self.from_chrome.read_until(0, &mut buf),
            )
            .await
            .unwrap_or_else(|_| panic!("no answer from chromium to {method} within 30 s"))
            .unwrap();
            assert!(
                n > 0,
                "chromium closed the DevTools pipe (see chromium.log)"
            );
            if buf.last() == Some(&0) {
                buf.pop();
            }
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    async fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls the DOM until `pred` holds (up to `limit`); returns it and how long it took.
    async fn wait_dom(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let dom = self.dom().await;
            if pred(&dom) {
                return (dom, start.elapsed());
            }
            if start.elapsed() > limit {
                let path = artifacts_dir().join("live-page-failed.html");
                std::fs::write(&path, &dom).unwrap();
                panic!(
                    "{what}: not in the DOM within {limit:?}; DOM saved to {}",
                    path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn close(mut self) {
        self.session = None;
        self.call("Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// The `<tr>` of one sensor in the DOM, if present.
fn row<'a>(dom: &'a str, key: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr data-key=\"{key}\""))?;
    let end = dom[start..].find("</tr>")?;
    Some(&dom[start..start + end])
}

fn pm25(i: usize, round: usize) -> f64 {
    (round * 100 + i) as f64 + 0.25
}

fn pm10(i: usize, round: usize) -> i64 {
    (round * 1000 + i) as i64
}

fn sensor(i: usize) -> String {
    format!("s-{i:04}")
}

fn feed(gw: &TestGateway, sensors: std::ops::RangeInclusive<usize>, round: usize) {
    let ts = now_ns();
    for i in sensors {
        let r = air(&sensor(i), pm25(i, round), pm10(i, round), ts);
        publish(&gw.observers, "mqtt-city", &r);
    }
}

/// Every sensor in `range` shows round `round`'s values.
fn shows_round(dom: &str, range: std::ops::RangeInclusive<usize>, round: usize) -> bool {
    range.into_iter().all(|i| {
        row(dom, &format!("{}/air_quality", sensor(i))).is_some_and(|r| {
            r.contains(&format!("<span class=\"fval\">{}</span>", pm25(i, round)))
                && r.contains(&format!("<span class=\"fval\">{}</span>", pm10(i, round)))
        })
    })
}

fn camera_list(dom: &str) -> &str {
    let start = dom.find("<ol id=\"camera-events\">").unwrap();
    let end = dom[start..].find("</ol>").unwrap();
    &dom[start..start + end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_page_in_headless_chromium_shows_and_updates_sensors() {
    let Some(bin) = chromium() else {
        eprintln!("\n\n!!!!! SKIPPED live_page_in_headless_chromium: `chromium` is not installed (apt-get install -y chromium) !!!!!\n\n");
        return;
    };
    let gw = TestGateway::start(None, settings()).await;
    let inputs = &gw.observers.inputs;
    inputs.register("mqtt-city", InputKind::Mqtt, "mqtt://127.0.0.1:1883");
    inputs.set("mqtt-city", true, None);
    inputs.register("pm-port", InputKind::Serial, "/dev/ttyUSB0");
    inputs.set(
        "pm-port",
        false,
        Some("cannot open /dev/ttyUSB0: no such file".into()),
    );
    // Some history for the sparklines, then the values to check.
    for round in [7, 3, 5, 0] {
        feed(&gw, 1..=20, round);
    }
    publish(
        &gw.observers,
        "frigate",
        &camera("cam-7", "person", now_ns()),
    );
    wait_for_sensors(&gw, None, |b| {
        b["sensors_total"] == 21 && b["sensors"][1]["readings"] == 4
    })
    .await;

    let mut browser = Browser::launch(&bin).await;
    browser.navigate(&gw.url("/")).await;

    // 1. Every sensor with its latest values, a sparkline, the camera event, the inputs.
    let (dom, took) = browser
        .wait_dom(
            "20 sensors with their values",
            Duration::from_secs(20),
            |d| shows_round(d, 1..=20, 0) && d.contains("live</span>"),
        )
        .await;
    eprintln!("first render of 20 sensors: {took:?}");
    std::fs::write(artifacts_dir().join("live-page-1.html"), &dom).unwrap();
    let r = row(&dom, "s-0003/air_quality").unwrap();
    assert!(
        r.contains("<td class=\"sensor\" title=\"district=north, sensor_id=s-0003\">s-0003</td>"),
        "{r}"
    );
    assert!(r.contains("<td class=\"input\">mqtt-city</td>"), "{r}");
    assert!(
        // Fresh (not amber): under a minute old.
        r.split("<td class=\"age\">").nth(1).is_some_and(|a| {
            a.split(" s</td>")
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n < 60))
        }),
        "{r}"
    );
    // Four values: a polyline of four points.
    let pts = r.split("<polyline points=\"").nth(1).unwrap();
    let pts = &pts[..pts.find('"').unwrap()];
    assert_eq!(pts.split(' ').count(), 4, "sparkline points {pts}");
    assert!(dom.contains("<span id=\"sensor-count\">21</span>"));
    let cam = camera_list(&dom);
    assert!(cam.contains("<span class=\"cam\">cam-7</span>"), "{cam}");
    assert!(
        cam.contains("label=person score=0.91 zone=crossing"),
        "{cam}"
    );
    // Ready (the MQTT input works) but degraded: the serial port is down, in red, with why.
    assert!(
        dom.contains("<span id=\"ready\" class=\"badge warn\">ready, degraded</span>"),
        "ready badge"
    );
    assert!(
        dom.contains(
            "<li class=\"warning\" data-code=\"serial_port_down\">serial port /dev/ttyUSB0 \
             (input pm-port) down for "
        ),
        "warning listed"
    );
    let port_row = dom
        .split("<tr data-input=\"pm-port\" data-state=\"down\" class=\"input-down\">")
        .nth(1)
        .expect("serial port row shown down");
    let port_row = &port_row[..port_row.find("</tr>").unwrap()];
    assert!(
        port_row.starts_with(
            "<td>pm-port</td><td>serial</td><td>/dev/ttyUSB0</td><td class=\"state down\">DOWN for "
        ),
        "{port_row}"
    );
    assert!(
        port_row.ends_with("<td class=\"error\">cannot open /dev/ttyUSB0: no such file</td>"),
        "{port_row}"
    );
    assert!(
        dom.contains("<tr data-input=\"mqtt-city\" data-state=\"up\" class=\"input-up\">"),
        "MQTT input shown up"
    );
    assert!(dom.contains("<dd id=\"buffer-oldest\" class=\"\">nothing waiting</dd>"));

    // 2. The open page follows /api/live: new values and a new camera event appear.
    feed(&gw, 1..=20, 1);
    publish(
        &gw.observers,
        "frigate",
        &camera("cam-8", "bicycle", now_ns()),
    );
    let (dom, took) = browser
        .wait_dom("updated values", Duration::from_secs(10), |d| {
            shows_round(d, 1..=20, 1) && camera_list(d).contains("cam-8")
        })
        .await;
    eprintln!("live update of 20 sensors shown after {took:?}");
    std::fs::write(artifacts_dir().join("live-page-2.html"), &dom).unwrap();
    let cam = camera_list(&dom);
    assert!(
        cam.find("cam-8").unwrap() < cam.find("cam-7").unwrap(),
        "newest first: {cam}"
    );
    let pts = row(&dom, "s-0003/air_quality")
        .unwrap()
        .split("<polyline points=\"")
        .nth(1)
        .unwrap();
    assert_eq!(pts[..pts.find('"').unwrap()].split(' ').count(), 5);

    // The port comes back: its row turns green, the badge plain ready (status events, 2 s).
    inputs.set("pm-port", true, None);
    browser
        .wait_dom("serial port up", Duration::from_secs(10), |d| {
            d.contains("<tr data-input=\"pm-port\" data-state=\"up\" class=\"input-up\">")
                && d.contains("<span id=\"ready\" class=\"badge ok\">ready</span>")
        })
        .await;
    inputs.set(
        "pm-port",
        false,
        Some("cannot open /dev/ttyUSB0: no such file".into()),
    );

    // 3. A screenshot for people to look at.
    let png = artifacts_dir().join("live-page.png");
    browser.screenshot(&png).await;
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 20_000, "screenshot suspiciously small: {size} bytes");
    eprintln!("screenshot: {}", png.display());

    // 4. 1,000 sensors: all appear, then a full round of 1,000 updates reaches the DOM quickly.
    feed(&gw, 21..=1000, 0);
    let (_, took) = browser
        .wait_dom("1,000 sensors", Duration::from_secs(20), |d| {
            // 1,000 air sensors and the two cameras.
            d.contains("<span id=\"sensor-count\">1002</span>") && shows_round(d, 21..=1000, 0)
        })
        .await;
    eprintln!("1,000 sensors shown after {took:?}");
    let started = Instant::now();
    for round in 2..=4 {
        feed(&gw, 1..=1000, round);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Responsiveness is reported, not asserted (timings belong in benchmarks; CI machines are
    // loaded): every update must reach the DOM, and the page must still answer.
    let (_, _) = browser
        .wait_dom("3 rounds of 1,000 updates", Duration::from_secs(60), |d| {
            shows_round(d, 1..=1000, 4)
        })
        .await;
    let took = started.elapsed();
    eprintln!("3 rounds of 1,000 updates (0.3 s apart) fully shown {took:?} after the first");
    let t = Instant::now();
    assert_eq!(browser.eval("1 + 1").await, json!(2));
    let rtt = t.elapsed();
    eprintln!("evaluate round trip with 1,000 sensors live: {rtt:?}");
    browser
        .screenshot(&artifacts_dir().join("live-page-1000.png"))
        .await;

    // 5. Staleness: with thresholds of 2 s (amber) and 4 s (red), quiet sensors turn amber then
    //    red, and a fresh reading makes one normal again.
    browser.navigate(&gw.url("/?amber_s=2&red_s=4")).await;
    browser
        .wait_dom("reloaded page", Duration::from_secs(10), |d| {
            d.contains("<span id=\"sensor-count\">1002</span>") && d.contains("live</span>")
        })
        .await;
    feed(&gw, 1..=1000, 5);
    // Ages tick once a second from each reading's arrival: wait until the whole batch shows it.
    let aged = |d: &str, class: &str| {
        ["s-0001", "s-0500", "s-1000"].iter().all(|s| {
            row(d, &format!("{s}/air_quality"))
                .is_some_and(|r| r.contains(&format!("<td class=\"{class}\">")))
        })
    };
    browser
        .wait_dom("amber ages", Duration::from_secs(10), |d| {
            aged(d, "age amber")
        })
        .await;
    browser
        .wait_dom("red ages", Duration::from_secs(10), |d| aged(d, "age red"))
        .await;
    feed(&gw, 1..=1, 5);
    browser
        .wait_dom("fresh again", Duration::from_secs(5), |d| {
            row(d, "s-0001/air_quality").is_some_and(|r| r.contains("<td class=\"age\">"))
        })
        .await;

    browser.close().await;
    gw.stop().await;
}
