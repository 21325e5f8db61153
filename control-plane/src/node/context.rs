//! What every part of a node shares: its identity, Raft handle, the applied state, and the
//! queues to the leader. It knows nothing of the gRPC services or background tasks that use
//! it, so they depend on it and never the other way round.

use std::collections::BTreeSet;
use std::sync::Arc;

use switchyard_proto::v1::{Member, MemberRole};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::batch::Proposal;
use super::calls::{ExecError, Written};
use super::forward::{Forwarder, LeaderClients};
use super::proxies::ProxyRegistry;
use super::serving::Serving;
use crate::cluster_id::ClusterId;
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::state::Proposed;
use crate::store::sm::Shared;
use crate::types::{NodeId, Raft};

pub struct NodeCtx {
    pub id: NodeId,
    /// The address peers and clients reach this node at.
    pub advertise: String,
    pub raft: Raft,
    pub cluster_id: ClusterId,
    /// The applied state, read by the APIs and followed by watchers.
    pub shared: Arc<Shared>,
    pub config: NodeConfig,
    pub shutdown: CancellationToken,
    /// Proxies' reports, kept while this node leads.
    pub proxies: ProxyRegistry,
    pub clients: Arc<LeaderClients>,
    pub forwarder: Forwarder,
    /// Whether this node may serve watches and reports (a leader, and membership).
    pub serving: Serving,
    /// Set when the Raft core stops fatally (see [`crate::fatal`]).
    pub fatal: crate::fatal::Fatal,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What each member runs, as the leader last heard (see [`crate::features`]).
    pub features: crate::features::Members,
    /// The Raft log, read outside Raft's core only for its last entry (a pre-vote's check).
    pub log: crate::store::log::LogStore,
    /// Held while this node proposes the affinity secret ([`crate::sessions::ensure_secret`]).
    pub minting: tokio::sync::Mutex<()>,
    pub(super) proposals: mpsc::Sender<Proposal>,
}

impl NodeCtx {
    /// The leader this node knows of, with its address. Reads the metrics in place: this runs
    /// on every write, and cloning the metrics copies the whole membership.
    pub fn leader(&self) -> (Option<NodeId>, Option<String>) {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let addr = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        (m.current_leader, addr)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// How long this node has led without a majority answering it, once that is longer than
    /// [`UNSERVING_AFTER_ELECTIONS`] election timeouts (the margin after which a node stops
    /// serving watches): it is cut off, and another leader may already serve.
    ///
    /// openraft keeps such a leader leading (it has no check-quorum step-down), so this node
    /// says so itself: its status and metrics do not claim the lead, and it refuses writes and
    /// reads at once rather than let them wait out the write timeout. A single voter is its
    /// own majority.
    ///
    /// [`UNSERVING_AFTER_ELECTIONS`]: crate::config::UNSERVING_AFTER_ELECTIONS
    pub fn leading_without_quorum(&self) -> Option<std::time::Duration> {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        if m.current_leader != Some(self.id) {
            return None;
        }
        let silent = m.millis_since_quorum_ack?;
        (silent > u64::from(crate::config::UNSERVING_AFTER_ELECTIONS) * self.config.election_max_ms)
            .then(|| std::time::Duration::from_millis(silent))
    }

    /// The refusal for a write or read on a leader that [`Self::leading_without_quorum`].
    pub fn refuse_without_quorum(&self) -> Result<(), ExecError> {
        match self.leading_without_quorum() {
            None => Ok(()),
            Some(silent) => Err(ExecError::Api(ApiError::Unavailable(format!(
                "no quorum: node {} leads but no majority has answered it for {:.1}s (it is cut off; another node \
                 may lead); not taken",
                self.id,
                silent.as_secs_f64()
            )))),
        }
    }

    /// `Ok` when this node leads; otherwise who does, if known.
    pub fn ensure_leader(&self) -> Result<(), ExecError> {
        match self.leader() {
            (Some(l), _) if l == self.id => Ok(()),
            (_, addr) => Err(ExecError::NotLeader(addr)),
        }
    }

    /// The leader's address when it is known and is another node.
    pub fn remote_leader(&self) -> Option<String> {
        match self.leader() {
            (Some(l), addr) if l != self.id => addr,
            _ => None,
        }
    }

    /// Queues a write for the next Raft entry this node proposes (it must lead).
    pub async fn propose(&self, cmd: Proposed) -> Result<Written, ExecError> {
        self.refuse_without_quorum()?;
        // The gate for commands old nodes cannot decode (see `Command`), checked on the leader,
        // whose applied level is the cluster's; a follower's may lag behind it.
        let mut level = self.shared.read().state.feature_level();
        if cmd.cmd.needs() > level && self.is_leader() {
            // A leader just elected may not have applied all it has committed yet, the entry
            // that raised the level among it (a follower that applied it sent this write).
            let _ = tokio::time::timeout(self.config.write_timeout, self.raft.ensure_linearizable()).await;
            level = self.shared.read().state.feature_level();
        }
        if cmd.cmd.needs() > level && self.is_leader() {
            // Boxed: raising writes through this function (a level-1 command, so once).
            Box::pin(crate::features::raise(self)).await;
            level = self.shared.read().state.feature_level();
        }
        if cmd.cmd.needs() > level && self.is_leader() {
            let why = crate::features::refusal(self, &cmd.cmd, level);
            return Err(ExecError::Api(ApiError::FailedPrecondition(why)));
        }
        let gone = || ExecError::Api(ApiError::Unavailable("node is shutting down".into()));
        let (tx, rx) = oneshot::channel();
        self.proposals.send(Proposal { cmd, tx }).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Ids of the members (voters and learners) in the latest membership this node knows.
    pub fn member_ids(&self) -> Vec<NodeId> {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        m.membership_config.membership().nodes().map(|(id, _)| *id).collect()
    }

    /// Members with their roles, from the latest membership this node knows.
    pub fn members(&self) -> Vec<Member> {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                address: n.addr.clone(),
                role: if voters.contains(id) { MemberRole::Voter } else { MemberRole::Learner } as i32,
                leader: m.current_leader == Some(*id),
                ..Default::default()
            })
            .collect()
    }
}
