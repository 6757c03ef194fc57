//! The gateway refuses the wrong credentials and certificates, and never shows a secret: a real mosquitto with TLS (certificates made here with the
//! `openssl` CLI: a CA, a server certificate for 127.0.0.1/localhost, an expired one, an unrelated
//! second CA, a client certificate for mutual TLS) and a password file (`mosquitto_passwd -b`).
//! The real `ioc-gateway` binary must refuse a wrong password, an unknown CA and an expired
//! certificate with a clear line in its log and ingest nothing; with the right ones it connects
//! and a message arrives in VictoriaMetrics. Secrets never show in the log or in `check-config`
//! output; a world-readable password file is warned about.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ioc_e2e::{check_config_with, wait_until, GatewayProcess, Mosquitto, VictoriaMetrics};

const USER: &str = "gw-user";
const PASSWORD: &str = "pw-S3cret-7f1c9a";
const TOKEN: &str = "tok-S3cret-e41b77";
const TOKEN_ENV: &str = "IOC_SEC_E2E_TOKEN";
const TOPIC: &str = "city/d1/env/s1";

fn run(dir: &Path, program: &str, args: &[&str]) {
    let (ok, output) = try_run(dir, program, args);
    assert!(ok, "{program} {args:?}: {output}");
}

/// Runs a command; whether it succeeded, and its stdout + stderr.
fn try_run(dir: &Path, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Keys and certificates for one test (the harness's [`ioc_e2e::Pki`]), and the broker's
/// password file.
struct Pki {
    certs: ioc_e2e::Pki,
}

impl Pki {
    fn new() -> Pki {
        let certs = ioc_e2e::Pki::new().unwrap();
        run(
            certs.dir(),
            "mosquitto_passwd",
            &["-c", "-b", "passwd", USER, PASSWORD],
        );
        Pki { certs }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.certs.path(name)
    }

    /// A broker with TLS on its listener (serving `server_cert`), the password file, no
    /// anonymous access and, with `mutual`, client certificates required.
    fn broker(&self, server_cert: &str, mutual: bool) -> Mosquitto {
        let lines = [
            format!("cafile {}", self.path("ca.pem").display()),
            format!("certfile {}", self.path(server_cert).display()),
            format!("keyfile {}", self.path("server.key").display()),
            format!("require_certificate {mutual}"),
            format!("password_file {}", self.path("passwd").display()),
            "allow_anonymous false".to_owned(),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        Mosquitto::start_with_config(&lines).unwrap()
    }

    /// Publishes one QoS 1 message with the right CA, credentials and client certificate.
    fn publish(&self, broker: &Mosquitto, payload: &str) {
        let port = broker.port().to_string();
        let ca = self.path("ca.pem");
        let cert = self.path("client.pem");
        let key = self.path("client.key");
        // A broker serving an expired certificate refuses this client too: then nothing is
        // published, and the test rests on the gateway refusing the broker.
        let (ok, output) = try_run(
            self.certs.dir(),
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "--cafile",
                ca.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "-u",
                USER,
                "-P",
                PASSWORD,
                "-q",
                "1",
                "-t",
                TOPIC,
                "-m",
                payload,
                "-i",
                "sec-e2e-pub",
            ],
        );
        assert!(
            ok || output.contains("TLS error"),
            "mosquitto_pub failed: {output}"
        );
    }
}

struct GatewaySetup<'a> {
    ca: &'a Path,
    password: &'a str,
    password_mode: u32,
    mutual: bool,
}

fn write_config(
    dir: &Path,
    pki: &Pki,
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
    s: GatewaySetup<'_>,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let pw_file = dir.join("mqtt-password");
    std::fs::write(&pw_file, format!("{}\n", s.password)).unwrap();
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(s.password_mode)).unwrap();
    let client = if s.mutual {
        format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            pki.path("client.pem").display(),
            pki.path("client.key").display()
        )
    } else {
        String::new()
    };
    let text = format!(
        r#"[gateway]
id = "sec-gw"
data_dir = "{data}"

[[inputs.mqtt]]
url = "mqtts://127.0.0.1:{port}"
client_id = "sec-gw"
topics = ["city/+/env/+"]
qos = 1
measurement = "environment"
topic_tags = "_/district/_/sensor_id"
timestamp_field = "ts"
username = "{USER}"
password_file = "{pw}"
ca_file = "{ca}"
{client}
[output.influxdb]
url = "{vm}"
bucket = "telemetry"
org = "ioc"
token_env = "{TOKEN_ENV}"
flush_interval_ms = 100

[http]
enabled = false
"#,
        data = dir.join("data").display(),
        port = broker.port(),
        pw = pw_file.display(),
        ca = s.ca.display(),
        vm = vm.url(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_no_secret(text: &str, what: &str) {
    assert!(
        !text.contains(PASSWORD),
        "the MQTT password appears in {what}:\n{text}"
    );
    assert!(
        !text.contains(TOKEN),
        "the store token appears in {what}:\n{text}"
    );
}

/// Starts a gateway, waits for `expect` in its log, publishes one message with good
/// credentials, and returns the gateway's log and the number of points in the store.
fn scenario(
    pki: &Pki,
    broker: &Mosquitto,
    setup: GatewaySetup<'_>,
    expect: &str,
) -> (String, usize) {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), pki, broker, &vm, setup);
    let out = check_config_with(&config, &[], &[(TOKEN_ENV, TOKEN)]).unwrap();
    let cc = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check-config: {cc}");
    assert_no_secret(&cc, "check-config output");
    let gateway = GatewayProcess::spawn_with_env(
        &config,
        &[
            (TOKEN_ENV, TOKEN),
            ("RUST_LOG", "debug,rumqttc=info,hyper=info,reqwest=info"),
        ],
    )
    .unwrap();
    let seen = wait_until(Duration::from_secs(20), || gateway.log().contains(expect));
    assert!(
        seen,
        "no {expect:?} in the gateway log:\n{}",
        gateway.log_tail(40)
    );
    let ts = ioc_e2e::now_ms();
    pki.publish(broker, &format!("{{\"ts\":{ts},\"pm2_5\":12.5}}"));
    let selector = "{__name__=\"environment_pm2_5\"}";
    let arrived = wait_until(Duration::from_secs(10), || {
        vm.force_flush().is_ok() && vm.count_points(selector).unwrap_or(0) > 0
    });
    if !arrived {
        // Give a wrongly connected gateway every chance to (wrongly) deliver.
        std::thread::sleep(Duration::from_secs(2));
        vm.force_flush().unwrap();
    }
    let points = vm.count_points(selector).unwrap();
    let log = gateway.log();
    assert_no_secret(&log, "the gateway log");
    (log, points)
}

