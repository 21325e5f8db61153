//! `switchyard session`: list, get and delete session-affinity bindings.

use anyhow::Result;
use switchyard_proto::v1::{DeleteSessionRequest, GetSessionRequest, ListSessionsRequest};

use super::ctx::Ctx;
use crate::args::SessionCmd;

pub(super) async fn run(ctx: &mut Ctx, c: SessionCmd) -> Result<()> {
    let consistency = ctx.consistency;
    match c {
        SessionCmd::List { pool, limit } => {
            let req = ListSessionsRequest { consistency, pool: pool.unwrap_or_default(), limit };
            let r = ctx.query(req, |mut c, r| async move { c.list_sessions(r).await }).await?;
            ctx.out.sessions(&r.sessions);
        }
        SessionCmd::Get { pool, key } => {
            let req = GetSessionRequest { consistency, pool, key };
            let s = ctx.query(req, |mut c, r| async move { c.get_session(r).await }).await?;
            ctx.out.session(&s);
        }
        SessionCmd::Delete { pool, key, all } => {
            let what = match &key {
                Some(k) => format!("session {k} deleted"),
                None => format!("every session of pool {pool} deleted"),
            };
            let req = DeleteSessionRequest { pool, key: key.unwrap_or_default(), all };
            let r = ctx.admin(req, |mut c, r| async move { c.delete_session(r).await }).await?;
            ctx.out.revision(&what, r.revision);
        }
    }
    Ok(())
}
