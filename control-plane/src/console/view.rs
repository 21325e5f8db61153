//! What the console shows, as JSON: one consistent read of the applied state, plus what only
//! the leader knows (proxies, connections summed over proxies, followers' progress). The
//! leader's part is asked with a short deadline; when it does not come, the page says so and
//! still shows this node's state.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_proto::v1::{change, AdminState, Algorithm, Change, Health, HealthCheckKind};

use crate::auth::Caller;
use crate::clock::now_ms;
use crate::node::calls::{ListProxies, Loads, ReadIndex};
use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::pb::Pb;

/// How long the page waits for the leader's part of an answer.
const LEADER_DEADLINE: Duration = Duration::from_secs(1);
/// Audit records the page shows (newest first); `switchyard audit` has them all.
const AUDIT_SHOWN: usize = 50;

/// What the caller may do on the page, from the same permission table as the gRPC calls.
pub struct Rights {
    pub operate: bool,
    pub audit: bool,
}

pub async fn state(node: &NodeCtx, caller: &Caller, rights: &Rights) -> Value {
    let proxies = tokio::time::timeout(LEADER_DEADLINE, leader::execute(node, ListProxies)).await;
    let loads = tokio::time::timeout(LEADER_DEADLINE, leader::execute(node, Loads)).await;
    let leader_commit = if node.is_leader() {
        None
    } else {
        tokio::time::timeout(LEADER_DEADLINE, leader::execute(node, ReadIndex)).await.ok()
    };
    let unreachable = |e: String| json!({ "error": e });

    let proxies = match proxies {
        Ok(Ok(list)) => {
            let now = now_ms();
            let rows: Vec<Value> = list
                .into_iter()
                .map(|Pb(p)| {
                    json!({
                        "id": p.proxy_id, "revision": p.current_through.max(p.applied_revision), "node": p.node,
                        "age_ms": now.saturating_sub(p.last_report_ms), "connections": p.connections,
                        "handshake_failures": p.handshake_failures, "rejected": p.rejected_reason,
                    })
                })
                .collect();
            json!({ "list": rows })
        }
        Ok(Err(e)) => unreachable(format!("the leader did not answer: {e}")),
        Err(_) => unreachable("the leader did not answer within 1 s".into()),
    };
    let connections: HashMap<(String, String), u64> = match loads {
        Ok(Ok(l)) => l.into_iter().map(|Pb(b)| ((b.pool, b.address), b.connections)).collect(),
        _ => HashMap::new(),
    };

    let m = node.raft.metrics().borrow().clone();
    let last_log = m.last_log_index.unwrap_or(0);
    let matched: HashMap<u64, u64> = m
        .replication
        .as_ref()
        .map(|r| r.iter().map(|(id, l)| (*id, l.map_or(0, |l| l.index))).collect())
        .unwrap_or_default();
    let applied = m.last_applied.map_or(0, |l| l.index);
    let members: Vec<Value> = node
        .members()
        .into_iter()
        .map(|mb| {
            // Lag in entries: the leader knows every follower's; a follower knows only its own.
            let lag = if node.is_leader() {
                matched.get(&mb.id).map(|i| last_log.saturating_sub(*i))
            } else if mb.id == node.id {
                match &leader_commit {
                    Some(Ok(c)) => Some(c.saturating_sub(applied)),
                    _ => None,
                }
            } else {
                None
            };
            json!({
                "id": mb.id, "address": mb.address, "leader": mb.leader,
                "role": if mb.role == switchyard_proto::v1::MemberRole::Voter as i32 { "voter" } else { "learner" },
                "lag": lag, "this": mb.id == node.id,
            })
        })
        .collect();

    let live = node.shared.read();
    let st = &live.state;
    let mut sessions: HashMap<(&str, &str), u64> = HashMap::new();
    for ((pool, _), b) in st.sessions.iter() {
        *sessions.entry((pool.as_str(), b.backend.as_str())).or_default() += 1;
    }
    let pools: Vec<Value> = st
        .pools
        .values()
        .map(|p| {
            let backends: Vec<Value> = st
                .backends_of(&p.name)
                .map(|b| {
                    let key = (b.pool.clone(), b.address.clone());
                    json!({
                        "address": b.address, "weight": b.weight, "zone": b.zone,
                        "state": admin_state(b.admin_state), "health": health(b.health),
                        "connections": connections.get(&key).copied().unwrap_or(0),
                        "sessions": sessions.get(&(b.pool.as_str(), b.address.as_str())).copied().unwrap_or(0),
                    })
                })
                .collect();
            json!({
                "name": p.name, "algorithm": algorithm(p.algorithm), "affinity": p.affinity,
                "health_check": p.health_check.as_ref().map_or("none", |h| check_kind(h.kind)),
                // "" when each proxy's own setting applies.
                "backend_tls": match &p.backend_tls {
                    None => String::new(),
                    Some(t) if !t.enabled => "off".into(),
                    Some(t) if t.server_name.is_empty() => "on".into(),
                    Some(t) => format!("on, verified as {}", t.server_name),
                },
                "backends": backends,
            })
        })
        .collect();
    let routes: Vec<Value> = st
        .routes
        .values()
        .map(|r| json!({"name": r.name, "host": r.host, "path_prefix": r.path_prefix, "pool": r.pool}))
        .collect();
    let audit: Value = if rights.audit {
        let rows: Vec<Value> = st
            .audit()
            .records()
            .rev()
            .take(AUDIT_SHOWN)
            .map(|r| {
                json!({
                    "revision": r.revision, "at_ms": r.note.at_ms, "who": r.note.who, "role": r.note.role,
                    "method": r.note.method, "summary": r.note.summary,
                })
            })
            .collect();
        json!({ "list": rows })
    } else {
        json!({ "error": "the audit log needs the admin role" })
    };
    json!({
        "node": {
            "id": node.id, "state": format!("{:?}", m.state), "leader": m.current_leader, "term": m.current_term,
            "revision": live.revision(), "cluster_id": node.cluster_id.get().unwrap_or_default(),
            "security": node.config.security().as_str(),
        },
        "members": members,
        "proxies": proxies,
        "pools": pools,
        "routes": routes,
        "sessions": st.sessions.len(),
        "audit": audit,
        "you": { "who": caller.who(), "role": caller.role_name(), "operate": rights.operate },
    })
}

