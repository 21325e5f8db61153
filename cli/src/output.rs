//! Tables for people, JSON for scripts.

use serde_json::{json, Value};
use switchyard_proto::v1::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints `rows` under `headers` with aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("json values print"));
}

pub fn algorithm(a: i32) -> &'static str {
    match Algorithm::try_from(a).unwrap_or_default() {
        Algorithm::Unspecified | Algorithm::RoundRobin => "round-robin",
        Algorithm::LeastConnections => "least-connections",
        Algorithm::IpHash => "ip-hash",
        Algorithm::ConsistentHash => "consistent-hash",
        Algorithm::P2c => "p2c",
    }
}

pub fn admin_state(s: i32) -> &'static str {
    match AdminState::try_from(s).unwrap_or_default() {
        AdminState::Unspecified | AdminState::Active => "active",
        AdminState::Draining => "draining",
        AdminState::Disabled => "disabled",
    }
}

pub fn health(h: i32) -> &'static str {
    match Health::try_from(h).unwrap_or_default() {
        Health::Unknown => "unknown",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

pub fn role(r: i32) -> &'static str {
    match MemberRole::try_from(r).unwrap_or_default() {
        MemberRole::Voter => "voter",
        MemberRole::Learner => "learner",
        MemberRole::Unspecified => "unknown",
    }
}

fn ms(v: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(v)).to_string()
}

pub fn pool_json(p: &Pool) -> Value {
    let hc = p.health_check.clone().unwrap_or_default();
    json!({
        "name": p.name,
        "algorithm": algorithm(p.algorithm),
        "hash_key": p.hash_key,
        "affinity": p.affinity,
        "affinity_ttl_ms": p.affinity_ttl_ms,
        "max_connections_per_backend": p.max_connections_per_backend,
        "drain_timeout_ms": p.drain_timeout_ms,
        "health_check": {
            "kind": match HealthCheckKind::try_from(hc.kind).unwrap_or_default() {
                HealthCheckKind::HealthCheckNone => "none",
                HealthCheckKind::HealthCheckTcp => "tcp",
                HealthCheckKind::HealthCheckWebsocket => "websocket",
            },
            "interval_ms": hc.interval_ms, "timeout_ms": hc.timeout_ms,
            "rise": hc.rise, "fall": hc.fall, "path": hc.path,
        },
        "created_revision": p.created_revision,
        "updated_revision": p.updated_revision,
    })
}

pub fn pool_row(p: &Pool) -> Vec<String> {
    let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    vec![
        p.name.clone(),
        algorithm(p.algorithm).into(),
        dash(&p.hash_key),
        if p.affinity.is_empty() { "-".into() } else { format!("{} ({})", p.affinity, ms(p.affinity_ttl_ms)) },
        ms(p.drain_timeout_ms),
        p.updated_revision.to_string(),
    ]
}
pub const POOL_HEADERS: &[&str] = &["NAME", "ALGORITHM", "HASH KEY", "AFFINITY", "DRAIN", "REVISION"];

pub fn backend_json(b: &Backend) -> Value {
    json!({
        "pool": b.pool, "address": b.address, "weight": b.weight,
        "state": admin_state(b.admin_state), "health": health(b.health),
        "zone": b.zone, "labels": b.labels, "updated_revision": b.updated_revision,
    })
}

pub fn backend_row(b: &Backend) -> Vec<String> {
    vec![
        b.pool.clone(),
        b.address.clone(),
        b.weight.to_string(),
        admin_state(b.admin_state).into(),
        health(b.health).into(),
        if b.zone.is_empty() { "-".into() } else { b.zone.clone() },
    ]
}
pub const BACKEND_HEADERS: &[&str] = &["POOL", "ADDRESS", "WEIGHT", "STATE", "HEALTH", "ZONE"];

pub fn route_json(r: &Route) -> Value {
    json!({"name": r.name, "host": r.host, "path_prefix": r.path_prefix, "pool": r.pool, "updated_revision": r.updated_revision})
}

pub fn route_row(r: &Route) -> Vec<String> {
    let any = |s: &str| if s.is_empty() { "*".to_string() } else { s.to_string() };
    vec![r.name.clone(), any(&r.host), any(&r.path_prefix), r.pool.clone()]
}
pub const ROUTE_HEADERS: &[&str] = &["NAME", "HOST", "PATH PREFIX", "POOL"];

pub fn session_json(s: &SessionBinding) -> Value {
    json!({"pool": s.pool, "key": s.key, "backend": s.backend, "last_seen_ms": s.last_seen_ms, "ttl_ms": s.ttl_ms})
}

pub fn member_json(m: &Member) -> Value {
    json!({"id": m.id, "address": m.address, "role": role(m.role), "leader": m.leader})
}

pub fn settings_json(s: &Settings) -> Value {
    json!({
        "handshake_timeout_ms": s.handshake_timeout_ms, "max_header_bytes": s.max_header_bytes,
        "max_message_bytes": s.max_message_bytes, "idle_timeout_ms": s.idle_timeout_ms,
        "ping_interval_ms": s.ping_interval_ms,
        "max_connections_per_ip_per_sec": s.max_connections_per_ip_per_sec,
        "max_handshakes_per_sec": s.max_handshakes_per_sec,
    })
}

pub fn change_json(c: &Change) -> Value {
    match &c.kind {
        Some(change::Kind::PoolPut(p)) => json!({"pool_put": pool_json(p)}),
        Some(change::Kind::PoolDeleted(n)) => json!({"pool_deleted": n}),
        Some(change::Kind::BackendPut(b)) => json!({"backend_put": backend_json(b)}),
        Some(change::Kind::BackendRemoved(b)) => json!({"backend_removed": {"pool": b.pool, "address": b.address}}),
        Some(change::Kind::RoutePut(r)) => json!({"route_put": route_json(r)}),
        Some(change::Kind::RouteDeleted(n)) => json!({"route_deleted": n}),
        Some(change::Kind::SettingsPut(s)) => json!({"settings_put": settings_json(s)}),
        Some(change::Kind::SessionPut(s)) => json!({"session_put": session_json(s)}),
        Some(change::Kind::SessionRemoved(s)) => json!({"session_removed": {"pool": s.pool, "key": s.key}}),
        None => Value::Null,
    }
}
