//! Checks every admin request before it reaches Raft, so a bad request costs one error and
//! nothing else. These are the syntactic checks; references (does the pool exist?) are checked
//! again deterministically when the command is applied, since only the log order decides them.

use std::net::IpAddr;

use switchyard_proto::v1::{AdminState, Algorithm, Backend, HealthCheck, HealthCheckKind, Pool, Settings};

use switchyard_model::KeySpec;

use crate::error::ApiError;

mod route;
pub use route::route;

/// Weight bounds: 0 takes no new connections (like HAProxy's weight 0); 10,000 leaves room
/// for fine ratios without overflow in the balancers.
pub const MAX_WEIGHT: u32 = 10_000;
pub const DEFAULT_WEIGHT: u32 = 1;
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_AFFINITY_TTL_MS: u64 = 30 * 60 * 1000;
const MAX_NAME: usize = 63;
const DAY_MS: u64 = 24 * 3600 * 1000;
/// The longest a session binding may last (a pool's `affinity_ttl_ms` at most).
pub const MAX_AFFINITY_TTL_MS: u64 = 30 * DAY_MS;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(msg.into())
}

/// A message field proto3 makes optional but a request needs.
pub fn required<T>(v: Option<T>, what: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| invalid(format!("{what} is required")))
}

/// Names of pools and routes: DNS-label-like, so they are safe in URLs, metrics and shells.
pub fn name(kind: &str, n: &str) -> Result<(), ApiError> {
    if n.is_empty() {
        return Err(invalid(format!("{kind} name must not be empty")));
    }
    if n.len() > MAX_NAME {
        return Err(invalid(format!("{kind} name {n:?} is longer than {MAX_NAME} characters")));
    }
    let ok_first = n.as_bytes()[0].is_ascii_alphanumeric();
    let ok_rest =
        n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.');
    if !ok_first || !ok_rest {
        return Err(invalid(format!(
            "{kind} name {n:?} must start with a letter or digit and use only a-z, 0-9, '-', '_', '.'"
        )));
    }
    Ok(())
}

/// A control-plane node to add: an id of 1 or more (replies use 0 for "no leader") and a
/// `host:port` address. Checked where the Admin API takes the call and again where a leader
/// takes it forwarded.
pub fn new_node(id: u64, addr: &str) -> Result<(), ApiError> {
    if id == 0 {
        return Err(invalid("node id must be 1 or more".to_string()));
    }
    address(addr).map_err(|_| invalid(format!("node address {addr:?} must be host:port")))
}

/// A backend address: `host:port`, host an IP (v6 in brackets) or a DNS name.
pub fn address(a: &str) -> Result<(), ApiError> {
    let bad = |why: &str| invalid(format!("backend address {a:?}: {why} (want host:port)"));
    let (host, port_text) = a.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port_text.parse().map_err(|_| bad("port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    // One spelling per address: `:029001` or `:+29001` beside `:29001` would be two backends
    // for one server, with its weight counted twice.
    if port.to_string() != port_text {
        return Err(bad("port written with a sign or leading zeros"));
    }
    if !host.starts_with('[') && host.contains(':') {
        return Err(bad("an IPv6 address goes in brackets"));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().map(|_| ()).map_err(|_| bad("bad IPv6 address"));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    hostname(host).map_err(|_| bad("bad host name"))
}

/// A new backend's address: [`address`], in the one spelling a server has, so the same
/// server cannot be added twice under two (with its weight counted twice). Calls that name an
/// existing backend take [`address`] alone, so one stored before this check stays reachable.
pub fn new_address(a: &str) -> Result<(), ApiError> {
    address(a)?;
    let bad = |why: &str| invalid(format!("backend address {a:?}: {why}"));
    let (host, _) = a.rsplit_once(':').expect("address() found the port");
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let canonical = v6.parse::<std::net::Ipv6Addr>().expect("address() parsed it").to_string();
        if canonical != v6 {
            return Err(bad(&format!("write the IPv6 address as [{canonical}]")));
        }
        return Ok(());
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad(&format!("write host names in lower case ({}): DNS ignores case", host.to_ascii_lowercase())));
    }
    // A resolver reads `127.000.0.1` or `10.1` as an IPv4 address (in octal, even), as URL
    // parsers do any host whose last label is a number: no real name ends in one.
    if host.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad(
            "a host name cannot end in a number; write an IPv4 address as four numbers without leading zeros",
        ));
    }
    Ok(())
}

