//! Compile-time proof that the firmware crates are `no_std`: this crate defines the panic
//! handler that `std` also defines, so it only compiles if no crate in its graph links `std`.
//! It also instantiates the node application so generic code is type-checked without `std`.
#![no_std]
#![forbid(unsafe_code)]

use core::convert::Infallible;
use core::panic::PanicInfo;

use ioc_node::traffic::{LaneConfig, LaneCounter};
use ioc_node::{NoSensor, Node, NodeConfig};
use ioc_wire::{encode_frame, Direction, FrameDecoder, MAX_ENCODED_LEN};

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// A UART that never has data and swallows writes.
pub struct NullUart;

impl embedded_io::ErrorType for NullUart {
    type Error = Infallible;
}
impl embedded_io::Read for NullUart {
    fn read(&mut self, _buf: &mut [u8]) -> Result<usize, Infallible> {
        Ok(0)
    }
}
impl embedded_io::ReadReady for NullUart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(false)
    }
}
impl embedded_io::Write for NullUart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// An input that is always low.
pub struct LowPin;

impl embedded_hal::digital::ErrorType for LowPin {
    type Error = Infallible;
}
impl embedded_hal::digital::InputPin for LowPin {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(false)
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(true)
    }
}

/// Run the node for a few polls and round-trip its first frame; returns the frames decoded.
pub fn exercise() -> usize {
    let lane = LaneCounter::new(
        LowPin,
        LaneConfig {
            lane: 1,
            direction: Direction::Northbound,
            debounce_ms: 30,
            heavy_min_presence_ms: 1000,
            active_high: true,
        },
        0,
    );
    let mut node: Node<NullUart, NoSensor, LowPin, 1, 8> =
        Node::new(NullUart, NoSensor, [lane], NodeConfig::new(1), 7, 0, 0);
    for t in 0..10u64 {
        node.poll(t * 1000);
    }
    let mut decoder = FrameDecoder::new();
    let mut decoded = 0;
    for frame in node.unacked() {
        let mut buf = [0u8; MAX_ENCODED_LEN];
        if let Ok(n) = encode_frame(frame, &mut buf) {
            for &b in buf.get(..n).unwrap_or(&[]) {
                if let Some(Ok(_)) = decoder.push(b) {
                    decoded += 1;
                }
            }
        }
    }
    decoded
}
