//! Carrying out leader calls: on the leader itself ([`RunOnLeader`]), or from any node
//! through [`execute`] and [`write`], which find the leader, forward, and retry while an
//! election is under way, all within the write timeout.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use switchyard_proto::v1::{Change, MemberRole};

use super::calls::*;
use super::context::NodeCtx;
use crate::error::ApiError;
use crate::network;
use crate::pb::Pb;
use crate::state::{from_wire, Command, Proposed};
use crate::types::NodeId;

/// A call's work on the leader. Not leading answers [`ExecError::NotLeader`].
pub trait RunOnLeader: LeaderCall {
    fn run(self, ctx: &NodeCtx) -> impl Future<Output = Result<Self::Reply, ExecError>> + Send;
}

fn membership_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ExecError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ExecError::NotLeader(f.leader_node.map(|n| n.addr))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ExecError::Api(ApiError::FailedPrecondition(e.to_string()))
        }
        // The change may be in the log already.
        RaftError::Fatal(f) => ExecError::Api(ApiError::OutcomeUnknown(format!("raft stopped: {f}"))),
    }
}

impl RunOnLeader for Writes {
    async fn run(self, ctx: &NodeCtx) -> Result<Self::Reply, ExecError> {
        ctx.ensure_leader()?;
        // Request ids come from a peer: check them before they reach Raft.
        let waits: Vec<_> = self
            .0
            .into_iter()
            .map(|p| async move {
                match p.id.as_ref().map(|id| id.check()) {
                    Some(Err(e)) => Err(ExecError::Api(e)),
                    _ => propose_write(ctx, p).await,
                }
            })
            .collect();
        Ok(futures::future::join_all(waits).await)
    }
}

impl RunOnLeader for AddNode {
    async fn run(self, ctx: &NodeCtx) -> Result<u64, ExecError> {
        ctx.ensure_leader()?;
        if ctx.members().iter().any(|m| m.id == self.id) {
            return Err(ExecError::Api(ApiError::AlreadyExists(format!("node {} is already a member", self.id))));
        }
        crate::features::check_joiner(ctx, self.id, &self.addr)
            .await
            .map_err(|why| ExecError::Api(ApiError::FailedPrecondition(why)))?;
        let r = ctx.raft.add_learner(self.id, BasicNode::new(self.addr), false).await.map_err(membership_err)?;
        Ok(r.log_id.index)
    }
}

impl RunOnLeader for Promote {
    async fn run(self, ctx: &NodeCtx) -> Result<u64, ExecError> {
        ctx.ensure_leader()?;
        let id = self.id;
        match ctx.members().iter().find(|m| m.id == id) {
            None => return Err(ExecError::Api(ApiError::NotFound(format!("node {id} is not a member; add it first")))),
            Some(m) if m.role == MemberRole::Voter as i32 => {
                return Err(ExecError::Api(ApiError::FailedPrecondition(format!("node {id} is already a voter"))))
            }
            _ => {}
        }
        caught_up(ctx, id).await?;
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        let r = ctx.raft.change_membership(change, false).await.map_err(membership_err)?;
        Ok(r.log_id.index)
    }
}

/// Most entries a learner may lack and still be promoted: a voter far behind (or
/// unreachable) would count toward quorum without being able to acknowledge anything.
pub const MAX_PROMOTE_LAG: u64 = 100;

/// Entries `id` lacks per this leader's replication metrics, and whether it has acknowledged
/// any (one that never has is not caught up, however short the log); `None` when not leading.
fn lag(m: &RaftMetrics<NodeId, BasicNode>, id: NodeId) -> Option<(u64, bool)> {
    let matched = m.replication.as_ref()?.get(&id).copied().flatten();
    let behind = m.last_log_index.unwrap_or(0).saturating_sub(matched.map_or(0, |l| l.index));
    Some((behind, matched.is_some()))
}

