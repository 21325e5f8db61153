//! One control-plane node: storage, Raft, the gRPC server, cluster formation, and the
//! leader-side execution of writes that followers forward.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use switchyard_proto::raft::raft_client::RaftClient;
use switchyard_proto::v1::{Change, Member, MemberRole, ProxyStatus};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::error::{ApiError, NodeError};
use crate::network::{self, Network};
use crate::state::{from_wire, Batch, Command, WireOutcome};
use crate::store::{self, log::LogStore, sm::Shared, sm::StateMachineStore};
use crate::types::{NodeId, Raft};

/// Named defaults. openraft 0.9 lets a follower call an election only after the leader lease
/// (`election_max`) plus its own random timeout (`election_min..election_max`) pass without a
/// heartbeat: 360-480 ms here, seven to ten missed heartbeats, so a busy machine does not see
/// spurious elections while failover stays well under a second.
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
pub const DEFAULT_ELECTION_MIN_MS: u64 = 120;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 240;
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
pub const DEFAULT_KEEP_LOGS: u64 = 1_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 5_000;

/// Everything one node needs, validated by [`NodeConfig::validate`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// The address peers and clients use to reach this node; defaults to this node's entry in
    /// `initial_cluster`, else `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Founding members (id → address). Empty with `join` = wait to be added by the CLI.
    pub initial_cluster: BTreeMap<NodeId, String>,
    pub join: bool,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Take a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_logs: u64,
    /// How long a write may wait for a quorum before the caller gets UNAVAILABLE.
    pub write_timeout: Duration,
}

impl NodeConfig {
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> Self {
        NodeConfig {
            id,
            listen,
            advertise: None,
            data_dir,
            initial_cluster: BTreeMap::new(),
            join: false,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_min_ms: DEFAULT_ELECTION_MIN_MS,
            election_max_ms: DEFAULT_ELECTION_MAX_MS,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            keep_logs: DEFAULT_KEEP_LOGS,
            write_timeout: Duration::from_millis(DEFAULT_WRITE_TIMEOUT_MS),
        }
    }

    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |m: String| Err(NodeError::Config(m));
        if self.id == 0 {
            return bad("node id must be 1 or more".into());
        }
        if !self.initial_cluster.is_empty() && !self.initial_cluster.contains_key(&self.id) {
            return bad(format!("--initial-cluster does not name this node's id {}", self.id));
        }
        if self.join && !self.initial_cluster.is_empty() {
            return bad("--join and --initial-cluster are exclusive: a joining node is added with `switchyard cluster add-node`".into());
        }
        if self.heartbeat_ms == 0
            || self.election_min_ms <= self.heartbeat_ms * 2
            || self.election_max_ms <= self.election_min_ms
        {
            return bad("need 0 < heartbeat < election-min/2 and election-min < election-max".into());
        }
        Ok(())
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise
            .clone()
            .or_else(|| self.initial_cluster.get(&self.id).cloned())
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// An operation that only the leader can carry out. Followers forward it over the peer
/// service, so every node accepts every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    Write(Command),
    /// Writes a follower gathered and forwards in one call.
    Writes(Vec<Command>),
    AddNode {
        id: NodeId,
        addr: String,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    ReadIndex,
    /// A proxy's report, collected on the leader so any node can list every proxy; the
    /// session bindings in it are proposed in the leader's next batch. The reply carries the
    /// cluster-wide connection counts.
    Report {
        status: crate::pb::Pb<ProxyStatus>,
        bindings: Vec<crate::pb::Pb<switchyard_proto::v1::SessionBinding>>,
        loads: Vec<crate::pb::Pb<switchyard_proto::v1::BackendLoad>>,
    },
    /// The cluster-wide connection counts.
    Loads,
    ListProxies,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    Written { revision: u64, outcome: WireOutcome },
    WrittenMany(Vec<Result<(u64, WireOutcome), ExecError>>),
    Membership { revision: u64 },
    ReadIndex(u64),
    Reported(Vec<crate::pb::Pb<switchyard_proto::v1::BackendLoad>>),
    Proxies(Vec<crate::pb::Pb<ProxyStatus>>),
}

/// Why the leader side did not carry out an op.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExecError {
    /// This node is not the leader; the leader's address when known.
    NotLeader(Option<String>),
    Api(ApiError),
}