fn hostname(h: &str) -> Result<(), ()> {
    if h.is_empty() || h.len() > 253 {
        return Err(());
    }
    for label in h.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(());
        }
    }
    Ok(())
}

/// A hash or affinity key spec: `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
pub fn key_spec(what: &str, s: &str) -> Result<KeySpec, ApiError> {
    s.parse().map_err(|e| invalid(format!("{what} {e}")))
}

/// The longest name a key spec may carry, the most a route's claim header may be. Checked
/// at the admin edge only: the state machine applies what older versions accepted the same
/// way on every version.
const MAX_KEY_NAME: usize = 128;

fn key_spec_length(what: &str, s: &str) -> Result<(), ApiError> {
    let name = s.split_once(':').map_or(s, |(_, n)| n);
    if name.len() > MAX_KEY_NAME {
        return Err(invalid(format!("{what} name is {} bytes, over the limit of {MAX_KEY_NAME}", name.len())));
    }
    Ok(())
}

/// What an admin's pool adds to [`pool`]'s checks, at the edge only (see [`MAX_KEY_NAME`]).
pub fn admin_pool(p: Pool) -> Result<Pool, ApiError> {
    key_spec_length("hash key", &p.hash_key)?;
    key_spec_length("affinity", &p.affinity)?;
    pool(p)
}

/// An update mask: every name one of `fields`, each once. Checked before the request reaches
/// the log, since the state machine refuses an unknown name only when it applies the entry
/// and a repeated name would be stored and replicated as many times as it was sent.
pub fn update_mask(what: &str, mask: &[String], fields: &[&str]) -> Result<(), ApiError> {
    for (i, f) in mask.iter().enumerate() {
        if !fields.contains(&f.as_str()) {
            let f = if f.len() > 64 {
                format!("{:?}... ({} bytes)", &f[..f.floor_char_boundary(64)], f.len())
            } else {
                format!("{f:?}")
            };
            return Err(invalid(format!("{what} field {f} cannot be updated; fields: {fields:?}")));
        }
        if mask[..i].contains(f) {
            return Err(invalid(format!("{what} field {f:?} is named twice in update_mask")));
        }
    }
    Ok(())
}

/// Validates a pool and fills defaults, returning the pool to store.
pub fn pool(mut p: Pool) -> Result<Pool, ApiError> {
    name("pool", &p.name)?;
    let algo = Algorithm::try_from(p.algorithm).map_err(|_| invalid(format!("unknown algorithm {}", p.algorithm)))?;
    if algo == Algorithm::Unspecified {
        p.algorithm = Algorithm::RoundRobin as i32;
    }
    if !p.hash_key.is_empty() {
        key_spec("hash key", &p.hash_key)?;
    }
    if algo == Algorithm::ConsistentHash && p.hash_key.is_empty() {
        p.hash_key = "ip".into();
    }
    if !p.affinity.is_empty() {
        key_spec("affinity", &p.affinity)?;
        if p.affinity_ttl_ms == 0 {
            p.affinity_ttl_ms = DEFAULT_AFFINITY_TTL_MS;
        }
    }
    if p.affinity_ttl_ms > MAX_AFFINITY_TTL_MS {
        return Err(invalid("affinity TTL must be at most 30 days"));
    }
    if p.drain_timeout_ms == 0 {
        p.drain_timeout_ms = DEFAULT_DRAIN_TIMEOUT_MS;
    }
    if p.drain_timeout_ms > 24 * 3600 * 1000 {
        return Err(invalid("drain timeout must be at most 24h"));
    }
    if p.max_body_bytes > 1 << 30 {
        return Err(invalid("max body must be at most 1 GiB"));
    }
    if p.response_timeout_ms > 3600 * 1000 {
        return Err(invalid("response timeout must be at most 1h"));
    }
    if let Some(hc) = &p.health_check {
        health_check(hc)?;
    }
    if let Some(t) = &p.backend_tls {
        switchyard_model::backend_tls::check(t).map_err(invalid)?;
    }
    p.created_revision = 0;
    p.updated_revision = 0;
    Ok(p)
}

/// The longest free-text value stored beside a backend or route (a zone, a label, a path):
/// it is replicated to every node and proxy and shown in every listing.
const MAX_TEXT: usize = 1024;

