//! The replicated state machine: a pure `apply` over ordered maps. Raft decides the order;
//! everything here is deterministic (time comes inside commands, stamped by the leader).

use switchyard_model::topology::{backend_key, put, Pair};
use switchyard_model::{fields, usable, AffinitySecret, Model};
use switchyard_proto::v1::{
    change, Backend, BackendRef, Change, Health, HealthCheckKind, Pool, SessionBinding, SessionRef, Topology,
};

use crate::audit::AuditLog;
use crate::auth::tokens::{self, TokenRecord, Tokens};
use crate::error::ApiError;
use crate::pb::Pb;
use crate::seen::{Lookup, Seen};
use crate::validate;

mod command;
mod guard;

pub use command::*;
pub use guard::{Guard, MAX_GUARDS};

type Key2 = (String, String);

/// The state machine's contents: the shared [`Model`], changed only by applying commands,
/// and the table of requests seen. Reads go through `Deref`; every write is a change that
/// [`Model::apply`] makes, the same function every proxy's mirror runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    model: Model,
    seen: Seen,
    /// Bearer tokens (hashes): beside the model, never in it, so no change set carries one.
    tokens: Tokens,
    audit: AuditLog,
    /// The latest `now_ms` ever applied: session time never goes back when a new leader's
    /// wall clock is behind the old one's.
    clock_ms: u64,
    /// The cluster's feature level as stored: 0 (a cluster from before levels) reads as 1.
    feature_level: u32,
    /// What the pools, backends and routes take in a config snapshot (encoded, with their
    /// framing): every proxy receives all of it in one message, so writes that would grow it
    /// past `--max-config-bytes` are refused as they apply ([`Guard::Room`]). Kept up to date by
    /// [`State::emit`] and the AddBackend arm of [`State::apply`], not stored: rebuilt from the
    /// model when the state is loaded.
    topology_bytes: u64,
    /// The same for session bindings, which a config snapshot carries too: the leader stops
    /// recording new ones past [`crate::sessions::MAX_SESSION_BYTES`].
    session_bytes: u64,
}

/// What one entity adds to a config snapshot: its encoding and its field's framing (the tags
/// of pools, backends, routes and sessions in `Topology` are 2, 3, 4 and 6, one byte each).
pub fn snapshot_len<M: prost::Message>(m: &M) -> u64 {
    prost::encoding::message::encoded_len(2, m) as u64
}

fn topology_bytes(m: &Model) -> u64 {
    m.pools.values().map(snapshot_len).sum::<u64>()
        + m.backends.values().map(snapshot_len).sum::<u64>()
        + m.routes.values().map(snapshot_len).sum::<u64>()
}

impl std::ops::Deref for State {
    type Target = Model;
    fn deref(&self) -> &Model {
        &self.model
    }
}

impl State {
    pub fn from_topology(t: Topology, seen: Seen, clock_ms: u64) -> State {
        State::from_model(Model::from_topology(t), seen, clock_ms)
    }

    pub fn from_model(model: Model, seen: Seen, clock_ms: u64) -> State {
        let topology_bytes = topology_bytes(&model);
        let session_bytes = model.sessions.values().map(snapshot_len).sum();
        State {
            model,
            seen,
            clock_ms,
            tokens: Tokens::default(),
            audit: AuditLog::default(),
            feature_level: 0,
            topology_bytes,
            session_bytes,
        }
    }

    /// The pools', backends' and routes' share of a config snapshot, in bytes.
    pub fn topology_bytes(&self) -> u64 {
        self.topology_bytes
    }

    /// The session bindings' share of a config snapshot, in bytes.
    pub fn session_bytes(&self) -> u64 {
        self.session_bytes
    }

    /// With the feature level restored too (0, from data written before levels, reads as 1).
    pub fn with_feature_level(mut self, level: u32) -> State {
        self.feature_level = level;
        self
    }

    /// The cluster's feature level, as committed in Raft (1 until the leader raises it).
    pub fn feature_level(&self) -> u32 {
        self.feature_level.max(1)
    }

