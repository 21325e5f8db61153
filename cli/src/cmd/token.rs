//! `switchyard token`: create (the secret is printed once, alone on stdout), list, revoke.

use anyhow::Result;
use switchyard_proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest};

use super::ctx::Ctx;
use crate::args::TokenCmd;

pub(super) async fn run(ctx: &mut Ctx, c: TokenCmd) -> Result<()> {
    match c {
        TokenCmd::Create { role, ttl, name } => {
            let ttl_ms = super::millis(ttl);
            let req = CreateTokenRequest { name, role, ttl_ms };
            let r = ctx.access(req, |mut c, r| async move { c.create_token(r).await }).await?;
            ctx.out.token_created(&r);
        }
        TokenCmd::List => {
            let r = ctx.access_read(ListTokensRequest {}, |mut c, r| async move { c.list_tokens(r).await }).await?;
            ctx.out.tokens(&r.tokens);
        }
        TokenCmd::Revoke { id } => {
            let what = format!("token {id} revoked");
            let r = ctx.access(RevokeTokenRequest { id }, |mut c, r| async move { c.revoke_token(r).await }).await?;
            ctx.out.revision(&what, r.revision);
        }
    }
    Ok(())
}
