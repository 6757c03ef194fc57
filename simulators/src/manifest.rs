//! The manifest: what the broker acknowledged, one JSON object per line, for `verify`.
//!
//! Line 1 is a header (`{"header":{...}}`); every other line is one [`Entry`]:
//! `{"m":"environment","t":{"district":"d1","sensor_id":"env-0001"},"ts":1795480200000,
//!   "f":{"humidity":71.2,"noise_db":58.1,"pm10":31.4,"pm2_5":19.8,"temperature":26.41},"x":"stored"}`
//! — measurement, the identifying tags (as the gateway derives them from topic and payload),
//! timestamp in Unix milliseconds, each numeric field, and what the store should show
//! (`stored`, `rejected` for payloads the gateway must refuse, `unchecked` where the store
//! mapping is the gateway's choice, e.g. camera events). `fault` names an injected fault.
//! Serial streams (`sensor-sim serial --manifest`) carry no timestamps of their own, so their
//! entries use `in_order`, `maybe_in_order` and `rejected_in_order`, checked by value sequence
//! per series (see [`Expect`]).
//! An entry is written only once the broker acknowledged the message (QoS 1: on PUBACK;
//! QoS 0: when the packet was handed to the socket, which is all QoS 0 can promise).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What the store should show for a manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Exactly one point per field with these tags, timestamp and values.
    Stored,
    /// Nothing: the gateway must reject the payload.
    Rejected,
    /// Not checked by `verify` (the store mapping is not fixed by this tool).
    Unchecked,
    /// Serial readings, stamped by the gateway when the frame arrives: exactly once in the
    /// store, in the order of the manifest within its series (measurement + tags); `ts` is
    /// when the simulator wrote the bytes, and the store's time must be within a second or two.
    InOrder,
    /// Like `in_order`, but may be absent (a fault the gateway may or may not get past, such as
    /// noise before a Modbus answer or an answer that comes late).
    MaybeInOrder,
    /// Serial bytes the gateway must not store (corrupt or truncated frame, bad CRC, exception,
    /// no answer). Names its series, so that any point in it that no `in_order` or
    /// `maybe_in_order` entry explains counts as leaked.
    RejectedInOrder,
}

/// An injected fault, as recorded in the manifest and counted in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Payload is not valid JSON.
    MalformedJson,
    /// A field is the bare token `NaN`.
    NanToken,
    /// Second copy of the previous message.
    Duplicate,
    /// Published after the same device's next message.
    OutOfOrder,
    /// The device's clock is off by the scenario's `clock_skew_s`.
    ClockSkew,
    /// Published inside a burst that ignores the rate limit.
    Burst,
    /// Serial: garbage bytes before the frame or answer.
    Noise,
    /// Serial: a data byte changed, the frame's checksum left as it was.
    Checksum,
    /// Serial: the frame cut short.
    Truncate,
    /// Modbus: the answer's CRC is wrong.
    BadCrc,
    /// Modbus: the slave did not answer.
    Timeout,
    /// Modbus: an exception instead of the registers.
    Exception,
    /// Modbus: the answer came late.
    Slow,
    /// NMEA: the receiver said it had no fix (RMC status `V`, GGA quality 0): no position.
    NoFix,
    /// Vaisala: values marked invalid (`#`, `999`), which the gateway must drop.
    Invalid,
    /// NMEA: a VTG (no time of its own) after faulted fix sentences: no fix time to put it at.
    NoTime,
}

impl FaultKind {
    /// The snake_case name used in the manifest and the summary.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::MalformedJson => "malformed_json",
            FaultKind::NanToken => "nan_token",
            FaultKind::Duplicate => "duplicate",
            FaultKind::OutOfOrder => "out_of_order",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::Burst => "burst",
            FaultKind::Noise => "noise",
            FaultKind::Checksum => "checksum",
            FaultKind::Truncate => "truncate",
            FaultKind::BadCrc => "bad_crc",
            FaultKind::Timeout => "timeout",
            FaultKind::Exception => "exception",
            FaultKind::Slow => "slow",
            FaultKind::NoFix => "no_fix",
            FaultKind::Invalid => "invalid",
            FaultKind::NoTime => "no_time",
        }
    }
}

/// One acknowledged message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Measurement name.
    pub m: String,
    /// Identifying tags (the gateway may add more, such as `gateway`).
    pub t: BTreeMap<String, String>,
    /// Timestamp, Unix milliseconds.
    pub ts: i64,
    /// Numeric fields and their exact values.
    pub f: BTreeMap<String, f64>,
    /// What the store should show.
    pub x: Expect,
    /// The injected fault, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultKind>,
    /// The MQTT client re-sent the message after a reconnect, so the broker may have
    /// delivered it twice (at-least-once): a duplicate in the store is explained.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resent: bool,
}

