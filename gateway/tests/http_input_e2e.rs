//! `[[inputs.http]]` end to end: the real gateway binary, webhooks posted over real sockets,
//! readings read back from a real VictoriaMetrics.
//!
//! What each test shows:
//! - `json_webhooks_plain_gzip_and_multipart_are_stored_exactly`: the same vendor payload posted
//!   as plain JSON, gzip'd, and as the JSON part of a multipart body beside a JPEG part; each
//!   stored with its exact values and timestamp, the image nowhere;
//! - `every_webhook_answered_204_survives_kill_9`: 10,000 webhooks posted by keep-alive clients
//!   that retry on any error or missing answer, while the gateway is killed with SIGKILL and
//!   restarted; every webhook that got a `204` is in the store;
//! - `bad_webhooks_get_their_status_reason_and_counter_and_nothing_else_is_lost`: each kind of
//!   bad input with its status, reason and `ioc_gateway_readings_rejected_total` label, a good webhook after
//!   each one stored;
//! - `a_full_disk_answers_503_with_retry_after`: ENOSPC on a 4 MiB tmpfs (root only; skipped
//!   otherwise, saying so);
//! - `https_webhook_with_a_certificate_from_the_test_pki`: HTTPS with a cert from `ioc_e2e::Pki`;
//! - `check_config_names_two_inputs_on_one_address_and_path`.
//!
//! The payload is Verkada's LPR webhook, as its API reference shows it
//! (https://apidocs.verkada.com/reference/lpr, "Sample Notification Webhook Object"), decoded by
//! `format = "json"`: `created_at` (Unix seconds) is the time, `webhook_id` a tag, numbers under
//! `data` fields (`data_confidence`, `data_detected`, ...).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ioc_e2e::{
    free_port, gateway_metrics, gzip, metric_in, wait_until, GatewayProcess, HeavyTestLock,
    VictoriaMetrics, WebhookClient,
};

const PATH: &str = "/webhook/lpr";
const INPUT: &str = "lpr-hooks";

/// Verkada's sample LPR webhook with `webhook_id`, `created_at` and `confidence` set per test.
fn verkada_lpr(webhook_id: &str, created_at: i64, confidence: f64) -> String {
    format!(
        r#"{{
  "org_id": "8b0f904a-998c-4cef-a664-630846dfc68e",
  "webhook_type": "lpr",
  "created_at": {created_at},
  "webhook_id": "{webhook_id}",
  "data": {{
    "camera_id": "b018c3c4-f1e9-424e-b911-c09c5fdab0b7",
    "created": 1742259177,
    "detected": 1742259179426,
    "license_plate_number": "ABC123",
    "confidence": {confidence},
    "crop": [0.9553524851799011, 0.991522490978241, 0.11374980956315994, 0.15500019490718842],
    "image_url": "IMAGE_URL"
  }}
}}"#
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    hook_port: u16,
    http_port: u16,
}

/// A gateway config with one webhook input; `extra` goes into the `[[inputs.http]]` table.
fn setup(vm: &VictoriaMetrics, data_dir: Option<&Path>, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("data"));
    let (hook_port, http_port) = (free_port(), free_port());
    let text = format!(
        r#"# written by gateway/tests/http_input_e2e.rs
[gateway]
id = "http-gw"
data_dir = "{data}"

[[inputs.http]]
name = "{INPUT}"
listen = "127.0.0.1:{hook_port}"
path = "{PATH}"
format = "json"
measurement = "lpr"
timestamp_field = "created_at"
timestamp_unit = "s"
tag_keys = ["webhook_id"]
tags = {{ site = "north-gate" }}
{extra}

[output.influxdb]
url = "{vm}"
api = "v2"
org = "ioc"
bucket = "telemetry"
flush_interval_ms = 100

[http]
listen = "127.0.0.1:{http_port}"
"#,
        data = data.display(),
        vm = vm.url(),
    );
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, text).unwrap();
    Setup {
        _dir: dir,
        config,
        hook_port,
        http_port,
    }
}

