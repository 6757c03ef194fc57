//! What the streaming serial decoders (PMS5003, SDS011) report, shared so that the serial input
//! and the probe tool count every protocol's good and bad frames the same way.
//!
//! A serial line gives a byte stream with no framing: a decoder is fed whatever a `read` returned
//! and answers with [`DecodeEvent`]s, in stream order. Every byte fed is accounted for exactly
//! once: it ends up in a decoded frame, a skipped frame, or a [`DecodeEvent::Bad`] run, or it is
//! still buffered (at most one frame's worth) waiting for more bytes.

/// Why bytes on the line did not make a reading. [`label`](Self::label) is the stable `reason`
/// label of `ioc_gateway_serial_frames_bad_total{port,reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadFrame {
    /// A complete frame whose checksum does not match its contents.
    Checksum,
    /// A frame header with a length field this protocol does not use (PMS5003: not 28).
    Length,
    /// A frame cut short: a new frame header started inside it, or the line went idle.
    Truncated,
    /// A frame whose fixed tail byte is wrong (SDS011: not `ab`).
    Tail,
    /// Bytes that are not part of any frame (line noise, a sensor booting, a wrong baud rate).
    Noise,
}

impl BadFrame {
    /// A short, stable name for metrics labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            BadFrame::Checksum => "checksum",
            BadFrame::Length => "length",
            BadFrame::Truncated => "truncated",
            BadFrame::Tail => "tail",
            BadFrame::Noise => "noise",
        }
    }
}

/// One thing a streaming decoder found in the bytes it was fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeEvent<F> {
    /// A complete frame with a valid checksum.
    Frame(F),
    /// A valid frame that carries no measurement (an SDS011 command reply); not an error.
    Skipped { what: &'static str, bytes: usize },
    /// `bytes` bytes that made no frame, and why.
    Bad { reason: BadFrame, bytes: usize },
}

/// Position of the first occurrence of `needle` (two bytes) in `haystack`.
pub(crate) fn find_pair(haystack: &[u8], needle: [u8; 2]) -> Option<usize> {
    haystack.windows(2).position(|w| w == needle)
}
