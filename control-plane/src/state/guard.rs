//! Conditions a write must still meet when it is applied, not only when a node took it.
//!
//! An operator-mistake check or a size limit judged when a request arrives races with the
//! writes in flight beside it: two drains sent at once could each leave the other's backend
//! as the last of its pool, and writes admitted together could together pass the config
//! limit. A guarded write carries its guards in the Raft entry ([`Command::Guarded`],
//! feature level 5) and every node checks them as it applies the entry, on the same state
//! in the same order, so either all of them refuse it or none does (etcd's transaction
//! compares are the same idea). Before level 5 the node that takes the request judges them
//! on its own read of the state, as before guards were carried.
//!
//! What a guard decides is now part of the state machine: nodes that judged one entry
//! differently would hold different models. So a guard's rule is frozen once released, and
//! so is what [`growth`] measures: a new rule is a new variant, and a new field in a pool,
//! backend or route (which changes their encoded size, and which an older node drops) needs
//! a new feature level, as `backend_tls` did.

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use switchyard_model::fields::merge_pool;
use switchyard_model::topology::{in_service, Pair};
use switchyard_proto::v1::{AdminState, Backend, Pool, Route};

use super::{snapshot_len, Command, State, GUARDED_LEVEL};
use crate::error::ApiError;
use crate::pb::Pb;
use crate::validate;

/// Most guards one write carries: the Admin API puts three at most on any (a route set
/// without auth flags: its auth, its pool serving, the config limit). A longer list is
/// refused as it is decoded, from a peer's `Forward` or from the log, before it is held.
pub const MAX_GUARDS: usize = 4;

/// One condition of a guarded write; each judges the command it guards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Guard {
    /// The backend the command takes out of service (a drain, a disable, a weight of 0, a
    /// removal) is not the last of its pool taking new connections while a route sends
    /// clients to the pool: every new client of the pool would get 503.
    KeepsABackend,
    /// A route repointed from a pool with a backend taking new connections goes to a pool
    /// that has one too (a typo'd pool, one not yet filled, would answer every client 503).
    KeepsARouteServed,
    /// A pool's affinity key does not change while the pool holds session bindings: they
    /// are keyed by the old one, so every session would be bound afresh at once.
    KeepsSessions,
    /// A route with edge authentication is not replaced by one without: a route is replaced
    /// whole, and repointing one or rotating its keys without its auth flags would open it to
    /// every client, and pass client-sent claim headers on.
    KeepsRouteAuth,
    /// The pools, backends and routes stay within `limit` bytes of a config snapshot, the
    /// limit of the node that took the write (`--max-config-bytes`): every proxy receives
    /// them all in one message.
    Room { limit: u64 },
}

impl Guard {
    /// The feature level every node must run to judge this guard alike. Every guard so far
    /// came with level 5; a new variant needs a level of its own, since a node without it
    /// cannot decode the entry.
    pub fn needs(&self) -> u32 {
        match self {
            Guard::KeepsABackend
            | Guard::KeepsARouteServed
            | Guard::KeepsSessions
            | Guard::KeepsRouteAuth
            | Guard::Room { .. } => GUARDED_LEVEL,
        }
    }

    /// Whether `cmd` may apply to `st` at revision `rev` (`u64::MAX` when judged before it
    /// has one: the longest it can be stamped with); the refusal says why and what to do.
    pub fn check(&self, st: &State, cmd: &Command, rev: u64) -> Result<(), ApiError> {
        match self {
            Guard::KeepsABackend => keeps_a_backend(st, cmd),
            Guard::KeepsARouteServed => keeps_a_route_served(st, cmd),
            Guard::KeepsSessions => keeps_sessions(st, cmd),
            Guard::KeepsRouteAuth => keeps_route_auth(st, cmd),
            Guard::Room { limit } => has_room(st, cmd, rev, *limit),
        }
    }
}

impl Guard {
    /// Whether `cmd` takes a backend out of service (what [`Guard::KeepsABackend`] judges).
    pub fn takes_out(cmd: &Command) -> bool {
        taken_out(cmd).is_some()
    }
}