/// Marks an already serialised entry line as re-sent (see [`Entry::resent`]).
/// Several lines (a message that stands for several entries) are all marked.
pub fn mark_resent(line: &mut String) {
    if !line.ends_with("}\n") || line.contains("\"resent\"") {
        return;
    }
    let mut marked = String::with_capacity(line.len() + 16);
    for l in line.lines() {
        match l.strip_suffix('}') {
            Some(open) => {
                marked.push_str(open);
                marked.push_str(",\"resent\":true}\n");
            }
            None => {
                marked.push_str(l);
                marked.push('\n');
            }
        }
    }
    *line = marked;
}

impl Entry {
    /// The entry as one manifest line, newline included.
    pub fn to_line(&self) -> String {
        // Serialising maps of strings and finite floats cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// The first line of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Manifest format version (1).
    pub version: u32,
    /// Scenario name.
    pub scenario: String,
    /// The seed the payloads came from.
    pub seed: u64,
    /// MQTT QoS used.
    pub qos: u8,
    /// Every point the store holds in a series of this manifest, within its time range, must
    /// be explained by a `stored` entry (its key and its fields): anything else counts as
    /// leaked. For streams whose readings carry their own time (NMEA fixes), where a corrupt
    /// sentence that got through could land at any time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    header: Header,
}

/// Why a manifest could not be read.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Reading failed.
    #[error("manifest I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a manifest entry.
    #[error("manifest line {line}: {source}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Writes the header line.
pub fn write_header(out: &mut impl Write, header: &Header) -> std::io::Result<()> {
    let line = serde_json::to_string(&HeaderLine {
        header: header.clone(),
    })
    .map_err(std::io::Error::other)?;
    writeln!(out, "{line}")
}

/// Reads a whole manifest: the header (if present) and the entries in file order.
pub fn read(input: impl BufRead) -> Result<(Option<Header>, Vec<Entry>), ManifestError> {
    let mut header = None;
    let mut entries = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if i == 0 && line.starts_with("{\"header\"") {
            let h: HeaderLine = serde_json::from_str(&line)
                .map_err(|source| ManifestError::Line { line: 1, source })?;
            header = Some(h.header);
            continue;
        }
        let entry: Entry = serde_json::from_str(&line).map_err(|source| ManifestError::Line {
            line: i + 1,
            source,
        })?;
        entries.push(entry);
    }
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let entry = Entry {
            m: "environment".into(),
            t: [
                ("district".to_string(), "d1".to_string()),
                ("sensor_id".to_string(), "env-0001".to_string()),
            ]
            .into(),
            ts: 1_795_480_200_000,
            f: [
                ("pm2_5".to_string(), 19.8),
                ("temperature".to_string(), 26.41),
            ]
            .into(),
            x: Expect::Stored,
            fault: Some(FaultKind::ClockSkew),
            resent: false,
        };
        let line = entry.to_line();
        assert_eq!(
            line,
            "{\"m\":\"environment\",\"t\":{\"district\":\"d1\",\"sensor_id\":\"env-0001\"},\"ts\":1795480200000,\"f\":{\"pm2_5\":19.8,\"temperature\":26.41},\"x\":\"stored\",\"fault\":\"clock_skew\"}\n"
        );
        let mut file = Vec::new();
        write_header(
            &mut file,
            &Header {
                version: 1,
                scenario: "s".into(),
                seed: 9,
                qos: 1,
                exclusive: false,
            },
        )
        .unwrap();
        file.extend_from_slice(line.as_bytes());
        let (header, entries) = read(file.as_slice()).unwrap();
        assert_eq!(header.unwrap().seed, 9);
        assert_eq!(entries, vec![entry]);
    }

    #[test]
    fn resent_mark_round_trips() {
        let mut line =
            "{\"m\":\"traffic\",\"t\":{},\"ts\":1,\"f\":{},\"x\":\"stored\"}\n".to_string();
        mark_resent(&mut line);
        mark_resent(&mut line);
        assert_eq!(
            line,
            "{\"m\":\"traffic\",\"t\":{},\"ts\":1,\"f\":{},\"x\":\"stored\",\"resent\":true}\n"
        );
        let (_, entries) = read(line.as_bytes()).unwrap();
        assert!(entries[0].resent);
        let mut two = "{\"m\":\"a\",\"t\":{},\"ts\":1,\"f\":{},\"x\":\"stored\"}\n{\"m\":\"a\",\"t\":{},\"ts\":2,\"f\":{},\"x\":\"stored\"}\n".to_string();
        mark_resent(&mut two);
        let (_, entries) = read(two.as_bytes()).unwrap();
        assert!(entries.iter().all(|e| e.resent), "{two}");
    }

    #[test]
    fn bad_line_is_located() {
        let err = read("{\"m\":1}\n".as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("manifest line 1"), "{err}");
    }
}
