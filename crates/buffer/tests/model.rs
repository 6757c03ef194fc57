//! Model-based property test of the disk buffer, through its public API only.
//!
//! proptest generates short sequences of [`Op`]s — appends of either class (empty, tiny without a
//! final newline, up to several KiB: many times the segment size), batch reads, acks of any
//! batch held (out of order, and twice), "disk full" on the next writes, crashes (every handle
//! dropped without [`BufferWriter::shutdown`], optionally with a torn partial record left at the
//! end of a class's newest segment, as a power cut in the middle of a write leaves it) and clean
//! reopens — and runs each against a real buffer in a temp dir and a [`Model`] side by side.
//! Every append is awaited before the next step, so a crash between steps is a process death
//! at a quiet moment; the torn tail stands for the write a power cut interrupts.
//!
//! The model holds, per class and oldest first, the records the buffer must still deliver: every
//! append that resolved `Ok`, minus what the persisted ack cursor has passed, minus what the
//! buffer dropped under its documented policy. It also holds the batches handed out since the
//! last open, in hand-out order: the cursor passes a batch once it and every batch before it in
//! its class are acked (so a batch acked ahead of an unacked one is re-sent after a crash; that
//! is the contract, and the model requires exactly that re-send).
//!
//! Checked at every step:
//! 1. **Nothing durable is lost**: after every reopen, the recovery report's `unsent_lines`
//!    equals the model's, and reading replays every record the model holds.
//! 2. **Replays are byte-identical and in order**: a batch is of the class the model expects
//!    (urgent first whenever urgent has unread data), its body decompresses to exactly the next
//!    unread records of that class, whole and in append order (the buffer adds a missing final
//!    newline), its line count is theirs, and it holds at most `max_lines` lines unless it is a
//!    single record; when the model has nothing unread, no batch comes.
//! 3. **Acked data never comes back**: records passed by the cursor are gone from the model, so a
//!    read or recovery that returns them fails; records acked out of order must come back.
//! 4. **A failed append is an error and loses nothing else**: with "disk full" armed, a non-empty
//!    append fails with `BufferError::is_disk_full` and its data never appears. The documented
//!    full-disk policy drops the one oldest segment (normal class first) to make room; that loss
//!    must show in `dropped_oldest_lines` and must be exactly the oldest unacked records, which
//!    the model then forgets. With a large bound nothing else is ever dropped.
//! 5. **The disk bound drops oldest first, and counts it**: a second test runs the same operations
//!    under a small `max_disk_bytes`; every increase of `dropped_oldest_lines` must be exactly the
//!    lines of the oldest unacked records (all of normal before any of urgent), and the segment
//!    files never exceed the bound.
//!
//! After every step `BufferStats` must agree with the model (unsent lines per class, append
//! errors). Each case ends with a crash, a full replay, acks of everything and a reopen that must
//! find nothing left to send.
//!
//! Sizes keep a class's unread data below the 256 KiB at which the reader starts its second
//! ("live") lane, so batches of a class come strictly in append order; the lane itself is covered
//! by the unit tests.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use ioc_buffer::{open, Batch, BufferConfig, BufferReader, BufferWriter};
use ioc_model::Priority;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

/// Large enough that only "disk full" drops data.
const LARGE_BOUND: u64 = 64 << 20;
/// Small enough that a case of appends hits it several times.
const SMALL_BOUND: u64 = 6 << 10;
/// How long a read the model expects to succeed may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a batch the model says cannot exist.
const NOTHING_TIMEOUT: Duration = Duration::from_millis(10);
/// Most steps in a case, lines in an append and bytes in a line (with its newline).
const MAX_STEPS: usize = 40;
const MAX_LINES: u8 = 4;
const MAX_LINE_LEN: u16 = 1500;
/// The reader's live lane starts once a class has 256 KiB (compressed) unread; even all-append
/// cases of the largest, incompressible appends (plus a record header and gzip framing of
/// 64 bytes each) stay below it, so batches of a class come strictly in append order.
const _: () =
    assert!(MAX_STEPS * (MAX_LINES as usize * (MAX_LINE_LEN as usize + 1) + 64) < 256 << 10);
