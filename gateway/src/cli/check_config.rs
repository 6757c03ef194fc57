//! `ioc-gateway check-config FILE [--json]`: loads a config as `run` would and says whether
//! `run` has what it needs, or where each problem is (file, line, key), without starting
//! anything.
//!
//! Beyond parsing and validation it resolves every secret the config names, reads and parses
//! every TLS file and checks that `data_dir` is writable ([`crate::config::preflight`]), so an
//! `ExecStartPre=ioc-gateway check-config` that passes means `run` will not refuse the config.
//! `--json` prints one object for tools: `{"ok", "file", "errors": [{"line", "key",
//! "message"}], "summary"}`. Exit 0 when ok, 78 (`EX_CONFIG`) otherwise.

use std::path::Path;

use serde_json::json;

use super::exit::Exit;
use crate::config::{Config, ConfigError};

/// Checks the config at `path`: a one-line summary on stdout, or the errors on stderr (or one
/// JSON object on stdout with `json`).
pub fn execute(path: &Path, json_output: bool) -> Exit {
    let (config, errors) = match Config::load_and_preflight(path) {
        Ok((c, problems)) => (Some(c), problems),
        Err(e) => (None, vec![e]),
    };
    let ok = errors.is_empty();
    let summary = config.as_ref().map(|c| {
        format!(
            "gateway {}, {} mqtt input(s), {} serial input(s), output {}",
            c.gateway.id,
            c.inputs.mqtt.len(),
            c.inputs.serial.len(),
            c.outputs()
                .iter()
                .map(|o| format!("{} {}", o.name, o.influx.endpoints().join(" | ")))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    if json_output {
        let errors: Vec<_> = errors.iter().map(error_json).collect();
        println!(
            "{}",
            json!({
                "ok": ok,
                "file": path.display().to_string(),
                "errors": errors,
                "summary": summary,
            })
        );
    } else if ok {
        println!("{}: ok ({})", path.display(), summary.unwrap_or_default());
    } else {
        for e in &errors {
            eprintln!("error: {e}");
        }
    }
    if ok {
        Exit::Success
    } else {
        Exit::Config
    }
}

fn error_json(e: &ConfigError) -> serde_json::Value {
    match e {
        ConfigError::Invalid {
            line, key, message, ..
        } => json!({ "line": line, "key": key, "message": message }),
        ConfigError::Read { .. } => json!({ "line": null, "key": null, "message": e.to_string() }),
    }
}
