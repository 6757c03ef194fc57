//! Edge aggregation under sustained load: windows close by the clock even while messages keep
//! arriving, and every window is exact.
//!
//! Why it exists: with aggregation, a window is closed when the gateway's clock passes its end
//! plus the grace period. Under a steady stream of messages the committer is never idle, so a
//! clock path that only runs when nothing is queued may never run, and the last window of a
//! sensor that went quiet would then never be forwarded (nor would anyone's, until the stream
//! pauses). The aggregation state is also saved before every acknowledged group, so this is the
//! load at which that save's cost shows.
//!
//! What it shows, with real mosquitto, the real `ioc-gateway run` and a real VictoriaMetrics:
//! 20 sensors publish a JSON reading (with its own millisecond timestamp) 20 times a second each
//! for 60 s to an input with `[inputs.mqtt.aggregate] window_s = 5, grace_s = 2`; 5 of them stop
//! after 20 s. Then
//! - every 5 s window of every sensor, including the last windows of the five that stopped while
//!   the other fifteen kept publishing, is in VictoriaMetrics with exactly the count, mean, min
//!   and max of the readings the broker acknowledged for it, and nothing else is there;
//! - every window became visible in the store no earlier than its end plus grace, and no later
//!   than that plus a small slack (observed by polling the store during the run);
//! - no reading was refused as late.

use ioc_e2e::steps::{
    given_a_gateway_subscribed, then_the_broker_acked_everything,
    when_stopped_then_it_exits_cleanly,
};
use ioc_e2e::{
    free_port, gateway_metrics, metric_in, now_ms, ExportedSeries, GatewayProcess, HeavyTestLock,
    Mosquitto, MqttPublisher, VictoriaMetrics,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const SENSORS: usize = 20;
/// Sensors `QUIET_FROM..SENSORS` stop publishing after `QUIET_AFTER_MS`.
const QUIET_FROM: usize = 15;
const QUIET_AFTER_MS: i64 = 20_000;
const RATE_PER_SENSOR: i64 = 50;
const RUN_MS: i64 = 60_000;
const WINDOW_MS: i64 = 5_000;
const GRACE_MS: i64 = 2_000;
/// How long after its end plus grace a window may take to become visible: the gateway's clock
/// tick (1 s), its output flush (100 ms), VictoriaMetrics' flush and this test's polling.
const SLACK_MS: i64 = 3_000;
/// Before its end plus grace a window must not be visible at all (allowing for the gateway
/// reading the wall clock once at start).
const EARLY_TOLERANCE_MS: i64 = 100;
const POLL_MS: u64 = 400;

/// What one window of one sensor must show: from the readings the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Expected {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// One window of one sensor as the store has it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Stored {
    count: Option<f64>,
    mean: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    /// Samples of these four series at this window's timestamp (must be exactly 4).
    samples: usize,
}

fn value(k: i64, sensor: usize) -> f64 {
    // Multiples of 0.5 below 51: every sum is exact in f64, whatever the order of addition.
    ((k * 7 + sensor as i64 * 13) % 101) as f64 * 0.5
}