/// The largest record (incompressible, with header and gzip framing) fits under the small bound,
/// so no append is refused as too large.
const _: () = assert!(MAX_LINES as u64 * (MAX_LINE_LEN as u64 + 1) + 64 < SMALL_BOUND);
/// Characters of the filler of a line (no newline; compresses to about 3/4).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// One step of a case.
#[derive(Debug, Clone)]
enum Op {
    /// Appends `lines` lines (0: an empty append) of at least `line_len` bytes each; without a
    /// final newline unless `newline`.
    Append {
        class: Priority,
        lines: u8,
        line_len: u16,
        newline: bool,
    },
    /// Takes the next batch of up to `max_lines` lines (or checks that none comes).
    Read { max_lines: u8 },
    /// Acks one of the batches read since the last open (acked already or not).
    Ack { pick: Index },
    /// The next `writes` segment writes fail with "disk full".
    FailWrites { writes: u8 },
    /// Drops every handle without a clean close and reopens; with `torn_tail`, first leaves that
    /// many bytes of a partial record at the end of the class's newest segment.
    Crash { torn_tail: Option<(Priority, u8)> },
    /// Shuts the writer down cleanly and reopens.
    CleanReopen,
}

fn class() -> impl Strategy<Value = Priority> {
    prop_oneof![Just(Priority::Normal), Just(Priority::Urgent)]
}

/// How often a case appends, and how often an append is of long lines.
#[derive(Debug, Clone, Copy)]
struct Mix {
    /// Against reads 6, acks 5, faults 1, crashes 2 and clean reopens 1.
    append_weight: u32,
    /// Against short lines (under 64 bytes) 3.
    long_line_weight: u32,
}

/// Mostly short appends, every operation often.
const EVERYDAY: Mix = Mix {
    append_weight: 8,
    long_line_weight: 1,
};
/// Many and long appends, to keep a small disk bound busy.
const FILLING: Mix = Mix {
    append_weight: 24,
    long_line_weight: 3,
};

fn op(mix: Mix) -> impl Strategy<Value = Op> {
    let append = (
        class(),
        prop_oneof![1 => Just(0u8), 12 => 1..=MAX_LINES],
        prop_oneof![3 => 0..64u16, mix.long_line_weight => 64..=MAX_LINE_LEN],
        any::<bool>(),
    )
        .prop_map(|(class, lines, line_len, newline)| Op::Append {
            class,
            lines,
            line_len,
            newline,
        });
    prop_oneof![
        mix.append_weight => append,
        6 => (1..=12u8).prop_map(|max_lines| Op::Read { max_lines }),
        5 => any::<Index>().prop_map(|pick| Op::Ack { pick }),
        1 => (1..=3u8).prop_map(|writes| Op::FailWrites { writes }),
        2 => proptest::option::of((class(), 1..=80u8)).prop_map(|torn_tail| Op::Crash { torn_tail }),
        1 => Just(Op::CleanReopen),
    ]
}

/// Up to [`MAX_STEPS`] steps.
fn ops(mix: Mix) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(mix), 1..=MAX_STEPS)
}

/// The line protocol of append number `serial`: `lines` lines, each tagged with the class, the
/// serial and its index, padded with pseudo-random filler to `line_len` bytes, each ending in a
/// newline.
fn payload(serial: u64, class: Priority, lines: u8, line_len: u16) -> Vec<u8> {
    let tag = match class {
        Priority::Normal => 'n',
        Priority::Urgent => 'u',
    };
    let mut x = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::new();
    for line in 0..lines {
        let start = out.len();
        out.extend_from_slice(format!("{tag}{serial}.{line} ").as_bytes());
        while out.len() - start < usize::from(line_len) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(ALPHABET[(x % 64) as usize]);
        }
        out.push(b'\n');
    }
    out
}