fn wait_listening(port: u16, gateway: &GatewayProcess) {
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the webhook input never listened:\n{}",
        gateway.log_tail(40)
    );
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// `lpr_data_confidence` of `webhook_id` in the store: (timestamp ms, value) pairs.
fn stored(vm: &VictoriaMetrics, webhook_id: &str) -> Vec<(i64, f64)> {
    vm.force_flush().unwrap();
    vm.export(&format!(
        r#"{{__name__="lpr_data_confidence",webhook_id="{webhook_id}"}}"#
    ))
    .unwrap()
    .into_iter()
    .flat_map(|s| s.timestamps_ms.into_iter().zip(s.values))
    .collect()
}

fn wait_stored(vm: &VictoriaMetrics, webhook_id: &str, want: &[(i64, f64)]) {
    let ok = wait_until(Duration::from_secs(20), || stored(vm, webhook_id) == want);
    assert!(
        ok,
        "webhook {webhook_id}: store holds {:?}, expected {want:?}",
        stored(vm, webhook_id)
    );
}

/// A multipart/form-data body as Plate Recognizer Stream sends a webhook with its image: the JSON
/// as the `json` field, the snapshot as the `upload` file part.
fn multipart(boundary: &str, json: &str, jpeg: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"json\"\r\n\r\n{json}\r\n")
            .as_bytes(),
    );
    b.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"snapshot.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes());
    b.extend_from_slice(jpeg);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

/// A multipart body holding only an image part.
fn image_only_form(boundary: &str, jpeg: &[u8]) -> Vec<u8> {
    let mut b = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"snapshot.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").into_bytes();
    b.extend_from_slice(jpeg);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

/// Bytes shaped like a baseline JPEG (SOI, a JFIF APP0 segment, filler, EOI): the input never
/// looks inside it, only drops it.
fn jpeg_bytes() -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    j.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    j.extend((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

#[test]
fn json_webhooks_plain_gzip_and_multipart_are_stored_exactly() {
    let vm = VictoriaMetrics::start().unwrap();
    let s = setup(&vm, None, "");
    let mut gateway = GatewayProcess::spawn(&s.config).unwrap();
    wait_listening(s.hook_port, &gateway);
    let mut client = WebhookClient::new(s.hook_port);

    // Verkada's sample has 0.9558042857142857; VictoriaMetrics keeps 12 significant digits.
    let plain = verkada_lpr("plain-1", 1_742_259_179, 0.955804285714);
    let r = client.post(PATH, &[JSON], plain.as_bytes()).unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (204, ""),
        "{}",
        gateway.log_tail(20)
    );

    let zipped = gzip(verkada_lpr("gzip-1", 1_742_259_180, 0.75).as_bytes());
    let r = client
        .post(PATH, &[JSON, ("Content-Encoding", "gzip")], &zipped)
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);

    let jpeg = jpeg_bytes();
    let form = multipart(
        "------------------------d74496d66958873e",
        &verkada_lpr("multipart-1", 1_742_259_181, 0.5),
        &jpeg,
    );
    let ct = "multipart/form-data; boundary=------------------------d74496d66958873e";
    let r = client.post(PATH, &[("Content-Type", ct)], &form).unwrap();
    assert_eq!(r.status, 204, "{}", r.body);

    wait_stored(&vm, "plain-1", &[(1_742_259_179_000, 0.955804285714)]);
    wait_stored(&vm, "gzip-1", &[(1_742_259_180_000, 0.75)]);
    wait_stored(&vm, "multipart-1", &[(1_742_259_181_000, 0.5)]);
    // Every field of the payload, with its tags, and nothing from the image.
    let all = vm.export(r#"{webhook_id="multipart-1"}"#).unwrap();
    let names: BTreeSet<&str> = all.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            // String fields too: VictoriaMetrics keeps a series for each.
            "lpr_data_camera_id",
            "lpr_data_image_url",
            "lpr_data_license_plate_number",
            "lpr_org_id",
            "lpr_webhook_type",
            "lpr_data_confidence",
            "lpr_data_created",
            "lpr_data_crop_0",
            "lpr_data_crop_1",
            "lpr_data_crop_2",
            "lpr_data_crop_3",
            "lpr_data_detected",
        ])
    );
    for series in &all {
        assert_eq!(series.label("site"), Some("north-gate"));
        assert_eq!(series.label("gateway"), Some("http-gw"));
        assert_eq!(series.timestamps_ms, vec![1_742_259_181_000]);
    }
    let detected = all
        .iter()
        .find(|s| s.name() == "lpr_data_detected")
        .unwrap();
    assert_eq!(detected.values, vec![1_742_259_179_426.0]);
    let metrics = gateway_metrics(s.http_port);
    // The page of a real run with a webhook input: every family prefixed and documented.
    let problems = ioc_e2e::metrics_page_problems(&metrics);
    assert!(
        problems.is_empty(),
        "/metrics: {}\n{metrics}",
        problems.join("\n")
    );
    assert_eq!(
        metric_in(
            &metrics,
            "ioc_gateway_http_input_requests_total",
            &[("input", INPUT), ("status", "204")]
        ),
        3.0
    );
    assert_eq!(
        metric_in(
            &metrics,
            "ioc_gateway_readings_accepted_total",
            &[("input", INPUT)]
        ),
        3.0
    );
    // The input shows like the others.
    let (code, sensors) =
        ioc_e2e::http_get(&format!("http://127.0.0.1:{}/api/sensors", s.http_port));
    assert_eq!(code, 200);
    let sensors: serde_json::Value = serde_json::from_str(&sensors).unwrap();
    let me = find_input(&sensors, INPUT).unwrap_or_else(|| panic!("{INPUT} not in {sensors}"));
    assert_eq!(me["kind"], "http", "{me}");
    assert_eq!(me["up"], true, "{me}");
    // The ordered shutdown stops the input cleanly.
    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status}\n{}", gateway.log_tail(20));
}

