//! The routing table: an immutable snapshot built from the config whenever it changes and
//! swapped in whole; connections read whichever table was current when they arrived.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use switchyard_proto::v1::{AdminState, Algorithm, Backend, Health, Pool, Route, Settings, Topology};

use crate::balance::{Balancer, PickInput};
use crate::handshake::Upgrade;
use crate::hash::hash64;
use crate::stats::{BackendStats, Registry};

pub struct BackendEntry {
    pub backend: Backend,
    pub stats: Arc<BackendStats>,
}

pub struct PoolTable {
    pub pool: Pool,
    pub backends: Vec<BackendEntry>,
    balancer: Balancer,
    /// For pools with session affinity: where a new session key goes, the same on every
    /// proxy, so proxies racing on one key pick the same backend.
    affinity: Option<crate::balance::Maglev>,
}

pub struct Table {
    pub revision: u64,
    pub settings: Settings,
    /// Most specific first: exact host, then wildcard hosts (longest suffix first), then any
    /// host; within each, the longest path prefix first.
    routes: Vec<Route>,
    pub pools: HashMap<String, Arc<PoolTable>>,
}

fn route_rank(r: &Route) -> (u8, usize, usize) {
    let host_class = if r.host.is_empty() {
        2
    } else if r.host.starts_with("*.") {
        1
    } else {
        0
    };
    (host_class, usize::MAX - r.host.len(), usize::MAX - r.path_prefix.len())
}

fn host_matches(rule: &str, host: &str) -> bool {
    if rule.is_empty() {
        return true;
    }
    let rule = rule.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(rule, |(h, _)| h);
    match rule.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => rule == host,
    }
}

/// Whether a backend may take new connections, apart from its load.
pub fn admits(b: &Backend) -> bool {
    b.admin_state == AdminState::Active as i32 && b.health != Health::Unhealthy as i32 && b.weight > 0
}

impl Table {
    pub fn empty() -> Table {
        Table { revision: 0, settings: Settings::default(), routes: Vec::new(), pools: HashMap::new() }
    }

    pub fn build(t: &Topology, registry: &Registry) -> Table {
        let mut routes = t.routes.clone();
        routes.sort_by_key(route_rank);
        let mut by_pool: HashMap<&str, Vec<&Backend>> = HashMap::new();
        for b in &t.backends {
            by_pool.entry(b.pool.as_str()).or_default().push(b);
        }
        let pools = t
            .pools
            .iter()
            .map(|p| {
                let mut bs = by_pool.remove(p.name.as_str()).unwrap_or_default();
                bs.sort_by(|a, b| a.address.cmp(&b.address));
                let ids: Vec<(&str, u32)> = bs.iter().map(|b| (b.address.as_str(), b.weight)).collect();
                let algorithm = Algorithm::try_from(p.algorithm).unwrap_or(Algorithm::RoundRobin);
                let balancer = Balancer::new(algorithm, &ids);
                let affinity = if p.affinity.is_empty() { None } else { crate::balance::Maglev::new(&ids) };
                let backends = bs
                    .into_iter()
                    .map(|b| BackendEntry { backend: b.clone(), stats: registry.get(&p.name, &b.address) })
                    .collect();
                (p.name.clone(), Arc::new(PoolTable { pool: p.clone(), backends, balancer, affinity }))
            })
            .collect();
        Table { revision: t.revision, settings: t.settings.unwrap_or_default(), routes, pools }
    }

    /// The pool for a request, by Host and path prefix.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<PoolTable>> {
        self.routes
            .iter()
            .find(|r| host_matches(&r.host, host) && path.starts_with(&r.path_prefix))
            .and_then(|r| self.pools.get(&r.pool))
    }
}

/// The raw value a key spec (`header:X`, `cookie:X`, `query:X`, `ip`) names in a request.
pub fn request_value(spec: &str, up: &Upgrade, client: IpAddr) -> Option<String> {
    if spec == "ip" {
        return Some(client.to_string());
    }
    let (kind, name) = spec.split_once(':')?;
    match kind {
        "header" => up.header(name).map(|v| String::from_utf8_lossy(v).into_owned()),
        "cookie" => up.cookie(name),
        "query" => up.query_param(name),
        _ => None,
    }
    .filter(|v| !v.is_empty())
}

