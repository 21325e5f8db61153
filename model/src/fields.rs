//! Field masks for partial updates: which fields of a pool or of the settings an update may
//! name, and how a masked update merges into the current value. The admin API checks masks
//! with these lists and the state machine merges with these functions, so the two agree.

use switchyard_proto::v1::{Pool, Settings};

/// A mask named a field that cannot be updated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown field {0:?}")]
pub struct UnknownField(pub String);

pub const POOL_FIELDS: &[&str] = &[
    "algorithm",
    "hash_key",
    "affinity",
    "affinity_ttl_ms",
    "health_check",
    "max_connections_per_backend",
    "drain_timeout_ms",
    "max_body_bytes",
    "response_timeout_ms",
    "backend_tls",
];

pub const SETTINGS_FIELDS: &[&str] = &[
    "handshake_timeout_ms",
    "max_header_bytes",
    "max_message_bytes",
    "idle_timeout_ms",
    "ping_interval_ms",
    "max_connections_per_ip_per_sec",
    "max_handshakes_per_sec",
];

/// `cur` with the fields `mask` names taken from `new`.
pub fn merge_pool(cur: &Pool, new: &Pool, mask: &[String]) -> Result<Pool, UnknownField> {
    let mut p = cur.clone();
    for field in mask {
        match field.as_str() {
            "algorithm" => p.algorithm = new.algorithm,
            "hash_key" => p.hash_key = new.hash_key.clone(),
            "affinity" => p.affinity = new.affinity.clone(),
            "affinity_ttl_ms" => p.affinity_ttl_ms = new.affinity_ttl_ms,
            "health_check" => p.health_check = new.health_check.clone(),
            "max_connections_per_backend" => p.max_connections_per_backend = new.max_connections_per_backend,
            "drain_timeout_ms" => p.drain_timeout_ms = new.drain_timeout_ms,
            "max_body_bytes" => p.max_body_bytes = new.max_body_bytes,
            "response_timeout_ms" => p.response_timeout_ms = new.response_timeout_ms,
            "backend_tls" => p.backend_tls = new.backend_tls.clone(),
            other => return Err(UnknownField(other.to_string())),
        }
    }
    Ok(p)
}

/// `cur` with the fields `mask` names taken from `new`; an empty mask takes all of `new`.
pub fn merge_settings(cur: &Settings, new: &Settings, mask: &[String]) -> Result<Settings, UnknownField> {
    if mask.is_empty() {
        return Ok(*new);
    }
    let mut s = *cur;
    for field in mask {
        match field.as_str() {
            "handshake_timeout_ms" => s.handshake_timeout_ms = new.handshake_timeout_ms,
            "max_header_bytes" => s.max_header_bytes = new.max_header_bytes,
            "max_message_bytes" => s.max_message_bytes = new.max_message_bytes,
            "idle_timeout_ms" => s.idle_timeout_ms = new.idle_timeout_ms,
            "ping_interval_ms" => s.ping_interval_ms = new.ping_interval_ms,
            "max_connections_per_ip_per_sec" => s.max_connections_per_ip_per_sec = new.max_connections_per_ip_per_sec,
            "max_handshakes_per_sec" => s.max_handshakes_per_sec = new.max_handshakes_per_sec,
            other => return Err(UnknownField(other.to_string())),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_field_merges_and_others_are_refused() {
        let new = Pool {
            name: "p".into(),
            algorithm: 3,
            hash_key: "ip".into(),
            affinity: "cookie:s".into(),
            affinity_ttl_ms: 9,
            health_check: Some(Default::default()),
            max_connections_per_backend: 4,
            drain_timeout_ms: 5,
            max_body_bytes: 6,
            response_timeout_ms: 7,
            backend_tls: Some(switchyard_proto::v1::BackendTls { enabled: true, ..Default::default() }),
            ..Default::default()
        };
        let cur = Pool { name: "p".into(), created_revision: 2, ..Default::default() };
        let all: Vec<String> = POOL_FIELDS.iter().map(|f| f.to_string()).collect();
        let merged = merge_pool(&cur, &new, &all).unwrap();
        assert_eq!(merged, Pool { created_revision: 2, ..new.clone() });
        assert_eq!(merge_pool(&cur, &new, &["name".into()]), Err(UnknownField("name".into())));

        let s = Settings { idle_timeout_ms: 1, ping_interval_ms: 2, ..Default::default() };
        let only_idle = merge_settings(&Settings::default(), &s, &["idle_timeout_ms".into()]).unwrap();
        assert_eq!((only_idle.idle_timeout_ms, only_idle.ping_interval_ms), (1, 0));
        assert_eq!(merge_settings(&Settings::default(), &s, &[]).unwrap(), s);
        let all: Vec<String> = SETTINGS_FIELDS.iter().map(|f| f.to_string()).collect();
        assert_eq!(merge_settings(&Settings::default(), &s, &all).unwrap(), s);
        assert!(merge_settings(&s, &s, &["bogus".into()]).is_err());
    }
}
