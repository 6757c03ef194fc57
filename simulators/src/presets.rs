//! The vendors' own payloads, sent as the vendors send them: `sensor-sim presets` and the demo
//! play the fixtures of the gateway's built-in presets (`platerecognizer`, `openalpr`,
//! `chirpstack`, `ttn`) over MQTT and as webhooks, with their times moved to now, and write the
//! readings the gateway must store into the manifest for `sensor-sim verify`.
//!
//! Why it exists: the presets are tested against these payloads in `ioc-decode`; this module
//! makes the same bytes go through the whole path (broker or HTTP input → buffer → store), the
//! way a camera's ALPR engine or a LoRaWAN network server would deliver them.
//!
//! One copy of each payload: the files of `crates/decode/tests/fixtures/presets/` are embedded
//! with `include_str!` (their sources are in that directory's README). The readings they must
//! give are written out here by hand ([`FIXTURES`]), from the mapping documented in the preset
//! modules and the README's preset table — never computed with the gateway's decoder, which is
//! what the end-to-end verdict checks.
//!
//! **Times.** The fixtures carry the times they were captured at (2014 … 2026), which a store
//! with a retention period or the gateway's `[limits] max_past_s` refuses. Each send therefore
//! moves every time of the payload by one offset (the latest time becomes the send's *anchor*,
//! "now" by default), keeping the offsets between them (an OpenALPR result 50 minutes before its
//! batch stays 50 minutes before). Only the values of the preset's time keys
//! ([`Preset::time_keys`]) are rewritten, in place, in the vendor's own notation (RFC 3339 with
//! `T` or a space, `Z`, an offset or none, the same number of fraction digits but at least 3;
//! epoch seconds stay seconds, milliseconds stay milliseconds); every other byte is as
//! published. Anchors are whole milliseconds (whole seconds for payloads with epoch seconds), and
//! a send never reuses a timestamp already given to the same series, so repeated sends are
//! distinct points in every store.

use std::collections::{BTreeMap, HashSet};

use thiserror::Error;

use crate::manifest::{Entry, Expect};

/// A gateway preset (`format = "…"` on an input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Preset {
    PlateRecognizer,
    OpenAlpr,
    ChirpStack,
    Ttn,
}

impl Preset {
    /// Every preset, in the order they are played.
    pub const ALL: [Preset; 4] = [
        Preset::PlateRecognizer,
        Preset::OpenAlpr,
        Preset::ChirpStack,
        Preset::Ttn,
    ];

    /// The `format` value of the gateway input that receives it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::PlateRecognizer => "platerecognizer",
            Preset::OpenAlpr => "openalpr",
            Preset::ChirpStack => "chirpstack",
            Preset::Ttn => "ttn",
        }
    }

    /// The preset named `name`.
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The path its webhooks are posted to (`[[inputs.http]] path`).
    pub fn webhook_path(self) -> &'static str {
        match self {
            Preset::PlateRecognizer => "/webhook/platerecognizer",
            Preset::OpenAlpr => "/webhook/openalpr",
            Preset::ChirpStack => "/webhook/chirpstack",
            Preset::Ttn => "/webhook/ttn",
        }
    }

    /// The MQTT topic filters of the gateway input that receives its MQTT messages.
    pub fn topic_filters(self) -> &'static [&'static str] {
        match self {
            Preset::PlateRecognizer => &["alpr/platerecognizer/+"],
            Preset::OpenAlpr => &["alpr/openalpr/+"],
            // every event type, so that join and status events arrive and are refused
            Preset::ChirpStack => &["application/+/device/+/event/+"],
            Preset::Ttn => &["v3/+/devices/+/up", "v3/+/devices/+/join"],
        }
    }

    /// The keys whose values are times, wherever they occur in the payload: those the preset's
    /// decoder reads (first ones listed), and the payload's other times, moved along so the
    /// payload stays consistent.
    pub fn time_keys(self) -> &'static [&'static str] {
        match self {
            // results[].timestamp, data.timestamp / timestamp; timestamp_local is the same instant
            Preset::PlateRecognizer => &["timestamp", "timestamp_local"],
            // results[].epoch_time, epoch_time, epoch_start (alpr_group); epoch_end
            Preset::OpenAlpr => &["epoch_time", "epoch_start", "epoch_end"],
            // time, else rxInfo[0].gwTime, else rxInfo[0].nsTime
            Preset::ChirpStack => &["time", "gwTime", "nsTime"],
            // uplink_message.received_at, else received_at; the gateways' and settings' times
            Preset::Ttn => &["received_at", "time"],
        }
    }
}

/// The static `camera` tag the gateway's `platerecognizer` inputs give readings whose payload
/// names no camera (a Snapshot API response with `"camera_id": null`).
pub const SNAPSHOT_CAMERA: &str = "pr-snapshot";
/// The static `camera` tag of the `openalpr` inputs (the cloud API response names no camera).
pub const OPENALPR_CLOUD_CAMERA: &str = "openalpr-cloud";

/// One reading a fixture must give (or, `stored: false`, the reading the gateway must refuse
/// to make of it).
#[derive(Debug)]
pub struct Expected {
    pub measurement: &'static str,
    /// The identifying tags (the gateway adds `gateway`).
    pub tags: &'static [(&'static str, &'static str)],
    /// The numeric fields with their exact values (strings and booleans are not checked).
    pub fields: &'static [(&'static str, f64)],
    /// The payload's time value this reading takes, as written in the fixture.
    pub time: &'static str,
    pub stored: bool,
}

