//! Fuzzes buffer recovery: arbitrary bytes as segment files and ack cursor must never panic,
//! and whatever recovery reports as unsent must be readable as valid gzip'd batches.
#![no_main]

use std::time::Duration;

use ioc_gateway::buffer::{open, BufferConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: [cursor length (0..=40)] [cursor bytes] [split point u16] [segment A | segment B]
    let Some((&cursor_len, rest)) = data.split_first() else {
        return;
    };
    let cursor_len = usize::from(cursor_len % 41).min(rest.len());
    let (cursor, rest) = rest.split_at(cursor_len);
    let (split, segments) = match rest {
        [a, b, tail @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), tail),
        _ => (0, rest),
    };
    let split = split.min(segments.len());
    let (first, second) = segments.split_at(split);

    let dir = tempfile::tempdir().expect("tempdir");
    let normal = dir.path().join("normal");
    std::fs::create_dir_all(&normal).expect("mkdir");
    std::fs::write(normal.join("00000000000000000001.seg"), first).expect("write");
    std::fs::write(normal.join("00000000000000000002.seg"), second).expect("write");
    if !cursor.is_empty() {
        std::fs::write(normal.join("ack.cursor"), cursor).expect("write");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (writer, mut reader, report) =
            open(BufferConfig::new(dir.path(), 64 << 20)).expect("recovery must not fail on content");
        let mut read = 0u64;
        while read < report.unsent_lines {
            let batch = tokio::time::timeout(Duration::from_secs(5), reader.next_batch(10_000))
                .await
                .expect("reader stalled")
                .expect("read");
            batch.line_protocol().expect("valid gzip");
            read += u64::from(batch.lines);
        }
        assert_eq!(read, report.unsent_lines);
        writer.shutdown().await;
    });
});
