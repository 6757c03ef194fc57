//! Modbus RTU register maps: which registers to poll, and how their 16-bit words become values
//! and readings. Pure functions; the polling over the bus lives in `input::serial`.
//!
//! A port's `[[inputs.serial.registers]]` entries are grouped into [`ModbusRequest`]s: entries of
//! the same slave and function whose registers are adjacent or overlap are read with one request
//! (never reading a register no entry names, since many devices answer an exception for
//! unmapped addresses), at most [`MAX_REGISTERS`] per request. One answer then gives one
//! [`Reading`] per (measurement, sensor_id) with the entries' fields.
//!
//! Values: `u16`/`i16` take one register; `u32`/`i32`/`f32` take two, high word first
//! (`word_order = "big"`, the Modbus convention) or low word first (`"little"`). The value is
//! `raw * scale + offset`, a float field.

use std::collections::BTreeMap;

use ioc_model::{FieldValue, Reading};

/// How a register's words are read as a number (`type` of a register map entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    #[default]
    U16,
    I16,
    U32,
    I32,
    F32,
}

/// Which word of a two-register value comes first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    #[default]
    Big,
    Little,
}

/// One entry of a Modbus RTU register map (`[[inputs.serial.registers]]` in the config).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSpec {
    pub slave: u8,
    /// 3 = holding registers, 4 = input registers.
    pub function: u8,
    pub address: u16,
    #[serde(rename = "type", default)]
    pub register_type: RegisterType,
    #[serde(default)]
    pub word_order: WordOrder,
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub field: String,
    pub measurement: String,
    pub sensor_id: Option<String>,
}

fn default_scale() -> f64 {
    1.0
}

/// What a port adds to every reading it decodes: its `sensor_id` (for entries without their
/// own) and its static tags.
#[derive(Debug, Clone, Default)]
pub struct PortTags {
    pub sensor_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// Most registers one read request may ask for (Modbus limit for functions 3 and 4).
pub const MAX_REGISTERS: u16 = 125;

/// Why a register value could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegisterError {
    #[error("expected {expected} register(s), got {got}")]
    Short { expected: usize, got: usize },
    #[error("value is not a finite number (f32 NaN or infinity)")]
    NotFinite,
}

/// Registers a value of this type occupies.
pub fn register_count(ty: RegisterType) -> u16 {
    match ty {
        RegisterType::U16 | RegisterType::I16 => 1,
        RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
    }
}

/// Decodes one value from its registers (`words` starts at the value's first register).
pub fn decode_value(
    words: &[u16],
    ty: RegisterType,
    order: WordOrder,
    scale: f64,
    offset: f64,
) -> Result<f64, RegisterError> {
    let need = usize::from(register_count(ty));
    let Some(w) = words.get(..need) else {
        return Err(RegisterError::Short {
            expected: need,
            got: words.len(),
        });
    };
    let u32_value = || -> u32 {
        let (hi, lo) = match order {
            WordOrder::Big => (w[0], w[1]),
            WordOrder::Little => (w[1], w[0]),
        };
        (u32::from(hi) << 16) | u32::from(lo)
    };
    let raw = match ty {
        RegisterType::U16 => f64::from(w[0]),
        RegisterType::I16 => f64::from(w[0] as i16),
        RegisterType::U32 => f64::from(u32_value()),
        RegisterType::I32 => f64::from(u32_value() as i32),
        RegisterType::F32 => f64::from(f32::from_bits(u32_value())),
    };
    let value = apply_scale(raw, scale) + offset;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(RegisterError::NotFinite)
    }
}

/// `raw * scale`, but a decimal scale such as 0.1 or 0.01 divides by its exact inverse, so that
/// `-53 × 0.1` gives the `f64` nearest to -5.3 (what a technician reads on the device's display)
/// rather than `-5.300000000000001`.
fn apply_scale(raw: f64, scale: f64) -> f64 {
    let inverse = 1.0 / scale;
    let rounded = inverse.round();
    if scale != 0.0 && rounded.abs() >= 1.0 && (inverse - rounded).abs() < 1e-9 * rounded.abs() {
        raw / rounded
    } else {
        raw * scale
    }
}

