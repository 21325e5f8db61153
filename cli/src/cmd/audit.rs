//! `switchyard audit`: the accepted admin writes the cluster recorded.

use anyhow::Result;
use switchyard_proto::v1::ListAuditRequest;

use super::ctx::Ctx;

pub(super) async fn run(ctx: &mut Ctx, since: u64) -> Result<()> {
    let req = ListAuditRequest { since_revision: since };
    let r = ctx.access_read(req, |mut c, r| async move { c.list_audit(r).await }).await?;
    ctx.out.audit(&r.records);
    Ok(())
}
