//! Access: bearer tokens and the audit log (admin only, per the permission table). A token's
//! secret is minted here, on the node that took the request, and leaves only in the reply;
//! what goes through Raft is its hash.

use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1::access_server::Access;
use switchyard_proto::v1::{
    AuditRecord as PbAudit, CreateTokenReply, CreateTokenRequest, ListAuditReply, ListAuditRequest, ListTokensReply,
    ListTokensRequest, RevokeTokenRequest, TokenInfo, WriteReply,
};
use tonic::{Request, Response, Status};

use super::admin::note;
use crate::audit::{AuditNote, AuditRecord};
use crate::auth::tokens::TokenRecord;
use crate::auth::{caller_of, issue};
use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::state::{Command, Proposed};

pub struct AccessService(pub Arc<NodeCtx>);

pub fn info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        created_revision: t.created_revision,
    }
}

fn audit_pb(r: &AuditRecord) -> PbAudit {
    let AuditNote { who, role, method, summary, at_ms } = (*r.note).clone();
    PbAudit { revision: r.revision, at_ms, who, role, method, summary }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn create_token(&self, req: Request<CreateTokenRequest>) -> Result<Response<CreateTokenReply>, Status> {
        let caller = caller_of(&req)?;
        let r = req.into_inner();
        if r.ttl_ms == 0 {
            return Err(Status::invalid_argument("ttl_ms must be 1 or more"));
        }
        let what = format!("{} token {:?}, ttl {}s", r.role, r.name, r.ttl_ms / 1000);
        let audit = note(&caller, "Access/CreateToken", what);
        let ttl = Some(Duration::from_millis(r.ttl_ms));
        let (revision, rec, secret) = issue::create_token(&self.0, r.name, &r.role, ttl, audit).await?;
        Ok(Response::new(CreateTokenReply { revision, token: Some(info(&rec)), secret }))
    }

    async fn list_tokens(&self, _req: Request<ListTokensRequest>) -> Result<Response<ListTokensReply>, Status> {
        leader::linearize(&self.0).await?;
        let live = self.0.shared.read();
        let tokens = live.state.tokens().iter().map(info).collect();
        Ok(Response::new(ListTokensReply { revision: live.revision(), tokens }))
    }

    async fn revoke_token(&self, req: Request<RevokeTokenRequest>) -> Result<Response<WriteReply>, Status> {
        let caller = caller_of(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() || id.len() > 64 {
            return Err(Status::invalid_argument("token id must be 1 to 64 characters"));
        }
        let audit = note(&caller, "Access/RevokeToken", format!("token {id}"));
        let (revision, _) =
            leader::write(&self.0, Proposed { id: None, cmd: Command::RevokeToken { id }, audit }).await?;
        Ok(Response::new(WriteReply { revision }))
    }

    async fn list_audit(&self, req: Request<ListAuditRequest>) -> Result<Response<ListAuditReply>, Status> {
        let since = req.into_inner().since_revision;
        leader::linearize(&self.0).await?;
        let live = self.0.shared.read();
        let records = live.state.audit().since(since).map(audit_pb).collect();
        Ok(Response::new(ListAuditReply { revision: live.revision(), records }))
    }
}
