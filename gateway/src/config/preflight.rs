//! What `run` will need from the machine, checked without starting anything.
//!
//! Why it exists: `check-config` runs as the unit's `ExecStartPre=`; if it passes a config that
//! `run` then refuses (a secret variable that is not set, a CA file that is not PEM, a data dir
//! the service user cannot write), systemd restart-loops the service instead of showing the
//! problem. So beyond parsing and validating, `check-config` resolves every secret the config
//! names (values never printed), reads and parses every TLS file (CA, client certificate and
//! key) with the same code `run` uses, and checks that `data_dir` is (or can be made) writable.
//! Each problem carries its dotted key, so it is reported at its line like any config error.

use std::path::Path;

use super::Config;
use crate::secret::resolve_secret;
use crate::tls::{client_config, ClientTlsFiles};

/// One thing `run` would fail on: the config key it comes from and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found (empty: `run` has what it needs, as far as can be known before start).
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut note = |key: String, result: Result<(), String>| {
        if let Err(message) = result {
            problems.push(Problem { key, message });
        }
    };
    note(
        "gateway.data_dir".into(),
        writable_dir(&config.gateway.data_dir),
    );

    let secret = |key: &str, env: Option<&str>, file: Option<&Path>| {
        resolve_secret(key, env, file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for output in config.outputs() {
        let (o, prefix) = (output.influx, output.key.as_str());
        note(
            secret_key(prefix, "token", &o.token_env, &o.token_file),
            secret(
                &format!("{prefix}.token"),
                o.token_env.as_deref(),
                o.token_file.as_deref(),
            ),
        );
        note(
            secret_key(prefix, "password", &o.password_env, &o.password_file),
            secret(
                &format!("{prefix}.password"),
                o.password_env.as_deref(),
                o.password_file.as_deref(),
            ),
        );
        if o.endpoints().iter().any(|u| u.starts_with("https://")) && !o.insecure_skip_verify {
            note(
                tls_key(prefix, o.ca_file.is_some()),
                tls(ClientTlsFiles {
                    ca_file: o.ca_file.as_deref(),
                    client_cert_file: o.client_cert_file.as_deref(),
                    client_key_file: o.client_key_file.as_deref(),
                }),
            );
        }
        // Each output other than `default` keeps its dead-letter file in its own directory.
        if output.name != crate::config::DEFAULT_OUTPUT {
            let dir = config.gateway.data_dir.join("outputs").join(output.name);
            if dir.exists() {
                note(format!("{prefix}.name"), writable_dir(&dir));
            }
        }
    }

    for (i, m) in config.inputs.mqtt.iter().enumerate() {
        let prefix = format!("inputs.mqtt[{i}]");
        note(
            secret_key(&prefix, "password", &m.password_env, &m.password_file),
            secret(
                &format!("{prefix}.password"),
                m.password_env.as_deref(),
                m.password_file.as_deref(),
            ),
        );
        let tls_wanted = super::parse_mqtt_url(&m.url).is_ok_and(|a| a.tls);
        if tls_wanted {
            note(
                tls_key(&prefix, m.ca_file.is_some()),
                tls(ClientTlsFiles {
                    ca_file: m.ca_file.as_deref(),
                    client_cert_file: m.client_cert_file.as_deref(),
                    client_key_file: m.client_key_file.as_deref(),
                }),
            );
        }
    }

    for (i, w) in config.inputs.http.iter().enumerate() {
        let prefix = format!("inputs.http[{i}]");
        note(
            secret_key(&prefix, "token", &w.token_env, &w.token_file),
            secret(
                &format!("{prefix}.token"),
                w.token_env.as_deref(),
                w.token_file.as_deref(),
            ),
        );
        if let (Some(cert), Some(key)) = (&w.cert_file, &w.key_file) {
            note(
                format!("{prefix}.cert_file"),
                crate::input::http::server::tls_acceptor(cert, key).map(|_| ()),
            );
        }
    }

    let h = &config.http;
    if h.enabled {
        note(
            secret_key("http", "token", &h.token_env, &h.token_file),
            secret(
                "http.token",
                h.token_env.as_deref(),
                h.token_file.as_deref(),
            ),
        );
    }
    problems
}

/// The key to point at for a secret: the `_env` or `_file` key that names it.
fn secret_key(
    prefix: &str,
    name: &str,
    env: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> String {
    match (env, file) {
        (None, Some(_)) => format!("{prefix}.{name}_file"),
        _ => format!("{prefix}.{name}_env"),
    }
}

fn tls_key(prefix: &str, has_ca: bool) -> String {
    if has_ca {
        format!("{prefix}.ca_file")
    } else {
        format!("{prefix}.url")
    }
}

fn tls(files: ClientTlsFiles<'_>) -> Result<(), String> {
    client_config(files).map(|_| ()).map_err(|e| e.to_string())
}

/// `dir` is a writable directory, or does not exist yet and its nearest existing ancestor is
/// a writable directory (`run` creates it). Writes and removes one small file to know.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut probe_dir = dir;
    while !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_dir = p,
            _ => {
                probe_dir = Path::new(".");
                break;
            }
        }
    }
    if !probe_dir.is_dir() {
        return Err(format!(
            "{} is not a directory, so data_dir {} cannot be made",
            probe_dir.display(),
            dir.display()
        ));
    }
    let probe = probe_dir.join(format!(".check-config-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "data_dir {} is not writable{}: {e} (the service user must own it)",
            dir.display(),
            if probe_dir == dir {
                String::new()
            } else {
                format!(
                    " (it does not exist and {} is where it would be made)",
                    probe_dir.display()
                )
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_data_dir_under_a_writable_parent_is_fine() {
        let dir = std::env::temp_dir().join(format!("ioc-preflight-{}", std::process::id()));
        assert!(writable_dir(&dir.join("a").join("b")).is_ok());
        assert!(!dir.exists(), "the check must not create the directory");
    }

    #[test]
    fn a_data_dir_under_a_file_is_refused() {
        let file = std::env::temp_dir().join(format!("ioc-preflight-file-{}", std::process::id()));
        std::fs::write(&file, "x").unwrap();
        let e = writable_dir(&file.join("data")).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_file(&file).unwrap();
    }
}