/// State shared by the gRPC services.
pub struct NodeInner {
    pub id: NodeId,
    pub advertise: String,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub config: NodeConfig,
    pub proxies: Mutex<BTreeMap<String, ProxyStatus>>,
    pub shutdown: CancellationToken,
    leader_clients: Mutex<BTreeMap<String, switchyard_proto::raft::raft_client::RaftClient<tonic::transport::Channel>>>,
    proposals: mpsc::Sender<Proposal>,
    forwards: mpsc::Sender<Forward>,
    /// Each proxy's last reported connection counts, on the leader.
    loads: Mutex<BTreeMap<String, (Vec<switchyard_proto::v1::BackendLoad>, std::time::Instant)>>,
}

/// A proxy that has not reported for this long no longer counts toward cluster-wide loads.
const LOAD_STALE: Duration = Duration::from_secs(15);

/// A write on its way from a follower to the leader.
struct Forward {
    leader: String,
    cmd: Command,
    tx: oneshot::Sender<Result<(u64, WireOutcome), ExecError>>,
}

/// Gathers a follower's writes into `Writes` calls to the leader, a few calls in flight at a
/// time, as the leader's proposer does with entries.
async fn forward_loop(node: std::sync::Weak<NodeInner>, mut rx: mpsc::Receiver<Forward>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(slot) = next_batch(&mut rx, &mut buf, &slots).await {
        let Some(node) = node.upgrade() else { return };
        let mut groups: BTreeMap<String, Vec<Forward>> = BTreeMap::new();
        for f in buf.drain(..) {
            groups.entry(f.leader.clone()).or_default().push(f);
        }
        let slot = Arc::new(slot);
        for (leader, fwds) in groups {
            let (cmds, txs): (Vec<Command>, Vec<_>) = fwds.into_iter().map(|f| (f.cmd, f.tx)).unzip();
            let client = node.leader_client(&leader);
            let slot = slot.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let res = match client {
                    Ok(mut c) => {
                        let req =
                            switchyard_proto::raft::RaftPayload { data: network::encode(&LeaderOp::Writes(cmds)) };
                        match c.forward(req).await {
                            Ok(r) => network::decode::<Result<LeaderReply, ExecError>>(&r.into_inner().data)
                                .unwrap_or_else(|e| {
                                    Err(ExecError::Api(ApiError::Internal(format!("bad reply from leader: {e}"))))
                                }),
                            Err(_) => Err(ExecError::NotLeader(None)),
                        }
                    }
                    Err(e) => Err(e),
                };
                match res {
                    Ok(LeaderReply::WrittenMany(results)) => {
                        for (tx, r) in txs.into_iter().zip(results) {
                            let _ = tx.send(r);
                        }
                    }
                    Ok(other) => {
                        let e = ExecError::Api(ApiError::Internal(format!("unexpected reply {other:?}")));
                        for tx in txs {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                    Err(e) => {
                        for tx in txs {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
            });
        }
    }
}

/// A write waiting to be batched into the next Raft entry.
struct Proposal {
    cmd: Command,
    tx: oneshot::Sender<Result<(u64, WireOutcome), ExecError>>,
}

/// Most commands one entry carries.
const MAX_BATCH: usize = 1024;
/// Entries submitted to Raft and not yet answered. openraft queues whatever it is given one
/// entry per message, so holding writes back here is what lets them gather into batches.
const IN_FLIGHT: usize = 3;

/// Waits for work and a free in-flight slot, then takes everything queued meanwhile (up to
/// [`MAX_BATCH`]). `None` once the channel is closed.
async fn next_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    buf: &mut Vec<T>,
    slots: &Arc<tokio::sync::Semaphore>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if rx.recv_many(buf, MAX_BATCH).await == 0 {
        return None;
    }
    let slot = slots.clone().acquire_owned().await.ok()?;
    while buf.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(x) => buf.push(x),
            Err(_) => break,
        }
    }
    Some(slot)
}

