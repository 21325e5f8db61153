//! Elections are called from here; openraft's own election timer is off (`enable_elect:
//! false`).
//!
//! A follower of an elected leader stands for one of two reasons:
//! - **The leader's process is gone.** Each follower holds a stream open to its leader
//!   ([`hold`]). When it breaks and a new connection is refused at once, nothing is listening
//!   at the leader's address any more (killed, crashed, stopped). The follower then stands as
//!   soon as the other voters' lease has run out (`election_min` after they last heard the
//!   leader, during which they refuse any candidate), staggered by node id so that two
//!   followers do not split the vote. A killed leader is replaced in about the lease.
//! - **The leader is silent**, for `election_max` plus a random part of
//!   `election_min..election_max`: openraft's own rule at these settings, for a leader that
//!   cannot say it is gone (its host died, or the network between them did). The held
//!   stream ticks every heartbeat from the leader's runtime, not its Raft core: while it
//!   does, the leader is alive and only its core is held up (openraft's leader waits for its
//!   own fsync before it replicates or heartbeats), and it gets [`BUSY`] times as long. A
//!   check that comes late means this node's own thread was held up; it is skipped, so that
//!   a node that stalled does not blame its leader for messages it has not read yet.
//!
//! Without an elected leader (this node stood, or voted for a candidate that has not won) it
//! stands again after a random `election_min..election_max` since its vote last changed, as
//! openraft would. Silence alone never makes a node stand sooner than before this module, so
//! a busy machine sees no more spurious elections; only a leader that is certainly gone is
//! replaced faster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use switchyard_proto::raft::{Empty, LeaderReply, LeaderRequest};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::context::NodeCtx;
use crate::types::NodeId;

/// How often the facts are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(5);
/// A check this much later than the last means this node's thread was held up.
const LATE: Duration = Duration::from_millis(50);
/// Past the lease before the first follower in id order stands: the other voters heard the
/// leader's last message a few milliseconds after this one recorded it.
const MARGIN: Duration = Duration::from_millis(15);
/// Between followers in id order: about one vote round and the new leader's first append.
const STEP: Duration = Duration::from_millis(40);

/// How many silences a leader whose held stream still ticks is given before followers stand.
const BUSY: u32 = 4;

/// How long a hold call may take to be answered.
const OPEN_WITHIN: Duration = Duration::from_secs(1);

/// A leader, by id and term.
type Term = (NodeId, u64);

/// What one check sees.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub voter: bool,
    pub leading: bool,
    pub sole_voter: bool,
    /// This node's vote is for an elected leader (whether or not it knows which node).
    pub committed: bool,
    /// The followed leader's process was found gone.
    pub gone: bool,
    /// Since the leader last reached this node, or this node's vote last changed if later.
    pub since_contact: Duration,
    /// Since the stream held to the leader last ticked (or the vote changed, if later).
    pub since_alive: Duration,
    /// Since this node's vote last changed.
    pub since_vote: Duration,
    /// Since this node last stood (`None`: never).
    pub since_stood: Option<Duration>,
    /// Its vote has not changed since it last stood.
    pub stood_unseen: bool,
    /// This node's place by id among the voters that may stand (the leader excluded).
    pub rank: usize,
}

/// The waits, drawn by [`run`].
#[derive(Clone, Copy, Debug)]
pub struct Waits {
    pub lease: Duration,
    pub silence: Duration,
    pub retry: Duration,
}

/// Why a node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    SoleVoter,
    NoLeader,
    LeaderGone,
    LeaderSilent,
}

impl Why {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Why::SoleVoter => "sole_voter",
            Why::NoLeader => "no_leader",
            Why::LeaderGone => "leader_gone",
            Why::LeaderSilent => "leader_silent",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Why::SoleVoter => "the only voter",
            Why::NoLeader => "no leader elected",
            Why::LeaderGone => "the leader's process is gone",
            Why::LeaderSilent => "the leader is silent",
        }
    }
}

/// Why this node should stand now, if it should.
pub fn should_stand(f: &Facts, w: &Waits) -> Option<Why> {
    if !f.voter || f.leading {
        return None;
    }
    // One standing at a time: the vote it cast has not shown in the metrics yet, or (when it
    // never does) openraft's core is busy, and standing again would only queue more.
    let settle = if f.stood_unseen { w.silence } else { w.retry.min(w.lease) };
    if f.since_stood.is_some_and(|s| s < settle) {
        return None;
    }
    if f.sole_voter {
        return Some(Why::SoleVoter);
    }
    if !f.committed {
        return (f.since_vote >= w.retry).then_some(Why::NoLeader);
    }
    if f.gone && f.since_contact >= w.lease + MARGIN + STEP * f.rank as u32 {
        return Some(Why::LeaderGone);
    }
    // A leader whose stream still ticks is alive but its Raft core is held up (a slow
    // fsync): given longer, not forever (a hung disk must not keep it leader).
    let silent = f.since_contact >= w.silence && (f.since_alive >= w.silence || f.since_contact >= w.silence * BUSY);
    silent.then_some(Why::LeaderSilent)
}

