//! A Raft core that stops on its own (a storage error, a panic) leaves a node that still
//! answers gRPC but can never write, vote or replicate again. [`watch`] makes that visible to
//! a supervisor: gRPC health turns NOT_SERVING for every service, an error is logged, and after
//! a short grace (so health probes can see it) the node stops and [`crate::Node::wait`]
//! returns [`crate::NodeError::Fatal`], so the process exits non-zero and is restarted.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::types::Raft;

/// How long a fatally stopped node keeps answering health with NOT_SERVING before it stops.
pub const GRACE: Duration = Duration::from_secs(1);
/// How long it then lets open streams (watches, a health watch) close before it exits anyway.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Whether the Raft core stopped fatally, and why; shared by the watcher, the health service
/// and the node's `wait`.
#[derive(Clone, Default)]
pub struct Fatal {
    reason: Arc<OnceLock<String>>,
    token: CancellationToken,
}

impl Fatal {
    /// Records the first reason; later ones are dropped.
    pub fn declare(&self, reason: String) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }

    /// Resolves once the core has stopped fatally.
    pub async fn happened(&self) {
        self.token.cancelled().await
    }

    /// Resolves when a fatally stopped node must exit, whatever streams are still open.
    pub async fn exit_due(&self) {
        self.happened().await;
        tokio::time::sleep(GRACE + DRAIN).await
    }
}

/// Follows the core's metrics until the node shuts down; on a fatal stop declares it, logs
/// it, and after [`GRACE`] cancels `shutdown`.
pub async fn watch(raft: Raft, fatal: Fatal, shutdown: CancellationToken) {
    let mut rx = raft.metrics();
    let reason = loop {
        if let Err(e) = &rx.borrow_and_update().running_state {
            break format!("the Raft core stopped: {e}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() {
                // The core's task ended without saying why: it panicked.
                break "the Raft core ended unexpectedly (it panicked)".to_string();
            }
        }
    };
    // Stopping on purpose also ends the core; only an unasked-for stop is fatal.
    if shutdown.is_cancelled() {
        return;
    }
    tracing::error!("{reason}; health is NOT_SERVING and the node exits so a supervisor restarts it");
    fatal.declare(reason);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(GRACE) => shutdown.cancel(),
    }
}