fn class_index(class: Priority) -> usize {
    match class {
        Priority::Normal => 0,
        Priority::Urgent => 1,
    }
}

fn class_dir(class: Priority) -> &'static str {
    match class {
        Priority::Normal => "normal",
        Priority::Urgent => "urgent",
    }
}

/// A durable record the buffer must still deliver.
#[derive(Debug)]
struct Record {
    serial: u64,
    /// The line protocol the buffer stored (with its final newline).
    bytes: Vec<u8>,
    lines: u32,
    /// Handed out in a batch by the current reader.
    in_batch: bool,
}

/// A batch handed out by the current reader and not yet passed by the ack cursor.
#[derive(Debug)]
struct ModelBatch {
    id: u64,
    serials: Vec<u64>,
    acked: bool,
}

#[derive(Debug, Default)]
struct ClassModel {
    /// Oldest first: appended `Ok`, not passed by the cursor, not dropped.
    records: VecDeque<Record>,
    /// In hand-out order.
    batches: VecDeque<ModelBatch>,
}

impl ClassModel {
    fn unsent_lines(&self) -> u64 {
        self.records.iter().map(|r| u64::from(r.lines)).sum()
    }

    /// Forgets the oldest records holding `lines` lines; they must end at a record boundary.
    /// Returns the lines left to drop from the next class when this one ran out.
    fn drop_oldest(&mut self, mut lines: u64) -> Result<u64, String> {
        while lines > 0 {
            let Some(oldest) = self.records.front() else {
                return Ok(lines);
            };
            let here = u64::from(oldest.lines);
            if here > lines {
                return Err(format!(
                    "dropped lines end inside record {} ({here} lines, {lines} left to drop): \
                     a segment drop must lose whole records, oldest first",
                    oldest.serial
                ));
            }
            lines -= here;
            self.records.pop_front();
        }
        Ok(0)
    }
}

/// What the buffer must hold, and what the current reader has handed out.
#[derive(Debug, Default)]
struct Model {
    /// Indexed by [`class_index`].
    classes: [ClassModel; 2],
    next_serial: u64,
    next_batch: u64,
    /// Segment writes still armed to fail ("disk full").
    armed_faults: u64,
    /// Since the last open, as `BufferStats` counts them.
    append_errors: u64,
    dropped_lines: u64,
    dropped_segments: u64,
}

impl Model {
    fn class(&mut self, class: Priority) -> &mut ClassModel {
        &mut self.classes[class_index(class)]
    }

    fn unsent_lines(&self, class: Priority) -> u64 {
        self.classes[class_index(class)].unsent_lines()
    }

    fn total_unsent_lines(&self) -> u64 {
        self.classes.iter().map(ClassModel::unsent_lines).sum()
    }

    /// The class the next batch must come from: urgent first.
    fn next_read_class(&self) -> Option<Priority> {
        [Priority::Urgent, Priority::Normal].into_iter().find(|c| {
            self.classes[class_index(*c)]
                .records
                .iter()
                .any(|r| !r.in_batch)
        })
    }

    /// The buffer dropped `lines` unsent lines to make room: normal's oldest first, urgent's
    /// only once normal has none left.
    fn drop_oldest(&mut self, lines: u64) -> Result<(), String> {
        let left = self.class(Priority::Normal).drop_oldest(lines)?;
        let left = self.class(Priority::Urgent).drop_oldest(left)?;
        if left > 0 {
            return Err(format!(
                "{lines} lines dropped but the model only holds {} unsent",
                lines - left
            ));
        }
        Ok(())
    }

