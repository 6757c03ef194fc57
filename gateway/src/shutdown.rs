//! One shutdown signal for every task of the gateway.
//!
//! Why it exists: inputs, the forwarder, the store's retry loop and the HTTP server must all
//! stop when told, and `app::run` must stop them in order (inputs first, so what they hold is
//! committed and acknowledged; then the buffer; then the forwarder and the HTTP server). A
//! [`Shutdown`] is a [`CancellationToken`]: cloned into each task, awaited the one way
//! ([`Shutdown::wait`], cancel-safe in a `select!`), and grouped with [`Shutdown::child`], so
//! one stage can be told to stop on its own while a stop of the whole still reaches it.

use tokio_util::sync::CancellationToken;

/// A stop signal shared by the tasks that must obey it (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Shutdown(CancellationToken::new())
    }

    /// Tells every task holding this signal (or a child of it) to stop. Idempotent.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Whether a stop has been asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once a stop has been asked for (at once if it already has).
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// A signal that stops with this one and can also be triggered alone.
    pub fn child(&self) -> Shutdown {
        Shutdown(self.0.child_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_stops_with_its_parent_and_alone_without_it() {
        let whole = Shutdown::new();
        let inputs = whole.child();
        let other = whole.child();
        inputs.trigger();
        assert!(inputs.is_triggered());
        assert!(!whole.is_triggered() && !other.is_triggered());
        whole.trigger();
        other.wait().await;
        assert!(other.is_triggered());
    }
}
