//! The routing table: an immutable snapshot built from the config whenever it changes and
//! swapped in whole; connections read whichever table was current when they arrived.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use switchyard_model::{usable, AffinitySecret, KeySpec, Model};
use switchyard_proto::v1::{AdminState, Algorithm, Backend, Pool, Route, Settings};

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
    /// The pool's `hash_key`, parsed once here (empty means the client IP).
    hash_key: Option<KeySpec>,
    /// The pool's `affinity` key, when it has session affinity.
    pub affinity_key: Option<KeySpec>,
    balancer: Arc<Balancer>,
    /// For pools with session affinity: where a new session key goes, the same on every
    /// proxy, so proxies racing on one key pick the same backend.
    affinity: Option<Arc<crate::balance::Maglev>>,
    /// TLS to this pool's backends.
    pub tls: crate::tls::PoolTls,
    /// Every backend that would otherwise take connections is marked down by the health
    /// check: they all take them anyway (Envoy's panic mode, NGINX trying every server once
    /// all have failed). A check that fails everywhere is likelier wrong (a mistyped path, a
    /// control plane that cannot reach the backends) than every backend down, and refusing
    /// every client would make it an outage either way.
    pub panic: bool,
}

/// What tables compile from the config and keep from one table to the next.
#[derive(Default)]
pub struct Compiled {
    /// Routes' last good JWT key sets (see [`crate::edge_auth`]).
    pub keys: crate::edge_auth::KeyCache,
    pub tls: crate::tls::PoolTlsCache,
    /// Each pool's balancer and affinity table, kept while its algorithm, backends and
    /// weights stay as they were: a health flip or a route edit elsewhere neither rebuilds
    /// Maglev tables (65,537 slots each) nor resets round robin to the first backend.
    balancers: std::sync::Mutex<HashMap<String, (Shape, Picking)>>,
}

/// What a pool's balancer is built from: algorithm, (address, weight) in order, affinity on.
type Shape = (i32, Vec<(String, u32)>, bool);
type Picking = (Arc<Balancer>, Option<Arc<crate::balance::Maglev>>);

impl Compiled {
    fn picking(&self, pool: &str, shape: Shape, build: impl FnOnce() -> Picking) -> Picking {
        let mut all = self.balancers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, p)) = all.get(pool) {
            if *s == shape {
                return p.clone();
            }
        }
        let p = build();
        all.insert(pool.to_string(), (shape, p.clone()));
        p
    }

    fn keep_pools(&self, keep: impl Fn(&str) -> bool) {
        self.balancers.lock().unwrap_or_else(|e| e.into_inner()).retain(|p, _| keep(p));
    }
}

pub struct Table {
    pub revision: u64,
    pub settings: Settings,
    /// Most specific first: exact host, then wildcard hosts (longest suffix first), then any
    /// host; within each, the longest path prefix first.
    routes: Vec<Route>,
    pub pools: HashMap<String, Arc<PoolTable>>,
    /// Session keys are hashed with this before any lookup, report or cache write; the raw
    /// key lives only in the request being routed (and in `hash_key` balancing, in memory).
    pub affinity_secret: AffinitySecret,
    /// Routes' edge authentication, by route name.
    auth: HashMap<String, Arc<crate::edge_auth::EdgeAuth>>,
}

fn route_rank(r: &Route) -> (u8, usize, usize) {
    let host_class = if r.host.is_empty() {
        2
    } else if r.host.starts_with("*.") {
        1
    } else {
        0
    };
    (host_class, usize::MAX - without_port(&r.host).len(), usize::MAX - r.path_prefix.len())
}

/// A rule's host without the port an older control plane let it name: a host matches on any
/// port, so the port neither matches nor ranks (it made `a.example:9443` outrank, and take
/// every request of, `a.example`).
fn without_port(rule: &str) -> &str {
    if rule.parse::<IpAddr>().is_ok() {
        return rule; // `::1`: its last group is no port
    }
    rule.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(rule, |(h, _)| h)
}

fn host_matches(rule: &str, host: &str) -> bool {
    if rule.is_empty() {
        return true;
    }
    let rule = without_port(rule);
    match rule.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => rule == host,
    }
}

/// Parses a key spec the control plane validated; one that does not parse (a newer control
/// plane's form, say) is logged and treated as absent rather than failing the whole table.
fn key_spec(pool: &str, what: &str, s: &str) -> Option<KeySpec> {
    if s.is_empty() {
        return None;
    }
    s.parse().map_err(|e| tracing::warn!(pool, "ignoring the pool's {what}: {e}")).ok()
}

