//! How each object looks: its JSON, its table row, the names of its enum values.

use serde_json::{json, Value};
use switchyard_proto::v1::*;

pub(crate) fn algorithm(a: i32) -> &'static str {
    match Algorithm::try_from(a).unwrap_or_default() {
        Algorithm::Unspecified | Algorithm::RoundRobin => "round-robin",
        Algorithm::LeastConnections => "least-connections",
        Algorithm::IpHash => "ip-hash",
        Algorithm::ConsistentHash => "consistent-hash",
        Algorithm::P2c => "p2c",
    }
}

pub(crate) fn health_check_kind(k: i32) -> &'static str {
    match HealthCheckKind::try_from(k).unwrap_or_default() {
        HealthCheckKind::HealthCheckNone => "none",
        HealthCheckKind::HealthCheckTcp => "tcp",
        HealthCheckKind::HealthCheckWebsocket => "websocket",
    }
}

fn admin_state(s: i32) -> &'static str {
    match AdminState::try_from(s).unwrap_or_default() {
        AdminState::Unspecified | AdminState::Active => "active",
        AdminState::Draining => "draining",
        AdminState::Disabled => "disabled",
    }
}

fn health(h: i32) -> &'static str {
    match Health::try_from(h).unwrap_or_default() {
        Health::Unknown => "unknown",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

pub(super) fn role(r: i32) -> &'static str {
    match MemberRole::try_from(r).unwrap_or_default() {
        MemberRole::Voter => "voter",
        MemberRole::Learner => "learner",
        MemberRole::Unspecified => "unknown",
    }
}

fn ms(v: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(v)).to_string()
}

pub(super) fn pool_json(p: &Pool) -> Value {
    let hc = p.health_check.clone().unwrap_or_default();
    json!({
        "name": p.name,
        "algorithm": algorithm(p.algorithm),
        "hash_key": p.hash_key,
        "affinity": p.affinity,
        "affinity_ttl_ms": p.affinity_ttl_ms,
        "max_connections_per_backend": p.max_connections_per_backend,
        "drain_timeout_ms": p.drain_timeout_ms,
        "max_body_bytes": p.max_body_bytes,
        "response_timeout_ms": p.response_timeout_ms,
        "backend_tls": p.backend_tls.as_ref().map(|t| json!({
            "enabled": t.enabled,
            "server_name": t.server_name,
            "ca_certificates": t.ca_pem.matches("-----BEGIN CERTIFICATE-----").count(),
        })),
        "health_check": {
            "kind": health_check_kind(hc.kind),
            "interval_ms": hc.interval_ms, "timeout_ms": hc.timeout_ms,
            "rise": hc.rise, "fall": hc.fall, "path": hc.path,
            "close_on_failure": hc.close_on_failure,
        },
        "created_revision": p.created_revision,
        "updated_revision": p.updated_revision,
    })
}

pub(super) fn pool_row(p: &Pool) -> Vec<String> {
    let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    vec![
        p.name.clone(),
        algorithm(p.algorithm).into(),
        dash(&p.hash_key),
        if p.affinity.is_empty() { "-".into() } else { format!("{} ({})", p.affinity, ms(p.affinity_ttl_ms)) },
        ms(p.drain_timeout_ms),
        match &p.backend_tls {
            None => "-".into(),
            Some(t) if !t.enabled => "off".into(),
            Some(t) if t.server_name.is_empty() => "on".into(),
            Some(t) => format!("on ({})", t.server_name),
        },
        p.updated_revision.to_string(),
    ]
}
pub(super) const POOL_HEADERS: &[&str] =
    &["NAME", "ALGORITHM", "HASH KEY", "AFFINITY", "DRAIN", "BACKEND TLS", "REVISION"];

pub(super) fn backend_json(b: &Backend) -> Value {
    json!({
        "pool": b.pool, "address": b.address, "weight": b.weight,
        "state": admin_state(b.admin_state), "health": health(b.health),
        "zone": b.zone, "labels": b.labels, "updated_revision": b.updated_revision,
    })
}

pub(super) fn backend_row(b: &Backend) -> Vec<String> {
    vec![
        b.pool.clone(),
        b.address.clone(),
        b.weight.to_string(),
        admin_state(b.admin_state).into(),
        health(b.health).into(),
        if b.zone.is_empty() { "-".into() } else { b.zone.clone() },
    ]
}
pub(super) const BACKEND_HEADERS: &[&str] = &["POOL", "ADDRESS", "WEIGHT", "STATE", "HEALTH", "ZONE"];

/// A route's edge authentication in a few words (the key set itself is not printed).
fn route_auth(r: &Route) -> String {
    use switchyard_proto::v1::route_auth::Kind;
    match r.auth.as_ref().and_then(|a| a.kind.as_ref()) {
        Some(Kind::Jwt(j)) => {
            let keys = serde_json::from_str::<Value>(&j.jwks).ok().and_then(|v| v["keys"].as_array().map(Vec::len));
            format!("jwt ({} keys)", keys.unwrap_or(0))
        }
        Some(Kind::Request(q)) => format!("request {}", q.url),
        None => "-".into(),
    }
}

pub(super) fn route_json(r: &Route) -> Value {
    json!({"name": r.name, "host": r.host, "path_prefix": r.path_prefix, "pool": r.pool, "auth": route_auth(r), "updated_revision": r.updated_revision})
}

pub(super) fn route_row(r: &Route) -> Vec<String> {
    let any = |s: &str| if s.is_empty() { "*".to_string() } else { s.to_string() };
    vec![r.name.clone(), any(&r.host), any(&r.path_prefix), r.pool.clone(), route_auth(r)]
}
pub(super) const ROUTE_HEADERS: &[&str] = &["NAME", "HOST", "PATH PREFIX", "POOL", "AUTH"];

pub(super) fn session_json(s: &SessionBinding) -> Value {
    json!({"pool": s.pool, "key": s.key, "backend": s.backend, "last_seen_ms": s.last_seen_ms, "ttl_ms": s.ttl_ms})
}

pub(super) fn member_json(m: &Member) -> Value {
    json!({"id": m.id, "address": m.address, "role": role(m.role), "leader": m.leader})
}

/// A member with what it runs (cluster status): `null` where it did not say.
pub(super) fn member_status_json(m: &Member) -> Value {
    let mut v = member_json(m);
    let or_null = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    v["version"] = or_null(&m.version);
    v["protocol"] = or_null(&m.protocol);
    v["max_feature_level"] = if m.max_feature_level == 0 { Value::Null } else { json!(m.max_feature_level) };
    v
}

pub(super) fn settings_json(s: &Settings) -> Value {
    json!({
        "handshake_timeout_ms": s.handshake_timeout_ms, "max_header_bytes": s.max_header_bytes,
        "max_message_bytes": s.max_message_bytes, "idle_timeout_ms": s.idle_timeout_ms,
        "ping_interval_ms": s.ping_interval_ms,
        "max_connections_per_ip_per_sec": s.max_connections_per_ip_per_sec,
        "max_handshakes_per_sec": s.max_handshakes_per_sec,
    })
}

pub(super) fn change_json(c: &Change) -> Value {
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
        // The secret itself is never shown, only that the cluster has one now.
        Some(change::Kind::AffinitySecret(_)) => json!({"affinity_secret": "set"}),
        None => Value::Null,
    }
}
