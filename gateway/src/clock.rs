//! The gateway's clock: the current wall clock for readings stamped on receipt (serial
//! sensors, messages without a time of their own), with its steps detected and its
//! synchronisation state known.
//!
//! Why it exists: a box without a battery-backed clock boots at a wrong time and is corrected
//! by NTP once its 4G link is up, often by hours. Readings stamped on receipt must carry the
//! current wall time, not the boot-time error for the whole run; so every reading reads the wall
//! clock. A step is detected by comparing how far the wall clock moved with how far the
//! monotonic clock moved since the last reading ([`StepDetector`], pure): more than
//! [`ClockSettings::step_threshold`] apart is a step, counted in
//! `clock_steps_total{direction="forward"|"backward"}` and logged once with what it means.
//! After a backward step, receipt stamps of one series are kept increasing and unique by the
//! [`crate::spacer::SeriesSpacer`].
//!
//! Until the kernel says the clock is synchronised (`adjtimex`: not `TIME_ERROR`, no
//! `STA_UNSYNC`; re-read every [`SYNC_CHECK_EVERY`]), the box's time may be anything:
//! receipt-stamped readings then carry the tag `[clock] unsynced_tag` (`clock_unsynced=true`
//! by default; `tag_unsynced = false` turns it off), and the `[limits]` past/future window is
//! not applied ([`trusted`]), so correctly stamped device readings are never refused because
//! the box's own clock is wrong. `[clock] assume_synced = true` says the clock is right
//! whatever the kernel says (a box whose time is set some other way).
//!
//! The source of time is a [`ClockSource`]: the system's in production, a fake in unit tests.
//! Debug builds only (`debug_assertions`; release builds do not contain it) read two test
//! overrides, for end-to-end tests of the real binary: `IOC_GATEWAY_TEST_CLOCK_FILE` names a
//! file holding an offset in nanoseconds added to the wall clock (re-read on every reading, so
//! a test steps the clock by rewriting it), and `IOC_GATEWAY_TEST_CLOCK_SYNCED=1|0` replaces
//! the kernel's synchronisation state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the kernel's synchronisation state is read.
pub const SYNC_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Where the time comes from.
pub trait ClockSource: Send + Sync + 'static {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    fn wall_ns(&self) -> i64;
    /// A monotonic clock, nanoseconds from an arbitrary origin.
    fn mono_ns(&self) -> i64;
    /// Whether the wall clock is synchronised (to NTP or the like); `None` if unknown.
    fn synchronised(&self) -> Option<bool>;
}

/// The system's clocks (and, in debug builds, the test overrides of the module docs).
#[derive(Debug)]
pub struct SystemSource {
    origin: Instant,
}

impl Default for SystemSource {
    fn default() -> Self {
        SystemSource {
            origin: Instant::now(),
        }
    }
}

impl ClockSource for SystemSource {
    fn wall_ns(&self) -> i64 {
        let wall = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        };
        wall.saturating_add(test_hooks::offset_ns())
    }

    fn mono_ns(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    fn synchronised(&self) -> Option<bool> {
        test_hooks::synced().or_else(kernel_synchronised)
    }
}

/// The kernel's view (`adjtimex` without changing anything).
#[cfg(target_os = "linux")]
fn kernel_synchronised() -> Option<bool> {
    // SAFETY: `timex` is a plain C struct for which all-zero is valid; with `modes == 0`
    // adjtimex only reads the kernel's state into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

#[cfg(not(target_os = "linux"))]
fn kernel_synchronised() -> Option<bool> {
    None
}

#[cfg(debug_assertions)]
mod test_hooks {
    /// The offset in `IOC_GATEWAY_TEST_CLOCK_FILE`, read now (0 without the variable or a
    /// readable number).
    pub fn offset_ns() -> i64 {
        static PATH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
        let Some(path) = PATH.get_or_init(|| {
            std::env::var_os("IOC_GATEWAY_TEST_CLOCK_FILE").map(std::path::PathBuf::from)
        }) else {
            return 0;
        };
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `IOC_GATEWAY_TEST_CLOCK_SYNCED`: `Some(true)` for 1, `Some(false)` for 0.
    pub fn synced() -> Option<bool> {
        match std::env::var("IOC_GATEWAY_TEST_CLOCK_SYNCED").ok()?.trim() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }
    }
}

#[cfg(not(debug_assertions))]
mod test_hooks {
    pub fn offset_ns() -> i64 {
        0
    }
    pub fn synced() -> Option<bool> {
        None
    }
}

/// Which way the wall clock jumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

/// A step of the wall clock against the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub direction: Direction,
    /// How far, in nanoseconds (always positive).
    pub by_ns: i64,
}