/// The input named `name` in `/api/sensors`, wherever that lists inputs.
fn find_input<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(found) = m.get(name).filter(|x| x.get("kind").is_some()) {
                return Some(found);
            }
            if m.get("name").and_then(|n| n.as_str()) == Some(name) && m.get("kind").is_some() {
                return Some(v);
            }
            m.values().find_map(|x| find_input(x, name))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_input(x, name)),
        _ => None,
    }
}

#[test]
fn every_webhook_answered_204_survives_kill_9() {
    const WEBHOOKS: u64 = 10_000;
    const CLIENTS: u64 = 4;
    const BASE_S: i64 = 1_742_000_000;
    let _heavy = HeavyTestLock::acquire();
    let vm = VictoriaMetrics::start().unwrap();
    // One series: `seq` is the webhook's unique id, its timestamp BASE + id seconds.
    let s = setup(&vm, None, "");
    let mut gateway = GatewayProcess::spawn(&s.config).unwrap();
    wait_listening(s.hook_port, &gateway);

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let retries = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (acked, retries, port) = (acked.clone(), retries.clone(), s.hook_port);
        clients.push(std::thread::spawn(move || {
            let mut client = WebhookClient::new(port);
            for id in (c..WEBHOOKS).step_by(CLIENTS as usize) {
                let body = format!(
                    r#"{{"webhook_id":"durability","created_at":{},"data":{{"seq":{id}}}}}"#,
                    BASE_S + id as i64
                );
                loop {
                    match client.post(PATH, &[JSON], body.as_bytes()) {
                        Ok(r) if r.status == 204 => {
                            acked.lock().unwrap().insert(id);
                            break;
                        }
                        // Anything but "stored" or "retry later" is a bug of this test.
                        Ok(r) if r.status != 503 => panic!("webhook {id}: {} {}", r.status, r.body),
                        _ => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            }
        }));
    }
    // Kill -9 and restart while the clients post: at every tenth of the webhooks acknowledged
    // (up to eight times), so the number of kills does not depend on how fast this machine is.
    const KILLS: u64 = 8;
    let mut kills = 0;
    let started = Instant::now();
    while clients.iter().any(|c| !c.is_finished()) {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "clients stuck"
        );
        std::thread::sleep(Duration::from_millis(5));
        let done = acked.lock().unwrap().len() as u64;
        if kills < KILLS && done >= (kills + 1) * WEBHOOKS / (KILLS + 2) {
            gateway.kill9();
            kills += 1;
            std::thread::sleep(Duration::from_millis(100));
            gateway.start_again().unwrap();
        }
    }
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len() as u64,
        WEBHOOKS,
        "every webhook is 204'd in the end"
    );
    let stored_seq = || -> BTreeSet<u64> {
        vm.force_flush().unwrap();
        vm.export(r#"{__name__="lpr_data_seq",webhook_id="durability"}"#)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.values)
            .map(|v| v as u64)
            .collect()
    };
    let ok = wait_until(Duration::from_secs(60), || stored_seq().is_superset(&acked));
    let missing: Vec<u64> = acked.difference(&stored_seq()).copied().take(20).collect();
    eprintln!(
        "durability: {WEBHOOKS} webhooks, {kills} kill -9, {} retries, {:.1} s",
        retries.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(kills, KILLS, "the gateway was killed only {kills} times");
    assert!(
        ok,
        "acknowledged but not stored (first 20): {missing:?}\n{}",
        gateway.log_tail(30)
    );
}

/// One bad request: what it is, its status, the reason label in its answer, headers, body.
type BadCase<'a> = (&'a str, u16, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);

