//! Secrets (tokens, passwords): read from an environment variable or a file, never printed.

use std::fmt;
use std::path::Path;

/// A secret value. `Debug` and `Display` print `***`, so it cannot leak through logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: environment variable {var} is not set (or not valid UTF-8)")]
    MissingEnv { key: String, var: String },
    #[error("{key}: cannot read secret file {path}: {source}")]
    File {
        key: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: secret file {path} is empty")]
    Empty { key: String, path: String },
}

/// Resolves a secret from `env` (variable name) or `file` (path); `key` names the config key in
/// errors. A world-readable secret file is accepted with a warning naming the fix.
pub fn resolve_secret(
    key: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret>, SecretError> {
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
            _ => Err(SecretError::MissingEnv {
                key: key.to_owned(),
                var: var.to_owned(),
            }),
        };
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let err = |source| SecretError::File {
        key: key.to_owned(),
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                key,
                path = %path.display(),
                "secret file is world-readable; run `chmod 600 {}`",
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    let value = text.trim_end_matches(['\r', '\n']).to_owned();
    if value.is_empty() {
        return Err(SecretError::Empty {
            key: key.to_owned(),
            path: path.display().to_string(),
        });
    }
    Ok(Some(Secret(value)))
}
