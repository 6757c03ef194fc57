//! Nova Fitness SDS011 particulate sensor: 10-byte frames over a 9600 baud UART, decoded from a
//! raw byte stream with resynchronisation.
//!
//! # Frames (Laser Dust Sensor Control Protocol V1.3)
//!
//! ```text
//! aa c0 P25L P25H P10L P10H ID1 ID2 CS ab    measurement (sent once a second in active mode)
//! aa c5 D1   D2   D3   D4   ID1 ID2 CS ab    reply to a command (set mode, sleep, firmware...)
//! ```
//!
//! PM2.5 and PM10 are little-endian tenths of µg/m³; `CS` is the low byte of the sum of the six
//! data bytes. Command replies (`aa c5`) are valid frames that carry no measurement: they are
//! reported as [`DecodeEvent::Skipped`], not as errors.
//!
//! # Resynchronisation
//!
//! The decoder scans for `aa c0` / `aa c5`. A complete candidate with a wrong tail or checksum is
//! [`BadFrame::Truncated`] if another header starts inside it (decoding resumes there, so a good
//! frame after a torn one is kept), else [`BadFrame::Tail`] / [`BadFrame::Checksum`]. Other bytes
//! are [`BadFrame::Noise`]. The internal buffer never holds more than one frame between calls.
//!
//! The byte layout itself is `ioc_frames::sds011`, shared with the simulators; this module
//! streams and makes readings.

use std::collections::BTreeMap;

use super::serial_frame::{BadFrame, DecodeEvent};
use ioc_frames::sds011 as layout;
use ioc_model::{FieldValue, Reading};

/// Low byte of the sum of the six data bytes.
pub use ioc_frames::sds011::checksum;
/// Command byte of a measurement frame.
pub use ioc_frames::sds011::CMD_DATA;
/// Command byte of a reply to a command.
pub use ioc_frames::sds011::CMD_REPLY;
/// Bytes in one frame.
pub use ioc_frames::sds011::FRAME_LEN;
pub use ioc_frames::sds011::{HEAD, TAIL};

/// One measurement frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sds011Data {
    /// PM2.5 in tenths of µg/m³.
    pub pm2_5_tenths: u16,
    /// PM10 in tenths of µg/m³.
    pub pm10_tenths: u16,
    /// The sensor's two ID bytes, as sent.
    pub device_id: [u8; 2],
}

/// A valid frame: a measurement, or a reply to a command (kept whole for re-encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sds011Frame {
    Data(Sds011Data),
    /// The six data bytes of an `aa c5` reply.
    Reply([u8; 6]),
}

impl Sds011Data {
    pub fn pm2_5(&self) -> f64 {
        f64::from(self.pm2_5_tenths) / 10.0
    }

    pub fn pm10(&self) -> f64 {
        f64::from(self.pm10_tenths) / 10.0
    }

    /// The reading: measurement `air_quality`, tags `model=sds011`, `sensor_id` (if any) and the
    /// port's static tags; fields `pm2_5`, `pm10` in µg/m³.
    pub fn to_reading(
        &self,
        sensor_id: Option<&str>,
        static_tags: &BTreeMap<String, String>,
        timestamp_ns: i64,
    ) -> Reading {
        let mut r = Reading::new("air_quality", timestamp_ns);
        r.tags = static_tags.clone();
        r.tags.insert("model".into(), "sds011".into());
        if let Some(id) = sensor_id {
            r.tags.insert("sensor_id".into(), id.into());
        }
        r.field("pm2_5", FieldValue::Float(self.pm2_5()))
            .field("pm10", FieldValue::Float(self.pm10()))
    }
}

impl From<layout::Measurement> for Sds011Data {
    fn from(m: layout::Measurement) -> Self {
        Sds011Data {
            pm2_5_tenths: m.pm2_5_tenths,
            pm10_tenths: m.pm10_tenths,
            device_id: m.device_id,
        }
    }
}

impl From<&Sds011Frame> for layout::Frame {
    fn from(frame: &Sds011Frame) -> Self {
        match frame {
            Sds011Frame::Data(d) => layout::Frame::Data(layout::Measurement {
                pm2_5_tenths: d.pm2_5_tenths,
                pm10_tenths: d.pm10_tenths,
                device_id: d.device_id,
            }),
            Sds011Frame::Reply(data) => layout::Frame::Reply(*data),
        }
    }
}

impl From<layout::FrameError> for BadFrame {
    fn from(e: layout::FrameError) -> Self {
        match e {
            layout::FrameError::Header => BadFrame::Noise,
            layout::FrameError::Tail => BadFrame::Tail,
            layout::FrameError::Checksum { .. } => BadFrame::Checksum,
        }
    }
}

/// The 10 bytes a sensor sends for `frame`.
pub fn encode(frame: &Sds011Frame) -> [u8; FRAME_LEN] {
    layout::encode(&frame.into())
}

/// Decodes one complete frame.
pub fn decode_frame(b: &[u8; FRAME_LEN]) -> Result<Sds011Frame, BadFrame> {
    Ok(match layout::parse(b)? {
        layout::Frame::Data(m) => Sds011Frame::Data(m.into()),
        layout::Frame::Reply(data) => Sds011Frame::Reply(data),
    })
}

