//! Clients checked at the edge, per route, before any backend is contacted: a JWT verified
//! against the route's key set, or an HTTP endpoint asked with the client's credentials
//! (NGINX's `auth_request`: 2xx lets the request through, 401 and 403 are passed back).
//!
//! A key set that a proxy cannot use (the control plane validated it, so this takes a
//! newer control plane or a bug) keeps the route on its last good keys, and `/status` says
//! so; a route that never had good keys refuses every token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, Validation};
use serde_json::{Map, Value};
use switchyard_model::edge_auth::{self as model, Key};
use switchyard_model::KeySpec;
use switchyard_proto::v1::{route_auth, Route};

use crate::handshake::{Claims, Upgrade};
use crate::state::ProxyState;

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

type Keys = Arc<Vec<Key>>;

/// A route's check, compiled from its config.
pub enum EdgeAuth {
    Jwt(Jwt),
    Request {
        authority: String,
        path: String,
        timeout: Duration,
    },
    /// A kind this proxy does not know (a newer control plane's): every client refused.
    Unknown,
}

pub struct Jwt {
    keys: Arc<Vec<Key>>,
    from: KeySpec,
    issuers: Vec<String>,
    audiences: Vec<String>,
    claim_headers: Vec<(String, String)>,
}

/// What a check decided.
pub enum Verdict {
    /// Go on, with these headers set for the backend (claims a route passes on; `None`: a
    /// claim the token lacks, whose header is removed all the same, so a client cannot send
    /// it itself) and the verified claims (for `claim:NAME` affinity).
    Allow { headers: Vec<(String, Option<String>)>, claims: Option<Claims> },
    /// Answer with this status; `challenge` adds `WWW-Authenticate`.
    Deny { status: u16, why: &'static str, challenge: Option<String> },
}

fn deny(status: u16, why: &'static str) -> Verdict {
    let challenge = (status == 401).then(|| format!("Bearer error=\"invalid_token\", error_description=\"{why}\""));
    Verdict::Deny { status, why, challenge }
}

/// The last good keys of each route's key set, and why a newer one was not taken.
#[derive(Default)]
pub struct KeyCache {
    /// By route: the key set's text and its keys.
    good: Mutex<HashMap<String, (String, Keys)>>,
    errors: Mutex<HashMap<String, String>>,
}

impl KeyCache {
    fn keys(&self, route: &str, jwks: &str) -> Arc<Vec<Key>> {
        let mut good = self.good.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((text, keys)) = good.get(route) {
            if text == jwks {
                // The set in use again (after one that did not load): nothing is wrong now.
                errors.remove(route);
                return keys.clone();
            }
        }
        match model::compile_jwks(jwks) {
            Ok(keys) => {
                let keys = Arc::new(keys);
                good.insert(route.to_string(), (jwks.to_string(), keys.clone()));
                errors.remove(route);
                keys
            }
            Err(e) => {
                tracing::error!(route, "cannot use the route's key set, keeping its last good keys: {e}");
                errors.insert(route.to_string(), e);
                good.get(route).map(|(_, k)| k.clone()).unwrap_or_default()
            }
        }
    }

    /// For `/status`: each route with keys, how many, and the error of a set not taken.
    pub fn status(&self) -> Value {
        let good = self.good.lock().unwrap_or_else(|e| e.into_inner());
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes: Vec<&String> = good.keys().chain(errors.keys()).collect();
        routes.sort();
        routes.dedup();
        let out: Map<String, Value> = routes
            .into_iter()
            .map(|r| {
                let keys = good.get(r).map_or(0, |(_, k)| k.len());
                (r.clone(), serde_json::json!({ "keys": keys, "error": errors.get(r) }))
            })
            .collect();
        Value::Object(out)
    }
}

/// A route's check, or none. Settings a proxy cannot use (validated by the control plane, so
/// only a newer one's) leave the route refusing every client rather than open.
pub fn compile(route: &Route, cache: &KeyCache) -> Option<Arc<EdgeAuth>> {
    let Some(kind) = route.auth.as_ref()?.kind.as_ref() else { return Some(Arc::new(EdgeAuth::Unknown)) };
    Some(Arc::new(match kind {
        route_auth::Kind::Jwt(j) => EdgeAuth::Jwt(Jwt {
            keys: cache.keys(&route.name, &j.jwks),
            from: model::token_source(j).unwrap_or(KeySpec::Header("Authorization".into())),
            issuers: j.issuers.clone(),
            audiences: j.audiences.clone(),
            claim_headers: j.claim_headers.iter().map(|(c, h)| (c.clone(), h.clone())).collect(),
        }),
        route_auth::Kind::Request(r) => {
            let (authority, path) = model::subrequest_target(r).unwrap_or_else(|_| ("0.0.0.0:0".into(), "/".into()));
            let ms = if r.timeout_ms == 0 { model::DEFAULT_SUBREQUEST_MS } else { r.timeout_ms };
            EdgeAuth::Request { authority, path, timeout: Duration::from_millis(ms.into()) }
        }
    }))
}

/// Runs a route's check on a request.
pub async fn check(auth: &EdgeAuth, up: &Upgrade, client: IpAddr, state: &Arc<ProxyState>) -> Verdict {
    match auth {
        EdgeAuth::Jwt(j) => verify(j, up),
        EdgeAuth::Request { authority, path, timeout } => {
            subrequest(authority, path, *timeout, up, client, state).await
        }
        EdgeAuth::Unknown => Verdict::Deny {
            status: 503,
            why: "the route's authentication is of a kind this proxy does not know",
            challenge: None,
        },
    }
}

fn token(from: &KeySpec, up: &Upgrade) -> Option<String> {
    match from {
        KeySpec::Header(name) => {
            let v = std::str::from_utf8(up.header(name)?).ok()?.trim();
            if name.eq_ignore_ascii_case("authorization") {
                let (scheme, t) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| t.trim().to_string())
            } else {
                Some(v.to_string())
            }
        }
        KeySpec::Cookie(name) => up.cookie(name),
        KeySpec::Query(name) => up.query_param(name),
        _ => None,
    }
    .filter(|t| !t.is_empty())
}

