//! `ioc-gateway buffer stats|export` and the data-directory lock, through the real binary.
//!
//! A buffer with known readings in both classes (some acked) is built with the library's
//! `DiskBuffer`; the binary must then report its figures exactly, export exactly the line
//! protocol the sink would send, skip exactly the damaged records, leave every byte of the
//! directory as it was, and refuse to run a second gateway on a directory in use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ioc_gateway::buffer::{self, BufferConfig};
use ioc_gateway::model::Priority;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ioc-gateway");

// Records, one append each; timestamps deliberately out of order within a class.
const U0: &str = "camera,cam=c1 person=1i 1700000000100000000\n";
const U1: &str =
    "camera,cam=c2 person=2i 1700000000300000000\ncamera,cam=c3 car=1i 1700000000200000000\n";
const N0: &str = "env,sensor=a t=20.5 1700000001000000000\nenv,sensor=b t=21 1700000002000000000\n";
const N1: &str = "env,sensor=a t=20.6 1700000003000000000\n";
const N2: &str = "env,sensor=a t=20.7 1700000009000000000\nenv,sensor=b rh=40i 1700000004000000000\nenv,sensor=c s=\"a b 5\" 1700000007000000000\n";
const N3: &str = "env,sensor=d t=-1.5 1700000005000000000\n";

fn lines(text: &str) -> u32 {
    text.matches('\n').count() as u32
}

/// Builds `<data_dir>/buffer` with U0 U1 (urgent) and N0..N3 (normal); U0, N0 and N1 acked.
async fn build_buffer(data_dir: &Path) {
    let (writer, mut reader, _) =
        buffer::open(BufferConfig::new(data_dir.join("buffer"), 64 << 20)).unwrap();
    for (priority, text) in [
        (Priority::Urgent, U0),
        (Priority::Urgent, U1),
        (Priority::Normal, N0),
        (Priority::Normal, N1),
        (Priority::Normal, N2),
        (Priority::Normal, N3),
    ] {
        writer
            .append(priority, lines(text), text.as_bytes().to_vec())
            .await
            .unwrap();
    }
    // One record per batch, urgent first: U0 U1 N0 N1 N2 N3.
    let mut batches = Vec::new();
    for _ in 0..6 {
        batches.push(reader.next_batch(1).await.unwrap());
    }
    let order: Vec<String> = batches
        .iter()
        .map(|b| String::from_utf8(b.line_protocol().unwrap()).unwrap())
        .collect();
    assert_eq!(order, [U0, U1, N0, N1, N2, N3]);
    for i in [0, 2, 3] {
        reader.ack(&batches[i]).await.unwrap();
    }
    writer.shutdown().await;
    drop(reader);
    wait_unlocked(&data_dir.join("buffer"));
}

/// Waits until nobody holds `<dir>/LOCK` (the library releases it moments after the buffer is
/// dropped).
fn wait_unlocked(dir: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let file = std::fs::File::open(dir.join("LOCK")).unwrap();
        if Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "buffer lock never released");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `(offset, length)` of every record in a segment, from the documented header layout.
fn record_spans(path: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let mut spans = Vec::new();
    let mut at = 0usize;
    while at + 32 <= bytes.len() {
        assert_eq!(&bytes[at..at + 4], b"IOCR");
        let payload = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        spans.push((at as u64, (32 + payload) as u64));
        at += 32 + payload;
    }
    assert_eq!(at, bytes.len());
    spans
}

/// The only segment of a class.
fn segment(data_dir: &Path, class: &str) -> PathBuf {
    let dir = data_dir.join("buffer").join(class);
    let segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.into_iter().next().unwrap()
}

