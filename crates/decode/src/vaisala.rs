//! Vaisala ultrasonic weather stations on poles: the WXT5xx family's ASCII data messages and the
//! WMT700's `$`-framed data messages, one protocol for both, told apart by their framing.
//!
//! Why it exists: a technician commissions a weather station from the config file alone; the
//! station's own units (knots, °F, inHg, …) must not leak into the store, so every value is
//! converted to the unit its field name states.
//!
//! # WXT5xx ASCII (WXT530 Series User Guide M211840EN, §7.2 "ASCII Protocol")
//!
//! `<address>R<n>,<Par>=<value><unit>,…` with `n` = 1 wind, 2 pressure/temperature/humidity,
//! 3 precipitation, 4 analog inputs, 5 supervisor, 0 the composite message (any parameters of
//! the others). The unit letter after each value is the station's unit (Table 18); `#` in its
//! place marks the value invalid, and that value is dropped (the rest of the message stays).
//! The same message in automatic mode or as the answer to a poll (`0R0`, `0R1`, …).
//!
//! | parameter | field | units accepted (letter) |
//! |---|---|---|
//! | `Dn`, `Dm`, `Dx` | `wind_dir_min_deg`, `wind_dir_avg_deg`, `wind_dir_max_deg` | degrees (`D`) |
//! | `Sn`, `Sm`, `Sx` | `wind_speed_min_ms`, `wind_speed_avg_ms`, `wind_speed_max_ms` | m/s (`M`), km/h (`K`), mph (`S`), knots (`N`) |
//! | `Ta` | `air_temp_c` | °C (`C`), °F (`F`) |
//! | `Tp` | `internal_temp_c` | °C, °F |
//! | `Ua` | `rh_pct` | %RH (`P`) |
//! | `Pa` | `pressure_hpa` | hPa (`H`), Pa (`P`), bar (`B`), mmHg (`M`), inHg (`I`) |
//! | `Rc` | `rain_mm` | mm (`M`), in (`I`) |
//! | `Rd` | `rain_duration_s` | s (`s`/`S`) |
//! | `Ri`, `Rp` | `rain_intensity_mmh`, `rain_peak_intensity_mmh` | mm/h (`M`), in/h (`I`) |
//! | `Hc` | `hail_hits_cm2` | hits/cm² (`M`), hits/in² (`I`) |
//! | `Hd` | `hail_duration_s` | s |
//! | `Hi`, `Hp` | `hail_intensity_hits_cm2h`, `hail_peak_intensity_hits_cm2h` | hits/cm²h (`M`), hits/in²h (`I`) |
//! | `Th` | `heater_temp_c` | °C, °F |
//! | `Vh` | `heater_voltage_v` | V (the letter is the heating state: `N`, `V`, `W`, `F`) |
//! | `Vs`, `Vr` | `supply_voltage_v`, `ref_voltage_v` | V (`V`) |
//!
//! A value with a unit letter not in the table is dropped (counted nowhere else: the message
//! still counts as good if anything remains); unknown parameters (`Id`, analog inputs) are
//! ignored. A message with nothing readable is *skipped*.
//!
//! # WMT700 (WMT700 Series User Guide M211095EN, "Data messages")
//!
//! `$<v1>,<v2>,…,<vn>,<hh>`: comma-separated values, then the checksum as two hex digits, the
//! 8-bit XOR of every byte from the `$` through the last comma. Message 25 (wind, sonic
//! temperature, status: 6 values) and message 24 (wind, sonic temperature, heater and supply
//! voltage, transducer temperature, status: 9 values) are recognised by their value count; a
//! station configured with a user-defined message (1..4) is read by listing its items in
//! `wmt700_items` (the codes of the `msg` command without the backslash):
//!
//! | item | field |
//! |---|---|
//! | `ws`, `wd` | `wind_speed_avg_ms`, `wind_dir_avg_deg` |
//! | `wp`, `wm` | `wind_speed_max_ms`, `wind_speed_min_ms` |
//! | `gu`, `lu` | `wind_speed_gust_ms`, `wind_speed_lull_ms` |
//! | `dm`, `dx` | `wind_dir_min_deg`, `wind_dir_max_deg` |
//! | `Ts` | `sonic_temp_c` |
//! | `vh`, `vi`, `ta` | `heater_voltage_v`, `supply_voltage_v`, `transducer_temp_c` |
//! | `er` | `status_code` (integer: the status flag bits) |
//!
//! Wind speeds are read as m/s (the WMT700's default `wndUnit`). A WMT700 reports missing data as
//! `999` (`Missing data` in the guide's status table): such values are dropped.
//!
//! Readings: measurement `weather` unless the port says otherwise; no time of their own (receipt
//! time).