fn text(what: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > MAX_TEXT {
        return Err(invalid(format!("{what} is {} bytes, over the limit of {MAX_TEXT}", v.len())));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(format!("{what} {v:?} holds control characters")));
    }
    Ok(())
}

fn health_check(hc: &HealthCheck) -> Result<(), ApiError> {
    text("health check path", &hc.path)?;
    if !hc.path.is_empty() && !hc.path.starts_with('/') {
        return Err(invalid(format!("health check path {:?} must start with '/'", hc.path)));
    }
    if hc.path.contains(' ') {
        return Err(invalid(format!("health check path {:?} holds a space", hc.path)));
    }
    // As the probe's WebSocket client reads it: one it cannot parse fails every probe, and
    // the whole pool would be marked down.
    if !hc.path.is_empty() && format!("ws://backend{}", hc.path).parse::<http::Uri>().is_err() {
        return Err(invalid(format!(
            "health check path {:?} is not a valid request target (percent-encode what is not)",
            hc.path
        )));
    }
    let kind = HealthCheckKind::try_from(hc.kind).map_err(|_| invalid("unknown health check kind"))?;
    if kind == HealthCheckKind::HealthCheckNone {
        return Ok(());
    }
    if !(100..=3_600_000).contains(&hc.interval_ms) {
        return Err(invalid("health check interval must be between 100ms and 1h"));
    }
    if hc.timeout_ms == 0 || hc.timeout_ms > hc.interval_ms {
        return Err(invalid("health check timeout must be above 0 and at most the interval"));
    }
    if !(1..=100).contains(&hc.rise) || !(1..=100).contains(&hc.fall) {
        return Err(invalid("health check rise and fall must be between 1 and 100"));
    }
    Ok(())
}

pub fn weight(w: u32) -> Result<(), ApiError> {
    if w > MAX_WEIGHT {
        return Err(invalid(format!("weight {w} is above the maximum {MAX_WEIGHT}")));
    }
    Ok(())
}

/// Validates a new backend, returning it with its defaults.
pub fn backend(mut b: Backend) -> Result<Backend, ApiError> {
    name("pool", &b.pool)?;
    new_address(&b.address)?;
    weight(b.weight)?;
    if b.admin_state == AdminState::Unspecified as i32 {
        b.admin_state = AdminState::Active as i32;
    }
    admin_state(b.admin_state)?;
    text("zone", &b.zone)?;
    if b.labels.len() > 64 {
        return Err(invalid(format!("{} labels, over the limit of 64", b.labels.len())));
    }
    for (k, v) in &b.labels {
        text("label name", k)?;
        text("label value", v)?;
    }
    b.health = 0;
    b.updated_revision = 0;
    Ok(b)
}

pub fn admin_state(s: i32) -> Result<AdminState, ApiError> {
    match AdminState::try_from(s) {
        Ok(AdminState::Unspecified) | Err(_) => Err(invalid(format!("unknown backend state {s}"))),
        Ok(s) => Ok(s),
    }
}

/// The settings a fresh cluster starts with.
pub use switchyard_model::limits::default_settings;

