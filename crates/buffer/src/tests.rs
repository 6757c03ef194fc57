//! Behaviour tests of the buffer: round trips, group commit, power cuts, disk bounds, faults.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::record::HEADER_LEN;
use super::segment::{list_segments, SegmentScanner, Step};
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

/// A line that compresses poorly (so sizes on disk are predictable) and names its index.
fn line(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut noise = String::new();
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push_str(&format!("{x:016x}"));
    }
    format!(
        "env,sensor=s{} idx={i}i,noise=\"{noise}\" {}\n",
        i % 7,
        1_700_000_000_000_000_000u64 + i as u64
    )
}

fn lines_text(range: std::ops::Range<usize>) -> Vec<u8> {
    range.map(line).collect::<String>().into_bytes()
}

/// The indices named by the lines of `lp`.
fn indices(lp: &[u8]) -> Vec<usize> {
    String::from_utf8(lp.to_vec())
        .unwrap()
        .lines()
        .map(|l| {
            let start = l.find(" idx=").unwrap() + 5;
            let end = l[start..].find('i').unwrap() + start;
            l[start..end].parse().unwrap()
        })
        .collect()
}

/// Reads batches until `expected_lines` lines arrived (acking none); fails on a stall.
async fn read_lines(
    reader: &mut BufferReader,
    expected_lines: u64,
    max_lines: u32,
) -> (Vec<usize>, Vec<Batch>) {
    let mut got = Vec::new();
    let mut batches = Vec::new();
    while (got.len() as u64) < expected_lines {
        let batch = tokio::time::timeout(Duration::from_secs(5), reader.next_batch(max_lines))
            .await
            .expect("buffer reader stalled")
            .unwrap();
        let lp = batch.line_protocol().unwrap();
        let idx = indices(&lp);
        assert_eq!(idx.len() as u32, batch.lines, "line count in record header");
        got.extend(idx);
        batches.push(batch);
    }
    (got, batches)
}

async fn assert_nothing_more(reader: &mut BufferReader) {
    let more = tokio::time::timeout(Duration::from_millis(50), reader.next_batch(1000)).await;
    assert!(more.is_err(), "unexpected extra batch");
}

fn segment_files(dir: &Path, class: &str) -> Vec<(u64, PathBuf)> {
    list_segments(&dir.join(class)).unwrap()
}

/// `(offset, length, lines)` of every valid record of a segment file.
fn record_spans(path: &Path) -> Vec<(u64, u64, u32)> {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut scanner = SegmentScanner::new(file, len);
    let mut spans = Vec::new();
    let mut offset = 0;
    loop {
        match scanner.next(offset).unwrap() {
            Step::Record { offset: at, meta } => {
                spans.push((at, meta.record_len(), meta.lines));
                offset = at + meta.record_len();
            }
            Step::Skipped { .. } => panic!("clean segment expected"),
            Step::End => return spans,
        }
    }
}

