//! Secrets stay secret: an affinity key that is a credential (a bearer token) is stored,
//! replicated, cached and shown only as its keyed hash, and affinity still holds across
//! proxies.

use std::path::Path;
use std::time::{Duration, SystemTime};

use switchyard_proto::v1::*;
use switchyard_tests::*;

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn cli(addr: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(bin("switchyard")).args(["--endpoints", addr]).args(args).output().unwrap();
    assert!(out.status.success(), "switchyard {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_affinity_key_is_never_stored_shown_or_cached_raw() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let secret = affinity_secret(&addr).await;
    let mut a = admin(&addr);
    let pool = Pool {
        name: "chat".into(),
        affinity: "header:Authorization".into(),
        affinity_ttl_ms: 600_000,
        ..Default::default()
    };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    let bs = [EchoBackend::start("b1").await, EchoBackend::start("b2").await, EchoBackend::start("b3").await];
    for b in &bs {
        let backend = Backend { pool: "chat".into(), address: b.addr.clone(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap();
    }
    let route = Route { name: "all".into(), pool: "chat".into(), ..Default::default() };
    let rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    let caches = [c.dir.path().join("p1.cache"), c.dir.path().join("p2.cache")];
    let p1 = ProxyProcess::spawn(&c.endpoints(), &caches[0], "p1");
    let p2 = ProxyProcess::spawn(&c.endpoints(), &caches[1], "p2");
    p1.wait_revision(rev).await;
    p2.wait_revision(rev).await;

    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
    let token = format!("sy-token-{nanos:x}-do-not-store");
    let header = format!("Bearer {token}");
    let (_ws, home) = ws_connect(&p1.ws, "/", &[("Authorization", &header)]).await.unwrap();
    let hash = secret.hash(header.as_bytes()).unwrap();
    let bound = eventually("the binding to replicate", Duration::from_secs(10), || async {
        let req = GetSessionRequest { consistency: 0, pool: "chat".into(), key: hash.clone() };
        query(&c.nodes[&2].addr).get_session(req).await.ok().map(|r| r.into_inner())
    })
    .await;
    assert_eq!(bound.backend, bs.iter().find(|b| b.name == home).unwrap().addr);
    // Affinity still holds through the other proxy.
    for _ in 0..3 {
        let (_ws2, again) = ws_connect(&p2.ws, "/", &[("Authorization", &header)]).await.unwrap();
        assert_eq!(again, home, "the token's session returns to its backend through proxy 2");
    }

    for format in ["table", "json"] {
        let out = cli(&addr, &["-o", format, "session", "list", "chat"]);
        assert!(out.contains(&hash), "session list ({format}) shows the hash:\n{out}");
        assert!(!out.contains(&token), "session list ({format}) shows the token:\n{out}");
    }
    let topology = query(&addr).get_topology(ReadRequest { consistency: 0 }).await.unwrap().into_inner();
    assert!(topology.affinity_secret.is_empty(), "the Query API never shows the hashing secret");
    assert_eq!(topology.sessions.len(), 1);

    for cache in &caches {
        let bytes = eventually("the cache to hold the binding", Duration::from_secs(10), || async {
            std::fs::read(cache).ok().filter(|b| contains(b, hash.as_bytes()))
        })
        .await;
        assert!(!contains(&bytes, token.as_bytes()), "{} holds the token", cache.display());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private to its owner", cache.display());
    }

    // Stopped cleanly, so sled has written everything it holds to its files.
    for id in [1, 2, 3] {
        assert!(c.node(id).terminate().success());
    }
    let mut checked = 0;
    for id in [1, 2, 3] {
        for f in files(&c.nodes[&id].data_dir) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(!contains(&bytes, token.as_bytes()), "{} holds the token", f.display());
            checked += bytes.len();
        }
    }
    assert!(checked > 0, "the data dirs hold something");
}
