//! The `[[inputs.serial]]` section: the port, the protocol spoken on it and, for Modbus, the
//! register map (for `lines`, the `[inputs.serial.lines]` pattern), with the checks each port
//! makes on its own section.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ioc_decode::lines::{Lines, LinesConfig};
use ioc_decode::modbus::RegisterSpec as ModbusRegisterConfig;
use ioc_decode::text_line::{DEFAULT_MAX_LINE_BYTES, MAX_LINE_BYTES_LIMIT};
use ioc_decode::vaisala::WMT700_ITEMS;
use serde::Deserialize;

/// A serial port and the protocol spoken on it (read by `input::serial`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialInputConfig {
    pub name: Option<String>,
    pub port: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    pub protocol: SerialProtocol,
    pub sensor_id: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default = "default_poll_interval")]
    pub poll_interval_ms: u64,
    #[serde(default)]
    pub registers: Vec<ModbusRegisterConfig>,
    /// Text protocols: the measurement of the readings (`gnss` for NMEA, `weather` for Vaisala).
    pub measurement: Option<String>,
    /// Text protocols: the longest line kept; a longer one is dropped up to its end.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Text protocols: a command written (with CR LF) every `poll_interval_ms`, for an
    /// instrument in polled mode (Vaisala WXT5xx: `"0R0"`).
    pub poll: Option<String>,
    /// `vaisala`: the items of a user-defined WMT700 message, in order.
    #[serde(default)]
    pub wmt700_items: Vec<String>,
    /// `lines`: the `[inputs.serial.lines]` table (pattern, fields, tags, time, sentinels).
    pub lines: Option<LinesConfig>,
}

fn default_max_line_bytes() -> usize {
    DEFAULT_MAX_LINE_BYTES
}

/// Longest `poll` command.
pub const MAX_POLL_COMMAND_BYTES: usize = 64;

fn default_baud() -> u32 {
    9600
}
fn default_poll_interval() -> u64 {
    5000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialProtocol {
    Pms5003,
    /// The PMS5003T variant (temperature and humidity in place of the larger particle counts).
    Pms5003t,
    Sds011,
    ModbusRtu,
    Node,
    /// NMEA 0183 GNSS sentences (GGA, RMC, VTG, GLL).
    Nmea0183,
    /// Vaisala WXT5xx ASCII and WMT700 data messages.
    Vaisala,
    /// Any sensor printing one reading per line, read by the `[inputs.serial.lines]` pattern.
    Lines,
}

impl SerialProtocol {
    /// A line-based text protocol (framed by CR/LF, `max_line_bytes`, optional `poll`).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            SerialProtocol::Nmea0183 | SerialProtocol::Vaisala | SerialProtocol::Lines
        )
    }
}

impl SerialInputConfig {
    /// A port with every optional key at its default (what a section with only `port` and
    /// `protocol` gives).
    pub fn new(port: impl Into<PathBuf>, protocol: SerialProtocol) -> Self {
        SerialInputConfig {
            name: None,
            port: port.into(),
            baud: default_baud(),
            protocol,
            sensor_id: None,
            tags: BTreeMap::new(),
            poll_interval_ms: default_poll_interval(),
            registers: Vec::new(),
            measurement: None,
            max_line_bytes: default_max_line_bytes(),
            poll: None,
            wmt700_items: Vec::new(),
            lines: None,
        }
    }