/// One vendor payload and what the gateway must make of it.
#[derive(Debug)]
pub struct Fixture {
    /// File name in `crates/decode/tests/fixtures/presets/`.
    pub file: &'static str,
    pub preset: Preset,
    pub payload: &'static str,
    /// The MQTT topic the vendor (or, for plate engines, our relay convention) publishes it on.
    pub topic: &'static str,
    /// The query string of its webhook (ChirpStack's HTTP integration names the event type).
    pub webhook_query: &'static str,
    pub readings: &'static [Expected],
}

const PLATE: &str = "camera_event";
const LORAWAN: &str = "lorawan";

const CS_DOCS_DEVICE: &[(&str, &str)] = &[
    ("application", "Test application"),
    ("dev_eui", "0101010101010101"),
    ("device_name", "Test device"),
];
const TTN_DOCS_DEVICE: &[(&str, &str)] = &[
    ("application", "app1"),
    ("dev_eui", "0004a30b001c0530"),
    ("device_name", "dev1"),
];

macro_rules! fixture_text {
    ($file:literal) => {
        include_str!(concat!(
            "../../crates/decode/tests/fixtures/presets/",
            $file
        ))
    };
}

/// Every preset fixture, with the readings written out from the presets' documented mapping.
pub static FIXTURES: &[Fixture] = &[
    Fixture {
        file: "platerecognizer_stream_webhook.json",
        preset: Preset::PlateRecognizer,
        payload: fixture_text!("platerecognizer_stream_webhook.json"),
        topic: "alpr/platerecognizer/camera-1",
        webhook_query: "",
        readings: &[Expected {
            measurement: PLATE,
            tags: &[
                ("camera", "camera-1"),
                ("event_type", "plate"),
                ("label", "license_plate"),
                ("plate_index", "0"),
            ],
            fields: &[("score", 0.839)],
            time: "2021-09-29T05:56:13.606935Z",
            stored: true,
        }],
    },
    Fixture {
        file: "platerecognizer_snapshot_response.json",
        preset: Preset::PlateRecognizer,
        payload: fixture_text!("platerecognizer_snapshot_response.json"),
        topic: "alpr/platerecognizer/snapshot",
        webhook_query: "",
        readings: &[Expected {
            measurement: PLATE,
            tags: &[
                ("camera", SNAPSHOT_CAMERA),
                ("event_type", "plate"),
                ("label", "license_plate"),
                ("plate_index", "0"),
            ],
            fields: &[("score", 0.898)],
            time: "2021-10-11 05:43:58.514896",
            stored: true,
        }],
    },
    Fixture {
        file: "openalpr_alprd_results.json",
        preset: Preset::OpenAlpr,
        payload: fixture_text!("openalpr_alprd_results.json"),
        topic: "alpr/openalpr/1",
        webhook_query: "",
        readings: &[
            Expected {
                measurement: PLATE,
                tags: &[
                    ("camera", "1"),
                    ("event_type", "plate"),
                    ("label", "license_plate"),
                    ("plate_index", "0"),
                    ("site", "headquarters"),
                ],
                fields: &[("score", 77.130661 / 100.0)],
                time: "1402161050",
                stored: true,
            },
            Expected {
                measurement: PLATE,
                tags: &[
                    ("camera", "1"),
                    ("event_type", "plate"),
                    ("label", "license_plate"),
                    ("plate_index", "1"),
                    ("site", "headquarters"),
                ],
                fields: &[("score", 78.167984 / 100.0)],
                time: "1402158050",
                stored: true,
            },
        ],
    },
    Fixture {
        file: "openalpr_alprd_group.json",
        preset: Preset::OpenAlpr,
        payload: fixture_text!("openalpr_alprd_group.json"),
        topic: "alpr/openalpr/1414799424",
        webhook_query: "",
        readings: &[Expected {
            measurement: PLATE,
            tags: &[
                ("camera", "1414799424"),
                ("event_type", "plate"),
                ("label", "license_plate"),
                ("plate_index", "0"),
                ("site", "dimitar-video"),
            ],
            fields: &[("score", 92.075203 / 100.0)],
            time: "1448326208789",
            stored: true,
        }],
    },
    Fixture {
        file: "openalpr_cloud_results.json",
        preset: Preset::OpenAlpr,
        payload: fixture_text!("openalpr_cloud_results.json"),
        topic: "alpr/openalpr/cloud",
        webhook_query: "",
        readings: &[Expected {
            measurement: PLATE,
            tags: &[
                ("camera", OPENALPR_CLOUD_CAMERA),
                ("event_type", "plate"),
                ("label", "license_plate"),
                ("plate_index", "0"),
            ],
            fields: &[("score", 93.52496337890625 / 100.0)],
            time: "1583506775198",
            stored: true,
        }],
    },
    Fixture {
        file: "chirpstack_up_object.json",
        preset: Preset::ChirpStack,
        payload: fixture_text!("chirpstack_up_object.json"),
        topic: "application/0d1f6c2a-0000-4000-8000-000000000002/device/a84041000181c0de/event/up",
        webhook_query: "?event=up",
        readings: &[Expected {
            measurement: LORAWAN,
            tags: &[
                ("application", "Mappers"),
                ("dev_eui", "a84041000181c0de"),
                ("device_name", "tracker-1"),
            ],
            // the decoded object's numbers (fixFailed, inTrip, type are not numeric; manDown
            // is null), then the best gateway's rssi/snr (-95 beats -110), fCnt, fPort
            fields: &[
                ("accuracy", 4.2),
                ("altitude", 35.0),
                ("batV", 3.9),
                ("f_cnt", 42.0),
                ("f_port", 2.0),
                ("headingDeg", 90.0),
                ("latitude", 51.5072),
                ("longitude", -0.1276),
                ("rssi", -95.0),
                ("snr", 7.5),
                ("speedKmph", 12.0),
            ],
            time: "2026-10-09T16:43:50.700+00:00",
            stored: true,
        }],
    },
    Fixture {
        file: "chirpstack_up_docs.json",
        preset: Preset::ChirpStack,
        payload: fixture_text!("chirpstack_up_docs.json"),
        topic: "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/up",
        webhook_query: "?event=up",
        // no codec, so no `object`: refused as no_decoded_payload
        readings: &[Expected {
            measurement: LORAWAN,
            tags: CS_DOCS_DEVICE,
            fields: &[("f_port", 1.0), ("rssi", -36.0), ("snr", 10.5)],
            time: "2022-07-18T09:34:15.775023242+00:00",
            stored: false,
        }],
    },
    Fixture {
        file: "chirpstack_status_docs.json",
        preset: Preset::ChirpStack,
        payload: fixture_text!("chirpstack_status_docs.json"),
        topic:
            "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/status",
        webhook_query: "?event=status",
        readings: &[Expected {
            measurement: LORAWAN,
            tags: CS_DOCS_DEVICE,
            fields: &[],
            time: "2022-07-18T09:35:06.927172638+00:00",
            stored: false,
        }],
    },
    Fixture {
        file: "chirpstack_join_docs.json",
        preset: Preset::ChirpStack,
        payload: fixture_text!("chirpstack_join_docs.json"),
        topic:
            "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/join",
        webhook_query: "?event=join",
        readings: &[Expected {
            measurement: LORAWAN,
            tags: CS_DOCS_DEVICE,
            fields: &[],
            time: "2022-07-18T09:33:28.823500726+00:00",
            stored: false,
        }],
    },
    Fixture {
        file: "ttn_uplink_docs.json",
        preset: Preset::Ttn,
        payload: fixture_text!("ttn_uplink_docs.json"),
        topic: "v3/app1@tenant1/devices/dev1/up",
        webhook_query: "",
        readings: &[Expected {
            measurement: LORAWAN,
            tags: TTN_DOCS_DEVICE,
            // f_port is absent: 0
            fields: &[
                ("f_cnt", 1.0),
                ("f_port", 0.0),
                ("luminosity", 0.64),
                ("rssi", -35.0),
                ("snr", 5.0),
                ("temperature", 1.0),
            ],
            time: "2020-02-12T15:15:45.789585559Z",
            stored: true,
        }],
    },
    Fixture {
        file: "ttn_uplink_rs26x.json",
        preset: Preset::Ttn,
        payload: fixture_text!("ttn_uplink_rs26x.json"),
        topic: "v3/thingsboard-ttn-demo@ttn/devices/rs261-erik-internal/up",
        webhook_query: "",
        readings: &[Expected {
            measurement: LORAWAN,
            tags: &[
                ("application", "thingsboard-ttn-demo"),
                ("dev_eui", "0025ca00000017c2"),
                ("device_name", "rs261-erik-internal"),
            ],
            // the decoded payload's one number; its status strings are not numeric
            fields: &[
                ("Temperature", 21.83),
                ("f_cnt", 25.0),
                ("f_port", 1.0),
                ("rssi", -69.0),
                ("snr", 8.25),
            ],
            time: "2025-11-07T08:52:14.536109379Z",
            stored: true,
        }],
    },
    Fixture {
        file: "ttn_join_accept_docs.json",
        preset: Preset::Ttn,
        payload: fixture_text!("ttn_join_accept_docs.json"),
        topic: "v3/app1@tenant1/devices/dev1/join",
        webhook_query: "",
        readings: &[Expected {
            measurement: LORAWAN,
            tags: TTN_DOCS_DEVICE,
            fields: &[],
            time: "2020-02-17T07:49:09.935284891Z",
            stored: false,
        }],
    },
];

