//! The leader's heartbeat, sent from here rather than by openraft: openraft ties its
//! heartbeat to the AppendEntries deadline (`heartbeat_interval`), which must be longer than a
//! heartbeat for slow links to commit (see [`NodeConfig::replication_deadline_ms`]).
//!
//! [`NodeConfig::replication_deadline_ms`]: crate::config::NodeConfig::replication_deadline_ms

use std::sync::Arc;
use std::time::Duration;

use super::context::NodeCtx;

/// Every `heartbeat_ms` while this node leads, for the node's lifetime. openraft coalesces a
/// heartbeat with replication already under way, so a slow follower gets no pile-up.
pub async fn run(node: Arc<NodeCtx>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(node.config.heartbeat_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if node.is_leader() && node.raft.trigger().heartbeat().await.is_err() {
            // Raft stopped (shut down or fatal): `fatal::watch` reports it.
            return;
        }
    }
}
