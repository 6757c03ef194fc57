//! Vehicle counter for inductive-loop or IR-beam detectors wired to digital inputs, one per lane.
//!
//! Exists to turn a noisy "vehicle present" signal into per-interval traffic counts: the input is
//! debounced (a level must hold for `debounce_ms` before it is believed, and the change is dated
//! to when it first appeared), a vehicle is counted on each debounced rising edge of presence,
//! a presence of at least `heavy_min_presence_ms` counts as a heavy vehicle (decided when the
//! vehicle leaves), and the occupied time within the interval gives the occupancy.
//! Call [`LaneCounter::poll`] at least every few milliseconds, faster than `debounce_ms`.

use embedded_hal::digital::InputPin;
use ioc_wire::Direction;

/// Static settings of one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneConfig {
    /// Lane number at the site.
    pub lane: u8,
    /// Direction of travel.
    pub direction: Direction,
    /// A level must be stable this long to be accepted, ms.
    pub debounce_ms: u32,
    /// Presence at least this long counts as a heavy vehicle, ms.
    pub heavy_min_presence_ms: u32,
    /// Whether "vehicle present" reads as a high input (else low, e.g. a broken IR beam).
    pub active_high: bool,
}

/// Counts for one finished interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneStats {
    /// Lane number.
    pub lane: u8,
    /// Direction of travel.
    pub direction: Direction,
    /// Vehicles that arrived in the interval.
    pub count: u32,
    /// Heavy vehicles that left in the interval.
    pub heavy_count: u32,
    /// Time the detector was occupied within the interval, ms.
    pub occupied_ms: u64,
    /// Length of the interval, ms.
    pub interval_ms: u64,
    /// `occupied_ms / interval_ms` in percent, 0..=100 (0 for an empty interval).
    pub occupancy_pct: f32,
}

/// Debounced counter on one input pin.
#[derive(Debug)]
pub struct LaneCounter<P> {
    pin: P,
    config: LaneConfig,
    present: bool,
    candidate: bool,
    candidate_since_ms: u64,
    presence_start_ms: u64,
    interval_start_ms: u64,
    occupied_ms: u64,
    count: u32,
    heavy_count: u32,
}

impl<P: InputPin> LaneCounter<P> {
    /// A counter whose first interval starts at `now_ms`, assuming the lane is empty.
    pub fn new(pin: P, config: LaneConfig, now_ms: u64) -> Self {
        Self {
            pin,
            config,
            present: false,
            candidate: false,
            candidate_since_ms: now_ms,
            presence_start_ms: now_ms,
            interval_start_ms: now_ms,
            occupied_ms: 0,
            count: 0,
            heavy_count: 0,
        }
    }

    /// The lane's settings.
    pub fn config(&self) -> &LaneConfig {
        &self.config
    }

    /// Whether a vehicle is present (debounced).
    pub fn is_present(&self) -> bool {
        self.present
    }

    /// Sample the input once. A pin error leaves the state unchanged and is returned.
    pub fn poll(&mut self, now_ms: u64) -> Result<(), P::Error> {
        let high = self.pin.is_high()?;
        let raw_present = high == self.config.active_high;
        if raw_present == self.present {
            self.candidate = raw_present;
            return Ok(());
        }
        if raw_present != self.candidate {
            self.candidate = raw_present;
            self.candidate_since_ms = now_ms;
        }
        if now_ms.saturating_sub(self.candidate_since_ms) >= u64::from(self.config.debounce_ms) {
            let edge_ms = self.candidate_since_ms.max(self.interval_start_ms);
            self.present = raw_present;
            if raw_present {
                self.count = self.count.saturating_add(1);
                self.presence_start_ms = self.candidate_since_ms;
            } else {
                let since = self.presence_start_ms.max(self.interval_start_ms);
                self.occupied_ms += edge_ms.saturating_sub(since);
                let presence = self
                    .candidate_since_ms
                    .saturating_sub(self.presence_start_ms);
                if presence >= u64::from(self.config.heavy_min_presence_ms) {
                    self.heavy_count = self.heavy_count.saturating_add(1);
                }
            }
        }
        Ok(())
    }

    /// Close the interval at `now_ms`, return its counts and start the next one.
    pub fn take_interval(&mut self, now_ms: u64) -> LaneStats {
        let now_ms = now_ms.max(self.interval_start_ms);
        let mut occupied_ms = self.occupied_ms;
        if self.present {
            occupied_ms +=
                now_ms.saturating_sub(self.presence_start_ms.max(self.interval_start_ms));
        }
        let interval_ms = now_ms - self.interval_start_ms;
        let occupancy_pct = if interval_ms == 0 {
            0.0
        } else {
            (occupied_ms as f32 * 100.0 / interval_ms as f32).clamp(0.0, 100.0)
        };
        let stats = LaneStats {
            lane: self.config.lane,
            direction: self.config.direction,
            count: self.count,
            heavy_count: self.heavy_count,
            occupied_ms,
            interval_ms,
            occupancy_pct,
        };
        self.count = 0;
        self.heavy_count = 0;
        self.occupied_ms = 0;
        self.interval_start_ms = now_ms;
        stats
    }
}