#[tokio::test]
async fn round_trip_across_rollover_ack_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, mut reader, report) = open(config(dir.path(), 64 * MIB, 2048)).unwrap();
    assert_eq!(
        report,
        RecoveryReport {
            unsent_lines_by_consumer: [(DEFAULT_CONSUMER.to_string(), 0)].into(),
            ..RecoveryReport::default()
        }
    );
    // 60 appends of 3 lines, one record each; ~2 records per 2 KiB segment.
    for n in 0..60 {
        writer
            .append(Priority::Normal, 3, lines_text(n * 3..n * 3 + 3))
            .await
            .unwrap();
    }
    let segments = segment_files(dir.path(), "normal").len();
    assert!(segments >= 5, "rollover: {segments} segments");
    let stats = reader.stats();
    assert_eq!(stats.unsent_lines, 180);
    assert!(stats.oldest_unsent_age_ms.is_some_and(|age| age < 60_000));

    let (got, batches) = read_lines(&mut reader, 180, 7).await;
    assert_eq!(got, (0..180).collect::<Vec<_>>());
    assert_nothing_more(&mut reader).await;
    // Ack the first half of the batches; the rest were "sent" but not confirmed.
    let half = batches.len() / 2;
    let acked_lines: u32 = batches[..half].iter().map(|b| b.lines).sum();
    for batch in &batches[..half] {
        reader.ack(batch).await.unwrap();
    }
    assert_eq!(reader.stats().unsent_lines, 180 - u64::from(acked_lines));
    writer.shutdown().await;
    drop(reader);

    let (writer, mut reader, report) = open(config(dir.path(), 64 * MIB, 2048)).unwrap();
    assert_eq!(report.unsent_lines, 180 - u64::from(acked_lines));
    assert_eq!(report.dropped_bytes, 0);
    assert_eq!(reader.stats().unsent_lines, 180 - u64::from(acked_lines));
    let (got, replayed) = read_lines(&mut reader, 180 - u64::from(acked_lines), 7).await;
    assert_eq!(got, (acked_lines as usize..180).collect::<Vec<_>>());
    // At-least-once replays are byte-identical.
    for (before, after) in batches[half..].iter().zip(&replayed) {
        assert_eq!(before.body_gz, after.body_gz);
        assert_eq!(before.lines, after.lines);
    }
    // New data goes on after the old.
    writer
        .append(Priority::Normal, 2, lines_text(180..182))
        .await
        .unwrap();
    let (got, more) = read_lines(&mut reader, 2, 7).await;
    assert_eq!(got, vec![180, 181]);
    for batch in replayed.iter().chain(&more) {
        reader.ack(batch).await.unwrap();
    }
    let stats = reader.stats();
    assert_eq!(stats.unsent_lines, 0);
    assert_eq!(stats.oldest_unsent_age_ms, None);
    // Wholly acked segments are deleted; only the active one can remain.
    assert!(segment_files(dir.path(), "normal").len() <= 1);
    writer.shutdown().await;
    drop(reader);
    let (_writer, _reader, report) = open(config(dir.path(), 64 * MIB, 2048)).unwrap();
    assert_eq!(report.unsent_lines, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_one_fsync_among_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, mut reader, _) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    let mut tasks = Vec::new();
    for appender in 0..100 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..20 {
                let i = appender * 20 + k;
                writer
                    .append(Priority::Normal, 1, line(i).into_bytes())
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = reader.stats();
    let fsyncs = stats.data_fsyncs;
    eprintln!("2000 appends from 100 appenders: {fsyncs} data fsyncs");
    assert!(fsyncs <= 2000 / 10, "{fsyncs} fsyncs for 2000 appends");
    assert_eq!(stats.unsent_lines, 2000);
    let (mut got, _) = read_lines(&mut reader, 2000, 5000).await;
    got.sort_unstable();
    assert_eq!(got, (0..2000).collect::<Vec<_>>());
    writer.shutdown().await;
}