    /// Checks that `body` (a batch of `class` with `lines` lines, read with `max_lines`) is
    /// exactly the next unread records of the class, and marks them handed out.
    fn take_batch(
        &mut self,
        class: Priority,
        body: &[u8],
        lines: u32,
        max_lines: u32,
    ) -> Result<u64, String> {
        let id = self.next_batch;
        self.next_batch += 1;
        let model = self.class(class);
        let first = model
            .records
            .iter()
            .position(|r| !r.in_batch)
            .ok_or_else(|| format!("a {class:?} batch, but the model has nothing unread there"))?;
        if let Some(later) = model.records.iter().skip(first).find(|r| r.in_batch) {
            return Err(format!(
                "model invariant: record {} handed out after an unread one",
                later.serial
            ));
        }
        let mut at = 0;
        let mut serials = Vec::new();
        let mut expected_lines = 0u32;
        for record in model.records.iter_mut().skip(first) {
            if at == body.len() {
                break;
            }
            let rest = &body[at..];
            if !rest.starts_with(&record.bytes) {
                return Err(format!(
                    "batch body at byte {at} is not record {} ({} bytes, {} lines): expected \
                     {:?}, got {:?}",
                    record.serial,
                    record.bytes.len(),
                    record.lines,
                    excerpt(&record.bytes),
                    excerpt(rest)
                ));
            }
            at += record.bytes.len();
            expected_lines += record.lines;
            record.in_batch = true;
            serials.push(record.serial);
        }
        if at != body.len() || serials.is_empty() {
            return Err(format!(
                "batch holds {} bytes more than the unread records of the model: {:?}",
                body.len() - at,
                excerpt(&body[at..])
            ));
        }
        if lines != expected_lines {
            return Err(format!(
                "batch says {lines} lines, its records hold {expected_lines}"
            ));
        }
        if serials.len() > 1 && lines > max_lines {
            return Err(format!(
                "batch of {} records has {lines} lines, over max_lines {max_lines}",
                serials.len()
            ));
        }
        model.batches.push_back(ModelBatch {
            id,
            serials,
            acked: false,
        });
        Ok(id)
    }

    /// The reader acked batch `id`: the cursor passes every acked batch at the front.
    fn ack(&mut self, class: Priority, id: u64) {
        let model = self.class(class);
        let Some(batch) = model.batches.iter_mut().find(|b| b.id == id) else {
            return; // passed already: acking twice changes nothing
        };
        batch.acked = true;
        while model.batches.front().is_some_and(|b| b.acked) {
            if let Some(passed) = model.batches.pop_front() {
                model
                    .records
                    .retain(|r| !passed.serials.contains(&r.serial));
            }
        }
    }

    /// After a reopen: a new reader (nothing handed out), fresh counters, no armed faults.
    fn reopened(&mut self) {
        for class in &mut self.classes {
            class.batches.clear();
            for record in &mut class.records {
                record.in_batch = false;
            }
        }
        self.armed_faults = 0;
        self.append_errors = 0;
        self.dropped_lines = 0;
        self.dropped_segments = 0;
    }
}

/// The start of some line protocol, for failure messages.
fn excerpt(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(48)];
    format!(
        "{}{}",
        String::from_utf8_lossy(shown),
        if bytes.len() > shown.len() { "…" } else { "" }
    )
}

/// A batch the test holds, as the output would.
struct HeldBatch {
    batch: Batch,
    model_id: u64,
}

/// An open buffer.
struct Handles {
    writer: BufferWriter,
    reader: BufferReader,
}

/// Which disk bound a case runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Large,
    Small,
}

