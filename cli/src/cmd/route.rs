//! `switchyard route`: set (create or replace), list, delete.

use anyhow::{anyhow, Context, Result};
use switchyard_proto::v1::{
    route_auth, AuthRequest, DeleteRouteRequest, JwtAuth, ReadRequest, Route, RouteAuth, SetRouteRequest,
};

use super::ctx::Ctx;
use crate::args::{RouteAuthOpts, RouteCmd};

/// The route's auth from the flags (the control plane checks the key set and the rest).
fn auth(o: RouteAuthOpts) -> Result<Option<RouteAuth>> {
    if let Some(path) = o.jwt_jwks {
        let jwks =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read --jwt-jwks {}", path.display()))?;
        let claim_headers = o
            .jwt_claim_header
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(c, h)| (c.to_string(), h.to_string()))
                    .ok_or_else(|| anyhow!("--jwt-claim-header {kv:?}: expected CLAIM=HEADER"))
            })
            .collect::<Result<_>>()?;
        let j = JwtAuth {
            jwks,
            token_from: o.jwt_from.unwrap_or_default(),
            issuers: o.jwt_issuer,
            audiences: o.jwt_audience,
            claim_headers,
        };
        return Ok(Some(RouteAuth { kind: Some(route_auth::Kind::Jwt(j)) }));
    }
    Ok(o.auth_request.map(|url| {
        let timeout_ms = o.auth_timeout.map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32);
        RouteAuth { kind: Some(route_auth::Kind::Request(AuthRequest { url, timeout_ms })) }
    }))
}

pub(super) async fn run(ctx: &mut Ctx, c: RouteCmd) -> Result<()> {
    match c {
        RouteCmd::Set { name, pool, host, path_prefix, auth: a, force } => {
            let auth = auth(*a)?;
            let route = Route { name, host, path_prefix, pool, updated_revision: 0, auth };
            let req = SetRouteRequest { route: Some(route), force };
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