#[test]
fn bad_webhooks_get_their_status_reason_and_counter_and_nothing_else_is_lost() {
    let vm = VictoriaMetrics::start().unwrap();
    let s = setup(&vm, None, "token_env = \"HOOK_TOKEN\"");
    let gateway =
        GatewayProcess::spawn_with_env(&s.config, &[("HOOK_TOKEN", "t0k3n-for-tests")]).unwrap();
    wait_listening(s.hook_port, &gateway);
    let auth = ("Authorization", "Bearer t0k3n-for-tests");
    let mut client = WebhookClient::new(s.hook_port);
    let mut good = 0i64;
    let mut post_good = |client: &mut WebhookClient| {
        good += 1;
        let body = verkada_lpr(
            &format!("good-{good}"),
            1_742_259_100 + good,
            good as f64 / 10.0,
        );
        let r = client.post(PATH, &[JSON, auth], body.as_bytes()).unwrap();
        assert_eq!(r.status, 204, "good webhook {good}: {}", r.body);
    };

    // (what, status, reason label, request)
    let valid = verkada_lpr("bad", 1_742_259_000, 0.1);
    let full_form = multipart("XyZ", &valid, &jpeg_bytes());
    let truncated = full_form[..full_form.len() / 2].to_vec();
    let mut invalid_utf8 = valid.replace("ABC123", "AB__23").into_bytes();
    let at = invalid_utf8
        .windows(6)
        .position(|w| w == b"AB__23")
        .unwrap();
    invalid_utf8[at + 2] = 0xFF;
    invalid_utf8[at + 3] = 0xFE;
    let string_time = valid.replace(
        "\"created_at\": 1742259000",
        "\"created_at\": \"yesterday\"",
    );
    assert_ne!(string_time, valid);
    let no_time = valid.replace("\"created_at\": 1742259000,", "");
    assert_ne!(no_time, valid);
    let ten_mb = {
        let mut b = br#"{"created_at": 1742259000, "pad": ""#.to_vec();
        b.resize(10 << 20, b'x');
        b.extend_from_slice(b"\"}");
        b
    };
    let bomb = gzip(&ten_mb);
    let multipart_ct = "multipart/form-data; boundary=XyZ";
    let cases: Vec<BadCase> = vec![
        (
            "not JSON",
            400,
            "not_json",
            vec![JSON, auth],
            b"{\"created_at\": 17".to_vec(),
        ),
        (
            "wrong content type",
            415,
            "unsupported_content_type",
            vec![("Content-Type", "application/xml"), auth],
            valid.clone().into_bytes(),
        ),
        (
            "truncated multipart",
            400,
            "bad_multipart",
            vec![("Content-Type", multipart_ct), auth],
            truncated,
        ),
        (
            "multipart without JSON",
            400,
            "no_json_part",
            vec![("Content-Type", multipart_ct), auth],
            image_only_form("XyZ", &jpeg_bytes()),
        ),
        (
            "10 MB gzip'd to a few KiB",
            413,
            "too_large",
            vec![JSON, ("Content-Encoding", "gzip"), auth],
            bomb,
        ),
        (
            "invalid UTF-8",
            400,
            "not_json",
            vec![JSON, auth],
            invalid_utf8,
        ),
        (
            "a string where a number is needed",
            400,
            "bad_timestamp",
            vec![JSON, auth],
            string_time.into_bytes(),
        ),
        (
            "a missing timestamp",
            400,
            "missing_timestamp",
            vec![JSON, auth],
            no_time.into_bytes(),
        ),
        (
            "unknown token",
            401,
            "unauthorized",
            vec![JSON, ("Authorization", "Bearer guess")],
            valid.clone().into_bytes(),
        ),
        (
            "no token",
            401,
            "unauthorized",
            vec![JSON],
            valid.clone().into_bytes(),
        ),
    ];
    post_good(&mut client);
    let mut expected_rejections: Vec<(&str, f64)> = Vec::new();
    for (what, status, label, headers, body) in &cases {
        let r = client
            .post(PATH, headers, body)
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(r.status, *status, "{what}: {}", r.body);
        assert!(
            r.body.contains(label),
            "{what}: reason {:?} lacks {label}",
            r.body
        );
        match expected_rejections.iter_mut().find(|(l, _)| l == label) {
            Some((_, n)) => *n += 1.0,
            None => expected_rejections.push((label, 1.0)),
        }
        post_good(&mut client);
    }
    // A plain 10 MB body: refused on its declared length, before it is read (the sender
    // waits for `100 Continue`, which never comes).
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer t0k3n-for-tests\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        ten_mb.len()
    );
    let r = WebhookClient::new(s.hook_port)
        .raw(head.as_bytes(), b"")
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("too_large"), "{}", r.body);
    expected_rejections
        .iter_mut()
        .find(|(l, _)| *l == "too_large")
        .unwrap()
        .1 += 1.0;
    // Sent in full without waiting: still 413, and the gateway is fine.
    let sent_in_full = std::thread::scope(|scope| {
        let mut c = WebhookClient::new(s.hook_port);
        let t = scope.spawn(move || c.post(PATH, &[JSON, auth], &ten_mb));
        t.join().unwrap()
    });
    if let Ok(r) = &sent_in_full {
        assert_eq!(r.status, 413, "{}", r.body);
    }
    expected_rejections
        .iter_mut()
        .find(|(l, _)| *l == "too_large")
        .unwrap()
        .1 += 1.0;
    post_good(&mut client);
    // Wrong method and path: their statuses, nothing counted as a rejected reading.
    let get = format!("GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.raw(get.as_bytes(), b"").unwrap().status, 405);
    assert_eq!(
        client
            .post("/elsewhere", &[JSON, auth], valid.as_bytes())
            .unwrap()
            .status,
        404
    );
    post_good(&mut client);

    for g in 1..=good {
        wait_stored(
            &vm,
            &format!("good-{g}"),
            &[((1_742_259_100 + g) * 1000, g as f64 / 10.0)],
        );
    }
    assert!(
        stored(&vm, "bad").is_empty(),
        "nothing of a refused webhook is stored"
    );
    let metrics = gateway_metrics(s.http_port);
    for (label, n) in &expected_rejections {
        assert_eq!(
            metric_in(
                &metrics,
                "ioc_gateway_readings_rejected_total",
                &[("input", INPUT), ("reason", label)]
            ),
            *n,
            "ioc_gateway_readings_rejected_total{{reason={label}}}"
        );
    }
    assert_eq!(
        metric_in(
            &metrics,
            "ioc_gateway_http_input_requests_total",
            &[("input", INPUT), ("status", "204")]
        ),
        good as f64
    );
    assert_eq!(
        metric_in(
            &metrics,
            "ioc_gateway_http_input_requests_total",
            &[("input", INPUT), ("status", "401")]
        ),
        2.0
    );
    assert!(
        !gateway.log().contains("t0k3n-for-tests"),
        "the token is never logged"
    );
}