/// Whether the request carries the token's source more than once: the proxy verifies one,
/// and the backend might read another (the last `Authorization`, PHP's last query value),
/// so such a request is refused rather than guessed at.
fn ambiguous(from: &KeySpec, up: &Upgrade) -> bool {
    match from {
        KeySpec::Header(name) => up.headers.all(name).count() > 1,
        KeySpec::Cookie(name) => {
            let pairs = up.headers.all("cookie").filter_map(|v| std::str::from_utf8(v).ok()).flat_map(|v| v.split(';'));
            pairs.filter(|kv| kv.trim().split_once('=').is_some_and(|(k, _)| k == name)).count() > 1
        }
        KeySpec::Query(name) => {
            let keys =
                up.query().into_iter().flat_map(|q| q.split('&')).map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k));
            keys.filter(|k| percent_decoded_is(k, name)).count() > 1
        }
        _ => false,
    }
}

/// Whether the query key `k`, percent-decoded, is `name` (`access%5Ftoken` is
/// `access_token` to the backend).
fn percent_decoded_is(k: &str, name: &str) -> bool {
    let (mut k, mut name) = (k.as_bytes(), name.as_bytes());
    loop {
        match (k, name) {
            ([], []) => return true,
            ([b'%', h, l, rest @ ..], [c, more @ ..]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let hex = |d: u8| (d as char).to_digit(16).unwrap_or(0);
                if hex(*h) * 16 + hex(*l) != u32::from(*c) {
                    return false;
                }
                (k, name) = (rest, more);
            }
            ([a, rest @ ..], [c, more @ ..]) if a == c => (k, name) = (rest, more),
            _ => return false,
        }
    }
}

fn verify(j: &Jwt, up: &Upgrade) -> Verdict {
    if ambiguous(&j.from, up) {
        return deny(400, "more than one token");
    }
    let Some(token) = token(&j.from, up) else { return deny(401, "no token") };
    let Ok(header) = decode_header(&token) else { return deny(401, "malformed token") };
    if matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return deny(401, "symmetric signatures are not accepted");
    }
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp"]);
    if j.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&j.audiences);
    }
    if !j.issuers.is_empty() {
        v.set_issuer(&j.issuers);
    }
    let candidates = j
        .keys
        .iter()
        .filter(|k| k.algorithms.contains(&header.alg))
        .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid);
    let mut outcome = deny(401, "unknown signing key");
    for k in candidates {
        match decode::<Map<String, Value>>(&token, &k.key, &v) {
            Ok(data) => {
                let claims = Arc::new(data.claims);
                let headers = j
                    .claim_headers
                    .iter()
                    .map(|(claim, header)| {
                        let v = match claims.get(claim) {
                            Some(Value::String(s)) => Some(s.clone()),
                            Some(Value::Number(n)) => Some(n.to_string()),
                            Some(Value::Bool(b)) => Some(b.to_string()),
                            _ => None,
                        };
                        // A claim that cannot be a header value is left out rather than mangled.
                        (header.clone(), v.filter(|v| !v.bytes().any(|b| b.is_ascii_control())))
                    })
                    .collect();
                return Verdict::Allow { headers, claims: Some(claims) };
            }
            Err(e) => {
                outcome = match e.kind() {
                    ErrorKind::ExpiredSignature => deny(401, "token expired"),
                    ErrorKind::ImmatureSignature => deny(401, "token not valid yet"),
                    ErrorKind::InvalidAudience => deny(403, "token not for this audience"),
                    ErrorKind::InvalidIssuer => deny(403, "token from an issuer not accepted here"),
                    ErrorKind::MissingRequiredClaim(_) => deny(401, "token without exp"),
                    ErrorKind::InvalidSignature => deny(401, "bad signature"),
                    _ => deny(401, "invalid token"),
                };
                // Another key with the same kid (or none) may still verify it; a claim
                // failure does not depend on the key.
                if !matches!(e.kind(), ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm) {
                    return outcome;
                }
            }
        }
    }
    outcome
}

