//! `switchyard cluster`: status, members, and membership changes.

use anyhow::Result;
use switchyard_proto::v1::{AddNodeRequest, ClusterStatusRequest, PromoteNodeRequest, RemoveNodeRequest};

use super::ctx::Ctx;
use crate::args::ClusterCmd;

pub(super) async fn run(ctx: &mut Ctx, c: ClusterCmd) -> Result<()> {
    match c {
        ClusterCmd::Status => {
            let s = ctx.query(ClusterStatusRequest {}, |mut c, r| async move { c.cluster_status(r).await }).await?;
            ctx.out.cluster_status(&s);
        }
        ClusterCmd::Members => {
            let s = ctx.query(ClusterStatusRequest {}, |mut c, r| async move { c.cluster_status(r).await }).await?;
            ctx.out.members(&s.members);
        }
        ClusterCmd::AddNode { id, address } => {
            // Members are stored as host:port; the node's own flags may carry a scheme.
            let address = address.trim_start_matches("http://").to_string();
            let req = AddNodeRequest { id, address };
            let r = ctx.membership(req, |mut c, r| async move { c.add_node(r).await }).await?;
            ctx.out.members(&r.members);
        }
        ClusterCmd::Promote { id, force } => {
            let req = PromoteNodeRequest { id, force };
            let r = ctx.membership(req, |mut c, r| async move { c.promote_node(r).await }).await?;
            ctx.out.members(&r.members);
        }
        ClusterCmd::RemoveNode { id, force } => {
            let req = RemoveNodeRequest { id, force };
            let r = ctx.membership(req, |mut c, r| async move { c.remove_node(r).await }).await?;
            ctx.out.members(&r.members);
        }
    }
    Ok(())
}
