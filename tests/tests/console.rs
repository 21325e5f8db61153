//! The web console in a real headless Chromium against a real 3-node mTLS cluster and proxy:
//! a viewer's token signs in and sees the cluster, its proxy, pools and routes; a change made
//! with the CLI reaches the open page without a reload; a viewer is offered no drain and is
//! refused one asked for directly; an operator drains a backend through the confirmation, and
//! the last one in service only through a second confirmation that forces it; and
//! the proxy's own status page renders. Needs Chromium: `.ci/run` installs it (and sets
//! SWITCHYARD_REQUIRE_BROWSER so a missing browser fails there); elsewhere the test says it
//! was skipped.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_model::grpc::ClientTls;
use switchyard_tests::browser::{chromium, Browser};
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a CLI change may take to show on the open page. The feed pushes it at once
/// (typically tens of milliseconds); the margin is for a loaded 2-core CI machine.
const LIVE: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(20);

/// A raw HTTP/1.1 request: (status, body).
async fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string()))
}

fn sign_in(token: &str) -> String {
    format!(
        "(() => {{ const f = document.querySelector('#login-form'); if (!f || document.querySelector('#login').hidden) return false; \
         document.querySelector('#token').value = {}; f.requestSubmit(); return true; }})()",
        json!(token)
    )
}

