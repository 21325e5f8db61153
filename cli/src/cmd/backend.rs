//! `switchyard backend`: add, list, weight, drain/enable/disable, remove.

use std::collections::HashMap;

use anyhow::{bail, Result};
use switchyard_proto::v1::{
    AddBackendRequest, AdminState, Backend, ListBackendsRequest, RemoveBackendRequest, SetBackendStateRequest,
    SetBackendWeightRequest,
};

use super::ctx::Ctx;
use crate::args::BackendCmd;

pub(super) async fn run(ctx: &mut Ctx, c: BackendCmd) -> Result<()> {
    match c {
        BackendCmd::Add { pool, address, weight, zone, labels } => {
            let labels = parse_labels(&labels)?;
            let backend = Backend { pool, address, weight, zone, labels, ..Default::default() };
            let req = AddBackendRequest { backend: Some(backend) };
            let r = ctx.admin(req, |mut c, r| async move { c.add_backend(r).await }).await?;
            ctx.out.backend(&r.backend.unwrap_or_default());
        }
        BackendCmd::List { pool } => {
            let req = ListBackendsRequest { consistency: ctx.consistency, pool: pool.unwrap_or_default() };
            let r = ctx.query(req, |mut c, r| async move { c.list_backends(r).await }).await?;
            ctx.out.backends(&r.backends, &r.loads);
        }
        BackendCmd::SetWeight { pool, address, weight, force } => {
            let req = SetBackendWeightRequest { pool, address, weight, force };
            let r = ctx.admin(req, |mut c, r| async move { c.set_backend_weight(r).await }).await?;
            ctx.out.backend(&r.backend.unwrap_or_default());
        }
        BackendCmd::Drain { pool, address, force } => {
            set_state(ctx, pool, address, AdminState::Draining, force).await?
        }
        BackendCmd::Enable { pool, address } => set_state(ctx, pool, address, AdminState::Active, false).await?,
        BackendCmd::Disable { pool, address, force } => {
            set_state(ctx, pool, address, AdminState::Disabled, force).await?
        }
        BackendCmd::Remove { pool, address, force } => {
            let what = format!("backend {address} removed from pool {pool}");
            let req = RemoveBackendRequest { pool, address, force };
            let r = ctx.admin(req, |mut c, r| async move { c.remove_backend(r).await }).await?;
            ctx.out.revision(&what, r.revision);
        }
    }
    Ok(())
}

async fn set_state(ctx: &mut Ctx, pool: String, address: String, state: AdminState, force: bool) -> Result<()> {
    let req = SetBackendStateRequest { pool, address, state: state as i32, force };
    let r = ctx.admin(req, |mut c, r| async move { c.set_backend_state(r).await }).await?;
    match r.backend {
        Some(b) => ctx.out.backend(&b),
        None => ctx.out.revision("ok", r.revision),
    }
    Ok(())
}

/// `--label KEY=VALUE`, repeatable; a later key wins.
fn parse_labels(labels: &[String]) -> Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else { bail!("--label {l:?} must be KEY=VALUE") };
        map.insert(k.to_string(), v.to_string());
    }
    Ok(map)
}
