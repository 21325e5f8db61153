//! The peer-only Raft service: openraft's RPCs and leader forwarding.

use std::sync::Arc;

use openraft::raft::AppendEntriesResponse;
use switchyard_proto::raft::raft_server::Raft;
use switchyard_proto::raft::{Empty, InitializedReply, RaftPayload};
use tonic::{Request, Response, Status};

use crate::network::{decode, encode};
use crate::node::calls::Envelope;
use crate::node::context::NodeCtx;
use crate::node::leader;

pub struct PeerService(pub Arc<NodeCtx>);

fn payload<T: serde::de::DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    decode(&req.into_inner().data).map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    Ok(Response::new(RaftPayload { data: encode(v) }))
}

#[tonic::async_trait]
impl Raft for PeerService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = self.0.raft.append_entries(payload(req)?).await;
        if matches!(r, Ok(ref a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
            self.0.serving.heard_from_leader();
        }
        reply(&r)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        reply(&self.0.raft.vote(payload(req)?).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = self.0.raft.install_snapshot(payload(req)?).await;
        if r.is_ok() {
            self.0.serving.heard_from_leader();
        }
        reply(&r)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let call: Envelope = payload(req)?;
        Ok(Response::new(RaftPayload { data: leader::serve_forwarded(&self.0, call).await }))
    }

    async fn initialized(&self, _req: Request<Empty>) -> Result<Response<InitializedReply>, Status> {
        let initialized = self.0.raft.is_initialized().await.unwrap_or(false);
        Ok(Response::new(InitializedReply { initialized, node_id: self.0.id }))
    }
}
