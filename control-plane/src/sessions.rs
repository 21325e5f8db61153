//! Session affinity on the control plane, beside the binding rules in [`crate::state`]:
//! the leader expires bindings whose TTL has passed, with its clock stamped into the command,
//! and mints the cluster's affinity hashing secret when the state has none (a new cluster, or
//! one from before hashing).

use std::sync::Arc;
use std::time::Duration;

use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::state::{Command, SecretBytes};

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
        mint_secret(&node).await;
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

/// Proposes a fresh affinity secret when the applied state has none; the state machine keeps
/// only the first one ever applied, so two leaders racing cannot change it.
async fn mint_secret(node: &NodeCtx) {
    if node.shared.read().state.affinity_secret.is_set() {
        return;
    }
    let secret = match switchyard_model::AffinitySecret::mint() {
        Ok(s) => s,
        Err(e) => return tracing::error!("cannot mint the affinity secret: {e}"),
    };
    let cmd = Command::SetAffinitySecret(SecretBytes(secret.expose().to_vec()));
    match node.propose(cmd.into()).await {
        Ok(_) => tracing::info!("minted the cluster's affinity hashing secret"),
        Err(e) => tracing::debug!("affinity secret not recorded: {e:?}"),
    }
}
