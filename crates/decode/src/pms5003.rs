//! Plantower PMS5003 / PMS7003 / PMS5003T particulate sensors: 32-byte frames over a 9600 baud
//! UART, decoded from a raw byte stream with resynchronisation.
//!
//! # Frame (active mode, one per second or faster)
//!
//! | bytes  | content                                                                 |
//! |-------:|-------------------------------------------------------------------------|
//! | 0..2   | start `42 4d` (`"BM"`)                                                  |
//! | 2..4   | length of what follows, big-endian: always 28 (13 data words + checksum) |
//! | 4..10  | PM1.0, PM2.5, PM10 µg/m³, "CF=1" (factory standard particle)             |
//! | 10..16 | PM1.0, PM2.5, PM10 µg/m³, atmospheric environment                        |
//! | 16..28 | particles per 0.1 L above 0.3, 0.5, 1.0, 2.5, 5.0, 10 µm                  |
//! | 28..30 | reserved: firmware version, error code                                  |
//! | 30..32 | checksum: 16-bit sum of bytes 0..30, big-endian                         |
//!
//! All words are big-endian `u16`.
//!
//! # PMS5003T
//!
//! The PMS5003T sends the same 32-byte frame with the same length field 28, but bytes 24..28 (the
//! `> 5.0 µm` and `> 10 µm` counts of the plain PMS5003) carry temperature (signed, ×10 °C) and
//! relative humidity (×10 %). Nothing in the frame says reliably which sensor sent it (the
//! version byte differs between firmware batches), so the variant is *configured*, never guessed:
//! [`Pms5003Variant::T`] reads those two words as temperature and humidity and does not report
//! `n5_0` / `n10`. A wrong choice is visible at once on a dashboard (e.g. "humidity" of 0.0 in
//! clean air, or an `n5_0` count equal to ten times the room temperature).
//!
//! # Resynchronisation
//!
//! The decoder scans for `42 4d`. A header with a length other than 28 is a
//! [`BadFrame::Length`] (the bytes up to the next header are counted with it). A complete frame
//! with a wrong checksum is a [`BadFrame::Truncated`] if another header starts inside it (a torn
//! frame followed by a good one: decoding resumes at that header, so the good frame is kept),
//! otherwise a [`BadFrame::Checksum`]. Bytes before a header are [`BadFrame::Noise`].
//! The internal buffer never holds more than one frame between calls.
//!
//! The byte layout itself (start bytes, length field, words, checksum) is `ioc_frames::pms5003`,
//! shared with the sensor-node firmware and the simulators; this module streams and makes
//! readings.

use std::collections::BTreeMap;

use super::serial_frame::{find_pair, BadFrame, DecodeEvent};
use ioc_frames::pms5003 as layout;
use ioc_model::{FieldValue, Reading};

/// The 16-bit sum of `bytes` (the PMS5003 checksum of bytes 0..30).
pub use ioc_frames::pms5003::checksum;
/// Bytes in one frame.
pub use ioc_frames::pms5003::FRAME_LEN;
/// The only length field value of a PMS5003 / PMS7003 / PMS5003T frame.
pub use ioc_frames::pms5003::LENGTH_FIELD;
/// The frame's start bytes.
pub use ioc_frames::pms5003::START as HEADER;

/// The 13 data words of one frame, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pms5003Frame {
    pub pm1_0_cf1: u16,
    pub pm2_5_cf1: u16,
    pub pm10_cf1: u16,
    pub pm1_0: u16,
    pub pm2_5: u16,
    pub pm10: u16,
    pub n0_3: u16,
    pub n0_5: u16,
    pub n1_0: u16,
    pub n2_5: u16,
    /// Plain PMS5003: particles > 5.0 µm per 0.1 L. PMS5003T: temperature ×10 °C (as `i16`).
    pub n5_0: u16,
    /// Plain PMS5003: particles > 10 µm per 0.1 L. PMS5003T: relative humidity ×10 %.
    pub n10: u16,
    /// Firmware version (high byte) and error code (low byte).
    pub reserved: u16,
}

/// Which member of the family is on the port (see the module docs on why it is configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pms5003Variant {
    /// PMS5003, PMS7003, PMS1003: six particle-count bins.
    #[default]
    Standard,
    /// PMS5003T: four count bins, temperature and humidity.
    T,
}

impl Pms5003Variant {
    /// The `model` tag value.
    pub fn model(self) -> &'static str {
        match self {
            Pms5003Variant::Standard => "pms5003",
            Pms5003Variant::T => "pms5003t",
        }
    }
}

