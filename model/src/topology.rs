//! The typed topology: pools, backends, routes, settings and session bindings in ordered
//! maps, changed only through [`Model::apply`], so every copy of it moves the same way.

use prost::Message;

use crate::affinity::AffinitySecret;
use switchyard_proto::v1::{
    change, AdminState, Backend, Change, Health, Pool, Route, SessionBinding, Settings, Topology,
};

use compact_str::CompactString;

/// A (pool, name) pair: sessions by key.
pub type PairKey = (String, String);

/// A (pool, address) pair: backends by address. Both are short, so they are stored inline
/// (up to 24 bytes each): every write looks its backend up, and with `String`s each
/// comparison of that search chased two pointers to cold memory, a tenth of a member's CPU
/// under saturating writes to a pool of 100,000 backends.
pub type BackendKey = (CompactString, CompactString);

/// The key of backend `b`.
pub fn backend_key(b: &Backend) -> BackendKey {
    (b.pool.as_str().into(), b.address.as_str().into())
}

/// A [`PairKey`] or [`BackendKey`] made of borrowed strings, to look one up without
/// building an owned key.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a>(pub &'a str, pub &'a str);

impl<A: AsRef<str>, B: AsRef<str>> equivalent::Equivalent<(A, B)> for Pair<'_> {
    fn equivalent(&self, key: &(A, B)) -> bool {
        self.0 == key.0.as_ref() && self.1 == key.1.as_ref()
    }
}

impl<A: AsRef<str>, B: AsRef<str>> equivalent::Comparable<(A, B)> for Pair<'_> {
    fn compare(&self, key: &(A, B)) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(key.0.as_ref(), key.1.as_ref()))
    }
}

/// An ordered map whose clone shares its nodes: the control plane snapshots the whole model
/// with a clone made under its state lock, then encodes it with the lock released, so
/// applying entries never waits on a snapshot being written (with std's `BTreeMap`, hundreds
/// of thousands of backends took over a second to encode, under the lock).
pub type Map<K, V> = imbl::OrdMap<K, V>;

/// The replicated model. Maps are ordered so iteration (snapshots, listings, cache files) is
/// deterministic.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub pools: Map<String, Pool>,
    pub backends: Map<BackendKey, Backend>,
    pub routes: Map<String, Route>,
    pub settings: Settings,
    pub sessions: Map<PairKey, SessionBinding>,
    /// The key session keys are hashed with (see [`crate::affinity`]).
    pub affinity_secret: AffinitySecret,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            pools: Map::new(),
            backends: Map::new(),
            routes: Map::new(),
            settings: crate::limits::default_settings(),
            sessions: Map::new(),
            affinity_secret: AffinitySecret::default(),
        }
    }
}

/// Whether an operator has this backend taking new connections (active, with a weight),
/// whatever its health says: a pool whose every such backend is down still uses them.
pub fn in_service(b: &Backend) -> bool {
    b.admin_state == AdminState::Active as i32 && b.weight > 0
}

/// Whether new sessions may go to a backend, apart from its load: active, not known to be
/// unhealthy, and with a weight. The state machine and every proxy use this one rule, so a
/// binding the proxies route around is also one the control plane lets a new report replace.
pub fn usable(b: &Backend) -> bool {
    in_service(b) && b.health != Health::Unhealthy as i32
}

/// Wraps a change kind.
pub fn put(kind: change::Kind) -> Change {
    Change { kind: Some(kind) }
}

/// Which stored entity a change touches, for stores keyed by entity (sled, caches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity<'a> {
    Pool(&'a str),
    Backend { pool: &'a str, address: &'a str },
    Route(&'a str),
    Settings,
    Session { pool: &'a str, key: &'a str },
    AffinitySecret,
}

impl Entity<'_> {
    /// The entity a change writes, and its new protobuf encoding (`None`: it was removed).
    pub fn of(c: &Change) -> Option<(Entity<'_>, Option<Vec<u8>>)> {
        use change::Kind as K;
        Some(match c.kind.as_ref()? {
            K::PoolPut(p) => (Entity::Pool(&p.name), Some(p.encode_to_vec())),
            K::PoolDeleted(n) => (Entity::Pool(n), None),
            K::BackendPut(b) => (Entity::Backend { pool: &b.pool, address: &b.address }, Some(b.encode_to_vec())),
            K::BackendRemoved(b) => (Entity::Backend { pool: &b.pool, address: &b.address }, None),
            K::RoutePut(r) => (Entity::Route(&r.name), Some(r.encode_to_vec())),
            K::RouteDeleted(n) => (Entity::Route(n), None),
            K::SettingsPut(s) => (Entity::Settings, Some(s.encode_to_vec())),
            K::SessionPut(s) => (Entity::Session { pool: &s.pool, key: &s.key }, Some(s.encode_to_vec())),
            K::SessionRemoved(s) => (Entity::Session { pool: &s.pool, key: &s.key }, None),
            K::AffinitySecret(k) => (Entity::AffinitySecret, Some(k.clone())),
        })
    }
}