/// The backend `cmd` takes out of service, and how, to name it in a refusal.
fn taken_out(cmd: &Command) -> Option<(&str, &str, &'static str)> {
    match cmd {
        Command::SetBackendWeight { pool, address, weight: 0 } => Some((pool, address, "a weight of 0")),
        Command::SetBackendState { pool, address, state } => match AdminState::try_from(*state) {
            Ok(AdminState::Draining) => Some((pool, address, "draining it")),
            Ok(AdminState::Disabled) => Some((pool, address, "disabling it")),
            _ => None,
        },
        Command::RemoveBackend { pool, address } => Some((pool, address, "removing it")),
        _ => None,
    }
}

fn keeps_a_backend(st: &State, cmd: &Command) -> Result<(), ApiError> {
    let Some((pool, address, what)) = taken_out(cmd) else { return Ok(()) };
    let Some(me) = st.backends.get(&Pair(pool, address)) else { return Ok(()) };
    if !in_service(me) || st.backends_of(pool).any(|b| b.address != address && in_service(b)) {
        return Ok(());
    }
    let Some(route) = st.routes.values().find(|r| r.pool == pool) else { return Ok(()) };
    Err(ApiError::FailedPrecondition(format!(
        "backend {address} is the last of pool {pool} taking new connections and route {} sends clients to the \
         pool: {what} would answer every new client 503; enable or add another backend first, or force it (the \
         CLI's --force)",
        route.name
    )))
}

fn keeps_a_route_served(st: &State, cmd: &Command) -> Result<(), ApiError> {
    let Command::SetRoute(Pb(new)) = cmd else { return Ok(()) };
    let Some(cur) = st.routes.get(new.name.as_str()) else { return Ok(()) };
    let serves = |pool: &str| st.backends_of(pool).any(in_service);
    if cur.pool == new.pool || !st.pools.contains_key(new.pool.as_str()) || !serves(&cur.pool) || serves(&new.pool) {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition(format!(
        "route {} sends clients to pool {}, and pool {} has no backend taking new connections: every new client \
         of the route would get 503; add or enable a backend in {} first, or force it (the CLI's --force)",
        new.name, cur.pool, new.pool, new.pool
    )))
}

fn keeps_route_auth(st: &State, cmd: &Command) -> Result<(), ApiError> {
    let Command::SetRoute(Pb(new)) = cmd else { return Ok(()) };
    if new.auth.is_some() || st.routes.get(new.name.as_str()).is_none_or(|r| r.auth.is_none()) {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition(format!(
        "route {} has edge authentication and this request has none: it would open the route to every client; \
         give its auth flags again, or --force to remove it",
        new.name
    )))
}

/// Whether two affinity keys name the same thing: header names are matched without regard
/// to case (as the proxy reads them), everything else as written.
fn same_key(a: &str, b: &str) -> bool {
    match (a.strip_prefix("header:"), b.strip_prefix("header:")) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => a == b,
    }
}

fn keeps_sessions(st: &State, cmd: &Command) -> Result<(), ApiError> {
    let Command::UpdatePool { pool: Pb(new), mask } = cmd else { return Ok(()) };
    if !mask.iter().any(|f| f == "affinity") {
        return Ok(());
    }
    let Some(cur) = st.pools.get(new.name.as_str()) else { return Ok(()) };
    let bound = st.sessions.range(Pair(&new.name, "")..).next().is_some_and(|((p, _), _)| *p == new.name);
    if same_key(&cur.affinity, &new.affinity) || !bound {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition(format!(
        "pool {} holds session bindings keyed by its affinity {:?}: a new key would bind every session afresh at \
         once, most to another backend; force it (the CLI's --force) to do so",
        new.name, cur.affinity
    )))
}

