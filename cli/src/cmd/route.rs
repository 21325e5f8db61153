//! `switchyard route`: set (create or replace), list, delete.

use anyhow::Result;
use switchyard_proto::v1::{DeleteRouteRequest, ReadRequest, Route, SetRouteRequest};

use super::ctx::Ctx;
use crate::args::RouteCmd;

pub(super) async fn run(ctx: &mut Ctx, c: RouteCmd) -> Result<()> {
    match c {
        RouteCmd::Set { name, pool, host, path_prefix } => {
            let req = SetRouteRequest { route: Some(Route { name, host, path_prefix, pool, updated_revision: 0 }) };
            let r = ctx.admin(req, |mut c, r| async move { c.set_route(r).await }).await?;
            ctx.out.route(&r.route.unwrap_or_default());
        }
        RouteCmd::List => {
            let req = ReadRequest { consistency: ctx.consistency };
            let r = ctx.query(req, |mut c, r| async move { c.list_routes(r).await }).await?;
            ctx.out.routes(&r.routes);
        }
        RouteCmd::Delete { name } => {
            let req = DeleteRouteRequest { name: name.clone() };
            let r = ctx.admin(req, |mut c, r| async move { c.delete_route(r).await }).await?;
            ctx.out.revision(&format!("route {name} deleted"), r.revision);
        }
    }
    Ok(())
}