#[tokio::test]
async fn urgent_batches_overtake_a_normal_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, mut reader, _) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    for n in 0..10 {
        writer
            .append(Priority::Normal, 10, lines_text(n * 10..n * 10 + 10))
            .await
            .unwrap();
    }
    let first = reader.next_batch(10).await.unwrap();
    assert_eq!(first.priority, Priority::Normal);
    writer
        .append(Priority::Urgent, 1, lines_text(1000..1001))
        .await
        .unwrap();
    assert_eq!(reader.stats().urgent_unsent_lines, 1);
    let urgent = reader.next_batch(10).await.unwrap();
    assert_eq!(urgent.priority, Priority::Urgent);
    assert_eq!(indices(&urgent.line_protocol().unwrap()), vec![1000]);
    let next = reader.next_batch(10).await.unwrap();
    assert_eq!(next.priority, Priority::Normal);
    assert_eq!(
        indices(&next.line_protocol().unwrap()),
        (10..20).collect::<Vec<_>>()
    );
    // Out-of-order acks: the cursor only moves once the earlier batch is acked too.
    reader.ack(&next).await.unwrap();
    assert_eq!(reader.stats().unsent_lines, 100 + 1);
    reader.ack(&first).await.unwrap();
    reader.ack(&urgent).await.unwrap();
    reader.ack(&urgent).await.unwrap(); // twice: harmless
    assert_eq!(reader.stats().unsent_lines, 80);
    writer.shutdown().await;
    drop(reader);
    let (_w, mut reader, report) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    assert_eq!(report.unsent_lines, 80);
    let (got, _) = read_lines(&mut reader, 80, 1000).await;
    assert_eq!(got, (20..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn newest_data_is_interleaved_with_a_backlog_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, mut reader, _) = open(config(dir.path(), 256 * MIB, 0)).unwrap();
    // A backlog (the store was down): 20,000 lines, well over the 256 KiB threshold.
    for n in 0..40 {
        writer
            .append(Priority::Normal, 500, lines_text(n * 500..n * 500 + 500))
            .await
            .unwrap();
    }
    assert!(reader.stats().unsent_bytes > 2 * super::reader::LIVE_LANE_MIN_BACKLOG);
    let first = reader.next_batch(1000).await.unwrap();
    assert_eq!(
        indices(&first.line_protocol().unwrap()),
        (0..1000).collect::<Vec<_>>()
    );
    // The store is back; new readings arrive while the backlog drains.
    writer
        .append(Priority::Normal, 10, lines_text(100_000..100_010))
        .await
        .unwrap();
    let live = reader.next_batch(1000).await.unwrap();
    assert_eq!(
        indices(&live.line_protocol().unwrap()),
        (100_000..100_010).collect::<Vec<_>>()
    );
    let second = reader.next_batch(1000).await.unwrap();
    assert_eq!(
        indices(&second.line_protocol().unwrap()),
        (1000..2000).collect::<Vec<_>>()
    );
    // Acking the live batch first does not move the cursor past unacked backlog.
    reader.ack(&live).await.unwrap();
    reader.ack(&first).await.unwrap();
    assert_eq!(reader.stats().unsent_lines, 20_010 - 1000);
    writer.shutdown().await;
    drop(reader);

    // Crash here: the second backlog batch and the live batch are re-sent, nothing is lost.
    let (writer, mut reader, report) = open(config(dir.path(), 256 * MIB, 0)).unwrap();
    assert_eq!(report.unsent_lines, 20_010 - 1000);
    let mut backlog = Vec::new();
    let mut fresh = Vec::new();
    let mut batches = Vec::new();
    let mut live_seen_after = None;
    while (backlog.len() + fresh.len()) < 20_010 - 1000 + 10 {
        let batch = tokio::time::timeout(Duration::from_secs(5), reader.next_batch(1000))
            .await
            .unwrap()
            .unwrap();
        let idx = indices(&batch.line_protocol().unwrap());
        if idx[0] >= 100_000 {
            live_seen_after.get_or_insert(batches.len());
            fresh.extend(idx);
        } else {
            backlog.extend(idx);
        }
        batches.push(batch);
        if batches.len() == 2 {
            writer
                .append(Priority::Normal, 10, lines_text(200_000..200_010))
                .await
                .unwrap();
        }
    }
    assert_eq!(backlog, (1000..20_000).collect::<Vec<_>>());
    // What arrived after the restart comes first (live lane); the lines from before the
    // restart are now part of the backlog and come at its end.
    let mut expected: Vec<usize> = (200_000..200_010).collect();
    expected.extend(100_000..100_010);
    assert_eq!(fresh, expected);
    // The readings that arrived during the drain went out long before its end.
    assert!(live_seen_after.unwrap() <= 4, "{live_seen_after:?}");
    assert_nothing_more(&mut reader).await;
    // Ack in reverse order: the cursor passes everything only at the last ack.
    for batch in batches.iter().rev() {
        assert!(reader.stats().unsent_lines > 0);
        reader.ack(batch).await.unwrap();
    }
    assert_eq!(reader.stats().unsent_lines, 0);
    // Lanes merged: new data flows as usual.
    writer
        .append(Priority::Normal, 1, lines_text(300_000..300_001))
        .await
        .unwrap();
    let (got, last) = read_lines(&mut reader, 1, 1000).await;
    assert_eq!(got, vec![300_000]);
    reader.ack(&last[0]).await.unwrap();
    assert_eq!(reader.stats().unsent_lines, 0);
    writer.shutdown().await;
    drop(reader);
    let (_w, _r, report) = open(config(dir.path(), 256 * MIB, 0)).unwrap();
    assert_eq!(report.unsent_lines, 0);
}