/// Waits up to half the write timeout (so the refusal arrives before the caller gives up) for
/// learner `id` to come within [`MAX_PROMOTE_LAG`] of the leader's log, then refuses: waiting
/// covers a learner that is just finishing, refusing keeps an unreachable one from joining.
async fn caught_up(ctx: &NodeCtx, id: NodeId) -> Result<(), ExecError> {
    let close = |m: &RaftMetrics<NodeId, BasicNode>| lag(m, id).is_none_or(|(n, heard)| heard && n <= MAX_PROMOTE_LAG);
    let _ = ctx.raft.wait(Some(ctx.config.write_timeout / 2)).metrics(close, "learner caught up").await;
    let behind = lag(&ctx.raft.metrics().borrow(), id);
    match behind {
        None => Err(ctx.ensure_leader().err().unwrap_or(ExecError::NotLeader(None))),
        Some((n, true)) if n <= MAX_PROMOTE_LAG => Ok(()),
        Some((n, heard)) => Err(ExecError::Api(ApiError::FailedPrecondition(format!(
            "node {id} is {n} entries behind{}; promote it once it has caught up",
            if heard { "" } else { " (it has acknowledged none yet)" }
        )))),
    }
}

impl RunOnLeader for Remove {
    async fn run(self, ctx: &NodeCtx) -> Result<u64, ExecError> {
        ctx.ensure_leader()?;
        let id = self.id;
        let members = ctx.members();
        let voters = members.iter().filter(|m| m.role == MemberRole::Voter as i32).count();
        let change = match members.iter().find(|m| m.id == id) {
            None => return Err(ExecError::Api(ApiError::NotFound(format!("node {id} is not a member")))),
            Some(m) if m.role == MemberRole::Voter as i32 => {
                if voters == 1 {
                    return Err(ExecError::Api(ApiError::FailedPrecondition(format!(
                        "node {id} is the last voter; a cluster needs at least one"
                    ))));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            }
            Some(_) => ChangeMembers::RemoveNodes(BTreeSet::from([id])),
        };
        let r = ctx.raft.change_membership(change, false).await.map_err(membership_err)?;
        Ok(r.log_id.index)
    }
}

impl RunOnLeader for ReadIndex {
    async fn run(self, ctx: &NodeCtx) -> Result<u64, ExecError> {
        ctx.refuse_without_quorum()?;
        match ctx.raft.ensure_linearizable().await {
            Ok(l) => Ok(l.map_or(0, |l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ExecError::NotLeader(f.leader_node.map(|n| n.addr)))
            }
            // openraft's own text lists the whole membership in debug form.
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(ExecError::Api(ApiError::Unavailable(format!(
                    "no quorum: only node(s) {} confirmed node {}'s lead for a read",
                    q.got.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
                    ctx.id
                ))))
            }
            Err(e) => Err(ExecError::Api(ApiError::Unavailable(e.to_string()))),
        }
    }
}

impl RunOnLeader for Report {
    async fn run(self, ctx: &NodeCtx) -> Result<Self::Reply, ExecError> {
        ctx.ensure_leader()?;
        let Report { status: Pb(status), mut bindings, loads } = self;
        // Keys are hashed on the proxy; a raw one (an old proxy's) is never stored.
        bindings.retain(|Pb(b)| switchyard_model::affinity::is_hashed(&b.key));
        let (revision, since) = (status.applied_revision, status.applied_unix_ms);
        tracing::debug!(proxy = %status.proxy_id, bindings = bindings.len(), "report");
        let before = ctx.proxies.record(status, loads.into_iter().map(|Pb(l)| l).collect());
        // A first report may be a restarted proxy's cached config, applied long after the
        // write: propagation is timed only on revisions a proxy moved to while reporting here
        // (and, in `observe_propagation`, only on writes applied after its previous report).
        if let Some((_, reported_ms)) = before.filter(|(b, _)| revision > *b && since > 0) {
            ctx.metrics.observe_propagation(revision, since, reported_ms);
        }
        ctx.metrics.reports.inc();
        // Time comes from the leader, inside the command: apply stays deterministic.
        let now_ms = crate::clock::now_ms();
        if !bindings.is_empty() {
            let live = ctx.shared.read();
            let skipped = crate::sessions::drop_fresh_refreshes(&live.state, now_ms, &mut bindings);
            ctx.metrics.refreshes_skipped.inc_by(skipped as u64);
            let cap = crate::sessions::CAP;
            let refused = crate::sessions::drop_past_the_cap(&live.state, &mut bindings, cap);
            drop(live);
            if refused > 0 {
                ctx.metrics.bindings_refused_full.inc_by(refused as u64);
                tracing::debug!(
                    refused,
                    "session bindings past the cluster's {} or {} bytes: not recorded",
                    cap.count,
                    cap.bytes
                );
            }
        }
        if !bindings.is_empty() {
            ctx.metrics.bindings_absorbed.inc_by(bindings.len() as u64);
            // The report is answered once its bindings commit, so a flood of reports slows
            // its senders instead of queueing without bound.
            ctx.propose(Command::BindSessions { now_ms, bindings }.into()).await?.1.map_err(ExecError::Api)?;
        }
        Ok(ctx.proxies.cluster_loads().into_iter().map(Pb).collect())
    }
}