use std::collections::BTreeMap;

use ioc_frames::text;
use ioc_model::{FieldValue, Reading};

use crate::text_line::{parse_decimal, BadLine, Framed, LineFramer, LineOutput};

/// What a port configures for its Vaisala readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VaisalaSpec {
    /// `weather` when `None`.
    pub measurement: Option<String>,
    pub sensor_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// The items of a user-defined WMT700 message, in order (`["ws", "wd", "gu", "lu"]`);
    /// empty: messages 24 and 25 by their value count.
    pub wmt700_items: Vec<String>,
}

/// The WMT700 item codes this decoder reads (see the module docs).
pub const WMT700_ITEMS: [&str; 13] = [
    "ws", "wd", "wp", "wm", "gu", "lu", "dm", "dx", "Ts", "vh", "vi", "ta", "er",
];

fn wmt700_field(item: &str) -> Option<&'static str> {
    Some(match item {
        "ws" => "wind_speed_avg_ms",
        "wd" => "wind_dir_avg_deg",
        "wp" => "wind_speed_max_ms",
        "wm" => "wind_speed_min_ms",
        "gu" => "wind_speed_gust_ms",
        "lu" => "wind_speed_lull_ms",
        "dm" => "wind_dir_min_deg",
        "dx" => "wind_dir_max_deg",
        "Ts" => "sonic_temp_c",
        "vh" => "heater_voltage_v",
        "vi" => "supply_voltage_v",
        "ta" => "transducer_temp_c",
        "er" => "status_code",
        _ => return None,
    })
}

const MESSAGE_25: [&str; 6] = ["ws", "wd", "wp", "wm", "Ts", "er"];
const MESSAGE_24: [&str; 9] = ["ws", "wd", "wp", "wm", "Ts", "vh", "vi", "ta", "er"];

