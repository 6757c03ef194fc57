//! The Debian package, installed for real: `cargo deb -p ioc-gateway` packs the binary the suite
//! built, `dpkg -i` installs it on this machine, and the installed gateway must work as a
//! technician would use it: the service user in `dialout`, `/var/lib/ioc-gateway` owned by it, the
//! config a conffile readable by the service only, the unit, man pages and completions in place,
//! `check-config` passing on the installed config as the service user, and the installed binary,
//! run as that user on that config (pointed at this test's mosquitto and VictoriaMetrics through
//! the `${IOC_MQTT_URL}`-style variables the unit's environment file would set), storing a
//! reading and stopping cleanly on SIGTERM. `dpkg --purge` then removes the user and the state.
//!
//! Needs root (it installs a package) and `cargo deb` (`tests/scripts/install-deps.sh` installs
//! cargo-deb). Without root it says so and does nothing; it refuses to touch a machine where an
//! `ioc-gateway` package is already installed. The package is built from the dev-profile binary
//! (`--profile dev --no-build`) so that the suite needs no second, release build; the release
//! package (`cargo deb -p ioc-gateway`) differs only in the binary's optimisation (and `--fast`
//! compression, which keeps packing the large debug binary quick).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ioc_e2e::{
    bin_path, free_port, http_get, wait_until, Mosquitto, MqttPublisher, VictoriaMetrics,
};

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    run("id", &["-u"]).stdout.starts_with(b"0\n")
}

fn package_installed() -> bool {
    // "install ok installed"; not "unknown ok not-installed" or "deinstall ok config-files".
    let out = run("dpkg-query", &["-W", "-f=${Status}", "ioc-gateway"]);
    String::from_utf8_lossy(&out.stdout).ends_with(" installed")
}