impl Model {
    /// Applies one change. Changes are facts already decided (by the state machine, in log
    /// order), so applying never fails; a removal of something absent is a no-op.
    pub fn apply(&mut self, c: &Change) {
        use change::Kind as K;
        let Some(kind) = &c.kind else { return };
        match kind {
            K::PoolPut(p) => {
                self.pools.insert(p.name.clone(), p.clone());
            }
            K::PoolDeleted(n) => {
                self.pools.remove(n);
            }
            K::BackendPut(b) => {
                self.backends.insert(backend_key(b), b.clone());
            }
            K::BackendRemoved(b) => {
                self.backends.remove(&Pair(&b.pool, &b.address));
            }
            K::RoutePut(r) => {
                self.routes.insert(r.name.clone(), r.clone());
            }
            K::RouteDeleted(n) => {
                self.routes.remove(n);
            }
            K::SettingsPut(s) => self.settings = *s,
            K::SessionPut(s) => {
                self.sessions.insert((s.pool.clone(), s.key.clone()), s.clone());
            }
            K::SessionRemoved(s) => {
                self.sessions.remove(&Pair(&s.pool, &s.key));
            }
            K::AffinitySecret(k) => self.affinity_secret = AffinitySecret::from_bytes(k),
        }
    }

    /// The model a topology message describes (its revision is the caller's to keep).
    pub fn from_topology(t: Topology) -> Model {
        Model {
            pools: t.pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            backends: t.backends.into_iter().map(|b| (backend_key(&b), b)).collect(),
            routes: t.routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
            settings: t.settings.unwrap_or_else(crate::limits::default_settings),
            sessions: t.sessions.into_iter().map(|s| ((s.pool.clone(), s.key.clone()), s)).collect(),
            affinity_secret: AffinitySecret::from_bytes(&t.affinity_secret),
        }
    }

    /// The whole model as the API's message, secret included: for proxies and storage. What
    /// the Query API shows goes through [`Model::to_public_topology`].
    pub fn to_topology(&self, revision: u64) -> Topology {
        Topology {
            revision,
            pools: self.pools.values().cloned().collect(),
            backends: self.backends.values().cloned().collect(),
            routes: self.routes.values().cloned().collect(),
            settings: Some(self.settings),
            sessions: self.sessions.values().cloned().collect(),
            affinity_secret: self.affinity_secret.expose().to_vec(),
        }
    }

    /// `to_topology(revision).encode_to_vec()`, byte for byte, without copying the model into
    /// a message first: a snapshot of a large model spent about as long cloning every backend
    /// as encoding it.
    pub fn encode_topology(&self, revision: u64) -> Vec<u8> {
        use prost::encoding::{bytes, message, uint64};
        let mut buf = Vec::new();
        // Fields in tag order, proto3 defaults left out, as prost's derived encoding writes them.
        if revision != 0 {
            uint64::encode(1, &revision, &mut buf);
        }
        self.pools.values().for_each(|p| message::encode(2, p, &mut buf));
        self.backends.values().for_each(|b| message::encode(3, b, &mut buf));
        self.routes.values().for_each(|r| message::encode(4, r, &mut buf));
        message::encode(5, &self.settings, &mut buf);
        self.sessions.values().for_each(|s| message::encode(6, s, &mut buf));
        let secret = self.affinity_secret.expose();
        if !secret.is_empty() {
            bytes::encode(7, &secret.to_vec(), &mut buf);
        }
        buf
    }

    /// The whole model without its secret.
    pub fn to_public_topology(&self, revision: u64) -> Topology {
        Topology { affinity_secret: Vec::new(), ..self.to_topology(revision) }
    }

    /// The whole model as a list of puts, in a stable order: applied to an empty store, they
    /// rebuild it.
    pub fn as_changes(&self) -> Vec<Change> {
        let mut out = vec![put(change::Kind::SettingsPut(self.settings))];
        out.extend(self.pools.values().map(|p| put(change::Kind::PoolPut(p.clone()))));
        out.extend(self.backends.values().map(|b| put(change::Kind::BackendPut(b.clone()))));
        out.extend(self.routes.values().map(|r| put(change::Kind::RoutePut(r.clone()))));
        out.extend(self.sessions.values().map(|s| put(change::Kind::SessionPut(s.clone()))));
        if self.affinity_secret.is_set() {
            out.push(put(change::Kind::AffinitySecret(self.affinity_secret.expose().to_vec())));
        }
        out
    }

    pub fn backend(&self, pool: &str, address: &str) -> Option<&Backend> {
        self.backends.get(&Pair(pool, address))
    }

    /// A pool's backends, in address order.
    pub fn backends_of<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a Backend> + 'a {
        self.backends.range(Pair(pool, "")..).take_while(move |((p, _), _)| p == pool).map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::v1::{BackendRef, SessionRef};

    fn backend(pool: &str, address: &str) -> Backend {
        Backend { pool: pool.into(), address: address.into(), weight: 1, admin_state: 1, ..Default::default() }
    }