/// One case: the real buffer, the model, and the batches held.
struct Case {
    dir: tempfile::TempDir,
    cfg: BufferConfig,
    bound: Bound,
    handles: Option<Handles>,
    held: Vec<HeldBatch>,
    model: Model,
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl Case {
    fn new(bound: Bound, segment_bytes: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cfg = BufferConfig {
            dir: dir.path().to_path_buf(),
            max_disk_bytes: match bound {
                Bound::Large => LARGE_BOUND,
                Bound::Small => SMALL_BOUND,
            },
            segment_bytes,
        };
        let mut case = Case {
            dir,
            cfg,
            bound,
            handles: None,
            held: Vec::new(),
            model: Model::default(),
        };
        case.reopen(0)?;
        Ok(case)
    }

    fn handles(&mut self) -> Result<&mut Handles, String> {
        self.handles
            .as_mut()
            .ok_or_else(|| "the buffer is not open".to_string())
    }

    /// Opens the buffer and checks what recovery found against the model.
    fn reopen(&mut self, torn_bytes: u64) -> Result<(), String> {
        // After a crash the dropped buffer's writer thread is still letting go of the directory
        // lock; `open` promises to wait for a buffer of this same process that is closing.
        let (writer, reader, report) =
            open(self.cfg.clone()).map_err(|e| format!("reopen failed: {e}"))?;
        self.model.reopened();
        check!(
            report.unsent_lines == self.model.total_unsent_lines(),
            "recovery found {} unsent lines, the model holds {} (normal {}, urgent {})",
            report.unsent_lines,
            self.model.total_unsent_lines(),
            self.model.unsent_lines(Priority::Normal),
            self.model.unsent_lines(Priority::Urgent)
        );
        check!(
            report.dropped_bytes == torn_bytes,
            "recovery dropped {} bytes, {torn_bytes} were torn",
            report.dropped_bytes
        );
        check!(
            report.cursor_fallbacks == 0,
            "recovery fell back from a corrupt cursor"
        );
        self.handles = Some(Handles { writer, reader });
        Ok(())
    }

    async fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Append {
                class,
                lines,
                line_len,
                newline,
            } => self.append(*class, *lines, *line_len, *newline).await?,
            Op::Read { max_lines } => self.read(u32::from(*max_lines)).await?,
            Op::Ack { pick } => self.ack(*pick).await?,
            Op::FailWrites { writes } => {
                self.handles()?
                    .writer
                    .inject_write_faults(u64::from(*writes));
                self.model.armed_faults = u64::from(*writes);
            }
            Op::Crash { torn_tail } => {
                self.handles = None;
                self.held.clear();
                let torn = match torn_tail {
                    Some((class, len)) => tear_newest_segment(self.dir.path(), *class, *len)?,
                    None => 0,
                };
                self.reopen(torn)?;
            }
            Op::CleanReopen => {
                if let Some(handles) = self.handles.take() {
                    handles.writer.shutdown().await;
                }
                self.held.clear();
                self.reopen(0)?;
            }
        }
        self.check_stats()
    }

    async fn append(
        &mut self,
        class: Priority,
        lines: u8,
        line_len: u16,
        newline: bool,
    ) -> Result<(), String> {
        let serial = self.model.next_serial;
        self.model.next_serial += 1;
        let bytes = payload(serial, class, lines, line_len);
        let mut sent = bytes.clone();
        if !newline {
            sent.pop();
        }
        let handles = self.handles()?;
        let result = handles.writer.append(class, u32::from(lines), sent).await;
        let stats = handles.reader.stats();
        // Only a non-empty append reaches the disk, and so only it meets an armed fault.
        let must_fail = !bytes.is_empty() && self.model.armed_faults > 0;
        match &result {
            Ok(()) => check!(!must_fail, "append succeeded with a disk-full fault armed"),
            Err(e) => {
                check!(must_fail, "append failed: {e}");
                check!(e.is_disk_full(), "append failed, but not as disk full: {e}");
            }
        }
        if must_fail {
            self.model.armed_faults -= 1;
            self.model.append_errors += 1;
        }
        let dropped_lines = stats.dropped_oldest_lines - self.model.dropped_lines;
        let dropped_segments = stats.dropped_oldest_segments - self.model.dropped_segments;
        if self.bound == Bound::Large {
            // Only the full-disk policy drops, and one segment at most.
            let allowed = u64::from(must_fail);
            check!(
                dropped_segments <= allowed,
                "{dropped_segments} segments dropped by one append (at most {allowed} allowed \
                 under a large bound)"
            );
        }
        self.model.dropped_lines = stats.dropped_oldest_lines;
        self.model.dropped_segments = stats.dropped_oldest_segments;
        // Drops happen before the new record is written (or after it failed): oldest first.
        self.model.drop_oldest(dropped_lines)?;
        if result.is_ok() && !bytes.is_empty() {
            self.model.class(class).records.push_back(Record {
                serial,
                bytes,
                lines: u32::from(lines),
                in_batch: false,
            });
        }
        Ok(())
    }

    async fn read(&mut self, max_lines: u32) -> Result<(), String> {
        let expected = self.model.next_read_class();
        let reader = &mut self.handles()?.reader;
        let Some(class) = expected else {
            let got = tokio::time::timeout(NOTHING_TIMEOUT, reader.next_batch(max_lines)).await;
            return match got {
                Err(_elapsed) => Ok(()),
                Ok(Ok(batch)) => Err(format!(
                    "the model has nothing unread, but a {:?} batch of {} lines came: {:?}",
                    batch.priority,
                    batch.lines,
                    batch.line_protocol().map(|lp| excerpt(&lp))
                )),
                Ok(Err(e)) => Err(format!("read failed: {e}")),
            };
        };
        let batch = match tokio::time::timeout(READ_TIMEOUT, reader.next_batch(max_lines)).await {
            Err(_elapsed) => {
                return Err(format!(
                    "no batch within {READ_TIMEOUT:?}, the model has {class:?} records unread"
                ))
            }
            Ok(Err(e)) => return Err(format!("read failed: {e}")),
            Ok(Ok(batch)) => batch,
        };
        check!(
            batch.priority == class,
            "a {:?} batch came, the model expects {class:?} first",
            batch.priority
        );
        let body = batch
            .line_protocol()
            .map_err(|e| format!("batch body does not decompress: {e}"))?;
        let model_id = self
            .model
            .take_batch(class, &body, batch.lines, max_lines)?;
        self.held.push(HeldBatch { batch, model_id });
        Ok(())
    }

    async fn ack(&mut self, pick: Index) -> Result<(), String> {
        if self.held.is_empty() {
            return Ok(());
        }
        let held = pick.index(self.held.len());
        let (class, model_id) = (self.held[held].batch.priority, self.held[held].model_id);
        let batch = self.held[held].batch.clone();
        self.handles()?
            .reader
            .ack(&batch)
            .await
            .map_err(|e| format!("ack failed: {e}"))?;
        self.model.ack(class, model_id);
        Ok(())
    }

    fn check_stats(&mut self) -> Result<(), String> {
        let stats = self.handles()?.reader.stats();
        check!(
            stats.unsent_lines == self.model.total_unsent_lines(),
            "stats say {} unsent lines, the model holds {}",
            stats.unsent_lines,
            self.model.total_unsent_lines()
        );
        check!(
            stats.urgent_unsent_lines == self.model.unsent_lines(Priority::Urgent),
            "stats say {} urgent unsent lines, the model holds {}",
            stats.urgent_unsent_lines,
            self.model.unsent_lines(Priority::Urgent)
        );
        check!(
            stats.append_errors == self.model.append_errors,
            "stats count {} append errors, the model {}",
            stats.append_errors,
            self.model.append_errors
        );
        check!(
            stats.disk_bytes <= self.cfg.max_disk_bytes,
            "{} bytes of segments, over the bound of {}",
            stats.disk_bytes,
            self.cfg.max_disk_bytes
        );
        Ok(())
    }

    /// Crash, replay everything, ack it all, reopen: nothing may be left to send.
    async fn finish(&mut self) -> Result<(), String> {
        self.step(&Op::Crash { torn_tail: None }).await?;
        while self.model.next_read_class().is_some() {
            self.read(1000).await?;
        }
        self.read(1000).await?; // nothing more
        let held: Vec<Batch> = self.held.iter().map(|h| h.batch.clone()).collect();
        let ids: Vec<u64> = self.held.iter().map(|h| h.model_id).collect();
        for (batch, id) in held.iter().zip(ids) {
            self.handles()?
                .reader
                .ack(batch)
                .await
                .map_err(|e| format!("ack failed: {e}"))?;
            self.model.ack(batch.priority, id);
        }
        self.check_stats()?;
        check!(
            self.model.total_unsent_lines() == 0,
            "model invariant: unsent lines after acking everything"
        );
        self.step(&Op::CleanReopen).await?;
        if let Some(handles) = self.handles.take() {
            handles.writer.shutdown().await;
        }
        Ok(())
    }
}