/// `environment_pm2_5_{count,mean,min,max}` per (sensor, window start ms).
fn stored(series: &[ExportedSeries]) -> BTreeMap<(String, i64), Stored> {
    let mut out: BTreeMap<(String, i64), Stored> = BTreeMap::new();
    for s in series {
        let sensor = s.label("sensor_id").unwrap_or("").to_string();
        for (&ts, &v) in s.timestamps_ms.iter().zip(&s.values) {
            let e = out.entry((sensor.clone(), ts)).or_default();
            e.samples += 1;
            match s.name() {
                "environment_pm2_5_count" => e.count = Some(v),
                "environment_pm2_5_mean" => e.mean = Some(v),
                "environment_pm2_5_min" => e.min = Some(v),
                "environment_pm2_5_max" => e.max = Some(v),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn every_window_closes_by_the_clock_under_sustained_load_with_exact_values() {
    let _heavy = HeavyTestLock::acquire();
    let broker = Mosquitto::start().unwrap();
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let http_port = free_port();
    let mut gateway = given_a_gateway_aggregating_5s_windows(&broker, &vm, dir.path(), http_port);
    let mut publisher = MqttPublisher::connect(&broker.url(), "e2e-pub-aggload").unwrap();
    let schedule = Schedule::starting_soon();
    let run = when_the_sensors_publish_while_the_store_is_polled(&mut publisher, &vm, &schedule);
    assert!(
        run.behind_ms < GRACE_MS / 2,
        "the publisher fell {} ms behind its schedule: the machine is too loaded for this test",
        run.behind_ms
    );
    then_the_broker_acked_everything(&publisher, Duration::from_secs(30));
    let expected = expected_windows(&publisher.acked_flags(), &run.sent, &schedule);
    let actual = then_only_aggregates_are_stored(&vm);
    let mut problems = window_value_problems(&expected, &actual);
    problems.extend(window_timeliness_problems(
        &expected,
        &run.first_seen,
        &schedule,
    ));
    let late = metric_in(
        &gateway_metrics(http_port),
        "ioc_gateway_readings_rejected_total",
        &[("input", "env-load")],
    );
    if late != 0.0 {
        problems.push(format!("{late} readings rejected"));
    }
    then_there_are_no_problems(&problems, &gateway);
    when_stopped_then_it_exits_cleanly(&mut gateway, Duration::from_secs(30));
}

/// Given: a gateway aggregating `city/+/env/+` of input `env-load` into `WINDOW_MS` windows with
/// `GRACE_MS` grace, writing to `vm`, subscribed.
fn given_a_gateway_aggregating_5s_windows(
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
    dir: &Path,
    http_port: u16,
) -> GatewayProcess {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let client_id = "e2e-gw-aggload";
    let topic = "city/+/env/+";
    let config = format!(
        "# written by tests/tests/aggregate_load_e2e.rs\n\
         [gateway]\nid = \"e2e-gw\"\ndata_dir = \"{}\"\n\n\
         [[inputs.mqtt]]\nurl = \"{}\"\nclient_id = \"{client_id}\"\ntopics = [\"{topic}\"]\nqos = 1\n\
         name = \"env-load\"\nmeasurement = \"environment\"\ntopic_tags = \"_/district/_/sensor_id\"\n\
         timestamp_field = \"ts\"\ntimestamp_unit = \"ms\"\n\
         [inputs.mqtt.aggregate]\nwindow_s = {}\ngrace_s = {}\n\n\
         [output.influxdb]\nurl = \"{}\"\napi = \"v2\"\norg = \"ioc\"\nbucket = \"telemetry\"\nflush_interval_ms = 100\n\n\
         [buffer]\nmax_disk_mb = 1024\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n",
        data_dir.display(),
        broker.url(),
        WINDOW_MS / 1000,
        GRACE_MS / 1000,
        vm.url(),
    );
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, config).unwrap();
    given_a_gateway_subscribed(broker, &config_path, &[(client_id, topic)])
}

/// When the readings are published: from a window boundary `a`, one tick of `tick_ms` per
/// reading per sensor for `RUN_MS`.
struct Schedule {
    a: i64,
    ticks: i64,
    tick_ms: i64,
    /// When the last window is due (its end plus grace).
    last_due: i64,
}

impl Schedule {
    /// Starts on a window boundary at least 3 s away (the gateway waits 2 s after connecting
    /// before it closes windows by the clock).
    fn starting_soon() -> Schedule {
        let a = ((now_ms() + 3_000) / WINDOW_MS + 1) * WINDOW_MS;
        let ticks = RUN_MS * RATE_PER_SENSOR / 1000;
        let tick_ms = 1000 / RATE_PER_SENSOR;
        let last_ts = a + ticks * tick_ms - 1;
        let last_due = (last_ts / WINDOW_MS + 1) * WINDOW_MS + GRACE_MS;
        Schedule {
            a,
            ticks,
            tick_ms,
            last_due,
        }
    }

    /// Until when the store is polled: the last window's time plus slack, and 2 s more.
    fn polled_until(&self) -> i64 {
        self.last_due + SLACK_MS + 2_000
    }
}

/// What the publishing run did and saw.
struct LoadRun {
    /// (publish index, sensor, ts ms, value) of every reading published.
    sent: Vec<(usize, usize, i64, f64)>,
    /// When each (sensor, window start ms) first became visible in the store (ms, after the
    /// export answered).
    first_seen: BTreeMap<(String, i64), i64>,
    /// How far the publisher fell behind its schedule at worst.
    behind_ms: i64,
}

/// When: `SENSORS` sensors publish on the schedule (`QUIET_FROM..SENSORS` stop after
/// `QUIET_AFTER_MS`), each sensor's clock a few ms apart from the others' within the tick, while
/// the store is polled every `POLL_MS` until [`Schedule::polled_until`].
fn when_the_sensors_publish_while_the_store_is_polled(
    publisher: &mut MqttPublisher,
    vm: &VictoriaMetrics,
    schedule: &Schedule,
) -> LoadRun {
    let Schedule {
        a, ticks, tick_ms, ..
    } = *schedule;
    let first_seen: Mutex<BTreeMap<(String, i64), i64>> = Mutex::new(BTreeMap::new());
    let polling = AtomicBool::new(true);
    let mut sent: Vec<(usize, usize, i64, f64)> = Vec::with_capacity((ticks as usize) * SENSORS);
    let mut behind_ms = 0i64;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while polling.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(POLL_MS));
                if vm.force_flush().is_err() {
                    continue;
                }
                let Ok(series) = vm.export("environment_pm2_5_count") else {
                    continue;
                };
                let seen_at = now_ms();
                let mut first = first_seen.lock().unwrap();
                for s in &series {
                    let sensor = s.label("sensor_id").unwrap_or("").to_string();
                    for &ts in &s.timestamps_ms {
                        first.entry((sensor.clone(), ts)).or_insert(seen_at);
                    }
                }
            }
        });
        for k in 0..ticks {
            let t = a + k * tick_ms;
            let now = now_ms();
            if t > now {
                std::thread::sleep(Duration::from_millis((t - now) as u64));
            } else {
                behind_ms = behind_ms.max(now - t);
            }
            for sensor in 0..SENSORS {
                if sensor >= QUIET_FROM && t - a >= QUIET_AFTER_MS {
                    continue;
                }
                // Each sensor's own clock is a few ms apart from the others', within the tick
                // (so a sensor's last reading stays in the window of its tick).
                let ts = t + sensor as i64 * tick_ms / SENSORS as i64;
                let v = value(k, sensor);
                let index = publisher
                    .publish(
                        &format!("city/d1/env/s{sensor:02}"),
                        format!(r#"{{"ts":{ts},"pm2_5":{v},"status":"ok"}}"#),
                    )
                    .unwrap();
                sent.push((index, sensor, ts, v));
            }
        }
        let stop_at = schedule.polled_until();
        while now_ms() < stop_at {
            std::thread::sleep(Duration::from_millis(200));
        }
        polling.store(false, Ordering::SeqCst);
    });
    LoadRun {
        sent,
        first_seen: first_seen.into_inner().unwrap(),
        behind_ms,
    }
}