/// The fixtures of the given presets (all when `only` is empty), in [`FIXTURES`] order.
pub fn fixtures(only: &[Preset]) -> Vec<&'static Fixture> {
    FIXTURES
        .iter()
        .filter(|f| only.is_empty() || only.contains(&f.preset))
        .collect()
}

/// A real 16×16 JPEG (CPython's `Lib/test/imghdrdata/python.jpg`, see
/// `simulators/fixtures/README.md`): the snapshot Plate Recognizer posts beside its JSON.
pub const SNAPSHOT_JPEG: &[u8] = include_bytes!("../fixtures/snapshot.jpg");

/// Why a fixture's times could not be moved.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShiftError {
    #[error("{key:?} at byte {at} holds {value:?}, not a time")]
    NotATime {
        key: String,
        at: usize,
        value: String,
    },
    #[error("payload has no value for any of its time keys")]
    NoTimes,
    #[error("time {0:?} of an expected reading is not readable")]
    BadExpectedTime(String),
}

/// How a time is written in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notation {
    /// A quoted civil time: the character between date and clock (`T` or space), fraction
    /// digits, and the offset as written (`None`: no offset, read as UTC).
    Text {
        separator: char,
        fraction_digits: usize,
        offset: Offset,
    },
    /// An epoch number in seconds.
    EpochS,
    /// An epoch number in milliseconds.
    EpochMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offset {
    /// `Z` (or `z`).
    Zulu,
    /// `±HH:MM`, in minutes east of UTC.
    Minutes(i32),
    /// No offset (Plate Recognizer Snapshot's UTC `timestamp`).
    None,
}

/// One time value of a payload: Unix ns and how it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeValue {
    ns: i128,
    notation: Notation,
}

impl TimeValue {
    fn ms(&self) -> i64 {
        self.ns.div_euclid(1_000_000) as i64
    }
}