/// Encodes `raw` (already unscaled) into registers: the inverse of [`decode_value`] with scale 1,
/// for tests and simulators.
pub fn encode_value(raw: f64, ty: RegisterType, order: WordOrder) -> Vec<u16> {
    let split = |v: u32| {
        let (hi, lo) = ((v >> 16) as u16, v as u16);
        match order {
            WordOrder::Big => vec![hi, lo],
            WordOrder::Little => vec![lo, hi],
        }
    };
    match ty {
        RegisterType::U16 => vec![raw as u16],
        RegisterType::I16 => vec![(raw as i16) as u16],
        RegisterType::U32 => split(raw as u32),
        RegisterType::I32 => split((raw as i32) as u32),
        RegisterType::F32 => split((raw as f32).to_bits()),
    }
}

/// One read request on the bus and the map entries its answer feeds.
#[derive(Debug, Clone)]
pub struct ModbusRequest {
    pub slave: u8,
    /// 3 = read holding registers, 4 = read input registers.
    pub function: u8,
    pub address: u16,
    pub count: u16,
    /// The entries, each with its first register's index in the answer.
    pub entries: Vec<(u16, RegisterSpec)>,
}

/// Groups a port's register map into as few read requests as possible (see the module docs).
/// Requests are ordered by slave, function and address, so one slave's requests are adjacent.
pub fn plan_requests(registers: &[RegisterSpec]) -> Vec<ModbusRequest> {
    let mut sorted: Vec<&RegisterSpec> = registers.iter().collect();
    sorted.sort_by_key(|r| (r.slave, r.function, r.address));
    let mut out: Vec<ModbusRequest> = Vec::new();
    for r in sorted {
        let n = register_count(r.register_type);
        let end = u32::from(r.address) + u32::from(n);
        if let Some(last) = out.last_mut() {
            let last_end = u32::from(last.address) + u32::from(last.count);
            let new_end = end.max(last_end);
            if last.slave == r.slave
                && last.function == r.function
                && u32::from(r.address) <= last_end
                && new_end - u32::from(last.address) <= u32::from(MAX_REGISTERS)
            {
                last.count = (new_end - u32::from(last.address)) as u16;
                last.entries.push((r.address - last.address, r.clone()));
                continue;
            }
        }
        out.push(ModbusRequest {
            slave: r.slave,
            function: r.function,
            address: r.address,
            count: n,
            entries: vec![(0, r.clone())],
        });
    }
    out
}

/// The readings an answer to `request` gives: one per (measurement, sensor_id), tagged with
/// `sensor_id` (the entry's, else the port's) and the port's static tags. An entry whose value
/// does not decode is left out and returned in the error list with its field name.
pub fn readings_from_answer(
    request: &ModbusRequest,
    words: &[u16],
    port: &PortTags,
    timestamp_ns: i64,
) -> (Vec<Reading>, Vec<(String, RegisterError)>) {
    let mut by_series: BTreeMap<(String, Option<String>), Reading> = BTreeMap::new();
    let mut errors = Vec::new();
    for (index, entry) in &request.entries {
        let at = usize::from(*index);
        let value = match words.get(at..) {
            Some(w) => decode_value(
                w,
                entry.register_type,
                entry.word_order,
                entry.scale,
                entry.offset,
            ),
            None => Err(RegisterError::Short {
                expected: usize::from(register_count(entry.register_type)),
                got: 0,
            }),
        };
        let value = match value {
            Ok(v) => v,
            Err(e) => {
                errors.push((entry.field.clone(), e));
                continue;
            }
        };
        let sensor_id = entry.sensor_id.clone().or_else(|| port.sensor_id.clone());
        let reading = by_series
            .entry((entry.measurement.clone(), sensor_id.clone()))
            .or_insert_with(|| {
                let mut r = Reading::new(entry.measurement.clone(), timestamp_ns);
                r.tags = port.tags.clone();
                if let Some(id) = sensor_id {
                    r.tags.insert("sensor_id".into(), id);
                }
                r
            });
        reading
            .fields
            .insert(entry.field.clone(), FieldValue::Float(value));
    }
    (by_series.into_values().collect(), errors)
}

/// CRC-16/MODBUS and RTU framing: the byte layer, shared with the simulators
/// (`ioc_frames::modbus`).
pub use ioc_frames::modbus::{crc16, with_crc};

/// Why a request got no usable answer. [`label`](Self::label) is the `reason` label of
/// `ioc_gateway_modbus_errors_total{port,slave,reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModbusFailure {
    /// Nothing came back in time.
    Timeout,
    /// An answer from the slave came back but its CRC is wrong.
    BadCrc,
    /// Bytes came back that are not an answer from this slave (noise, another slave).
    Garbled,
    /// The slave answered with a Modbus exception (illegal address, busy, ...).
    Exception,
    /// The answer did not match the request (other slave, other function, wrong size).
    Protocol,
    /// A register value did not decode (e.g. an f32 NaN).
    Value,
}

