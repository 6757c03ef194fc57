//! Vehicle counter on embedded-hal-mock input pins: debounce, counts, heavy vehicles, occupancy.

use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as PinTx};
use embedded_hal_mock::eh1::MockError;
use ioc_node::traffic::*;
use ioc_wire::Direction;

fn config() -> LaneConfig {
    LaneConfig {
        lane: 2,
        direction: Direction::Northbound,
        debounce_ms: 20,
        heavy_min_presence_ms: 1_000,
        active_high: true,
    }
}

/// Levels sampled every 10 ms starting at t = 0.
fn run(levels: &[State], cfg: LaneConfig) -> (LaneCounter<PinMock>, PinMock, u64) {
    let expectations: Vec<PinTx> = levels.iter().map(|s| PinTx::get(*s)).collect();
    let pin = PinMock::new(&expectations);
    let mut counter = LaneCounter::new(pin.clone(), cfg, 0);
    let mut t = 0;
    for _ in levels {
        counter.poll(t).unwrap();
        t += 10;
    }
    (counter, pin, t)
}

fn levels(spec: &[(State, usize)]) -> Vec<State> {
    spec.iter()
        .flat_map(|(s, n)| std::iter::repeat_n(*s, *n))
        .collect()
}

#[test]
fn counts_one_car_with_occupancy() {
    use State::*;
    // 0..100 empty, 100..400 present (30 samples), 400..1000 empty
    let l = levels(&[(Low, 10), (High, 30), (Low, 60)]);
    let (mut c, mut pin, t) = run(&l, config());
    let s = c.take_interval(t);
    assert_eq!(t, 1000);
    assert_eq!(s.count, 1);
    assert_eq!(s.heavy_count, 0);
    assert_eq!(s.occupied_ms, 300);
    assert_eq!(s.interval_ms, 1000);
    assert_eq!(s.occupancy_pct, 30.0);
    assert_eq!((s.lane, s.direction), (2, Direction::Northbound));
    pin.done();
}

#[test]
fn glitches_shorter_than_debounce_are_ignored() {
    use State::*;
    // 10 ms spikes (one sample) never last 20 ms
    let l = levels(&[
        (Low, 5),
        (High, 1),
        (Low, 5),
        (High, 1),
        (Low, 5),
        (High, 2),
        (Low, 5),
    ]);
    let (mut c, mut pin, t) = run(&l, config());
    let s = c.take_interval(t);
    assert_eq!(s.count, 0);
    assert_eq!(s.occupied_ms, 0);
    pin.done();
}

#[test]
fn dropout_inside_presence_does_not_split_vehicle() {
    use State::*;
    let l = levels(&[(Low, 2), (High, 10), (Low, 1), (High, 10), (Low, 10)]);
    let (mut c, mut pin, t) = run(&l, config());
    assert_eq!(c.take_interval(t).count, 1);
    pin.done();
}

#[test]
fn long_presence_is_heavy_and_spans_intervals() {
    use State::*;
    // present from 100 ms to 1600 ms; the interval is closed at 1000 ms while present
    let all = levels(&[(Low, 10), (High, 150), (Low, 40)]);
    let exp: Vec<PinTx> = all.iter().map(|s| PinTx::get(*s)).collect();
    let mut pin = PinMock::new(&exp);
    let mut counter = LaneCounter::new(pin.clone(), config(), 0);
    let mut first = None;
    for (i, _) in all.iter().enumerate() {
        let t = i as u64 * 10;
        counter.poll(t).unwrap();
        if t + 10 == 1000 {
            first = Some(counter.take_interval(1000));
        }
    }
    let first = first.unwrap();
    assert_eq!(first.count, 1);
    assert_eq!(first.heavy_count, 0);
    assert_eq!(first.occupied_ms, 900);
    assert_eq!(first.occupancy_pct, 90.0);

    let second = counter.take_interval(2000);
    assert_eq!(second.count, 0, "the vehicle was counted when it arrived");
    assert_eq!(second.heavy_count, 1, "1500 ms presence is heavy");
    assert_eq!(second.occupied_ms, 600);
    assert_eq!(second.occupancy_pct, 60.0);
    pin.done();
}

#[test]
fn active_low_beam() {
    use State::*;
    let cfg = LaneConfig {
        active_high: false,
        ..config()
    };
    let l = levels(&[(High, 10), (Low, 20), (High, 10), (Low, 20), (High, 40)]);
    let (mut c, mut pin, t) = run(&l, cfg);
    let s = c.take_interval(t);
    assert_eq!(s.count, 2);
    assert_eq!(s.occupied_ms, 400);
    pin.done();
}

#[test]
fn pin_error_is_returned_and_state_kept() {
    use State::*;
    let expectations = [
        PinTx::get(High),
        PinTx::get(High),
        PinTx::get(High),
        PinTx::get(Low).with_error(MockError::Io(std::io::ErrorKind::Other)),
        PinTx::get(High),
    ];
    let mut pin = PinMock::new(&expectations);
    let mut c = LaneCounter::new(pin.clone(), config(), 0);
    c.poll(0).unwrap();
    c.poll(10).unwrap();
    c.poll(20).unwrap();
    assert!(c.is_present());
    assert!(c.poll(30).is_err());
    c.poll(40).unwrap();
    assert!(c.is_present());
    assert_eq!(c.take_interval(50).count, 1);
    pin.done();
}

#[test]
fn empty_interval_has_zero_occupancy() {
    let pin = PinMock::new(&[]);
    let mut c = LaneCounter::new(pin.clone(), config(), 500);
    let s = c.take_interval(500);
    assert_eq!((s.count, s.interval_ms, s.occupancy_pct), (0, 0, 0.0));
    let mut pin = pin;
    pin.done();
}
