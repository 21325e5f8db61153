//! Leaving a joint membership the call that entered it did not finish.
//!
//! openraft changes voters in two steps: a joint configuration (old and new voter sets, each
//! needing its own majority), then the new set alone. The second step is proposed by the same
//! `change_membership` call, so when that call is cut short (the admin's deadline passed while
//! the joint entry waited for a member that was down, or the leader changed), the cluster stays
//! joint: every write then needs a majority of both sets, and nothing says so. Like etcd's raft
//! with automatic leave, the leader finishes the change once the joint entry has committed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;

use super::context::NodeCtx;
use crate::types::NodeId;

/// How often the membership is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a committed joint entry is left to the call that proposed it, which goes on to
/// the second step at once if it is still running.
const GRACE: Duration = Duration::from_secs(1);

/// The voter sets of a joint membership, old then new; `None` when uniform.
pub fn joint_sets(ctx: &NodeCtx) -> Option<(BTreeSet<NodeId>, BTreeSet<NodeId>)> {
    let m = ctx.raft.metrics();
    let m = m.borrow();
    match m.membership_config.membership().get_joint_config().as_slice() {
        [old, new] => Some((old.clone(), new.clone())),
        _ => None,
    }
}

/// The log index of this leader's committed joint membership and its final voter set.
fn committed_joint(ctx: &NodeCtx) -> Option<(u64, BTreeSet<NodeId>)> {
    if !ctx.is_leader() {
        return None;
    }
    let m = ctx.raft.metrics();
    let m = m.borrow();
    let at = m.membership_config.log_id().as_ref()?.index;
    let applied = m.last_applied.as_ref()?.index;
    match m.membership_config.membership().get_joint_config().as_slice() {
        [_, new] if applied >= at => Some((at, new.clone())),
        _ => None,
    }
}

/// Runs for the node's lifetime.
pub async fn run(node: Arc<NodeCtx>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The joint entry seen last, and when first seen committed.
    let mut seen: Option<(u64, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some((at, voters)) = committed_joint(&node) else {
            seen = None;
            continue;
        };
        match seen {
            Some((s, since)) if s == at && since.elapsed() >= GRACE => {}
            Some((s, _)) if s == at => continue,
            _ => {
                seen = Some((at, tokio::time::Instant::now()));
                continue;
            }
        }
        tracing::warn!(index = at, ?voters, "membership left joint by an unfinished change; finishing it");
        // Voters that leave are removed, as `remove-node` asked; learners stay.
        let change = ChangeMembers::ReplaceAllVoters(voters);
        let finish = node.raft.change_membership(change, false);
        match tokio::time::timeout(node.config.write_timeout, finish).await {
            Ok(Ok(r)) => tracing::info!(index = r.log_id.index, "membership change finished"),
            Ok(Err(e)) => tracing::warn!(error = %e, "finishing the membership change failed; will retry"),
            Err(_) => tracing::warn!("finishing the membership change timed out; will retry"),
        }
        seen = None;
    }
}
