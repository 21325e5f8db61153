//! Raft's transport between control-plane nodes: openraft's RPCs as postcard bytes inside
//! the peer-only gRPC service (appends on a stream held to each follower), plus the
//! leader-forwarding call.

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_model::grpc::Channel;
use switchyard_model::grpc::{ChannelError, ChannelOptions, ClientTls};
use switchyard_proto::raft::raft_client::RaftClient;
use switchyard_proto::raft::RaftPayload;

use crate::cluster_id::ClusterId;
use crate::store::log::Durable;
use crate::types::{NodeId, TypeConfig};

pub use switchyard_model::limits::MAX_GRPC_MESSAGE as MAX_MESSAGE;
pub use switchyard_model::limits::MAX_PEER_MESSAGE;

/// A lazily connected channel to a peer, over TLS with this node's certificate when it has one.
pub fn channel(addr: &str, tls: &ClientTls) -> Result<Channel, ChannelError> {
    switchyard_model::grpc::channel(addr, &ChannelOptions::PEER, tls)
}

pub fn client(addr: &str, tls: &ClientTls) -> Result<RaftClient<Channel>, ChannelError> {
    // Requests are held to what the peer accepts; replies (proxy lists, say) may be larger.
    Ok(RaftClient::new(channel(addr, tls)?)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE))
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("raft payloads always encode")
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

/// Makes one [`Peer`] per target; openraft keeps one per replication stream.
#[derive(Clone)]
pub struct Network(pub ClusterId, pub ClientTls, pub Durable);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            client: client(&node.addr, &self.1).ok(),
            addr: node.addr.clone(),
            ids: self.0.clone(),
            durable: self.2.clone(),
            held: None,
            unary: false,
            silent: 0,
        }
    }
}

pub struct Peer {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    ids: ClusterId,
    durable: Durable,
    /// The AppendStream held open to this peer, once an append has opened it.
    held: Option<Held>,
    /// The peer answered AppendStream with UNIMPLEMENTED (a build from before it): appends go
    /// unary for as long as this replication stream lasts.
    unary: bool,
    /// Appends in a row that got no reply in time. From the third on, the peer is reported
    /// unreachable, so openraft waits its backoff (500 ms) between tries instead of trying
    /// again at every heartbeat and logging each failure (30 lines a second for a frozen or
    /// cut-off follower).
    silent: u32,
}

/// A held AppendStream: requests go into `tx`, replies come back in the same order.
struct Held {
    tx: tokio::sync::mpsc::Sender<RaftPayload>,
    replies: tonic::Streaming<RaftPayload>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

/// Appends in a row without a reply after which a peer is reported unreachable.
const SILENT_UNREACHABLE: u32 = 3;

/// Room left under [`MAX_PEER_MESSAGE`] for gRPC framing around a Raft payload.
const FRAMING: usize = 64 * 1024;

/// openraft's answer to an AppendEntries of `entries` entries encoded in `bytes` that a peer
/// would refuse as over `limit`: fewer entries, so openraft splits the batch instead of
/// resending it forever. A single entry cannot be split: it goes, and fails, as it is.
fn oversized(bytes: usize, entries: usize, limit: usize) -> Option<PayloadTooLarge> {
    (bytes + FRAMING > limit && entries > 1).then(|| {
        let fit = (entries as u128 * (limit - FRAMING) as u128 / bytes as u128) as u64;
        PayloadTooLarge::new_entries_hint(fit.clamp(1, entries as u64 - 1))
    })
}

impl Peer {
    async fn call<Resp, E>(
        &mut self,
        which: &'static str,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!("bad peer address {}", self.addr)))));
        };
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        self.ids.attach(&mut request);
        let reply = match which {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        self.answer(reply.map(|r| r.into_inner()))
    }

    /// A peer's reply (or the status it failed with) as openraft takes it.
    fn answer<Resp, E>(
        &self,
        reply: Result<RaftPayload, tonic::Status>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply = match reply {
            Ok(r) => r,
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                    "node {}: {}",
                    self.target,
                    s.message()
                )))))
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&Msg(format!("node {}: {s}", self.target))))),
        };
        let res: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// An append over the held AppendStream, opened first if none is held. `Ok(Err(data))`:
    /// the peer does not know AppendStream, and the append comes back unsent.
    ///
    /// The stream is taken out of `self.held` for the whole call and put back only once its
    /// reply has been read. openraft wraps this call in a timeout of its own and drops it when
    /// that fires: a stream kept then would still owe the dropped request's reply, and the
    /// next append would take that reply for its own (a "conflict" below what the follower had
    /// matched, after which the leader sent it nothing it could accept).
    async fn append_held(&mut self, data: Vec<u8>) -> Result<Result<RaftPayload, Vec<u8>>, tonic::Status> {
        let mut held = match self.held.take() {
            Some(held) => {
                if held.tx.send(RaftPayload { data }).await.is_err() {
                    return Err(tonic::Status::unavailable("the append stream is closed"));
                }
                held
            }
            None => {
                let Some(client) = self.client.as_mut() else {
                    return Err(tonic::Status::unavailable(format!("bad peer address {}", self.addr)));
                };
                // The first request is queued before the stream opens, so that it goes out
                // with the stream's headers instead of a round trip after them.
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.try_send(RaftPayload { data: data.clone() });
                let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                self.ids.attach(&mut request);
                match client.append_stream(request).await {
                    Ok(r) => Held { tx, replies: r.into_inner() },
                    Err(s) if s.code() == tonic::Code::Unimplemented => {
                        self.unary = true;
                        return Ok(Err(data));
                    }
                    Err(s) => return Err(s),
                }
            }
        };
        match held.replies.message().await? {
            Some(reply) => {
                self.held = Some(held);
                Ok(Ok(reply))
            }
            None => Err(tonic::Status::unavailable("the peer ended the append stream")),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let data = encode(&rpc);
        if let Some(too_large) = oversized(data.len(), rpc.entries.len(), MAX_PEER_MESSAGE) {
            return Err(RPCError::PayloadTooLarge(too_large));
        }
        // A commit index goes out only once this leader's own copy of it is durable: it may
        // have counted that copy before it was ([`Durable`]).
        if let Some(c) = rpc.leader_commit {
            if tokio::time::timeout(option.hard_ttl(), self.durable.reached(c.index)).await.is_err() {
                return Err(RPCError::Network(NetworkError::new(&Msg(format!(
                    "this node's log is not durable through the commit index {} yet",
                    c.index
                )))));
            }
        }
        if self.unary {
            return self.call("append", data, &option).await;
        }
        let reply = match tokio::time::timeout(option.hard_ttl(), self.append_held(data)).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(data))) => return self.call("append", data, &option).await,
            Ok(Err(s)) => Err(s),
            Err(_) => Err(tonic::Status::deadline_exceeded("no reply on the append stream in time")),
        };
        // A failed call did not put its stream back: the next append opens another.
        let timed_out = matches!(&reply, Err(s) if s.code() == tonic::Code::DeadlineExceeded);
        self.silent = if timed_out { self.silent.saturating_add(1) } else { 0 };
        if self.silent >= SILENT_UNREACHABLE {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                "node {}: no reply to {} appends in a row",
                self.target, self.silent
            )))));
        }
        self.answer(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("snapshot", encode(&rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", encode(&rpc), &option).await
    }
}

#[cfg(test)]
mod tests;
