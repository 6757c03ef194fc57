//! `ioc-gateway run --config FILE`: the gateway itself, until SIGTERM or SIGINT.
//!
//! Loads and preflights the config (as `check-config` does), installs the metrics recorder,
//! starts the gateway's runtime and hands [`crate::app::run_with_reloads`] a
//! [`crate::shutdown::Shutdown`] triggered by the first SIGTERM/SIGINT, and a reload request
//! for every SIGHUP (`systemctl reload`).

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
    // The same checks as `check-config` (secrets, TLS files, a writable data_dir), so every
    // problem of the config is a config error (exit 78) here too, reported at its line.
    let (config, problems) = Config::load_and_preflight(path)?;
    if let Some(first) = problems.into_iter().next() {
        return Err(first.into());
    }
    // Before anything records a metric (buffer recovery does).
    crate::http::install_metrics_recorder();
    let runtime = runtime::build(Kind::Gateway {
        workers: config.gateway.worker_threads,
    })?;
    let path = path.to_path_buf();
    runtime.block_on(async move {
        let shutdown = crate::shutdown::Shutdown::new();
        let on_signal = shutdown.clone();
        // One pending request is enough: requests during a reload are served by the next one.
        let (reload_tx, requests) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            wait_for_signal(reload_tx).await;
            tracing::info!(
                target: LOG_TARGET,
                "shutdown requested: stopping inputs and flushing the buffer"
            );
            on_signal.trigger();
        });
        let reloads = crate::app::Reloads { path, requests };
        crate::app::run_with_reloads(config, shutdown, Some(reloads)).await
    })
}

/// Returns on the first SIGTERM or SIGINT (on Ctrl-C alone if those cannot be watched); asks
/// for a reload on every SIGHUP (whose default action would kill the gateway without a flush,
/// and systemd counts that death as clean, so `Restart=on-failure` would leave it down).
async fn wait_for_signal(reload: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).ok();
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!(target: LOG_TARGET, "SIGHUP received: reloading the config");
                    // Full: a reload is pending already and will read the file as it is now.
                    let _ = reload.try_send(());
                }
            }
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
