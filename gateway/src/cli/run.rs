//! `ioc-gateway run --config FILE`: the gateway itself, until SIGTERM or SIGINT.
//!
//! Loads the config, installs the metrics recorder, starts the gateway's runtime and hands
//! [`crate::app::run`] a [`crate::shutdown::Shutdown`] triggered by the first SIGTERM/SIGINT.

use std::path::Path;

use super::exit::Exit;
use super::runtime::{self, Kind};
use crate::config::Config;

/// The target of this module's log lines: the binary's crate, as when they were logged from
/// `main.rs`, so log filters and collectors see the same lines as before.
const LOG_TARGET: &str = "ioc_gateway";

/// Runs the gateway from the config at `path`; the error goes to the log and to stderr.
pub fn execute(path: &Path) -> Exit {
    match run(path) {
        Ok(()) => Exit::Success,
        Err(e) => {
            tracing::error!(target: LOG_TARGET, "{e:#}");
            eprintln!("error: {e:#}");
            if is_config_problem(&e) {
                Exit::Config
            } else {
                Exit::Failure
            }
        }
    }
}

/// Whether `run` failed because of its configuration (the file, or a secret it names), which a
/// restart cannot mend.
fn is_config_problem(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<crate::config::ConfigError>() || cause.is::<crate::config::SecretError>()
    })
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // Before anything records a metric (buffer recovery does).
    crate::http::install_metrics_recorder();
    let runtime = runtime::build(Kind::Gateway)?;
    runtime.block_on(async move {
        let shutdown = crate::shutdown::Shutdown::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                target: LOG_TARGET,
                "shutdown requested: stopping inputs and flushing the buffer"
            );
            on_signal.trigger();
        });
        crate::app::run(config, shutdown).await
    })
}

/// Returns on the first SIGTERM or SIGINT (on Ctrl-C alone if those cannot be watched).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