    /// With the tokens and audit log restored too.
    pub fn with_access(mut self, tokens: Tokens, audit: AuditLog) -> State {
        self.tokens = tokens;
        self.audit = audit;
        self
    }

    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The high-water clock: the latest command time applied (stored with the state).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// A command's time, never earlier than one already applied; advances the clock.
    fn tick(&mut self, now_ms: u64) -> u64 {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.clock_ms
    }

    /// Applies a proposed command at `rev`, at most once per request id: a repeat is answered
    /// from the seen table and changes nothing. A request older than its client's last
    /// applied write is refused, since its answer is no longer kept.
    pub fn apply_proposed(&mut self, rev: u64, p: &Proposed) -> Applied {
        let mut a = self.apply_once(rev, p);
        if let (true, Ok(_), Some(note)) = (a.fresh, &a.written.1, &p.audit) {
            let (rec, dropped) = self.audit.push(rev, note.clone());
            a.audited = Some(rec);
            a.audit_dropped = dropped;
        }
        a
    }

    fn apply_once(&mut self, rev: u64, p: &Proposed) -> Applied {
        let applied = |written, fresh, recorded, evicted| Applied {
            written,
            fresh,
            recorded,
            evicted,
            audited: None,
            audit_dropped: None,
        };
        let Some(id) = &p.id else {
            let written = (rev, to_wire(self.apply(rev, &p.cmd)));
            return applied(written, true, None, vec![]);
        };
        match self.seen.lookup(id) {
            Lookup::Repeat(r) => applied((r.revision, r.outcome.clone()), false, None, vec![]),
            Lookup::TooOld { recorded } => applied(
                (
                    rev,
                    Err(ApiError::FailedPrecondition(format!(
                        "request too old: client {:?} seq {} is below its last applied seq {recorded}, \
                         whose answer replaced this one's",
                        id.client, id.seq
                    ))),
                ),
                false,
                None,
                vec![],
            ),
            Lookup::New => {
                let out = to_wire(self.apply(rev, &p.cmd));
                let evicted = self.seen.record(id, rev, out.clone());
                applied((rev, out), true, Some(id.client.clone()), evicted)
            }
        }
    }

    /// Records a change: applied to the model and added to the command's outcome.
    fn emit(&mut self, out: &mut Vec<Change>, kind: change::Kind) {
        use change::Kind as K;
        let m = &self.model;
        let (total, old, new) = match &kind {
            K::PoolPut(p) => (&mut self.topology_bytes, m.pools.get(&p.name).map_or(0, snapshot_len), snapshot_len(p)),
            K::PoolDeleted(n) => (&mut self.topology_bytes, m.pools.get(n).map_or(0, snapshot_len), 0),
            K::BackendPut(b) => {
                let old = m.backends.get(&Pair(&b.pool, &b.address)).map_or(0, snapshot_len);
                (&mut self.topology_bytes, old, snapshot_len(b))
            }
            K::BackendRemoved(b) => {
                (&mut self.topology_bytes, m.backends.get(&Pair(&b.pool, &b.address)).map_or(0, snapshot_len), 0)
            }
            K::RoutePut(r) => {
                (&mut self.topology_bytes, m.routes.get(&r.name).map_or(0, snapshot_len), snapshot_len(r))
            }
            K::RouteDeleted(n) => (&mut self.topology_bytes, m.routes.get(n).map_or(0, snapshot_len), 0),
            K::SessionPut(b) => {
                let old = m.sessions.get(&Pair(&b.pool, &b.key)).map_or(0, snapshot_len);
                (&mut self.session_bytes, old, snapshot_len(b))
            }
            K::SessionRemoved(r) => {
                (&mut self.session_bytes, m.sessions.get(&Pair(&r.pool, &r.key)).map_or(0, snapshot_len), 0)
            }
            K::SettingsPut(_) | K::AffinitySecret(_) => (&mut 0, 0, 0),
        };
        debug_assert!(old <= *total, "the running size counts every entity");
        *total = *total - old + new;
        let c = put(kind);
        self.model.apply(&c);
        out.push(c);
    }