    /// The port's static tags: `tags`, plus `sensor_id` if set.
    pub fn static_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.tags.clone();
        if let Some(id) = &self.sensor_id {
            tags.insert("sensor_id".into(), id.clone());
        }
        tags
    }

    /// `lines`: the compiled `[inputs.serial.lines]` table (`None` for the other protocols);
    /// the error's key is relative to `[[inputs.serial]]`.
    pub fn compile_lines(&self) -> Result<Option<Lines>, (String, String)> {
        match (&self.lines, self.protocol == SerialProtocol::Lines) {
            (None, false) => Ok(None),
            (Some(_), false) => Err((
                "lines".into(),
                "the [inputs.serial.lines] table is only used with protocol = \"lines\"".into(),
            )),
            (None, true) => Err((
                "protocol".into(),
                "protocol \"lines\" needs an [inputs.serial.lines] table with a regex or \
                 columns and the fields to read"
                    .into(),
            )),
            (Some(cfg), true) => {
                Lines::compile(cfg, self.measurement.as_deref(), self.static_tags())
                    .map(Some)
                    .map_err(|e| (format!("lines.{}", e.key), e.message))
            }
        }
    }

    /// Checks this port's section; the error's key is relative to `[[inputs.serial]]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_owned(), msg));
        if self.baud == 0 {
            return bad("baud", "must be above 0".into());
        }
        if self.protocol == SerialProtocol::ModbusRtu && self.registers.is_empty() {
            return bad(
                "registers",
                "protocol modbus_rtu needs at least one [[inputs.serial.registers]] entry".into(),
            );
        }
        if self.protocol != SerialProtocol::ModbusRtu && !self.registers.is_empty() {
            return bad(
                "registers",
                "registers are only used with protocol = \"modbus_rtu\"".into(),
            );
        }
        self.validate_text()?;
        for (j, r) in self.registers.iter().enumerate() {
            let rk = |f: &str| format!("registers[{j}].{f}");
            if !matches!(r.function, 3 | 4) {
                return bad(
                    &rk("function"),
                    format!("must be 3 (holding) or 4 (input), got {}", r.function),
                );
            }
            if r.slave == 0 || r.slave > 247 {
                return bad(&rk("slave"), format!("must be 1..=247, got {}", r.slave));
            }
            if !r.scale.is_finite() || !r.offset.is_finite() {
                return bad(
                    &rk("scale"),
                    "scale and offset must be finite numbers".into(),
                );
            }
            if r.sensor_id.is_none() && self.sensor_id.is_none() {
                return bad(&rk("sensor_id"), "no sensor_id here nor on the port".into());
            }
        }
        Ok(())
    }
}

impl SerialInputConfig {
    /// The keys of the text protocols.
    fn validate_text(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_owned(), msg));
        let text = self.protocol.is_text();
        if !text && self.measurement.is_some() {
            return bad(
                "measurement",
                "only used with the text protocols (nmea0183, vaisala, lines)".into(),
            );
        }
        if let Some(m) = &self.measurement {
            if m.is_empty() {
                return bad("measurement", "must not be empty".into());
            }
        }
        if !(16..=MAX_LINE_BYTES_LIMIT).contains(&self.max_line_bytes) {
            return bad(
                "max_line_bytes",
                format!(
                    "must be 16..={MAX_LINE_BYTES_LIMIT}, got {}",
                    self.max_line_bytes
                ),
            );
        }
        if let Some(cmd) = &self.poll {
            if !matches!(
                self.protocol,
                SerialProtocol::Vaisala | SerialProtocol::Lines
            ) {
                return bad(
                    "poll",
                    "only used with protocol = \"vaisala\" (a station in polled mode) or \"lines\""
                        .into(),
                );
            }
            if cmd.is_empty()
                || cmd.len() > MAX_POLL_COMMAND_BYTES
                || !cmd.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            {
                return bad(
                    "poll",
                    format!(
                        "must be 1..={MAX_POLL_COMMAND_BYTES} printable ASCII characters \
                         (CR LF is added), e.g. \"0R0\""
                    ),
                );
            }
            if self.poll_interval_ms < 100 {
                return bad("poll_interval_ms", "must be at least 100 ms".into());
            }
        }
        if !self.wmt700_items.is_empty() && self.protocol != SerialProtocol::Vaisala {
            return bad(
                "wmt700_items",
                "only used with protocol = \"vaisala\"".into(),
            );
        }
        self.compile_lines()?;
        for (i, item) in self.wmt700_items.iter().enumerate() {
            if !WMT700_ITEMS.contains(&item.as_str()) {
                return bad(
                    &format!("wmt700_items[{i}]"),
                    format!(
                        "unknown WMT700 item {item:?}; known: {}",
                        WMT700_ITEMS.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}