/// One line per change for the live feed. Session keys are already keyed hashes.
pub fn describe(c: &Change) -> String {
    use change::Kind;
    match &c.kind {
        Some(Kind::PoolPut(p)) => format!("pool {} set ({})", p.name, algorithm(p.algorithm)),
        Some(Kind::PoolDeleted(n)) => format!("pool {n} deleted"),
        Some(Kind::BackendPut(b)) => format!(
            "backend {} in pool {}: {}, {}, weight {}",
            b.address,
            b.pool,
            admin_state(b.admin_state),
            health(b.health),
            b.weight
        ),
        Some(Kind::BackendRemoved(b)) => format!("backend {} removed from pool {}", b.address, b.pool),
        Some(Kind::RoutePut(r)) => format!("route {} → pool {}", r.name, r.pool),
        Some(Kind::RouteDeleted(n)) => format!("route {n} deleted"),
        Some(Kind::SettingsPut(_)) => "settings changed".into(),
        Some(Kind::SessionPut(s)) => format!("session {} in pool {} → {}", short(&s.key), s.pool, s.backend),
        Some(Kind::SessionRemoved(s)) => format!("session {} in pool {} ended", short(&s.key), s.pool),
        Some(_) => "cluster key set".into(),
        None => "empty change".into(),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn algorithm(a: i32) -> &'static str {
    match Algorithm::try_from(a) {
        Ok(Algorithm::LeastConnections) => "least-connections",
        Ok(Algorithm::IpHash) => "ip-hash",
        Ok(Algorithm::ConsistentHash) => "consistent-hash",
        Ok(Algorithm::P2c) => "p2c",
        _ => "round-robin",
    }
}

fn admin_state(s: i32) -> &'static str {
    match AdminState::try_from(s) {
        Ok(AdminState::Draining) => "draining",
        Ok(AdminState::Disabled) => "disabled",
        _ => "active",
    }
}

fn health(h: i32) -> &'static str {
    match Health::try_from(h) {
        Ok(Health::Healthy) => "healthy",
        Ok(Health::Unhealthy) => "unhealthy",
        _ => "unknown",
    }
}

fn check_kind(k: i32) -> &'static str {
    match HealthCheckKind::try_from(k) {
        Ok(HealthCheckKind::HealthCheckTcp) => "tcp",
        Ok(HealthCheckKind::HealthCheckWebsocket) => "websocket",
        _ => "none",
    }
}