impl Pms5003Frame {
    fn words(&self) -> layout::DataWords {
        [
            self.pm1_0_cf1,
            self.pm2_5_cf1,
            self.pm10_cf1,
            self.pm1_0,
            self.pm2_5,
            self.pm10,
            self.n0_3,
            self.n0_5,
            self.n1_0,
            self.n2_5,
            self.n5_0,
            self.n10,
            self.reserved,
        ]
    }

    fn from_words(w: layout::DataWords) -> Self {
        let [pm1_0_cf1, pm2_5_cf1, pm10_cf1, pm1_0, pm2_5, pm10, n0_3, n0_5, n1_0, n2_5, n5_0, n10, reserved] =
            w;
        Pms5003Frame {
            pm1_0_cf1,
            pm2_5_cf1,
            pm10_cf1,
            pm1_0,
            pm2_5,
            pm10,
            n0_3,
            n0_5,
            n1_0,
            n2_5,
            n5_0,
            n10,
            reserved,
        }
    }

    /// PMS5003T temperature in °C (the `n5_0` word read as signed tenths).
    pub fn temperature_c(&self) -> f64 {
        f64::from(self.n5_0 as i16) / 10.0
    }

    /// PMS5003T relative humidity in % (the `n10` word in tenths).
    pub fn humidity_pct(&self) -> f64 {
        f64::from(self.n10) / 10.0
    }

    /// The reading for this frame: measurement `air_quality`, tags `model`, `sensor_id` (if
    /// any) and the port's static tags, stamped `timestamp_ns`.
    pub fn to_reading(
        &self,
        variant: Pms5003Variant,
        sensor_id: Option<&str>,
        static_tags: &BTreeMap<String, String>,
        timestamp_ns: i64,
    ) -> Reading {
        let mut r = Reading::new("air_quality", timestamp_ns);
        r.tags = static_tags.clone();
        r.tags.insert("model".into(), variant.model().into());
        if let Some(id) = sensor_id {
            r.tags.insert("sensor_id".into(), id.into());
        }
        let pm = |v: u16| FieldValue::Float(f64::from(v));
        let count = |v: u16| FieldValue::Int(i64::from(v));
        let mut r = r
            .field("pm1_0", pm(self.pm1_0))
            .field("pm2_5", pm(self.pm2_5))
            .field("pm10", pm(self.pm10))
            .field("pm1_0_cf1", pm(self.pm1_0_cf1))
            .field("pm2_5_cf1", pm(self.pm2_5_cf1))
            .field("pm10_cf1", pm(self.pm10_cf1))
            .field("n0_3", count(self.n0_3))
            .field("n0_5", count(self.n0_5))
            .field("n1_0", count(self.n1_0))
            .field("n2_5", count(self.n2_5));
        match variant {
            Pms5003Variant::Standard => {
                r = r
                    .field("n5_0", count(self.n5_0))
                    .field("n10", count(self.n10));
            }
            Pms5003Variant::T => {
                r = r
                    .field("temperature", FieldValue::Float(self.temperature_c()))
                    .field("humidity", FieldValue::Float(self.humidity_pct()));
            }
        }
        r
    }
}

/// The 32 bytes a sensor sends for `frame`.
pub fn encode(frame: &Pms5003Frame) -> [u8; FRAME_LEN] {
    layout::encode(&frame.words())
}

/// Decodes one complete frame (header, length and checksum checked).
pub fn decode_frame(bytes: &[u8; FRAME_LEN]) -> Result<Pms5003Frame, BadFrame> {
    Ok(Pms5003Frame::from_words(layout::parse(bytes)?))
}

impl From<layout::FrameError> for BadFrame {
    fn from(e: layout::FrameError) -> Self {
        match e {
            layout::FrameError::Start => BadFrame::Noise,
            layout::FrameError::Length(_) => BadFrame::Length,
            layout::FrameError::Checksum { .. } => BadFrame::Checksum,
        }
    }
}

/// Streaming decoder: feed it whatever the port returned, in order.
#[derive(Debug, Default)]
pub struct Pms5003Decoder {
    buf: Vec<u8>,
    /// Bytes skipped while looking for a header, not yet reported.
    skipped: usize,
    /// Why they were skipped (noise, or the tail of a frame with a bad length field).
    skip_reason: Option<BadFrame>,
}

