//! `switchyard pool`: create, list, get, update (only the options given), delete.

use anyhow::{anyhow, bail, Result};
use switchyard_proto::v1::{
    Algorithm, BackendTls, CreatePoolRequest, DeletePoolRequest, GetPoolRequest, HealthCheck, HealthCheckKind, Pool,
    ReadRequest, UpdatePoolRequest,
};

use super::ctx::Ctx;
use crate::args::{BackendTlsArg, PoolCmd, PoolOpts};

pub(super) async fn run(ctx: &mut Ctx, c: PoolCmd) -> Result<()> {
    let consistency = ctx.consistency;
    match c {
        PoolCmd::Create { name, opts } => {
            let mut pool = Pool { name, ..Default::default() };
            apply_pool_opts(&mut pool, &opts);
            apply_backend_tls(&mut pool, &opts)?;
            let req = CreatePoolRequest { pool: Some(pool) };
            let r = ctx.admin(req, |mut c, r| async move { c.create_pool(r).await }).await?;
            ctx.out.pool(&r.pool.unwrap_or_default());
        }
        PoolCmd::Update { name, opts, force } => {
            let mut pool = Pool { name, ..Default::default() };
            let mut update_mask = apply_pool_opts(&mut pool, &opts);
            // The health check and backend TLS are replaced whole: start from the pool's, so
            // that changing one field keeps the others.
            let partial_hc = update_mask.iter().any(|m| m == "health_check") && opts.health_check.is_none();
            let partial_tls =
                tls_given(&opts) && !matches!(opts.backend_tls, Some(BackendTlsArg::Off) | Some(BackendTlsArg::Proxy));
            if partial_hc || partial_tls {
                let req = GetPoolRequest { consistency, name: pool.name.clone() };
                let cur = ctx.query(req, |mut c, r| async move { c.get_pool(r).await }).await?;
                pool.health_check = cur.health_check;
                pool.backend_tls = cur.backend_tls;
                apply_pool_opts(&mut pool, &opts);
            }
            if apply_backend_tls(&mut pool, &opts)? {
                update_mask.push("backend_tls".into());
            }
            if update_mask.is_empty() {
                bail!("pool update: give at least one option to change (see --help)");
            }
            let req = UpdatePoolRequest { pool: Some(pool), update_mask, force };
            let r = ctx.admin(req, |mut c, r| async move { c.update_pool(r).await }).await?;
            ctx.out.pool(&r.pool.unwrap_or_default());
        }
        PoolCmd::List => {
            let r = ctx.query(ReadRequest { consistency }, |mut c, r| async move { c.list_pools(r).await }).await?;
            ctx.out.pools(&r.pools);
        }
        PoolCmd::Get { name } => {
            let req = GetPoolRequest { consistency, name };
            let p = ctx.query(req, |mut c, r| async move { c.get_pool(r).await }).await?;
            ctx.out.pool(&p);
        }
        PoolCmd::Delete { name } => {
            let req = DeletePoolRequest { name: name.clone() };
            let r = ctx.admin(req, |mut c, r| async move { c.delete_pool(r).await }).await?;
            ctx.out.revision(&format!("pool {name} deleted"), r.revision);
        }
    }
    Ok(())
}

fn tls_given(o: &PoolOpts) -> bool {
    o.backend_tls.is_some() || o.backend_tls_ca.is_some() || o.backend_tls_server_name.is_some()
}

