//! Test helpers shared by the node's integration tests: an `embedded-io` serial double
//! (embedded-hal-mock has none for embedded-io) that records writes, serves queued reads and can
//! fail on demand.
#![allow(dead_code)]

use std::collections::VecDeque;

use embedded_io::{ErrorKind, ErrorType, Read, ReadReady, Write};

/// Serial double: reads come from `rx`, writes go to `tx`.
#[derive(Debug, Default)]
pub struct FakeSerial {
    pub rx: VecDeque<u8>,
    pub tx: Vec<u8>,
    /// Fail the next read with this error (once).
    pub fail_read: Option<ErrorKind>,
    /// Fail every write with this error.
    pub fail_write: Option<ErrorKind>,
}

impl FakeSerial {
    pub fn with_rx(bytes: &[u8]) -> Self {
        Self {
            rx: bytes.iter().copied().collect(),
            ..Self::default()
        }
    }
}

impl ErrorType for FakeSerial {
    type Error = ErrorKind;
}

impl Read for FakeSerial {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        if let Some(e) = self.fail_read.take() {
            return Err(e);
        }
        let mut n = 0;
        while n < buf.len() {
            match self.rx.pop_front() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }
}

impl ReadReady for FakeSerial {
    fn read_ready(&mut self) -> Result<bool, ErrorKind> {
        Ok(!self.rx.is_empty())
    }
}

impl Write for FakeSerial {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        if let Some(e) = self.fail_write {
            return Err(e);
        }
        self.tx.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
