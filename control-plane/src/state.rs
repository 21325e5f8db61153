//! The replicated state machine: a pure `apply` over ordered maps. Raft decides the order;
//! everything here is deterministic (time comes inside commands, stamped by the leader).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_proto::v1::{
    change, AdminState, Backend, BackendRef, Change, Health, Pool, Route, SessionBinding, SessionRef, Settings,
    Topology,
};

use crate::error::ApiError;
use crate::pb::Pb;
use crate::validate;

/// A write to the model, as it travels through the Raft log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    CreatePool(Pb<Pool>),
    UpdatePool {
        pool: Pb<Pool>,
        mask: Vec<String>,
    },
    DeletePool {
        name: String,
    },
    AddBackend(Pb<Backend>),
    SetBackendWeight {
        pool: String,
        address: String,
        weight: u32,
    },
    SetBackendState {
        pool: String,
        address: String,
        state: i32,
    },
    SetBackendHealth {
        pool: String,
        address: String,
        health: i32,
    },
    RemoveBackend {
        pool: String,
        address: String,
    },
    SetRoute(Pb<Route>),
    DeleteRoute {
        name: String,
    },
    UpdateSettings {
        settings: Pb<Settings>,
        mask: Vec<String>,
    },
    /// New or refreshed bindings reported by proxies; the first writer of a key wins.
    BindSessions {
        now_ms: u64,
        bindings: Vec<Pb<SessionBinding>>,
    },
    /// Drops bindings whose TTL has passed at `now_ms`.
    ExpireSessions {
        now_ms: u64,
    },
    DeleteSession {
        pool: String,
        key: String,
    },
}

/// One Raft entry's payload: the commands a leader gathered while its previous entry was
/// being written (group commit). They apply in order and share the entry's revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

/// What applying one command did: the changes it made, or why it made none.
pub type Outcome = Result<Vec<Change>, ApiError>;

/// An [`Outcome`] in a form serde can carry (Raft responses, forwarded replies).
pub type WireOutcome = Result<Vec<Pb<Change>>, ApiError>;

pub fn to_wire(o: Outcome) -> WireOutcome {
    o.map(|v| v.into_iter().map(Pb).collect())
}

pub fn from_wire(o: WireOutcome) -> Outcome {
    o.map(|v| v.into_iter().map(|Pb(c)| c).collect())
}

type Key2 = (String, String);

/// The model. Maps are ordered so iteration (and so snapshots and listings) is deterministic.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub pools: BTreeMap<String, Pool>,
    pub backends: BTreeMap<Key2, Backend>,
    pub routes: BTreeMap<String, Route>,
    pub settings: Settings,
    pub sessions: BTreeMap<Key2, SessionBinding>,
}

impl Default for State {
    fn default() -> Self {
        State {
            pools: BTreeMap::new(),
            backends: BTreeMap::new(),
            routes: BTreeMap::new(),
            settings: validate::default_settings(),
            sessions: BTreeMap::new(),
        }
    }
}

fn put(kind: change::Kind) -> Change {
    Change { kind: Some(kind) }
}

