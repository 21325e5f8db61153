//! Clients authenticated at the edge, for real: JWTs signed here with ES256 and EdDSA keys,
//! checked by real proxies against key sets stored in the control plane, on plain HTTP and on
//! WebSocket: a valid token passes (its `sub` reaches the backend as a header and is the
//! affinity key), and a missing, expired, wrong-audience or unknown-key token is refused with
//! no backend contacted; rotating the key set takes effect on the proxies. And an auth
//! subrequest (NGINX's auth_request): 2xx lets through, 401 and 403 are passed back.

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use switchyard_tests::*;

const LONG: Duration = Duration::from_secs(15);
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "switchyard-test";

/// A signing key and its public half as a JWK.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn es256(kid: &str) -> SigningKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw(); // 0x04 || x || y
    let jwk =
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    SigningKey { kid: kid.into(), alg: Algorithm::ES256, key: EncodingKey::from_ec_der(&kp.serialize_der()), jwk }
}

fn ed25519(kid: &str) -> SigningKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(kp.public_key_raw())});
    SigningKey { kid: kid.into(), alg: Algorithm::EdDSA, key: EncodingKey::from_ed_der(&kp.serialize_der()), jwk }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A token from `k` with these claims on top of valid defaults.
fn token(k: &SigningKey, overrides: serde_json::Value) -> String {
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "ada", "exp": now() + 300});
    for (key, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = v.clone();
        }
    }
    let mut h = Header::new(k.alg);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, &claims, &k.key).unwrap()
}

fn jwks_file(dir: &std::path::Path, name: &str, keys: &[&SigningKey]) -> String {
    let path = dir.join(name);
    let set = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    std::fs::write(&path, set.to_string()).unwrap();
    path.display().to_string()
}

/// An auth endpoint: `Bearer good` is allowed, `Bearer forbidden` gets 403, anything else
/// 401 with a challenge of its own.
/// Also gives the count of connections it accepted.
async fn auth_endpoint() -> (String, tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                    let (status, challenge) = match auth {
                        "Bearer good" => (200, None),
                        "Bearer forbidden" => (403, None),
                        _ => (401, Some("Bearer realm=\"gate\"")),
                    };
                    let mut b = hyper::Response::builder().status(status);
                    if let Some(c) = challenge {
                        b = b.header("www-authenticate", c);
                    }
                    Ok::<_, Infallible>(b.body(Full::new(Bytes::new())).unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, task, accepted)
}