#[test]
fn right_ca_password_and_client_certificate_connect_and_deliver() {
    let pki = Pki::new();
    let broker = pki.broker("server.pem", true);
    let ca = pki.path("ca.pem");
    let setup = GatewaySetup {
        ca: &ca,
        password: PASSWORD,
        password_mode: 0o600,
        mutual: true,
    };
    let (log, points) = scenario(&pki, &broker, setup, "connected to broker");
    assert_eq!(points, 1, "gateway log:\n{log}");
    assert!(!log.contains("world-readable"), "{log}");
}

#[test]
fn wrong_password_is_refused_with_a_clear_error_and_nothing_is_ingested() {
    let pki = Pki::new();
    let broker = pki.broker("server.pem", false);
    let ca = pki.path("ca.pem");
    let setup = GatewaySetup {
        ca: &ca,
        password: "not-the-password",
        password_mode: 0o600,
        mutual: false,
    };
    let (log, points) = scenario(&pki, &broker, setup, "broker refused the login");
    assert_eq!(points, 0, "{log}");
    assert!(!log.contains("connected to broker"), "{log}");
    assert!(!log.contains("not-the-password"), "{log}");
}

#[test]
fn unknown_ca_is_refused_with_a_clear_error_and_nothing_is_ingested() {
    let pki = Pki::new();
    let broker = pki.broker("server.pem", false);
    let other = pki.path("other-ca.pem");
    let setup = GatewaySetup {
        ca: &other,
        password: PASSWORD,
        password_mode: 0o600,
        mutual: false,
    };
    let (log, points) = scenario(&pki, &broker, setup, "TLS handshake failed");
    assert_eq!(points, 0, "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert!(!log.contains("connected to broker"), "{log}");
}

#[test]
fn expired_server_certificate_is_refused_with_a_clear_error_and_nothing_is_ingested() {
    let pki = Pki::new();
    let broker = pki.broker("expired.pem", false);
    let ca = pki.path("ca.pem");
    let setup = GatewaySetup {
        ca: &ca,
        password: PASSWORD,
        password_mode: 0o600,
        mutual: false,
    };
    let (log, points) = scenario(&pki, &broker, setup, "TLS handshake failed");
    assert_eq!(points, 0, "{log}");
    assert!(log.contains("certificate expired"), "{log}");
    assert!(!log.contains("connected to broker"), "{log}");
}

#[test]
fn a_world_readable_password_file_is_warned_about_and_never_printed() {
    let pki = Pki::new();
    let broker = pki.broker("server.pem", false);
    let ca = pki.path("ca.pem");
    let setup = GatewaySetup {
        ca: &ca,
        password: PASSWORD,
        password_mode: 0o644,
        mutual: false,
    };
    let (log, points) = scenario(&pki, &broker, setup, "connected to broker");
    assert_eq!(points, 1, "{log}");
    assert!(
        log.contains("secret file is world-readable; run `chmod 600"),
        "{log}"
    );
}