/// This node's place among the voters other than `leader`, by id.
fn rank(voters: impl Iterator<Item = NodeId>, me: NodeId, leader: Option<NodeId>) -> usize {
    voters.filter(|v| *v < me && Some(*v) != leader).count()
}

fn between(lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    rand::rng().random_range(lo..hi)
}

/// Runs for the node's lifetime.
pub async fn run(node: Arc<NodeCtx>) {
    let (min, max) =
        (Duration::from_millis(node.config.election_min_ms), Duration::from_millis(node.config.election_max_ms));
    let draw = || Waits { lease: node.config.lease(), silence: max + between(min, max), retry: between(min, max) };
    let mut waits = draw();
    let mut metrics = node.raft.metrics();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_check = Instant::now();
    let mut vote_seen = None;
    let mut vote_at = Instant::now();
    let mut stood_at: Option<Instant> = None;
    // The last pre-vote was refused (logged once until one passes).
    let mut refused = false;
    let mut refused_at: Option<Instant> = None;
    let gone: Arc<Mutex<Option<Term>>> = Arc::default();
    let mut held: Option<(Term, CancellationToken)> = None;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let late = now.duration_since(last_check) > LATE;
        last_check = now;
        let (mut facts, following, leader_addr, term) = {
            let m = metrics.borrow_and_update();
            if vote_seen.as_ref() != Some(&m.vote) {
                vote_seen = Some(m.vote);
                vote_at = now;
                waits = draw();
            }
            let membership = m.membership_config.membership();
            let following = match m.current_leader {
                Some(l) if l != node.id && m.vote.is_committed() => Some((l, m.vote.leader_id().term)),
                _ => None,
            };
            let addr = following.and_then(|(l, _)| membership.get_node(&l).map(|n| n.addr.clone()));
            let facts = Facts {
                voter: membership.voter_ids().any(|v| v == node.id),
                leading: m.current_leader == Some(node.id),
                sole_voter: membership.voter_ids().count() == 1,
                committed: m.vote.is_committed(),
                rank: rank(membership.voter_ids(), node.id, m.current_leader),
                ..Facts::default()
            };
            (facts, following, addr, m.vote.leader_id().term)
        };
        // The hold stream follows the elected leader.
        if held.as_ref().map(|h| h.0) != following {
            if let Some((_, stop)) = held.take() {
                stop.cancel();
            }
            if let (Some(f), Some(addr)) = (following, leader_addr) {
                let stop = node.shutdown.child_token();
                tokio::spawn(hold(node.clone(), f, addr, gone.clone(), stop.clone()));
                held = Some((f, stop));
            }
        }
        if late {
            continue;
        }
        // Raft's metrics show a vote only once its core has written it; a vote this node cast,
        // or a leader's message, counts from when it arrived.
        let serving = &node.serving;
        let since_vote =
            serving.since_leader_or_vote().map_or(now.duration_since(vote_at), |d| d.min(now.duration_since(vote_at)));
        facts.since_vote = since_vote;
        // Already bounded by the leader's last message (above).
        facts.since_contact = since_vote;
        facts.since_alive = serving.since_leader_alive().map_or(since_vote, |c| c.min(since_vote));
        facts.gone = following.is_some() && *gone.lock().unwrap_or_else(|e| e.into_inner()) == following;
        facts.since_stood = stood_at.map(|t| now.duration_since(t));
        facts.stood_unseen = stood_at.is_some_and(|t| vote_at < t);
        if refused_at.is_some_and(|t| now.duration_since(t) < waits.retry) {
            continue;
        }
        let Some(why) = should_stand(&facts, &waits) else { continue };
        let voters: Vec<(NodeId, String)> = {
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .map(|v| (v, membership.get_node(&v).map(|n| n.addr.clone()).unwrap_or_default()))
                .collect()
        };
        if why != Why::SoleVoter && !prevote(&node, &voters, waits.lease).await {
            // Asked again after a retry wait, not a silence: a refusal changes no vote.
            refused_at = Some(now);
            if !refused {
                tracing::info!(term, "not standing ({}): most voters still hear a leader", why.text());
                refused = true;
            }
            continue;
        }
        refused = false;
        // The pre-vote took a while (up to the lease, for a voter that does not answer): a
        // leader heard or a vote cast since the decision makes it stale.
        let since_decided = now.elapsed();
        if serving.since_leader_or_vote().is_some_and(|d| d < since_decided) {
            tracing::debug!(term, "not standing ({}): a leader or a candidate was heard meanwhile", why.text());
            continue;
        }
        stood_at = Some(now);
        serving.voted();
        tracing::info!(
            term,
            silent_ms = facts.since_contact.as_millis() as u64,
            "standing for election: {}",
            why.text()
        );
        node.metrics.elections.get_or_create(&vec![("why", why.label().to_string())]).inc();
        if node.raft.trigger().elect().await.is_err() {
            // Raft stopped (shut down or fatal): `fatal::watch` reports it.
            break;
        }
    }
    if let Some((_, stop)) = held {
        stop.cancel();
    }
}

