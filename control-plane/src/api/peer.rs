//! The peer-only Raft service: openraft's RPCs and leader forwarding. Every call's cluster id
//! is checked, and its payload must be one a legitimate peer could send ([`sane`],
//! [`forwardable`]), before it reaches openraft or the leader's proposer.

pub mod forwardable;
pub mod sane;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::raft::AppendEntriesResponse;
use switchyard_proto::raft::raft_server::Raft;
use switchyard_proto::raft::{Empty, InitializedReply, LeaderReply, LeaderRequest, RaftPayload};
use tonic::{Request, Response, Status};

use crate::network::{decode, encode};
use crate::node::bootstrap::members_hash;
use crate::node::calls::Envelope;
use crate::node::context::NodeCtx;
use crate::node::leader;

/// Cheap to clone: a held stream serves its requests with a clone of its own.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<NodeCtx>,
    chunks: Arc<sane::Chunks>,
    quiet: Arc<Quiet>,
}

impl PeerService {
    pub fn new(node: Arc<NodeCtx>) -> PeerService {
        PeerService { node, chunks: Arc::default(), quiet: Arc::default() }
    }
}

/// A flood of bad requests must not become a flood of log lines: at most one a second, with
/// how many were left out since the last.
#[derive(Default)]
struct Quiet {
    last: Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

const LOG_EVERY: Duration = Duration::from_secs(1);

impl Quiet {
    /// `Some(skipped since the last line)` when a line may be written now.
    fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// A request as it arrived: who sent it, the cluster id it carried (checked), its payload.
struct Incoming<T> {
    from: Option<SocketAddr>,
    cluster_id: Option<String>,
    rpc: T,
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    Ok(Response::new(RaftPayload { data: encode(v) }))
}

impl PeerService {
    fn payload<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        req: Request<RaftPayload>,
    ) -> Result<Incoming<T>, Status> {
        let from = req.remote_addr();
        let cluster_id = self.node.cluster_id.check(&req)?;
        let rpc = decode(&req.into_inner().data).map_err(|e| self.refuse(from, method, format!("bad payload: {e}")))?;
        Ok(Incoming { from, cluster_id, rpc })
    }

    /// INVALID_ARGUMENT with the reason, and a (rate-limited) warning naming the sender.
    fn refuse(&self, from: Option<SocketAddr>, method: &'static str, reason: impl std::fmt::Display) -> Status {
        if let Some(skipped) = self.quiet.allow() {
            let from = from.map_or_else(|| "unknown".to_string(), |a| a.to_string());
            tracing::warn!(%from, method, skipped, "refused a peer request: {reason}");
        }
        Status::invalid_argument(format!("refused {method}: {reason}"))
    }

    /// A request from an elected leader of this node's term or a later one arrived: the
    /// leader is alive, whether or not this node's Raft core gets to it soon (a long fsync
    /// holds it). Counted on arrival so that [`crate::node::election`] does not take a busy
    /// core for a silent leader.
    fn arrived_from_leader(&self, vote: &openraft::Vote<crate::types::NodeId>) {
        let mine = self.node.raft.metrics().borrow().vote;
        if vote.is_committed() && *vote >= mine {
            self.node.serving.heard_from_leader();
        }
    }

