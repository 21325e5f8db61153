//! Carries out one command against the control plane.

use anyhow::{bail, Result};
use serde_json::json;
use switchyard_proto::v1::*;

use crate::args::*;
use crate::client::Client;
use crate::output::{self as out, Format};

pub struct Ctx {
    pub client: Client,
    pub format: Format,
    pub consistency: i32,
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

fn algorithm(s: &str) -> Algorithm {
    match s {
        "least-connections" => Algorithm::LeastConnections,
        "ip-hash" => Algorithm::IpHash,
        "consistent-hash" => Algorithm::ConsistentHash,
        "p2c" => Algorithm::P2c,
        _ => Algorithm::RoundRobin,
    }
}

/// Fills `pool` from the options given and returns the names of the fields they set.
fn apply_pool_opts(pool: &mut Pool, o: &PoolOpts) -> Vec<String> {
    let mut mask = Vec::new();
    let mut set = |f: &str| mask.push(f.to_string());
    if let Some(a) = &o.algorithm {
        pool.algorithm = algorithm(a) as i32;
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
        pool.affinity_ttl_ms = ms(t);
        set("affinity_ttl_ms");
    }
    if let Some(m) = o.max_connections {
        pool.max_connections_per_backend = m;
        set("max_connections_per_backend");
    }
    if let Some(d) = o.drain_timeout {
        pool.drain_timeout_ms = ms(d);
        set("drain_timeout_ms");
    }
    let hc_given = o.health_check.is_some()
        || o.health_interval.is_some()
        || o.health_timeout.is_some()
        || o.health_rise.is_some()
        || o.health_fall.is_some()
        || o.health_path.is_some();
    if hc_given {
        let mut hc = pool.health_check.clone().unwrap_or(HealthCheck {
            kind: HealthCheckKind::HealthCheckTcp as i32,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
            path: "/".into(),
        });
        if let Some(k) = &o.health_check {
            hc.kind = match k.as_str() {
                "tcp" => HealthCheckKind::HealthCheckTcp,
                "websocket" => HealthCheckKind::HealthCheckWebsocket,
                _ => HealthCheckKind::HealthCheckNone,
            } as i32;
        }
        if let Some(d) = o.health_interval {
            hc.interval_ms = ms(d) as u32;
        }
        if let Some(d) = o.health_timeout {
            hc.timeout_ms = ms(d) as u32;
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
        pool.health_check = Some(hc);
        set("health_check");
    }
    mask
}

impl Ctx {
    fn print_pool(&self, p: &Pool) {
        match self.format {
            Format::Json => out::print_json(&out::pool_json(p)),
            Format::Table => out::table(out::POOL_HEADERS, &[out::pool_row(p)]),
        }
    }

    fn print_backend(&self, b: &Backend) {
        match self.format {
            Format::Json => out::print_json(&out::backend_json(b)),
            Format::Table => out::table(out::BACKEND_HEADERS, &[out::backend_row(b)]),
        }
    }

    fn print_revision(&self, what: &str, revision: u64) {
        match self.format {
            Format::Json => out::print_json(&json!({"revision": revision})),
            Format::Table => println!("{what} (revision {revision})"),
        }
    }

    fn print_members(&self, members: &[Member]) {
        match self.format {
            Format::Json => out::print_json(&json!(members.iter().map(out::member_json).collect::<Vec<_>>())),
            Format::Table => {
                let rows: Vec<Vec<String>> = members
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.address.clone(),
                            out::role(m.role).into(),
                            if m.leader { "*".into() } else { String::new() },
                        ]
                    })
                    .collect();
                out::table(&["ID", "ADDRESS", "ROLE", "LEADER"], &rows);
            }
        }
    }

    async fn backend_state(&mut self, pool: String, address: String, state: AdminState) -> Result<()> {
        let r = self
            .client
            .call(|c| {
                let req = SetBackendStateRequest { pool: pool.clone(), address: address.clone(), state: state as i32 };
                async move { Client::admin(c).set_backend_state(req).await }
            })
            .await?
            .into_inner();
        match r.backend {
            Some(b) => self.print_backend(&b),
            None => self.print_revision("ok", r.revision),
        }
        Ok(())
    }

    pub async fn run(&mut self, cmd: Command) -> Result<()> {
        let consistency = self.consistency;
        match cmd {
            Command::Dev(_) | Command::DemoBackend { .. } => unreachable!("handled in main"),
            Command::Cluster(c) => self.cluster(c).await?,
            Command::Pool(PoolCmd::Create { name, opts }) => {
                let mut pool = Pool { name, ..Default::default() };
                apply_pool_opts(&mut pool, &opts);
                let r = self
                    .client
                    .call(|c| {
                        let req = CreatePoolRequest { pool: Some(pool.clone()) };
                        async move { Client::admin(c).create_pool(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_pool(&r.pool.unwrap_or_default());
            }
            Command::Pool(PoolCmd::Update { name, opts }) => {
                let mut pool = Pool { name, ..Default::default() };
                let mask = apply_pool_opts(&mut pool, &opts);
                if mask.is_empty() {
                    bail!("pool update: give at least one option to change (see --help)");
                }
                if mask.iter().any(|m| m == "health_check") && opts.health_check.is_none() {
                    // Changing one health-check field keeps the others: start from the pool's.
                    let cur = self
                        .client
                        .call(|c| {
                            let req = GetPoolRequest { consistency, name: pool.name.clone() };
                            async move { Client::query(c).get_pool(req).await }
                        })
                        .await?
                        .into_inner();
                    pool.health_check = cur.health_check;
                    apply_pool_opts(&mut pool, &opts);
                }
                let r = self
                    .client
                    .call(|c| {
                        let req = UpdatePoolRequest { pool: Some(pool.clone()), update_mask: mask.clone() };
                        async move { Client::admin(c).update_pool(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_pool(&r.pool.unwrap_or_default());
            }
            Command::Pool(PoolCmd::List) => {
                let r = self
                    .client
                    .call(|c| async move { Client::query(c).list_pools(ReadRequest { consistency }).await })
                    .await?
                    .into_inner();
                match self.format {
                    Format::Json => out::print_json(&json!(r.pools.iter().map(out::pool_json).collect::<Vec<_>>())),
                    Format::Table => {
                        out::table(out::POOL_HEADERS, &r.pools.iter().map(out::pool_row).collect::<Vec<_>>())
                    }
                }
            }
            Command::Pool(PoolCmd::Get { name }) => {
                let p = self
                    .client
                    .call(|c| {
                        let req = GetPoolRequest { consistency, name: name.clone() };
                        async move { Client::query(c).get_pool(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_pool(&p);
            }
            Command::Pool(PoolCmd::Delete { name }) => {
                let r = self
                    .client
                    .call(|c| {
                        let req = DeletePoolRequest { name: name.clone() };
                        async move { Client::admin(c).delete_pool(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_revision(&format!("pool {name} deleted"), r.revision);
            }
            Command::Backend(b) => self.backend(b).await?,
            Command::Route(r) => self.route(r).await?,
            Command::Session(s) => crate::run_more::session(self, s).await?,
            Command::Settings(s) => crate::run_more::settings(self, s).await?,
            Command::Proxy(ProxyCmd::List) => crate::run_more::proxies(self).await?,
            Command::Watch { from } => crate::run_more::watch(self, from).await?,
        }
        Ok(())
    }

    async fn cluster(&mut self, c: ClusterCmd) -> Result<()> {
        match c {
            ClusterCmd::Status => {
                let s = self
                    .client
                    .call(|c| async move { Client::query(c).cluster_status(ClusterStatusRequest {}).await })
                    .await?
                    .into_inner();
                match self.format {
                    Format::Json => out::print_json(&json!({
                        "node_id": s.node_id,
                        "leader_id": if s.leader_id == 0 { serde_json::Value::Null } else { json!(s.leader_id) },
                        "term": s.term,
                        "applied_revision": s.applied_revision,
                        "state": s.state,
                        "snapshot_index": s.snapshot_index,
                        "purged_index": s.purged_index,
                        "members": s.members.iter().map(out::member_json).collect::<Vec<_>>(),
                    })),
                    Format::Table => {
                        let leader = if s.leader_id == 0 { "none".to_string() } else { s.leader_id.to_string() };
                        println!(
                            "answered by node {} ({}), leader {leader}, term {}, revision {}",
                            s.node_id, s.state, s.term, s.applied_revision
                        );
                        self.print_members(&s.members);
                    }
                }
            }
            ClusterCmd::Members => {
                let s = self
                    .client
                    .call(|c| async move { Client::query(c).cluster_status(ClusterStatusRequest {}).await })
                    .await?
                    .into_inner();
                self.print_members(&s.members);
            }
            ClusterCmd::AddNode { id, address } => {
                let address = address.trim_start_matches("http://").to_string();
                let r = self
                    .client
                    .call(|c| {
                        let req = AddNodeRequest { id, address: address.clone() };
                        async move { Client::admin(c).add_node(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_members(&r.members);
            }
            ClusterCmd::Promote { id } => {
                let r = self
                    .client
                    .call(|c| async move { Client::admin(c).promote_node(PromoteNodeRequest { id }).await })
                    .await?
                    .into_inner();
                self.print_members(&r.members);
            }
            ClusterCmd::RemoveNode { id } => {
                let r = self
                    .client
                    .call(|c| async move { Client::admin(c).remove_node(RemoveNodeRequest { id }).await })
                    .await?
                    .into_inner();
                self.print_members(&r.members);
            }
        }
        Ok(())
    }

    async fn backend(&mut self, b: BackendCmd) -> Result<()> {
        let consistency = self.consistency;
        match b {
            BackendCmd::Add { pool, address, weight, zone, labels } => {
                let mut map = std::collections::HashMap::new();
                for l in labels {
                    let Some((k, v)) = l.split_once('=') else { bail!("--label {l:?} must be KEY=VALUE") };
                    map.insert(k.to_string(), v.to_string());
                }
                let backend = Backend { pool, address, weight, zone, labels: map, ..Default::default() };
                let r = self
                    .client
                    .call(|c| {
                        let req = AddBackendRequest { backend: Some(backend.clone()) };
                        async move { Client::admin(c).add_backend(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_backend(&r.backend.unwrap_or_default());
            }
            BackendCmd::List { pool } => {
                let pool = pool.unwrap_or_default();
                let r = self
                    .client
                    .call(|c| {
                        let req = ListBackendsRequest { consistency, pool: pool.clone() };
                        async move { Client::query(c).list_backends(req).await }
                    })
                    .await?
                    .into_inner();
                let conns = |b: &Backend| {
                    r.loads.iter().find(|l| l.pool == b.pool && l.address == b.address).map_or(0, |l| l.connections)
                };
                match self.format {
                    Format::Json => out::print_json(&json!(r
                        .backends
                        .iter()
                        .map(|b| {
                            let mut v = out::backend_json(b);
                            v["connections"] = json!(conns(b));
                            v
                        })
                        .collect::<Vec<_>>())),
                    Format::Table => {
                        let mut headers = out::BACKEND_HEADERS.to_vec();
                        headers.push("CONNECTIONS");
                        let rows: Vec<Vec<String>> = r
                            .backends
                            .iter()
                            .map(|b| {
                                let mut row = out::backend_row(b);
                                row.push(conns(b).to_string());
                                row
                            })
                            .collect();
                        out::table(&headers, &rows);
                    }
                }
            }
            BackendCmd::SetWeight { pool, address, weight } => {
                let r = self
                    .client
                    .call(|c| {
                        let req = SetBackendWeightRequest { pool: pool.clone(), address: address.clone(), weight };
                        async move { Client::admin(c).set_backend_weight(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_backend(&r.backend.unwrap_or_default());
            }
            BackendCmd::Drain { pool, address } => self.backend_state(pool, address, AdminState::Draining).await?,
            BackendCmd::Enable { pool, address } => self.backend_state(pool, address, AdminState::Active).await?,
            BackendCmd::Disable { pool, address } => self.backend_state(pool, address, AdminState::Disabled).await?,
            BackendCmd::Remove { pool, address } => {
                let r = self
                    .client
                    .call(|c| {
                        let req = RemoveBackendRequest { pool: pool.clone(), address: address.clone() };
                        async move { Client::admin(c).remove_backend(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_revision(&format!("backend {address} removed from pool {pool}"), r.revision);
            }
        }
        Ok(())
    }

    async fn route(&mut self, r: RouteCmd) -> Result<()> {
        let consistency = self.consistency;
        match r {
            RouteCmd::Set { name, pool, host, path_prefix } => {
                let route = Route { name, host, path_prefix, pool, updated_revision: 0 };
                let r = self
                    .client
                    .call(|c| {
                        let req = SetRouteRequest { route: Some(route.clone()) };
                        async move { Client::admin(c).set_route(req).await }
                    })
                    .await?
                    .into_inner();
                let route = r.route.unwrap_or_default();
                match self.format {
                    Format::Json => out::print_json(&out::route_json(&route)),
                    Format::Table => out::table(out::ROUTE_HEADERS, &[out::route_row(&route)]),
                }
            }
            RouteCmd::List => {
                let r = self
                    .client
                    .call(|c| async move { Client::query(c).list_routes(ReadRequest { consistency }).await })
                    .await?
                    .into_inner();
                match self.format {
                    Format::Json => out::print_json(&json!(r.routes.iter().map(out::route_json).collect::<Vec<_>>())),
                    Format::Table => {
                        out::table(out::ROUTE_HEADERS, &r.routes.iter().map(out::route_row).collect::<Vec<_>>())
                    }
                }
            }
            RouteCmd::Delete { name } => {
                let r = self
                    .client
                    .call(|c| {
                        let req = DeleteRouteRequest { name: name.clone() };
                        async move { Client::admin(c).delete_route(req).await }
                    })
                    .await?
                    .into_inner();
                self.print_revision(&format!("route {name} deleted"), r.revision);
            }
        }
        Ok(())
    }
}