/// Writes `records` records (one append each, 1 to 3 lines) to a fresh buffer; returns the
/// segment's bytes, the record spans and the lines of each record.
async fn build_segment(records: usize) -> (Vec<u8>, Vec<(u64, u64, u32)>, Vec<Vec<usize>>) {
    let dir = tempfile::tempdir().unwrap();
    let (writer, _reader, _) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    let mut per_record = Vec::new();
    let mut next = 0;
    for r in 0..records {
        let n = 1 + r % 3;
        writer
            .append(Priority::Normal, n as u32, lines_text(next..next + n))
            .await
            .unwrap();
        per_record.push((next..next + n).collect());
        next += n;
    }
    writer.shutdown().await;
    let files = segment_files(dir.path(), "normal");
    assert_eq!(files.len(), 1);
    let bytes = std::fs::read(&files[0].1).unwrap();
    let spans = record_spans(&files[0].1);
    assert_eq!(spans.len(), records);
    (bytes, spans, per_record)
}

/// Opens a buffer whose normal log is exactly `segment` and reads everything it offers.
async fn reopen_with(segment: &[u8]) -> (RecoveryReport, Vec<usize>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let normal = dir.path().join("normal");
    std::fs::create_dir_all(&normal).unwrap();
    let path = normal.join("00000000000000000001.seg");
    std::fs::write(&path, segment).unwrap();
    let (writer, mut reader, report) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    let (got, _) = read_lines(&mut reader, report.unsent_lines, 1000).await;
    let len_after = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    // The buffer goes on: a new append is readable after the recovered records.
    writer
        .append(Priority::Normal, 1, lines_text(9999..10_000))
        .await
        .unwrap();
    let (tail, _) = read_lines(&mut reader, 1, 1000).await;
    assert_eq!(tail, vec![9999]);
    writer.shutdown().await;
    (report, got, len_after)
}

#[tokio::test]
async fn power_cut_at_every_byte_of_the_last_records_keeps_every_intact_record() {
    let (bytes, spans, per_record) = build_segment(6).await;
    let first_cut = spans[3].0; // every offset through the last three records
    eprintln!(
        "power cut: {} truncation offsets over the last 3 of 6 records",
        bytes.len() as u64 - first_cut + 1
    );
    for cut in first_cut..=bytes.len() as u64 {
        let (report, got, len_after) = reopen_with(&bytes[..cut as usize]).await;
        let intact: Vec<usize> = spans
            .iter()
            .zip(&per_record)
            .filter(|((at, len, _), _)| at + len <= cut)
            .flat_map(|(_, lines)| lines.clone())
            .collect();
        let kept_end = spans
            .iter()
            .map(|(at, len, _)| at + len)
            .filter(|end| *end <= cut)
            .max()
            .unwrap_or(0);
        assert_eq!(got, intact, "cut at {cut}");
        assert_eq!(report.lines, intact.len() as u64, "cut at {cut}");
        assert_eq!(report.dropped_bytes, cut - kept_end, "cut at {cut}");
        assert_eq!(report.dropped_records_hint, u64::from(cut > kept_end));
        if kept_end > 0 {
            assert_eq!(len_after, kept_end, "torn tail truncated, cut at {cut}");
        }
    }
}