/// Group commit for writes: openraft writes one entry at a time and waits for its flush, so
/// everything that queued up meanwhile goes into the next entry. Entries are submitted without
/// waiting for the previous one to commit, so batches pipeline.
async fn propose_loop(raft: Raft, mut rx: mpsc::Receiver<Proposal>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(slot) = next_batch(&mut rx, &mut buf, &slots).await {
        let (cmds, txs): (Vec<Command>, Vec<_>) = buf.drain(..).map(|p| (p.cmd, p.tx)).unzip();
        let fail = |txs: Vec<oneshot::Sender<_>>, e: ExecError| {
            for tx in txs {
                let _ = tx.send(Err(e.clone()));
            }
        };
        let pending = match raft.client_write_ff(Batch(cmds)).await {
            Ok(p) => p,
            Err(f) => {
                fail(txs, ExecError::Api(ApiError::Unavailable(format!("raft stopped: {f}"))));
                continue;
            }
        };
        tokio::spawn(async move {
            let _slot = slot;
            match pending.await {
                Ok(Ok(resp)) => {
                    let rev = resp.log_id.index;
                    for (tx, out) in txs.into_iter().zip(resp.data.0) {
                        let _ = tx.send(Ok((rev, out)));
                    }
                }
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                    fail(txs, ExecError::NotLeader(f.leader_node.map(|n| n.addr)))
                }
                Ok(Err(e)) => fail(txs, ExecError::Api(ApiError::Internal(e.to_string()))),
                Err(_) => fail(txs, ExecError::Api(ApiError::Unavailable("raft stopped".into()))),
            }
        });
    }
}

/// A running node. Dropping it does not stop it; cancel the token given to [`Node::start`].
pub struct Node {
    pub inner: Arc<NodeInner>,
    server: tokio::task::JoinHandle<Result<(), NodeError>>,
}

impl Node {
    /// Opens the data dir, starts Raft and serves gRPC on `listener` until `shutdown`.
    pub async fn start(
        config: NodeConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Node, NodeError> {
        config.validate()?;
        let db = {
            let dir = config.data_dir.clone();
            let id = config.id;
            tokio::task::spawn_blocking(move || store::open(&dir, id))
                .await
                .map_err(|e| NodeError::Storage(e.to_string()))??
        };
        let data_err = |e: crate::types::StorageError| NodeError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: format!("corrupt: {e}"),
        };
        let log = LogStore::new(db.clone()).map_err(data_err)?;
        log.check().map_err(data_err)?;
        let sm = StateMachineStore::open(db).map_err(data_err)?;
        let shared = sm.shared();

        let raft_config = openraft::Config {
            cluster_name: "switchyard".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_min_ms,
            election_timeout_max: config.election_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_logs,
            snapshot_max_chunk_size: 1024 * 1024,
            max_payload_entries: 1000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let raft = Raft::new(config.id, Arc::new(raft_config), Network, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;

        let (proposals, proposals_rx) = mpsc::channel(64 * 1024);
        tokio::spawn(propose_loop(raft.clone(), proposals_rx));
        let (forwards, forwards_rx) = mpsc::channel(64 * 1024);
        let inner = Arc::new(NodeInner {
            loads: Mutex::new(BTreeMap::new()),
            proposals,
            forwards,
            id: config.id,
            advertise: config.advertise_addr(),
            raft,
            shared,
            proxies: Mutex::new(BTreeMap::new()),
            shutdown: shutdown.clone(),
            leader_clients: Mutex::new(BTreeMap::new()),
            config,
        });

        tokio::spawn(forward_loop(Arc::downgrade(&inner), forwards_rx));
        let router = crate::api::router(inner.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        });
        let token = shutdown.clone();
        let raft = inner.raft.clone();
        let server = tokio::spawn(async move {
            let res = router.serve_with_incoming_shutdown(incoming, token.cancelled()).await;
            let _ = raft.shutdown().await;
            res.map_err(NodeError::from)
        });
        tokio::spawn(form_cluster(inner.clone()));
        tokio::spawn(crate::health::run(inner.clone()));
        tokio::spawn(crate::health::expire_sessions(inner.clone()));
        tracing::info!(id = inner.id, addr = %inner.advertise, "control-plane node started");
        Ok(Node { inner, server })
    }

    /// Waits until the server stops (after the shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), NodeError> {
        self.server.await.map_err(|e| NodeError::Raft(e.to_string()))?
    }
}

