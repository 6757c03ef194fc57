//! Behaviour tests of several consumers (outputs) over one buffer: independent cursors and
//! lanes, deletion only once every consumer has passed a segment, crashes at every step, new and
//! removed consumers (at open and at run time), the upgrade from the single `ack.cursor`, and
//! drop-oldest counted per consumer.

use std::path::Path;
use std::time::Duration;

use super::segment::list_segments;
use super::*;
use ioc_model::Priority;

const MIB: u64 = 1 << 20;

fn config(dir: &Path, max_disk_bytes: u64, segment_bytes: u64) -> BufferConfig {
    BufferConfig {
        dir: dir.to_path_buf(),
        max_disk_bytes,
        segment_bytes,
    }
}

fn spec(name: &str, start: ConsumerStart) -> ConsumerSpec {
    ConsumerSpec::new(name, start)
}

/// A poorly compressible line naming its index.
fn line(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut noise = String::new();
    for _ in 0..3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push_str(&format!("{x:016x}"));
    }
    format!("env idx={i}i,noise=\"{noise}\" {i}\n")
}

fn lines_text(range: std::ops::Range<usize>) -> Vec<u8> {
    range.map(line).collect::<String>().into_bytes()
}

fn indices(batch: &Batch) -> Vec<usize> {
    let lp = batch.line_protocol().unwrap();
    String::from_utf8(lp)
        .unwrap()
        .lines()
        .map(|l| {
            let start = l.find("idx=").unwrap() + 4;
            let end = l[start..].find('i').unwrap() + start;
            l[start..end].parse().unwrap()
        })
        .collect()
}

async fn append(writer: &BufferWriter, range: std::ops::Range<usize>) {
    let n = u32::try_from(range.len()).unwrap();
    writer
        .append(Priority::Normal, n, lines_text(range))
        .await
        .unwrap();
}

/// Reads (without acking) until nothing more comes within a short wait.
async fn drain(reader: &mut BufferReader, max_lines: u32) -> (Vec<usize>, Vec<Batch>) {
    let mut got = Vec::new();
    let mut batches = Vec::new();
    while let Ok(batch) =
        tokio::time::timeout(Duration::from_millis(150), reader.next_batch(max_lines)).await
    {
        let batch = batch.unwrap();
        got.extend(indices(&batch));
        batches.push(batch);
    }
    (got, batches)
}

fn segment_count(dir: &Path) -> usize {
    list_segments(&dir.join("normal")).unwrap().len()
}

fn cursor_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("normal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cursor"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn consumers_read_independently_and_segments_wait_for_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let consumers = [
        spec("vm", ConsumerStart::End),
        spec("influx", ConsumerStart::End),
    ];
    let (writer, mut readers, report) =
        open_consumers(config(dir.path(), 64 * MIB, 600), &consumers).unwrap();
    assert_eq!(report.unsent_lines_by_consumer.len(), 2);
    let mut influx = readers.pop().unwrap();
    let mut vm = readers.pop().unwrap();
    assert_eq!((vm.name(), influx.name()), ("vm", "influx"));
    assert_eq!(
        cursor_files(dir.path()),
        vec!["ack.influx.cursor", "ack.vm.cursor"]
    );
    for n in 0..20 {
        append(&writer, n * 5..n * 5 + 5).await;
    }
    let segments = segment_count(dir.path());
    assert!(segments > 3, "{segments} segments");

    // vm gets and acks everything; influx is "down".
    let (got, batches) = drain(&mut vm, 7).await;
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    for batch in &batches {
        vm.ack(batch).await.unwrap();
    }
    let stats = vm.stats();
    assert_eq!(stats.consumer("vm").unwrap().unsent_lines, 0);
    assert_eq!(stats.consumer("influx").unwrap().unsent_lines, 100);
    assert_eq!(
        stats.unsent_lines, 100,
        "the buffer-wide figure is the worst"
    );
    assert!(stats
        .consumer("influx")
        .unwrap()
        .oldest_unsent_age_ms
        .is_some());
    assert_eq!(stats.consumer("vm").unwrap().oldest_unsent_age_ms, None);
    assert_eq!(vm.consumer_stats().unsent_lines, 0);
    assert_eq!(
        segment_count(dir.path()),
        segments,
        "nothing deleted while influx has not acked"
    );

    // New data reaches vm at once, whatever influx does.
    append(&writer, 100..103).await;
    let (got, batches) = drain(&mut vm, 7).await;
    assert_eq!(got, vec![100, 101, 102]);
    vm.ack(&batches[0]).await.unwrap();

    // influx comes back: it gets everything, once.
    let (got, batches) = drain(&mut influx, 1000).await;
    assert_eq!(got, (0..103).collect::<Vec<_>>());
    for batch in &batches {
        influx.ack(batch).await.unwrap();
    }
    assert!(
        segment_count(dir.path()) <= 1,
        "only the active segment may remain"
    );
    assert_eq!(influx.stats().unsent_lines, 0);
    writer.shutdown().await;
}