#[tokio::test]
async fn flipped_bits_anywhere_lose_only_the_damaged_record() {
    let (bytes, spans, per_record) = build_segment(5).await;
    eprintln!(
        "bit flips: one at each of {} byte positions of 5 records",
        bytes.len()
    );
    for pos in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[pos] ^= 1 << (pos % 8);
        let hit = spans
            .iter()
            .position(|(at, len, _)| (*at..at + len).contains(&(pos as u64)))
            .unwrap();
        let (report, got, _) = reopen_with(&damaged).await;
        let expected: Vec<usize> = per_record
            .iter()
            .enumerate()
            .filter(|(r, _)| *r != hit)
            .flat_map(|(_, lines)| lines.clone())
            .collect();
        assert_eq!(got, expected, "bit flip at byte {pos}");
        assert_eq!(report.dropped_bytes, spans[hit].1, "bit flip at byte {pos}");
        assert_eq!(report.dropped_records_hint, 1, "bit flip at byte {pos}");
        assert_eq!(report.records, 4);
    }
    // Two damaged records in the middle: both ranges reported, the rest kept.
    let mut damaged = bytes.clone();
    damaged[spans[1].0 as usize + HEADER_LEN + 2] ^= 0x40;
    damaged[spans[3].0 as usize + 9] ^= 0x01;
    let (report, got, _) = reopen_with(&damaged).await;
    let expected: Vec<usize> = [0, 2, 4]
        .iter()
        .flat_map(|r| per_record[*r].clone())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(report.dropped_records_hint, 2);
    assert_eq!(report.dropped_bytes, spans[1].1 + spans[3].1);
}

#[tokio::test]
async fn torn_or_corrupt_cursor_falls_back_to_resending() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, mut reader, _) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    for n in 0..10 {
        writer
            .append(Priority::Normal, 2, lines_text(n * 2..n * 2 + 2))
            .await
            .unwrap();
    }
    let (_, batches) = read_lines(&mut reader, 20, 2).await;
    for batch in &batches[..5] {
        reader.ack(batch).await.unwrap();
    }
    writer.shutdown().await;
    drop(reader);
    let cursor_path = dir.path().join("normal").join(cursor::CURSOR_FILE);
    let good = std::fs::read(&cursor_path).unwrap();

    let (w, mut reader, report) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    assert_eq!((report.unsent_lines, report.cursor_fallbacks), (10, 0));
    let (got, _) = read_lines(&mut reader, 10, 100).await;
    assert_eq!(got, (10..20).collect::<Vec<_>>());
    w.shutdown().await;
    drop(reader);

    let mut flipped = good.clone();
    flipped[10] ^= 0x04;
    for bad in [good[..good.len() - 3].to_vec(), flipped, Vec::new()] {
        std::fs::write(&cursor_path, &bad).unwrap();
        let (w, mut reader, report) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
        assert_eq!((report.unsent_lines, report.cursor_fallbacks), (20, 1));
        let (got, _) = read_lines(&mut reader, 20, 100).await;
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        w.shutdown().await;
    }
    std::fs::remove_file(&cursor_path).unwrap();
    let (_w, _reader, report) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    assert_eq!((report.unsent_lines, report.cursor_fallbacks), (20, 0));
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_data_under_a_tiny_bound() {
    let dir = tempfile::tempdir().unwrap();
    let max = 64 * 1024;
    let (writer, mut reader, _) = open(config(dir.path(), max, 8 * 1024)).unwrap();
    // Take one batch from the oldest segment and keep it in flight while it gets dropped.
    writer
        .append(Priority::Normal, 10, lines_text(0..10))
        .await
        .unwrap();
    let inflight = reader.next_batch(10).await.unwrap();
    for n in 1..200 {
        writer
            .append(Priority::Normal, 10, lines_text(n * 10..n * 10 + 10))
            .await
            .unwrap();
    }
    let stats = reader.stats();
    assert!(
        stats.disk_bytes <= max,
        "{} bytes on disk",
        stats.disk_bytes
    );
    assert!(stats.dropped_oldest_segments > 0);
    assert_eq!(
        stats.dropped_oldest_lines + stats.unsent_lines,
        2000,
        "every line is either dropped and counted, or still there"
    );
    // Acking a batch whose segment vanished is fine.
    reader.ack(&inflight).await.unwrap();
    let (got, _) = read_lines(&mut reader, stats.unsent_lines, 1000).await;
    let first = got[0];
    assert_eq!(
        got,
        (first..2000).collect::<Vec<_>>(),
        "a contiguous newest suffix"
    );
    assert_eq!(first as u64, stats.dropped_oldest_lines);
    writer.shutdown().await;
}