/// What each window must hold: the acknowledged readings of `sent` (`acked` by publish index).
/// Checks the test itself: every quiet sensor has its last window, and the number of windows is
/// what the schedule gives.
fn expected_windows(
    acked: &[bool],
    sent: &[(usize, usize, i64, f64)],
    schedule: &Schedule,
) -> BTreeMap<(String, i64), Expected> {
    let mut expected: BTreeMap<(String, i64), Expected> = BTreeMap::new();
    for &(index, sensor, ts, v) in sent {
        if !acked[index] {
            continue;
        }
        let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        let e = expected
            .entry((format!("s{sensor:02}"), start))
            .or_insert(Expected {
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            });
        e.count += 1;
        e.sum += v;
        e.min = e.min.min(v);
        e.max = e.max.max(v);
    }
    let quiet_last = ((schedule.a + QUIET_AFTER_MS - 1) / WINDOW_MS) * WINDOW_MS;
    for sensor in QUIET_FROM..SENSORS {
        assert!(
            expected.contains_key(&(format!("s{sensor:02}"), quiet_last)),
            "test bug: no last window for quiet sensor {sensor}"
        );
    }
    assert_eq!(
        expected.len(),
        QUIET_FROM * (RUN_MS / WINDOW_MS) as usize
            + (SENSORS - QUIET_FROM) * (QUIET_AFTER_MS / WINDOW_MS) as usize,
        "test bug: unexpected number of windows"
    );
    expected
}