/// Headers an auth endpoint gets: the client's credentials and what it asked for.
const PASSED: [&str; 3] = ["authorization", "cookie", "user-agent"];
/// An auth answer's body read past this is given up on, and its connection with it.
const MAX_AUTH_BODY: usize = 64 * 1024;

/// Kept-alive connections to auth endpoints, per worker thread (a worker's connections are
/// driven by its own runtime) and endpoint: a connection a subrequest makes a new TCP
/// connection each (every long-poll of an authenticated route is one) left a socket in
/// TIME_WAIT per request, and a few hundred a second ran the proxy out of local ports for
/// that endpoint, failing every authenticated route closed. Idle ones hold a descriptor each,
/// so they count in the descriptor budget beside the plain-HTTP pools (`pooled`, see
/// [`crate::fds::reserve`]), and go with them when it runs short or they idle too long.
pub(crate) mod pool {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::time::{Duration, Instant};

    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper::client::conn::http1::SendRequest;

    pub type Sender = SendRequest<Empty<Bytes>>;
    /// Closed rather than reused after this idle (an endpoint that closes idle connections
    /// first races a request sent at that moment; see `plain::backends`).
    const IDLE_FOR: Duration = Duration::from_secs(4);
    /// Idle connections kept per endpoint and worker.
    const MAX_IDLE: usize = 32;
    /// Endpoints kept per worker: routes name them, but a bound keeps a bad config small.
    const MAX_ENDPOINTS: usize = 64;

    thread_local! {
        static IDLE: RefCell<HashMap<String, Vec<(Sender, Instant)>>> = RefCell::new(HashMap::new());
    }

    pub fn checkout(authority: &str, pooled: &AtomicUsize) -> Option<Sender> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(authority)?;
            prune(list, Instant::now(), pooled);
            let i = list.iter().rposition(|(tx, _)| tx.is_ready())?;
            pooled.fetch_sub(1, Relaxed);
            Some(list.swap_remove(i).0)
        })
    }

    /// Keeps `tx` for the next subrequest to `authority`; true when it was kept.
    pub fn checkin(authority: &str, tx: Sender, pooled: &AtomicUsize) -> bool {
        if tx.is_closed() {
            return false;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            if !idle.contains_key(authority) && idle.len() >= MAX_ENDPOINTS {
                return false;
            }
            let list = idle.entry(authority.to_string()).or_default();
            if list.len() >= MAX_IDLE {
                return false;
            }
            list.push((tx, Instant::now()));
            pooled.fetch_add(1, Relaxed);
            true
        })
    }

    /// Closes this worker's idle connections past [`IDLE_FOR`] (or closed by their endpoint).
    pub fn expire(now: Instant, pooled: &AtomicUsize) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            idle.values_mut().for_each(|list| prune(list, now, pooled));
            idle.retain(|_, list| !list.is_empty());
        })
    }

    /// Drops `list`'s connections idle past [`IDLE_FOR`] or closed by their endpoint.
    fn prune(list: &mut Vec<(Sender, Instant)>, now: Instant, pooled: &AtomicUsize) {
        let before = list.len();
        list.retain(|(tx, at)| now.saturating_duration_since(*at) < IDLE_FOR && !tx.is_closed());
        pooled.fetch_sub(before - list.len(), Relaxed);
    }

    /// Closes every idle connection this worker holds (the descriptor budget is short).
    pub fn close_idle(pooled: &AtomicUsize) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            pooled.fetch_sub(idle.values().map(Vec::len).sum(), Relaxed);
            idle.clear();
        })
    }
}

async fn connect(authority: &str) -> Option<pool::Sender> {
    let tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    Some(tx)
}