/// One step of a scripted run over two consumers.
#[derive(Debug, Clone, Copy)]
enum Step {
    Append(usize),
    /// Read one batch for consumer `0` or `1` (kept in flight).
    Read(usize),
    /// Ack the oldest in-flight batch of a consumer.
    Ack(usize),
    /// Ack the newest in-flight batch of a consumer (out of order).
    AckNewest(usize),
}

#[tokio::test]
async fn a_crash_after_any_step_keeps_both_cursors_right() {
    use Step::*;
    let script = [
        Append(12),
        Read(0),
        Read(0),
        Append(9),
        Read(1),
        AckNewest(0),
        Ack(0),
        Read(1),
        Read(1),
        Ack(1),
        Append(20),
        Read(0),
        Ack(0),
        AckNewest(1),
        Ack(1),
        Read(0),
        Read(1),
        Ack(1),
        Ack(0),
        Append(7),
        Read(1),
        Ack(1),
    ];
    let names = ["vm", "influx"];
    let consumers: Vec<ConsumerSpec> = names.iter().map(|n| spec(n, ConsumerStart::End)).collect();
    for crash_after in 0..=script.len() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 64 * MIB, 1024);
        let (writer, mut readers, _) = open_consumers(cfg.clone(), &consumers).unwrap();
        let mut appended = 0;
        let mut inflight: [Vec<Batch>; 2] = [Vec::new(), Vec::new()];
        // The lines of each consumer's contiguous acked prefix, in order of the log.
        let mut acked: [Vec<(usize, Batch)>; 2] = [Vec::new(), Vec::new()];
        for step in &script[..crash_after] {
            match *step {
                Append(n) => {
                    append(&writer, appended..appended + n).await;
                    appended += n;
                }
                Read(c) => {
                    if let Ok(batch) =
                        tokio::time::timeout(Duration::from_millis(100), readers[c].next_batch(4))
                            .await
                    {
                        inflight[c].push(batch.unwrap());
                    }
                }
                Ack(c) | AckNewest(c) => {
                    if inflight[c].is_empty() {
                        continue;
                    }
                    let i = if matches!(step, Ack(_)) {
                        0
                    } else {
                        inflight[c].len() - 1
                    };
                    let batch = inflight[c].remove(i);
                    readers[c].ack(&batch).await.unwrap();
                    let first = indices(&batch)[0];
                    acked[c].push((first, batch));
                }
            }
        }
        // What each consumer's persisted cursor must have passed: the acked batches that
        // form a contiguous run from line 0.
        let mut passed = [0usize; 2];
        for c in 0..2 {
            acked[c].sort_by_key(|(first, _)| *first);
            for (first, batch) in &acked[c] {
                if *first == passed[c] {
                    passed[c] += batch.lines as usize;
                }
            }
        }
        // Crash: every append and ack above had returned (so was durable); nothing more is
        // written (the writer thread is only stopped so the directory lock is free), and a
        // cursor write was torn mid-way.
        drop(readers);
        writer.shutdown().await;
        std::fs::write(dir.path().join("normal/ack.vm.cursor.tmp"), b"torn").unwrap();

        let (writer, mut readers, report) = open_consumers(cfg, &consumers).unwrap();
        for c in 0..2 {
            let (got, _) = drain(&mut readers[c], 1000).await;
            assert_eq!(
                got,
                (passed[c]..appended).collect::<Vec<_>>(),
                "consumer {} after a crash after step {crash_after}: nothing lost, and only \
                 its unacked tail again",
                names[c]
            );
            assert_eq!(
                report.unsent_lines_by_consumer[names[c]],
                (appended - passed[c]) as u64
            );
        }
        assert!(!dir.path().join("normal/ack.vm.cursor.tmp").exists());
        writer.shutdown().await;
    }
}

