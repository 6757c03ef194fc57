//! Line framing shared by the text protocols (`nmea0183`, `vaisala`, `lines`), and what their
//! decoders report.
//!
//! Why it exists: every line-based instrument ends its lines differently (CR LF for NMEA and
//! Vaisala, a bare LF or CR for many small sensors), some never end a line at all when they
//! misbehave, and a serial line gives chunks that cut lines anywhere. [`LineFramer`] turns chunks
//! into whole lines once, for all three protocols:
//!
//! - a line ends at CR, at LF, or at CR LF (any mix on one stream); empty lines are ignored, so
//!   CR LF never yields an extra empty line;
//! - a line is at most `max_line_bytes` long: when more bytes arrive without an end, the line is
//!   reported once as [`BadLine::TooLong`] and everything up to the next CR or LF is dropped
//!   without being kept, so a line that never ends never grows memory (the framer holds at most
//!   `max_line_bytes`);
//! - garbage between lines is simply part of the next line, which its decoder then rejects (or
//!   resynchronises inside, at the protocol's start character): decoding resumes at the next line.
//!
//! [`LineOutput`] is what a text decoder gives for a chunk, the same tallies the binary stream
//! decoders give (good, skipped, bad by reason), plus `no_fix` (a GNSS receiver without a fix)
//! and `no_match` (a `lines` line its pattern does not match), which are not line faults.

use ioc_model::Reading;

/// Longest line kept when a port does not say (`max_line_bytes`): NMEA sentences are at most 82
/// bytes, WXT5xx composite messages a few hundred.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024;
/// Largest `max_line_bytes` a port may configure.
pub const MAX_LINE_BYTES_LIMIT: usize = 65_536;

/// Why a line made no reading. [`label`](Self::label) is the stable `reason` label of
/// `ioc_gateway_serial_frames_bad_total{port,reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadLine {
    /// The line's checksum does not match its contents.
    Checksum,
    /// The protocol requires a checksum and the line has none.
    NoChecksum,
    /// The line has the protocol's framing but its contents cannot be read.
    Malformed,
    /// More than `max_line_bytes` without a line end.
    TooLong,
    /// A line cut short: another start character inside it, or the port went idle mid-line.
    Truncated,
    /// A line without the protocol's start at all (line noise, a wrong baud rate).
    Noise,
    /// `lines`: a field's text is not a number.
    NotANumber,
    /// `lines`: the time capture or column cannot be read in the configured `time_format`.
    BadTime,
    /// `lines`: a tag's text cannot be stored (not UTF-8, a control character, …).
    BadTag,
}

impl BadLine {
    /// A short, stable name for metrics labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            BadLine::Checksum => "checksum",
            BadLine::NoChecksum => "no_checksum",
            BadLine::Malformed => "malformed",
            BadLine::TooLong => "too_long",
            BadLine::Truncated => "truncated",
            BadLine::Noise => "noise",
            BadLine::NotANumber => "not_a_number",
            BadLine::BadTime => "bad_time",
            BadLine::BadTag => "bad_tag",
        }
    }
}

/// What the lines of one chunk gave.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LineOutput {
    pub readings: Vec<Reading>,
    /// Lines that made readings.
    pub good: u64,
    /// Valid lines that carry nothing this protocol reads (other NMEA sentences, WXT5xx
    /// messages without a known parameter).
    pub skipped: u64,
    /// Valid NMEA sentences saying the receiver has no fix (RMC status `V`, GGA quality 0, …).
    pub no_fix: u64,
    /// Valid NMEA VTG sentences (which carry no time) that could not be placed at a fix time:
    /// the fix sentences before them were rejected, or their fix time was already taken.
    pub no_time: u64,
    /// `lines`: lines the pattern did not match.
    pub no_match: u64,
    /// `lines`: lines that matched but whose every field was empty or a `drop_values` sentinel
    /// (the sensor saying "no value"), so they made no reading.
    pub no_values: u64,
    /// `lines`: the first unmatched lines (at most [`UNMATCHED_KEPT`], each cut to
    /// [`UNMATCHED_CHARS`]), so the probe can show what arrives.
    pub unmatched: Vec<String>,
    /// Bad lines, by reason.
    pub bad: Vec<BadLine>,
    /// `lines` with tracing on (the probe): every line (cut to [`UNMATCHED_CHARS`]) with the
    /// label of its outcome, in order.
    pub traced: Vec<(String, &'static str)>,
}

/// Unmatched lines kept per chunk for the probe.
pub const UNMATCHED_KEPT: usize = 4;
/// Characters kept of each unmatched line.
pub const UNMATCHED_CHARS: usize = 120;

impl LineOutput {
    pub fn clear(&mut self) {
        self.readings.clear();
        self.good = 0;
        self.skipped = 0;
        self.no_fix = 0;
        self.no_time = 0;
        self.no_match = 0;
        self.no_values = 0;
        self.unmatched.clear();
        self.bad.clear();
        self.traced.clear();
    }

    /// Counts an unmatched line and keeps its start for the probe.
    pub fn unmatched_line(&mut self, line: &[u8]) {
        self.no_match += 1;
        if self.unmatched.len() < UNMATCHED_KEPT {
            self.unmatched.push(shown(line));
        }
    }
}

/// The start of a line as the probe shows it (at most [`UNMATCHED_CHARS`] characters).
pub fn shown(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .take(UNMATCHED_CHARS)
        .collect()
}

impl LineOutput {}

/// One thing the framer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed<'a> {
    /// A complete, non-empty line, without its CR/LF.
    Line(&'a [u8]),
    /// A line longer than the limit began; it is dropped up to the next line end.
    TooLong,
}