/// Then: every `environment_*` series in the store is an aggregate (`agg="5s"`): no raw reading
/// was forwarded. Returns the windows stored.
fn then_only_aggregates_are_stored(vm: &VictoriaMetrics) -> BTreeMap<(String, i64), Stored> {
    vm.force_flush().unwrap();
    let series = vm.export("{__name__=~\"environment_.*\"}").unwrap();
    for s in &series {
        assert_eq!(
            s.label("agg"),
            Some("5s"),
            "raw reading forwarded: {:?}",
            s.labels
        );
    }
    stored(&series)
}

/// Windows whose values differ from `expected` (count, mean, min, max, exactly 4 samples),
/// expected windows missing, and windows stored that were not expected.
fn window_value_problems(
    expected: &BTreeMap<(String, i64), Expected>,
    actual: &BTreeMap<(String, i64), Stored>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, e) in expected {
        let want = Stored {
            count: Some(e.count as f64),
            mean: Some(e.sum / e.count as f64),
            min: Some(e.min),
            max: Some(e.max),
            samples: 4,
        };
        match actual.get(key) {
            None => problems.push(format!("window {key:?} missing (expected {e:?})")),
            Some(got) if *got != want => {
                problems.push(format!("window {key:?}: stored {got:?}, expected {want:?}"))
            }
            Some(_) => {}
        }
    }
    for key in actual.keys() {
        if !expected.contains_key(key) {
            problems.push(format!("unexpected window {key:?}: {:?}", actual[key]));
        }
    }
    problems
}

/// Windows that did not become visible after their end + grace within the slack: never seen
/// while polling, seen too late, or seen too early.
fn window_timeliness_problems(
    expected: &BTreeMap<(String, i64), Expected>,
    first_seen: &BTreeMap<(String, i64), i64>,
    schedule: &Schedule,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (sensor, start) in expected.keys() {
        let due = start + WINDOW_MS + GRACE_MS;
        match first_seen.get(&(sensor.clone(), *start)) {
            None => problems.push(format!(
                "window ({sensor}, {start}) not visible while polling (due at {due}, polled until {})",
                schedule.polled_until()
            )),
            Some(&seen) if seen > due + SLACK_MS => problems.push(format!(
                "window ({sensor}, {start}) visible {} ms after its end + grace (slack {SLACK_MS} ms)",
                seen - due
            )),
            Some(&seen) if seen < due - EARLY_TOLERANCE_MS => problems.push(format!(
                "window ({sensor}, {start}) visible {} ms before its end + grace",
                due - seen
            )),
            Some(_) => {}
        }
    }
    problems
}

/// Then: no problem at all (the first 30 are shown, with the gateway's log).
fn then_there_are_no_problems(problems: &[String], gateway: &GatewayProcess) {
    let shown = problems.len().min(30);
    assert!(
        problems.is_empty(),
        "{} problems (first {shown}):\n{}\n--- gateway log ---\n{}",
        problems.len(),
        problems[..shown].join("\n"),
        gateway.log_tail(30)
    );
}