#[tokio::test]
async fn a_new_consumer_starts_at_the_end_or_at_the_oldest_data_and_keeps_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 * MIB, 1024);
    let (writer, mut readers, _) =
        open_consumers(cfg.clone(), &[spec("a", ConsumerStart::End)]).unwrap();
    for n in 0..10 {
        append(&writer, n * 5..n * 5 + 5).await;
    }
    // `a` acks the first 20 lines.
    let mut acked = 0;
    while acked < 20 {
        let batch = readers[0].next_batch(5).await.unwrap();
        readers[0].ack(&batch).await.unwrap();
        acked += batch.lines as usize;
    }
    drop(readers);
    writer.shutdown().await;

    let consumers = [
        spec("a", ConsumerStart::End),
        spec("live", ConsumerStart::End),
        spec("archive", ConsumerStart::Oldest),
    ];
    let (writer, readers, report) = open_consumers(cfg.clone(), &consumers).unwrap();
    assert_eq!(report.unsent_lines_by_consumer["live"], 0);
    let oldest_on_disk = 50 - report.unsent_lines_by_consumer["archive"] as usize;
    assert!(oldest_on_disk <= 20, "the archive gets all that is on disk");
    // A crash right after the open: the new consumers keep the start they were given.
    drop(readers);
    writer.shutdown().await;
    let (writer, mut readers, _) = open_consumers(cfg.clone(), &consumers).unwrap();
    append(&writer, 50..55).await;
    let (got, _) = drain(&mut readers[0], 100).await;
    assert_eq!(got, (20..55).collect::<Vec<_>>());
    let (got, _) = drain(&mut readers[1], 100).await;
    assert_eq!(got, (50..55).collect::<Vec<_>>(), "live starts at the end");
    let (got, _) = drain(&mut readers[2], 100).await;
    assert_eq!(
        got,
        (oldest_on_disk..55).collect::<Vec<_>>(),
        "archive starts at the oldest data on disk"
    );
    writer.shutdown().await;
}

#[tokio::test]
async fn the_single_consumer_cursor_carries_over_to_the_default_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 * MIB, 1024);
    // The single-output buffer: `open`, cursor in `ack.cursor`.
    let (writer, mut reader, _) = open(cfg.clone()).unwrap();
    for n in 0..6 {
        append(&writer, n * 5..n * 5 + 5).await;
    }
    let mut acked = 0;
    while acked < 10 {
        let batch = reader.next_batch(5).await.unwrap();
        reader.ack(&batch).await.unwrap();
        acked += batch.lines as usize;
    }
    drop(reader);
    writer.shutdown().await;
    assert_eq!(cursor_files(dir.path()), vec!["ack.cursor"]);

    // Upgraded: the same output is now "default" among two.
    let consumers = [
        spec(DEFAULT_CONSUMER, ConsumerStart::End),
        spec("national", ConsumerStart::End),
    ];
    let (writer, mut readers, _) = open_consumers(cfg.clone(), &consumers).unwrap();
    let (got, _) = drain(&mut readers[0], 100).await;
    assert_eq!(
        got,
        (10..30).collect::<Vec<_>>(),
        "nothing re-sent, nothing lost"
    );
    let (got, _) = drain(&mut readers[1], 100).await;
    assert!(got.is_empty(), "the added output starts at the end");
    assert_eq!(
        cursor_files(dir.path()),
        vec!["ack.cursor", "ack.national.cursor"]
    );
    drop(readers);
    writer.shutdown().await;
}

#[tokio::test]
async fn a_buffer_no_one_ever_acked_is_sent_whole_to_every_new_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 * MIB, 1024);
    let (writer, reader, _) = open(cfg.clone()).unwrap();
    append(&writer, 0..15).await;
    drop(reader);
    writer.shutdown().await;
    // As an older gateway left it: data, and no cursor (it writes one on the first ack).
    std::fs::remove_file(dir.path().join("normal/ack.cursor")).unwrap();
    std::fs::remove_file(dir.path().join("urgent/ack.cursor")).unwrap();
    let consumers = [
        spec("primary", ConsumerStart::End),
        spec("backup", ConsumerStart::End),
    ];
    let (writer, mut readers, _) = open_consumers(cfg, &consumers).unwrap();
    for reader in &mut readers {
        let (got, _) = drain(reader, 100).await;
        assert_eq!(got, (0..15).collect::<Vec<_>>(), "{}", reader.name());
    }
    writer.shutdown().await;
}

