//! Properties the firmware must keep whatever arrives: arbitrary line bytes never panic the
//! node nor stop it sampling, and lane statistics stay within their bounds for any input.

mod common;

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

use common::FakeSerial;
use ioc_node::traffic::{LaneConfig, LaneCounter};
use ioc_node::{NoSensor, Node, NodeConfig};
use ioc_wire::{Direction, FrameDecoder, Payload};
use proptest::prelude::*;

/// Input pin replaying a list of levels, one per read (then low).
#[derive(Clone, Default)]
struct Script(Rc<RefCell<std::collections::VecDeque<bool>>>);

impl embedded_hal::digital::ErrorType for Script {
    type Error = Infallible;
}
impl embedded_hal::digital::InputPin for Script {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.0.borrow_mut().pop_front().unwrap_or(false))
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        self.is_high().map(|h| !h)
    }
}

fn lane_config(debounce_ms: u32) -> LaneConfig {
    LaneConfig {
        lane: 1,
        direction: Direction::Westbound,
        debounce_ms,
        heavy_min_presence_ms: 500,
        active_high: true,
    }
}

proptest! {
    #[test]
    fn arbitrary_line_bytes_never_stop_the_node(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..10)
    ) {
        let lane = LaneCounter::new(Script::default(), lane_config(20), 0);
        let mut node: Node<FakeSerial, NoSensor, Script, 1, 8> =
            Node::new(FakeSerial::default(), NoSensor, [lane], NodeConfig::new(5), 1, 0, 0);
        let mut t = 0;
        for chunk in &chunks {
            node.uart_mut().rx.extend(chunk.iter().copied());
            node.poll(t);
            t += 1_000;
        }
        // whatever was received, the node still produces valid frames on schedule
        node.poll(600_000);
        let tx = std::mem::take(&mut node.uart_mut().tx);
        let mut dec = FrameDecoder::new();
        let mut environment = 0;
        dec.push_slice(&tx, |r| {
            if let Ok(f) = r {
                if matches!(f.payload, Payload::Environment(_)) {
                    environment += 1;
                }
            }
        });
        prop_assert!(environment >= 1);
        prop_assert!(node.health().ring_depth <= 8);
    }

    #[test]
    fn lane_stats_stay_in_bounds(
        levels in prop::collection::vec(any::<bool>(), 0..2000),
        debounce_ms in 0u32..100,
        close_every in 1usize..500,
    ) {
        let script = Script::default();
        script.0.borrow_mut().extend(levels.iter().copied());
        let mut lane = LaneCounter::new(script, lane_config(debounce_ms), 0);
        let rising_edges = levels.windows(2).filter(|w| !w[0] && w[1]).count()
            + usize::from(levels.first() == Some(&true));
        let mut total = 0u64;
        let mut total_heavy = 0u64;
        for i in 0..levels.len() {
            let t = i as u64 * 10;
            lane.poll(t).unwrap();
            if (i + 1) % close_every == 0 {
                let s = lane.take_interval(t + 10);
                prop_assert!((0.0..=100.0).contains(&s.occupancy_pct));
                prop_assert!(s.occupied_ms <= s.interval_ms);
                total += u64::from(s.count);
                total_heavy += u64::from(s.heavy_count);
            }
        }
        let s = lane.take_interval(levels.len() as u64 * 10 + 10);
        prop_assert!(s.occupied_ms <= s.interval_ms);
        total += u64::from(s.count);
        total_heavy += u64::from(s.heavy_count);
        prop_assert!(total <= rising_edges as u64);
        prop_assert!(total_heavy <= total);
        if debounce_ms == 0 {
            prop_assert_eq!(total, rising_edges as u64);
        }
    }
}