/// A WXT5xx parameter's field and its value converted from the unit letter; `None` for a
/// parameter not read, `Some(Err(()))` for a unit letter it does not take (or `#`).
fn wxt_value(param: &[u8], value: f64, unit: u8) -> Option<Result<(&'static str, f64), ()>> {
    let speed = |v: f64| match unit {
        b'M' => Ok(v),
        b'K' => Ok(v / 3.6),
        b'S' => Ok(v * 0.44704),
        b'N' => Ok(v * 1852.0 / 3600.0),
        _ => Err(()),
    };
    let temperature = |v: f64| match unit {
        b'C' => Ok(v),
        b'F' => Ok((v - 32.0) * 5.0 / 9.0),
        _ => Err(()),
    };
    let per_cm2 = |v: f64| match unit {
        b'M' => Ok(v),
        b'I' => Ok(v / 6.4516),
        _ => Err(()),
    };
    let mm = |v: f64| match unit {
        b'M' => Ok(v),
        b'I' => Ok(v * 25.4),
        _ => Err(()),
    };
    let only = |letter: &[u8], v: f64| {
        if letter.contains(&unit) {
            Ok(v)
        } else {
            Err(())
        }
    };
    let (name, converted) = match param {
        b"Dn" => ("wind_dir_min_deg", only(b"D", value)),
        b"Dm" => ("wind_dir_avg_deg", only(b"D", value)),
        b"Dx" => ("wind_dir_max_deg", only(b"D", value)),
        b"Sn" => ("wind_speed_min_ms", speed(value)),
        b"Sm" => ("wind_speed_avg_ms", speed(value)),
        b"Sx" => ("wind_speed_max_ms", speed(value)),
        b"Ta" => ("air_temp_c", temperature(value)),
        b"Tp" => ("internal_temp_c", temperature(value)),
        b"Th" => ("heater_temp_c", temperature(value)),
        b"Ua" => ("rh_pct", only(b"P", value)),
        b"Pa" => (
            "pressure_hpa",
            match unit {
                b'H' => Ok(value),
                b'P' => Ok(value / 100.0),
                b'B' => Ok(value * 1000.0),
                b'M' => Ok(value * 1.333_223_874_15),
                b'I' => Ok(value * 33.863_886_666_7),
                _ => Err(()),
            },
        ),
        b"Rc" => ("rain_mm", mm(value)),
        b"Ri" => ("rain_intensity_mmh", mm(value)),
        b"Rp" => ("rain_peak_intensity_mmh", mm(value)),
        b"Rd" => ("rain_duration_s", only(b"sS", value)),
        b"Hd" => ("hail_duration_s", only(b"sS", value)),
        b"Hc" => ("hail_hits_cm2", per_cm2(value)),
        b"Hi" => ("hail_intensity_hits_cm2h", per_cm2(value)),
        b"Hp" => ("hail_peak_intensity_hits_cm2h", per_cm2(value)),
        b"Vh" => ("heater_voltage_v", only(b"NVWF", value)),
        b"Vs" => ("supply_voltage_v", only(b"V", value)),
        b"Vr" => ("ref_voltage_v", only(b"V", value)),
        _ => return None,
    };
    Some(converted.map(|v| (name, v)))
}

/// What one Vaisala line says.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// WXT5xx: the device address and message number (`"0R2"`); WMT700: `"wmt700"`.
    pub kind: String,
    pub fields: BTreeMap<&'static str, FieldValue>,
    /// Values dropped: `#` (invalid), a unit letter not accepted, `999` on a WMT700.
    pub dropped: usize,
}

/// Where a WXT5xx message starts in `line`: the last `<address>R<digit>,`.
fn wxt_start(line: &[u8]) -> Option<usize> {
    (0..line.len().saturating_sub(3)).rev().find(|&i| {
        line[i].is_ascii_alphanumeric()
            && line[i + 1] == b'R'
            && line[i + 2].is_ascii_digit()
            && line[i + 3] == b','
    })
}

/// Checks and reads one line (pure). As for NMEA, a line may carry garbage before the message;
/// the second value says what it was.
pub fn parse_line(
    line: &[u8],
    wmt700_items: &[String],
) -> (Result<Message, BadLine>, Option<BadLine>) {
    let dollar = line.iter().rposition(|&b| b == b'$');
    let wxt = wxt_start(line);
    let start = match (dollar, wxt) {
        (Some(d), Some(w)) => d.max(w),
        (Some(s), None) | (None, Some(s)) => s,
        (None, None) => return (Err(BadLine::Noise), None),
    };
    let prefix = &line[..start];
    let before = if prefix.iter().all(|b| b.is_ascii_whitespace()) {
        None
    } else if prefix.contains(&b'$') || wxt_start(prefix).is_some() || prefix.contains(&b',') {
        Some(BadLine::Truncated)
    } else {
        Some(BadLine::Noise)
    };
    let message = &line[start..];
    let parsed = if message.first() == Some(&b'$') {
        parse_wmt700(message, wmt700_items)
    } else {
        parse_wxt(message)
    };
    (parsed, before)
}