/// The admin state cell of `pool/address` on the page, once the row is there.
fn state_of(backend: &str) -> String {
    format!("document.querySelector('[data-backend=\"{backend}\"] .state')?.textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster_live_and_lets_operators_not_viewers_drain() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_BROWSER").is_none(),
            "no Chromium found (apt-get install chromium, or set SWITCHYARD_CHROMIUM)"
        );
        eprintln!("skipped: no Chromium on PATH (apt-get install chromium)");
        return;
    };
    let _g = serial().await;
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    make_certs(c, &[("node", "node"), ("edge", "proxy"), ("ops", "admin")]);
    let node_flags = cert_flags(c, "node");
    let node_flags: Vec<&str> = node_flags.iter().map(String::as_str).collect();
    let admin_tls = ClientTls::from_files(&cert_files(c, "ops")).unwrap();
    let cluster = Cluster::start_with(3, &node_flags, admin_tls).await;
    let leader = cluster.leader(LONG).await;
    let eps = cluster.endpoints();
    let admin_flags = cert_flags(c, "ops");
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = vec!["--endpoints", &eps];
        all.extend(admin_flags.iter().map(String::as_str));
        all.extend(args);
        let (code, out, err) = run_cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    let token = |role: &str| {
        let out = cli(&["-o", "json", "token", "create", "--role", role, "--ttl", "1h", "--name", role]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["secret"].as_str().expect("secret").to_string()
    };
    let (viewer, operator) = (token("viewer"), token("operator"));

    let b1 = EchoBackend::start("console-b1").await;
    cli(&["pool", "create", "chat", "--affinity", "header:x-user"]);
    cli(&["backend", "add", "chat", &b1.addr]);
    cli(&["backend", "add", "chat", "127.0.0.1:9"]);
    cli(&["route", "set", "all", "--pool", "chat"]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::spawn_with(&eps, &dir.path().join("p.cache"), "edge-1", &cert_flags(c, "edge"));
    // A held connection, so the page has a connection and a session to count.
    let (_held, hello) = eventually("the proxy to route", LONG, || async {
        ws_connect(&proxy.ws, "/", &[("x-user", "ada")]).await.ok().filter(|(_, h)| h == "console-b1")
    })
    .await;
    assert_eq!(hello, "console-b1");

    // The console of a follower: any node serves it, and it shows what the leader applied.
    let follower = cluster.nodes.values().find(|n| n.id != leader).expect("a follower");
    let console = follower.metrics.clone();
    assert!(!console.is_empty(), "node {} reported no HTTP port", follower.id);

    // Without a token a TLS node's console answers 401, and a bad one is named.
    let (code, _) = http(&console, "GET", "/console/api/state", &[], "").await;
    assert_eq!(code, 401);
    let (code, body) = http(&console, "GET", "/console/api/state", &[("Authorization", "Bearer sy_nope")], "").await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("malformed bearer token"), "{body}");

    let mut page = Browser::launch(&chrome).await;
    page.open(&format!("http://{console}/")).await;
    page.wait_for("the sign-in form", &sign_in(&viewer), LONG).await;
    page.wait_for("three members on the page", "document.querySelectorAll('#members tbody tr').length === 3", LONG)
        .await;
    let who = page.eval("document.querySelector('#who').textContent").await;
    assert!(who.as_str().unwrap().contains("viewer"), "{who}");
    let leader_row =
        page.eval(&format!("document.querySelector('#members tr[data-id=\"{leader}\"]').textContent")).await;
    assert!(leader_row.as_str().unwrap().contains("leader"), "{leader_row}");
    page.wait_for("the proxy on the page", "document.querySelector('[data-proxy=\"edge-1\"]')?.textContent", LONG)
        .await;
    page.wait_for("the route on the page", "document.querySelector('[data-route=\"all\"]')?.textContent", LONG).await;
    let b1_row = format!("chat/{}", b1.addr);
    page.wait_for(
        "the held connection and its session counted on the backend's row",
        &format!(
            "(() => {{ const c = [...document.querySelectorAll('[data-backend=\"{b1_row}\"] td')].map(t => t.textContent); \
             return c[4] === '1' && c[5] === '1'; }})()"
        ),
        LONG,
    )
    .await;
    let audit = page.eval("document.querySelector('#audit').textContent").await;
    assert!(audit.as_str().unwrap().contains("needs the admin role"), "{audit}");

    // A change made with the CLI shows on the open page, without a reload.
    page.eval("window.__same_page = true").await;
    cli(&["backend", "add", "chat", "127.0.0.1:19"]);
    let done = Instant::now();
    let (_, _) = page
        .wait_for("the new backend on the page", &state_of("chat/127.0.0.1:19"), LIVE.saturating_sub(done.elapsed()))
        .await;
    let took = done.elapsed();
    page.wait_for(
        "the change in the live feed",
        "document.querySelector('#feed').textContent.includes('127.0.0.1:19')",
        LIVE,
    )
    .await;
    assert_eq!(page.eval("window.__same_page === true").await, json!(true), "the page was reloaded");
    eprintln!("a CLI change reached the page {took:?} after the CLI returned");

    // A viewer is offered no drain, and one asked for directly is refused.
    assert_eq!(page.eval("document.querySelectorAll('button.drain').length").await, json!(0));
    let refused = page
        .eval(&format!(
            "fetch('/console/api/backend-state', {{method: 'POST', headers: {{'Authorization': 'Bearer ' + \
             sessionStorage.getItem('switchyard-token'), 'Content-Type': 'application/json'}}, body: JSON.stringify({{pool: \
             'chat', address: '{}', state: 'draining'}})}}).then(r => r.status)",
            b1.addr
        ))
        .await;
    assert_eq!(refused, json!(403));
    assert!(cli(&["backend", "list", "chat"]).lines().any(|l| l.contains(&b1.addr) && l.contains("active")));

    // An operator signs in and drains through the confirmation.
    page.eval("document.querySelector('#signout').click()").await;
    page.wait_for("the sign-in form again", &sign_in(&operator), LONG).await;
    page.wait_for("the operator's page", "document.querySelector('#who').textContent.includes('operator')", LONG).await;
    page.wait_for(
        "the drain button",
        &format!("document.querySelector('[data-backend=\"{b1_row}\"] button.drain')?.click() ?? null, document.querySelector('#confirm').open"),
        LONG,
    )
    .await;
    page.eval("document.querySelector('#confirm-yes').click()").await;
    page.wait_for("the backend shown draining", &format!("{} === 'draining'", state_of(&b1_row)), LONG).await;
    assert!(
        cli(&["backend", "list", "chat"]).lines().any(|l| l.contains(&b1.addr) && l.contains("draining")),
        "the drain reached the cluster"
    );
    // The last backend in service is refused, and the page offers to force it behind a second
    // confirmation that quotes the refusal; forced, it drains.
    cli(&["backend", "drain", "chat", "127.0.0.1:9"]);
    let last_row = "chat/127.0.0.1:19";
    page.wait_for(
        "the other drain button",
        &format!("document.querySelector('[data-backend=\"{last_row}\"] button.drain')?.click() ?? null, document.querySelector('#confirm').open"),
        LONG,
    )
    .await;
    page.eval("document.querySelector('#confirm-yes').click()").await;
    page.wait_for(
        "the offer to force it",
        "document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent.includes('is the last of pool chat')",
        LONG,
    )
    .await;
    assert!(
        cli(&["backend", "list", "chat"]).lines().any(|l| l.contains("127.0.0.1:19") && l.contains("active")),
        "refused, it changed nothing"
    );
    page.eval("document.querySelector('#confirm-yes').click()").await;
    page.wait_for("the last backend shown draining", &format!("{} === 'draining'", state_of(last_row)), LONG).await;
    // The audit log (admin only) names the operator's token as who drained it.
    let audit = cli(&["audit"]);
    assert!(audit.lines().any(|l| l.contains("SetBackendState") && l.contains("operator")), "{audit}");

    // Another origin cannot use the operator's token through the browser's credentials (there
    // are none to borrow: the token is in a header), and is refused even with it.
    let bearer = format!("Bearer {operator}");
    let body = json!({"pool": "chat", "address": "127.0.0.1:9", "state": "disabled"}).to_string();
    let h =
        [("Authorization", bearer.as_str()), ("Content-Type", "application/json"), ("Origin", "http://evil.example")];
    let (code, _) = http(&console, "POST", "/console/api/backend-state", &h, &body).await;
    assert_eq!(code, 403);
    let (code, _) = http(&console, "POST", "/console/api/backend-state", &h[..1], &body).await;
    assert_eq!(code, 415, "a form-encoded post is refused");

    // The live feed ends once the token it was opened with is revoked (the page then
    // reconnects, and is refused).
    let out = cli(&["-o", "json", "token", "create", "--role", "viewer", "--ttl", "1h", "--name", "feed"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let (feed_id, feed) = (v["id"].as_str().expect("id").to_string(), v["secret"].as_str().expect("secret"));
    // Made through the leader: taken by this follower once it has applied the entry.
    let bearer = format!("Bearer {feed}");
    eventually("the follower to take the new token", LONG, || async {
        let (code, _) = http(&console, "GET", "/console/api/state", &[("Authorization", &bearer)], "").await;
        (code == 200).then_some(())
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(&console).await.expect("connect");
    let req = format!("GET /console/api/events HTTP/1.1\r\nHost: {console}\r\nAuthorization: Bearer {feed}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("retry: 2000") {
        let n = tokio::time::timeout(LONG, s.read(&mut buf)).await.expect("the feed begins").expect("read");
        assert!(n > 0, "the feed ended before it began: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    cli(&["token", "revoke", &feed_id]);
    // The body's end: its last chunk (or the connection's).
    let ended = tokio::time::timeout(LONG, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the feed of a revoked token still runs after {LONG:?}");

    // The proxy's admin port serves its own status page.
    page.open(&format!("http://{}/", proxy.admin)).await;
    page.wait_for("the proxy's page", "document.querySelector('#proxy-id')?.textContent === 'edge-1'", LONG).await;
    page.wait_for("its backends", &format!("document.querySelector('[data-backend=\"{b1_row}\"]')?.textContent"), LONG)
        .await;
}
