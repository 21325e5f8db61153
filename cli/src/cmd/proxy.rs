//! `switchyard proxy`: the proxies reporting to the control plane.

use anyhow::Result;
use switchyard_proto::v1::ReadRequest;

use super::ctx::Ctx;
use crate::args::ProxyCmd;

pub(super) async fn run(ctx: &mut Ctx, c: ProxyCmd) -> Result<()> {
    match c {
        ProxyCmd::List => {
            let req = ReadRequest { consistency: ctx.consistency };
            let r = ctx.query(req, |mut c, r| async move { c.list_proxies(r).await }).await?;
            ctx.out.proxies(&r.proxies);
        }
    }
    Ok(())
}