/// Leaves the first bytes of a record (a write cut short by a power loss) at the end of the
/// newest segment file of `class`; returns how many bytes it added.
fn tear_newest_segment(root: &Path, class: Priority, len: u8) -> Result<u64, String> {
    let dir = root.join(class_dir(class));
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    let Some(newest) = segments.last() else {
        return Ok(0);
    };
    let bytes = std::fs::read(newest).map_err(|e| format!("{}: {e}", newest.display()))?;
    // The segment's first record (header: magic, CRC, payload length at bytes 8..12), cut
    // before its end; in an empty segment, a header cut before its end.
    let record: Vec<u8> = match bytes.get(8..12) {
        Some(len_field) => {
            let payload_len =
                u32::from_le_bytes([len_field[0], len_field[1], len_field[2], len_field[3]]);
            let record_len = (32 + payload_len as usize).min(bytes.len());
            bytes[..record_len - 1].to_vec()
        }
        None => {
            let mut header = b"IOCR".to_vec();
            header.resize(31, 0);
            header
        }
    };
    let torn = &record[..usize::from(len).min(record.len())];
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(newest)
        .map_err(|e| format!("{}: {e}", newest.display()))?;
    std::io::Write::write_all(&mut file, torn).map_err(|e| format!("{}: {e}", newest.display()))?;
    Ok(torn.len() as u64)
}