/// Splits a byte stream into lines (see the module docs).
#[derive(Debug, Clone)]
pub struct LineFramer {
    buf: Vec<u8>,
    max_line_bytes: usize,
    /// Inside a line that went over the limit: drop bytes until CR or LF.
    discarding: bool,
}

impl Default for LineFramer {
    fn default() -> Self {
        LineFramer::new(DEFAULT_MAX_LINE_BYTES)
    }
}

fn is_end(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

impl LineFramer {
    /// A framer keeping lines of at most `max_line_bytes` (at least 1).
    pub fn new(max_line_bytes: usize) -> Self {
        LineFramer {
            buf: Vec::new(),
            max_line_bytes: max_line_bytes.max(1),
            discarding: false,
        }
    }

    /// Bytes of an unfinished line held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds a chunk; calls `on` for every complete line and every over-long one, in order.
    pub fn push(&mut self, mut bytes: &[u8], mut on: impl FnMut(Framed<'_>)) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| is_end(b));
            let (segment, rest) = match end {
                Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
                None => (bytes, None),
            };
            if self.discarding {
                if rest.is_some() {
                    self.discarding = false;
                }
            } else if self.buf.len() + segment.len() > self.max_line_bytes {
                self.buf.clear();
                on(Framed::TooLong);
                self.discarding = rest.is_none();
            } else if rest.is_some() {
                if self.buf.is_empty() {
                    if !segment.is_empty() {
                        on(Framed::Line(segment));
                    }
                } else {
                    self.buf.extend_from_slice(segment);
                    on(Framed::Line(&self.buf));
                    self.buf.clear();
                }
            } else {
                self.buf.extend_from_slice(segment);
            }
            bytes = rest.unwrap_or_default();
        }
    }

    /// The port went idle (or was reopened): drops an unfinished line, returning its length
    /// (0 if there was none). A line the device never ended is torn.
    pub fn flush(&mut self) -> usize {
        let n = self.buf.len();
        self.buf.clear();
        self.discarding = false;
        n
    }
}

/// The value of a decimal number in ASCII (`-12.5`, `+003.40`, `7`); `None` for anything else
/// (no exponents, no `inf`/`nan`, at most 32 bytes: what instruments print).
pub fn parse_decimal(text: &[u8]) -> Option<f64> {
    if text.is_empty() || text.len() > 32 {
        return None;
    }
    let digits = match text.first() {
        Some(b'-') | Some(b'+') => &text[1..],
        _ => text,
    };
    let mut seen_digit = false;
    let mut seen_dot = false;
    for &c in digits {
        match c {
            b'0'..=b'9' => seen_digit = true,
            b'.' if !seen_dot => seen_dot = true,
            _ => return None,
        }
    }
    if !seen_digit {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(framer: &mut LineFramer, chunks: &[&[u8]]) -> Vec<Result<String, ()>> {
        let mut got = Vec::new();
        for chunk in chunks {
            framer.push(chunk, |f| match f {
                Framed::Line(l) => got.push(Ok(String::from_utf8_lossy(l).into_owned())),
                Framed::TooLong => got.push(Err(())),
            });
        }
        got
    }

    #[test]
    fn cr_lf_and_crlf_all_end_lines_and_empty_lines_are_ignored() {
        let mut f = LineFramer::default();
        let got = frame(&mut f, &[b"a\r\nb\nc\rd\r\n\r\n\n", b"e"]);
        let want: Vec<Result<String, ()>> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| Ok(s.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(f.buffered(), 1);
        assert_eq!(frame(&mut f, &[b"\r", b"\n"]), vec![Ok("e".to_string())]);
    }

    #[test]
    fn a_line_split_anywhere_comes_out_whole() {
        let text = b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48\r\n";
        for cut in 0..text.len() {
            let mut f = LineFramer::default();
            let got = frame(&mut f, &[&text[..cut], &text[cut..]]);
            assert_eq!(
                got,
                vec![Ok("$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48".to_string())],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_endless_line_is_reported_once_and_never_held_beyond_the_limit() {
        let mut f = LineFramer::new(100);
        let mut got = Vec::new();
        let chunk = [b'x'; 4096];
        for _ in 0..256 {
            // 1 MiB without a line end
            f.push(&chunk, |e| got.push(matches!(e, Framed::TooLong)));
            assert!(f.buffered() <= 100);
        }
        assert_eq!(got, vec![true]);
        // The rest of the long line is dropped; the next line is whole.
        let got = frame(&mut f, &[b"tail of it\r\nnext\r\n"]);
        assert_eq!(got, vec![Ok("next".to_string())]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept() {
        let mut f = LineFramer::new(4);
        assert_eq!(frame(&mut f, &[b"ab", b"cd\n"]), vec![Ok("abcd".into())]);
        assert_eq!(
            frame(&mut f, &[b"abcde\nf\n"]),
            vec![Err(()), Ok("f".into())]
        );
    }

    #[test]
    fn flush_drops_a_partial_line() {
        let mut f = LineFramer::default();
        assert!(frame(&mut f, &[b"$GPGGA,1234"]).is_empty());
        assert_eq!(f.flush(), 11);
        assert_eq!(f.flush(), 0);
        assert_eq!(frame(&mut f, &[b"x\n"]), vec![Ok("x".into())]);
    }

    #[test]
    fn decimals_as_instruments_print_them() {
        assert_eq!(parse_decimal(b"-12.5"), Some(-12.5));
        assert_eq!(parse_decimal(b"+003.40"), Some(3.4));
        assert_eq!(parse_decimal(b"7"), Some(7.0));
        assert_eq!(parse_decimal(b".5"), Some(0.5));
        for bad in [
            &b""[..],
            b"-",
            b".",
            b"1e5",
            b"nan",
            b"inf",
            b"1.2.3",
            b"12a",
            b" 1",
        ] {
            assert_eq!(
                parse_decimal(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