fn req(host: &str, path: &str, headers: &[(&str, &str)]) -> hyper::Request<Full<Bytes>> {
    let mut b = hyper::Request::get(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_auth_requests_are_checked_before_any_backend_is_contacted() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let eps = c.endpoints();
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, stranger) = (es256("k1"), ed25519("k2"), es256("k1"));
    let set1 = jwks_file(dir.path(), "set1.json", &[&k1]);
    let (b1, b2) = (HttpBackend::start("api-1").await, HttpBackend::start("api-2").await);
    let ws_backend = EchoBackend::start("ws-1").await;
    let (gate, _gate_task, gate_connections) = auth_endpoint().await;
    let gate_url = format!("http://{gate}/check");
    let jwt_flags = |set: &str| -> Vec<String> {
        ["--jwt-jwks", set, "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE, "--jwt-claim-header", "sub=X-User"]
            .map(String::from)
            .to_vec()
    };
    let cli = |args: Vec<String>| {
        let mut all = vec!["--endpoints".to_string(), eps.clone()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 0, "{all:?}: {err}");
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    cli(s(&["pool", "create", "api", "--affinity", "claim:sub"]));
    cli(s(&["backend", "add", "api", &b1.addr]));
    cli(s(&["backend", "add", "api", &b2.addr]));
    cli([s(&["route", "set", "api", "--pool", "api", "--host", "api.example"]), jwt_flags(&set1)].concat());
    cli(s(&["pool", "create", "ws"]));
    cli(s(&["backend", "add", "ws", &ws_backend.addr]));
    cli([s(&["route", "set", "ws", "--pool", "ws", "--host", "ws.example"]), jwt_flags(&set1)].concat());
    cli(s(&["route", "set", "gate", "--pool", "api", "--host", "gate.example", "--auth-request", &gate_url]));
    // A key set the control plane refuses: a symmetric key.
    let oct = dir.path().join("oct.json");
    std::fs::write(&oct, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
    let (code, _, err) =
        run_cli(&["--endpoints", &eps, "route", "set", "bad", "--pool", "api", "--jwt-jwks", oct.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("symmetric"), "{err}");
    // A route is replaced whole: setting a guarded one again without its auth flags would
    // open it to every client, so that takes --force.
    let (code, _, err) =
        run_cli(&["--endpoints", &eps, "route", "set", "gate", "--pool", "api", "--host", "gate.example"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has edge authentication and this request has none") && err.contains("--force"), "{err}");

    let proxy = ProxyProcess::spawn(&eps, &dir.path().join("p.cache"), "edge");
    let good = token(&k1, json!({}));
    let bearer = format!("Bearer {good}");
    let mut tx = eventually("the proxy to route with the key set", LONG, || async {
        let mut tx = http_client(&proxy.ws).await;
        let (code, _, _) = http_send(&mut tx, req("api.example", "/", &[("authorization", &bearer)])).await;
        (code == 200).then_some(tx)
    })
    .await;
    let contacted = || b1.requests.load(Relaxed) + b2.requests.load(Relaxed);

    // A valid token: through, its `sub` passed on (a client's own X-User is not), and the
    // same `sub` always reaches the same backend.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (code, _, body) =
            http_send(&mut tx, req("api.example", "/", &[("authorization", &bearer), ("x-user", "mallory")])).await;
        assert_eq!(code, 200);
        served.insert(body);
    }
    assert_eq!(served.len(), 1, "claim:sub affinity kept one backend: {served:?}");
    let backend = if served.contains("api-1") { &b1 } else { &b2 };
    assert_eq!(backend.last_header("x-user").as_deref(), Some("ada"));
    let no_sub = format!("Bearer {}", token(&k1, json!({"sub": null})));
    // (No `sub`, no affinity key: either backend may serve it; the one that did is checked.)
    let (code, _, name) =
        http_send(&mut tx, req("api.example", "/", &[("authorization", &no_sub), ("x-user", "mallory")])).await;
    assert_eq!(code, 200);
    let served_by = if name == "api-1" { &b1 } else { &b2 };
    assert_eq!(served_by.last_header("x-user"), None, "a client's own X-User was forwarded");

    // Refusals, each with no backend contacted.
    let before = contacted();
    for (what, headers, want) in [
        ("no token", vec![], 401),
        ("expired", vec![format!("Bearer {}", token(&k1, json!({"exp": now() - 600})))], 401),
        ("not yet valid", vec![format!("Bearer {}", token(&k1, json!({"nbf": now() + 600})))], 401),
        ("wrong audience", vec![format!("Bearer {}", token(&k1, json!({"aud": "someone-else"})))], 403),
        ("wrong issuer", vec![format!("Bearer {}", token(&k1, json!({"iss": "https://evil.example"})))], 403),
        ("unknown key", vec![format!("Bearer {}", token(&stranger, json!({})))], 401),
        ("not a token", vec!["Bearer abc.def.ghi".to_string()], 401),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|v| ("authorization", v.as_str())).collect();
        let (code, hdrs, _) = http_send(&mut tx, req("api.example", "/", &h)).await;
        assert_eq!(code, want, "{what}");
        if want == 401 {
            assert!(hdrs.get("www-authenticate").is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")), "{what}");
        }
    }
    // Two tokens, a good one first: the backend might read the other, so neither is taken.
    let twice = [("authorization", bearer.as_str()), ("authorization", "Bearer forged")];
    assert_eq!(http_send(&mut tx, req("api.example", "/", &twice)).await.0, 400);
    assert_eq!(contacted(), before, "a refused request reached a backend");

    // WebSocket: the same check on the upgrade.
    let ws_ok = ws_connect(&proxy.ws, "/", &[("host", "ws.example"), ("authorization", &bearer)]).await;
    assert_eq!(ws_ok.expect("an authenticated upgrade").1, "ws-1");
    // The client's Connection names its own headers away, not the claim header the proxy set
    // nor the Host it was routed by.
    let named = [("host", "ws.example"), ("authorization", &bearer), ("connection", "Upgrade, X-User, Host")];
    assert_eq!(ws_connect(&proxy.ws, "/", &named).await.expect("an upgrade naming X-User").1, "ws-1");
    let seen: std::collections::BTreeMap<String, String> =
        ws_backend.last_headers.lock().unwrap().iter().cloned().collect();
    assert_eq!(seen.get("x-user").map(String::as_str), Some("ada"), "{seen:?}");
    assert_eq!(seen.get("host").map(String::as_str), Some("ws.example"), "{seen:?}");
    let refused = ws_connect(&proxy.ws, "/", &[("host", "ws.example")]).await.expect_err("an upgrade without a token");
    assert!(refused.to_string().contains("401"), "{refused}");

    // Rotation: a set with only the Ed25519 key k2. k1's tokens stop working on the proxy,
    // k2's start.
    let set2 = jwks_file(dir.path(), "set2.json", &[&k2]);
    cli([s(&["route", "set", "api", "--pool", "api", "--host", "api.example"]), jwt_flags(&set2)].concat());
    let k2_bearer = format!("Bearer {}", token(&k2, json!({})));
    eventually("the rotated key set on the proxy", LONG, || async {
        let mut tx = http_client(&proxy.ws).await;
        let (code, _, _) = http_send(&mut tx, req("api.example", "/", &[("authorization", &k2_bearer)])).await;
        (code == 200).then_some(())
    })
    .await;
    assert_eq!(http_send(&mut tx, req("api.example", "/", &[("authorization", &bearer)])).await.0, 401);

    // The auth subrequest: allowed, refused (with the endpoint's challenge), forbidden.
    let before = contacted();
    let (code, _, _) = http_send(&mut tx, req("gate.example", "/", &[("authorization", "Bearer forbidden")])).await;
    assert_eq!(code, 403);
    let (code, h, _) = http_send(&mut tx, req("gate.example", "/", &[("authorization", "Bearer nope")])).await;
    assert_eq!(code, 401);
    assert_eq!(h.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer realm=\"gate\""));
    assert_eq!(contacted(), before, "a refused request reached a backend");
    let (code, _, _) = http_send(&mut tx, req("gate.example", "/", &[("authorization", "Bearer good")])).await;
    assert_eq!(code, 200);
    assert_eq!(contacted(), before + 1);
    // Subrequests reuse kept-alive connections: one per worker at most, not one each.
    for _ in 0..20 {
        let (code, _, _) = http_send(&mut tx, req("gate.example", "/", &[("authorization", "Bearer good")])).await;
        assert_eq!(code, 200);
    }
    let opened = gate_connections.load(Ordering::SeqCst);
    assert!(opened <= 2, "23 subrequests opened {opened} connections to the auth endpoint");

    // The proxy shows its routes' key sets.
    let status: serde_json::Value = serde_json::from_str(&http_get(&proxy.admin, "/status").await.unwrap()).unwrap();
    assert_eq!(status["edge_auth"]["api"]["keys"], 1, "{}", status["edge_auth"]);
    assert!(status["edge_auth"]["api"]["error"].is_null());
}

/// The status code of the answer to a request head sent raw, byte for byte: client libraries
/// tidy a path before they send it, and an attacker's client does not.
async fn raw_status(addr: &str, head: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("send the head");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(LONG, s.read(&mut buf)).await.expect("an answer in time").expect("read");
        assert!(n > 0, "closed without a status line: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_string();
    line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("a status line: {line:?}"))
}

fn get(host: &str, path: &str, auth: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")
}

fn upgrade(host: &str, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_names_a_guarded_route_does_not_take_an_open_route_past_its_check() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let eps = c.endpoints();
    let dir = tempfile::tempdir().unwrap();
    let app = HttpBackend::start("app").await;
    let live = EchoBackend::start("live").await;
    let (gate, _gate_task, _gate_connections) = auth_endpoint().await;
    let gate_url = format!("http://{gate}/check");
    let cli = |args: &[&str]| {
        let mut all = vec!["--endpoints", eps.as_str()];
        all.extend_from_slice(args);
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 0, "{all:?}: {err}");
    };
    cli(&["pool", "create", "app"]);
    cli(&["backend", "add", "app", &app.addr]);
    cli(&["pool", "create", "live"]);
    cli(&["backend", "add", "live", &live.addr]);
    // Each host: /admin behind the auth endpoint, everything else open, as an operator
    // guards an application's admin pages.
    for (host, pool) in [("paths.example", "app"), ("live.example", "live")] {
        let guarded = format!("{pool}-admin");
        cli(&[
            "route",
            "set",
            &guarded,
            "--pool",
            pool,
            "--host",
            host,
            "--path-prefix",
            "/admin",
            "--auth-request",
            &gate_url,
        ]);
        cli(&["route", "set", pool, "--pool", pool, "--host", host]);
    }
    let proxy = ProxyProcess::spawn(&eps, &dir.path().join("p.cache"), "edge");
    let p = proxy.ws.as_str();
    eventually("the proxy to guard /admin", LONG, || async {
        (raw_status(p, &get("live.example", "/admin", "none")).await == 401).then_some(())
    })
    .await;

    // Plain HTTP: every spelling of /admin is checked, and with a good token the backend gets
    // the path the proxy matched.
    let before = app.requests.load(Relaxed);
    for path in [
        "/admin/users",
        "/x/../admin/users",
        "//admin/users",
        "/%61dmin/users",
        "/./admin/users",
        "/%2e%2e/admin/users",
    ] {
        assert_eq!(raw_status(p, &get("paths.example", path, "Bearer nope")).await, 401, "{path}");
        assert_eq!(raw_status(p, &get("paths.example", path, "Bearer good")).await, 200, "{path}");
        assert_eq!(*app.last_target.lock().unwrap(), "/admin/users", "what the backend got for {path}");
    }
    // The host with its root dot is the same host, and its /admin the same guarded route.
    assert_eq!(raw_status(p, &get("paths.example.", "/admin/users", "Bearer nope")).await, 401);
    // Escapes with no one meaning across servers are refused, before any backend.
    let served = app.requests.load(Relaxed);
    assert_eq!(served, before + 6);
    for path in ["/admin%2fusers", "/x%2F..%2Fadmin", "/x%5c..%5cadmin", "/x\\..\\admin", "/a%zz"] {
        assert_eq!(raw_status(p, &get("paths.example", path, "Bearer good")).await, 400, "{path}");
    }
    assert_eq!(app.requests.load(Relaxed), served, "a refused path reached the backend");
    // An open path is served normalized; its query is the application's and is kept.
    assert_eq!(raw_status(p, &get("paths.example", "/open/./a//b/../c?q=/../x", "none")).await, 200);
    assert_eq!(*app.last_target.lock().unwrap(), "/open/a/c?q=/../x");

    // WebSocket: the same for the upgrade.
    for path in ["/x/../admin", "//admin", "/%61dmin", "/%2E%2E/admin/"] {
        assert_eq!(raw_status(p, &upgrade("live.example", path)).await, 401, "{path}");
    }
    assert_eq!(raw_status(p, &upgrade("live.example", "/x%2f..%2fadmin")).await, 400);
    assert_eq!(raw_status(p, &upgrade("live.example", "/x/../open")).await, 101);
}