impl RunOnLeader for Loads {
    async fn run(self, ctx: &NodeCtx) -> Result<Self::Reply, ExecError> {
        ctx.ensure_leader()?;
        Ok(ctx.proxies.cluster_loads().into_iter().map(Pb).collect())
    }
}

impl RunOnLeader for ListProxies {
    async fn run(self, ctx: &NodeCtx) -> Result<Self::Reply, ExecError> {
        ctx.ensure_leader()?;
        Ok(ctx.proxies.list().into_iter().map(Pb).collect())
    }
}

/// Serves a call a follower forwarded: runs it here and encodes its typed answer.
pub async fn serve_forwarded(ctx: &NodeCtx, env: Envelope) -> Vec<u8> {
    match env {
        Envelope::Writes(c) => network::encode(&c.run(ctx).await),
        Envelope::AddNode(c) => network::encode(&c.run(ctx).await),
        Envelope::Promote(c) => network::encode(&c.run(ctx).await),
        Envelope::Remove(c) => network::encode(&c.run(ctx).await),
        Envelope::ReadIndex(c) => network::encode(&c.run(ctx).await),
        Envelope::Report(c) => network::encode(&c.run(ctx).await),
        Envelope::Loads(c) => network::encode(&c.run(ctx).await),
        Envelope::ListProxies(c) => network::encode(&c.run(ctx).await),
    }
}