fn find_header(b: &[u8]) -> Option<usize> {
    b.windows(2).position(layout::is_header)
}

/// Streaming decoder: feed it whatever the port returned, in order.
#[derive(Debug, Default)]
pub struct Sds011Decoder {
    buf: Vec<u8>,
    noise: usize,
}

impl Sds011Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held waiting for the rest of a frame (never more than [`FRAME_LEN`] after a call).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn flush_noise(&mut self, out: &mut Vec<DecodeEvent<Sds011Frame>>) {
        if self.noise > 0 {
            out.push(DecodeEvent::Bad {
                reason: BadFrame::Noise,
                bytes: self.noise,
            });
            self.noise = 0;
        }
    }

    /// Feeds bytes; appends what they completed to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<DecodeEvent<Sds011Frame>>) {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            match find_header(rest) {
                Some(0) => {}
                Some(n) => {
                    self.noise += n;
                    pos += n;
                    continue;
                }
                None => {
                    let keep = usize::from(rest.last() == Some(&HEAD));
                    self.noise += rest.len() - keep;
                    pos += rest.len() - keep;
                    break;
                }
            }
            let Some(frame) = rest.get(..FRAME_LEN) else {
                break;
            };
            let mut candidate = [0u8; FRAME_LEN];
            candidate.copy_from_slice(frame);
            match decode_frame(&candidate) {
                Ok(f) => {
                    self.flush_noise(out);
                    out.push(match f {
                        Sds011Frame::Data(_) => DecodeEvent::Frame(f),
                        Sds011Frame::Reply(_) => DecodeEvent::Skipped {
                            what: "command reply",
                            bytes: FRAME_LEN,
                        },
                    });
                    pos += FRAME_LEN;
                }
                Err(reason) => {
                    self.flush_noise(out);
                    let inner = find_header(&candidate[1..])
                        .map(|p| p + 1)
                        .or((candidate[FRAME_LEN - 1] == HEAD).then_some(FRAME_LEN - 1));
                    let (reason, n) = match inner {
                        Some(p) => (BadFrame::Truncated, p),
                        None => (reason, FRAME_LEN),
                    };
                    out.push(DecodeEvent::Bad { reason, bytes: n });
                    pos += n;
                }
            }
        }
        self.buf.drain(..pos);
    }

    /// The line went idle: reports what is buffered (a partial frame as truncated) and empties
    /// the buffer.
    pub fn flush(&mut self, out: &mut Vec<DecodeEvent<Sds011Frame>>) {
        self.flush_noise(out);
        if !self.buf.is_empty() {
            let reason = if self.buf.len() >= 2 && layout::is_header(&self.buf) {
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

    /// Measurement example of the Nova SDS011 protocol V1.3: PM2.5 123.6, PM10 261.8, ID a160.
    const DATASHEET_DATA: &str = "aa c0 d4 04 3a 0a a1 60 1d ab";
    /// Reply example of protocol V1.3 (query data reporting mode: active).
    const DATASHEET_REPLY: &str = "aa c5 02 00 00 00 a1 60 03 ab";
    /// First two frames of PyPMS `tests/captured_data/SDS01x.hexdump` (CSV: 0.6/0.6, 0.9/0.9).
    const CAPTURE_1: &str = "aa c0 06 00 06 00 58 d9 3d ab";
    const CAPTURE_2: &str = "aa c0 09 00 09 00 58 d9 43 ab";

    fn decode_all(bytes: &[u8]) -> Vec<DecodeEvent<Sds011Frame>> {
        let mut d = Sds011Decoder::new();
        let mut out = Vec::new();
        d.push(bytes, &mut out);
        out
    }

    fn data(e: &DecodeEvent<Sds011Frame>) -> Sds011Data {
        match e {
            DecodeEvent::Frame(Sds011Frame::Data(d)) => *d,
            other => panic!("not a data frame: {other:?}"),
        }
    }

    #[test]
    fn datasheet_example_decodes_to_its_values() {
        let ev = decode_all(&hex(DATASHEET_DATA));
        assert_eq!(ev.len(), 1);
        let d = data(&ev[0]);
        assert_eq!(d.pm2_5(), 123.6);
        assert_eq!(d.pm10(), 261.8);
        assert_eq!(d.device_id, [0xa1, 0x60]);
        let tags = BTreeMap::from([("district".to_string(), "d1".to_string())]);
        let r = d.to_reading(Some("sds-1"), &tags, 7);
        assert_eq!(r.measurement, "air_quality");
        assert_eq!(
            r.tags,
            BTreeMap::from([
                ("district".into(), "d1".into()),
                ("model".into(), "sds011".into()),
                ("sensor_id".into(), "sds-1".into()),
            ])
        );
        assert_eq!(
            r.fields,
            BTreeMap::from([
                ("pm10".into(), FieldValue::Float(261.8)),
                ("pm2_5".into(), FieldValue::Float(123.6)),
            ])
        );
    }

    #[test]
    fn captured_frames_decode_to_the_published_values() {
        let mut bytes = hex(CAPTURE_1);
        bytes.extend(hex(CAPTURE_2));
        let ev = decode_all(&bytes);
        assert_eq!(ev.len(), 2);
        assert_eq!((data(&ev[0]).pm2_5(), data(&ev[0]).pm10()), (0.6, 0.6));
        assert_eq!((data(&ev[1]).pm2_5(), data(&ev[1]).pm10()), (0.9, 0.9));
    }

    #[test]
    fn command_replies_are_skipped_not_errors() {
        let mut bytes = hex(DATASHEET_REPLY);
        bytes.extend(hex(CAPTURE_1));
        let ev = decode_all(&bytes);
        assert_eq!(
            ev[0],
            DecodeEvent::Skipped {
                what: "command reply",
                bytes: 10
            }
        );
        assert_eq!(data(&ev[1]).pm2_5_tenths, 6);
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn noise_torn_and_corrupt_frames() {
        let mut bytes = hex("13 aa 37 ab");
        bytes.extend(&hex(CAPTURE_1)[..6]); // torn
        bytes.extend(hex(CAPTURE_2));
        let mut bad_cs = hex(CAPTURE_2);
        bad_cs[3] ^= 0x10;
        bytes.extend(&bad_cs);
        let mut bad_tail = hex(CAPTURE_2);
        bad_tail[9] = 0x00;
        bytes.extend(&bad_tail);
        bytes.extend(hex(DATASHEET_DATA));
        let ev = decode_all(&bytes);
        let expect_bad = |reason, bytes| DecodeEvent::Bad { reason, bytes };
        assert_eq!(ev[0], expect_bad(BadFrame::Noise, 4));
        assert_eq!(ev[1], expect_bad(BadFrame::Truncated, 6));
        assert_eq!(data(&ev[2]).pm2_5_tenths, 9);
        assert_eq!(ev[3], expect_bad(BadFrame::Checksum, 10));
        assert_eq!(ev[4], expect_bad(BadFrame::Tail, 10));
        assert_eq!(data(&ev[5]).pm2_5_tenths, 1236);
        assert_eq!(ev.len(), 6);
    }

    #[test]
    fn encode_reproduces_datasheet_and_captured_bytes() {
        for f in [DATASHEET_DATA, DATASHEET_REPLY, CAPTURE_1, CAPTURE_2] {
            let bytes = hex(f);
            let mut arr = [0u8; FRAME_LEN];
            arr.copy_from_slice(&bytes);
            let frame = decode_frame(&arr).unwrap();
            assert_eq!(encode(&frame).to_vec(), bytes);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_every_byte_is_accounted(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            split in 1usize..32,
        ) {
            let mut d = Sds011Decoder::new();
            let mut out = Vec::new();
            for chunk in bytes.chunks(split) {
                d.push(chunk, &mut out);
                proptest::prop_assert!(d.buffered() <= FRAME_LEN);
            }
            d.flush(&mut out);
            let n: usize = out.iter().map(|e| match e {
                DecodeEvent::Frame(_) => FRAME_LEN,
                DecodeEvent::Skipped { bytes, .. } | DecodeEvent::Bad { bytes, .. } => *bytes,
            }).sum();
            proptest::prop_assert_eq!(n, bytes.len());
        }

        #[test]
        fn every_accepted_frame_reencodes_to_its_bytes(
            noise in proptest::collection::vec(proptest::sample::select(vec![0xaa, 0xab, 0xc0, 0xc5, 0x00, 0x42]), 0..40),
            body in proptest::array::uniform6(proptest::num::u8::ANY),
            reply in proptest::bool::ANY,
        ) {
            let frame = if reply {
                Sds011Frame::Reply(body)
            } else {
                Sds011Frame::Data(Sds011Data {
                    pm2_5_tenths: u16::from_le_bytes([body[0], body[1]]),
                    pm10_tenths: u16::from_le_bytes([body[2], body[3]]),
                    device_id: [body[4], body[5]],
                })
            };
            let mut bytes = noise.clone();
            bytes.extend(encode(&frame));
            let mut d = Sds011Decoder::new();
            let mut out = Vec::new();
            d.push(&bytes, &mut out);
            let mut offset = 0;
            for e in &out {
                match e {
                    DecodeEvent::Frame(f) => {
                        proptest::prop_assert_eq!(&bytes[offset..offset + FRAME_LEN], &encode(f)[..]);
                        offset += FRAME_LEN;
                    }
                    DecodeEvent::Skipped { bytes: n, .. } => {
                        let mut arr = [0u8; FRAME_LEN];
                        arr.copy_from_slice(&bytes[offset..offset + FRAME_LEN]);
                        let f = decode_frame(&arr);
                        proptest::prop_assert!(f.is_ok());
                        if let Ok(f) = f {
                            proptest::prop_assert_eq!(encode(&f), arr);
                        }
                        offset += n;
                    }
                    DecodeEvent::Bad { bytes: n, .. } => offset += n,
                }
            }
        }
    }
}