impl State {
    /// Applies `cmd` at `rev`. On error the state is unchanged.
    pub fn apply(&mut self, rev: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::CreatePool(Pb(p)) => {
                if self.pools.contains_key(&p.name) {
                    return Err(ApiError::AlreadyExists(format!("pool {:?} already exists", p.name)));
                }
                let mut p = p.clone();
                p.created_revision = rev;
                p.updated_revision = rev;
                self.pools.insert(p.name.clone(), p.clone());
                Ok(vec![put(change::Kind::PoolPut(p))])
            }
            Command::UpdatePool { pool: Pb(new), mask } => {
                let cur = self.pools.get(&new.name).ok_or_else(|| no_pool(&new.name))?;
                let mut p = cur.clone();
                for field in mask {
                    match field.as_str() {
                        "algorithm" => p.algorithm = new.algorithm,
                        "hash_key" => p.hash_key = new.hash_key.clone(),
                        "affinity" => p.affinity = new.affinity.clone(),
                        "affinity_ttl_ms" => p.affinity_ttl_ms = new.affinity_ttl_ms,
                        "health_check" => p.health_check = new.health_check.clone(),
                        "max_connections_per_backend" => {
                            p.max_connections_per_backend = new.max_connections_per_backend
                        }
                        "drain_timeout_ms" => p.drain_timeout_ms = new.drain_timeout_ms,
                        other => {
                            return Err(ApiError::InvalidArgument(format!("pool has no updatable field {other:?}")))
                        }
                    }
                }
                let mut p = validate::pool(p)?;
                p.created_revision = cur.created_revision;
                p.updated_revision = rev;
                self.pools.insert(p.name.clone(), p.clone());
                Ok(vec![put(change::Kind::PoolPut(p))])
            }
            Command::DeletePool { name } => {
                if !self.pools.contains_key(name) {
                    return Err(no_pool(name));
                }
                if let Some(r) = self.routes.values().find(|r| &r.pool == name) {
                    return Err(ApiError::FailedPrecondition(format!(
                        "pool {name:?} is used by route {:?}; delete or repoint the route first",
                        r.name
                    )));
                }
                let n = self.backends_of(name).count();
                if n > 0 {
                    return Err(ApiError::FailedPrecondition(format!(
                        "pool {name:?} still has {n} backend(s); remove them first"
                    )));
                }
                self.pools.remove(name);
                let keys: Vec<Key2> = self.sessions.keys().filter(|(p, _)| p == name).cloned().collect();
                let mut out = vec![put(change::Kind::PoolDeleted(name.clone()))];
                for (pool, key) in keys {
                    self.sessions.remove(&(pool.clone(), key.clone()));
                    out.push(put(change::Kind::SessionRemoved(SessionRef { pool, key })));
                }
                Ok(out)
            }
            Command::AddBackend(Pb(b)) => {
                if !self.pools.contains_key(&b.pool) {
                    return Err(no_pool(&b.pool));
                }
                let k = (b.pool.clone(), b.address.clone());
                if self.backends.contains_key(&k) {
                    return Err(ApiError::AlreadyExists(format!(
                        "backend {} already exists in pool {:?}",
                        b.address, b.pool
                    )));
                }
                let mut b = b.clone();
                b.updated_revision = rev;
                self.backends.insert(k, b.clone());
                Ok(vec![put(change::Kind::BackendPut(b))])
            }
            Command::SetBackendWeight { pool, address, weight } => self.update_backend(rev, pool, address, |b| {
                b.weight = *weight;
                Ok(())
            }),
            Command::SetBackendState { pool, address, state } => self.update_backend(rev, pool, address, |b| {
                b.admin_state = *state;
                Ok(())
            }),
            Command::SetBackendHealth { pool, address, health } => self.update_backend(rev, pool, address, |b| {
                Health::try_from(*health).map_err(|_| ApiError::InvalidArgument("bad health".into()))?;
                b.health = *health;
                Ok(())
            }),
            Command::RemoveBackend { pool, address } => {
                let k = (pool.clone(), address.clone());
                if self.backends.remove(&k).is_none() {
                    return Err(no_backend(pool, address));
                }
                let mut out = vec![put(change::Kind::BackendRemoved(BackendRef {
                    pool: pool.clone(),
                    address: address.clone(),
                }))];
                out.extend(self.unbind_backend(pool, address));
                Ok(out)
            }
            Command::SetRoute(Pb(r)) => {
                if !self.pools.contains_key(&r.pool) {
                    return Err(no_pool(&r.pool));
                }
                if let Some(other) = self
                    .routes
                    .values()
                    .find(|o| o.name != r.name && o.host == r.host && o.path_prefix == r.path_prefix)
                {
                    return Err(ApiError::AlreadyExists(format!(
                        "route {:?} already matches host {:?} and path prefix {:?}",
                        other.name, r.host, r.path_prefix
                    )));
                }
                let mut r = r.clone();
                r.updated_revision = rev;
                self.routes.insert(r.name.clone(), r.clone());
                Ok(vec![put(change::Kind::RoutePut(r))])
            }
            Command::DeleteRoute { name } => {
                if self.routes.remove(name).is_none() {
                    return Err(ApiError::NotFound(format!("route {name:?} not found")));
                }
                Ok(vec![put(change::Kind::RouteDeleted(name.clone()))])
            }
            Command::UpdateSettings { settings: Pb(new), mask } => {
                let mut s = self.settings;
                if mask.is_empty() {
                    s = *new;
                }
                for field in mask {
                    match field.as_str() {
                        "handshake_timeout_ms" => s.handshake_timeout_ms = new.handshake_timeout_ms,
                        "max_header_bytes" => s.max_header_bytes = new.max_header_bytes,
                        "max_message_bytes" => s.max_message_bytes = new.max_message_bytes,
                        "idle_timeout_ms" => s.idle_timeout_ms = new.idle_timeout_ms,
                        "ping_interval_ms" => s.ping_interval_ms = new.ping_interval_ms,
                        "max_connections_per_ip_per_sec" => {
                            s.max_connections_per_ip_per_sec = new.max_connections_per_ip_per_sec
                        }
                        "max_handshakes_per_sec" => s.max_handshakes_per_sec = new.max_handshakes_per_sec,
                        other => return Err(ApiError::InvalidArgument(format!("settings have no field {other:?}"))),
                    }
                }
                validate::settings(&s)?;
                self.settings = s;
                Ok(vec![put(change::Kind::SettingsPut(s))])
            }
            Command::BindSessions { now_ms, bindings } => {
                let mut out = Vec::new();
                for Pb(b) in bindings {
                    let k = (b.pool.clone(), b.key.clone());
                    let usable = self.backends.get(&(b.pool.clone(), b.backend.clone())).is_some_and(usable_backend);
                    match self.sessions.get_mut(&k) {
                        // Same backend: refresh. A different backend replaces the binding only
                        // when the bound one is no longer usable; otherwise the first writer wins.
                        Some(cur) if cur.backend == b.backend => {
                            cur.last_seen_ms = cur.last_seen_ms.max(*now_ms);
                            out.push(put(change::Kind::SessionPut(cur.clone())));
                        }
                        Some(cur) => {
                            let cur_usable =
                                self.backends.get(&(cur.pool.clone(), cur.backend.clone())).is_some_and(usable_backend);
                            if !cur_usable && usable {
                                cur.backend = b.backend.clone();
                                cur.last_seen_ms = *now_ms;
                                cur.created_revision = rev;
                                out.push(put(change::Kind::SessionPut(cur.clone())));
                            }
                        }
                        None if usable && self.pools.contains_key(&b.pool) => {
                            let ttl = if b.ttl_ms > 0 { b.ttl_ms } else { self.pools[&b.pool].affinity_ttl_ms.max(1) };
                            let nb = SessionBinding {
                                pool: b.pool.clone(),
                                key: b.key.clone(),
                                backend: b.backend.clone(),
                                last_seen_ms: *now_ms,
                                ttl_ms: ttl,
                                created_revision: rev,
                            };
                            self.sessions.insert(k, nb.clone());
                            out.push(put(change::Kind::SessionPut(nb)));
                        }
                        None => {}
                    }
                }
                Ok(out)
            }
            Command::ExpireSessions { now_ms } => {
                let dead: Vec<Key2> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.last_seen_ms.saturating_add(s.ttl_ms) <= *now_ms)
                    .map(|(k, _)| k.clone())
                    .collect();
                Ok(dead
                    .into_iter()
                    .map(|(pool, key)| {
                        self.sessions.remove(&(pool.clone(), key.clone()));
                        put(change::Kind::SessionRemoved(SessionRef { pool, key }))
                    })
                    .collect())
            }
            Command::DeleteSession { pool, key } => {
                if self.sessions.remove(&(pool.clone(), key.clone())).is_none() {
                    return Err(ApiError::NotFound(format!("no session {key:?} in pool {pool:?}")));
                }
                Ok(vec![put(change::Kind::SessionRemoved(SessionRef { pool: pool.clone(), key: key.clone() }))])
            }
        }
    }

    fn update_backend(
        &mut self,
        rev: u64,
        pool: &str,
        address: &str,
        f: impl FnOnce(&mut Backend) -> Result<(), ApiError>,
    ) -> Outcome {
        let b =
            self.backends.get_mut(&(pool.to_string(), address.to_string())).ok_or_else(|| no_backend(pool, address))?;
        let mut nb = b.clone();
        f(&mut nb)?;
        if nb == *b {
            // A write that changes nothing emits nothing, so proxies see no churn.
            return Ok(vec![]);
        }
        nb.updated_revision = rev;
        *b = nb.clone();
        Ok(vec![put(change::Kind::BackendPut(nb))])
    }

    fn unbind_backend(&mut self, pool: &str, address: &str) -> Vec<Change> {
        let keys: Vec<Key2> = self
            .sessions
            .iter()
            .filter(|((p, _), s)| p == pool && s.backend == address)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .map(|(pool, key)| {
                self.sessions.remove(&(pool.clone(), key.clone()));
                put(change::Kind::SessionRemoved(SessionRef { pool, key }))
            })
            .collect()
    }

    pub fn backends_of<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a Backend> + 'a {
        self.backends
            .range((pool.to_string(), String::new())..)
            .take_while(move |((p, _), _)| p == pool)
            .map(|(_, b)| b)
    }

    /// The whole state as a list of puts, in a stable order.
    pub fn as_changes(&self) -> Vec<Change> {
        let mut out = vec![put(change::Kind::SettingsPut(self.settings))];
        out.extend(self.pools.values().map(|p| put(change::Kind::PoolPut(p.clone()))));
        out.extend(self.backends.values().map(|b| put(change::Kind::BackendPut(b.clone()))));
        out.extend(self.routes.values().map(|r| put(change::Kind::RoutePut(r.clone()))));
        out.extend(self.sessions.values().map(|s| put(change::Kind::SessionPut(s.clone()))));
        out
    }

    /// The whole state as the API's message.
    pub fn to_topology(&self, revision: u64) -> Topology {
        Topology {
            revision,
            pools: self.pools.values().cloned().collect(),
            backends: self.backends.values().cloned().collect(),
            routes: self.routes.values().cloned().collect(),
            settings: Some(self.settings),
            sessions: self.sessions.values().cloned().collect(),
        }
    }

    pub fn from_topology(t: Topology) -> State {
        State {
            pools: t.pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            backends: t.backends.into_iter().map(|b| ((b.pool.clone(), b.address.clone()), b)).collect(),
            routes: t.routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
            settings: t.settings.unwrap_or_else(validate::default_settings),
            sessions: t.sessions.into_iter().map(|s| ((s.pool.clone(), s.key.clone()), s)).collect(),
        }
    }
}

/// Whether new sessions may go to this backend.
pub fn usable_backend(b: &Backend) -> bool {
    b.admin_state == AdminState::Active as i32 && b.health != Health::Unhealthy as i32
}

fn no_pool(name: &str) -> ApiError {
    ApiError::NotFound(format!("pool {name:?} not found"))
}

fn no_backend(pool: &str, address: &str) -> ApiError {
    ApiError::NotFound(format!("backend {address} not found in pool {pool:?}"))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