/// Sets `pool.backend_tls` from the options given, on top of what it has; whether any was.
/// A CA bundle or a server name alone turns TLS on.
fn apply_backend_tls(pool: &mut Pool, o: &PoolOpts) -> Result<bool> {
    if !tls_given(o) {
        return Ok(false);
    }
    let details = o.backend_tls_ca.is_some() || o.backend_tls_server_name.is_some();
    match o.backend_tls {
        Some(BackendTlsArg::Proxy) | Some(BackendTlsArg::Off) if details => {
            bail!("--backend-tls-ca and --backend-tls-server-name go with --backend-tls on")
        }
        Some(BackendTlsArg::Proxy) => pool.backend_tls = None,
        Some(BackendTlsArg::Off) => pool.backend_tls = Some(BackendTls::default()),
        Some(BackendTlsArg::On) | None => {
            let mut t = pool.backend_tls.clone().unwrap_or_default();
            t.enabled = true;
            if let Some(path) = &o.backend_tls_ca {
                let max = switchyard_model::backend_tls::MAX_CA_PEM_BYTES as u64;
                let len =
                    std::fs::metadata(path).map_err(|e| anyhow!("--backend-tls-ca {}: {e}", path.display()))?.len();
                if len > max {
                    bail!("--backend-tls-ca {}: {len} bytes, more than a CA bundle's {max}", path.display());
                }
                t.ca_pem =
                    std::fs::read_to_string(path).map_err(|e| anyhow!("--backend-tls-ca {}: {e}", path.display()))?;
            }
            if let Some(n) = &o.backend_tls_server_name {
                t.server_name = n.clone();
            }
            pool.backend_tls = Some(t);
        }
    }
    Ok(true)
}