impl Table {
    pub fn empty() -> Table {
        Table {
            revision: 0,
            settings: Settings::default(),
            routes: Vec::new(),
            pools: HashMap::new(),
            affinity_secret: AffinitySecret::default(),
            auth: HashMap::new(),
        }
    }

    pub fn build(model: &Model, revision: u64, registry: &Registry) -> Table {
        Table::build_with(model, revision, registry, &Compiled::default())
    }

    /// [`Self::build`], compiling routes' key sets and pools' backend TLS through `compiled`
    /// (which keeps what it compiled for the next table).
    pub fn build_with(model: &Model, revision: u64, registry: &Registry, compiled: &Compiled) -> Table {
        compiled.tls.retain(&|p| model.pools.contains_key(p));
        compiled.keep_pools(|p| model.pools.contains_key(p));
        let mut routes: Vec<Route> = model.routes.values().cloned().collect();
        routes.sort_by_key(route_rank);
        let pools = model
            .pools
            .values()
            .map(|p| {
                // In address order, as the model keeps them: every proxy builds the same table.
                let bs: Vec<&Backend> = model.backends_of(&p.name).collect();
                let ids: Vec<(&str, u32)> = bs.iter().map(|b| (b.address.as_str(), b.weight)).collect();
                let algorithm = Algorithm::try_from(p.algorithm).unwrap_or(Algorithm::RoundRobin);
                let affinity_key = key_spec(&p.name, "affinity", &p.affinity);
                let shape =
                    (algorithm as i32, ids.iter().map(|(a, w)| (a.to_string(), *w)).collect(), affinity_key.is_some());
                let (balancer, affinity) = compiled.picking(&p.name, shape, || {
                    let balancer = Arc::new(Balancer::new(algorithm, &ids));
                    let affinity = affinity_key.as_ref().and_then(|_| {
                        balancer.maglev().cloned().or_else(|| crate::balance::Maglev::new(&ids).map(Arc::new))
                    });
                    (balancer, affinity)
                });
                let hash_key = if p.hash_key.is_empty() {
                    Some(KeySpec::ClientIp)
                } else {
                    key_spec(&p.name, "hash key", &p.hash_key)
                };
                // Said by `drain::on_change`, once as it starts and once as it ends.
                let panic = !bs.iter().any(|b| usable(b)) && bs.iter().any(|b| down_but_in_service(b));
                let backends = bs
                    .into_iter()
                    .map(|b| BackendEntry { backend: b.clone(), stats: registry.get(&p.name, &b.address) })
                    .collect();
                let tls = compiled.tls.get(&p.name, p.backend_tls.as_ref());
                let table =
                    PoolTable { pool: p.clone(), backends, hash_key, affinity_key, balancer, affinity, tls, panic };
                (p.name.clone(), Arc::new(table))
            })
            .collect();
        let auth = routes
            .iter()
            .filter_map(|r| Some((r.name.clone(), crate::edge_auth::compile(r, &compiled.keys)?)))
            .collect();
        Table {
            revision,
            settings: model.settings,
            routes,
            pools,
            affinity_secret: model.affinity_secret.clone(),
            auth,
        }
    }

    /// The edge authentication of route `name`, if it has one.
    pub fn route_auth(&self, name: &str) -> Option<&Arc<crate::edge_auth::EdgeAuth>> {
        self.auth.get(name)
    }

    /// The pool for a request, by Host and path prefix.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<PoolTable>> {
        self.route_named(host, path).map(|(_, p)| p)
    }

    /// [`Self::route`], with the name of the route that matched.
    pub fn route_named(&self, host: &str, path: &str) -> Option<(&str, &Arc<PoolTable>)> {
        let path = crate::handshake::path::without_params(path);
        self.routes
            .iter()
            .find(|r| host_matches(&r.host, host) && path.starts_with(&r.path_prefix))
            .and_then(|r| Some((r.name.as_str(), self.pools.get(&r.pool)?)))
    }
}

/// The raw value a key spec names in a request, if the request has one.
pub fn request_value(spec: &KeySpec, up: &Upgrade, client: IpAddr) -> Option<String> {
    match spec {
        KeySpec::ClientIp => Some(client.to_string()),
        KeySpec::Header(name) => up.header(name).map(|v| String::from_utf8_lossy(v).into_owned()),
        KeySpec::Cookie(name) => up.cookie(name),
        KeySpec::Query(name) => up.query_param(name),
        KeySpec::Claim(name) => claim(up, name),
    }
    .filter(|v| !v.is_empty())
}

