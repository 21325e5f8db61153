//! Calls an election as soon as the leader's lease has run out, not a random timeout later.
//!
//! openraft 0.9 lets a follower that still believes in a leader stand only once the lease
//! (`election_timeout_max`) and then its own random election timeout have both passed since
//! the leader last reached it: one and a half to two leases. The other voters refuse every
//! candidate until their lease runs out, and grant one right after, so the second wait only
//! adds to the time the cluster takes no writes when its leader dies. Here a voter stands when
//! the lease and a stagger of its own have passed. The followers heard the leader last at
//! moments a few milliseconds apart, so a random jitter alone let two of them stand within
//! the same vote round and split it (seen in one failover in three); the stagger orders them
//! by node id, one step apart, with a little randomness inside the step. Once a node has
//! stood, its vote is no longer a granted one and openraft's own timer takes over the
//! retries, so a node cut off from the others raises its term no more often than openraft
//! alone would make it.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::context::NodeCtx;
use crate::types::NodeId;

/// How often the time since the leader's last contact is checked.
const CHECK_EVERY: Duration = Duration::from_millis(5);

/// Whether this node should stand now: a voter that follows a granted leader it has not
/// heard from for `wait`.
pub fn should_stand(
    follows_granted_leader: bool,
    voter: bool,
    since_contact: Option<Duration>,
    wait: Duration,
) -> bool {
    follows_granted_leader && voter && since_contact.is_some_and(|s| s >= wait)
}

/// How long after the lease this node stands: 5 ms, plus `rank` steps (its place by id among
/// the voters that could stand), plus up to a fifth of a step at random.
fn stagger(rank: usize, step: Duration) -> Duration {
    let step = step.max(Duration::from_millis(5));
    let base = Duration::from_millis(5) + step * rank as u32;
    base + rand::rng().random_range(Duration::ZERO..step / 5)
}

/// This node's place among the voters other than the silent leader, by id.
fn rank(voters: impl Iterator<Item = NodeId>, me: NodeId, leader: Option<NodeId>) -> usize {
    voters.filter(|v| *v < me && Some(*v) != leader).count()
}

/// Runs for the node's lifetime.
pub async fn run(node: Arc<NodeCtx>) {
    let lease = node.config.leader_silence();
    // A vote round is two fsyncs (the candidate's vote, then the voter's) and a round trip.
    let step = Duration::from_millis(node.config.election_max_ms.saturating_sub(node.config.election_min_ms) / 4);
    let mut metrics = node.raft.metrics();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (follows, voter, leader, term, rank) = {
            let m = metrics.borrow_and_update();
            let follows = m.vote.is_committed() && m.current_leader.is_some_and(|l| l != node.id);
            let membership = m.membership_config.membership();
            let voter = membership.voter_ids().any(|v| v == node.id);
            let rank = rank(membership.voter_ids(), node.id, m.current_leader);
            (follows, voter, m.current_leader, m.vote.leader_id().term, rank)
        };
        let since = node.serving.since_leader_contact();
        if !should_stand(follows, voter, since, lease + stagger(rank, step)) {
            continue;
        }
        tracing::info!(
            "leader {leader:?} of term {term} silent for {} ms (lease {} ms): standing for election",
            since.unwrap_or_default().as_millis(),
            lease.as_millis()
        );
        if node.raft.trigger().elect().await.is_err() {
            // Raft stopped (shut down or fatal): `fatal::watch` reports it.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stands_only_as_a_voter_whose_granted_leader_went_silent_past_the_wait() {
        let wait = Duration::from_millis(250);
        let long = Some(Duration::from_millis(300));
        assert!(should_stand(true, true, long, wait));
        assert!(!should_stand(true, true, Some(Duration::from_millis(100)), wait), "leader heard lately");
        assert!(!should_stand(true, true, None, wait), "never heard from a leader: openraft's timer decides");
        assert!(!should_stand(false, true, long, wait), "already standing, or leading: openraft's timer retries");
        assert!(!should_stand(true, false, long, wait), "a learner never stands");
    }

    #[test]
    fn followers_stand_one_step_apart_in_id_order() {
        let step = Duration::from_millis(30);
        // Leader 2 of voters 1..=5: the others rank 0, 1, 2, 3.
        let ranks: Vec<usize> = [1, 3, 4, 5].iter().map(|&me| rank(1..=5, me, Some(2))).collect();
        assert_eq!(ranks, [0, 1, 2, 3]);
        for _ in 0..1000 {
            let first = stagger(0, step);
            let second = stagger(1, step);
            assert!(first >= Duration::from_millis(5) && first < Duration::from_millis(11), "{first:?}");
            assert!(second >= first + step - step / 5, "{first:?} then {second:?}");
        }
        assert!(stagger(0, Duration::ZERO) >= Duration::from_millis(5));
    }
}