/// Pretty-prints the numbered ops of a failing case.
struct Numbered<'a>(&'a [Op]);

impl fmt::Display for Numbered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.0.iter().enumerate() {
            writeln!(f, "  #{i}: {op:?}")?;
        }
        Ok(())
    }
}

fn run(bound: Bound, segment_bytes: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    runtime.block_on(async {
        let mut case = Case::new(bound, segment_bytes).map_err(TestCaseError::fail)?;
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = case.step(op).await {
                return Err(TestCaseError::fail(format!(
                    "step #{i} {op:?}: {e}\nsteps:\n{}",
                    Numbered(ops)
                )));
            }
        }
        case.finish().await.map_err(|e| {
            TestCaseError::fail(format!(
                "final replay after the steps: {e}\nsteps:\n{}",
                Numbered(ops)
            ))
        })
    })
}

fn segment_bytes() -> impl Strategy<Value = u64> {
    prop_oneof![Just(512u64), Just(2048), Just(8192)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 1024, ..ProptestConfig::default() })]

    /// Under a large bound: nothing durable is lost, replays are exact, acks stick, and a
    /// full disk loses only the oldest segment (counted).
    #[test]
    fn buffer_behaves_like_its_model(segment_bytes in segment_bytes(), ops in ops(EVERYDAY)) {
        run(Bound::Large, segment_bytes, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 1024, ..ProptestConfig::default() })]

    /// Under a small bound: drop-oldest drops whole records, oldest first, counted.
    #[test]
    fn buffer_behaves_like_its_model_under_a_small_disk_bound(
        segment_bytes in prop_oneof![Just(1024u64), Just(2048)],
        ops in ops(FILLING),
    ) {
        run(Bound::Small, segment_bytes, &ops)?;
    }
}