/// Finds steps of the wall clock: pure, fed with pairs of readings.
#[derive(Debug, Clone)]
pub struct StepDetector {
    threshold_ns: i64,
    last: Option<(i64, i64)>,
}

impl StepDetector {
    /// A difference of more than `threshold` (plus 0.1 % of the time elapsed, what NTP's
    /// slewing can account for) between the two clocks' progress is a step.
    pub fn new(threshold: Duration) -> Self {
        StepDetector {
            threshold_ns: i64::try_from(threshold.as_nanos()).unwrap_or(i64::MAX),
            last: None,
        }
    }

    /// Takes the clocks' current readings; the step since the last call, if there was one.
    pub fn observe(&mut self, wall_ns: i64, mono_ns: i64) -> Option<Step> {
        let last = self.last.replace((wall_ns, mono_ns));
        let (last_wall, last_mono) = last?;
        let mono_delta = mono_ns.saturating_sub(last_mono);
        let drift = wall_ns.saturating_sub(last_wall).saturating_sub(mono_delta);
        let allowed = self.threshold_ns.saturating_add(mono_delta / 1000);
        if drift > allowed {
            Some(Step {
                direction: Direction::Forward,
                by_ns: drift,
            })
        } else if drift < -allowed {
            Some(Step {
                direction: Direction::Backward,
                by_ns: drift.saturating_neg(),
            })
        } else {
            None
        }
    }
}

/// `[clock]` in the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockSettings {
    /// Tag receipt-stamped readings while the clock is not synchronised.
    pub tag_unsynced: bool,
    /// The tag's key; its value is `true`.
    pub unsynced_tag: String,
    /// Treat the clock as synchronised whatever the kernel says.
    pub assume_synced: bool,
    /// A larger disagreement between wall and monotonic clock is a step, in milliseconds.
    pub step_threshold_ms: u64,
}

impl Default for ClockSettings {
    fn default() -> Self {
        ClockSettings {
            tag_unsynced: true,
            unsynced_tag: "clock_unsynced".to_owned(),
            assume_synced: false,
            step_threshold_ms: 1000,
        }
    }
}

impl ClockSettings {
    /// Checks the tag key and threshold; the error's key is relative to `[clock]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let t = &self.unsynced_tag;
        if self.tag_unsynced
            && (t.is_empty()
                || t.len() > 64
                || t.starts_with('_')
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err((
                "unsynced_tag".into(),
                "must be 1 to 64 ASCII letters, digits, '_' or '-', not starting with '_' (or set tag_unsynced = false)".into(),
            ));
        }
        if self.step_threshold_ms < 100 {
            return Err((
                "step_threshold_ms".into(),
                "must be at least 100 (smaller differences are ordinary scheduling delays)".into(),
            ));
        }
        Ok(())
    }
}

/// A clock over a [`ClockSource`], detecting steps and tracking synchronisation.
pub struct Clock {
    source: Box<dyn ClockSource>,
    state: Mutex<State>,
    /// Synchronised (or assumed so): cheap to read per reading.
    trusted: AtomicBool,
}