/// A pre-vote: whether most voters would take part in an election now. This node would; a
/// peer would unless it leads, or heard from its leader (or voted) within the lease (it would
/// refuse the vote anyway, and a candidate's higher term would unseat a leader that is
/// fine), or its log is longer than this node's (it would refuse the vote by log, and
/// openraft would leave its term below the loser's). A peer that does not answer within the
/// lease counts against. Without this a node cut off from the others, or just restarted
/// (openraft retries a lost follower only every 500 ms), would stand, raise its term, and
/// make a healthy leader step down when it heard of it.
async fn prevote(node: &NodeCtx, voters: &[(NodeId, String)], lease: Duration) -> bool {
    let ask = match node.log.last_log_id() {
        Ok(last) => LeaderRequest {
            last_log_term: last.map_or(0, |l| l.leader_id.term),
            last_log_index: last.map_or(0, |l| l.index),
            compare_log: true,
        },
        Err(e) => {
            // Peers then judge only by their leader; openraft's vote check still compares logs.
            tracing::warn!("pre-vote: cannot read this node's last log entry: {e}");
            LeaderRequest::default()
        }
    };
    let asks = voters.iter().filter(|(id, _)| *id != node.id).map(|(_, addr)| async move {
        let mut client = node.clients.get(addr).ok()?;
        let mut req = tonic::Request::new(ask);
        node.clients.attach(&mut req);
        let r = tokio::time::timeout(lease, client.leader(req)).await.ok()?.ok()?.into_inner();
        Some(r)
    });
    // Decided as soon as the count is: a voter that does not answer (stopped, cut off) would
    // otherwise hold the standing up for the whole lease.
    let mut pending: futures::stream::FuturesUnordered<_> = asks.collect();
    let mut replies = Vec::new();
    while let Some(r) = futures::StreamExt::next(&mut pending).await {
        replies.push(r);
        if let Some(outcome) = decided(&replies, pending.len(), voters.len(), lease) {
            return outcome;
        }
    }
    majority_willing(&replies, voters.len(), lease)
}

/// The pre-vote's outcome with `replies` in and `unanswered` peers still to answer; `None`
/// while their answers could still change it.
fn decided(replies: &[Option<LeaderReply>], unanswered: usize, voters: usize, lease: Duration) -> Option<bool> {
    if majority_willing(replies, voters, lease) {
        return Some(true);
    }
    let best = LeaderReply { leader_id: 0, since_leader_ms: u64::MAX, ..Default::default() };
    let mut all = replies.to_vec();
    all.extend(std::iter::repeat_n(Some(best), unanswered));
    (!majority_willing(&all, voters, lease)).then_some(false)
}

/// The pre-vote's count: this node, and each peer that answered without a leader (or a vote)
/// heard within the lease and with a log no longer than this node's.
fn majority_willing(replies: &[Option<LeaderReply>], voters: usize, lease: Duration) -> bool {
    let lease_ms = lease.as_millis() as u64;
    // Not `leader_id == 0` alone: a peer that just voted for a candidate names no leader yet.
    let willing = |r: &&LeaderReply| !r.log_behind && r.since_leader_ms >= lease_ms;
    let peers = replies.iter().flatten().filter(willing).count();
    1 + peers > voters / 2
}

/// Holds a stream open to `leader` at `addr` until `stop`. A stream the leader took, then
/// broken, is followed by a new call at once: refused (UNAVAILABLE), the leader's process is
/// gone and `gone` says so; taken again, it was a blip.
async fn hold(node: Arc<NodeCtx>, leader: Term, addr: String, gone: Arc<Mutex<Option<Term>>>, stop: CancellationToken) {
    let Ok(mut client) = node.clients.dedicated(&addr) else { return };
    let retry = Duration::from_millis(node.config.heartbeat_ms);
    let mut taken = false;
    loop {
        let mut req = tonic::Request::new(Empty {});
        node.clients.attach(&mut req);
        // A port that takes connections nobody serves (a socket held by a supervisor while
        // the node is down) would keep the call waiting: silence decides that case.
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(OPEN_WITHIN, client.hold(req)) => r,
        };
        let Ok(opened) = opened else { continue };
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let opened_at = Instant::now();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match msg {
                        Ok(Some(_)) => {
                            taken = true;
                            node.serving.leader_alive();
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                // Broken or ended: ask again at once, unless it lasted so short a time that
                // asking at once would only spin.
                if taken && opened_at.elapsed() >= retry {
                    continue;
                }
            }
            Err(s) if taken && refused(&s) => {
                tracing::info!(leader = leader.0, term = leader.1, "the leader's process is gone: {}", s.message());
                *gone.lock().unwrap_or_else(|e| e.into_inner()) = Some(leader);
                return;
            }
            // Not leading yet (a new leader's metrics lag), or not reachable yet.
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// The call found nothing listening at the leader's address (or the connection reset as it
/// was made): not a timeout, a TLS failure or an answer, which a live leader can give.
fn refused(s: &tonic::Status) -> bool {
    if s.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset);
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests;
