//! `verify`'s query code against real stores: line protocol built from a generated manifest is
//! written straight into VictoriaMetrics and InfluxDB 1.x (no gateway), with known damage —
//! points left out, values changed, a point written twice, a rejected payload stored anyway —
//! and the verdict must count exactly that damage.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ioc_e2e::{HeavyTestLock, Influx1, VictoriaMetrics};
use sensor_sim::generator::Generator;
use sensor_sim::manifest::{Entry, Expect};
use sensor_sim::scenario::Scenario;
use sensor_sim::verify::{compare, fetch, Counts, Shape, StoreApi, StoreQuery};

fn entries(n: usize) -> Vec<Entry> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios/faulty-field.toml");
    let s = Scenario::load(&path).unwrap();
    Generator::new(&s, 5)
        .unwrap()
        .take(n)
        .map(|m| m.entry)
        .collect()
}

fn line(e: &Entry, fields: &BTreeMap<String, f64>) -> String {
    let tags: String = e.t.iter().map(|(k, v)| format!(",{k}={v}")).collect();
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!(
        "{}{},gateway=gw-test {} {}\n",
        e.m,
        tags,
        fields.join(","),
        e.ts * 1_000_000
    )
}

/// Line protocol for the manifest with known damage, and the counts `verify` must report.
fn damaged_store(entries: &[Entry], duplicates_possible: bool) -> (String, Counts) {
    let stored: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.x == Expect::Stored && e.fault.is_none())
        .collect();
    // Damage only points the simulator sent once, so no duplicate is "explained".
    let sent_twice: std::collections::HashSet<(String, String, i64)> = entries
        .iter()
        .filter(|e| e.fault == Some(sensor_sim::manifest::FaultKind::Duplicate))
        .map(|e| (e.m.clone(), format!("{:?}", e.t), e.ts))
        .collect();
    let once: Vec<usize> = (0..stored.len())
        .filter(|i| {
            !sent_twice.contains(&(
                stored[*i].m.clone(),
                format!("{:?}", stored[*i].t),
                stored[*i].ts,
            ))
        })
        .collect();
    let mut body = String::new();
    let mut want = Counts::default();
    let mut seen = std::collections::HashSet::new();
    for e in entries.iter().filter(|e| e.x == Expect::Stored) {
        if seen.insert((e.m.clone(), format!("{:?}", e.t), e.ts)) {
            want.expected += 1;
        }
    }
    want.rejected_sent = entries.iter().filter(|e| e.x == Expect::Rejected).count() as u64;
    want.unchecked = entries.iter().filter(|e| e.x == Expect::Unchecked).count() as u64;
    let missing: Vec<usize> = vec![once[3], once[10], once[17]];
    let changed: Vec<usize> = vec![once[5], once[22]];
    let doubled = once[30];
    for (i, e) in stored.iter().enumerate() {
        if missing.contains(&i) {
            continue;
        }
        let mut fields = e.f.clone();
        if changed.contains(&i) {
            if let Some(v) = fields.values_mut().next() {
                *v += 0.5;
            }
        }
        body.push_str(&line(e, &fields));
        if i == doubled {
            // A replay: same series, time and values. InfluxDB overwrites; VictoriaMetrics keeps
            // both unless deduplication is on.
            body.push_str(&line(e, &fields));
        }
    }
    // Entries with faults (duplicates sent, late, skewed) are stored once, as the gateway would.
    for e in entries.iter().filter(|e| {
        e.x == Expect::Stored
            && e.fault.is_some()
            && e.fault != Some(sensor_sim::manifest::FaultKind::Duplicate)
    }) {
        body.push_str(&line(e, &e.f));
    }
    let rejected = entries
        .iter()
        .find(|e| e.x == Expect::Rejected && !e.f.is_empty())
        .unwrap();
    body.push_str(&line(rejected, &rejected.f));
    want.leaked = 1;
    want.missing = missing.len() as u64;
    want.found = want.expected - want.missing;
    want.mismatched = changed.len() as u64;
    want.duplicates = u64::from(duplicates_possible);
    (body, want)
}

#[test]
fn verify_reads_victoria_metrics_exactly() {
    let _lock = HeavyTestLock::acquire();
    let vm = VictoriaMetrics::start().unwrap();
    let entries = entries(3000);
    // The harness runs VictoriaMetrics with -dedup.minScrapeInterval=1ms, so the doubled point
    // is kept once (last value); duplicate counting itself is unit-tested on an export sample.
    let (body, want) = damaged_store(&entries, false);
    for chunk in body.lines().collect::<Vec<_>>().chunks(1000) {
        vm.write_line_protocol(&(chunk.join("\n") + "\n")).unwrap();
    }
    let query = StoreQuery {
        url: vm.url(),
        api: StoreApi::V2,
        database: String::new(),
        gateway_id: Some("gw-test".into()),
    };
    let report = compare(&entries, &fetch(&query, &Shape::of(&entries)).unwrap());
    let got = report.total();
    assert_eq!(got.explained_duplicates, 0);
    assert_eq!(got, want, "{}", report.table(10));
    assert!(!got.ok());

    // Another gateway's points are not this gateway's.
    let other = StoreQuery {
        gateway_id: Some("gw-other".into()),
        ..query
    };
    let none = compare(&entries, &fetch(&other, &Shape::of(&entries)).unwrap()).total();
    assert_eq!(none.found, 0);
    assert_eq!(none.missing, want.expected);
}