async fn subrequest(
    authority: &str,
    path: &str,
    timeout: Duration,
    up: &Upgrade,
    client: IpAddr,
    state: &Arc<ProxyState>,
) -> Verdict {
    let pooled = &state.runtime.pooled;
    let request = || {
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header("x-original-uri", up.target.as_str())
            .header("x-original-host", up.host.as_str())
            .header("x-forwarded-for", client.to_string());
        for (n, v) in up.headers.iter() {
            if PASSED.iter().any(|p| n.eq_ignore_ascii_case(p)) {
                req = req.header(n, v);
            }
        }
        req.body(Empty::<Bytes>::new()).ok()
    };
    let ask = async {
        // A kept-alive connection the endpoint closed just now fails: the GET goes once more
        // on a new one (it changes nothing).
        let resp = match pool::checkout(authority, pooled) {
            Some(mut tx) => match tx.send_request(request()?).await {
                Ok(r) => Some((r, tx)),
                Err(_) => None,
            },
            None => None,
        };
        let (resp, tx) = match resp {
            Some(r) => r,
            None => {
                let mut tx = connect(authority).await?;
                (tx.send_request(request()?).await.ok()?, tx)
            }
        };
        let status = resp.status().as_u16();
        let challenge =
            resp.headers().get(hyper::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
        // The answer's body is not used; read whole (a few KiB at most), the connection is
        // kept for the next subrequest.
        let body = http_body_util::Limited::new(resp.into_body(), MAX_AUTH_BODY);
        if body.collect().await.is_ok() && pool::checkin(authority, tx, pooled) {
            crate::plain::sweep_here(state);
        }
        Some((status, challenge))
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Some((s, _))) if (200..300).contains(&s) => Verdict::Allow { headers: Vec::new(), claims: None },
        Ok(Some((401, challenge))) => Verdict::Deny { status: 401, why: "refused by the auth endpoint", challenge },
        Ok(Some((403, _))) => Verdict::Deny { status: 403, why: "refused by the auth endpoint", challenge: None },
        Ok(Some(_)) => {
            Verdict::Deny { status: 500, why: "the auth endpoint answered neither 2xx, 401 nor 403", challenge: None }
        }
        Ok(None) => Verdict::Deny { status: 502, why: "the auth endpoint could not be asked", challenge: None },
        Err(_) => Verdict::Deny { status: 504, why: "the auth endpoint did not answer in time", challenge: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An auth whose kind did not decode (a newer control plane's) is a check that refuses,
    /// never no check: the route stays closed.
    #[test]
    fn an_auth_of_an_unknown_kind_refuses_rather_than_opens() {
        let r = Route {
            name: "r".into(),
            auth: Some(switchyard_proto::v1::RouteAuth { kind: None }),
            ..Default::default()
        };
        let a = compile(&r, &KeyCache::default()).expect("a check, not none");
        assert!(matches!(*a, EdgeAuth::Unknown));
        assert!(compile(&Route { name: "open".into(), ..Default::default() }, &KeyCache::default()).is_none());
    }

    const EC: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn a_set_that_does_not_load_keeps_the_last_good_keys_and_says_so() {
        let cache = KeyCache::default();
        assert_eq!(cache.keys("api", EC).len(), 1);
        // A key type this proxy cannot use (say, from a newer control plane).
        let odd = EC.replace("P-256", "secp256k1");
        assert_eq!(cache.keys("api", &odd).len(), 1, "the last good key stays");
        let s = cache.status();
        assert_eq!(s["api"]["keys"], 1);
        assert!(s["api"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
        // A route that never had good keys has none: every token is refused.
        assert!(cache.keys("new", &odd).is_empty());
        // A good set again clears the error.
        cache.keys("api", EC);
        assert!(cache.status()["api"]["error"].is_null());
    }

    /// A token's source given twice is ambiguous: the proxy would verify one and the backend
    /// might read the other.
    #[test]
    fn a_token_source_given_twice_is_ambiguous() {
        let up = |target: &str, extra: &str| {
            let head = format!(
                "GET {target} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            crate::handshake::parse_request(head.as_bytes()).unwrap()
        };
        let auth = KeySpec::Header("authorization".into());
        assert!(!ambiguous(&auth, &up("/", "Authorization: Bearer a\r\n")));
        assert!(ambiguous(&auth, &up("/", "Authorization: Bearer a\r\nauthorization: Bearer b\r\n")));
        let cookie = KeySpec::Cookie("tok".into());
        assert!(!ambiguous(&cookie, &up("/", "Cookie: tok=a; other=b\r\n")));
        assert!(ambiguous(&cookie, &up("/", "Cookie: tok=a; tok=b\r\n")));
        assert!(ambiguous(&cookie, &up("/", "Cookie: tok=a\r\nCookie: x=1; tok=b\r\n")));
        let query = KeySpec::Query("access_token".into());
        assert!(!ambiguous(&query, &up("/?access_token=a&x=access_token", "")));
        assert!(ambiguous(&query, &up("/?access_token=a&access_token=b", "")));
        assert!(ambiguous(&query, &up("/?access_token=a&access%5Ftoken=b", "")), "the backend decodes %5F");
        assert!(ambiguous(&query, &up("/?access_token=a&access%5ftoken", "")));
        assert!(!ambiguous(&query, &up("/?access_token=a&access%5Gtoken=b", "")));
    }
}