    #[test]
    fn apply_puts_and_removes_each_entity() {
        let mut m = Model::default();
        m.apply(&put(change::Kind::PoolPut(Pool { name: "p".into(), ..Default::default() })));
        m.apply(&put(change::Kind::BackendPut(backend("p", "a:1"))));
        m.apply(&put(change::Kind::BackendPut(backend("p", "b:1"))));
        m.apply(&put(change::Kind::BackendPut(backend("q", "a:1"))));
        m.apply(&put(change::Kind::RoutePut(Route { name: "r".into(), pool: "p".into(), ..Default::default() })));
        let s = SessionBinding { pool: "p".into(), key: "k".into(), backend: "a:1".into(), ..Default::default() };
        m.apply(&put(change::Kind::SessionPut(s)));
        let settings = Settings { idle_timeout_ms: 5000, ..m.settings };
        m.apply(&put(change::Kind::SettingsPut(settings)));
        m.apply(&put(change::Kind::AffinitySecret(vec![7; 32])));
        assert!(m.affinity_secret.is_set());
        assert!(m.to_public_topology(7).affinity_secret.is_empty());
        assert_eq!(m.backends_of("p").map(|b| b.address.as_str()).collect::<Vec<_>>(), ["a:1", "b:1"]);
        assert_eq!(m.settings.idle_timeout_ms, 5000);
        assert_eq!(m.sessions.len(), 1);

        // A topology round trip and a replay of `as_changes` both give the same model.
        assert_eq!(Model::from_topology(m.to_topology(7)), m);
        assert_eq!(m.encode_topology(7), m.to_topology(7).encode_to_vec());
        assert_eq!(Model::default().encode_topology(0), Model::default().to_topology(0).encode_to_vec());
        let mut replay = Model::default();
        for c in m.as_changes() {
            replay.apply(&c);
        }
        assert_eq!(replay, m);

        m.apply(&put(change::Kind::SessionRemoved(SessionRef { pool: "p".into(), key: "k".into() })));
        m.apply(&put(change::Kind::BackendRemoved(BackendRef { pool: "p".into(), address: "a:1".into() })));
        m.apply(&put(change::Kind::RouteDeleted("r".into())));
        m.apply(&put(change::Kind::PoolDeleted("p".into())));
        // Removing what is not there changes nothing.
        m.apply(&put(change::Kind::PoolDeleted("nope".into())));
        m.apply(&Change { kind: None });
        assert!(m.pools.is_empty() && m.routes.is_empty() && m.sessions.is_empty());
        assert_eq!(m.backends.len(), 2);
    }

    #[test]
    fn borrowed_pairs_find_what_owned_keys_find() {
        let mut m = Model::default();
        // Pools that share a prefix, and an empty pool name, around the pool looked up.
        for (pool, address) in [("", "z:1"), ("p", "b:1"), ("p", "a:1"), ("p", ""), ("p2", "a:1"), ("q", "a:1")] {
            m.apply(&put(change::Kind::BackendPut(backend(pool, address))));
        }
        for ((pool, address), b) in &m.backends {
            assert_eq!(m.backend(pool, address), Some(b));
            assert!(m.backends.contains_key(&Pair(pool, address)));
        }
        assert_eq!(m.backend("p", "c:1"), None);
        assert_eq!(m.backend("p2", "b:1"), None);
        assert_eq!(m.backends_of("p").map(|b| b.address.as_str()).collect::<Vec<_>>(), ["", "a:1", "b:1"]);
        assert_eq!(m.backends_of("").count(), 1);
        assert_eq!(m.backends_of("o").count(), 0);
        m.apply(&put(change::Kind::BackendRemoved(BackendRef { pool: "p".into(), address: "a:1".into() })));
        assert_eq!(m.backends_of("p").map(|b| b.address.as_str()).collect::<Vec<_>>(), ["", "b:1"]);
    }

    #[test]
    fn entity_of_each_change() {
        let b = backend("p", "a:1");
        let c = put(change::Kind::BackendPut(b.clone()));
        let (e, v) = Entity::of(&c).unwrap();
        assert_eq!(e, Entity::Backend { pool: "p", address: "a:1" });
        assert_eq!(v, Some(b.encode_to_vec()));
        let gone = put(change::Kind::BackendRemoved(BackendRef { pool: "p".into(), address: "a:1".into() }));
        assert_eq!(Entity::of(&gone), Some((Entity::Backend { pool: "p", address: "a:1" }, None)));
        assert_eq!(Entity::of(&Change { kind: None }), None);
    }

    #[test]
    fn usable_needs_active_not_unhealthy_and_a_weight() {
        let b = backend("p", "a:1");
        assert!(usable(&b));
        assert!(!usable(&Backend { weight: 0, ..b.clone() }));
        assert!(!usable(&Backend { admin_state: AdminState::Draining as i32, ..b.clone() }));
        assert!(!usable(&Backend { admin_state: AdminState::Disabled as i32, ..b.clone() }));
        assert!(!usable(&Backend { health: Health::Unhealthy as i32, ..b.clone() }));
        assert!(usable(&Backend { health: Health::Healthy as i32, ..b }));
    }
}
