//! `ioc-gateway check-config FILE`: loads a config as `run` would and says whether it is valid,
//! or where the problem is (file, line, key), without starting anything.

use std::path::Path;

use super::exit::Exit;
use crate::config::Config;

/// Checks the config at `path`: a one-line summary on stdout, or the error on stderr.
pub fn execute(path: &Path) -> Exit {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok (gateway {}, {} mqtt input(s), {} serial input(s), output {})",
                path.display(),
                c.gateway.id,
                c.inputs.mqtt.len(),
                c.inputs.serial.len(),
                c.output.influxdb.url
            );
            Exit::Success
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Config
        }
    }
}