struct State {
    settings: ClockSettings,
    detector: StepDetector,
    /// Monotonic time of the last synchronisation check.
    checked_at: Option<i64>,
    /// The last state read: `None` unknown.
    synced: Option<bool>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("trusted", &self.trusted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Clock {
    pub fn new(source: impl ClockSource, settings: ClockSettings) -> Self {
        let clock = Clock {
            source: Box::new(source),
            state: Mutex::new(State {
                detector: StepDetector::new(Duration::from_millis(settings.step_threshold_ms)),
                settings,
                checked_at: None,
                synced: None,
            }),
            trusted: AtomicBool::new(false),
        };
        clock.now_ns();
        clock
    }

    /// Replaces the settings (from the config); keeps what was observed.
    pub fn configure(&self, settings: ClockSettings) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.detector = StepDetector::new(Duration::from_millis(settings.step_threshold_ms));
        state.settings = settings;
        // Checked again now, under these settings.
        state.checked_at = None;
        drop(state);
        self.now_ns();
    }

    /// The current wall-clock time, nanoseconds since the epoch; notes a step or a change of
    /// synchronisation on the way.
    pub fn now_ns(&self) -> i64 {
        // Both clocks are read under the lock, so readings from several threads reach the
        // detector in the order they were taken.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mono = self.source.mono_ns();
        let wall = self.source.wall_ns();
        if let Some(step) = state.detector.observe(wall, mono) {
            note_step(step, wall);
        }
        let due = state
            .checked_at
            .is_none_or(|at| mono.saturating_sub(at) >= SYNC_CHECK_EVERY.as_nanos() as i64);
        if due {
            state.checked_at = Some(mono);
            let synced = self.source.synchronised();
            if synced != state.synced {
                note_sync(state.synced, synced, &state.settings);
                state.synced = synced;
            }
            let trusted = state.settings.assume_synced || synced == Some(true);
            self.trusted.store(trusted, Ordering::Relaxed);
            metrics::gauge!("clock_synchronised").set(if trusted { 1.0 } else { 0.0 });
        }
        wall
    }

    /// Whether the wall clock can be trusted (synchronised, or `assume_synced`).
    pub fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Relaxed)
    }

    /// The tag key receipt-stamped readings carry now: `Some` while the clock is untrusted and
    /// tagging is on.
    pub fn unsynced_tag(&self) -> Option<String> {
        if self.trusted() {
            return None;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .settings
            .tag_unsynced
            .then(|| state.settings.unsynced_tag.clone())
    }
}

fn note_step(step: Step, wall: i64) {
    metrics::counter!("clock_steps_total", "direction" => step.direction.label()).increment(1);
    let secs = step.by_ns as f64 / 1e9;
    match step.direction {
        Direction::Forward => tracing::warn!(
            step_s = secs,
            now_ns = wall,
            "the system clock jumped forward by {secs:.3} s (NTP correcting a clock that was behind?): readings stamped on receipt follow it; those stamped before were {secs:.3} s early"
        ),
        Direction::Backward => tracing::warn!(
            step_s = secs,
            now_ns = wall,
            "the system clock jumped back by {secs:.3} s (NTP correcting a clock that was ahead?): readings stamped on receipt follow it, kept increasing per series until it passes their last stamp; those stamped before were {secs:.3} s late"
        ),
    }
}

fn note_sync(before: Option<bool>, now: Option<bool>, settings: &ClockSettings) {
    match now {
        Some(true) => tracing::info!("the system clock is synchronised"),
        Some(false) if settings.assume_synced => tracing::info!(
            "the system clock is not synchronised, but [clock] assume_synced = true: trusting it"
        ),
        Some(false) => tracing::warn!(
            tag = settings.tag_unsynced.then_some(settings.unsynced_tag.as_str()),
            was_synchronised = before == Some(true),
            "the system clock is not synchronised (no NTP yet?): readings stamped on receipt are tagged as such, and [limits] does not judge device timestamps by this clock"
        ),
        None => tracing::warn!(
            "cannot tell whether the system clock is synchronised; treating it as not synchronised"
        ),
    }
}

fn global() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| Clock::new(SystemSource::default(), ClockSettings::default()))
}

/// Applies `[clock]` to the process's clock (at start, before the inputs).
pub fn configure(settings: ClockSettings) {
    global().configure(settings);
}

/// The current wall-clock time, nanoseconds since the Unix epoch (see the module docs).
pub fn now_ns() -> i64 {
    global().now_ns()
}

/// Whether the process's clock is trusted (synchronised, or assumed so).
pub fn trusted() -> bool {
    global().trusted()
}