#[tokio::test]
async fn disk_error_fails_the_append_drops_oldest_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, mut reader, _) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    writer
        .append(Priority::Normal, 2, lines_text(0..2))
        .await
        .unwrap();
    reader
        .shared
        .injected_write_faults
        .store(1, Ordering::Relaxed);
    let err = writer
        .append(Priority::Normal, 2, lines_text(2..4))
        .await
        .unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    let stats = reader.stats();
    assert_eq!(stats.append_errors, 1);
    // The full disk made the buffer drop its oldest (only) segment.
    assert_eq!(stats.dropped_oldest_lines, 2);
    // Space is back: appends work again, in a new segment.
    writer
        .append(Priority::Normal, 2, lines_text(4..6))
        .await
        .unwrap();
    let (got, _) = read_lines(&mut reader, 2, 100).await;
    assert_eq!(got, vec![4, 5]);
    assert_nothing_more(&mut reader).await;
    writer.shutdown().await;
    drop(reader);
    let (_w, _r, report) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    assert_eq!((report.unsent_lines, report.dropped_bytes), (2, 0));
}

#[tokio::test]
async fn a_big_append_is_split_into_records_and_oversized_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, mut reader, _) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
    // ~2.6 MB of lines: more than one 512 KiB record.
    writer
        .append(Priority::Normal, 20_000, lines_text(0..20_000))
        .await
        .unwrap();
    let files = segment_files(dir.path(), "normal");
    let spans = record_spans(&files[0].1);
    assert!(spans.len() >= 5, "{} records", spans.len());
    assert_eq!(spans.iter().map(|s| u64::from(s.2)).sum::<u64>(), 20_000);
    let (got, _) = read_lines(&mut reader, 20_000, 100_000).await;
    assert_eq!(got, (0..20_000).collect::<Vec<_>>());
    let huge_line = vec![b'x'; 5 << 20];
    let err = writer
        .append(Priority::Normal, 1, huge_line)
        .await
        .unwrap_err();
    assert!(matches!(err, BufferError::TooLarge { .. }), "{err}");
    let (writer2, _reader2, _) =
        open(config(tempfile::tempdir().unwrap().path(), 4096, 0)).unwrap();
    let err = writer2
        .append(Priority::Normal, 100, lines_text(0..100))
        .await
        .unwrap_err();
    assert!(matches!(err, BufferError::TooLarge { .. }), "{err}");
    writer.shutdown().await;
    writer2.shutdown().await;
}

#[test]
fn default_segment_size_follows_the_bound() {
    assert_eq!(default_segment_bytes(1024 * MIB), 32 * MIB);
    assert_eq!(default_segment_bytes(256 * MIB), 16 * MIB);
    assert_eq!(default_segment_bytes(8 * MIB), MIB);
    assert_eq!(default_segment_bytes(MIB), 256 * 1024);
    assert_eq!(default_segment_bytes(1000), 4096);
}

#[test]
fn batch_body_is_one_valid_multi_member_gzip_stream() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut reader, _) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
        for n in 0..4 {
            writer
                .append(Priority::Normal, 1, line(n).into_bytes())
                .await
                .unwrap();
        }
        let batch = reader.next_batch(100).await.unwrap();
        assert_eq!(batch.lines, 4);
        // A plain (multi-member aware) gzip decoder sees all four lines in order.
        assert_eq!(batch.line_protocol().unwrap(), lines_text(0..4));
        writer.shutdown().await;
    });
}

mod arbitrary_bytes {
    use super::*;
    use proptest::prelude::*;