pub fn settings(s: &Settings) -> Result<(), ApiError> {
    if !(100..=300_000).contains(&s.handshake_timeout_ms) {
        return Err(invalid("handshake timeout must be between 100ms and 5m"));
    }
    if !(1024..=1024 * 1024).contains(&s.max_header_bytes) {
        return Err(invalid("max header bytes must be between 1 KiB and 1 MiB"));
    }
    if !(125..=1024 * 1024 * 1024).contains(&s.max_message_bytes) {
        return Err(invalid("max message bytes must be between 125 B and 1 GiB"));
    }
    if s.idle_timeout_ms != 0 && !(1000..=7 * DAY_MS).contains(&s.idle_timeout_ms) {
        return Err(invalid("idle timeout must be 0 (off) or between 1s and 7 days"));
    }
    if s.ping_interval_ms != 0 && !(100..=3600 * 1000).contains(&s.ping_interval_ms) {
        return Err(invalid("ping interval must be 0 (off) or between 100ms and 1h"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_and_durations_are_bounded() {
        let mut b = Backend { pool: "p".into(), address: "127.0.0.1:80".into(), weight: 1, ..Default::default() };
        b.zone = "z".repeat(MAX_TEXT + 1);
        assert!(backend(b.clone()).is_err());
        b.zone = "eu-1".into();
        assert!(backend(b).is_ok());
        let hc = |path: &str| HealthCheck {
            kind: HealthCheckKind::HealthCheckWebsocket as i32,
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 1,
            fall: 1,
            path: path.into(),
            ..Default::default()
        };
        assert!(health_check(&hc("no slash")).is_err());
        assert!(health_check(&hc("/ok")).is_ok());
        let base = Settings {
            handshake_timeout_ms: 1000,
            max_header_bytes: 4096,
            max_message_bytes: 1 << 20,
            ..Default::default()
        };
        assert!(settings(&Settings { idle_timeout_ms: u64::MAX, ..base }).is_err());
        assert!(settings(&Settings { idle_timeout_ms: 60_000, ..base }).is_ok());
    }

    #[test]
    fn addresses_have_one_spelling() {
        for a in ["127.0.0.1:029001", "127.0.0.1:+29001", "::1:80"] {
            assert!(address(a).is_err(), "{a}");
        }
        for a in ["127.0.0.1:29001", "[::1]:80", "example.com:80"] {
            assert!(address(a).is_ok(), "{a}");
        }
    }

    #[test]
    fn new_backends_take_the_one_spelling_and_lookups_any() {
        for a in [
            "EXAMPLE.com:80",
            "[::A]:80",
            "[0::1]:80",
            "[0:0:0:0:0:0:0:1]:80",
            "127.000.0.1:80",
            "10.1:80",
            "host.42:80",
        ] {
            assert!(new_address(a).is_err(), "{a}");
            address(a).unwrap();
        }
        for a in ["example.com:80", "[::a]:80", "[::1]:80", "127.0.0.1:80", "echo-1.internal:8080", "a:1", "1a.b2:80"] {
            new_address(a).unwrap();
        }
    }

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:80", "[::1]:9000", "echo-1.internal:8080", "a:1"] {
            address(ok).unwrap();
        }
        for bad in ["127.0.0.1", "host:0", "host:65536", ":80", "a b:80", "-x:80", "[::1:80"] {
            assert!(matches!(address(bad), Err(ApiError::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn names_and_keys() {
        name("pool", "chat-1").unwrap();
        assert!(name("pool", "").is_err());
        assert!(name("pool", "Chat").is_err());
        assert!(name("pool", &"a".repeat(64)).is_err());
        key_spec("k", "header:X-User").unwrap();
        key_spec("k", "ip").unwrap();
        assert!(key_spec("k", "body:x").is_err());
        assert!(key_spec("k", "cookie:").is_err());
        let long = Pool { name: "p".into(), hash_key: format!("header:{}", "h".repeat(129)), ..Default::default() };
        assert!(pool(long.clone()).is_ok(), "the state machine applies what older versions accepted");
        assert!(admin_pool(long).is_err());
        admin_pool(Pool { name: "p".into(), hash_key: format!("header:{}", "h".repeat(128)), ..Default::default() })
            .unwrap();
    }

    #[test]
    fn health_check_paths_are_targets_a_client_can_send() {
        let hc = |path: &str| HealthCheck {
            kind: HealthCheckKind::HealthCheckWebsocket as i32,
            path: path.into(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 1,
            fall: 1,
            ..Default::default()
        };
        for ok in ["", "/", "/healthz", "/ws?probe=1", "/caf%C3%A9"] {
            health_check(&hc(ok)).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for bad in ["/a<b", "/a`b"] {
            let e = format!("{:?}", health_check(&hc(bad)).unwrap_err());
            assert!(e.contains("not a valid request target"), "{bad}: {e}");
        }
    }

    #[test]
    fn update_masks_name_known_fields_once() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        update_mask("pool", &m(&["algorithm", "affinity"]), &["algorithm", "affinity"]).unwrap();
        let twice = update_mask("pool", &m(&["algorithm", "algorithm"]), &["algorithm"]).unwrap_err();
        assert!(twice.to_string().contains("named twice"), "{twice}");
        let long = "x".repeat(100_000);
        let unknown = update_mask("settings", &m(&[&long]), &["idle_timeout_ms"]).unwrap_err().to_string();
        assert!(unknown.contains("100000 bytes") && unknown.len() < 400, "{unknown}");
    }
}
