//! A whole city's traffic arrives whole: the scenarios in `config/scenarios/` — `district-rush-hour`
//! and `faulty-field` — played by the real `sensor-sim run` into a real mosquitto, through the real
//! `ioc-gateway` (inputs env, traffic, frigate and lpr, mapped as the simulators README says the
//! manifest assumes) into VictoriaMetrics (`api = "v2"`) or InfluxDB 1.x (`api = "v1"`), and judged by
//! the real `sensor-sim verify --check-cameras`.
//!
//! Besides the verdict's exit code, each test checks the verdict's numbers against its own reading
//! of the manifest (found = every distinct stored point, cameras included; rejected payloads = what
//! the gateway's `/metrics` counts as rejected; none of them stored), and counts the samples of
//! every `<measurement>_<field>` in the store, so that nothing beyond the manifest was stored either.

use ioc_e2e::{
    free_port, GatewayProcess, HeavyTestLock, Influx1, ManifestCounts, Mosquitto, RunOptions,
    SensorSim, StoreApi, VerifyOutcome, VictoriaMetrics,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const GATEWAY_ID: &str = "city-gw";
const SEED: u64 = 7;
/// Publish rate for the scenarios (their own 200-500 msg/s would make each run 10-25 s long).
const RATE: f64 = 1000.0;

/// (input name / client id suffix, topic filter, input settings).
const INPUTS: [(&str, &str, &str); 4] = [
    (
        "env",
        "city/+/env/+",
        "measurement = \"environment\"\ntopic_tags = \"_/district/_/sensor_id\"\ntimestamp_field = \"ts\"\ntimestamp_unit = \"ms\"",
    ),
    (
        "traffic",
        "city/+/traffic/+",
        "measurement = \"traffic\"\ntopic_tags = \"_/district/_/site\"\ntag_keys = [\"lane\", \"direction\"]\ntimestamp_field = \"ts\"\ntimestamp_unit = \"ms\"",
    ),
    ("cameras", "frigate/events", "format = \"frigate\""),
    ("plates", "city/+/lpr/+", "format = \"lpr\""),
];

struct CityGateway {
    process: GatewayProcess,
    http_port: u16,
    _dir: TempDir,
}

impl CityGateway {
    /// Writes the config (the four inputs, `output` as `[output.influxdb]`) and starts the gateway;
    /// returns once every input has subscribed at the broker.
    fn start(broker: &Mosquitto, output: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let http_port = free_port();
        let mut text = format!(
            "# written by tests/tests/city_e2e.rs\n[gateway]\nid = \"{GATEWAY_ID}\"\ndata_dir = \"{}\"\n\n",
            data_dir.display()
        );
        for (name, topic, settings) in INPUTS {
            text.push_str(&format!(
                "[[inputs.mqtt]]\nname = \"{name}\"\nurl = \"{}\"\nclient_id = \"{GATEWAY_ID}-{name}\"\ntopics = [\"{topic}\"]\nqos = 1\n{settings}\n\n",
                broker.url()
            ));
        }
        text.push_str(&format!(
            "[output.influxdb]\n{output}\nbatch_max_lines = 5000\nflush_interval_ms = 200\n\n[buffer]\nmax_disk_mb = 256\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n"
        ));
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, text).unwrap();
        let mut process = GatewayProcess::spawn(&config).unwrap();
        for (name, topic, _) in INPUTS {
            let client_id = format!("{GATEWAY_ID}-{name}");
            assert!(
                broker.wait_for_subscription(&client_id, topic, 0, Duration::from_secs(20)),
                "input {name} did not subscribe to {topic} (running: {})\n{}",
                process.is_running(),
                process.log_tail(40)
            );
        }
        CityGateway {
            process,
            http_port,
            _dir: dir,
        }
    }

    /// Sum of `ioc_gateway_readings_rejected_total` over all inputs and reasons, from `/metrics`.
    fn rejected_total(&self) -> u64 {
        let text = ureq::get(&format!("http://127.0.0.1:{}/metrics", self.http_port))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("ioc_gateway_readings_rejected_total"))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// One scenario played and judged.
struct Played {
    scenario: &'static str,
    manifest: ManifestCounts,
    verdict: VerifyOutcome,
}

/// Plays `scenario` with `sensor-sim run`, then runs `sensor-sim verify --check-cameras` until it
/// passes (the gateway may still be forwarding) and asserts its numbers against the manifest.
fn play_and_verify(
    scenario: &'static str,
    broker: &Mosquitto,
    gateway: &CityGateway,
    store_url: &str,
    api: StoreApi,
    dir: &Path,
) -> Played {
    let manifest_path: PathBuf = dir.join(format!("{scenario}.jsonl"));
    let started = Instant::now();
    let run = SensorSim::run(
        &SensorSim::scenario(scenario),
        &broker.url(),
        SEED,
        &manifest_path,
        &RunOptions {
            rate: Some(RATE),
            client_id: Some(format!("sim-{scenario}")),
            ..RunOptions::default()
        },
    )
    .unwrap();
    let manifest = ManifestCounts::read(&manifest_path).unwrap();
    assert_eq!(run.lost, 0, "{run:?}");
    assert_eq!(run.acked, run.published, "{run:?}");
    assert_eq!(manifest.entries, run.acked, "manifest lines vs summary");

    let mut extra = vec!["--check-cameras", "--gateway-id", GATEWAY_ID];
    if api == StoreApi::V1 {
        extra.extend(["--database", "telemetry"]);
    }
    let verdict = SensorSim::verify_until_passed(
        &manifest_path,
        store_url,
        api,
        &extra,
        Duration::from_secs(90),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        verdict.passed(),
        "{scenario}: {verdict}\n--- gateway log ---\n{}",
        gateway.process.log_tail(40)
    );
    let counts = verdict.counts();
    assert_eq!(
        counts.expected, manifest.stored_points_with_cameras,
        "{verdict}"
    );
    assert_eq!(counts.found, counts.expected, "{verdict}");
    assert_eq!(counts.unchecked, 0, "--check-cameras checks every entry");
    assert_eq!(counts.rejected_sent, manifest.rejected, "{verdict}");
    assert_eq!(counts.leaked, 0, "{verdict}");
    assert_eq!(
        verdict.per_measurement.keys().collect::<Vec<_>>(),
        vec!["camera_event", "environment", "traffic"],
        "{verdict}"
    );
    for (m, c) in &verdict.per_measurement {
        assert_eq!(
            Some(&c.found),
            manifest.points_per_measurement.get(m),
            "{m}: {verdict}"
        );
    }
    eprintln!(
        "{scenario}: {} published, {} acked in {:.1} s ({} reconnects, faults {:?}); verify: {} of {} points found \
         (environment {}, traffic {}, camera_event {}), {} explained duplicates, {} rejected payloads none stored; {:.1} s in all",
        run.published,
        run.acked,
        run.seconds,
        run.reconnects,
        run.faults,
        counts.found,
        counts.expected,
        verdict.per_measurement["environment"].found,
        verdict.per_measurement["traffic"].found,
        verdict.per_measurement["camera_event"].found,
        counts.explained_duplicates,
        counts.rejected_sent,
        started.elapsed().as_secs_f64()
    );
    Played {
        scenario,
        manifest,
        verdict,
    }
}

/// The gateway's `/metrics` counts exactly the rejected payloads of the manifests (one more per
/// rejected payload the simulator re-sent after a reconnect, which the broker may deliver twice).
fn assert_rejections_counted(gateway: &CityGateway, played: &[Played]) {
    let want: u64 = played.iter().map(|p| p.manifest.rejected).sum();
    let resent: u64 = played.iter().map(|p| p.manifest.rejected_resent).sum();
    assert!(want > 0, "faulty-field must send rejected payloads");
    let mut got = 0;
    let counted = ioc_e2e::wait_until(Duration::from_secs(10), || {
        got = gateway.rejected_total();
        got >= want
    });
    assert!(
        counted && got <= want + resent,
        "gateway counted {got} rejected readings, manifests have {want} rejected payloads ({resent} re-sent)\n{}",
        gateway.process.log_tail(30)
    );
    for p in played {
        eprintln!(
            "{}: {} rejected payloads sent, verify saw {} sent and {} stored",
            p.scenario,
            p.manifest.rejected,
            p.verdict.counts().rejected_sent,
            p.verdict.counts().leaked
        );
    }
    eprintln!(
        "gateway /metrics: ioc_gateway_readings_rejected_total = {got} (manifests: {want}, {resent} re-sent)"
    );
}

/// Samples each `<measurement>_<field>` must hold over both scenarios (their time ranges do not
/// overlap, so a point of one is never a point of the other).
fn expected_field_points(played: &[Played]) -> BTreeMap<(String, String), u64> {
    let mut want = BTreeMap::new();
    for p in played {
        for (m, fields) in &p.manifest.field_points {
            for (f, n) in fields {
                *want.entry((m.clone(), f.clone())).or_default() += n;
            }
        }
    }
    want
}

/// Both scenarios → VictoriaMetrics.
#[test]
fn city_scenarios_arrive_exactly_in_victoria_metrics() {
    let _heavy = HeavyTestLock::acquire();
    let started = Instant::now();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let output = format!(
        "url = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"",
        vm.url()
    );
    let mut gateway = CityGateway::start(&broker, &output);
    let dir = TempDir::new().unwrap();
    let played: Vec<Played> = ["district-rush-hour", "faulty-field"]
        .into_iter()
        .map(|s| play_and_verify(s, &broker, &gateway, &vm.url(), StoreApi::V2, dir.path()))
        .collect();
    assert_rejections_counted(&gateway, &played);

    // Nothing beyond the manifests: every series holds exactly the manifests' points.
    vm.force_flush().unwrap();
    for ((m, f), want) in expected_field_points(&played) {
        let got = vm
            .count_points(&format!(
                "{{__name__=\"{m}_{f}\",gateway=\"{GATEWAY_ID}\"}}"
            ))
            .unwrap();
        assert_eq!(got as u64, want, "samples of {m}_{f}");
    }
    assert!(
        gateway.process.is_running(),
        "{}",
        gateway.process.log_tail(40)
    );
    eprintln!(
        "city → VictoriaMetrics: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Both scenarios → InfluxDB 1.x through `api = "v1"` (nanosecond timestamps: `verify` counts a
/// point off the millisecond grid as missing).
#[test]
fn city_scenarios_arrive_exactly_in_influxdb1() {
    let _heavy = HeavyTestLock::acquire();
    let started = Instant::now();
    let broker = Mosquitto::start().unwrap();
    let influx = Influx1::start().unwrap();
    influx.create_database("telemetry").unwrap();
    let output = format!(
        "url = \"{}\"\napi = \"v1\"\ndatabase = \"telemetry\"",
        influx.url()
    );
    let mut gateway = CityGateway::start(&broker, &output);
    let dir = TempDir::new().unwrap();
    let played: Vec<Played> = ["district-rush-hour", "faulty-field"]
        .into_iter()
        .map(|s| {
            play_and_verify(
                s,
                &broker,
                &gateway,
                &influx.url(),
                StoreApi::V1,
                dir.path(),
            )
        })
        .collect();
    assert_rejections_counted(&gateway, &played);

    // Nothing beyond the manifests (InfluxDB keeps one row per series and time).
    for ((m, f), want) in expected_field_points(&played) {
        let rows = influx
            .query_rows(
                "telemetry",
                &format!("SELECT count(\"{f}\") FROM \"{m}\" WHERE gateway = '{GATEWAY_ID}'"),
            )
            .unwrap();
        let got = rows.first().and_then(|r| r["count"].as_u64()).unwrap_or(0);
        assert_eq!(got, want, "rows of {m} with field {f}");
    }
    assert!(
        gateway.process.is_running(),
        "{}",
        gateway.process.log_tail(40)
    );
    eprintln!(
        "city → InfluxDB 1.x: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