/// Reads a time value as written in a payload: the text of a JSON string (without quotes) or
/// a JSON number. Epoch numbers of 10^11 and more are milliseconds (10^11 s is the year 5138).
fn parse_time(raw: &str) -> Option<TimeValue> {
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        let n: i128 = raw.parse().ok()?;
        return Some(if n >= 100_000_000_000 {
            TimeValue {
                ns: n * 1_000_000,
                notation: Notation::EpochMs,
            }
        } else {
            TimeValue {
                ns: n * 1_000_000_000,
                notation: Notation::EpochS,
            }
        });
    }
    let b = raw.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let separator = b[10] as char;
    if separator != 'T' && separator != ' ' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| raw.get(r)?.parse::<u32>().ok();
    let date = time::Date::from_calendar_date(
        num(0..4)? as i32,
        time::Month::try_from(num(5..7)? as u8).ok()?,
        num(8..10)? as u8,
    )
    .ok()?;
    let clock =
        time::Time::from_hms(num(11..13)? as u8, num(14..16)? as u8, num(17..19)? as u8).ok()?;
    let mut rest = &raw[19..];
    let mut fraction_ns: i128 = 0;
    let mut fraction_digits = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!("{:0<9}", &f[..digits]);
        fraction_ns = padded.parse().ok()?;
        fraction_digits = digits;
        rest = &f[digits..];
    }
    let offset = match rest {
        "" => Offset::None,
        "Z" | "z" => Offset::Zulu,
        o => {
            let ob = o.as_bytes();
            if ob.len() != 6 || ob[3] != b':' || !(ob[0] == b'+' || ob[0] == b'-') {
                return None;
            }
            let h: i32 = o.get(1..3)?.parse().ok()?;
            let m: i32 = o.get(4..6)?.parse().ok()?;
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            Offset::Minutes(sign * (h * 60 + m))
        }
    };
    let local = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp_nanos();
    let offset_ns = match offset {
        Offset::Minutes(m) => i128::from(m) * 60_000_000_000,
        _ => 0,
    };
    Some(TimeValue {
        ns: local - offset_ns + fraction_ns,
        notation: Notation::Text {
            separator,
            fraction_digits,
            offset,
        },
    })
}

/// Writes Unix milliseconds in `notation` (a text time gets at least 3 fraction digits, so the
/// millisecond survives).
fn format_time(ms: i64, notation: Notation) -> String {
    match notation {
        Notation::EpochS => ms.div_euclid(1000).to_string(),
        Notation::EpochMs => ms.to_string(),
        Notation::Text {
            separator,
            fraction_digits,
            offset,
        } => {
            let minutes = match offset {
                Offset::Minutes(m) => m,
                _ => 0,
            };
            let local_ms = i128::from(ms) + i128::from(minutes) * 60_000;
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(local_ms * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let digits = fraction_digits.max(3);
            let fraction = format!("{:03}{}", ms.rem_euclid(1000), "0".repeat(digits - 3));
            let suffix = match offset {
                Offset::Zulu => "Z".to_owned(),
                Offset::None => String::new(),
                Offset::Minutes(m) => format!(
                    "{}{:02}:{:02}",
                    if m < 0 { '-' } else { '+' },
                    m.abs() / 60,
                    m.abs() % 60
                ),
            };
            format!(
                "{:04}-{:02}-{:02}{separator}{:02}:{:02}:{:02}.{fraction}{suffix}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
            )
        }
    }
}

/// Where a time value sits in a payload: the byte range of its token (a string's inside, without
/// quotes, or a number) and what it says.
#[derive(Debug, Clone, Copy)]
struct TimeToken {
    start: usize,
    end: usize,
    value: TimeValue,
}

/// Every value of one of `keys` in `payload` (a JSON text), in byte order. A key's value that is
/// `null` is skipped; anything else that is not a time is an error.
fn time_tokens(payload: &str, keys: &[&str]) -> Result<Vec<TimeToken>, ShiftError> {
    let bytes = payload.as_bytes();
    let mut out = Vec::new();
    for key in keys {
        let needle = format!("\"{key}\"");
        let mut from = 0;
        while let Some(i) = payload[from..].find(&needle) {
            let after_key = from + i + needle.len();
            from = after_key;
            let mut j = after_key;
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            if bytes.get(j) != Some(&b':') {
                continue; // the key's text inside a string value, not a member name
            }
            j += 1;
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            let (start, end) = if bytes.get(j) == Some(&b'"') {
                let close = payload[j + 1..]
                    .find('"')
                    .map_or(bytes.len(), |c| j + 1 + c);
                (j + 1, close)
            } else {
                let len = bytes[j..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'.' || **b == b'-')
                    .count();
                (j, j + len)
            };
            let raw = &payload[start..end];
            if raw == "null" {
                continue;
            }
            let value = parse_time(raw).ok_or_else(|| ShiftError::NotATime {
                key: (*key).to_owned(),
                at: start,
                value: raw.to_owned(),
            })?;
            out.push(TimeToken { start, end, value });
        }
    }
    out.sort_by_key(|t| t.start);
    Ok(out)
}

/// `payload` with every time of `keys` moved by `delta_ms` (on the millisecond grid), and the
/// latest original time in ms.
fn shift_times(payload: &str, keys: &[&str], delta_ms: i64) -> Result<String, ShiftError> {
    let tokens = time_tokens(payload, keys)?;
    let mut out = String::with_capacity(payload.len() + 64);
    let mut last = 0;
    for t in tokens {
        out.push_str(&payload[last..t.start]);
        out.push_str(&format_time(t.value.ms() + delta_ms, t.value.notation));
        last = t.end;
    }
    out.push_str(&payload[last..]);
    Ok(out)
}

/// The latest time of a fixture (ms) and its anchor resolution: 1000 ms when a time is in
/// epoch seconds, else 1 ms.
fn latest_and_resolution(f: &Fixture) -> Result<(i64, i64), ShiftError> {
    let tokens = time_tokens(f.payload, f.preset.time_keys())?;
    let latest = tokens
        .iter()
        .map(|t| t.value.ms())
        .max()
        .ok_or(ShiftError::NoTimes)?;
    let resolution = if tokens.iter().any(|t| t.value.notation == Notation::EpochS) {
        1000
    } else {
        1
    };
    Ok((latest, resolution))
}

/// Where the times of the payloads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMode {
    /// Each send's latest time is the moment it is sent (the default).
    Now,
    /// The first send's latest time is this Unix-ms instant; later sends follow the wall clock.
    At(i64),
    /// The fixtures' own times, unchanged (for stores without a retention limit; times finer
    /// than a millisecond then reach InfluxDB off the millisecond grid that `verify` reads).
    Fixture,
}

