//! `ioc-gateway buffer stats|export`: a technician's view into the disk buffer, read-only.
//!
//! When the store has been unreachable for hours, the questions in the cabinet are "how much
//! is waiting, from when to when, is any of it damaged, how close is it to the disk bound" and
//! sometimes "give me the data on a USB stick". `stats` answers the first (in text, or JSON for
//! scripts) and `export` the second, as plain line protocol that any InfluxDB-compatible store
//! accepts (`curl --data-binary @export.lp`). Both only read (see [`crate::buffer::inspect`]),
//! so they are safe to run next to a live gateway; neither takes the buffer's lock.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal};
use std::path::{Path, PathBuf};

use super::exit::Exit;
use crate::buffer::inspect::{self, BufferStatsReport, ClassStats, ExportSummary, InspectError};
use crate::config::{Config, ConfigError};
use crate::model::Priority;

/// Exports at least this large (bytes of segments) get a progress bar on a terminal.
const PROGRESS_MIN_BYTES: u64 = 1 << 20;

/// Why a buffer command failed.
#[derive(Debug, thiserror::Error)]
pub enum BufferCmdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("cannot create {}: {source}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} lies inside the buffer directory {}: write the export elsewhere (the buffer is read-only here)",
        path.display(),
        dir.display()
    )]
    OutputInsideBuffer { path: PathBuf, dir: PathBuf },
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl BufferCmdError {
    /// [`Exit::Config`] for a config that does not load, [`Exit::BadInput`] for other things
    /// the user must fix (missing directory, output path), [`Exit::Failure`] for I/O trouble.
    pub fn exit_code(&self) -> Exit {
        match self {
            BufferCmdError::Config(_) => Exit::Config,
            BufferCmdError::Inspect(InspectError::NotFound(_) | InspectError::NoBuffer(_))
            | BufferCmdError::Output { .. }
            | BufferCmdError::OutputInsideBuffer { .. } => Exit::BadInput,
            BufferCmdError::Inspect(_) | BufferCmdError::Json(_) => Exit::Failure,
        }
    }

    /// Whether the reader of the export went away (`export | head`): not worth an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, BufferCmdError::Inspect(InspectError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Where the buffer is: a gateway config (its `data_dir` and `[buffer] max_disk_mb`), or a
/// directory (a `data_dir`, or the buffer directory itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BufferSource {
    Config(PathBuf),
    DataDir(PathBuf),
}

/// A located buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedBuffer {
    /// The directory holding `urgent/` and `normal/`.
    pub dir: PathBuf,
    /// The disk bound, when known from a config.
    pub max_disk_bytes: Option<u64>,
}

/// Finds the buffer that `source` names.
pub fn locate(source: &BufferSource) -> Result<LocatedBuffer, BufferCmdError> {
    match source {
        BufferSource::Config(path) => {
            let config = Config::load(path)?;
            Ok(LocatedBuffer {
                dir: inspect::locate_buffer(&config.gateway.data_dir)?,
                max_disk_bytes: Some(config.buffer.max_disk_mb.saturating_mul(1 << 20)),
            })
        }
        BufferSource::DataDir(dir) => Ok(LocatedBuffer {
            dir: inspect::locate_buffer(dir)?,
            max_disk_bytes: None,
        }),
    }
}

/// Which classes to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClassChoice {
    Urgent,
    Normal,
    All,
}

impl ClassChoice {
    /// The classes, in the order the gateway sends them.
    pub fn classes(self) -> &'static [Priority] {
        match self {
            ClassChoice::Urgent => &[Priority::Urgent],
            ClassChoice::Normal => &[Priority::Normal],
            ClassChoice::All => &inspect::CLASSES,
        }
    }
}