impl Pms5003Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held waiting for the rest of a frame (never more than [`FRAME_LEN`] after a call).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds `n` bytes to the current skipped run; a run keeps the reason it started with, so the
    /// bytes after a bad length field are counted with it rather than as noise.
    fn skip(&mut self, n: usize, reason: BadFrame) {
        self.skipped += n;
        if self.skip_reason.is_none() {
            self.skip_reason = Some(reason);
        }
    }

    fn flush_skipped(&mut self, out: &mut Vec<DecodeEvent<Pms5003Frame>>) {
        if self.skipped > 0 {
            out.push(DecodeEvent::Bad {
                reason: self.skip_reason.unwrap_or(BadFrame::Noise),
                bytes: self.skipped,
            });
        }
        self.skipped = 0;
        self.skip_reason = None;
    }

    /// Feeds bytes; appends what they completed to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<DecodeEvent<Pms5003Frame>>) {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            // Find a header.
            match find_pair(rest, HEADER) {
                Some(0) => {}
                Some(n) => {
                    self.skip(n, BadFrame::Noise);
                    pos += n;
                    continue;
                }
                None => {
                    // Keep a trailing 0x42: it may start a header.
                    let keep = usize::from(rest.last() == Some(&HEADER[0]));
                    let n = rest.len() - keep;
                    if n > 0 {
                        self.skip(n, BadFrame::Noise);
                    }
                    pos += n;
                    break;
                }
            }
            let Some(frame) = rest.get(..FRAME_LEN) else {
                // A header and the length field already tell a bad length: report it at once.
                if let Some(len) = layout::length_field(rest) {
                    if len != LENGTH_FIELD {
                        self.flush_skipped(out);
                        self.skip(2, BadFrame::Length);
                        pos += 2;
                        continue;
                    }
                }
                break;
            };
            let mut candidate = [0u8; FRAME_LEN];
            candidate.copy_from_slice(frame);
            match decode_frame(&candidate) {
                Ok(f) => {
                    self.flush_skipped(out);
                    out.push(DecodeEvent::Frame(f));
                    pos += FRAME_LEN;
                }
                Err(BadFrame::Length) => {
                    self.flush_skipped(out);
                    self.skip(2, BadFrame::Length);
                    pos += 2;
                }
                Err(_) => {
                    self.flush_skipped(out);
                    // A header inside the frame: this one was torn, resume there.
                    let inner = find_pair(&candidate[1..], HEADER).map(|p| p + 1).or(
                        // The last byte may begin a header that continues in the next frame.
                        (candidate[FRAME_LEN - 1] == HEADER[0]).then_some(FRAME_LEN - 1),
                    );
                    match inner {
                        Some(p) => {
                            out.push(DecodeEvent::Bad {
                                reason: BadFrame::Truncated,
                                bytes: p,
                            });
                            pos += p;
                        }
                        None => {
                            out.push(DecodeEvent::Bad {
                                reason: BadFrame::Checksum,
                                bytes: FRAME_LEN,
                            });
                            pos += FRAME_LEN;
                        }
                    }
                }
            }
        }
        self.buf.drain(..pos);
    }

    /// The line went idle: whatever is buffered will never complete. Reports it (a partial frame
    /// as [`BadFrame::Truncated`], skipped bytes under their reason) and empties the buffer.
    pub fn flush(&mut self, out: &mut Vec<DecodeEvent<Pms5003Frame>>) {
        self.flush_skipped(out);
        if !self.buf.is_empty() {
            let reason = if self.buf.starts_with(&HEADER) {
                BadFrame::Truncated
            } else {
                BadFrame::Noise
            };
            out.push(DecodeEvent::Bad {
                reason,
                bytes: self.buf.len(),
            });
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// First frames of PyPMS `tests/captured_data/PMSx003.hexdump` (a PMS5003 capture, MIT),
    /// with the values of the matching `PMSx003.csv` rows (PyPMS reports counts per cm³, i.e.
    /// our per-0.1 L counts / 100).
    const CAPTURE_1: &str = "42 4d 00 1c 00 00 00 08 00 08 00 00 00 08 00 08 00 d2 00 46 00 2d 00 1e 00 00 00 00 97 00 02 c5";
    const CAPTURE_2: &str = "42 4d 00 1c 00 00 00 07 00 07 00 00 00 07 00 07 00 bd 00 3f 00 2a 00 1b 00 00 00 00 97 00 02 9f";
    /// First frame of PyPMS `tests/captured_data/PMS5003T.hexdump`; CSV row: pm01 22, pm25 35,
    /// pm10 41, n0_3 41.04, n0_5 11.93, n1_0 2.78, n2_5 0.12, temp 21.2, rhum 22.4.
    const CAPTURE_T: &str = "42 4d 00 1c 00 17 00 27 00 29 00 16 00 23 00 29 10 08 04 a9 01 16 00 0c 00 d4 00 e0 9a 00 04 aa";

    fn decode_all(bytes: &[u8]) -> Vec<DecodeEvent<Pms5003Frame>> {
        let mut d = Pms5003Decoder::new();
        let mut out = Vec::new();
        d.push(bytes, &mut out);
        out
    }

    fn frames(events: &[DecodeEvent<Pms5003Frame>]) -> Vec<Pms5003Frame> {
        events
            .iter()
            .filter_map(|e| match e {
                DecodeEvent::Frame(f) => Some(*f),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn decodes_a_captured_pms5003_frame_with_its_published_values() {
        let ev = decode_all(&hex(CAPTURE_1));
        assert_eq!(
            ev,
            vec![DecodeEvent::Frame(Pms5003Frame {
                pm1_0_cf1: 0,
                pm2_5_cf1: 8,
                pm10_cf1: 8,
                pm1_0: 0,
                pm2_5: 8,
                pm10: 8,
                n0_3: 210,
                n0_5: 70,
                n1_0: 45,
                n2_5: 30,
                n5_0: 0,
                n10: 0,
                reserved: 0x9700,
            })]
        );
    }

    #[test]
    fn reading_has_the_issue_fields_and_tags() {
        let f = frames(&decode_all(&hex(CAPTURE_2)))[0];
        let tags = BTreeMap::from([("district".to_string(), "dong-xoai".to_string())]);
        let r = f.to_reading(Pms5003Variant::Standard, Some("pm-01"), &tags, 42);
        assert_eq!(r.measurement, "air_quality");
        assert_eq!(r.timestamp_ns, 42);
        assert_eq!(
            r.tags,
            BTreeMap::from([
                ("district".into(), "dong-xoai".into()),
                ("model".into(), "pms5003".into()),
                ("sensor_id".into(), "pm-01".into()),
            ])
        );
        let expect: BTreeMap<String, FieldValue> = [
            ("pm1_0", FieldValue::Float(0.0)),
            ("pm2_5", FieldValue::Float(7.0)),
            ("pm10", FieldValue::Float(7.0)),
            ("pm1_0_cf1", FieldValue::Float(0.0)),
            ("pm2_5_cf1", FieldValue::Float(7.0)),
            ("pm10_cf1", FieldValue::Float(7.0)),
            ("n0_3", FieldValue::Int(189)),
            ("n0_5", FieldValue::Int(63)),
            ("n1_0", FieldValue::Int(42)),
            ("n2_5", FieldValue::Int(27)),
            ("n5_0", FieldValue::Int(0)),
            ("n10", FieldValue::Int(0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(r.fields, expect);
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn pms5003t_frame_gives_temperature_and_humidity() {
        let f = frames(&decode_all(&hex(CAPTURE_T)))[0];
        let r = f.to_reading(Pms5003Variant::T, None, &BTreeMap::new(), 1);
        assert_eq!(r.tags.get("model").map(String::as_str), Some("pms5003t"));
        assert_eq!(r.fields.get("pm1_0"), Some(&FieldValue::Float(22.0)));
        assert_eq!(r.fields.get("pm2_5"), Some(&FieldValue::Float(35.0)));
        assert_eq!(r.fields.get("pm10"), Some(&FieldValue::Float(41.0)));
        assert_eq!(r.fields.get("pm2_5_cf1"), Some(&FieldValue::Float(39.0)));
        assert_eq!(r.fields.get("n0_3"), Some(&FieldValue::Int(4104)));
        assert_eq!(r.fields.get("n0_5"), Some(&FieldValue::Int(1193)));
        assert_eq!(r.fields.get("n1_0"), Some(&FieldValue::Int(278)));
        assert_eq!(r.fields.get("n2_5"), Some(&FieldValue::Int(12)));
        assert_eq!(r.fields.get("temperature"), Some(&FieldValue::Float(21.2)));
        assert_eq!(r.fields.get("humidity"), Some(&FieldValue::Float(22.4)));
        assert!(!r.fields.contains_key("n5_0"));
        assert!(!r.fields.contains_key("n10"));
    }

    #[test]
    fn negative_temperature_is_signed() {
        let f = Pms5003Frame {
            n5_0: (-53i16) as u16,
            ..Default::default()
        };
        assert_eq!(f.temperature_c(), -5.3);
    }

    #[test]
    fn encode_reproduces_the_captured_bytes() {
        for cap in [CAPTURE_1, CAPTURE_2, CAPTURE_T] {
            let bytes = hex(cap);
            let f = frames(&decode_all(&bytes))[0];
            assert_eq!(encode(&f).to_vec(), bytes);
        }
    }

    #[test]
    fn noise_before_a_frame_is_counted_and_the_frame_kept() {
        let mut bytes = hex("00 ff 42 13 4d 42");
        bytes.extend(hex(CAPTURE_1));
        let ev = decode_all(&bytes);
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[0],
            DecodeEvent::Bad {
                reason: BadFrame::Noise,
                bytes: 6
            }
        );
        assert!(matches!(ev[1], DecodeEvent::Frame(f) if f.n0_3 == 210));
    }

    #[test]
    fn truncated_frame_followed_by_a_good_one() {
        let mut bytes = hex(CAPTURE_1)[..17].to_vec();
        bytes.extend(hex(CAPTURE_2));
        let ev = decode_all(&bytes);
        assert_eq!(
            ev,
            vec![
                DecodeEvent::Bad {
                    reason: BadFrame::Truncated,
                    bytes: 17
                },
                DecodeEvent::Frame(frames(&decode_all(&hex(CAPTURE_2)))[0]),
            ]
        );
    }

    #[test]
    fn bad_checksum_is_reported_and_next_frame_decoded() {
        let mut bad = hex(CAPTURE_1);
        bad[20] ^= 0x01;
        bad.extend(hex(CAPTURE_2));
        let ev = decode_all(&bad);
        assert_eq!(
            ev[0],
            DecodeEvent::Bad {
                reason: BadFrame::Checksum,
                bytes: 32
            }
        );
        assert_eq!(frames(&ev).len(), 1);
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn wrong_length_field_is_reported_with_its_bytes() {
        // A PMS5003ST-style 40-byte frame (length 36) is not ours: one Length event, then resync.
        let mut bytes = hex("42 4d 00 24");
        bytes.extend([0x11u8; 36]);
        bytes.extend(hex(CAPTURE_1));
        let ev = decode_all(&bytes);
        assert_eq!(
            ev[0],
            DecodeEvent::Bad {
                reason: BadFrame::Length,
                bytes: 40
            }
        );
        assert_eq!(frames(&ev).len(), 1);
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn back_to_back_frames_in_one_read_and_byte_by_byte() {
        let mut bytes = hex(CAPTURE_1);
        bytes.extend(hex(CAPTURE_2));
        bytes.extend(hex(CAPTURE_T));
        assert_eq!(frames(&decode_all(&bytes)).len(), 3);
        let mut d = Pms5003Decoder::new();
        let mut out = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b), &mut out);
            assert!(d.buffered() <= FRAME_LEN);
        }
        assert_eq!(out.len(), 3);
        assert_eq!(frames(&out).len(), 3);
    }

    #[test]
    fn flush_reports_a_partial_frame_as_truncated() {
        let mut d = Pms5003Decoder::new();
        let mut out = Vec::new();
        d.push(&hex(CAPTURE_1)[..10], &mut out);
        assert!(out.is_empty());
        d.flush(&mut out);
        assert_eq!(
            out,
            vec![DecodeEvent::Bad {
                reason: BadFrame::Truncated,
                bytes: 10
            }]
        );
        assert_eq!(d.buffered(), 0);
    }

    fn accounted(events: &[DecodeEvent<Pms5003Frame>]) -> usize {
        events
            .iter()
            .map(|e| match e {
                DecodeEvent::Frame(_) => FRAME_LEN,
                DecodeEvent::Skipped { bytes, .. } | DecodeEvent::Bad { bytes, .. } => *bytes,
            })
            .sum()
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_every_byte_is_accounted(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            split in 1usize..64,
        ) {
            let mut d = Pms5003Decoder::new();
            let mut out = Vec::new();
            for chunk in bytes.chunks(split) {
                d.push(chunk, &mut out);
                proptest::prop_assert!(d.buffered() <= FRAME_LEN);
            }
            d.flush(&mut out);
            proptest::prop_assert_eq!(accounted(&out), bytes.len());
        }

        #[test]
        fn every_accepted_frame_reencodes_to_its_bytes(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            words in proptest::array::uniform13(proptest::num::u16::ANY),
        ) {
            // Arbitrary noise followed by a valid frame: whatever is accepted re-encodes exactly.
            let mut bytes = noise.clone();
            bytes.extend(encode(&Pms5003Frame::from_words(words)));
            let mut d = Pms5003Decoder::new();
            let mut out = Vec::new();
            d.push(&bytes, &mut out);
            let mut offset = 0;
            for e in &out {
                match e {
                    DecodeEvent::Frame(f) => {
                        let enc = encode(f);
                        proptest::prop_assert_eq!(&bytes[offset..offset + FRAME_LEN], &enc[..]);
                        offset += FRAME_LEN;
                    }
                    DecodeEvent::Skipped { bytes: n, .. } | DecodeEvent::Bad { bytes: n, .. } => offset += n,
                }
            }
        }
    }
}