fn parse_wxt(message: &[u8]) -> Result<Message, BadLine> {
    let mut parts = message.trim_ascii_end().split(|&b| b == b',');
    let kind = parts.next().unwrap_or_default();
    let mut fields = BTreeMap::new();
    let mut dropped = 0;
    for part in parts {
        // The WXT530 guide prints some examples with a space after a comma.
        let part = part.trim_ascii();
        if part.is_empty() {
            continue;
        }
        let Some(eq) = part.iter().position(|&b| b == b'=') else {
            return Err(BadLine::Malformed);
        };
        let (param, rest) = (&part[..eq], &part[eq + 1..]);
        if param.len() != 2 || !param.iter().all(u8::is_ascii_alphabetic) {
            return Err(BadLine::Malformed);
        }
        if param == b"Id" {
            continue;
        }
        let Some((&unit, number)) = rest.split_last() else {
            return Err(BadLine::Malformed);
        };
        let Some(value) = parse_decimal(number) else {
            return Err(BadLine::Malformed);
        };
        match wxt_value(param, value, unit) {
            None => {}
            Some(Err(())) => dropped += 1,
            Some(Ok((name, v))) => {
                fields.insert(name, FieldValue::Float(v));
            }
        }
    }
    Ok(Message {
        kind: String::from_utf8_lossy(kind).into_owned(),
        fields,
        dropped,
    })
}

fn parse_wmt700(message: &[u8], items: &[String]) -> Result<Message, BadLine> {
    let message = message.trim_ascii_end();
    if message.contains(&b'*') {
        // `$..*hh`: an NMEA sentence (a WMT700 or WXT5xx in an NMEA profile), not read here.
        return Ok(Message {
            kind: "nmea".into(),
            fields: BTreeMap::new(),
            dropped: 0,
        });
    }
    let Some(last_comma) = message.iter().rposition(|&b| b == b',') else {
        return Err(BadLine::NoChecksum);
    };
    let covered = &message[..=last_comma];
    let digits = &message[last_comma + 1..];
    let Some(sum) = text::parse_hex2(digits) else {
        return Err(BadLine::NoChecksum);
    };
    if text::xor(covered) != sum {
        return Err(BadLine::Checksum);
    }
    let values: Vec<&[u8]> = message[1..last_comma].split(|&b| b == b',').collect();
    let layout: Vec<&str> = if !items.is_empty() {
        items.iter().map(String::as_str).collect()
    } else if values.len() == MESSAGE_25.len() {
        MESSAGE_25.to_vec()
    } else if values.len() == MESSAGE_24.len() {
        MESSAGE_24.to_vec()
    } else {
        return Err(BadLine::Malformed);
    };
    if layout.len() != values.len() {
        return Err(BadLine::Malformed);
    }
    let mut fields = BTreeMap::new();
    let mut dropped = 0;
    for (item, value) in layout.iter().zip(values) {
        let Some(name) = wmt700_field(item) else {
            continue;
        };
        let value = value.trim_ascii();
        let Some(v) = parse_decimal(value) else {
            return Err(BadLine::Malformed);
        };
        if name == "status_code" {
            fields.insert(name, FieldValue::Int(v as i64));
        } else if v >= 999.0 {
            dropped += 1;
        } else {
            fields.insert(name, FieldValue::Float(v));
        }
    }
    Ok(Message {
        kind: "wmt700".into(),
        fields,
        dropped,
    })
}

/// The streaming Vaisala decoder of one port.
#[derive(Debug, Clone)]
pub struct VaisalaDecoder {
    framer: LineFramer,
    spec: VaisalaSpec,
}

impl VaisalaDecoder {
    pub fn new(spec: VaisalaSpec, max_line_bytes: usize) -> Self {
        VaisalaDecoder {
            framer: LineFramer::new(max_line_bytes),
            spec,
        }
    }

    pub fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    /// Feeds bytes received at `received_ns` (the readings' time: the messages carry none).
    pub fn push(&mut self, bytes: &[u8], received_ns: i64, out: &mut LineOutput) {
        let spec = &self.spec;
        self.framer.push(bytes, |framed| match framed {
            Framed::TooLong => out.bad.push(BadLine::TooLong),
            Framed::Line(line) => {
                let (message, before) = parse_line(line, &spec.wmt700_items);
                if let Some(b) = before {
                    out.bad.push(b);
                }
                match message {
                    Err(bad) => out.bad.push(bad),
                    Ok(m) if m.fields.is_empty() => out.skipped += 1,
                    Ok(m) => {
                        out.good += 1;
                        out.readings.push(reading(spec, m, received_ns));
                    }
                }
            }
        });
    }