#[test]
fn a_full_disk_answers_503_with_retry_after() {
    let _heavy = HeavyTestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let fs = match ioc_e2e::Tmpfs::mount(&dir.path().join("fs"), "4m") {
        Ok(fs) => fs,
        Err(reason) => {
            eprintln!("SKIPPED: a full disk needs a tmpfs ({reason})");
            return;
        }
    };
    let vm = VictoriaMetrics::start().unwrap();
    let data = fs.path.join("data");
    let s = setup(&vm, Some(&data), "");
    // The buffer may use more than the filesystem holds: the disk fills first.
    let text = std::fs::read_to_string(&s.config).unwrap() + "\n[buffer]\nmax_disk_mb = 64\n";
    std::fs::write(&s.config, text).unwrap();
    let gateway = GatewayProcess::spawn(&s.config).unwrap();
    wait_listening(s.hook_port, &gateway);
    let mut client = WebhookClient::new(s.hook_port);
    let body = verkada_lpr("before", 1_742_259_200, 0.2);
    assert_eq!(
        client.post(PATH, &[JSON], body.as_bytes()).unwrap().status,
        204
    );
    wait_stored(&vm, "before", &[(1_742_259_200_000, 0.2)]);

    // Fill what is left of the filesystem.
    let filler = fs.path.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut answers = Vec::new();
    let mut got_503 = None;
    for i in 0..50 {
        let body = verkada_lpr(&format!("full-{i}"), 1_742_259_300 + i, 0.3);
        // A big payload so the append needs room the disk no longer has.
        let r = client.post(PATH, &[JSON], body.as_bytes()).unwrap();
        answers.push(r.status);
        if r.status == 503 {
            got_503 = Some(r);
            break;
        }
    }
    let r = got_503.unwrap_or_else(|| {
        panic!(
            "no 503 on a full disk: {answers:?}\n{}",
            gateway.log_tail(30)
        )
    });
    assert_eq!(r.header("retry-after"), Some("5"), "{:?}", r.headers);
    assert!(r.body.contains("unavailable"), "{}", r.body);

    std::fs::remove_file(&filler).unwrap();
    let body = verkada_lpr("after", 1_742_259_400, 0.4);
    let ok = wait_until(Duration::from_secs(10), || {
        client
            .post(PATH, &[JSON], body.as_bytes())
            .is_ok_and(|r| r.status == 204)
    });
    assert!(ok, "no 204 once space returned\n{}", gateway.log_tail(30));
    wait_stored(&vm, "after", &[(1_742_259_400_000, 0.4)]);
    drop(gateway);
    drop(fs);
}