#[tokio::test]
async fn a_removed_consumer_stops_holding_data_at_open_and_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 * MIB, 1024);
    let both = [spec("a", ConsumerStart::End), spec("b", ConsumerStart::End)];
    let (writer, mut readers, _) = open_consumers(cfg.clone(), &both).unwrap();
    for n in 0..10 {
        append(&writer, n * 5..n * 5 + 5).await;
    }
    let (_, batches) = drain(&mut readers[0], 100).await;
    for batch in &batches {
        readers[0].ack(batch).await.unwrap();
    }
    let held = segment_count(dir.path());
    assert!(held > 2, "b holds {held} segments");
    drop(readers);
    writer.shutdown().await;

    // Reopened without b: its cursor goes, and so do the segments a has passed.
    let (writer, mut readers, report) =
        open_consumers(cfg.clone(), &[spec("a", ConsumerStart::End)]).unwrap();
    assert_eq!(cursor_files(dir.path()), vec!["ack.a.cursor"]);
    assert_eq!(segment_count(dir.path()), 0);
    assert_eq!(report.unsent_lines, 0);

    // At run time: b is added (at the end), holds new data, and is removed again.
    let mut b = readers[0]
        .add_consumer("b", ConsumerStart::End)
        .await
        .unwrap();
    assert!(
        readers[0]
            .add_consumer("b", ConsumerStart::End)
            .await
            .is_err(),
        "a name is unique"
    );
    assert!(readers[0]
        .add_consumer("no good", ConsumerStart::End)
        .await
        .is_err());
    assert_eq!(
        cursor_files(dir.path()),
        vec!["ack.a.cursor", "ack.b.cursor"]
    );
    for n in 10..20 {
        append(&writer, n * 5..n * 5 + 5).await;
    }
    let (got, _) = drain(&mut b, 100).await;
    assert_eq!(got, (50..100).collect::<Vec<_>>());
    let (got, batches) = drain(&mut readers[0], 100).await;
    assert_eq!(got, (50..100).collect::<Vec<_>>());
    for batch in &batches {
        readers[0].ack(batch).await.unwrap();
    }
    assert!(segment_count(dir.path()) > 2, "b holds them");
    assert_eq!(readers[0].consumer_names(), vec!["a", "b"]);
    b.remove().await.unwrap();
    assert!(segment_count(dir.path()) <= 1, "released at once");
    assert_eq!(cursor_files(dir.path()), vec!["ack.a.cursor"]);
    assert_eq!(readers[0].stats().consumers.len(), 1);
    // The last consumer cannot go.
    let last = readers.pop().unwrap();
    assert!(last.remove().await.is_err());
    writer.shutdown().await;
}

#[tokio::test]
async fn names_are_checked_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 * MIB, 0);
    for bad in [
        vec![],
        vec![spec("x", ConsumerStart::End), spec("x", ConsumerStart::End)],
        vec![spec("../x", ConsumerStart::End)],
        vec![spec("", ConsumerStart::End)],
    ] {
        let err = open_consumers(cfg.clone(), &bad).unwrap_err();
        assert!(matches!(err, BufferError::Config(_)), "{err}");
    }
}

#[tokio::test]
async fn drop_oldest_is_counted_for_the_consumers_that_lose_lines() {
    let dir = tempfile::tempdir().unwrap();
    let max = 64 * 1024;
    let consumers = [
        spec("fast", ConsumerStart::End),
        spec("dead", ConsumerStart::End),
    ];
    let (writer, mut readers, _) =
        open_consumers(config(dir.path(), max, 8 * 1024), &consumers).unwrap();
    let total = 3000;
    for n in 0..total / 10 {
        append(&writer, n * 10..n * 10 + 10).await;
        // `fast` keeps up: it never loses anything.
        while let Ok(batch) =
            tokio::time::timeout(Duration::from_millis(20), readers[0].next_batch(1000)).await
        {
            let batch = batch.unwrap();
            readers[0].ack(&batch).await.unwrap();
        }
    }
    let stats = readers[1].stats();
    assert!(stats.disk_bytes <= max, "{} bytes", stats.disk_bytes);
    let fast = stats.consumer("fast").unwrap();
    let dead = stats.consumer("dead").unwrap();
    assert_eq!((fast.dropped_oldest_lines, fast.unsent_lines), (0, 0));
    assert!(dead.dropped_oldest_lines > 0);
    assert_eq!(
        dead.dropped_oldest_lines + dead.unsent_lines,
        total as u64,
        "every line is dropped and counted for `dead`, or still there for it"
    );
    assert_eq!(stats.dropped_oldest_lines, dead.dropped_oldest_lines);
    let (got, _) = drain(&mut readers[1], 1000).await;
    let first = got[0];
    assert_eq!(got, (first..total).collect::<Vec<_>>());
    assert_eq!(first as u64, dead.dropped_oldest_lines);
    writer.shutdown().await;
}