    /// The port went idle: an unfinished message is torn.
    pub fn flush(&mut self, out: &mut LineOutput) {
        if self.framer.flush() > 0 {
            out.bad.push(BadLine::Truncated);
        }
    }

    pub fn reset(&mut self) {
        self.framer.flush();
    }
}

fn reading(spec: &VaisalaSpec, m: Message, timestamp_ns: i64) -> Reading {
    let mut tags = spec.tags.clone();
    if let Some(id) = &spec.sensor_id {
        tags.insert("sensor_id".into(), id.clone());
    }
    Reading {
        measurement: spec.measurement.clone().unwrap_or_else(|| "weather".into()),
        tags,
        fields: m
            .fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        timestamp_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wxt(line: &str) -> Message {
        match parse_line(line.as_bytes(), &[]) {
            (Ok(m), None) => m,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn f(m: &Message, name: &str) -> f64 {
        match m.fields.get(name) {
            Some(FieldValue::Float(v)) => *v,
            other => panic!("{name}: {other:?} in {m:?}"),
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn wxt530_user_guide_examples() {
        // WXT530 Series User Guide M211840EN-D §7.2.4 (the guide prints "Sm=1.0M, Sx=2.2M"
        // with a space; kept): Dn 236°, Dm 283°, Dx 31°, Sn 0.0, Sm 1.0, Sx 2.2 m/s.
        let m = wxt("0R1,Dn=236D,Dm=283D,Dx=031D,Sn=0.0M,Sm=1.0M, Sx=2.2M");
        assert_eq!(m.kind, "0R1");
        close(f(&m, "wind_dir_min_deg"), 236.0);
        close(f(&m, "wind_dir_avg_deg"), 283.0);
        close(f(&m, "wind_dir_max_deg"), 31.0);
        close(f(&m, "wind_speed_min_ms"), 0.0);
        close(f(&m, "wind_speed_avg_ms"), 1.0);
        close(f(&m, "wind_speed_max_ms"), 2.2);
        // §7.2.5: Ta 23.6 °C, Ua 14.2 %RH, Pa 1026.6 hPa.
        let m = wxt("0R2,Ta=23.6C,Ua=14.2P,Pa=1026.6H");
        close(f(&m, "air_temp_c"), 23.6);
        close(f(&m, "rh_pct"), 14.2);
        close(f(&m, "pressure_hpa"), 1026.6);
        // §7.2.6 precipitation.
        let m = wxt("0R3,Rc=0.0M,Rd=0s,Ri=0.0M,Hc=0.0M,Hd=0s,Hi=0.0M,Rp=0.0M,Hp=0.0M");
        close(f(&m, "rain_mm"), 0.0);
        close(f(&m, "rain_duration_s"), 0.0);
        assert_eq!(m.fields.len(), 8);
        // §7.2.7 supervisor: Th 25.9 °C, Vh 12.0 (heating off), Vs 15.2 V, Vr 3.475 V; Id ignored.
        let m = wxt("0R5,Th=25.9C,Vh=12.0N,Vs=15.2V,Vr=3.475V,Id=HEL___");
        close(f(&m, "heater_temp_c"), 25.9);
        close(f(&m, "heater_voltage_v"), 12.0);
        close(f(&m, "supply_voltage_v"), 15.2);
        close(f(&m, "ref_voltage_v"), 3.475);
        // §7.2.8 combined message in °F: 74.6 °F.
        let m = wxt("0R2,Ta=74.6F,Ua=14.7P,Pa=1012.9H");
        close(f(&m, "air_temp_c"), (74.6 - 32.0) * 5.0 / 9.0);
        // §7.2.9 composite message (printed over two lines in the guide; one on the wire).
        let m = wxt("0R0,Dx=005D,Sx=2.8M,Ta=23.0C,Ua=30.0P,Pa=1028.2H,Rc=0.00M,Rd=10s,Th=23.6C");
        assert_eq!(m.kind, "0R0");
        close(f(&m, "wind_dir_max_deg"), 5.0);
        close(f(&m, "wind_speed_max_ms"), 2.8);
        close(f(&m, "air_temp_c"), 23.0);
        close(f(&m, "rh_pct"), 30.0);
        close(f(&m, "pressure_hpa"), 1028.2);
        close(f(&m, "rain_mm"), 0.0);
        close(f(&m, "rain_duration_s"), 10.0);
        close(f(&m, "heater_temp_c"), 23.6);
    }

    #[test]
    fn invalid_values_marked_hash_are_dropped() {
        // A WXT520 whose wind values are invalid, as logged in the weewx WXT5x0 driver
        // (marcov/weewx-wxt5x0 wxt5x0.py, comment in `Station.parse`): wind units are '#'.
        let m = wxt("0R0,Dn=000#,Dm=106#,Dx=182#,Sn=1.1#,Sm=4.0#,Sx=6.6#,Ta=16.0C,Ua=50.0P,Pa=1018.1H,Rc=0.00M,Rd=0s,Ri=0.0M,Hc=0.0M,Hd=0s,Hi=0.0M,Rp=0.0M,Hp=0.0M,Th=15.6C,Vh=0.0N,Vs=15.2V,Vr=3.498V,Id=Ant");
        assert_eq!(m.dropped, 6);
        assert!(!m.fields.keys().any(|k| k.starts_with("wind")));
        close(f(&m, "air_temp_c"), 16.0);
        close(f(&m, "pressure_hpa"), 1018.1);
    }

    #[test]
    fn units_are_converted_to_the_field_names_units() {
        let m = wxt("0R1,Sm=10.0K,Sx=10.0S,Sn=10.0N");
        close(f(&m, "wind_speed_avg_ms"), 10.0 / 3.6);
        close(f(&m, "wind_speed_max_ms"), 4.4704);
        close(f(&m, "wind_speed_min_ms"), 10.0 * 1852.0 / 3600.0);
        let m = wxt("0R2,Pa=101325P");
        close(f(&m, "pressure_hpa"), 1013.25);
        let m = wxt("0R2,Pa=1.01325B");
        close(f(&m, "pressure_hpa"), 1013.25);
        let m = wxt("0R3,Rc=1.00I");
        close(f(&m, "rain_mm"), 25.4);
    }

    #[test]
    fn published_station_log_lines() {
        // dwkennedy/wxt536 test.out (a WXT536 log), lines 1, 3, 5 and 14; line 2 is "dud line".
        let m = wxt("0R1,Dn=160D,Dm=182D,Dx=197D,Sn=3.0M,Sm=4.1M,Sx=5.8M");
        close(f(&m, "wind_speed_avg_ms"), 4.1);
        let m = wxt("0R3,Rc=0.01M,Rd=10s,Ri=0.6M,Hc=0.0M,Hd=0s,Hi=0.0M");
        close(f(&m, "rain_mm"), 0.01);
        close(f(&m, "rain_intensity_mmh"), 0.6);
        let m = wxt("0R5,Th=16.0C,Vh=14.1N,Vs=14.3V,Vr=3.621V");
        close(f(&m, "supply_voltage_v"), 14.3);
        let m = wxt("0R2,Ta=16.1C,Ua=79.3P,Pa=959.7H");
        close(f(&m, "pressure_hpa"), 959.7);
        assert_eq!(parse_line(b"dud line", &[]).0, Err(BadLine::Noise));
    }

    #[test]
    fn wmt700_messages_24_and_25_with_their_checksums() {
        // WMT700 Series User Guide M211095EN-K, "WMT700 data message 25": 3.22 m/s average,
        // 75.29°, max 3.38, min 3.07, sonic temperature 22.13 °C, status 0.
        let (m, before) = parse_line(b"$03.22,75.29,03.38,03.07,22.13,0,3E", &[]);
        assert_eq!(before, None);
        let m = m.unwrap();
        assert_eq!(m.kind, "wmt700");
        close(f(&m, "wind_speed_avg_ms"), 3.22);
        close(f(&m, "wind_dir_avg_deg"), 75.29);
        close(f(&m, "wind_speed_max_ms"), 3.38);
        close(f(&m, "wind_speed_min_ms"), 3.07);
        close(f(&m, "sonic_temp_c"), 22.13);
        assert_eq!(m.fields.get("status_code"), Some(&FieldValue::Int(0)));
        // "WMT700 data message 24" (WID513 User Guide M211676EN-G prints checksum 0B; the
        // "Checksum D4" in its legend is the older revision's): heater 23.8 V, supply 23.6 V,
        // transducer 23.8 °C.
        let m = parse_line(b"$03.45,76.03,03.58,03.37,21.97,23.8,23.6,23.8,0,0B", &[])
            .0
            .unwrap();
        close(f(&m, "sonic_temp_c"), 21.97);
        close(f(&m, "heater_voltage_v"), 23.8);
        close(f(&m, "supply_voltage_v"), 23.6);
        close(f(&m, "transducer_temp_c"), 23.8);
        // The same with the checksum the older revision printed: refused.
        assert_eq!(
            parse_line(b"$03.45,76.03,03.58,03.37,21.97,23.8,23.6,23.8,0,D4", &[]).0,
            Err(BadLine::Checksum)
        );
    }

    #[test]
    fn a_user_defined_wmt700_message_with_gust_and_lull() {
        let items: Vec<String> = ["ws", "wd", "gu", "lu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let body = b"$02.66,98.21,02.66,02.60,";
        let sum = text::hex2(text::xor(body));
        let mut line = body.to_vec();
        line.extend(sum);
        let m = parse_line(&line, &items).0.unwrap();
        close(f(&m, "wind_speed_gust_ms"), 2.66);
        close(f(&m, "wind_speed_lull_ms"), 2.60);
        // Without the items, four values are no known message.
        assert_eq!(parse_line(&line, &[]).0, Err(BadLine::Malformed));
    }

    #[test]
    fn the_decoder_frames_resyncs_and_counts() {
        let mut d = VaisalaDecoder::new(
            VaisalaSpec {
                sensor_id: Some("wx-1".into()),
                ..VaisalaSpec::default()
            },
            256,
        );
        let mut out = LineOutput::default();
        d.push(
            b"0R2,Ta=23.6C,Ua=14.2P,Pa=1026.6H\r\n\x00\xffgarbage0R1,Dm=283D,Sm=1.0M\n0R2,Ta=2",
            5,
            &mut out,
        );
        assert_eq!(out.good, 2);
        assert_eq!(out.bad, vec![BadLine::Noise]);
        assert_eq!(out.readings[0].measurement, "weather");
        assert_eq!(out.readings[1].timestamp_ns, 5);
        assert_eq!(
            out.readings[1].tags.get("sensor_id").map(String::as_str),
            Some("wx-1")
        );
        d.flush(&mut out);
        assert_eq!(out.bad, vec![BadLine::Noise, BadLine::Truncated]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
                let mut d = VaisalaDecoder::new(VaisalaSpec::default(), 512);
                let mut out = LineOutput::default();
                let cut = cut.min(bytes.len());
                d.push(&bytes[..cut], 1, &mut out);
                d.push(&bytes[cut..], 2, &mut out);
                d.flush(&mut out);
                for r in &out.readings {
                    prop_assert!(!r.fields.is_empty());
                }
            }

            #[test]
            fn every_accepted_wmt700_message_has_a_valid_checksum(
                values in prop::collection::vec("[0-9]{1,3}\\.[0-9]{2}", 6..=6),
                sum in any::<u8>(),
            ) {
                let mut line = format!("${},", values.join(",")).into_bytes();
                let good = text::xor(&line);
                line.extend(text::hex2(sum));
                let (m, _) = parse_line(&line, &[]);
                prop_assert_eq!(m.is_ok(), sum == good);
            }
        }
    }
}
