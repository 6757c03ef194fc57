//! The forwarder's order between urgent and normal data, in process, over a real buffer on disk
//! and a real VictoriaMetrics behind the harness's proxy (which records what each request held).
//!
//! - A steady urgent backlog still leaves normal data a share: a normal batch is sent after at
//!   most `URGENT_STREAK_MAX` urgent ones, not after all of them.
//! - A commit of urgent data wakes a forwarder that waits for a normal batch to fill: with
//!   `flush_interval` at 60 s, the urgent reading is stored long before it (and the waiting
//!   normal line is not sent early with it beyond what the buffer hands out).

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ioc_e2e::{wait_until, FaultProxy, VictoriaMetrics};
use ioc_gateway::buffer::{self, BufferConfig};
use ioc_gateway::model::Priority;
use ioc_gateway::output::filter::MeasurementFilter;
use ioc_gateway::output::forwarder::URGENT_STREAK_MAX;
use ioc_gateway::output::influx::{Api, InfluxSink, InfluxSinkConfig};
use ioc_gateway::output::{run_forwarder, ForwarderConfig, OutputSetup};
use ioc_gateway::shutdown::Shutdown;
use ioc_gateway::status::StoreState;

fn inflate(body: &[u8]) -> String {
    let mut out = Vec::new();
    let _ = flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A proxy in front of `vm` that records, per request, whether it held urgent (`u`) or normal
/// (`n`) lines.
fn recording_proxy(vm: &VictoriaMetrics) -> (FaultProxy, Arc<Mutex<Vec<char>>>) {
    let proxy = FaultProxy::start(vm.port()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    proxy.set_rule(Some(Arc::new(move |body: &[u8]| {
        let text = inflate(body);
        let kind = if text.starts_with("fl_u") { 'u' } else { 'n' };
        record.lock().unwrap().push(kind);
        None
    })));
    (proxy, seen)
}

fn setup(url: &str, dir: &std::path::Path, flush: Duration) -> Arc<OutputSetup> {
    let mut cfg = InfluxSinkConfig::new(url, Api::V2, dir);
    cfg.bucket = "telemetry".into();
    let sink = Arc::new(InfluxSink::new(cfg).unwrap());
    OutputSetup::new(
        "default",
        sink,
        ForwarderConfig {
            batch_max_lines: 10,
            flush_interval: flush,
        },
        MeasurementFilter::default(),
    )
}

/// A forwarder over `reader` to `url`, batches of 10 lines or `flush`: its settings' sender
/// (keep it while the forwarder runs), its stop signal and its task.
fn start_forwarder(
    reader: buffer::BufferReader,
    url: &str,
    dir: &std::path::Path,
    flush: Duration,
) -> (
    tokio::sync::watch::Sender<Arc<OutputSetup>>,
    Shutdown,
    tokio::task::JoinHandle<buffer::BufferReader>,
) {
    let (tx, rx) = tokio::sync::watch::channel(setup(url, dir, flush));
    let stop = Shutdown::new();
    let task = tokio::spawn(run_forwarder(
        reader,
        rx,
        StoreState::default(),
        stop.clone(),
    ));
    (tx, stop, task)
}

/// `lines` lines of measurement `m`, values from `from`.
fn lp(m: &str, from: u32, lines: u32) -> Vec<u8> {
    (from..from + lines)
        .map(|i| {
            format!(
                "{m} v={i} {}\n",
                1_700_000_000_000_000_000i64 + i64::from(i) * 1_000_000
            )
        })
        .collect::<String>()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_data_keeps_a_share_under_an_urgent_backlog() {
    let vm = VictoriaMetrics::start().unwrap();
    let (proxy, seen) = recording_proxy(&vm);
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, _) =
        buffer::open(BufferConfig::new(dir.path().join("buffer"), 64 << 20)).unwrap();
    // A backlog of both: 20 urgent and 5 normal records of 10 lines, each a batch.
    for i in 0..20 {
        writer
            .append(Priority::Urgent, 10, lp("fl_u", i * 10, 10))
            .await
            .unwrap();
    }
    for i in 0..5 {
        writer
            .append(Priority::Normal, 10, lp("fl_n", i * 10, 10))
            .await
            .unwrap();
    }
    let (_settings, stop, task) =
        start_forwarder(reader, &proxy.url(), dir.path(), Duration::from_millis(10));
    let all = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), || {
            let _ = vm.force_flush();
            vm.count_points("{__name__=~\"fl_.*\"}").unwrap_or(0) == 250
        })
    })
    .await
    .unwrap();
    stop.trigger();
    let _ = task.await;
    let order: String = seen.lock().unwrap().iter().collect();
    assert!(all, "everything stored; requests {order}");
    let first_normal = order.find('n').unwrap();
    let last_urgent = order.rfind('u').unwrap();
    // Normal's turn comes after URGENT_STREAK_MAX urgent batches; the forwarder waits only
    // 50 ms for that normal batch to be read (urgent data is not held up for it), so on a
    // loaded machine the turn can pass once more. Without the share the first normal batch
    // would come after all 20 urgent ones.
    assert!(
        first_normal <= 2 * URGENT_STREAK_MAX as usize + 1,
        "a normal batch after at most {URGENT_STREAK_MAX} urgent ones (twice that on a loaded machine): {order}"
    );
    assert!(first_normal < last_urgent, "{order}");
    eprintln!("forwarder lanes: request order {order}");
    writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_commit_wakes_a_forwarder_waiting_for_a_batch_to_fill() {
    let vm = VictoriaMetrics::start().unwrap();
    let (proxy, seen) = recording_proxy(&vm);
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, _) =
        buffer::open(BufferConfig::new(dir.path().join("buffer"), 64 << 20)).unwrap();
    let (_settings, stop, task) =
        start_forwarder(reader, &proxy.url(), dir.path(), Duration::from_secs(60));
    // The first batch goes at once (nothing sent yet); after it the forwarder waits 60 s for a
    // small normal batch to fill.
    writer
        .append(Priority::Normal, 1, lp("fl_n", 0, 1))
        .await
        .unwrap();
    let seen_first = seen.clone();
    assert!(
        tokio::task::spawn_blocking(move || wait_until(Duration::from_secs(20), || {
            seen_first.lock().unwrap().len() == 1
        }))
        .await
        .unwrap(),
        "the first batch is sent at once"
    );
    writer
        .append(Priority::Normal, 1, lp("fl_n", 1, 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a small normal batch waits to fill"
    );
    writer
        .append(Priority::Urgent, 1, lp("fl_u", 0, 1))
        .await
        .unwrap();
    let urgent_stored = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), || {
            let _ = vm.force_flush();
            vm.count_points("{__name__=\"fl_u_v\"}").unwrap_or(0) == 1
        })
    })
    .await
    .unwrap();
    let order: String = seen.lock().unwrap().iter().collect();
    assert!(
        urgent_stored,
        "the urgent reading went without waiting for the 60 s flush interval: {order}"
    );
    stop.trigger();
    let _ = task.await;
    writer.shutdown().await;
}