/// A progress bar on stderr for `total` bytes, or a hidden one unless `wanted` (stderr is a
/// terminal) and the buffer is large.
fn progress_bar(wanted: bool, total: u64, template: &str) -> indicatif::ProgressBar {
    if !wanted || total < PROGRESS_MIN_BYTES {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `buffer stats`: the report as text (or JSON), taken now; a progress bar on stderr when
/// `progress` (a terminal) and the buffer is large (every unsent record is decompressed).
pub fn stats(source: &BufferSource, json: bool, progress: bool) -> Result<String, BufferCmdError> {
    let located = locate(source)?;
    let bar = progress_bar(
        progress,
        inspect::segment_bytes(&located.dir)?,
        "reading {bytes}/{total_bytes} of segments [{wide_bar}] {bytes_per_sec}, {eta} left",
    );
    let report = inspect::stats(&located.dir, located.max_disk_bytes, now_ms(), &mut |n| {
        bar.inc(n)
    });
    bar.finish_and_clear();
    let report = report?;
    if json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        Ok(text)
    } else {
        Ok(render_stats(&report))
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One `label  value` line of the text report.
fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<18}{value}");
}

/// `1.5 KiB`, `532 B`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3h 12m ago`, `45s ago`, `2d 4h ago`, `in 5m (clock ahead?)`.
fn age(ms: i64) -> String {
    let future = ms < 0;
    let s = ms.unsigned_abs() / 1000;
    let text = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    };
    if future {
        format!("in {text} (in the future: check the sensor's or the gateway's clock)")
    } else {
        format!("{text} ago")
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn render_class(out: &mut String, name: &str, c: &ClassStats) {
    let u = &c.unsent;
    let _ = writeln!(out, "{name}");
    row(
        out,
        "unsent",
        format!(
            "{} in {}, {} on disk, {} of line protocol",
            plural(u.lines, "line", "lines"),
            plural(u.records, "record", "records"),
            size(u.disk_bytes),
            size(u.line_protocol_bytes)
        ),
    );
    match (&u.oldest_reading_utc, u.oldest_reading_age_ms) {
        (Some(t), Some(a)) => {
            row(out, "oldest reading", format!("{t} ({})", age(a)));
        }
        _ => {
            row(out, "oldest reading", "-");
        }
    }
    if let (Some(t), Some(a)) = (&u.newest_reading_utc, u.newest_reading_age_ms) {
        row(out, "newest reading", format!("{t} ({})", age(a)));
    }
    if u.lines_without_timestamp > 0 {
        row(
            out,
            "no timestamp",
            format!(
                "{} (the store stamps them on arrival)",
                plural(u.lines_without_timestamp, "line", "lines")
            ),
        );
    }
    if let Some(a) = u.oldest_append_age_ms {
        row(out, "held back for", age(a).trim_end_matches(" ago"));
    }
    let k = &c.acked_not_deleted;
    row(
        out,
        "acked, on disk",
        format!(
            "{} in {}, {} (deleted once their segment is done)",
            plural(k.lines, "line", "lines"),
            plural(k.records, "record", "records"),
            size(k.disk_bytes)
        ),
    );
    row(
        out,
        "segments",
        format!("{}, {} on disk", c.segments, size(c.disk_bytes)),
    );
    let d = &c.damage;
    if d.would_drop_on_recovery_bytes == 0 && d.undecodable_records == 0 {
        row(out, "damaged", "none");
    } else {
        row(
            out,
            "damaged",
            format!(
                "{} in {}, torn tail {} in {}: recovery drops {}",
                size(d.damaged_bytes),
                plural(d.damaged_ranges, "range", "ranges"),
                size(d.torn_tail_bytes),
                plural(d.torn_tails, "segment", "segments"),
                size(d.would_drop_on_recovery_bytes)
            ),
        );
        if d.undecodable_records > 0 {
            row(
                out,
                "",
                format!(
                    "{} with a good checksum do not decompress",
                    plural(d.undecodable_records, "record", "records")
                ),
            );
        }
    }
    let cursor = match c.cursor.0 {
        inspect::CursorState::Missing => "none (nothing acked yet)".to_string(),
        inspect::CursorState::Valid { segment, offset } => {
            format!("segment {segment}, offset {offset}")
        }
        inspect::CursorState::Corrupt => {
            "CORRUPT: the gateway will re-send everything on disk in this class".to_string()
        }
    };
    row(out, "ack cursor", cursor);
    if c.vanished_segments > 0 {
        row(
            out,
            "vanished",
            format!(
                "{} deleted while reading (the gateway is sending)",
                plural(c.vanished_segments, "segment", "segments")
            ),
        );
    }
}

/// The human-readable report.
pub fn render_stats(r: &BufferStatsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "buffer {}   (at {})", r.dir.display(), r.now_utc);
    let holder = match r.lock {
        inspect::LockState::Held { pid: Some(pid) } => format!("in use by pid {pid}"),
        inspect::LockState::Held { pid: None } => "in use".to_string(),
        inspect::LockState::Free => "no gateway running on it".to_string(),
        inspect::LockState::Unknown => r.lock_pid.map_or_else(
            || "no gateway has opened it".to_string(),
            |pid| format!("last opened by pid {pid} (whether it still runs is unknown)"),
        ),
    };
    if matches!(r.lock, inspect::LockState::Held { .. }) {
        let _ = writeln!(
            out,
            "  {holder}: figures move while it runs, and a torn tail may be a write in progress"
        );
    } else {
        let _ = writeln!(out, "  {holder}");
    }
    let bound = match (r.max_disk_bytes, r.disk_used_permille) {
        (Some(max), Some(pm)) => format!(", bound {} ({}.{} % used)", size(max), pm / 10, pm % 10),
        _ => ", bound unknown (pass --config to compare with max_disk_mb)".to_string(),
    };
    row(
        &mut out,
        "disk",
        format!(
            "{} in {}{bound}",
            size(r.disk_bytes),
            plural(r.segments as u64, "segment", "segments")
        ),
    );
    render_class(&mut out, "urgent", &r.urgent);
    render_class(&mut out, "normal", &r.normal);
    out
}

/// `buffer export`'s one-line summary.
pub fn summary_line(s: &ExportSummary) -> String {
    let mut line = format!(
        "exported {} ({} bytes) in {} from {}; skipped {} damaged bytes in {}",
        plural(s.lines, "line", "lines"),
        s.bytes,
        plural(s.records, "record", "records"),
        plural(s.segments, "segment", "segments"),
        s.skipped_damaged_bytes,
        plural(s.skipped_damaged_ranges, "range", "ranges"),
    );
    if s.torn_tail_bytes > 0 {
        let _ = write!(line, " ({} bytes a torn tail)", s.torn_tail_bytes);
    }
    if s.skipped_corrupt_records > 0 {
        let _ = write!(
            line,
            " and {} that do not decompress ({} bytes)",
            plural(s.skipped_corrupt_records, "record", "records"),
            s.skipped_corrupt_bytes
        );
    }
    if s.vanished_segments > 0 {
        let _ = write!(
            line,
            "; {} deleted by the running gateway while reading",
            plural(s.vanished_segments, "segment", "segments")
        );
    }
    line
}

/// What `buffer export` writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    Stdout,
    File(PathBuf),
}