/// A verified claim as a key: strings as they are, numbers and booleans as JSON prints them.
fn claim(up: &Upgrade, name: &str) -> Option<String> {
    match up.claims.as_ref()?.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

fn ip_hash(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(a) => hash64(&[&a.octets()]),
        IpAddr::V6(a) => hash64(&[&a.octets()]),
    }
}

/// The hash of the key a pool's `hash_key` names, taken from the request.
pub fn request_key(spec: &KeySpec, up: &Upgrade, client: IpAddr) -> Option<u64> {
    let value = match spec {
        KeySpec::ClientIp => return Some(ip_hash(client)),
        KeySpec::Header(name) => up.header(name).map(|v| v.to_vec()),
        KeySpec::Cookie(name) => up.cookie(name).map(String::into_bytes),
        KeySpec::Query(name) => up.query_param(name).map(String::into_bytes),
        KeySpec::Claim(name) => claim(up, name).map(String::into_bytes),
    }?;
    Some(hash64(&[&value]))
}

/// Active with a weight, and marked down by the health check alone.
fn down_but_in_service(b: &Backend) -> bool {
    switchyard_model::topology::in_service(b) && b.health == switchyard_proto::v1::Health::Unhealthy as i32
}

impl PoolTable {
    /// The key consistent hashing reads (the client IP unless the pool names one).
    pub fn hash_key(&self) -> Option<&KeySpec> {
        self.hash_key.as_ref()
    }

    /// Whether `b` takes connections: usable, or only marked down by its health check while
    /// the pool is in [`panic`](Self::panic).
    pub fn takes(&self, b: &Backend) -> bool {
        usable(b) || (self.panic && down_but_in_service(b))
    }

    /// Whether backend `i` may take a new connection now.
    pub fn fit(&self, i: usize, now_ms: u64, exclude: &[usize]) -> bool {
        self.takes(&self.backends[i].backend) && self.has_room(i, now_ms, exclude)
    }

    /// Whether draining backend `i` may still take a request of a session bound to it: within
    /// its drain window, healthy, and otherwise fit.
    fn draining_fit(&self, i: usize, now_ms: u64, exclude: &[usize]) -> bool {
        let e = &self.backends[i];
        e.backend.admin_state == AdminState::Draining as i32
            && e.backend.health != switchyard_proto::v1::Health::Unhealthy as i32
            && e.stats.drain_until_ms.load(std::sync::atomic::Ordering::Relaxed) > now_ms
            && self.has_room(i, now_ms, exclude)
    }