    /// A leader reached this node: a node without a cluster id yet takes the leader's.
    fn accepted_from_leader(&self, id: Option<&str>) -> Result<(), Status> {
        self.node.serving.heard_from_leader();
        match id {
            Some(id) if self.node.cluster_id.get().is_none() => self
                .node
                .cluster_id
                .adopt(id)
                .map_err(|e| Status::internal(format!("cannot store the cluster id: {e}"))),
            _ => Ok(()),
        }
    }
}

/// A held stream: a tick at once (the stream was taken), then one every heartbeat while this
/// node leads.
type HoldStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Empty, Status>> + Send>>;

/// The next tick of a held stream: `None` once this node no longer leads, or shuts down.
/// Ticks come from this node's runtime, not its Raft core, so a follower can tell a leader
/// whose core waits on a slow fsync from one that is gone.
async fn tick(node: &NodeCtx, every: &mut tokio::time::Interval) -> Option<Result<Empty, Status>> {
    tokio::select! {
        _ = node.shutdown.cancelled() => return None,
        _ = every.tick() => {}
    }
    leads(node).then_some(Ok(Empty {}))
}

/// This node leads. Not only `current_leader`: openraft 0.9 keeps a leader that removed
/// itself from the membership named as leader once it has stepped down.
fn leads(node: &NodeCtx) -> bool {
    let m = node.raft.metrics();
    let m = m.borrow();
    m.current_leader == Some(node.id) && m.state == openraft::ServerState::Leader
}

/// The replies of a held AppendStream, one per request, in order.
type AppendReplies = std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

impl PeerService {
    /// One AppendEntries, unary or from a held stream: checked, then handed to Raft.
    async fn append(
        &self,
        from: Option<SocketAddr>,
        cluster_id: Option<&str>,
        data: &[u8],
    ) -> Result<RaftPayload, Status> {
        let m = "AppendEntries";
        let rpc = decode(data).map_err(|e| self.refuse(from, m, format!("bad payload: {e}")))?;
        sane::append(&rpc)
            .and_then(|()| sane::carrier(self.node.id, &rpc.vote, true))
            .map_err(|e| self.refuse(from, m, e))?;
        self.arrived_from_leader(&rpc.vote);
        let r = self.node.raft.append_entries(rpc).await;
        if matches!(r, Ok(ref a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
            self.accepted_from_leader(cluster_id)?;
        }
        Ok(RaftPayload { data: encode(&r) })
    }
}

#[tonic::async_trait]
impl Raft for PeerService {
    type HoldStream = HoldStream;
    type AppendStreamStream = AppendReplies;

    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let from = req.remote_addr();
        let cluster_id = self.node.cluster_id.check(&req)?;
        Ok(Response::new(self.append(from, cluster_id.as_deref(), &req.into_inner().data).await?))
    }

    /// The cluster id is checked once, when the stream opens (it rides in the call's
    /// metadata); every request is checked as a unary one would be. A refused request ends the
    /// stream with its status, and the leader opens another for its next append.
    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<AppendReplies>, Status> {
        let from = req.remote_addr();
        let cluster_id = self.node.cluster_id.check(&req)?;
        let requests = req.into_inner();
        let replies =
            futures::stream::try_unfold((self.clone(), requests, cluster_id), move |(svc, mut requests, id)| {
                async move {
                    // A node shutting down ends the stream, as it ends held ones: a server stops
                    // gracefully only once every stream has ended.
                    let next = tokio::select! {
                        _ = svc.node.shutdown.cancelled() => None,
                        next = requests.message() => next?,
                    };
                    let Some(req) = next else {
                        return Ok(None);
                    };
                    let reply = svc.append(from, id.as_deref(), &req.data).await?;
                    Ok(Some((reply, (svc, requests, id))))
                }
            });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let m = "Vote";
        let Incoming { from, rpc, .. } = self.payload(m, req)?;
        sane::vote(&rpc)
            .and_then(|()| sane::carrier(self.node.id, &rpc.vote, false))
            .map_err(|e| self.refuse(from, m, e))?;
        let r = self.node.raft.vote(rpc).await;
        if matches!(r, Ok(ref v) if v.vote_granted) {
            self.node.serving.voted();
        }
        reply(&r)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let m = "InstallSnapshot";
        let Incoming { from, cluster_id, rpc } = self.payload(m, req)?;
        sane::snapshot(&rpc)
            .and_then(|()| self.chunks.check(&rpc))
            .and_then(|()| sane::carrier(self.node.id, &rpc.vote, true))
            .map_err(|e| self.refuse(from, m, e))?;
        self.arrived_from_leader(&rpc.vote);
        let (id, offset, len) = (rpc.meta.snapshot_id.clone(), rpc.offset, rpc.data.len());
        let r = self.node.raft.install_snapshot(rpc).await;
        if r.is_ok() {
            self.chunks.accepted(&id, offset, len);
            self.accepted_from_leader(cluster_id.as_deref())?;
        }
        reply(&r)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let m = "Forward";
        let Incoming { from, rpc, .. } = self.payload::<Envelope>(m, req)?;
        forwardable::check(&rpc).map_err(|e| self.refuse(from, m, e))?;
        Ok(Response::new(RaftPayload { data: leader::serve_forwarded(&self.node, rpc).await }))
    }