/// The lowest id of the initial cluster initializes it, once: only when its own store is
/// empty and no peer answers that it already holds a cluster (so a wiped node 1 cannot split
/// off a second cluster).
async fn form_cluster(node: Arc<NodeInner>) {
    let members = &node.config.initial_cluster;
    let members = if members.is_empty() && !node.config.join {
        BTreeMap::from([(node.id, node.advertise.clone())])
    } else {
        members.clone()
    };
    if members.keys().next() != Some(&node.id) {
        return;
    }
    match node.raft.is_initialized().await {
        Ok(false) => {}
        _ => return,
    }
    for (id, addr) in members.iter().filter(|(id, _)| **id != node.id) {
        if let Ok(mut c) = network::client(addr) {
            let ask = c.initialized(switchyard_proto::raft::Empty {});
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), ask).await {
                if r.into_inner().initialized {
                    tracing::warn!(peer = id, "peer already holds a cluster; not initializing a new one");
                    return;
                }
            }
        }
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
    match node.raft.initialize(nodes).await {
        Ok(()) => tracing::info!(members = ?members, "initialized a new cluster"),
        Err(e) => tracing::info!("cluster already initialized: {e}"),
    }
}

impl NodeInner {
    /// Carries out `op` here if this node leads, else reports who does.
    pub async fn execute_local(&self, op: LeaderOp) -> Result<LeaderReply, ExecError> {
        fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ExecError {
            match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ExecError::NotLeader(f.leader_node.map(|n| n.addr))
                }
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    ExecError::Api(ApiError::FailedPrecondition(e.to_string()))
                }
                RaftError::Fatal(f) => ExecError::Api(ApiError::Unavailable(format!("raft stopped: {f}"))),
            }
        }
        match op {
            LeaderOp::Write(cmd) => {
                let (revision, outcome) = self.propose(cmd).await?;
                Ok(LeaderReply::Written { revision, outcome })
            }
            LeaderOp::Writes(cmds) => {
                self.ensure_leader()?;
                let waits: Vec<_> = cmds.into_iter().map(|cmd| self.propose(cmd)).collect();
                Ok(LeaderReply::WrittenMany(futures::future::join_all(waits).await))
            }
            LeaderOp::Report { status: crate::pb::Pb(status), bindings, loads } => {
                self.ensure_leader()?;
                self.loads.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    status.proxy_id.clone(),
                    (loads.into_iter().map(|crate::pb::Pb(l)| l).collect(), std::time::Instant::now()),
                );
                self.proxies.lock().unwrap_or_else(|e| e.into_inner()).insert(status.proxy_id.clone(), status);
                if !bindings.is_empty() {
                    // Time comes from the leader, inside the command: apply stays deterministic.
                    // The report is answered once its bindings commit, so a flood of reports
                    // slows its senders instead of queueing without bound.
                    let now_ms = crate::api::discovery::now_ms();
                    self.propose(Command::BindSessions { now_ms, bindings }).await?.1.map_err(ExecError::Api)?;
                }
                Ok(LeaderReply::Reported(self.cluster_loads()))
            }
            LeaderOp::Loads => {
                self.ensure_leader()?;
                Ok(LeaderReply::Reported(self.cluster_loads()))
            }
            LeaderOp::ListProxies => {
                self.ensure_leader()?;
                let all = self
                    .proxies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .map(crate::pb::Pb)
                    .collect();
                Ok(LeaderReply::Proxies(all))
            }
            LeaderOp::ReadIndex => match self.raft.ensure_linearizable().await {
                Ok(l) => Ok(LeaderReply::ReadIndex(l.map_or(0, |l| l.index))),
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                    Err(ExecError::NotLeader(f.leader_node.map(|n| n.addr)))
                }
                Err(e) => Err(ExecError::Api(ApiError::Unavailable(e.to_string()))),
            },
            LeaderOp::AddNode { id, addr } => {
                self.ensure_leader()?;
                if self.members().iter().any(|m| m.id == id) {
                    return Err(ExecError::Api(ApiError::AlreadyExists(format!("node {id} is already a member"))));
                }
                let r = self.raft.add_learner(id, BasicNode::new(addr), false).await.map_err(write_err)?;
                Ok(LeaderReply::Membership { revision: r.log_id.index })
            }
            LeaderOp::Promote { id } => {
                self.ensure_leader()?;
                match self.members().iter().find(|m| m.id == id) {
                    None => {
                        return Err(ExecError::Api(ApiError::NotFound(format!(
                            "node {id} is not a member; add it first"
                        ))))
                    }
                    Some(m) if m.role == MemberRole::Voter as i32 => {
                        return Err(ExecError::Api(ApiError::FailedPrecondition(format!(
                            "node {id} is already a voter"
                        ))))
                    }
                    _ => {}
                }
                let r = self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_err)?;
                Ok(LeaderReply::Membership { revision: r.log_id.index })
            }
            LeaderOp::Remove { id } => {
                self.ensure_leader()?;
                let members = self.members();
                let change = match members.iter().find(|m| m.id == id) {
                    None => return Err(ExecError::Api(ApiError::NotFound(format!("node {id} is not a member")))),
                    Some(m) if m.role == MemberRole::Voter as i32 => {
                        if members.iter().filter(|m| m.role == MemberRole::Voter as i32).count() == 1 {
                            return Err(ExecError::Api(ApiError::FailedPrecondition(format!(
                                "node {id} is the last voter; a cluster needs at least one"
                            ))));
                        }
                        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                    }
                    Some(_) => ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                };
                let r = self.raft.change_membership(change, false).await.map_err(write_err)?;
                Ok(LeaderReply::Membership { revision: r.log_id.index })
            }
        }
    }

    /// Live connections per backend, summed over proxies that reported recently.
    pub fn cluster_loads(&self) -> Vec<crate::pb::Pb<switchyard_proto::v1::BackendLoad>> {
        let mut sum: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads.retain(|_, (_, at)| at.elapsed() < LOAD_STALE);
        for (ls, _) in loads.values() {
            for l in ls {
                *sum.entry((l.pool.clone(), l.address.clone())).or_default() += l.connections;
            }
        }
        sum.into_iter()
            .map(|((pool, address), connections)| {
                crate::pb::Pb(switchyard_proto::v1::BackendLoad { pool, address, connections })
            })
            .collect()
    }

    async fn propose(&self, cmd: Command) -> Result<(u64, WireOutcome), ExecError> {
        let gone = || ExecError::Api(ApiError::Unavailable("node is shutting down".into()));
        let (tx, rx) = oneshot::channel();
        self.proposals.send(Proposal { cmd, tx }).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The leader this node knows of, with its address. Reads the metrics in place: this runs
    /// on every write, and cloning the metrics copies the whole membership.
    fn leader(&self) -> (Option<NodeId>, Option<String>) {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let addr = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        (m.current_leader, addr)
    }

    /// The leader's address when it is known and is another node.
    fn remote_leader(&self) -> Option<String> {
        match self.leader() {
            (Some(l), addr) if l != self.id => addr,
            _ => None,
        }
    }

    /// Sends a write to the leader through the batching forwarder.
    async fn forward_write(&self, leader: String, cmd: Command) -> Result<LeaderReply, ExecError> {
        let gone = || ExecError::Api(ApiError::Unavailable("node is shutting down".into()));
        let (tx, rx) = oneshot::channel();
        self.forwards.send(Forward { leader, cmd, tx }).await.map_err(|_| gone())?;
        let (revision, outcome) = rx.await.map_err(|_| gone())??;
        Ok(LeaderReply::Written { revision, outcome })
    }

    fn ensure_leader(&self) -> Result<(), ExecError> {
        match self.leader() {
            (Some(l), _) if l == self.id => Ok(()),
            (_, addr) => Err(ExecError::NotLeader(addr)),
        }
    }

    /// Carries out `op` on the leader, wherever it is, within the write timeout.
    pub async fn execute(&self, op: LeaderOp) -> Result<LeaderReply, ApiError> {
        let timeout = self.config.write_timeout;
        let attempt = async {
            let mut backoff = Duration::from_millis(5);
            loop {
                // A follower that knows the leader hands writes straight on, gathered into
                // batches; otherwise try here (this node may lead, or learn who does).
                let res = match (&op, self.remote_leader()) {
                    (LeaderOp::Write(cmd), Some(leader)) => self.forward_write(leader, cmd.clone()).await,
                    _ => self.execute_local(op.clone()).await,
                };
                let res = match res {
                    Err(ExecError::NotLeader(Some(addr))) if addr != self.advertise => self.forward(&addr, &op).await,
                    other => other,
                };
                match res {
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
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Unavailable(format!(
                "no quorum: not acknowledged within {}ms (a write's outcome is unknown; read before retrying)",
                timeout.as_millis()
            ))),
        }
    }

    fn leader_client(&self, leader: &str) -> Result<RaftClient<Channel>, ExecError> {
        let mut clients = self.leader_clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(leader) {
            return Ok(c.clone());
        }
        let c = network::client(leader).map_err(|e| ExecError::Api(ApiError::Internal(e.to_string())))?;
        clients.insert(leader.to_string(), c.clone());
        Ok(c)
    }

    async fn forward(&self, leader: &str, op: &LeaderOp) -> Result<LeaderReply, ExecError> {
        let client = {
            let mut clients = self.leader_clients.lock().unwrap_or_else(|e| e.into_inner());
            match clients.get(leader) {
                Some(c) => c.clone(),
                None => {
                    let c = network::client(leader).map_err(|e| ExecError::Api(ApiError::Internal(e.to_string())))?;
                    clients.insert(leader.to_string(), c.clone());
                    c
                }
            }
        };
        let mut client = client;
        let req = switchyard_proto::raft::RaftPayload { data: network::encode(op) };
        match client.forward(req).await {
            Ok(r) => network::decode::<Result<LeaderReply, ExecError>>(&r.into_inner().data)
                .map_err(|e| ExecError::Api(ApiError::Internal(format!("bad reply from leader: {e}"))))?,
            // The leader is unreachable (killed, partitioned): wait for the next one.
            Err(_) => Err(ExecError::NotLeader(None)),
        }
    }

    /// Applies a command through Raft and returns its revision and changes.
    pub async fn write(&self, cmd: Command) -> Result<(u64, Vec<Change>), ApiError> {
        match self.execute(LeaderOp::Write(cmd)).await? {
            LeaderReply::Written { revision, outcome } => from_wire(outcome).map(|c| (revision, c)),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Waits until this node has applied everything the leader had committed when asked.
    pub async fn linearize(&self) -> Result<(), ApiError> {
        let index = match self.execute(LeaderOp::ReadIndex).await? {
            LeaderReply::ReadIndex(i) => i,
            other => return Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        };
        self.raft
            .wait(Some(self.config.write_timeout))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map_err(|e| ApiError::Unavailable(format!("this node is behind the leader: {e}")))?;
        Ok(())
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
            })
            .collect()
    }
}