impl ExportTarget {
    /// `-` is standard output.
    pub fn parse(arg: &Path) -> Self {
        if arg == Path::new("-") {
            ExportTarget::Stdout
        } else {
            ExportTarget::File(arg.to_path_buf())
        }
    }
}

/// Refuses an output file inside the buffer directory (export must not touch it).
fn check_outside(path: &Path, buffer: &Path) -> Result<(), BufferCmdError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (Ok(parent), Ok(buffer)) = (parent.canonicalize(), buffer.canonicalize()) else {
        return Ok(()); // a missing parent fails at create with a clear error
    };
    if parent.starts_with(&buffer) {
        return Err(BufferCmdError::OutputInsideBuffer {
            path: path.to_path_buf(),
            dir: buffer,
        });
    }
    Ok(())
}

/// `buffer export`: writes the chosen classes' records as line protocol to `target`, with a
/// progress bar on stderr when `progress` (a terminal) and the buffer is large.
pub fn export(
    source: &BufferSource,
    class: ClassChoice,
    include_acked: bool,
    target: &ExportTarget,
    progress: bool,
) -> Result<ExportSummary, BufferCmdError> {
    let located = locate(source)?;
    let plan = inspect::plan_export(&located.dir, class.classes(), include_acked)?;
    let bar = progress_bar(
        progress,
        plan.scan_bytes,
        "exporting {bytes}/{total_bytes} of segments [{wide_bar}] {bytes_per_sec}, {eta} left",
    );
    let mut tick = |n: u64| bar.inc(n);
    let summary = match target {
        ExportTarget::Stdout => {
            let stdout = io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            plan.run(&mut out, &mut tick)
        }
        ExportTarget::File(path) => {
            check_outside(path, &located.dir)?;
            let file = File::create(path).map_err(|source| BufferCmdError::Output {
                path: path.clone(),
                source,
            })?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            plan.run(&mut out, &mut tick)
        }
    };
    bar.finish_and_clear();
    Ok(summary?)
}

/// Whether stderr is a terminal (progress bars only there).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// `buffer stats`, printed to stdout (progress on a terminal's stderr); the exit status.
pub fn execute_stats(source: &BufferSource, json: bool) -> Exit {
    exit_for(stats(source, json, stderr_is_terminal()).map(|text| print!("{text}")))
}

/// `buffer export` to `output` (`-`: stdout), its summary to stderr; the exit status.
pub fn execute_export(
    source: &BufferSource,
    class: ClassChoice,
    include_acked: bool,
    output: &Path,
) -> Exit {
    exit_for(
        export(
            source,
            class,
            include_acked,
            &ExportTarget::parse(output),
            stderr_is_terminal(),
        )
        .map(|summary| eprintln!("{}", summary_line(&summary))),
    )
}

/// The exit status of a finished buffer command, its error (if any) printed to stderr.
fn exit_for(result: Result<(), BufferCmdError>) -> Exit {
    match result {
        Ok(()) => Exit::Success,
        // `export | head`: the reader has what it wanted.
        Err(e) if e.is_broken_pipe() => Exit::Success,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
