//! The `[[inputs.serial]]` section: the port, the protocol spoken on it and, for Modbus, the
//! register map, with the checks each port makes on its own section.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ioc_decode::modbus::RegisterSpec as ModbusRegisterConfig;
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
}

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
}

impl SerialInputConfig {
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