impl ModbusFailure {
    pub fn label(self) -> &'static str {
        match self {
            ModbusFailure::Timeout => "timeout",
            ModbusFailure::BadCrc => "bad_crc",
            ModbusFailure::Garbled => "garbled",
            ModbusFailure::Exception => "exception",
            ModbusFailure::Protocol => "protocol",
            ModbusFailure::Value => "value",
        }
    }
}

/// Classifies a request that got no decodable answer in time from the raw bytes that came back
/// meanwhile: nothing is a timeout; an answer-shaped frame from `slave` whose CRC is wrong is
/// a bad CRC; anything else is garbled.
pub fn classify_unanswered(slave: u8, function: u8, received: &[u8]) -> ModbusFailure {
    match received {
        [] => ModbusFailure::Timeout,
        [s, f, ..] if *s == slave && (*f == function || *f == function | 0x80) => {
            // A read answer is slave, function, byte count, data, CRC; an exception is
            // slave, function | 0x80, code, CRC. Check the CRC over the length it claims.
            let len = ioc_frames::modbus::answer_len(function, received);
            match len.and_then(|n| received.get(..n)) {
                Some(frame) => {
                    if ioc_frames::modbus::check_crc(frame).is_err() {
                        ModbusFailure::BadCrc
                    } else {
                        ModbusFailure::Garbled
                    }
                }
                None => ModbusFailure::Garbled,
            }
        }
        _ => ModbusFailure::Garbled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slave: u8, function: u8, address: u16, ty: RegisterType, field: &str) -> RegisterSpec {
        RegisterSpec {
            slave,
            function,
            address,
            register_type: ty,
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
            field: field.into(),
            measurement: "environment".into(),
            sensor_id: None,
        }
    }

    #[test]
    fn decodes_every_type_and_word_order() {
        use RegisterType::*;
        use WordOrder::*;
        assert_eq!(decode_value(&[0xff38], I16, Big, 0.1, 0.0), Ok(-20.0));
        assert_eq!(decode_value(&[0xff38], U16, Big, 1.0, 0.0), Ok(65336.0));
        assert_eq!(
            decode_value(&[0x0001, 0x0002], U32, Big, 1.0, 0.0),
            Ok(65538.0)
        );
        assert_eq!(
            decode_value(&[0x0002, 0x0001], U32, Little, 1.0, 0.0),
            Ok(65538.0)
        );
        assert_eq!(
            decode_value(&[0xffff, 0xfffe], I32, Big, 1.0, 0.0),
            Ok(-2.0)
        );
        assert_eq!(
            decode_value(&[0xfffe, 0xffff], I32, Little, 1.0, 0.0),
            Ok(-2.0)
        );
        // 23.5f32 = 0x41bc0000
        assert_eq!(
            decode_value(&[0x41bc, 0x0000], F32, Big, 1.0, 0.0),
            Ok(23.5)
        );
        assert_eq!(
            decode_value(&[0x0000, 0x41bc], F32, Little, 1.0, 0.0),
            Ok(23.5)
        );
        assert_eq!(decode_value(&[100], U16, Big, 0.5, -3.0), Ok(47.0));
        assert_eq!(decode_value(&[0xffcb], I16, Big, 0.1, 0.0), Ok(-5.3));
        assert_eq!(decode_value(&[1234], U16, Big, 0.01, 0.0), Ok(12.34));
        assert_eq!(decode_value(&[3], U16, Big, 2.5, 0.0), Ok(7.5));
        assert_eq!(
            decode_value(&[0x7fc0, 0x0000], F32, Big, 1.0, 0.0),
            Err(RegisterError::NotFinite)
        );
        assert_eq!(
            decode_value(&[1], U32, Big, 1.0, 0.0),
            Err(RegisterError::Short {
                expected: 2,
                got: 1
            })
        );
    }

    #[test]
    fn xy_md02_answer_gives_one_reading() {
        // XY-MD02 map: input registers 1 (temperature, i16 x0.1) and 2 (humidity, u16 x0.1).
        let mut t = entry(1, 4, 1, RegisterType::I16, "temperature");
        t.scale = 0.1;
        let mut h = entry(1, 4, 2, RegisterType::U16, "humidity");
        h.scale = 0.1;
        let plan = plan_requests(&[h.clone(), t.clone()]);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            (
                plan[0].slave,
                plan[0].function,
                plan[0].address,
                plan[0].count
            ),
            (1, 4, 1, 2)
        );
        let port = PortTags {
            sensor_id: Some("th-01".into()),
            tags: BTreeMap::from([("district".into(), "d1".into())]),
        };
        // -5.3 degC, 61.2 %
        let (readings, errors) = readings_from_answer(&plan[0], &[(-53i16) as u16, 612], &port, 9);
        assert!(errors.is_empty());
        assert_eq!(readings.len(), 1);
        let r = &readings[0];
        assert_eq!(r.measurement, "environment");
        assert_eq!(r.timestamp_ns, 9);
        assert_eq!(
            r.tags,
            BTreeMap::from([
                ("district".into(), "d1".into()),
                ("sensor_id".into(), "th-01".into())
            ])
        );
        assert_eq!(
            r.fields,
            BTreeMap::from([
                ("humidity".into(), FieldValue::Float(61.2)),
                ("temperature".into(), FieldValue::Float(-5.3)),
            ])
        );
    }

    #[test]
    fn plan_merges_only_adjacent_registers_of_the_same_slave_and_function() {
        let regs = vec![
            entry(2, 3, 10, RegisterType::F32, "a"),
            entry(1, 4, 1, RegisterType::U16, "b"),
            entry(2, 3, 12, RegisterType::U16, "c"),
            entry(2, 3, 20, RegisterType::U16, "d"),
            entry(2, 4, 13, RegisterType::U16, "e"),
            entry(1, 4, 2, RegisterType::U16, "f"),
        ];
        let plan: Vec<(u8, u8, u16, u16, usize)> = plan_requests(&regs)
            .iter()
            .map(|r| (r.slave, r.function, r.address, r.count, r.entries.len()))
            .collect();
        assert_eq!(
            plan,
            vec![
                (1, 4, 1, 2, 2),
                (2, 3, 10, 3, 2),
                (2, 3, 20, 1, 1),
                (2, 4, 13, 1, 1)
            ]
        );
    }

    #[test]
    fn crc16_matches_the_modbus_reference() {
        // "Read input registers 1..2 of slave 1" as sent by XY-MD02 tools: 01 04 00 01 00 02 20 0b
        assert_eq!(
            with_crc(vec![0x01, 0x04, 0x00, 0x01, 0x00, 0x02]),
            vec![0x01, 0x04, 0x00, 0x01, 0x00, 0x02, 0x20, 0x0b]
        );
        // Modbus spec example (read holding registers): 01 03 00 00 00 0a c5 cd
        assert_eq!(crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0a]), 0xcdc5);
    }

    #[test]
    fn unanswered_requests_are_classified() {
        let good = with_crc(vec![0x01, 0x04, 0x04, 0x00, 0xde, 0x02, 0x64]);
        let mut bad = good.clone();
        bad[3] ^= 1;
        assert_eq!(classify_unanswered(1, 4, &[]), ModbusFailure::Timeout);
        assert_eq!(classify_unanswered(1, 4, &bad), ModbusFailure::BadCrc);
        assert_eq!(classify_unanswered(2, 4, &bad), ModbusFailure::Garbled);
        assert_eq!(classify_unanswered(1, 4, &bad[..4]), ModbusFailure::Garbled);
        let mut exc = with_crc(vec![0x01, 0x84, 0x02]);
        exc[2] ^= 1;
        assert_eq!(classify_unanswered(1, 4, &exc), ModbusFailure::BadCrc);
    }

    proptest::proptest! {
        #[test]
        fn encode_then_decode_is_identity_for_integers(
            v in proptest::num::i32::ANY,
            little in proptest::bool::ANY,
        ) {
            let order = if little { WordOrder::Little } else { WordOrder::Big };
            let words = encode_value(f64::from(v), RegisterType::I32, order);
            proptest::prop_assert_eq!(decode_value(&words, RegisterType::I32, order, 1.0, 0.0), Ok(f64::from(v)));
            let u = v as u32;
            let words = encode_value(f64::from(u), RegisterType::U32, order);
            proptest::prop_assert_eq!(decode_value(&words, RegisterType::U32, order, 1.0, 0.0), Ok(f64::from(u)));
        }

        #[test]
        fn arbitrary_words_never_panic(words in proptest::collection::vec(proptest::num::u16::ANY, 0..4)) {
            for ty in [RegisterType::U16, RegisterType::I16, RegisterType::U32, RegisterType::I32, RegisterType::F32] {
                let _ = decode_value(&words, ty, WordOrder::Little, 0.1, 1.0);
            }
        }

        #[test]
        fn arbitrary_answers_never_panic_the_classifier(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = classify_unanswered(1, 4, &bytes);
        }
    }
}