    /// Applies `cmd` at `rev`. On error the state is unchanged.
    pub fn apply(&mut self, rev: u64, cmd: &Command) -> Outcome {
        let mut out = Vec::new();
        match cmd {
            Command::Guarded { guards, cmd } => {
                // Only admin writes are guarded, once: one that is not arrived from no node of
                // this build, and would not decode on the others (`guard::unguarded`).
                if let Some(what) = cmd.internal() {
                    return Err(ApiError::InvalidArgument(format!("{what} is not guarded")));
                }
                if matches!(**cmd, Command::Guarded { .. }) {
                    return Err(ApiError::InvalidArgument("a guarded write inside a guarded write".into()));
                }
                for g in guards {
                    g.check(self, cmd, rev)?;
                }
                return self.apply(rev, cmd);
            }
            Command::CreatePool(Pb(p)) => {
                if self.pools.contains_key(&p.name) {
                    return Err(ApiError::AlreadyExists(format!("pool {:?} already exists", p.name)));
                }
                let mut p = p.clone();
                p.created_revision = rev;
                p.updated_revision = rev;
                let unchecked = !is_checked(&p);
                self.emit(&mut out, change::Kind::PoolPut(p.clone()));
                if unchecked {
                    self.forget_health(&mut out, rev, &p.name);
                }
            }
            Command::UpdatePool { pool: Pb(new), mask } => {
                let cur = self.pools.get(&new.name).ok_or_else(|| no_pool(&new.name))?;
                let merged = fields::merge_pool(cur, new, mask)
                    .map_err(|f| ApiError::InvalidArgument(format!("pool has no updatable field {:?}", f.0)))?;
                let mut p = validate::pool(merged)?;
                p.created_revision = cur.created_revision;
                p.updated_revision = rev;
                let unchecked = !is_checked(&p);
                let name = p.name.clone();
                self.emit(&mut out, change::Kind::PoolPut(p));
                if unchecked {
                    self.forget_health(&mut out, rev, &name);
                }
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
                self.emit(&mut out, change::Kind::PoolDeleted(name.clone()));
                let keys: Vec<Key2> = self.sessions.keys().filter(|(p, _)| p == name).cloned().collect();
                for (pool, key) in keys {
                    self.emit(&mut out, change::Kind::SessionRemoved(SessionRef { pool, key }));
                }
            }
            Command::AddBackend(Pb(b)) => {
                if !self.pools.contains_key(&b.pool) {
                    return Err(no_pool(&b.pool));
                }
                let mut b = b.clone();
                b.updated_revision = rev;
                // One descent of a map of possibly millions (a lookup, then an insert, took
                // two): insert, and put back what was there if the backend already existed.
                let key = backend_key(&b);
                if let Some(old) = self.model.backends.insert(key.clone(), b.clone()) {
                    self.model.backends.insert(key, old);
                    return Err(ApiError::AlreadyExists(format!(
                        "backend {} already exists in pool {:?}",
                        b.address, b.pool
                    )));
                }
                self.topology_bytes += snapshot_len(&b);
                out.push(put(change::Kind::BackendPut(b)));
            }
            Command::SetBackendWeight { pool, address, weight } => {
                return self.update_backend(rev, pool, address, |b| {
                    b.weight = *weight;
                    Ok(())
                })
            }
            Command::SetBackendState { pool, address, state } => {
                return self.update_backend(rev, pool, address, |b| {
                    b.admin_state = *state;
                    Ok(())
                })
            }
            Command::SetBackendHealth { pool, address, health } => {
                if *health != Health::Unknown as i32 && self.pools.get(pool).is_some_and(|p| !is_checked(p)) {
                    // A flip from a probe that was in flight when the check was removed.
                    return Ok(vec![]);
                }
                return self.update_backend(rev, pool, address, |b| {
                    Health::try_from(*health).map_err(|_| ApiError::InvalidArgument("bad health".into()))?;
                    b.health = *health;
                    Ok(())
                });
            }
            Command::RemoveBackend { pool, address } => {
                if self.backend(pool, address).is_none() {
                    return Err(no_backend(pool, address));
                }
                let gone = BackendRef { pool: pool.clone(), address: address.clone() };
                self.emit(&mut out, change::Kind::BackendRemoved(gone));
                self.unbind_backend(&mut out, pool, address);
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
                self.emit(&mut out, change::Kind::RoutePut(r));
            }
            Command::DeleteRoute { name } => {
                if !self.routes.contains_key(name) {
                    return Err(ApiError::NotFound(format!("route {name:?} not found")));
                }
                self.emit(&mut out, change::Kind::RouteDeleted(name.clone()));
            }
            Command::UpdateSettings { settings: Pb(new), mask } => {
                let s = fields::merge_settings(&self.settings, new, mask)
                    .map_err(|f| ApiError::InvalidArgument(format!("settings have no field {:?}", f.0)))?;
                validate::settings(&s)?;
                self.emit(&mut out, change::Kind::SettingsPut(s));
            }
            Command::BindSessions { now_ms, bindings } => {
                let now_ms = self.tick(*now_ms);
                self.bind_sessions(&mut out, rev, now_ms, bindings)
            }
            Command::ExpireSessions { now_ms } => {
                let now_ms = self.tick(*now_ms);
                self.expire_sessions(&mut out, now_ms)
            }
            Command::DeleteSession { pool, key } => {
                if !self.sessions.contains_key(&Pair(pool, key)) {
                    return Err(ApiError::NotFound(format!("no session {key:?} in pool {pool:?}")));
                }
                self.emit(&mut out, change::Kind::SessionRemoved(SessionRef { pool: pool.clone(), key: key.clone() }));
            }
            Command::CreateToken(t) => self.create_token(rev, t)?,
            Command::RevokeToken { id } => {
                if self.tokens.remove(id).is_none() {
                    return Err(ApiError::NotFound(format!("no token {id:?} (already revoked?)")));
                }
            }
            Command::Note => {}
            Command::SetFeatureLevel(n) => self.feature_level = self.feature_level().max(*n),
            Command::DeleteSessions { pool } => {
                if !self.pools.contains_key(pool) {
                    return Err(no_pool(pool));
                }
                let keys: Vec<Key2> = self.sessions.keys().filter(|(p, _)| p == pool).cloned().collect();
                for (pool, key) in keys {
                    self.emit(&mut out, change::Kind::SessionRemoved(SessionRef { pool, key }));
                }
            }
            Command::SetAffinitySecret(SecretBytes(secret)) => {
                if self.affinity_secret.is_set() || !AffinitySecret::from_bytes(secret).is_set() {
                    return Ok(vec![]);
                }
                // Bindings made before hashing carry raw keys (perhaps credentials): drop them.
                for (pool, key) in self.sessions.keys().cloned().collect::<Vec<Key2>>() {
                    self.emit(&mut out, change::Kind::SessionRemoved(SessionRef { pool, key }));
                }
                self.emit(&mut out, change::Kind::AffinitySecret(secret.clone()));
            }
        }
        Ok(out)
    }