/// The hash key a pool's `hash_key` names, taken from the request.
pub fn request_key(spec: &str, up: &Upgrade, client: IpAddr) -> Option<u64> {
    let ip_key = || match client {
        IpAddr::V4(a) => hash64(&[&a.octets()]),
        IpAddr::V6(a) => hash64(&[&a.octets()]),
    };
    if spec.is_empty() || spec == "ip" {
        return Some(ip_key());
    }
    let (kind, name) = spec.split_once(':')?;
    let value = match kind {
        "header" => up.header(name).map(|v| v.to_vec()),
        "cookie" => up.cookie(name).map(String::into_bytes),
        "query" => up.query_param(name).map(String::into_bytes),
        _ => None,
    }?;
    Some(hash64(&[&value]))
}

impl PoolTable {
    /// Whether backend `i` may take a new connection now.
    pub fn fit(&self, i: usize, now_ms: u64, exclude: &[usize]) -> bool {
        let max = self.pool.max_connections_per_backend as u64;
        let e = &self.backends[i];
        admits(&e.backend)
            && !exclude.contains(&i)
            && e.stats.ejected_until_ms.load(std::sync::atomic::Ordering::Relaxed) <= now_ms
            && (max == 0 || e.stats.active.load(std::sync::atomic::Ordering::Relaxed) < max)
    }

    /// The backend for a session key: its binding when the bound backend is fit, else the
    /// key's consistent-hash choice. Returns whether that makes a new binding.
    pub fn pick_session(
        &self,
        key: &str,
        bound: Option<&str>,
        now_ms: u64,
        exclude: &[usize],
    ) -> Option<(usize, bool)> {
        if let Some(i) = bound.and_then(|b| self.backends.iter().position(|e| e.backend.address == b)) {
            if self.fit(i, now_ms, exclude) {
                return Some((i, false));
            }
        }
        let m = self.affinity.as_ref()?;
        let h = hash64(&[key.as_bytes()]);
        m.candidates(h).take(crate::balance::MAGLEV_SIZE).find(|&i| self.fit(i, now_ms, exclude)).map(|i| (i, true))
    }

    /// Picks a backend for a new connection, skipping `exclude` (backends that already failed
    /// to connect for this request).
    pub fn pick(&self, up: &Upgrade, client: IpAddr, now_ms: u64, exclude: &[usize]) -> Option<usize> {
        let fit = |i: usize| self.fit(i, now_ms, exclude);
        let load = |i: usize| self.backends[i].stats.load();
        let ip = match client {
            IpAddr::V4(a) => hash64(&[&a.octets()]),
            IpAddr::V6(a) => hash64(&[&a.octets()]),
        };
        let key = request_key(&self.pool.hash_key, up, client);
        self.balancer.pick(&PickInput { key, ip, load: &load, fit: &fit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: &str, prefix: &str) -> Route {
        Route {
            name: name.into(),
            host: host.into(),
            path_prefix: prefix.into(),
            pool: name.into(),
            updated_revision: 0,
        }
    }

    #[test]
    fn most_specific_route_wins() {
        let t = Topology {
            routes: vec![
                route("any", "", ""),
                route("chat", "", "/chat"),
                route("wild", "*.example.com", ""),
                route("exact", "api.example.com", ""),
                route("exact-ws", "api.example.com", "/ws"),
            ],
            pools: ["any", "chat", "wild", "exact", "exact-ws"]
                .iter()
                .map(|n| Pool { name: n.to_string(), ..Default::default() })
                .collect(),
            ..Default::default()
        };
        let table = Table::build(&t, &Registry::default());
        let pool = |h: &str, p: &str| table.route(h, p).map(|p| p.pool.name.clone());
        assert_eq!(pool("api.example.com", "/ws/1").as_deref(), Some("exact-ws"));
        assert_eq!(pool("api.example.com", "/x").as_deref(), Some("exact"));
        assert_eq!(pool("a.example.com", "/chat").as_deref(), Some("wild"));
        assert_eq!(pool("example.com", "/chat").as_deref(), Some("chat"));
        assert_eq!(pool("other", "/").as_deref(), Some("any"));
    }
}