/// Retries `attempt` while there is no leader or it just moved, within the write timeout.
/// A call that may have taken effect when time ran out says so ([`ApiError::OutcomeUnknown`]),
/// so clients know not to retry it blindly.
async fn with_leader<T, F, Fut>(ctx: &NodeCtx, mutates: bool, mut attempt: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ExecError>>,
{
    let timeout = ctx.config.write_timeout;
    // A node started with --join knows no leader until it is added: waiting out the timeout
    // for one would hold a client that could be asking a member instead.
    if ctx.config.join && ctx.member_ids().is_empty() {
        return Err(ApiError::Unavailable(format!(
            "node {} has not joined a cluster yet (started with --join: add it with `cluster add-node`); ask a member",
            ctx.id
        )));
    }
    let retrying = async {
        let mut backoff = Duration::from_millis(5);
        loop {
            match attempt().await {
                Ok(r) => return Ok(r),
                Err(ExecError::Api(e)) => return Err(e),
                Err(ExecError::NotLeader(_)) => {
                    // No leader yet (election under way) or it just moved: try again soon.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
            }
        }
    };
    match tokio::time::timeout(timeout, retrying).await {
        Ok(r) => r,
        Err(_) if mutates => Err(ApiError::OutcomeUnknown(format!(
            "no quorum: not acknowledged within {}ms (a write's outcome is unknown; read before retrying)",
            timeout.as_millis()
        ))),
        Err(_) => Err(ApiError::Unavailable(format!("no leader answered within {}ms", timeout.as_millis()))),
    }
}

/// Carries out `call` on the leader, wherever it is.
pub async fn execute<C: RunOnLeader>(ctx: &NodeCtx, call: C) -> Result<C::Reply, ApiError> {
    with_leader(ctx, C::MUTATES, || {
        let call = call.clone();
        async move {
            match call.clone().run(ctx).await {
                Err(ExecError::NotLeader(Some(addr))) if addr != ctx.advertise => ctx.clients.call(&addr, call).await,
                other => other,
            }
        }
    })
    .await
}

/// Applies a command through Raft and returns its revision and changes. A follower that
/// knows the leader hands the write straight on, gathered into batches; otherwise it is
/// tried here (this node may lead, or learn who does). A write with a request id is applied
/// at most once however often it is sent; a repeat answers with the first revision and
/// changes.
pub async fn write(ctx: &NodeCtx, cmd: impl Into<Proposed>) -> Result<(u64, Vec<Change>), ApiError> {
    let cmd = cmd.into();
    let (revision, outcome) = with_leader(ctx, true, || {
        let cmd = cmd.clone();
        async move {
            // The leader's own commands are never forwarded: a node that lost the lead while
            // proposing one (a leader frozen and resumed, say) drops it, and the new leader
            // would refuse it anyway, along with every admin write batched with it.
            if let (Some(what), Some(_)) = (cmd.cmd.internal(), ctx.remote_leader()) {
                return Err(ExecError::Api(ApiError::Unavailable(format!(
                    "node {} no longer leads; {what} is the leader's own and is not forwarded",
                    ctx.id
                ))));
            }
            let res = match ctx.remote_leader() {
                // A write applied once by its request id is not held for a leader that was
                // replaced meanwhile (frozen, cut off): it goes to the new one, and should the
                // old one have passed it on before it stopped, the copy that applies second is
                // answered as a repeat. Without an id it waits: a second copy would apply.
                Some(leader) if cmd.id.is_some() => tokio::select! {
                    r = ctx.forwarder.write(leader.clone(), cmd.clone()) => r,
                    to = leader_moved(ctx, &leader) => Err(ExecError::NotLeader(Some(to))),
                },
                Some(leader) => ctx.forwarder.write(leader, cmd.clone()).await,
                None => propose_write(ctx, cmd.clone()).await,
            };
            match res {
                Err(ExecError::NotLeader(Some(addr))) if addr != ctx.advertise && cmd.cmd.internal().is_none() => {
                    ctx.forwarder.write(addr, cmd).await
                }
                other => other,
            }
        }
    })
    .await?;
    from_wire(outcome).map(|c| (revision, c))
}

/// Resolves once this node knows of a leader other than the one at `from`, with its address
/// (this node's own, if it won).
async fn leader_moved(ctx: &NodeCtx, from: &str) -> String {
    let mut rx = ctx.raft.metrics();
    loop {
        if let (Some(_), Some(addr)) = ctx.leader() {
            if addr != from {
                return addr;
            }
        }
        if rx.changed().await.is_err() {
            // Raft stopped: the write's own path reports that.
            std::future::pending::<()>().await;
        }
    }
}

/// Proposes an admin write on the leader, after the affinity secret: see
/// [`crate::sessions::ensure_secret`].
async fn propose_write(ctx: &NodeCtx, cmd: Proposed) -> Result<Written, ExecError> {
    crate::sessions::ensure_secret(ctx).await?;
    ctx.propose(cmd).await
}

/// Waits until this node has applied everything the leader had committed when asked.
pub async fn linearize(ctx: &NodeCtx) -> Result<(), ApiError> {
    let index = execute(ctx, ReadIndex).await?;
    ctx.raft
        .wait(Some(ctx.config.write_timeout))
        .applied_index_at_least(Some(index), "read index")
        .await
        .map_err(|e| ApiError::Unavailable(format!("this node is behind the leader: {e}")))?;
    Ok(())
}
