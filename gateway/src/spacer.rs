//! Readings stamped on receipt stay at least 1 ms apart per series.
//!
//! Why it exists: the stores keep one point per series and instant (InfluxDB overwrites the same
//! series + nanosecond; VictoriaMetrics keeps milliseconds and, with deduplication on,
//! one point per series per millisecond). Messages that carry no time of their own are stamped
//! with the moment they were received, and a burst (a backlog redelivered after an outage, a
//! serial read holding several frames) can bring two readings of one sensor within a
//! millisecond: the store would silently keep one. The spacer moves such a reading to 1 ms after
//! its series' previous one. Device timestamps are never moved: for MQTT and the other formats
//! only readings stamped on receipt are passed in ([`SeriesSpacer::space_receipt_stamped`]);
//! serial sensors have no clock, so all their readings are ([`SeriesSpacer::space`]).
//!
//! After the system clock steps back (NTP correcting a clock that was ahead; see
//! [`crate::clock`]), a receipt stamp can be earlier than its series' previous one: such a
//! reading is moved to 1 ms after that previous stamp, so a series' receipt-stamped readings
//! keep their order and never land on an instant the store already holds; once the wall clock
//! has passed the series' last stamp they follow it again. While the clock is not synchronised,
//! receipt-stamped readings also get the `[clock] unsynced_tag` (`clock_unsynced=true`) here,
//! the one place every such reading passes.
//!
//! A series is identified by a 64-bit hash of measurement and tags (a collision only costs one
//! needless 1 ms shift); the table is bounded and cleared when full.

use std::collections::HashMap;

use crate::limits::series_hash;
use crate::model::ReadingMut;

/// Keeps the readings of one series at least [`SeriesSpacer::MIN_GAP_NS`] apart.
#[derive(Debug, Default)]
pub struct SeriesSpacer {
    last: HashMap<u64, i64>,
}

impl SeriesSpacer {
    /// The smallest step VictoriaMetrics keeps apart (it stores milliseconds).
    pub const MIN_GAP_NS: i64 = 1_000_000;
    /// A reading older than its series' previous one by more than this is a re-send of an old
    /// reading (kept as stamped), not one that shares an instant with the previous one.
    pub const OLDER_NS: i64 = 1_000_000_000;
    /// Series remembered before the table is cleared.
    pub const MAX_SERIES: usize = 65_536;

    /// Moves readings that fall within the gap of their series' previous reading (readings of
    /// a clockless serial sensor: all stamped on receipt, so all tagged while the clock is not
    /// synchronised).
    pub fn space<R: ReadingMut>(&mut self, readings: &mut [R]) {
        let tag = crate::clock::unsynced_tag();
        for r in readings.iter_mut() {
            mark_unsynced(r, tag.as_deref());
            self.space_one(r, false);
        }
    }

    /// Like [`SeriesSpacer::space`], but only for readings whose timestamp is exactly
    /// `received_ns`, the receipt time their decoder was given for readings without a time of
    /// their own. Readings with a device timestamp are untouched.
    /// These are tagged while the clock is not synchronised, and never stamped before their
    /// series' previous reading (after a backward clock step).
    pub fn space_receipt_stamped<R: ReadingMut>(&mut self, readings: &mut [R], received_ns: i64) {
        self.space_receipt_stamped_tagged(
            readings,
            received_ns,
            crate::clock::unsynced_tag().as_deref(),
        );
    }

    /// [`SeriesSpacer::space_receipt_stamped`] with the unsynced tag given (`None`: no tag).
    pub fn space_receipt_stamped_tagged<R: ReadingMut>(
        &mut self,
        readings: &mut [R],
        received_ns: i64,
        unsynced_tag: Option<&str>,
    ) {
        for r in readings.iter_mut() {
            if r.timestamp_ns() == received_ns {
                mark_unsynced(r, unsynced_tag);
                self.space_one(r, true);
            }
        }
    }

    /// With `hold`, a reading earlier than its series' previous one (the clock stepped back)
    /// is moved after it too; without, one older by more than [`SeriesSpacer::OLDER_NS`] is
    /// a re-send and keeps its time.
    fn space_one<R: ReadingMut>(&mut self, r: &mut R, hold: bool) {
        if self.last.len() >= Self::MAX_SERIES {
            self.last.clear();
        }
        let last = self.last.entry(series_hash(r)).or_insert(i64::MIN);
        let ts = r.timestamp_ns();
        if *last != i64::MIN
            && (hold || ts > last.saturating_sub(Self::OLDER_NS))
            && ts < last.saturating_add(Self::MIN_GAP_NS)
        {
            r.set_timestamp_ns(last.saturating_add(Self::MIN_GAP_NS));
        }
        if r.timestamp_ns() > *last {
            *last = r.timestamp_ns();
        }
    }
}

