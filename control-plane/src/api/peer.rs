//! The peer-only Raft service: openraft's RPCs and leader forwarding. Every call's cluster id
//! is checked before its payload reaches openraft.

use std::sync::Arc;

use openraft::raft::AppendEntriesResponse;
use switchyard_proto::raft::raft_server::Raft;
use switchyard_proto::raft::{Empty, InitializedReply, RaftPayload};
use tonic::{Request, Response, Status};

use crate::network::{decode, encode};
use crate::node::bootstrap::members_hash;
use crate::node::calls::Envelope;
use crate::node::context::NodeCtx;
use crate::node::leader;

pub struct PeerService(pub Arc<NodeCtx>);

/// The sender's cluster id (checked) and the decoded payload.
fn payload<T: serde::de::DeserializeOwned>(
    node: &NodeCtx,
    req: Request<RaftPayload>,
) -> Result<(Option<String>, T), Status> {
    let id = node.cluster_id.check(&req)?;
    let v = decode(&req.into_inner().data).map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))?;
    Ok((id, v))
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    Ok(Response::new(RaftPayload { data: encode(v) }))
}

impl PeerService {
    /// A leader reached this node: a node without a cluster id yet takes the leader's.
    fn accepted_from_leader(&self, id: Option<String>) -> Result<(), Status> {
        self.0.serving.heard_from_leader();
        match id {
            Some(id) if self.0.cluster_id.get().is_none() => {
                self.0.cluster_id.adopt(&id).map_err(|e| Status::internal(format!("cannot store the cluster id: {e}")))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Raft for PeerService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (id, rpc) = payload(&self.0, req)?;
        let r = self.0.raft.append_entries(rpc).await;
        if matches!(r, Ok(ref a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
            self.accepted_from_leader(id)?;
        }
        reply(&r)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (_, rpc) = payload(&self.0, req)?;
        reply(&self.0.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (id, rpc) = payload(&self.0, req)?;
        let r = self.0.raft.install_snapshot(rpc).await;
        if r.is_ok() {
            self.accepted_from_leader(id)?;
        }
        reply(&r)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (_, call): (_, Envelope) = payload(&self.0, req)?;
        Ok(Response::new(RaftPayload { data: leader::serve_forwarded(&self.0, call).await }))
    }

    async fn initialized(&self, _req: Request<Empty>) -> Result<Response<InitializedReply>, Status> {
        let initialized = self.0.raft.is_initialized().await.unwrap_or(false);
        Ok(Response::new(InitializedReply {
            initialized,
            node_id: self.0.id,
            cluster_id: self.0.cluster_id.get().unwrap_or_default(),
            members: if initialized { self.0.member_ids() } else { Vec::new() },
            members_hash: members_hash(&self.0.config.initial_cluster),
        }))
    }
}