fn segment_id(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Every file under `dir` with its bytes (and every directory, with no bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                todo.push(path);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ ioc-gateway {}\n  exit {:?}, stderr: {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn stats_json(args: &[&str]) -> Value {
    let mut all = vec!["buffer", "stats", "--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn export(args: &[&str]) -> (String, String) {
    let mut all = vec!["buffer", "export"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_eq!(out.status.code(), Some(0));
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn write_config(data_dir: &Path, max_disk_mb: u64) -> PathBuf {
    let path = data_dir.with_extension("toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nid = \"buffer-cli-test\"\ndata_dir = \"{}\"\n\n\
             [output.influxdb]\nurl = \"http://127.0.0.1:1\"\napi = \"v1\"\ndatabase = \"telemetry\"\n\n\
             [http]\nenabled = false\n\n[buffer]\nmax_disk_mb = {max_disk_mb}\n",
            data_dir.display()
        ),
    )
    .unwrap();
    path
}

fn ts_ms(ns: i64) -> i64 {
    ns / 1_000_000
}

#[tokio::test]
async fn stats_report_every_figure_exactly_and_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    build_buffer(&data_dir).await;
    let config = write_config(&data_dir, 64);
    let before = snapshot(&data_dir);

    let urgent_seg = segment(&data_dir, "urgent");
    let normal_seg = segment(&data_dir, "normal");
    let u = record_spans(&urgent_seg);
    let n = record_spans(&normal_seg);
    assert_eq!((u.len(), n.len()), (2, 4));
    let u_size = std::fs::metadata(&urgent_seg).unwrap().len();
    let n_size = std::fs::metadata(&normal_seg).unwrap().len();

    let via_config = stats_json(&["--config", config.to_str().unwrap()]);
    let via_dir = stats_json(&["--data-dir", data_dir.to_str().unwrap()]);
    let via_buffer_dir = stats_json(&["--data-dir", data_dir.join("buffer").to_str().unwrap()]);
    for j in [&via_config, &via_dir, &via_buffer_dir] {
        let now = j["now_ms"].as_i64().unwrap();
        assert_eq!(
            j["dir"].as_str().unwrap(),
            data_dir.join("buffer").to_str().unwrap()
        );
        assert_eq!(j["segments"], 2);
        assert_eq!(j["disk_bytes"].as_u64().unwrap(), u_size + n_size);
        assert_eq!(j["lock_pid"].as_u64(), Some(u64::from(std::process::id())));
        assert_eq!(j["lock"]["state"], "free");

        let c = &j["urgent"];
        assert_eq!(c["segments"], 1);
        assert_eq!(c["disk_bytes"].as_u64().unwrap(), u_size);
        assert_eq!(
            (c["records"].as_u64(), c["lines"].as_u64()),
            (Some(2), Some(3))
        );
        let s = &c["unsent"];
        assert_eq!(
            (s["records"].as_u64(), s["lines"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(s["disk_bytes"].as_u64().unwrap(), u[1].1);
        assert_eq!(s["line_protocol_bytes"].as_u64().unwrap(), U1.len() as u64);
        assert_eq!(
            s["oldest_reading_ns"].as_i64(),
            Some(1_700_000_000_200_000_000)
        );
        assert_eq!(
            s["newest_reading_ns"].as_i64(),
            Some(1_700_000_000_300_000_000)
        );
        assert_eq!(s["oldest_reading_utc"], "2023-11-14T22:13:20Z");
        assert_eq!(
            s["oldest_reading_age_ms"].as_i64().unwrap(),
            now - ts_ms(1_700_000_000_200_000_000)
        );
        assert_eq!(
            s["newest_reading_age_ms"].as_i64().unwrap(),
            now - ts_ms(1_700_000_000_300_000_000)
        );
        assert_eq!(s["lines_without_timestamp"], 0);
        let appended = s["oldest_append_ms"].as_i64().unwrap();
        assert!(now - appended >= 0 && now - appended < 60_000, "{appended}");
        assert_eq!(s["oldest_append_age_ms"].as_i64().unwrap(), now - appended);
        let a = &c["acked_not_deleted"];
        assert_eq!(
            (a["records"].as_u64(), a["lines"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(a["disk_bytes"].as_u64().unwrap(), u[0].1);
        assert_eq!(
            c["cursor"],
            serde_json::json!({"state": "valid", "segment": segment_id(&urgent_seg), "offset": u[0].1})
        );
        for key in [
            "damaged_bytes",
            "damaged_ranges",
            "torn_tail_bytes",
            "torn_tails",
            "would_drop_on_recovery_bytes",
            "undecodable_records",
        ] {
            assert_eq!(c["damage"][key], 0, "urgent {key}");
            assert_eq!(j["normal"]["damage"][key], 0, "normal {key}");
        }

        let c = &j["normal"];
        assert_eq!(c["segments"], 1);
        assert_eq!(c["disk_bytes"].as_u64().unwrap(), n_size);
        assert_eq!(
            (c["records"].as_u64(), c["lines"].as_u64()),
            (Some(4), Some(7))
        );
        let s = &c["unsent"];
        assert_eq!(
            (s["records"].as_u64(), s["lines"].as_u64()),
            (Some(2), Some(4))
        );
        assert_eq!(s["disk_bytes"].as_u64().unwrap(), n[2].1 + n[3].1);
        assert_eq!(
            s["line_protocol_bytes"].as_u64().unwrap(),
            (N2.len() + N3.len()) as u64
        );
        assert_eq!(
            s["oldest_reading_ns"].as_i64(),
            Some(1_700_000_004_000_000_000)
        );
        assert_eq!(
            s["newest_reading_ns"].as_i64(),
            Some(1_700_000_009_000_000_000)
        );
        assert_eq!(s["newest_reading_utc"], "2023-11-14T22:13:29Z");
        let a = &c["acked_not_deleted"];
        assert_eq!(
            (a["records"].as_u64(), a["lines"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(a["disk_bytes"].as_u64().unwrap(), n[0].1 + n[1].1);
        assert_eq!(
            c["cursor"],
            serde_json::json!({"state": "valid", "segment": segment_id(&normal_seg), "offset": n[2].0})
        );
        assert_eq!(c["vanished_segments"], 0);
    }
    // The bound is known only from a config: 64 MiB.
    assert_eq!(via_config["max_disk_bytes"].as_u64(), Some(64 << 20));
    assert_eq!(
        via_config["disk_used_permille"].as_u64(),
        Some((u_size + n_size) * 1000 / (64 << 20))
    );
    assert_eq!(via_dir["max_disk_bytes"], Value::Null);

    // The text report says the same in words.
    let out = run(&["buffer", "stats", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    assert!(text.contains("  no gateway running on it\n"), "{text}");
    assert!(text.contains(&format!(
        "  unsent            2 lines in 1 record, {} B on disk, {} B of line protocol\n",
        u[1].1,
        U1.len()
    )));
    assert!(
        text.contains("  oldest reading    2023-11-14T22:13:24Z ("),
        "{text}"
    );
    assert!(text.contains("  damaged           none\n"), "{text}");
    assert!(text.contains("bound 64.0 MiB (0.0 % used)"), "{text}");

    assert_eq!(snapshot(&data_dir), before, "stats changed the data dir");
}

#[tokio::test]
async fn export_writes_exactly_the_line_protocol_the_sink_would_send() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    build_buffer(&data_dir).await;
    let before = snapshot(&data_dir);
    let dir = data_dir.to_str().unwrap();

    let cases: [(&[&str], String, &str); 6] = [
        (&[], [U1, N2, N3].concat(), "exported 6 lines"),
        (
            &["--class", "all"],
            [U1, N2, N3].concat(),
            "exported 6 lines",
        ),
        (&["--class", "urgent"], U1.to_string(), "exported 2 lines"),
        (
            &["--class", "normal"],
            [N2, N3].concat(),
            "exported 4 lines",
        ),
        (
            &["--include-acked"],
            [U0, U1, N0, N1, N2, N3].concat(),
            "exported 10 lines",
        ),
        (
            &["--class", "normal", "--include-acked"],
            [N0, N1, N2, N3].concat(),
            "exported 7 lines",
        ),
    ];
    for (args, expected, summary_start) in cases {
        let mut all = vec!["--data-dir", dir];
        all.extend_from_slice(args);
        let (stdout, stderr) = export(&all);
        assert_eq!(stdout, expected, "{args:?}");
        let summary = stderr.trim_end();
        assert!(!summary.contains('\n'), "one summary line: {stderr}");
        assert!(summary.starts_with(summary_start), "{summary}");
        assert!(
            summary.contains(&format!("({} bytes)", expected.len())),
            "{summary}"
        );
        assert!(
            summary.ends_with("skipped 0 damaged bytes in 0 ranges"),
            "{summary}"
        );
    }
    let (_, stderr) = export(&["--data-dir", dir, "--include-acked"]);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "exported 10 lines ({} bytes) in 6 records from 2 segments; skipped 0 damaged bytes in 0 ranges",
            [U0, U1, N0, N1, N2, N3].concat().len()
        )
    );

    // To a file, via the config; the file is exactly stdout's bytes.
    let config = write_config(&data_dir, 64);
    let file = tmp.path().join("export.lp");
    let (stdout, _) = export(&[
        "--config",
        config.to_str().unwrap(),
        "--output",
        file.to_str().unwrap(),
    ]);
    assert_eq!(stdout, "");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        [U1, N2, N3].concat()
    );
    // Never into the buffer itself.
    let inside = data_dir.join("buffer").join("x.lp");
    let out = run(&[
        "buffer",
        "export",
        "--data-dir",
        dir,
        "-o",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!inside.exists());

    assert_eq!(snapshot(&data_dir), before, "export changed the data dir");

    // A missing directory is a clear error, exit 2.
    let missing = tmp.path().join("nope");
    for sub in ["stats", "export"] {
        let out = run(&["buffer", sub, "--data-dir", missing.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            format!("error: {}: no such directory\n", missing.display())
        );
    }
}

#[tokio::test]
async fn a_torn_tail_and_a_flipped_bit_are_skipped_exactly_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    build_buffer(&data_dir).await;
    let normal_seg = segment(&data_dir, "normal");
    let n = record_spans(&normal_seg);
    let mut bytes = std::fs::read(&normal_seg).unwrap();
    // A flipped bit in the payload of N2 (unsent), and the first 50 bytes of a copy of N3 at
    // the end: a write cut short by a power cut.
    bytes[(n[2].0 + 40) as usize] ^= 0x10;
    let torn = bytes[n[3].0 as usize..(n[3].0 + 50) as usize].to_vec();
    bytes.extend_from_slice(&torn);
    std::fs::write(&normal_seg, &bytes).unwrap();
    let before = snapshot(&data_dir);
    let dir = data_dir.to_str().unwrap();

    let (stdout, stderr) = export(&["--data-dir", dir]);
    assert_eq!(stdout, [U1, N3].concat());
    assert_eq!(
        stderr.trim_end(),
        format!(
            "exported 3 lines ({} bytes) in 2 records from 2 segments; skipped {} damaged bytes in 2 ranges (50 bytes a torn tail)",
            U1.len() + N3.len(),
            n[2].1 + 50
        )
    );
    let (stdout, _) = export(&["--data-dir", dir, "--class", "normal", "--include-acked"]);
    assert_eq!(stdout, [N0, N1, N3].concat());

    let j = stats_json(&["--data-dir", dir]);
    let c = &j["normal"];
    assert_eq!(
        (c["records"].as_u64(), c["lines"].as_u64()),
        (Some(3), Some(4))
    );
    assert_eq!(c["disk_bytes"].as_u64().unwrap(), bytes.len() as u64);
    assert_eq!(c["unsent"]["lines"], 1);
    assert_eq!(c["unsent"]["disk_bytes"].as_u64().unwrap(), n[3].1);
    assert_eq!(
        c["unsent"]["oldest_reading_ns"].as_i64(),
        Some(1_700_000_005_000_000_000)
    );
    let d = &c["damage"];
    assert_eq!(d["damaged_bytes"].as_u64().unwrap(), n[2].1);
    assert_eq!(d["damaged_ranges"], 1);
    assert_eq!(d["torn_tail_bytes"], 50);
    assert_eq!(d["torn_tails"], 1);
    assert_eq!(
        d["would_drop_on_recovery_bytes"].as_u64().unwrap(),
        n[2].1 + 50
    );
    assert_eq!(j["urgent"]["damage"]["would_drop_on_recovery_bytes"], 0);

    assert_eq!(snapshot(&data_dir), before, "a damaged buffer was modified");

    // And the gateway's own recovery agrees: it drops exactly those bytes.
    let (_w, _r, report) =
        buffer::open(BufferConfig::new(data_dir.join("buffer"), 64 << 20)).unwrap();
    assert_eq!(report.dropped_bytes, n[2].1 + 50);
    assert_eq!(report.unsent_lines, 2 + 1);
}

/// Kills the child on drop, so a failing test leaves no gateway behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_second_gateway_on_the_same_dir_fails_and_export_still_works() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    build_buffer(&data_dir).await;
    let config = write_config(&data_dir, 64);
    let config = config.to_str().unwrap();
    let buffer_dir = data_dir.join("buffer");

    // The first gateway: its store is unreachable, so everything stays buffered.
    let first = Child(
        Command::new(BIN)
            .args(["run", "--config", config])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = first.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while buffer::read_lock_pid(&buffer_dir) != Some(pid) {
        assert!(Instant::now() < deadline, "first gateway did not lock");
        std::thread::sleep(Duration::from_millis(20));
    }

    let second = run(&["run", "--config", config]);
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8(second.stderr).unwrap();
    let canonical = buffer_dir.canonicalize().unwrap();
    assert!(
        stderr.contains(&format!(
            "error: cannot open the buffer: buffer directory {} is in use by another ioc-gateway (pid {pid} holds LOCK)",
            canonical.display()
        )),
        "{stderr}"
    );

    // Read-only tools work next to it, and see who holds the lock.
    let (stdout, _) = export(&["--config", config]);
    assert_eq!(stdout, [U1, N2, N3].concat());
    let j = stats_json(&["--config", config]);
    assert_eq!(j["lock"], serde_json::json!({"state": "held", "pid": pid}));
    assert_eq!(j["lock_pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(j["normal"]["unsent"]["lines"], 4);
    let out = run(&["buffer", "stats", "--config", config]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("  in use by pid {pid}: ")), "{text}");

    // A library open in this process is refused the same way.
    let err = buffer::open(BufferConfig::new(&buffer_dir, 64 << 20)).unwrap_err();
    assert!(
        matches!(&err, buffer::BufferError::InUse { pid: Some(p), .. } if *p == pid),
        "{err}"
    );

    // Once the first gateway is gone, the directory is free again.
    drop(first);
    let (_w, _r, report) = buffer::open(BufferConfig::new(&buffer_dir, 64 << 20)).unwrap();
    assert_eq!(report.unsent_lines, 6);
    eprintln!("lock test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_export_run_beside_a_busy_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let buffer_dir = tmp.path().join("buffer");
    let mut config = BufferConfig::new(&buffer_dir, 256 << 20);
    config.segment_bytes = 16 << 10; // many rollovers while we read
    let (writer, _reader, _) = buffer::open(config).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut next = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text: String = (next..next + 20)
                    .map(|i| {
                        format!(
                            "load,sensor=s{} idx={i}i {}\n",
                            i % 13,
                            1_700_000_000_000_000_000 + i
                        )
                    })
                    .collect();
                writer
                    .append(Priority::Normal, 20, text.into_bytes())
                    .await
                    .unwrap();
                next += 20;
            }
            writer.shutdown().await;
            next
        })
    };
    let dir = buffer_dir.to_str().unwrap().to_owned();
    let mut exported = Vec::new();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dir = dir.clone();
        let (stdout, stderr) = tokio::task::spawn_blocking(move || export(&["--data-dir", &dir]))
            .await
            .unwrap();
        // Whole lines only, in order, none missing: exactly idx 0..k.
        let idx: Vec<u64> = stdout
            .lines()
            .map(|l| {
                let start = l.find(" idx=").unwrap() + 5;
                l[start..l[start..].find('i').unwrap() + start]
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(stdout.ends_with('\n') || stdout.is_empty());
        assert_eq!(idx, (0..idx.len() as u64).collect::<Vec<_>>(), "{stderr}");
        exported.push(idx.len());
        let dir = buffer_dir.clone();
        let j =
            tokio::task::spawn_blocking(move || stats_json(&["--data-dir", dir.to_str().unwrap()]))
                .await
                .unwrap();
        assert!(j["normal"]["unsent"]["lines"].as_u64().unwrap() >= idx.len() as u64);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = appender.await.unwrap();
    eprintln!("exports beside a busy writer saw {exported:?} of {appended} lines appended");
    assert!(exported.windows(2).all(|w| w[0] <= w[1]), "{exported:?}");
    assert!(*exported.last().unwrap() > 0);
}
