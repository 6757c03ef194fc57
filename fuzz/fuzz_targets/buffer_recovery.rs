//! Buffer recovery over damaged segments: the input either is a whole segment file, or (first
//! byte odd) edits a valid segment of three records: truncation plus XOR bit flips. `buffer::open`
//! must succeed or fail cleanly, and every batch it then hands out must decompress.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use ioc_buffer::{self as buffer, BufferConfig};
use ioc_model::Priority;
use libfuzzer_sys::fuzz_target;

const SEGMENT: &str = "00000000000000000001.seg";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A valid segment holding three records, written by the real buffer.
fn valid_segment() -> &'static (String, Vec<u8>) {
    static SEG: OnceLock<(String, Vec<u8>)> = OnceLock::new();
    SEG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("buffer");
        runtime().block_on(async {
            let (w, _r, _rep) = buffer::open(BufferConfig::new(&root, 64 << 20)).unwrap();
            for i in 0..3 {
                let lp = format!("env,sensor_id=s{i} pm=1.5 170000000000000000{i}\n");
                w.append(Priority::Normal, 1, lp.into_bytes())
                    .await
                    .unwrap();
            }
            w.shutdown().await;
        });
        let class = root.join("normal");
        let entry = std::fs::read_dir(&class)
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .unwrap();
        (
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read(entry.path()).unwrap(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let (name, bytes) = if mode & 1 == 1 {
        let (name, valid) = valid_segment();
        let mut seg = valid.clone();
        let mut edits = rest.chunks_exact(3);
        if let Some(t) = edits.next() {
            let keep = usize::from(u16::from_le_bytes([t[0], t[1]])) % (seg.len() + 1);
            seg.truncate(keep);
        }
        for e in edits {
            if seg.is_empty() {
                break;
            }
            let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % seg.len();
            seg[at] ^= e[2];
        }
        (name.clone(), seg)
    } else {
        (SEGMENT.to_owned(), rest.to_vec())
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("buffer");
    let class = root.join(if mode & 2 == 0 { "normal" } else { "urgent" });
    std::fs::create_dir_all(&class).unwrap();
    std::fs::write(class.join(name), &bytes).unwrap();
    runtime().block_on(async {
        let Ok((w, mut r, report)) = buffer::open(BufferConfig::new(&root, 64 << 20)) else {
            return;
        };
        let mut lines = 0u64;
        while r.stats().unsent_lines > 0 {
            match tokio::time::timeout(Duration::from_secs(1), r.next_batch(1000)).await {
                Ok(Ok(batch)) => {
                    let lp = batch
                        .line_protocol()
                        .expect("a recovered batch must decompress");
                    lines += u64::from(batch.lines);
                    assert!(!lp.is_empty());
                    r.ack(&batch).await.unwrap();
                }
                Ok(Err(_)) => break,
                Err(_) => panic!("unsent lines reported but no batch came: {report:?}"),
            }
        }
        assert!(
            lines <= report.lines + 3,
            "{lines} lines read, report {report:?}"
        );
        w.shutdown().await;
    });
});
