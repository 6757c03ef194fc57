//! Readiness: is this gateway doing its job right now, and if not, why (`/readyz`, `status`).
//!
//! Pure functions over snapshots, so every rule is unit-tested without a server. Not ready
//! (`reasons`, HTTP 503) when:
//! - no input connected (or none configured);
//! - the store unreachable: data waits and no batch was confirmed for `store_unreachable_after`;
//! - the buffer over [`BUFFER_FULL_RATIO`] of its disk bound;
//! - disk errors: the latest buffer append failed (the reason goes as soon as one succeeds);
//! - an input stalled: it holds received messages but nothing has been committed for a while
//!   (the data stops moving while the connection looks healthy; never silent).
//!
//! Degraded but ready (`warnings`, HTTP 200 unless a reason applies too): any input that is
//! down while another is up, e.g. one unplugged serial port among several inputs. The gateway
//! still collects and forwards what the others send, so a load balancer or supervisor should not
//! treat it as dead; the technician still sees which port is down, since when and why. A down
//! input is listed as a warning whether or not it also makes the gateway not ready (when every
//! input is down), so the per-port detail is always in the same place.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::buffer::BufferStats;
use crate::status::{InputKind, InputState, StoreSnapshot};

/// The buffer is "nearly full" above this fraction of `max_disk_bytes`.
pub const BUFFER_FULL_RATIO: f64 = 0.8;

/// Everything readiness looks at.
#[derive(Debug, Clone)]
pub struct ReadinessInput<'a> {
    pub now_ms: u64,
    pub started_ms: u64,
    pub inputs: &'a BTreeMap<String, InputState>,
    /// Each output's name and view of its store, in config order.
    pub outputs: &'a [(String, StoreSnapshot)],
    pub buffer: &'a BufferStats,
    pub buffer_max_bytes: u64,
    pub store_unreachable_after_ms: u64,
    /// When the buffer's append error count last went up (Unix ms), if ever since start.
    pub last_append_error_ms: Option<u64>,
}

/// One reason for not being ready: a stable `code` for scripts and words for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub code: &'static str,
    pub message: String,
}

/// The `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not ready (empty when ready).
    pub reasons: Vec<Reason>,
    /// What is degraded without making the gateway not ready: inputs that are down.
    pub warnings: Vec<Reason>,
}

/// The warning for one input that is down: `serial port /dev/ttyUSB0 (input pm-north) down for
/// 42 s: <error>`, or `input mqtt-0 (mqtt://***@broker:1883) down for 42 s: <error>`.
fn input_down_warning(name: &str, s: &InputState, now_ms: u64) -> Reason {
    let down_for = secs(now_ms.saturating_sub(s.since_ms));
    let target = super::redact(&s.target);
    let (code, mut message) = match s.kind {
        InputKind::Serial if name == s.target => (
            "serial_port_down",
            format!("serial port {target} down for {down_for} s"),
        ),
        InputKind::Serial => (
            "serial_port_down",
            format!("serial port {target} (input {name}) down for {down_for} s"),
        ),
        InputKind::Mqtt | InputKind::Http => (
            "input_down",
            format!("input {name} ({target}) down for {down_for} s"),
        ),
    };
    match &s.last_error {
        Some(e) => {
            message.push_str(": ");
            message.push_str(&super::redact(e));
        }
        None => message.push_str(": not connected yet"),
    }
    Reason { code, message }
}

fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// Applies the rules.
pub fn evaluate(i: &ReadinessInput<'_>) -> Readiness {
    let mut reasons = Vec::new();

    if i.inputs.is_empty() {
        reasons.push(Reason {
            code: "no_input",
            message: "no input is configured".into(),
        });
    } else if !i.inputs.values().any(|s| s.up) {
        let detail: Vec<String> = i
            .inputs
            .iter()
            .map(|(name, s)| {
                let mut d = format!(
                    "{name} down for {} s",
                    secs(i.now_ms.saturating_sub(s.since_ms))
                );
                if let Some(e) = &s.last_error {
                    d.push_str(&format!(" ({})", super::redact(e)));
                }
                d
            })
            .collect();
        reasons.push(Reason {
            code: "no_input_connected",
            message: format!("no input connected: {}", detail.join("; ")),
        });
    }

    for (name, store) in i.outputs {
        // What waits for this output (its own cursor); the buffer's worst when it has none.
        let unsent = i
            .buffer
            .consumer(name)
            .map_or(i.buffer.unsent_lines, |c| c.unsent_lines);
        if unsent == 0 {
            continue;
        }
        let since = store.last_success_ms.unwrap_or(i.started_ms);
        let quiet_ms = i.now_ms.saturating_sub(since);
        if quiet_ms < i.store_unreachable_after_ms {
            continue;
        }
        let what = if store.last_success_ms.is_some() {
            format!("no batch confirmed for {} s", secs(quiet_ms))
        } else {
            format!("no batch confirmed since start {} s ago", secs(quiet_ms))
        };
        // A single output is "the store"; with several, each says which it is.
        let whose = if i.outputs.len() > 1 {
            format!("output {name}: ")
        } else {
            String::new()
        };
        let mut message = format!("{whose}store unreachable: {what} while {unsent} lines wait");
        if let Some(e) = &store.last_error {
            message.push_str(&format!(" (last error: {})", super::redact(e)));
        }
        reasons.push(Reason {
            code: "store_unreachable",
            message,
        });
    }

    if i.buffer_max_bytes > 0 {
        let ratio = i.buffer.disk_bytes as f64 / i.buffer_max_bytes as f64;
        if ratio > BUFFER_FULL_RATIO {
            reasons.push(Reason {
                code: "buffer_nearly_full",
                message: format!(
                    "buffer {:.0} % full ({} of {} bytes); the oldest data is dropped at 100 %",
                    ratio * 100.0,
                    i.buffer.disk_bytes,
                    i.buffer_max_bytes
                ),
            });
        }
    }

    if i.buffer.disk_failing {
        let ago = i
            .last_append_error_ms
            .map(|at| format!("{} s ago", secs(i.now_ms.saturating_sub(at))))
            .unwrap_or_else(|| "just now".into());
        reasons.push(Reason {
            code: "disk_errors",
            message: format!(
                "buffer appends are failing (last failure {ago}, {} failed appends since start): check the disk",
                i.buffer.append_errors
            ),
        });
    }

    for (name, s) in i.inputs {
        if let Some(why) = &s.stalled {
            reasons.push(Reason {
                code: "ingest_stalled",
                message: format!("input {name} stalled: {why}"),
            });
        }
    }

    let warnings = i
        .inputs
        .iter()
        .filter(|(_, s)| !s.up)
        .map(|(name, s)| input_down_warning(name, s, i.now_ms))
        .collect();

    Readiness {
        ready: reasons.is_empty(),
        reasons,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(up: bool, since_ms: u64, err: Option<&str>) -> InputState {
        InputState {
            kind: InputKind::Mqtt,
            target: "mqtt://127.0.0.1:1883".into(),
            up,
            since_ms,
            last_error: err.map(str::to_owned),
            serial: None,
            stalled: None,
        }
    }

    #[test]
    fn a_stalled_input_makes_the_gateway_not_ready_and_says_why() {
        let mut c = Case::healthy();
        if let Some(s) = c.inputs.get_mut("mqtt-0") {
            s.stalled = Some("4097 messages received, none committed for 30 s".into());
        }
        assert_eq!(c.codes(), ["ingest_stalled"]);
        assert_eq!(
            c.eval().reasons[0].message,
            "input mqtt-0 stalled: 4097 messages received, none committed for 30 s"
        );
        if let Some(s) = c.inputs.get_mut("mqtt-0") {
            s.stalled = None;
        }
        assert!(c.eval().ready);
    }

    struct Case {
        inputs: BTreeMap<String, InputState>,
        store: StoreSnapshot,
        buffer: BufferStats,
        last_append_error_ms: Option<u64>,
    }

    impl Case {
        fn healthy() -> Self {
            Case {
                inputs: BTreeMap::from([("mqtt-0".to_owned(), input(true, 0, None))]),
                store: StoreSnapshot::default(),
                buffer: BufferStats::default(),
                last_append_error_ms: None,
            }
        }
        fn eval(&self) -> Readiness {
            let outputs = [("default".to_owned(), self.store.clone())];
            evaluate(&ReadinessInput {
                now_ms: 100_000,
                started_ms: 10_000,
                inputs: &self.inputs,
                outputs: &outputs,
                buffer: &self.buffer,
                buffer_max_bytes: 1000,
                store_unreachable_after_ms: 30_000,
                last_append_error_ms: self.last_append_error_ms,
            })
        }
        fn codes(&self) -> Vec<&'static str> {
            self.eval().reasons.iter().map(|r| r.code).collect()
        }
    }

    #[test]
    fn healthy_is_ready() {
        let r = Case::healthy().eval();
        assert_eq!(
            r,
            Readiness {
                ready: true,
                reasons: vec![],
                warnings: vec![],
            }
        );
    }

    #[test]
    fn no_input_connected_names_each_input() {
        let mut c = Case::healthy();
        c.inputs.insert(
            "mqtt-0".into(),
            input(false, 40_000, Some("connection refused")),
        );
        let r = c.eval();
        assert!(!r.ready);
        assert_eq!(
            r.reasons[0].message,
            "no input connected: mqtt-0 down for 60 s (connection refused)"
        );
        c.inputs.clear();
        assert_eq!(c.codes(), ["no_input"]);
    }

    #[test]
    fn store_unreachable_only_when_data_waits_too_long() {
        let mut c = Case::healthy();
        c.store.last_success_ms = Some(80_000);
        c.buffer.unsent_lines = 5;
        assert!(c.eval().ready, "20 s without success is within 30 s");
        c.store.last_success_ms = Some(60_000);
        c.store.last_error = Some("HTTP 503 from http://user:hunter2@db:8086/write".into());
        let r = c.eval();
        assert_eq!(r.reasons.len(), 1);
        assert_eq!(
            r.reasons[0].message,
            "store unreachable: no batch confirmed for 40 s while 5 lines wait \
             (last error: HTTP 503 from http://***@db:8086/write)"
        );
        c.buffer.unsent_lines = 0;
        assert!(c.eval().ready, "nothing waiting: an idle store is fine");
        c.buffer.unsent_lines = 1;
        c.store.last_success_ms = None;
        assert_eq!(
            c.eval().reasons[0].message.split(" (").next().unwrap(),
            "store unreachable: no batch confirmed since start 90 s ago while 1 lines wait"
        );
    }

    #[test]
    fn with_several_outputs_each_is_judged_on_its_own_cursor_and_named() {
        let c = Case::healthy();
        let mut buffer = BufferStats {
            unsent_lines: 40,
            ..BufferStats::default()
        };
        for (name, unsent) in [("ioc", 0), ("national", 40)] {
            buffer.consumers.push(crate::buffer::ConsumerStats {
                name: name.into(),
                unsent_lines: unsent,
                ..Default::default()
            });
        }
        let fresh = StoreSnapshot {
            last_success_ms: Some(99_000),
            ..StoreSnapshot::default()
        };
        let stale = StoreSnapshot {
            last_success_ms: Some(50_000),
            last_error: Some("HTTP 503".into()),
            ..StoreSnapshot::default()
        };
        let eval = |outputs: &[(String, StoreSnapshot)]| {
            evaluate(&ReadinessInput {
                now_ms: 100_000,
                started_ms: 10_000,
                inputs: &c.inputs,
                outputs,
                buffer: &buffer,
                buffer_max_bytes: 1000,
                store_unreachable_after_ms: 30_000,
                last_append_error_ms: None,
            })
        };
        // The national platform is behind but the IOC store is fresh: the reason names it.
        let r = eval(&[
            ("ioc".into(), fresh.clone()),
            ("national".into(), stale.clone()),
        ]);
        assert!(!r.ready);
        assert_eq!(
            r.reasons[0].message,
            "output national: store unreachable: no batch confirmed for 50 s while 40 lines wait (last error: HTTP 503)"
        );
        // An output whose own cursor is at the end is fine however long its store was quiet.
        let r = eval(&[("ioc".into(), stale), ("national".into(), fresh)]);
        assert!(r.ready, "{r:?}");
    }

    #[test]
    fn buffer_over_80_percent_and_failing_disk() {
        let mut c = Case::healthy();
        c.buffer.disk_bytes = 800;
        assert!(c.eval().ready);
        c.buffer.disk_bytes = 801;
        assert_eq!(c.codes(), ["buffer_nearly_full"]);
        c.buffer.disk_bytes = 0;
        c.buffer.append_errors = 3;
        c.buffer.disk_failing = true;
        c.last_append_error_ms = Some(50_000);
        assert_eq!(c.codes(), ["disk_errors"]);
        assert!(
            c.eval().reasons[0]
                .message
                .contains("last failure 50 s ago, 3 failed appends"),
            "{}",
            c.eval().reasons[0].message
        );
        // One good append since: the disk works again, whatever the earlier count.
        c.buffer.disk_failing = false;
        assert!(c.eval().ready);
    }

    #[test]
    fn a_down_serial_port_is_a_warning_unless_every_input_is_down() {
        let mut c = Case::healthy();
        let serial = |up: bool, err: Option<&str>| InputState {
            kind: InputKind::Serial,
            target: "/dev/ttyUSB0".into(),
            up,
            since_ms: 58_000,
            last_error: err.map(str::to_owned),
            serial: None,
            stalled: None,
        };
        c.inputs.insert(
            "pm-north".into(),
            serial(false, Some("/dev/ttyUSB0 lost: device unplugged")),
        );
        let r = c.eval();
        assert!(r.ready, "the MQTT input still works: {r:?}");
        assert_eq!(
            r.warnings,
            [Reason {
                code: "serial_port_down",
                message: "serial port /dev/ttyUSB0 (input pm-north) down for 42 s: \
                          /dev/ttyUSB0 lost: device unplugged"
                    .into()
            }]
        );
        // Every input down: not ready, and the port is still listed with its detail.
        c.inputs.insert(
            "mqtt-0".into(),
            input(false, 90_000, Some("connection refused")),
        );
        let r = c.eval();
        assert!(!r.ready);
        assert_eq!(
            r.reasons[0].message,
            "no input connected: mqtt-0 down for 10 s (connection refused); \
             pm-north down for 42 s (/dev/ttyUSB0 lost: device unplugged)"
        );
        let warnings: Vec<&str> = r.warnings.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(
            warnings,
            [
                "input mqtt-0 (mqtt://127.0.0.1:1883) down for 10 s: connection refused",
                "serial port /dev/ttyUSB0 (input pm-north) down for 42 s: \
                 /dev/ttyUSB0 lost: device unplugged",
            ]
        );
        // An unnamed port is labelled by its path; a port never opened says so.
        c.inputs.clear();
        c.inputs.insert("/dev/ttyUSB0".into(), serial(false, None));
        c.inputs.insert("mqtt-0".into(), input(true, 0, None));
        assert_eq!(
            c.eval().warnings[0].message,
            "serial port /dev/ttyUSB0 down for 42 s: not connected yet"
        );
        c.inputs.insert("/dev/ttyUSB0".into(), serial(true, None));
        assert_eq!(c.eval(), Case::healthy().eval());
    }
}
