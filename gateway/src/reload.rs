//! What a config reload (SIGHUP, `systemctl reload`) may change in a running gateway, decided
//! from the old and the new config alone (no I/O), so the rules are unit-tested.
//!
//! Why it exists: a reload must never lose or duplicate a reading, and must never leave the
//! gateway half on one config and half on another. So it is all or nothing: the new file is
//! loaded and preflighted as `check-config` does, and refused as a whole (the gateway keeps
//! running on the old one and says why) when it is invalid or changes what only a restart can
//! change:
//! - `[gateway] data_dir` and `[buffer]`: the buffer is the one thing a reload keeps open;
//! - `[gateway] worker_threads`: the runtime everything runs on;
//! - `[http]`: the status server keeps its socket and its observers.
//!
//! Everything else is applied in place by [`crate::app`]: the output is rebuilt (its secrets
//! and TLS files read again) and takes over at the next batch; `[clock]` applies at once;
//! inputs are restarted only where their own settings changed (see [`crate::input::set`]), all
//! of them when what they share changed ([`ingest_changed`]: `[gateway] id`, `[limits]`, the
//! line protocol dialect the outputs share).

use crate::config::Config;

/// The sections of `new` that differ from `old` and need a restart, as dotted keys.
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.gateway.data_dir != new.gateway.data_dir {
        out.push("gateway.data_dir");
    }
    if old.gateway.worker_threads != new.gateway.worker_threads {
        out.push("gateway.worker_threads");
    }
    if debug(&old.buffer) != debug(&new.buffer) {
        out.push("buffer");
    }
    if debug(&old.http) != debug(&new.http) {
        out.push("http");
    }
    out
}

/// Whether what every input shares changed: then every input restarts with a new ingest.
pub fn ingest_changed(old: &Config, new: &Config) -> bool {
    old.gateway.id != new.gateway.id
        || debug(&old.limits) != debug(&new.limits)
        || old.flavor() != new.flavor()
}

/// Config types derive `Debug`, not `PartialEq` (some hold compiled patterns); their `Debug`
/// form is complete and deterministic (no hash maps), so it compares them.
fn debug(v: &impl std::fmt::Debug) -> String {
    format!("{v:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[gateway]
id = "gw"
data_dir = "/tmp/x"
[output.influxdb]
url = "http://127.0.0.1:8428"
api = "v1"
database = "iot"
[[inputs.mqtt]]
url = "mqtt://127.0.0.1:1883"
client_id = "gw"
topics = ["city/#"]
measurement = "m"
{extra}
"#
        );
        Config::parse(std::path::Path::new("t.toml"), &text).expect("valid")
    }

    #[test]
    fn topics_batches_and_clock_need_no_restart() {
        let old = config("");
        let new = config(
            "[clock]\ntag_unsynced = false\n[[inputs.mqtt]]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"gw2\"\ntopics = [\"b/#\"]\nmeasurement = \"m\"\n",
        );
        assert!(fixed_changes(&old, &new).is_empty());
        assert!(!ingest_changed(&old, &new));
    }

    #[test]
    fn buffer_http_and_data_dir_need_a_restart() {
        let old = config("");
        let new = config("[buffer]\nmax_disk_mb = 64\n[http]\nenabled = false\n");
        assert_eq!(fixed_changes(&old, &new), ["buffer", "http"]);
        let mut moved = config("");
        moved.gateway.data_dir = "/tmp/y".into();
        assert_eq!(fixed_changes(&old, &moved), ["gateway.data_dir"]);
        let mut threads = config("");
        threads.gateway.worker_threads = 2;
        assert_eq!(fixed_changes(&old, &threads), ["gateway.worker_threads"]);
    }

    #[test]
    fn gateway_id_and_limits_restart_every_input() {
        let old = config("");
        let mut renamed = config("");
        renamed.gateway.id = "gw-7".into();
        assert!(ingest_changed(&old, &renamed));
        let limited = config("[limits]\nmax_fields = 10\n");
        assert!(ingest_changed(&old, &limited));
    }
}