/// The tag key receipt-stamped readings carry now (`=true`), if any.
pub fn unsynced_tag() -> Option<String> {
    global().unsynced_tag()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;
    use std::sync::Arc;

    /// A clock the test moves by hand.
    #[derive(Clone, Default)]
    struct Fake {
        wall: Arc<AtomicI64>,
        mono: Arc<AtomicI64>,
        synced: Arc<AtomicBool>,
    }

    impl ClockSource for Fake {
        fn wall_ns(&self) -> i64 {
            self.wall.load(Ordering::SeqCst)
        }
        fn mono_ns(&self) -> i64 {
            self.mono.load(Ordering::SeqCst)
        }
        fn synchronised(&self) -> Option<bool> {
            Some(self.synced.load(Ordering::SeqCst))
        }
    }

    impl Fake {
        fn advance(&self, ns: i64) {
            self.wall.fetch_add(ns, Ordering::SeqCst);
            self.mono.fetch_add(ns, Ordering::SeqCst);
        }
    }

    const S: i64 = 1_000_000_000;

    #[test]
    fn detects_forward_and_backward_steps_not_slow_drift() {
        let mut d = StepDetector::new(Duration::from_secs(1));
        assert_eq!(d.observe(100 * S, 0), None);
        assert_eq!(d.observe(101 * S, S), None);
        // Half a second of disagreement: scheduling, not a step.
        assert_eq!(d.observe(102 * S + S / 2, 2 * S), None);
        let fwd = d.observe(3600 * S + 103 * S, 3 * S).unwrap();
        assert_eq!(fwd.direction, Direction::Forward);
        assert_eq!(fwd.by_ns, 3600 * S - S / 2);
        let back = d.observe(3600 * S + 44 * S, 4 * S).unwrap();
        assert_eq!(back.direction, Direction::Backward);
        assert_eq!(back.by_ns, 60 * S);
        // An hour idle with 500 ppm of slewing (1.8 s) is no step.
        assert_eq!(
            d.observe(3600 * S + 44 * S + 3600 * S + 1_800_000_000, 3604 * S),
            None
        );
    }

    #[test]
    fn readings_follow_the_wall_clock_through_steps() {
        let fake = Fake::default();
        fake.wall.store(1_700_000_000 * S, Ordering::SeqCst);
        fake.synced.store(true, Ordering::SeqCst);
        let clock = Clock::new(fake.clone(), ClockSettings::default());
        fake.advance(S);
        assert_eq!(clock.now_ns(), 1_700_000_001 * S);
        fake.wall.fetch_add(3600 * S, Ordering::SeqCst);
        assert_eq!(clock.now_ns(), 1_700_003_601 * S, "an hour forward");
        fake.wall.fetch_sub(60 * S, Ordering::SeqCst);
        assert_eq!(clock.now_ns(), 1_700_003_541 * S, "a minute back");
    }

    #[test]
    fn untrusted_until_synchronised_unless_assumed() {
        let fake = Fake::default();
        let clock = Clock::new(fake.clone(), ClockSettings::default());
        assert!(!clock.trusted());
        assert_eq!(clock.unsynced_tag().as_deref(), Some("clock_unsynced"));
        fake.synced.store(true, Ordering::SeqCst);
        // Read again only every SYNC_CHECK_EVERY.
        clock.now_ns();
        assert!(!clock.trusted());
        fake.advance(SYNC_CHECK_EVERY.as_nanos() as i64);
        clock.now_ns();
        assert!(clock.trusted());
        assert_eq!(clock.unsynced_tag(), None);

        let fake = Fake::default();
        let clock = Clock::new(
            fake,
            ClockSettings {
                assume_synced: true,
                ..ClockSettings::default()
            },
        );
        assert!(clock.trusted());

        let clock = Clock::new(
            Fake::default(),
            ClockSettings {
                tag_unsynced: false,
                ..ClockSettings::default()
            },
        );
        assert!(!clock.trusted());
        assert_eq!(clock.unsynced_tag(), None);
    }

    #[test]
    fn the_settings_are_checked() {
        assert!(ClockSettings::default().validate().is_ok());
        let bad = ClockSettings {
            unsynced_tag: "has space".into(),
            ..ClockSettings::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "unsynced_tag");
        let off = ClockSettings {
            unsynced_tag: String::new(),
            tag_unsynced: false,
            ..ClockSettings::default()
        };
        assert!(off.validate().is_ok());
        let tiny = ClockSettings {
            step_threshold_ms: 5,
            ..ClockSettings::default()
        };
        assert_eq!(tiny.validate().unwrap_err().0, "step_threshold_ms");
    }

    #[test]
    fn the_process_clock_is_near_the_system_time() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((wall - now_ns()).abs() < 5 * S);
    }
}