    fn create_token(&mut self, rev: u64, t: &TokenRecord) -> Result<(), ApiError> {
        tokens::token_role(&t.role).map_err(ApiError::InvalidArgument)?;
        if self.tokens.len() >= tokens::MAX_TOKENS {
            return Err(ApiError::FailedPrecondition(format!(
                "the cluster holds {} tokens, the most it keeps; revoke some first",
                tokens::MAX_TOKENS
            )));
        }
        if self.tokens.get(&t.id).is_some() || self.tokens.contains_hash(&t.hash) {
            return Err(ApiError::AlreadyExists(format!("token {:?} already exists", t.id)));
        }
        self.tokens.insert(TokenRecord { created_revision: rev, ..t.clone() });
        Ok(())
    }

    fn update_backend(
        &mut self,
        rev: u64,
        pool: &str,
        address: &str,
        f: impl FnOnce(&mut Backend) -> Result<(), ApiError>,
    ) -> Outcome {
        let b = self.backend(pool, address).ok_or_else(|| no_backend(pool, address))?;
        let mut nb = b.clone();
        f(&mut nb)?;
        if nb == *b {
            // A write that changes nothing emits nothing, so proxies see no churn.
            return Ok(vec![]);
        }
        nb.updated_revision = rev;
        let mut out = Vec::new();
        self.emit(&mut out, change::Kind::BackendPut(nb));
        Ok(out)
    }