#[test]
fn verify_reads_influxdb_1x_exactly() {
    let _lock = HeavyTestLock::acquire();
    let influx = Influx1::start().unwrap();
    influx.create_database("telemetry").unwrap();
    let entries = entries(3000);
    let (body, want) = damaged_store(&entries, false);
    for chunk in body.lines().collect::<Vec<_>>().chunks(1000) {
        influx
            .write_line_protocol("telemetry", &(chunk.join("\n") + "\n"))
            .unwrap();
    }
    let query = StoreQuery {
        url: influx.url(),
        api: StoreApi::V1,
        database: "telemetry".into(),
        gateway_id: Some("gw-test".into()),
    };
    let report = compare(&entries, &fetch(&query, &Shape::of(&entries)).unwrap());
    assert_eq!(report.total(), want, "{}", report.table(10));
}

#[test]
fn clean_store_passes_and_cli_exits_zero() {
    let _lock = HeavyTestLock::acquire();
    let vm = VictoriaMetrics::start().unwrap();
    let entries = entries(2000);
    let mut body = String::new();
    let mut seen = std::collections::HashSet::new();
    for e in entries.iter().filter(|e| e.x == Expect::Stored) {
        if seen.insert((e.m.clone(), format!("{:?}", e.t), e.ts)) {
            body.push_str(&line(e, &e.f));
        }
    }
    vm.write_line_protocol(&body).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.jsonl");
    let mut text = String::from(
        "{\"header\":{\"version\":1,\"scenario\":\"faulty-field\",\"seed\":5,\"qos\":1}}\n",
    );
    for e in &entries {
        text.push_str(&e.to_line());
    }
    std::fs::write(&manifest, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sensor-sim"))
        .args([
            "verify",
            "--api",
            "v2",
            "--gateway-id",
            "gw-test",
            "--store",
            &vm.url(),
            "--manifest",
        ])
        .arg(&manifest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let expected = seen.len();
    assert_eq!(
        last,
        format!(
            "verify: {expected} expected, {expected} found, 0 missing, 0 mismatched, 0 duplicates"
        )
    );
}

/// VictoriaMetrics started here without `-dedup.minScrapeInterval` (the harness turns it on),
/// killed by PID on drop.
struct PlainVm {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl PlainVm {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = ioc_e2e::free_port();
        let bin = ["/usr/bin/victoria-metrics", "/usr/sbin/victoria-metrics"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("victoria-metrics");
        let child = std::process::Command::new(bin)
            .arg(format!(
                "-storageDataPath={}",
                dir.path().join("data").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .args([
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=WARN",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/health");
        assert!(ioc_e2e::wait_until(
            std::time::Duration::from_secs(30),
            || ureq::get(&health).call().is_ok()
        ));
        PlainVm {
            child,
            url,
            _dir: dir,
        }
    }

    fn write(&self, body: &str) {
        ureq::post(&format!("{}/write", self.url))
            .send_string(body)
            .unwrap();
    }
}

impl Drop for PlainVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn verify_counts_duplicates_in_victoria_metrics_without_dedup() {
    let _lock = HeavyTestLock::acquire();
    let vm = PlainVm::start();
    let entries = entries(2000);
    let stored: Vec<&Entry> = entries.iter().filter(|e| e.x == Expect::Stored).collect();
    let mut body = String::new();
    let mut seen = std::collections::HashSet::new();
    for e in &stored {
        if seen.insert((e.m.clone(), format!("{:?}", e.t), e.ts)) {
            body.push_str(&line(e, &e.f));
        }
    }
    vm.write(&body);
    // A replay of a batch, as an at-least-once writer without idempotent storage produces it:
    // every point the simulator sent once comes back a second time, in a separate request.
    let sent_twice: std::collections::HashSet<(String, String, i64)> = entries
        .iter()
        .filter(|e| e.fault == Some(sensor_sim::manifest::FaultKind::Duplicate))
        .map(|e| (e.m.clone(), format!("{:?}", e.t), e.ts))
        .collect();
    let mut replay = String::new();
    let mut replayed_once = 0;
    let mut replayed_twice = 0;
    for e in stored.iter().filter(|e| e.fault.is_none()).take(40) {
        replay.push_str(&line(e, &e.f));
        if sent_twice.contains(&(e.m.clone(), format!("{:?}", e.t), e.ts)) {
            replayed_twice += 1;
        } else {
            replayed_once += 1;
        }
    }
    vm.write(&replay);
    let query = StoreQuery {
        url: vm.url.clone(),
        api: StoreApi::V2,
        database: String::new(),
        gateway_id: None,
    };
    let report = compare(&entries, &fetch(&query, &Shape::of(&entries)).unwrap());
    let t = report.total();
    assert_eq!(
        (t.expected, t.found, t.missing, t.mismatched),
        (seen.len() as u64, seen.len() as u64, 0, 0),
        "{}",
        report.table(10)
    );
    assert_eq!(t.duplicates, replayed_once, "{}", report.table(10));
    assert_eq!(t.explained_duplicates, replayed_twice);
    assert!(replayed_once > 30);
    assert!(!t.ok());
}