impl TimeMode {
    /// `now`, `fixture`, or an RFC 3339 UTC instant.
    pub fn parse(text: &str) -> Result<TimeMode, String> {
        match text {
            "now" => Ok(TimeMode::Now),
            "fixture" => Ok(TimeMode::Fixture),
            t => crate::civil_time::parse_rfc3339_ms(t)
                .map(TimeMode::At)
                .map_err(|e| e.to_string()),
        }
    }
}

/// One payload ready to send, and the manifest entries it stands for.
#[derive(Debug, Clone)]
pub struct PresetSend {
    pub fixture: &'static Fixture,
    pub payload: String,
    pub entries: Vec<Entry>,
}

/// Series timestamps given out are remembered this long (longer than any offset inside a
/// fixture), then forgotten, so a demo that runs for days stays bounded.
const REMEMBER_MS: i64 = 6 * 3_600_000;

/// Gives each send its times: anchors that never give one series the same timestamp twice.
#[derive(Debug)]
pub struct Planner {
    mode: TimeMode,
    /// `(measurement + tags, ms)` already given out.
    used: HashSet<(String, i64)>,
    /// The first `now` seen (for [`TimeMode::At`]).
    first_now: Option<i64>,
    last_prune: i64,
}

impl Planner {
    pub fn new(mode: TimeMode) -> Self {
        Planner {
            mode,
            used: HashSet::new(),
            first_now: None,
            last_prune: i64::MIN,
        }
    }

    /// The payload and entries of one send of `f` at wall-clock `now_ms`.
    pub fn plan(&mut self, f: &'static Fixture, now_ms: i64) -> Result<PresetSend, ShiftError> {
        let (latest, resolution) = latest_and_resolution(f)?;
        let first = *self.first_now.get_or_insert(now_ms);
        let wanted = match self.mode {
            TimeMode::Fixture => {
                let entries = entries_at(f, 0)?;
                return Ok(PresetSend {
                    fixture: f,
                    payload: f.payload.to_owned(),
                    entries,
                });
            }
            TimeMode::Now => now_ms,
            TimeMode::At(start) => start + (now_ms - first),
        };
        // whole seconds for epoch-second payloads, rounded up
        let mut anchor = wanted.div_euclid(resolution) * resolution;
        if anchor < wanted {
            anchor += resolution;
        }
        let entries = loop {
            let entries = entries_at(f, anchor - latest)?;
            if entries
                .iter()
                .all(|e| !self.used.contains(&(series_key(e), e.ts)))
            {
                break entries;
            }
            anchor += resolution;
        };
        for e in &entries {
            self.used.insert((series_key(e), e.ts));
        }
        if now_ms.saturating_sub(self.last_prune) > REMEMBER_MS / 6 {
            let horizon = anchor - REMEMBER_MS;
            self.used.retain(|(_, ts)| *ts >= horizon);
            self.last_prune = now_ms;
        }
        let payload = shift_times(f.payload, f.preset.time_keys(), anchor - latest)?;
        Ok(PresetSend {
            fixture: f,
            payload,
            entries,
        })
    }
}

fn series_key(e: &Entry) -> String {
    let mut k = e.m.clone();
    for (tk, tv) in &e.t {
        k.push(',');
        k.push_str(tk);
        k.push('=');
        k.push_str(tv);
    }
    k
}

/// The manifest entries of `f` with its times moved by `delta_ms`.
fn entries_at(f: &Fixture, delta_ms: i64) -> Result<Vec<Entry>, ShiftError> {
    f.readings
        .iter()
        .map(|r| {
            let t = parse_time(r.time).ok_or_else(|| ShiftError::BadExpectedTime(r.time.into()))?;
            Ok(Entry {
                m: r.measurement.to_owned(),
                t: r.tags
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ts: t.ms() + delta_ms,
                f: r.fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect::<BTreeMap<_, _>>(),
                x: if r.stored {
                    Expect::Stored
                } else {
                    Expect::Rejected
                },
                fault: None,
                resent: false,
            })
        })
        .collect()
}

/// The boundary of the multipart bodies (any string absent from the parts will do).
pub const MULTIPART_BOUNDARY: &str = "------------------------sensorsim5f3a9c1e";

