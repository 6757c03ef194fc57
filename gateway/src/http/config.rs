//! The `[http]` section: where the gateway's own server listens and who may read it.

use std::path::PathBuf;

use serde::Deserialize;

/// The gateway's own HTTP server: health, metrics, live page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `127.0.0.1:8080` by default; a wider bind is the operator's explicit choice.
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A bearer token required on every route but `/healthz`, when set.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `/readyz` turns not-ready when the store has not confirmed a batch for this long while
    /// data waits.
    #[serde(default = "default_store_unreachable_s")]
    pub store_unreachable_after_s: u64,
    /// When the live board is fed: `"on_demand"` (default) while the live page, `/api/sensors`
    /// or `status` was asked within the last 5 minutes or a live stream is open, so an unwatched
    /// gateway spends nothing on it; `"always"` keeps it current for a first look at any time.
    #[serde(default)]
    pub live_board: LiveBoardMode,
}

/// `[http] live_board`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveBoardMode {
    #[default]
    OnDemand,
    Always,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_listen(),
            enabled: true,
            token_env: None,
            token_file: None,
            store_unreachable_after_s: default_store_unreachable_s(),
            live_board: LiveBoardMode::default(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_true() -> bool {
    true
}
fn default_store_unreachable_s() -> u64 {
    60
}

impl HttpSection {
    /// Checks the listen address; the error's key is relative to `[http]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "listen".into(),
                format!(
                    "must be an address like 127.0.0.1:8080, got {:?}",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}