    async fn hold(&self, req: Request<Empty>) -> Result<Response<HoldStream>, Status> {
        self.node.cluster_id.check(&req)?;
        if !leads(&self.node) {
            return Err(Status::failed_precondition("not the leader"));
        }
        // The first tick is at once: it says the stream was taken.
        let every = tokio::time::interval(Duration::from_millis(self.node.config.heartbeat_ms));
        let ticks = futures::stream::unfold((self.node.clone(), every), |(node, mut every)| async move {
            let t = tick(&node, &mut every).await?;
            Some((t, (node, every)))
        });
        Ok(Response::new(Box::pin(ticks)))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderReply>, Status> {
        self.node.cluster_id.check(&req)?;
        let asker = req.into_inner();
        let (leader, term) = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.vote.leader_id().term)
        };
        // A vote cast within the lease counts as hearing a leader: an election is under way
        // (Raft's metrics may not show its winner yet), and this node would refuse another
        // candidate until the lease runs out anyway.
        let since = if leads(&self.node) {
            0
        } else {
            self.node.serving.since_leader_or_vote().map_or(u64::MAX, |d| d.as_millis() as u64)
        };
        // A log this node cannot read does not hold the asker back: openraft's vote check still
        // applies the rule, and a refusal here would count against every candidate.
        let log_behind = match self.node.log.last_log_id() {
            Ok(mine) => asker_behind(&asker, mine),
            Err(e) => {
                tracing::warn!("pre-vote: cannot read this node's last log entry: {e}");
                false
            }
        };
        Ok(Response::new(LeaderReply { leader_id: leader.unwrap_or(0), term, since_leader_ms: since, log_behind }))
    }

    async fn initialized(&self, _req: Request<Empty>) -> Result<Response<InitializedReply>, Status> {
        let node = &self.node;
        let initialized = node.raft.is_initialized().await.unwrap_or(false);
        Ok(Response::new(InitializedReply {
            initialized,
            node_id: node.id,
            cluster_id: node.cluster_id.get().unwrap_or_default(),
            members: if initialized { node.member_ids() } else { Vec::new() },
            members_hash: members_hash(&node.config.initial_cluster),
            version: switchyard_model::version::VERSION.into(),
            protocol: switchyard_model::version::PROTOCOL.to_string(),
            max_feature_level: switchyard_model::version::max_feature_level(),
        }))
    }
}

/// Raft's up-to-date rule on (term, index), for a pre-vote: whether the asker's log is behind
/// `mine`. A candidate this node would refuse by log must not raise the term: openraft keeps
/// its term when it refuses by log, so the others would then stand below the loser's term and
/// lose too. An asker that sent no log id (one from before pre-votes compared logs) is not.
fn asker_behind(asker: &LeaderRequest, mine: Option<crate::types::LogId>) -> bool {
    let mine = mine.map_or((0, 0), |l| (l.leader_id.term, l.index));
    asker.compare_log && (asker.last_log_term, asker.last_log_index) < mine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pre_vote_asker_is_behind_by_term_first_then_index() {
        let ask = |term, index| LeaderRequest { last_log_term: term, last_log_index: index, compare_log: true };
        let mine = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(5, 1), 100));
        assert!(asker_behind(&ask(5, 99), mine));
        assert!(!asker_behind(&ask(5, 100), mine), "as long is not behind");
        assert!(!asker_behind(&ask(6, 3), mine), "a later term wins over a longer log");
        assert!(asker_behind(&ask(4, 500), mine));
        assert!(!asker_behind(&ask(0, 0), None), "two empty logs");
        assert!(!asker_behind(&LeaderRequest::default(), mine), "an old node sends no log id: not held back");
    }

    #[test]
    fn refusal_lines_are_limited_to_one_a_second_and_count_the_rest() {
        let q = Quiet::default();
        assert_eq!(q.allow(), Some(0));
        assert_eq!(q.allow(), None);
        assert_eq!(q.allow(), None);
        *q.last.lock().unwrap() = Some(Instant::now() - LOG_EVERY);
        assert_eq!(q.allow(), Some(2));
    }
}