/// Adds `tag=true` (the clock is not synchronised) to a receipt-stamped reading.
fn mark_unsynced<R: ReadingMut>(r: &mut R, tag: Option<&str>) {
    if let Some(tag) = tag {
        r.insert_tag(tag, "true");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FieldValue, Reading};
    use std::collections::BTreeMap;

    fn reading(sensor: &str, ts: i64) -> Reading {
        Reading {
            measurement: "env".into(),
            tags: BTreeMap::from([("sensor_id".to_owned(), sensor.to_owned())]),
            fields: BTreeMap::from([("t".to_owned(), FieldValue::Float(1.0))]),
            timestamp_ns: ts,
        }
    }

    #[test]
    fn receipt_stamped_readings_of_one_series_are_spread_one_ms_apart() {
        let mut s = SeriesSpacer::default();
        let now = 1_700_000_000_000_000_000;
        let mut stamps = Vec::new();
        for _ in 0..5 {
            let mut rs = vec![reading("a", now), reading("b", now)];
            s.space_receipt_stamped(&mut rs, now);
            stamps.push((rs[0].timestamp_ns, rs[1].timestamp_ns));
        }
        for (i, (a, b)) in stamps.iter().enumerate() {
            assert_eq!(*a, now + i as i64 * SeriesSpacer::MIN_GAP_NS);
            assert_eq!(
                *b,
                now + i as i64 * SeriesSpacer::MIN_GAP_NS,
                "series apart"
            );
        }
    }

    #[test]
    fn device_timestamps_are_never_moved() {
        let mut s = SeriesSpacer::default();
        let now = 1_700_000_000_000_000_000;
        let device = now - 5_000;
        let mut rs = vec![
            reading("a", now),
            reading("a", device),
            reading("a", device),
        ];
        s.space_receipt_stamped(&mut rs, now);
        assert_eq!(rs[1].timestamp_ns, device);
        assert_eq!(rs[2].timestamp_ns, device);
    }

    #[test]
    fn after_a_backward_step_receipt_stamps_stay_increasing_and_unique_then_follow_the_clock() {
        let mut s = SeriesSpacer::default();
        let t = 1_700_000_000_000_000_000;
        let mut stamps = Vec::new();
        for (i, now) in [t, t + 1_000_000_000, t - 59_000_000_000, t - 58_000_000_000]
            .into_iter()
            .enumerate()
        {
            let mut rs = vec![reading("a", now)];
            s.space_receipt_stamped_tagged(&mut rs, now, None);
            stamps.push(rs[0].timestamp_ns);
            assert!(i == 0 || stamps[i] > stamps[i - 1], "{stamps:?}");
        }
        assert_eq!(stamps[2], t + 1_000_000_000 + SeriesSpacer::MIN_GAP_NS);
        // The wall clock passes the held stamps: readings follow it again.
        let later = t + 2_000_000_000;
        let mut rs = vec![reading("a", later)];
        s.space_receipt_stamped_tagged(&mut rs, later, None);
        assert_eq!(rs[0].timestamp_ns, later);
    }

    #[test]
    fn receipt_stamped_readings_are_tagged_while_the_clock_is_unsynchronised() {
        let mut s = SeriesSpacer::default();
        let now = 1_700_000_000_000_000_000;
        let mut rs = vec![reading("a", now), reading("a", now - 5_000)];
        s.space_receipt_stamped_tagged(&mut rs, now, Some("clock_unsynced"));
        assert_eq!(
            rs[0].tags.get("clock_unsynced").map(String::as_str),
            Some("true")
        );
        assert!(!rs[1].tags.contains_key("clock_unsynced"), "device-stamped");
    }

    #[test]
    fn old_resends_keep_their_time_and_later_readings_are_not_moved() {
        let mut s = SeriesSpacer::default();
        let t = 1_700_000_000_000_000_000;
        let mut rs = vec![
            reading("a", t),
            reading("a", t - 2 * SeriesSpacer::OLDER_NS),
            reading("a", t + 5 * SeriesSpacer::MIN_GAP_NS),
        ];
        s.space(&mut rs);
        assert_eq!(rs[1].timestamp_ns, t - 2 * SeriesSpacer::OLDER_NS);
        assert_eq!(rs[2].timestamp_ns, t + 5 * SeriesSpacer::MIN_GAP_NS);
    }
}