/// Purges the package when the test ends, however it ends.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "ioc-gateway"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn build_deb(out_dir: &Path) -> PathBuf {
    let binary = bin_path("ioc-gateway");
    // target/<profile>/ioc-gateway -> target
    let target_dir = binary
        .parent()
        .and_then(Path::parent)
        .expect("binary inside a target dir");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/Cargo.toml");
    let out = Command::new("cargo")
        .args([
            "deb",
            "-p",
            "ioc-gateway",
            "--no-build",
            "--profile",
            "dev",
            "--no-strip",
            "--fast",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--output")
        .arg(out_dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .expect("run cargo deb");
    assert!(
        out.status.success(),
        "cargo deb failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_dir(out_dir)
        .expect("read deb dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb in the output dir")
}

#[test]
fn deb_installs_a_working_gateway_and_purges_cleanly() {
    if !is_root() {
        eprintln!(
            "SKIPPED deb_package_e2e: installing a package needs root (run the suite as root)"
        );
        return;
    }
    if std::env::var_os("IOC_E2E_NO_DEB").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED deb_package_e2e: IOC_E2E_NO_DEB=1");
        return;
    }
    if !run("cargo", &["deb", "--version"]).status.success() {
        panic!("cargo-deb is not installed: bash tests/scripts/install-deps.sh installs it");
    }
    assert!(
        !package_installed(),
        "an ioc-gateway package is already installed on this machine; this test will not replace it"
    );

    let work = tempfile::tempdir().expect("temp dir");
    let deb = build_deb(work.path());
    let contents = ok(
        "dpkg-deb",
        &["--contents", deb.to_str().expect("utf-8 path")],
    );
    for path in [
        "./usr/bin/ioc-gateway",
        "./etc/ioc-gateway/gateway.toml",
        "ioc-gateway.service",
        "./usr/share/man/man1/ioc-gateway.1",
        "./usr/share/man/man1/ioc-gateway-check-config.1",
        "./usr/share/bash-completion/completions/ioc-gateway",
        "./usr/share/zsh/vendor-completions/_ioc-gateway",
        "./usr/share/doc/ioc-gateway/gateway.example.toml",
        "./usr/share/doc/ioc-gateway/copyright",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the package:\n{contents}"
        );
    }
    let fields = ok("dpkg-deb", &["--field", deb.to_str().expect("utf-8 path")]);
    assert!(
        fields.contains("Depends:") && fields.contains("adduser"),
        "{fields}"
    );

    let _purge = Purge;
    ok("dpkg", &["-i", deb.to_str().expect("utf-8 path")]);

    // What postinst set up.
    let groups = ok("id", &["-nG", "ioc-gateway"]);
    assert!(
        groups.split_whitespace().any(|g| g == "dialout"),
        "groups: {groups}"
    );
    let uid: u32 = ok("id", &["-u", "ioc-gateway"])
        .trim()
        .parse()
        .expect("uid");
    let state = std::fs::metadata("/var/lib/ioc-gateway").expect("/var/lib/ioc-gateway");
    assert_eq!(state.uid(), uid, "state dir owned by the service user");
    let config = std::fs::metadata("/etc/ioc-gateway/gateway.toml").expect("installed config");
    assert_eq!(config.permissions().mode() & 0o777, 0o640);
    assert_eq!(config.uid(), 0);
    let conffiles = ok(
        "dpkg-query",
        &["--showformat=${Conffiles}", "-W", "ioc-gateway"],
    );
    assert!(
        conffiles.contains("/etc/ioc-gateway/gateway.toml"),
        "conffiles: {conffiles}"
    );
    let unit_path = [
        "/lib/systemd/system/ioc-gateway.service",
        "/usr/lib/systemd/system/ioc-gateway.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the unit is installed");
    let unit = std::fs::read_to_string(unit_path).expect("read unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/ioc-gateway run"),
        "{unit}"
    );
    let version = ok("/usr/bin/ioc-gateway", &["--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // check-config on the installed config, as the service would run it.
    let as_service = |args: &[&str]| {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=ioc-gateway",
                "--regid=ioc-gateway",
                "--init-groups",
                "--",
            ])
            .arg("/usr/bin/ioc-gateway")
            .args(args);
        command
    };
    let check = as_service(&["check-config", "/etc/ioc-gateway/gateway.toml"])
        .output()
        .expect("run check-config");
    assert!(
        check.status.success(),
        "check-config on the installed config: {}\n{}{}",
        check.status,
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The installed binary on the installed config, as the service user.
    let broker = Mosquitto::start().expect("mosquitto");
    let vm = VictoriaMetrics::start().expect("victoria-metrics");
    let http = free_port();
    let log_path = work.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut gateway = as_service(&["run", "--config", "/etc/ioc-gateway/gateway.toml"])
        .env("IOC_GATEWAY_ID", "deb-e2e")
        .env("IOC_MQTT_URL", broker.url())
        .env("IOC_STORE_URL", vm.url())
        .env("IOC_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("start the installed gateway");
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let health = format!("http://127.0.0.1:{http}/healthz");
    assert!(
        wait_until(Duration::from_secs(30), || http_get(&health).0 == 200),
        "installed gateway never healthy:\n{}",
        log_text()
    );
    assert!(
        broker.wait_for_subscription("deb-e2e-env", "city/+/env/+", 0, Duration::from_secs(30)),
        "installed gateway never subscribed:\n{}",
        log_text()
    );
    let ts_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let mut publisher = MqttPublisher::connect(&broker.url(), "deb-e2e-pub").expect("publisher");
    publisher
        .publish(
            "city/d1/env/pm-1",
            format!("{{\"ts\":{ts_ms},\"pm25\":12.5}}"),
        )
        .expect("publish");
    assert!(
        publisher.wait_all_acked(Duration::from_secs(20)),
        "{}",
        log_text()
    );
    let selector = "{__name__=\"environment_pm25\",gateway=\"deb-e2e\",sensor_id=\"pm-1\"}";
    let stored = wait_until(Duration::from_secs(30), || {
        let _ = vm.force_flush();
        vm.export(selector)
            .map(|s| s.len() == 1 && s[0].values == vec![12.5] && s[0].timestamps_ms == vec![ts_ms])
            .unwrap_or(false)
    });
    assert!(
        stored,
        "reading not stored: {:?}\n{}",
        vm.export(selector),
        log_text()
    );
    // Its buffer is where the package put the state directory.
    assert!(
        Path::new("/var/lib/ioc-gateway/buffer").exists(),
        "{}",
        log_text()
    );

    ok("kill", &["-TERM", &gateway.id().to_string()]);
    let status = gateway.wait().expect("wait for the gateway");
    assert!(status.success(), "SIGTERM exit: {status}\n{}", log_text());

    // Purge removes what postinst made.
    ok("dpkg", &["--purge", "ioc-gateway"]);
    assert!(!package_installed());
    assert!(
        !Path::new("/var/lib/ioc-gateway").exists(),
        "purge keeps the state dir"
    );
    assert!(
        !run("id", &["ioc-gateway"]).status.success(),
        "purge keeps the user"
    );
}