#[test]
fn https_webhook_with_a_certificate_from_the_test_pki() {
    let pki = ioc_e2e::Pki::new().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let tls = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"",
        pki.path("server.pem").display(),
        pki.path("server.key").display()
    );
    let s = setup(&vm, None, &tls);
    let gateway = GatewayProcess::spawn(&s.config).unwrap();
    wait_listening(s.hook_port, &gateway);
    let body = verkada_lpr("tls-1", 1_742_259_500, 0.65);
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ])
        .arg(format!("https://127.0.0.1:{}{PATH}", s.hook_port))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "204",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gateway.log_tail(20)
    );
    wait_stored(&vm, "tls-1", &[(1_742_259_500_000, 0.65)]);
    // A client that does not trust the certificate gets no answer at all.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(pki.path("other-ca.pem"))
        .args(["--data-binary", &body])
        .arg(format!("https://127.0.0.1:{}{PATH}", s.hook_port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
}

#[test]
fn check_config_names_two_inputs_on_one_address_and_path() {
    let vm_url = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[gateway]
id = "g"
data_dir = "{data}"

[[inputs.http]]
listen = "127.0.0.1:8181"
path = "/webhook/lpr"
measurement = "lpr"

[[inputs.http]]
listen = "127.0.0.1:8181"
path = "/webhook/lpr"
measurement = "other"

[output.influxdb]
url = "{vm_url}"
"#,
        data = dir.path().join("data").display()
    );
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, text).unwrap();
    let out = ioc_e2e::check_config(&config).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("gateway.toml:12: key `inputs.http[1].path`"),
        "{stderr}"
    );
}