    /// Builds a segment of valid records with garbage chunks between them.
    fn segment_with_garbage(chunks: &[(Vec<u8>, u8)]) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        let mut lines = 0u64;
        for (i, (garbage, n)) in chunks.iter().enumerate() {
            out.extend_from_slice(garbage);
            let n = usize::from(*n % 4) + 1;
            let raw = lines_text(i * 4..i * 4 + n);
            let gz = record::gzip(&raw).unwrap();
            record::encode(
                &mut out,
                Priority::Normal,
                n as u32,
                1,
                raw.len() as u32,
                &gz,
            );
            lines += n as u64;
        }
        (out, lines)
    }

    fn recover_bytes(bytes: &[u8], cursor: Option<&[u8]>) -> (RecoveryReport, u64) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let normal = dir.path().join("normal");
            std::fs::create_dir_all(&normal).unwrap();
            std::fs::write(normal.join("00000000000000000003.seg"), bytes).unwrap();
            if let Some(cursor) = cursor {
                std::fs::write(normal.join(cursor::CURSOR_FILE), cursor).unwrap();
            }
            let (writer, mut reader, report) = open(config(dir.path(), 64 * MIB, 0)).unwrap();
            let mut read = 0u64;
            while read < report.unsent_lines {
                let batch = reader.next_batch(1000).await.unwrap();
                assert!(batch.line_protocol().is_ok());
                read += u64::from(batch.lines);
            }
            writer.shutdown().await;
            (report, read)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_segment_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            cursor in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        ) {
            let (report, read) = recover_bytes(&bytes, cursor.as_deref());
            prop_assert_eq!(read, report.unsent_lines);
        }

        #[test]
        fn valid_records_survive_any_garbage_between_them(
            chunks in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..200), any::<u8>()), 1..6),
        ) {
            let (bytes, lines) = segment_with_garbage(&chunks);
            let (report, read) = recover_bytes(&bytes, None);
            prop_assert_eq!(report.lines, lines);
            prop_assert_eq!(read, lines);
            let garbage: usize = chunks.iter().map(|(g, _)| g.len()).sum();
            prop_assert_eq!(report.dropped_bytes, garbage as u64);
        }
    }
}

fn bench_line(i: usize) -> Vec<u8> {
    // ~150 bytes: one reading of the MQTT environment payload.
    format!(
        "environment,district=d{},gateway=bp-gw-001,sensor_id=s{:04} humidity=41.{},noise_db=55.{},pm10=17.{},pm2_5=9.{},temperature=21.{} {}\n",
        i % 23, i % 1000, i % 10, i % 3, i % 7, i % 9, i % 5, 1_700_000_000_000_000_000u64 + i as u64
    )
    .into_bytes()
}

/// Appends 200k one-line readings from 4 appenders, each keeping `in_flight` appends pending
/// (1 = await every append before the next), then reads and acks everything.
async fn bench_appends(in_flight: usize) {
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let (writer, mut reader, _) = open(config(dir.path(), 1024 * MIB, 0)).unwrap();
    const APPENDERS: usize = 4;
    const LINES: usize = 200_000;
    let per = LINES / APPENDERS;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..APPENDERS {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending: tokio::task::JoinSet<Result<(), BufferError>> =
                tokio::task::JoinSet::new();
            for i in a * per..(a + 1) * per {
                if pending.len() >= in_flight {
                    pending.join_next().await.unwrap().unwrap().unwrap();
                }
                let writer = writer.clone();
                pending
                    .spawn(async move { writer.append(Priority::Normal, 1, bench_line(i)).await });
            }
            while let Some(done) = pending.join_next().await {
                done.unwrap().unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let stats = reader.stats();
    eprintln!(
        "{LINES} one-line appends, {APPENDERS} appenders x {in_flight} in flight: {:.2} s, {:.0} appends/s, {} data fsyncs ({:.1} lines/fsync), {:.1} bytes/line on disk",
        elapsed.as_secs_f64(),
        LINES as f64 / elapsed.as_secs_f64(),
        stats.data_fsyncs,
        LINES as f64 / stats.data_fsyncs as f64,
        stats.disk_bytes as f64 / LINES as f64,
    );
    let started = Instant::now();
    let mut read = 0u64;
    while read < LINES as u64 {
        let batch = reader.next_batch(5000).await.unwrap();
        read += u64::from(batch.lines);
        reader.ack(&batch).await.unwrap();
    }
    eprintln!(
        "  read + ack of {LINES} lines in batches of 5000: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    writer.shutdown().await;
}

/// Hand-run micro-benchmark (set `BENCH_DIR` to measure another disk):
/// `cargo test -p ioc-gateway --lib -- --ignored --nocapture buffer::tests::bench`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_append_200k_lines_from_4_appenders() {
    bench_appends(1).await;
    bench_appends(64).await;
}