    /// Backend `i` is not excluded for this request, not ejected by this proxy, and under the
    /// pool's per-backend cap.
    fn has_room(&self, i: usize, now_ms: u64, exclude: &[usize]) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let max = self.pool.max_connections_per_backend as u64;
        let e = &self.backends[i];
        !exclude.contains(&i)
            && e.stats.ejected_until_ms.load(Relaxed) <= now_ms
            && (max == 0 || e.stats.active.load(Relaxed) < max)
    }

    /// The backend for a session key: its binding when the bound backend is fit (or, with
    /// `keep_draining`, draining within its window: see `BackendStats::drain_until_ms`), else
    /// the key's consistent-hash choice. Returns whether that makes a new binding.
    pub fn pick_session(
        &self,
        key: &str,
        bound: Option<&str>,
        now_ms: u64,
        exclude: &[usize],
        keep_draining: bool,
    ) -> Option<(usize, bool)> {
        if let Some(i) = bound.and_then(|b| self.backends.iter().position(|e| e.backend.address == b)) {
            if self.fit(i, now_ms, exclude) || (keep_draining && self.draining_fit(i, now_ms, exclude)) {
                return Some((i, false));
            }
        }
        let m = self.affinity.as_ref()?;
        // As in the balancer: none fit is known without a walk of every slot.
        if !(0..self.backends.len()).any(|i| self.fit(i, now_ms, exclude)) {
            return None;
        }
        let h = hash64(&[key.as_bytes()]);
        m.candidates(h).take(crate::balance::MAGLEV_SIZE).find(|&i| self.fit(i, now_ms, exclude)).map(|i| (i, true))
    }

    /// Picks a backend for a new connection, skipping `exclude` (backends that already failed
    /// to connect for this request).
    pub fn pick(&self, up: &Upgrade, client: IpAddr, now_ms: u64, exclude: &[usize]) -> Option<usize> {
        let fit = |i: usize| self.fit(i, now_ms, exclude);
        let load = |i: usize| self.backends[i].stats.load();
        let ip = ip_hash(client);
        let key = self.hash_key.as_ref().and_then(|k| request_key(k, up, client));
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
            ..Default::default()
        }
    }

    #[test]
    fn a_host_rule_loses_a_port_but_an_address_keeps_its_last_group() {
        assert!(host_matches("::1", "::1") && host_matches("2001:db8::80", "2001:db8::80"));
        assert!(!host_matches("2001:db8::80", "2001:db8::"));
        assert!(host_matches("a.example:9443", "a.example") && host_matches("10.0.0.1", "10.0.0.1"));
        assert_eq!(without_port("a.example:9443"), "a.example");
    }

    #[test]
    fn most_specific_route_wins() {
        let t = switchyard_proto::v1::Topology {
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
        let table = Table::build(&Model::from_topology(t), 1, &Registry::default());
        let pool = |h: &str, p: &str| table.route(h, p).map(|p| p.pool.name.clone());
        assert_eq!(pool("api.example.com", "/ws/1").as_deref(), Some("exact-ws"));
        assert_eq!(pool("api.example.com", "/x").as_deref(), Some("exact"));
        assert_eq!(pool("a.example.com", "/chat").as_deref(), Some("wild"));
        assert_eq!(pool("example.com", "/chat").as_deref(), Some("chat"));
        assert_eq!(pool("other", "/").as_deref(), Some("any"));
        // A segment's parameters do not take a path off its route (Tomcat serves
        // `/chat;x/1` as `/chat/1`).
        assert_eq!(pool("example.com", "/chat;jsessionid=1/x").as_deref(), Some("chat"));
        assert_eq!(pool("api.example.com", "/ws;x").as_deref(), Some("exact-ws"));
    }

    #[test]
    fn key_specs_are_parsed_once_and_weight_zero_takes_no_session() {
        use switchyard_model::topology::put;
        use switchyard_proto::v1::change::Kind;
        let mut m = Model::default();
        let pool = Pool {
            name: "p".into(),
            affinity: "cookie:sid".into(),
            hash_key: "header:X-User".into(),
            ..Default::default()
        };
        m.apply(&put(Kind::PoolPut(pool)));
        for (address, weight) in [("a:1", 0), ("b:1", 1)] {
            let b = Backend { pool: "p".into(), address: address.into(), weight, admin_state: 1, ..Default::default() };
            m.apply(&put(Kind::BackendPut(b)));
        }
        let table = Table::build(&m, 1, &Registry::default());
        let p = &table.pools["p"];
        assert_eq!(p.affinity_key, Some(KeySpec::Cookie("sid".into())));
        assert_eq!(p.hash_key, Some(KeySpec::Header("X-User".into())));
        // A session bound to the weight-0 backend goes elsewhere, as the control plane agrees.
        for i in 0..20 {
            let (idx, new) = p.pick_session(&format!("k{i}"), Some("a:1"), 0, &[], true).unwrap();
            assert_eq!((p.backends[idx].backend.address.as_str(), new), ("b:1", true));
        }
    }

    /// A config change that leaves a pool's algorithm, backends and weights alone (a health
    /// flip, say) keeps its balancer: round robin goes on where it was, and no Maglev table is
    /// built again. A weight change builds a new one.
    #[test]
    fn a_pools_balancer_outlives_changes_that_do_not_touch_its_shape() {
        use switchyard_model::topology::put;
        use switchyard_proto::v1::change::Kind;
        let mut m = Model::default();
        let algorithm = Algorithm::ConsistentHash as i32;
        let pool = Pool { name: "p".into(), affinity: "cookie:sid".into(), algorithm, ..Default::default() };
        m.apply(&put(Kind::PoolPut(pool)));
        let backend = |address: &str, weight: u32, health: i32| Backend {
            pool: "p".into(),
            address: address.into(),
            weight,
            admin_state: 1,
            health,
            ..Default::default()
        };
        for a in ["a:1", "b:1"] {
            m.apply(&put(Kind::BackendPut(backend(a, 1, 0))));
        }
        let compiled = Compiled::default();
        let t1 = Table::build_with(&m, 1, &Registry::default(), &compiled);
        m.apply(&put(Kind::BackendPut(backend("a:1", 1, 2))));
        let t2 = Table::build_with(&m, 2, &Registry::default(), &compiled);
        let (p1, p2) = (&t1.pools["p"], &t2.pools["p"]);
        assert!(Arc::ptr_eq(&p1.balancer, &p2.balancer), "a health flip keeps the balancer");
        assert!(Arc::ptr_eq(p1.affinity.as_ref().unwrap(), p2.affinity.as_ref().unwrap()));
        assert!(Arc::ptr_eq(p1.balancer.maglev().unwrap(), p1.affinity.as_ref().unwrap()), "one Maglev table for both");
        m.apply(&put(Kind::BackendPut(backend("a:1", 5, 2))));
        let t3 = Table::build_with(&m, 3, &Registry::default(), &compiled);
        assert!(!Arc::ptr_eq(&p2.balancer, &t3.pools["p"].balancer), "a weight change builds anew");
    }

    #[test]
    fn a_pool_whose_every_backend_is_marked_down_takes_them_all_anyway() {
        use switchyard_model::topology::put;
        use switchyard_proto::v1::change::Kind;
        use switchyard_proto::v1::Health;
        let build = |backends: &[(&str, Health, AdminState)]| {
            let mut m = Model::default();
            m.apply(&put(Kind::PoolPut(Pool { name: "p".into(), ..Default::default() })));
            for (address, health, state) in backends {
                let b = Backend {
                    pool: "p".into(),
                    address: address.to_string(),
                    weight: 1,
                    admin_state: *state as i32,
                    health: *health as i32,
                    ..Default::default()
                };
                m.apply(&put(Kind::BackendPut(b)));
            }
            Table::build(&m, 1, &Registry::default())
        };
        let (up, down, active, drain) = (Health::Healthy, Health::Unhealthy, AdminState::Active, AdminState::Draining);
        let t = build(&[("a:1", down, active), ("b:1", down, active), ("c:1", up, drain)]);
        let p = &t.pools["p"];
        assert!(p.panic);
        assert!(p.fit(0, 0, &[]) && p.fit(1, 0, &[]), "every active backend takes connections");
        assert!(!p.fit(2, 0, &[]), "a draining one still does not");
        // One healthy backend left: the check is believed.
        let t = build(&[("a:1", down, active), ("b:1", up, active)]);
        let p = &t.pools["p"];
        assert!(!p.panic && !p.fit(0, 0, &[]) && p.fit(1, 0, &[]));
        // Nothing marked down, only disabled or draining: no panic (an operator's choice).
        let t = build(&[("a:1", up, AdminState::Disabled), ("b:1", up, drain)]);
        assert!(!t.pools["p"].panic);
    }

    #[test]
    fn a_draining_backend_keeps_its_bound_plain_sessions_until_its_window_ends() {
        use std::sync::atomic::Ordering::Relaxed;
        use switchyard_model::topology::put;
        use switchyard_proto::v1::change::Kind;
        let mut m = Model::default();
        m.apply(&put(Kind::PoolPut(Pool { name: "p".into(), affinity: "cookie:sid".into(), ..Default::default() })));
        for (address, state) in [("a:1", AdminState::Draining), ("b:1", AdminState::Active)] {
            let b = Backend {
                pool: "p".into(),
                address: address.into(),
                weight: 1,
                admin_state: state as i32,
                ..Default::default()
            };
            m.apply(&put(Kind::BackendPut(b)));
        }
        let table = Table::build(&m, 1, &Registry::default());
        let p = &table.pools["p"];
        let at = |idx: usize| p.backends[idx].backend.address.as_str();
        p.backends[0].stats.drain_until_ms.store(1_000, Relaxed);
        // Within the window: a plain request of a session bound there stays; a WebSocket
        // connection (closed by the drain, reconnecting) goes elsewhere, as does a new session.
        let (i, new) = p.pick_session("k", Some("a:1"), 999, &[], true).unwrap();
        assert_eq!((at(i), new), ("a:1", false));
        assert_eq!(at(p.pick_session("k", Some("a:1"), 999, &[], false).unwrap().0), "b:1");
        assert_eq!(at(p.pick_session("k", None, 999, &[], true).unwrap().0), "b:1");
        // The window over: moved.
        assert_eq!(at(p.pick_session("k", Some("a:1"), 1_000, &[], true).unwrap().0), "b:1");
    }
}
