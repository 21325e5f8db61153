//! Session affinity on the control plane, beside the binding rules in [`crate::state`]:
//! the leader expires bindings whose TTL has passed, with its clock stamped into the command.

use std::sync::Arc;
use std::time::Duration;

use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::state::Command;

/// How often the leader looks for expired bindings.
const EXPIRY_TICK: Duration = Duration::from_millis(500);

/// Runs for the node's lifetime; proposes expiry only while this node leads.
pub async fn expire(node: Arc<NodeCtx>) {
    let mut ticker = tokio::time::interval(EXPIRY_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !node.is_leader() {
            continue;
        }
        // Judged at the time `apply` will use: never before the state's high-water clock.
        let due = {
            let live = node.shared.read();
            let at = crate::clock::now_ms().max(live.state.clock_ms());
            live.state.sessions.values().any(|s| s.last_seen_ms.saturating_add(s.ttl_ms) <= at)
        };
        let now_ms = crate::clock::now_ms();
        if due {
            if let Err(e) = leader::write(&node, Command::ExpireSessions { now_ms }).await {
                tracing::debug!("session expiry not recorded: {e}");
            }
        }
    }
}