/// A Plate Recognizer webhook with its image, as Stream and Snapshot send it: the JSON as the
/// form field `json`, the snapshot as the file part `upload` (the receivers Plate Recognizer
/// publishes read `request.form["json"]`: github parkpow/deep-license-plate-recognition,
/// `webhooks/webhook_reader_flask.py`).
pub fn plate_recognizer_form(json: &str, jpeg: &[u8]) -> Vec<u8> {
    let b = MULTIPART_BOUNDARY;
    let mut body = Vec::with_capacity(json.len() + jpeg.len() + 400);
    body.extend_from_slice(
        format!("--{b}\r\nContent-Disposition: form-data; name=\"json\"\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(json.as_bytes());
    body.extend_from_slice(
        format!(
            "\r\n--{b}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"snapshot.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(jpeg);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    body
}

/// The content type and body of a fixture's webhook.
pub fn webhook_body(send: &PresetSend) -> (String, Vec<u8>) {
    match send.fixture.preset {
        Preset::PlateRecognizer => (
            format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
            plate_recognizer_form(&send.payload, SNAPSHOT_JPEG),
        ),
        _ => (
            "application/json".to_owned(),
            send.payload.as_bytes().to_vec(),
        ),
    }
}

/// The MQTT message of one send (all its entries recorded on the broker's PUBACK).
pub fn mqtt_message(send: PresetSend, device: usize) -> crate::models::Message {
    let mut entries = send.entries.into_iter();
    // every fixture expects at least one reading (checked by the tests)
    let first = entries.next().unwrap_or_else(|| Entry {
        m: String::new(),
        t: BTreeMap::new(),
        ts: 0,
        f: BTreeMap::new(),
        x: Expect::Unchecked,
        fault: None,
        resent: false,
    });
    crate::models::Message {
        topic: send.fixture.topic.to_owned(),
        payload: send.payload.into_bytes(),
        device,
        due_ms: first.ts,
        entry: first,
        also: entries.collect(),
        burst: false,
    }
}

/// Waits until item `n` of a stream of `rate` items per second (0: unpaced) begun at `started`
/// is due, in steps of at most 100 ms; false if `stop` was set meanwhile. The payloads are
/// planned after the wait, so their times are the moment they go out.
pub fn wait_turn(
    started: std::time::Instant,
    n: u64,
    rate: f64,
    stop: &std::sync::atomic::AtomicBool,
) -> bool {
    use std::sync::atomic::Ordering;
    if rate > 0.0 {
        let due = std::time::Duration::from_secs_f64(n as f64 / rate);
        while let Some(wait) = due.checked_sub(started.elapsed()) {
            if wait.is_zero() || stop.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(wait.min(std::time::Duration::from_millis(100)));
        }
    }
    !stop.load(Ordering::Acquire)
}

/// Wall-clock Unix milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The gateway inputs that receive what `sensor-sim presets` sends: one MQTT input per preset
/// on `mqtt_url` (client ids `<client_prefix>-<preset>`), and, with `webhook_listen`, one HTTP
/// input on that address for each of `webhook_presets` (all when empty), with `token_env` when
/// given. The `camera` tags stand in
/// for payloads that name no camera ([`SNAPSHOT_CAMERA`], [`OPENALPR_CLOUD_CAMERA`]).
pub fn gateway_inputs(
    mqtt_url: Option<&str>,
    client_prefix: &str,
    webhook_listen: Option<&str>,
    webhook_presets: &[Preset],
    token_env: Option<&str>,
) -> String {
    let mut out = String::new();
    let tags = |p: Preset| match p {
        Preset::PlateRecognizer => format!("tags = {{ camera = \"{SNAPSHOT_CAMERA}\" }}\n"),
        Preset::OpenAlpr => format!("tags = {{ camera = \"{OPENALPR_CLOUD_CAMERA}\" }}\n"),
        _ => String::new(),
    };
    let priority = |p: Preset| match p {
        Preset::PlateRecognizer | Preset::OpenAlpr => "priority = \"urgent\"\n",
        _ => "",
    };
    if let Some(url) = mqtt_url {
        for p in Preset::ALL {
            let topics: Vec<String> = p.topic_filters().iter().map(|t| format!("{t:?}")).collect();
            out.push_str(&format!(
                "[[inputs.mqtt]]\nname = \"{name}-mqtt\"\nurl = \"{url}\"\nclient_id = \"{client_prefix}-{name}\"\ntopics = [{topics}]\nformat = \"{name}\"\n{tags}{priority}\n",
                name = p.name(),
                topics = topics.join(", "),
                tags = tags(p),
                priority = priority(p),
            ));
        }
    }
    if let Some(listen) = webhook_listen {
        for p in Preset::ALL {
            if !(webhook_presets.is_empty() || webhook_presets.contains(&p)) {
                continue;
            }
            let token = token_env
                .map(|v| format!("token_env = \"{v}\"\n"))
                .unwrap_or_default();
            out.push_str(&format!(
                "[[inputs.http]]\nname = \"{name}-webhook\"\nlisten = \"{listen}\"\npath = \"{path}\"\nformat = \"{name}\"\n{tags}{priority}{token}\n",
                name = p.name(),
                path = p.webhook_path(),
                tags = tags(p),
                priority = priority(p),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_notations_round_trip() {
        for (raw, ns) in [
            ("2021-09-29T05:56:13.606935Z", 1_632_894_973_606_935_000i128),
            (
                "2021-09-29 05:56:13.606935+00:00",
                1_632_894_973_606_935_000,
            ),
            ("2021-10-11 05:43:58.514896", 1_633_931_038_514_896_000),
            ("2026-10-09T16:43:50.700+00:00", 1_791_564_230_700_000_000),
            ("2026-10-09T18:43:50.700+02:00", 1_791_564_230_700_000_000),
            ("2020-02-12T15:15:45.789585559Z", 1_581_520_545_789_585_559),
            ("1402161050", 1_402_161_050_000_000_000),
            ("1448326208789", 1_448_326_208_789_000_000),
        ] {
            let t = parse_time(raw).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(t.ns, ns, "{raw}");
        }
        for bad in [
            "",
            "yesterday",
            "2021-13-01T00:00:00Z",
            "2021-01-01T00:00:00+0100",
            "12a",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        let ms = 1_796_236_800_123; // 2026-12-02T18:40:00.123Z
        let cases = [
            ("2021-09-29T05:56:13.606935Z", "2026-12-02T18:40:00.123000Z"),
            (
                "2021-09-29 05:56:13.606935+00:00",
                "2026-12-02 18:40:00.123000+00:00",
            ),
            ("2021-10-11 05:43:58.514896", "2026-12-02 18:40:00.123000"),
            (
                "2026-10-09T18:43:50.7+02:00",
                "2026-12-02T20:40:00.123+02:00",
            ),
            (
                "2020-02-12T15:15:45.789585559Z",
                "2026-12-02T18:40:00.123000000Z",
            ),
            ("2020-02-12T15:15:45Z", "2026-12-02T18:40:00.123Z"),
            ("1402161050", "1796236800"),
            ("1448326208789", "1796236800123"),
        ];
        for (raw, want) in cases {
            let t = parse_time(raw).unwrap();
            let text = format_time(ms, t.notation);
            assert_eq!(text, want, "{raw}");
            let back = parse_time(&text).unwrap();
            let grid = if t.notation == Notation::EpochS {
                1000
            } else {
                1
            };
            assert_eq!(back.ms(), ms / grid * grid, "{raw}");
            let written = match t.notation {
                Notation::Text {
                    separator,
                    fraction_digits,
                    offset,
                } => Notation::Text {
                    separator,
                    fraction_digits: fraction_digits.max(3),
                    offset,
                },
                n => n,
            };
            assert_eq!(back.notation, written, "{raw}");
        }
    }

    #[test]
    fn every_expected_time_is_one_of_its_payload_times() {
        for f in FIXTURES {
            assert!(!f.readings.is_empty(), "{}", f.file);
            let tokens = time_tokens(f.payload, f.preset.time_keys()).unwrap();
            for r in f.readings {
                assert!(
                    tokens.iter().any(|t| &f.payload[t.start..t.end] == r.time),
                    "{}: {} is not a time the payload holds",
                    f.file,
                    r.time
                );
            }
        }
    }

    #[test]
    fn shifting_moves_only_the_time_values_and_keeps_their_offsets() {
        let f = FIXTURES
            .iter()
            .find(|f| f.file == "chirpstack_up_object.json")
            .unwrap();
        let now = 1_796_236_800_000;
        let send = Planner::new(TimeMode::Now).plan(f, now).unwrap();
        // the latest time (nsTime …50.731) is the anchor; time …50.700 is 31 ms before it
        assert_eq!(send.entries[0].ts, now - 31);
        assert!(send
            .payload
            .contains(r#""time": "2026-12-02T18:39:59.969+00:00""#));
        assert_eq!(
            send.payload
                .matches(r#""gwTime": "2026-12-02T18:39:59.981Z""#)
                .count(),
            2
        );
        assert_eq!(
            send.payload
                .matches(r#""nsTime": "2026-12-02T18:40:00.000Z""#)
                .count(),
            2
        );
        // everything else byte for byte
        let strip = |s: &str| -> String {
            s.lines()
                .filter(|l| !(l.contains("\"time\"") || l.contains("Time\"")))
                .collect()
        };
        assert_eq!(strip(&send.payload), strip(f.payload));
        let parsed: serde_json::Value = serde_json::from_str(&send.payload).unwrap();
        assert_eq!(parsed["deviceInfo"]["devEui"], "a84041000181c0de");

        // an OpenALPR batch: seconds stay seconds, the second result stays 3000 s earlier
        let f = FIXTURES
            .iter()
            .find(|f| f.file == "openalpr_alprd_results.json")
            .unwrap();
        let send = Planner::new(TimeMode::Now).plan(f, now + 400).unwrap();
        let ts: Vec<i64> = send.entries.iter().map(|e| e.ts).collect();
        assert_eq!(ts, vec![now + 1000, now + 1000 - 3_000_000]);
        assert!(send.payload.contains(r#""epoch_time": 1796236801,"#));
        assert!(send.payload.contains(r#""epoch_time": 1796233801,"#));
    }

    #[test]
    fn repeated_sends_never_reuse_a_series_timestamp() {
        let mut planner = Planner::new(TimeMode::Now);
        let now = 1_796_236_800_000;
        let mut seen = HashSet::new();
        for round in 0..5 {
            for f in FIXTURES {
                // the same wall-clock millisecond for every send of a round
                let send = planner.plan(f, now + round).unwrap();
                for e in send.entries {
                    assert!(
                        seen.insert((series_key(&e), e.ts)),
                        "{} reused {} at {}",
                        f.file,
                        series_key(&e),
                        e.ts
                    );
                    assert!(e.ts <= now + 10_000, "{}: {} far ahead", f.file, e.ts);
                }
            }
        }
    }

    #[test]
    fn fixed_start_follows_the_wall_clock_and_fixture_mode_changes_nothing() {
        let f = &FIXTURES[0];
        let start = 1_700_000_000_000;
        let mut planner = Planner::new(TimeMode::At(start));
        let a = planner.plan(f, 5_000).unwrap();
        let b = planner.plan(f, 7_500).unwrap();
        assert_eq!(a.entries[0].ts, start);
        assert_eq!(b.entries[0].ts, start + 2_500);
        assert!(a
            .payload
            .contains("\"timestamp\": \"2023-11-14T22:13:20.000000Z\""));
        let same = Planner::new(TimeMode::Fixture).plan(f, 5_000).unwrap();
        assert_eq!(same.payload, f.payload);
        assert_eq!(same.entries[0].ts, 1_632_894_973_606);
        assert_eq!(TimeMode::parse("now"), Ok(TimeMode::Now));
        assert_eq!(TimeMode::parse("fixture"), Ok(TimeMode::Fixture));
        assert_eq!(
            TimeMode::parse("2023-11-14T22:13:20Z"),
            Ok(TimeMode::At(start))
        );
        assert!(TimeMode::parse("soon").is_err());
    }

    #[test]
    fn manifest_entries_are_written_out() {
        let f = FIXTURES
            .iter()
            .find(|f| f.file == "ttn_uplink_docs.json")
            .unwrap();
        let now = 1_796_236_800_000;
        let send = Planner::new(TimeMode::Now).plan(f, now).unwrap();
        // the latest time is the top-level received_at (…46.014), the uplink's 225 ms before
        assert_eq!(
            send.entries[0].to_line(),
            format!(
                "{{\"m\":\"lorawan\",\"t\":{{\"application\":\"app1\",\"dev_eui\":\"0004a30b001c0530\",\"device_name\":\"dev1\"}},\"ts\":{},\"f\":{{\"f_cnt\":1.0,\"f_port\":0.0,\"luminosity\":0.64,\"rssi\":-35.0,\"snr\":5.0,\"temperature\":1.0}},\"x\":\"stored\"}}\n",
                now - 225
            )
        );
        let join = FIXTURES
            .iter()
            .find(|f| f.file == "ttn_join_accept_docs.json")
            .unwrap();
        let send = Planner::new(TimeMode::Now).plan(join, now).unwrap();
        assert_eq!(send.entries[0].x, Expect::Rejected);
    }

    /// The readings written out here agree with what the gateway's decoder makes of the shifted
    /// payloads (two independent statements of one mapping; neither is computed from the other).
    #[test]
    fn the_written_out_readings_agree_with_the_decoder() {
        use ioc_decode::payload::{PayloadDecoder, PayloadFormat, PayloadSpec};
        use ioc_model::FieldValue;
        let mut planner = Planner::new(TimeMode::Now);
        for (i, f) in FIXTURES.iter().enumerate() {
            let send = planner.plan(f, 1_796_236_800_000 + i as i64).unwrap();
            let format = match f.preset {
                Preset::PlateRecognizer => PayloadFormat::PlateRecognizer,
                Preset::OpenAlpr => PayloadFormat::OpenAlpr,
                Preset::ChirpStack => PayloadFormat::ChirpStack,
                Preset::Ttn => PayloadFormat::Ttn,
            };
            let mut spec = PayloadSpec {
                format,
                ..Default::default()
            };
            match f.preset {
                Preset::PlateRecognizer => {
                    spec.tags.insert("camera".into(), SNAPSHOT_CAMERA.into());
                }
                Preset::OpenAlpr => {
                    spec.tags
                        .insert("camera".into(), OPENALPR_CLOUD_CAMERA.into());
                }
                _ => {}
            }
            let decoded = PayloadDecoder::new(&spec)
                .unwrap_or_else(|e| panic!("{}: {e}", f.file))
                .decode(f.topic, send.payload.as_bytes(), 0);
            let stored: Vec<&Entry> = send
                .entries
                .iter()
                .filter(|e| e.x == Expect::Stored)
                .collect();
            assert_eq!(decoded.readings.len(), stored.len(), "{}", f.file);
            if stored.is_empty() {
                assert!(!decoded.rejected.is_empty(), "{}", f.file);
            }
            for (r, e) in decoded.readings.iter().zip(stored) {
                assert_eq!(r.measurement, e.m, "{}", f.file);
                assert_eq!(r.tags, e.t, "{}", f.file);
                assert_eq!(r.timestamp_ns, e.ts * 1_000_000, "{}", f.file);
                let numeric: BTreeMap<String, f64> = r
                    .fields
                    .iter()
                    .filter_map(|(k, v)| match v {
                        FieldValue::Float(x) => Some((k.clone(), *x)),
                        FieldValue::Int(x) => Some((k.clone(), *x as f64)),
                        FieldValue::UInt(x) => Some((k.clone(), *x as f64)),
                        _ => None,
                    })
                    .collect();
                // serde_json (without `float_roundtrip`) may read a long decimal a ULP off, as
                // the preset's own test notes; `verify` compares with a 1e-9 relative tolerance
                assert_eq!(
                    numeric.keys().collect::<Vec<_>>(),
                    e.f.keys().collect::<Vec<_>>(),
                    "{}",
                    f.file
                );
                for (k, want) in &e.f {
                    let got = numeric[k];
                    assert!(
                        (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                        "{} {k}: decoder {got}, written {want}",
                        f.file
                    );
                }
            }
        }
    }

    #[test]
    fn plate_recognizer_form_has_the_json_and_the_jpeg() {
        let body = plate_recognizer_form("{\"a\":1}", SNAPSHOT_JPEG);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!(
            "--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name=\"json\"\r\n\r\n{{\"a\":1}}\r\n"
        )));
        assert!(text.ends_with(&format!("\r\n--{MULTIPART_BOUNDARY}--\r\n")));
        assert!(SNAPSHOT_JPEG.starts_with(&[0xff, 0xd8, 0xff]));
        assert!(body
            .windows(SNAPSHOT_JPEG.len())
            .any(|w| w == SNAPSHOT_JPEG));
    }

    #[test]
    fn gateway_inputs_parse_as_toml() {
        let text = gateway_inputs(
            Some("mqtt://127.0.0.1:1883"),
            "gw",
            Some("127.0.0.1:8181"),
            &[],
            Some("HOOK_TOKEN"),
        );
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["inputs"]["mqtt"].as_array().unwrap().len(), 4);
        assert_eq!(v["inputs"]["http"].as_array().unwrap().len(), 4);
        assert_eq!(
            v["inputs"]["http"][3]["path"].as_str(),
            Some("/webhook/ttn")
        );
        let plates = gateway_inputs(
            None,
            "gw",
            Some("127.0.0.1:8181"),
            &[Preset::PlateRecognizer, Preset::OpenAlpr],
            None,
        );
        let v: toml::Value = toml::from_str(&plates).unwrap();
        assert!(v["inputs"].get("mqtt").is_none());
        let paths: Vec<&str> = v["inputs"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/webhook/platerecognizer", "/webhook/openalpr"]);
    }
}
