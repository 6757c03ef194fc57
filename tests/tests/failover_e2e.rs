//! An output with two URLs (`urls = [...]`), two real `vmagent`s in front of one real
//! VictoriaMetrics: one vmagent stopped mid-run, nothing lost, the switch visible.
//!
//! Why it exists: an IOC runs several ingest points so that one can fail or be upgraded. A
//! gateway that retried the dead one with backoff would fill its buffer and deliver late; one
//! that lost or doubled a batch while switching would break the promise. The real gateway
//! binary, under 500 messages/s:
//! 1. everything goes to the first vmagent;
//! 2. it is stopped (SIGTERM; it keeps what it has not forwarded in its disk queue): the
//!    gateway moves to the second at once — said in the log, in `/api/sensors` (`store.endpoint`)
//!    and in `ioc_gateway_output_failovers_total` / `ioc_gateway_output_endpoint_active{url}`;
//! 3. the first is started again (its queue drains): every message is in VictoriaMetrics.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ioc_e2e::gateway_toml::{env_input, gateway_head, V2_API};
use ioc_e2e::{
    free_port, gateway_metrics, http_get, metric_in, wait_until, GatewayProcess, HeavyTestLock,
    Mosquitto, MqttPublisher, VictoriaMetrics, VmAgent,
};
use tempfile::TempDir;

const GATEWAY_ID: &str = "failover-gw";
const BASE_TS_MS: i64 = 1_700_000_000_000;
const RATE: u64 = 500;

fn stored(vm: &VictoriaMetrics) -> BTreeSet<u64> {
    let _ = vm.force_flush();
    vm.export("{__name__=\"fo_n\"}")
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.values.into_iter().map(|v| v as u64))
        .collect()
}

fn store_endpoint(http: u16) -> Option<String> {
    let (_, body) = http_get(&format!("http://127.0.0.1:{http}/api/sensors"));
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["store"]["endpoint"].as_str().map(str::to_owned)
}

#[test]
fn a_stopped_vmagent_is_left_for_the_next_url_at_once_and_nothing_is_lost() {
    let _heavy = HeavyTestLock::acquire();
    let vm = VictoriaMetrics::start().unwrap();
    let mut first = VmAgent::start(&vm.url()).unwrap();
    let second = VmAgent::start(&vm.url()).unwrap();
    let broker = Mosquitto::start().unwrap();
    let dir = TempDir::new().unwrap();
    let http = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"{head}{env}
[output.influxdb]
urls = ["{a}", "{b}"]
{V2_API}flush_interval_ms = 100
timeout_ms = 2000

[http]
listen = "127.0.0.1:{http}"
"#,
            head = gateway_head(GATEWAY_ID, &dir.path().join("data")),
            env = env_input(&broker.url(), GATEWAY_ID, "fo"),
            a = first.url(),
            b = second.url(),
        ),
    )
    .unwrap();
    let mut gateway = GatewayProcess::spawn(&config).unwrap();
    assert!(
        broker.wait_for_subscription(GATEWAY_ID, "city/+/env/+", 0, Duration::from_secs(20)),
        "{}",
        gateway.log_tail(30)
    );
    let mut publisher = MqttPublisher::connect(&broker.url(), "failover-pub").unwrap();
    let start = Instant::now();
    let mut k = 0u64;
    let publish_for = |publisher: &mut MqttPublisher, k: &mut u64, secs: u64| {
        let until = start.elapsed() + Duration::from_secs(secs);
        while start.elapsed() < until {
            let due = start.elapsed().as_millis() as u64 * RATE / 1000;
            while *k < due {
                let payload = format!(r#"{{"n":{k},"ts":{}}}"#, BASE_TS_MS + *k as i64);
                publisher
                    .publish(&format!("city/d1/env/s{}", *k % 10), payload)
                    .unwrap();
                *k += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // 1. The first URL takes everything.
    publish_for(&mut publisher, &mut k, 3);
    assert!(
        wait_until(Duration::from_secs(30), || stored(&vm).len() as u64
            >= k / 2),
        "{}",
        gateway.log_tail(30)
    );
    assert_eq!(store_endpoint(http), None, "no switch yet");

    // 2. The first vmagent goes away mid-run.
    first.stop();
    publish_for(&mut publisher, &mut k, 4);
    assert!(
        wait_until(Duration::from_secs(30), || store_endpoint(http).as_deref()
            == Some(&format!("127.0.0.1:{}", second.port()))),
        "no switch to the second URL: {:?}\n{}",
        store_endpoint(http),
        gateway.log_tail(30)
    );
    assert!(gateway
        .log()
        .contains("store URL failed; sending to the next one"));
    let metrics = gateway_metrics(http);
    assert!(metric_in(&metrics, "ioc_gateway_output_failovers_total", &[]) >= 1.0);
    assert_eq!(
        metric_in(
            &metrics,
            "ioc_gateway_output_endpoint_active",
            &[("url", &format!("127.0.0.1:{}", second.port()))]
        ),
        1.0
    );
    publish_for(&mut publisher, &mut k, 3);
    assert!(publisher.wait_all_acked(Duration::from_secs(30)));
    let total = k;

    // 3. The first comes back and forwards its queue: everything is in the store.
    first.start_again().unwrap();
    let complete = wait_until(Duration::from_secs(60), || {
        stored(&vm).len() as u64 == total
    });
    let have = stored(&vm);
    let missing: Vec<u64> = (0..total).filter(|n| !have.contains(n)).take(20).collect();
    assert!(
        complete,
        "{} of {total} stored; first missing {missing:?}\n{}\n{}",
        have.len(),
        gateway.log_tail(30),
        first.log_tail(20)
    );
    eprintln!("failover: {total} messages at {RATE}/s, all stored; switched to the second vmagent");
    gateway.sigterm();
    assert!(gateway
        .wait_exit(Duration::from_secs(40))
        .unwrap()
        .success());
}
