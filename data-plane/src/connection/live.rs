//! An established WebSocket connection: what relaying it needs, and what is recorded when
//! it ends.

use std::sync::Arc;
use std::time::Duration;

use super::{termination, Log};
use crate::relay::{self, CloseHandle, Limits, Stream};
use crate::state::ProxyState;

/// A WebSocket connection past its handshake, registered with its backend's stats.
pub(super) struct Live {
    pub(super) client: Stream,
    pub(super) backend: Stream,
    pub(super) client_early: Vec<u8>,
    pub(super) backend_early: Vec<u8>,
    pub(super) stats: Arc<crate::stats::BackendStats>,
    /// Counted against the backend until the relay ends (not through the linger after it).
    pub(super) counted: Option<crate::stats::Counted>,
    pub(super) limits: Limits,
    pub(super) session: Option<(String, String, String)>,
    pub(super) id: u64,
    pub(super) ctl: Arc<CloseHandle>,
    pub(super) rec: Log,
    pub(super) started: tokio::time::Instant,
    pub(super) handshake: Duration,
}

impl Live {
    /// Takes a box, so that the state every connection keeps holds a pointer, not a `Live`.
    #[allow(clippy::manual_async_fn)] // an `async fn` keeps its arguments twice in its state
    pub(super) fn run(mut self: Box<Self>, state: &ProxyState) -> impl std::future::Future<Output = ()> + '_ {
        async move {
            // In a block of its own, so that what it leaves is not kept beside the linger below.
            let client_open = {
                let held = Held {
                    _counted: self.counted.take(),
                    stats: &self.stats,
                    id: self.id,
                    session: &self.session,
                    state,
                };
                let done = relay::relay(
                    &self.client,
                    &self.backend,
                    &self.client_early,
                    &self.backend_early,
                    self.limits,
                    &self.ctl,
                    &self.stats,
                )
                .await;
                tracing::debug!(?done, "connection ended");
                drop(held);
                if let (Some(log), Some(mut r)) = (state.runtime.access_log.get(), self.rec.take()) {
                    r.status = 101;
                    r.handshake = self.handshake;
                    r.duration = self.started.elapsed();
                    r.to_backend = done.to_backend;
                    r.to_client = done.to_client;
                    r.termination = termination(&done, state.runtime.shutdown.is_cancelled());
                    log.log(*r);
                }
                done.client_open
            };
            if client_open {
                // The backend has hung up already; its socket goes with the client's.
                self.client.linger(relay::CLOSE_LINGER).await;
            }
        }
    }
}

/// What a relayed connection holds of its backend: its count, its place among the backend's
/// connections (for drains and removals) and its live session binding. Given back when the
/// relay ends, and by a relay that panicked too (tokio keeps the process; its task's state
/// is dropped), which would otherwise count against the backend for good.
struct Held<'a> {
    _counted: Option<crate::stats::Counted>,
    stats: &'a crate::stats::BackendStats,
    id: u64,
    session: &'a Option<(String, String, String)>,
    state: &'a ProxyState,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.stats.unregister(self.id);
        if let Some(k) = self.session {
            self.state.affinity.unbind_live(k);
        }
    }
}