/// What `cmd` adds to the pools', backends' and routes' share of a config snapshot. A new
/// entity is measured with the revision `rev` it will be stamped with (`u64::MAX`, the
/// longest, when judged before it has one); a replaced one at its old revisions, so that
/// repointing a route or updating a pool at the limit grows nothing (a new revision is a
/// byte or two longer at most, and so are a backend's after a weight or state change, which
/// is not guarded: an operator at the limit can still drain and remove). A write that the
/// state machine refuses anyway (a pool that exists, a backend in no pool) adds nothing.
pub fn growth(st: &State, cmd: &Command, rev: u64) -> u64 {
    match cmd {
        Command::CreatePool(Pb(p)) if !st.pools.contains_key(p.name.as_str()) => {
            snapshot_len(&Pool { created_revision: rev, updated_revision: rev, ..p.clone() })
        }
        Command::UpdatePool { pool: Pb(p), mask } => {
            let Some(cur) = st.pools.get(p.name.as_str()) else { return 0 };
            let Some(mut merged) = merge_pool(cur, p, mask).ok().and_then(|m| validate::pool(m).ok()) else {
                return 0;
            };
            (merged.created_revision, merged.updated_revision) = (cur.created_revision, cur.updated_revision);
            snapshot_len(&merged).saturating_sub(snapshot_len(cur))
        }
        Command::AddBackend(Pb(b))
            if st.pools.contains_key(b.pool.as_str()) && !st.backends.contains_key(&Pair(&b.pool, &b.address)) =>
        {
            snapshot_len(&Backend { updated_revision: rev, ..b.clone() })
        }
        Command::SetRoute(Pb(r)) if st.pools.contains_key(r.pool.as_str()) => match st.routes.get(r.name.as_str()) {
            Some(old) => snapshot_len(&Route { updated_revision: old.updated_revision, ..r.clone() })
                .saturating_sub(snapshot_len(old)),
            None => snapshot_len(&Route { updated_revision: rev, ..r.clone() }),
        },
        _ => 0,
    }
}

fn has_room(st: &State, cmd: &Command, rev: u64, limit: u64) -> Result<(), ApiError> {
    let (now, grows) = (st.topology_bytes(), growth(st, cmd, rev));
    let after = now.saturating_add(grows);
    // A write that adds nothing goes through even past the limit (which restamped revisions
    // may pass by a byte or two): repointing a route there must still work.
    if grows == 0 || after <= limit {
        return Ok(());
    }
    Err(ApiError::ResourceExhausted(format!(
        "the config (pools, backends, routes) would grow to {after} bytes, over the limit of {limit} \
         (--max-config-bytes; it holds {now}): every proxy receives the whole config in one message. Remove pools, \
         backends or routes no longer needed, or raise the limit on every node"
    )))
}

/// Decodes the command inside [`Command::Guarded`], refusing one that is guarded itself: the
/// log's encoding would otherwise let an entry nest guarded commands as deep as its bytes
/// allow, and decoding recurses once per level (a forged entry could overflow the stack).
pub(super) fn unguarded<'de, D: Deserializer<'de>>(d: D) -> Result<Box<Command>, D::Error> {
    use std::cell::Cell;
    thread_local!(static INSIDE: Cell<bool> = const { Cell::new(false) });
    /// Leaves the flag as it found it, however decoding ends.
    struct Inside;
    impl Drop for Inside {
        fn drop(&mut self) {
            INSIDE.with(|i| i.set(false));
        }
    }
    if INSIDE.with(|i| i.replace(true)) {
        return Err(serde::de::Error::custom("a guarded command inside a guarded command"));
    }
    let _inside = Inside;
    Command::deserialize(d).map(Box::new)
}

/// Decodes the guards of [`Command::Guarded`], at most [`MAX_GUARDS`] of them: the count is
/// checked as each arrives, so a forged list of millions is refused, not first built.
pub(super) fn few<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Guard>, D::Error> {
    struct Few;
    impl<'de> Visitor<'de> for Few {
        type Value = Vec<Guard>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {MAX_GUARDS} guards")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Guard>, A::Error> {
            let mut guards = Vec::new();
            while let Some(g) = seq.next_element()? {
                if guards.len() == MAX_GUARDS {
                    return Err(serde::de::Error::custom(format!(
                        "a guarded write carries at most {MAX_GUARDS} guards"
                    )));
                }
                guards.push(g);
            }
            Ok(guards)
        }
    }
    d.deserialize_seq(Few)
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