/// Fills `pool` from the options given and returns the update mask: the names of the fields
/// they set. Health-check options set the whole `health_check`, defaults for the rest unless
/// `pool` already has one.
fn apply_pool_opts(pool: &mut Pool, o: &PoolOpts) -> Vec<String> {
    let mut mask = Vec::new();
    let mut set = |f: &str| mask.push(f.to_string());
    if let Some(a) = o.algorithm {
        pool.algorithm = Algorithm::from(a) as i32;
        set("algorithm");
    }
    if let Some(k) = &o.hash_key {
        pool.hash_key = k.clone();
        set("hash_key");
    }
    if let Some(a) = &o.affinity {
        pool.affinity = if a == "none" { String::new() } else { a.clone() };
        set("affinity");
    }
    if let Some(t) = o.affinity_ttl {
        pool.affinity_ttl_ms = super::millis(t);
        set("affinity_ttl_ms");
    }
    if let Some(m) = o.max_connections {
        pool.max_connections_per_backend = m;
        set("max_connections_per_backend");
    }
    if let Some(d) = o.drain_timeout {
        pool.drain_timeout_ms = super::millis(d);
        set("drain_timeout_ms");
    }
    if let Some(b) = o.max_body {
        pool.max_body_bytes = b;
        set("max_body_bytes");
    }
    if let Some(t) = o.response_timeout {
        pool.response_timeout_ms = super::millis(t);
        set("response_timeout_ms");
    }
    let hc_given = o.health_check.is_some()
        || o.health_interval.is_some()
        || o.health_timeout.is_some()
        || o.health_rise.is_some()
        || o.health_fall.is_some()
        || o.health_path.is_some()
        || o.health_close_on_failure.is_some();
    if hc_given {
        let mut hc = pool.health_check.clone().unwrap_or(HealthCheck {
            kind: HealthCheckKind::HealthCheckTcp as i32,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
            path: "/".into(),
            close_on_failure: false,
        });
        if let Some(k) = o.health_check {
            hc.kind = HealthCheckKind::from(k) as i32;
        }
        if let Some(d) = o.health_interval {
            hc.interval_ms = u32::try_from(super::millis(d)).unwrap_or(u32::MAX);
        }
        if let Some(d) = o.health_timeout {
            hc.timeout_ms = u32::try_from(super::millis(d)).unwrap_or(u32::MAX);
        }
        if let Some(r) = o.health_rise {
            hc.rise = r;
        }
        if let Some(f) = o.health_fall {
            hc.fall = f;
        }
        if let Some(p) = &o.health_path {
            hc.path = p.clone();
        }
        if let Some(c) = o.health_close_on_failure {
            hc.close_on_failure = c;
        }
        pool.health_check = Some(hc);
        set("health_check");
    }
    mask
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::args::pool::{AlgorithmArg, HealthCheckArg};

    #[test]
    fn no_options_no_mask() {
        let mut pool = Pool { name: "p".into(), ..Default::default() };
        assert!(apply_pool_opts(&mut pool, &PoolOpts::default()).is_empty());
        assert_eq!(pool, Pool { name: "p".into(), ..Default::default() });
    }

    #[test]
    fn each_option_sets_its_field_and_mask_entry() {
        let opts = PoolOpts {
            algorithm: Some(AlgorithmArg::P2c),
            hash_key: Some("header:x".into()),
            affinity: Some("cookie:sid".into()),
            affinity_ttl: Some(Duration::from_secs(60)),
            max_connections: Some(7),
            drain_timeout: Some(Duration::from_millis(1500)),
            ..Default::default()
        };
        let mut pool = Pool::default();
        let mask = apply_pool_opts(&mut pool, &opts);
        let want = ["algorithm", "hash_key", "affinity", "affinity_ttl_ms", "max_connections_per_backend"];
        assert_eq!(mask, [&want[..], &["drain_timeout_ms"]].concat());
        assert_eq!(pool.algorithm, Algorithm::P2c as i32);
        assert_eq!((pool.hash_key.as_str(), pool.affinity.as_str()), ("header:x", "cookie:sid"));
        assert_eq!((pool.affinity_ttl_ms, pool.max_connections_per_backend, pool.drain_timeout_ms), (60_000, 7, 1500));
        assert_eq!(pool.health_check, None);
    }

    #[test]
    fn affinity_none_turns_it_off() {
        let mut pool = Pool { affinity: "ip".into(), ..Default::default() };
        let mask = apply_pool_opts(&mut pool, &PoolOpts { affinity: Some("none".into()), ..Default::default() });
        assert_eq!(mask, ["affinity"]);
        assert_eq!(pool.affinity, "");
    }

    #[test]
    fn one_health_field_fills_the_rest_with_defaults() {
        let mut pool = Pool::default();
        let opts = PoolOpts { health_interval: Some(Duration::from_secs(5)), ..Default::default() };
        assert_eq!(apply_pool_opts(&mut pool, &opts), ["health_check"]);
        let hc = pool.health_check.expect("set");
        assert_eq!((hc.kind, hc.interval_ms, hc.timeout_ms), (HealthCheckKind::HealthCheckTcp as i32, 5000, 1000));
        assert_eq!((hc.rise, hc.fall, hc.path.as_str()), (2, 3, "/"));
    }

    #[test]
    fn one_health_field_keeps_the_pools_others() {
        let current = HealthCheck {
            kind: HealthCheckKind::HealthCheckWebsocket as i32,
            interval_ms: 9000,
            timeout_ms: 800,
            rise: 4,
            fall: 5,
            path: "/h".into(),
            close_on_failure: true,
        };
        let mut pool = Pool { health_check: Some(current.clone()), ..Default::default() };
        let opts = PoolOpts { health_fall: Some(1), ..Default::default() };
        assert_eq!(apply_pool_opts(&mut pool, &opts), ["health_check"]);
        assert_eq!(pool.health_check, Some(HealthCheck { fall: 1, ..current.clone() }));
        // Turned off alone, the rest kept.
        let opts = PoolOpts { health_close_on_failure: Some(false), ..Default::default() };
        assert_eq!(apply_pool_opts(&mut pool, &opts), ["health_check"]);
        assert_eq!(pool.health_check, Some(HealthCheck { fall: 1, close_on_failure: false, ..current }));
    }

    #[test]
    fn health_check_kind_maps() {
        let mut pool = Pool::default();
        let opts = PoolOpts { health_check: Some(HealthCheckArg::Off), ..Default::default() };
        assert_eq!(apply_pool_opts(&mut pool, &opts), ["health_check"]);
        assert_eq!(pool.health_check.expect("set").kind, HealthCheckKind::HealthCheckNone as i32);
    }
}