    /// New or refreshed bindings. Same backend: refresh. A different backend replaces the
    /// binding only when the bound one is no longer [`usable`]; otherwise the first writer
    /// wins. A binding to an unusable backend is never made.
    fn bind_sessions(&mut self, out: &mut Vec<Change>, rev: u64, now_ms: u64, bindings: &[Pb<SessionBinding>]) {
        for Pb(b) in bindings {
            let usable_here = |s: &State, backend: &str| s.backend(&b.pool, backend).is_some_and(usable);
            let next = match self.sessions.get(&Pair(&b.pool, &b.key)) {
                Some(cur) if cur.backend == b.backend => {
                    SessionBinding { last_seen_ms: cur.last_seen_ms.max(now_ms), ..cur.clone() }
                }
                Some(cur) if !usable_here(self, &cur.backend) && usable_here(self, &b.backend) => SessionBinding {
                    backend: b.backend.clone(),
                    last_seen_ms: now_ms,
                    created_revision: rev,
                    ..cur.clone()
                },
                Some(cur) => {
                    tracing::debug!(pool = %b.pool, backend = %b.backend, bound = %cur.backend, "binding kept to its first backend");
                    continue;
                }
                None => {
                    let Some(pool) = self.pools.get(&b.pool) else { continue };
                    if !usable_here(self, &b.backend) {
                        tracing::debug!(pool = %b.pool, backend = %b.backend, "no binding to an unusable backend");
                        continue;
                    }
                    SessionBinding {
                        pool: b.pool.clone(),
                        key: b.key.clone(),
                        backend: b.backend.clone(),
                        last_seen_ms: now_ms,
                        ttl_ms: if b.ttl_ms > 0 { b.ttl_ms } else { pool.affinity_ttl_ms.max(1) },
                        created_revision: rev,
                    }
                }
            };
            self.emit(out, change::Kind::SessionPut(next));
        }
    }

    /// Drops bindings whose TTL has passed at `now_ms` (the leader's time, in the command,
    /// raised to the high-water clock).
    fn expire_sessions(&mut self, out: &mut Vec<Change>, now_ms: u64) {
        let dead: Vec<Key2> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_seen_ms.saturating_add(s.ttl_ms) <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for (pool, key) in dead {
            self.emit(out, change::Kind::SessionRemoved(SessionRef { pool, key }));
        }
    }

    /// Sets every backend of a pool that no longer has a health check back to Unknown: nothing
    /// would ever flip them again, so a stale Unhealthy would keep them out of service.
    fn forget_health(&mut self, out: &mut Vec<Change>, rev: u64, pool: &str) {
        let stale: Vec<Backend> = self
            .backends_of(pool)
            .filter(|b| b.health != Health::Unknown as i32)
            .map(|b| Backend { health: Health::Unknown as i32, updated_revision: rev, ..b.clone() })
            .collect();
        for b in stale {
            self.emit(out, change::Kind::BackendPut(b));
        }
    }

    fn unbind_backend(&mut self, out: &mut Vec<Change>, pool: &str, address: &str) {
        let keys: Vec<Key2> = self
            .sessions
            .iter()
            .filter(|((p, _), s)| p == pool && s.backend == address)
            .map(|(k, _)| k.clone())
            .collect();
        for (pool, key) in keys {
            self.emit(out, change::Kind::SessionRemoved(SessionRef { pool, key }));
        }
    }
}

/// Whether a pool's backends are probed (a check of a kind other than NONE).
fn is_checked(p: &Pool) -> bool {
    p.health_check.as_ref().is_some_and(|hc| hc.kind != HealthCheckKind::HealthCheckNone as i32)
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
