//! Getting calls to the leader from a follower: one cache of peer clients, a typed call over
//! the peer service, and the forwarder that gathers a follower's writes into batched calls
//! (as the leader's proposer gathers entries).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use switchyard_model::grpc::Channel;
use switchyard_proto::raft::raft_client::RaftClient;
use switchyard_proto::raft::RaftPayload;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::batch::{by_size, encoded_size, fail_all, next_batch, BATCH_BYTES, IN_FLIGHT, MAX_BATCH};
use super::calls::{ExecError, LeaderCall, Writes, Written};
use switchyard_model::grpc::ClientTls;

use crate::cluster_id::ClusterId;
use crate::error::ApiError;
use crate::network;
use crate::state::Proposed;

/// Peer clients by address, made once and reused (each holds an HTTP/2 connection).
pub struct LeaderClients(Mutex<BTreeMap<String, RaftClient<Channel>>>, ClusterId, ClientTls);

impl LeaderClients {
    pub fn new(ids: ClusterId, tls: ClientTls) -> LeaderClients {
        LeaderClients(Mutex::default(), ids, tls)
    }

    pub fn get(&self, addr: &str) -> Result<RaftClient<Channel>, ExecError> {
        let mut clients = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let c = network::client(addr, &self.2).map_err(|e| ExecError::Api(ApiError::Internal(e.to_string())))?;
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// A client on a connection of its own (not the shared one forwards use), so that its
    /// connection breaking says something about the node at `addr` alone.
    pub fn dedicated(&self, addr: &str) -> Result<RaftClient<Channel>, switchyard_model::grpc::ChannelError> {
        network::client(addr, &self.2)
    }

    /// Puts this node's cluster id on a peer request.
    pub fn attach<T>(&self, req: &mut tonic::Request<T>) {
        self.1.attach(req);
    }

    /// Sends `call` to the node at `addr` and returns its typed answer.
    pub async fn call<C: LeaderCall>(&self, addr: &str, call: C) -> Result<C::Reply, ExecError> {
        let mut client = self.get(addr)?;
        let mut req = tonic::Request::new(RaftPayload { data: network::encode(&call.into_envelope()) });
        self.1.attach(&mut req);
        match client.forward(req).await {
            Ok(r) => network::decode::<Result<C::Reply, ExecError>>(&r.into_inner().data)
                .map_err(|e| ExecError::Api(ApiError::Internal(format!("bad reply from leader: {e}"))))?,
            // Refused as it stands (not a call a follower may forward, or over the peer
            // message cap): sending it again would be refused again.
            Err(s) if matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::OutOfRange) => {
                Err(ExecError::Api(ApiError::InvalidArgument(format!("the leader refused the call: {}", s.message()))))
            }
            // The leader is unreachable (killed, partitioned), or the connection broke after
            // the call went out and it may have been carried out: wait for the next leader and
            // send it again. For a write with a request id that is safe (the state machine
            // applies an id once and answers a repeat with the first answer). Without one it
            // may apply twice; only internal writes, which are idempotent (health flips,
            // session binds and expiry), and clients that send no id take that risk.
            Err(_) => Err(ExecError::NotLeader(None)),
        }
    }
}

/// A write on its way from a follower to the leader.
struct Forward {
    leader: String,
    cmd: Proposed,
    tx: oneshot::Sender<Result<Written, ExecError>>,
}

/// The follower's side of group commit: writes queue here and go to the leader as [`Writes`]
/// calls, a few in flight at a time.
pub struct Forwarder {
    tx: mpsc::Sender<Forward>,
}

impl Forwarder {
    /// Starts the forwarding loop; it ends when the forwarder is dropped.
    pub fn start(clients: Arc<LeaderClients>) -> Forwarder {
        let (tx, rx) = mpsc::channel(64 * 1024);
        tokio::spawn(forward_loop(clients, rx));
        Forwarder { tx }
    }

    /// Sends one write to `leader` in the next batch.
    pub async fn write(&self, leader: String, cmd: Proposed) -> Result<Written, ExecError> {
        let gone = || ExecError::Api(ApiError::Unavailable("node is shutting down".into()));
        let (tx, rx) = oneshot::channel();
        self.tx.send(Forward { leader, cmd, tx }).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn forward_loop(clients: Arc<LeaderClients>, mut rx: mpsc::Receiver<Forward>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(slot) = next_batch(&mut rx, &mut buf, &slots).await {
        let mut groups: BTreeMap<String, Vec<Forward>> = BTreeMap::new();
        for f in buf.drain(..) {
            groups.entry(f.leader.clone()).or_default().push(f);
        }
        let slot = Arc::new(slot);
        // A call per leader, and per run of `BATCH_BYTES`: the leader takes a call under
        // the peer limit, and makes an entry of each.
        let runs = groups.into_iter().flat_map(|(leader, fwds)| {
            by_size(fwds, |f| encoded_size(&f.cmd), BATCH_BYTES).into_iter().map(move |run| (leader.clone(), run))
        });
        for (leader, fwds) in runs {
            let (cmds, txs): (Vec<Proposed>, Vec<_>) = fwds.into_iter().map(|f| (f.cmd, f.tx)).unzip();
            let clients = clients.clone();
            let slot = slot.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match clients.call(&leader, Writes(cmds)).await {
                    Ok(results) => {
                        for (tx, r) in txs.into_iter().zip(results) {
                            let _ = tx.send(r);
                        }
                    }
                    Err(e) => fail_all(txs, e),
                }
            });
        }
    }
}
