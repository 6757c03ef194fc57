//! The one place the binary builds its async runtime.
//!
//! The one-shot commands (`status`, `probe`) wait on a single future and need no worker
//! threads; `run` carries inputs, the forwarder and the HTTP API at once on a multi-thread
//! runtime with `[gateway] worker_threads` workers (one by default: see
//! [`crate::config::GatewayConfig::worker_threads`]), so blocking work handed to
//! `spawn_blocking` never holds up the inputs.

use tokio::runtime::{Builder, Runtime};

/// Which runtime a subcommand needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One thread, the caller's: for a command that blocks on one future.
    CurrentThread,
    /// The running gateway: a multi-thread runtime with this many workers.
    Gateway { workers: usize },
}

/// The runtime could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the async runtime")]
pub struct RuntimeError(#[source] std::io::Error);

/// glibc malloc arenas the gateway allows itself unless `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives every thread that allocates under contention an arena of its own (up to 8 per
/// core), and memory freed in one arena is not reused by the others: during a burst the
/// workers, the buffer writer and the forwarder each grew theirs, for a peak several MiB above
/// what one arena holds. The per-thread caches in front of the arena keep the small
/// allocations of the ingest path off its lock, so one arena costs no measurable CPU
/// (`tests/bench/spine_bench.py`, README "Performance").
const MALLOC_ARENAS: i32 = 1;

/// Applies [`MALLOC_ARENAS`] before the runtime's threads exist (glibc only).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before the threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Builds a runtime of `kind` with I/O and timers enabled.
pub fn build(kind: Kind) -> Result<Runtime, RuntimeError> {
    let mut builder = match kind {
        Kind::CurrentThread => Builder::new_current_thread(),
        Kind::Gateway { workers } => {
            limit_malloc_arenas();
            let mut builder = Builder::new_multi_thread();
            builder.worker_threads(workers.max(1));
            builder
        }
    };
    builder.enable_all().build().map_err(RuntimeError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gives_its_runtime() {
        use tokio::runtime::RuntimeFlavor;
        let current = build(Kind::CurrentThread).unwrap();
        assert_eq!(
            current.handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
        for workers in [1, 2] {
            let gateway = build(Kind::Gateway { workers }).unwrap();
            assert_eq!(
                gateway.handle().runtime_flavor(),
                RuntimeFlavor::MultiThread
            );
            assert_eq!(gateway.metrics().num_workers(), workers);
        }
    }
}
