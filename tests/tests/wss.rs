//! wss:// on the proxy, end to end: a real control plane and proxy process, real TLS
//! handshakes (rustls clients verifying against a test CA), real echo backends.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

struct Env {
    cluster: Cluster,
    backend: EchoBackend,
    proxy: ProxyProcess,
    ca: TestCa,
    dir: tempfile::TempDir,
}

/// One pool "chat" with one echo backend, routed for every host; `flags` builds the proxy's
/// wss flags from the CA and a directory for certificates.
async fn setup(flags: impl FnOnce(&TestCa, &Path) -> Vec<String>) -> Env {
    let cluster = Cluster::start(1, &[]).await;
    let addr = cluster.nodes[&1].addr.clone();
    let backend = EchoBackend::start("b1").await;
    let rev = route_all(&addr, "chat", &[&backend.addr]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let extra = flags(&ca, &certs);
    let proxy = ProxyProcess::spawn_with(&cluster.endpoints(), &dir.path().join("proxy.cache"), "p1", &extra);
    proxy.wait_revision(rev).await;
    Env { cluster, backend, proxy, ca, dir }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

async fn set_handshake_timeout(env: &Env, ms: u64) {
    let s = Settings { handshake_timeout_ms: ms, ..Default::default() };
    let req = UpdateSettingsRequest { settings: Some(s), update_mask: vec!["handshake_timeout_ms".into()] };
    let rev = admin(&env.cluster.nodes[&1].addr).update_settings(req).await.unwrap().into_inner().revision;
    env.proxy.wait_revision(rev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echo_with_sni_choosing_between_two_certificates_verified_against_the_ca() {
    let _g = serial().await;
    let mut a_der = Vec::new();
    let env = setup(|ca, certs| {
        // One pair by flags (the default: also for clients that send no SNI), one in the
        // directory beside a copy of the CA certificate, which is skipped.
        let (c, k, der) = ca.issue(certs, "a", &["a.example", "127.0.0.1"]);
        a_der = der;
        ca.issue(certs, "b", &["b.example", "*.apps.example"]);
        std::fs::copy(&ca.ca_file, certs.join("ca.crt")).unwrap();
        std::fs::write(certs.join("ca.key"), "not used").unwrap();
        let mut f = s(&["--listen", "127.0.0.1:0", "--wss-listen", "127.0.0.1:0", "--wss-cert-dir"]);
        f.push(certs.display().to_string());
        f.extend(["--wss-cert".into(), c.display().to_string(), "--wss-key".into(), k.display().to_string()]);
        f
    })
    .await;
    let b_der = switchyard_model::tls::load_certs(&env.dir.path().join("certs/b.crt")).unwrap()[0].to_vec();
    let cfg = env.ca.client_config();
    let p = env.proxy.wss.clone();
    assert!(!p.is_empty() && !env.proxy.ws.is_empty(), "both listeners: ws={} wss={}", env.proxy.ws, p);

    let (mut ws, hello, cert) = wss_connect(&p, "a.example", "/", cfg.clone()).await.unwrap();
    assert_eq!(hello, "b1");
    assert_eq!(cert.as_ref(), &a_der[..], "a.example gets a's certificate");
    echo_on(&mut ws, Message::text("over tls")).await.unwrap();
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i * 31 % 251) as u8).collect();
    echo_on(&mut ws, Message::binary(big)).await.unwrap();

    let (mut ws_b, _, cert) = wss_connect(&p, "b.example", "/", cfg.clone()).await.unwrap();
    assert_eq!(cert.as_ref(), &b_der[..], "b.example gets b's certificate");
    echo_on(&mut ws_b, Message::text("b")).await.unwrap();
    let (_, _, cert) = wss_connect(&p, "x.apps.example", "/", cfg.clone()).await.unwrap();
    assert_eq!(cert.as_ref(), &b_der[..], "the wildcard name gets b's certificate");
    // An IP address sends no SNI: the first pair is the default.
    let (_, _, cert) = wss_connect(&p, "127.0.0.1", "/", cfg.clone()).await.unwrap();
    assert_eq!(cert.as_ref(), &a_der[..], "no SNI gets the default certificate");

    // ALPN http/1.1 was agreed, and the ws listener still serves plain WebSocket.
    let (tls, _) = tls_connect(&p, "a.example", cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut plain, _) = ws_connect(&env.proxy.ws, "/", &[]).await.unwrap();
    echo(&mut plain, Message::text("plain")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_are_forwarded_as_https() {
    let _g = serial().await;
    let env = setup(|ca, certs| {
        let (c, k, _) = ca.issue(certs, "a", &["a.example"]);
        s(&[
            "--wss-listen",
            "127.0.0.1:0",
            "--wss-cert",
            &c.display().to_string(),
            "--wss-key",
            &k.display().to_string(),
        ])
    })
    .await;
    assert!(env.proxy.ws.is_empty(), "only --wss-listen: no ws listener");
    let (mut ws, _, _) = wss_connect(&env.proxy.wss, "a.example", "/x", env.ca.client_config()).await.unwrap();
    echo_on(&mut ws, Message::text("hi")).await.unwrap();
    let headers: BTreeMap<String, String> = env.backend.last_headers.lock().unwrap().iter().cloned().collect();
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert!(headers["forwarded"].starts_with("for=127.0.0.1;proto=https;host=\"a.example\""), "{headers:?}");
}

/// Open descriptors of a process: what a leaked connection would keep.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_stalled_tls_handshakes_are_closed_counted_and_others_served() {
    let _g = serial().await;
    let env = setup(|ca, certs| {
        ca.issue(certs, "a", &["a.example"]);
        s(&["--wss-listen", "127.0.0.1:0", "--wss-cert-dir", &certs.display().to_string()])
    })
    .await;
    set_handshake_timeout(&env, 1000).await;
    let p = env.proxy.wss.clone();
    let pid = env.proxy.pid();
    let before = fds(pid);

    // A stalled client: a TLS record header promising a ClientHello that never comes.
    let mut stalled = tokio::net::TcpStream::connect(&p).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    // Garbage instead of a ClientHello (a plain HTTP request), many times over.
    for _ in 0..20 {
        let mut g = tokio::net::TcpStream::connect(&p).await.unwrap();
        g.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        // The proxy ends it (with a TLS alert at most): the stream ends, with or without bytes.
        let _ = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut out)).await.expect("closed");
        assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1"), "no HTTP answer to garbage: {out:?}");
    }
    // Meanwhile a real client is served.
    let (mut ws, _, _) = wss_connect(&p, "a.example", "/", env.ca.client_config()).await.unwrap();
    echo_on(&mut ws, Message::text("served")).await.unwrap();

    // The stalled one is closed once the handshake timeout passes.
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut out)).await.expect("stall closed");
    let m = |r: &'static str| {
        let proxy = &env.proxy;
        async move { proxy.metric(&format!("switchyard_proxy_handshake_failures_total{{reason=\"{r}\"}}")).await }
    };
    assert!(m("tls_error").await.unwrap_or(0.0) >= 20.0);
    assert!(m("tls_timeout").await.unwrap_or(0.0) >= 1.0);
    // Nothing is left behind: descriptors go back to where they were (plus the live client's
    // two, which close with it).
    drop(ws);
    eventually("the proxy's descriptors back to before", Duration::from_secs(10), || async {
        (fds(pid) <= before).then_some(())
    })
    .await;
}

/// The per-IP rate is counted at accept, before TLS: one client opening connections that never
/// finish their handshake keeps no more of them than its rate allows (before, each held a slot
/// until the handshake timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_ip_rate_is_refused_before_tls() {
    let _g = serial().await;
    let env = setup(|ca, certs| {
        ca.issue(certs, "a", &["a.example"]);
        s(&["--wss-listen", "127.0.0.1:0", "--wss-cert-dir", &certs.display().to_string()])
    })
    .await;
    let set = Settings { max_connections_per_ip_per_sec: 3, ..Default::default() };
    let req = UpdateSettingsRequest { settings: Some(set), update_mask: vec!["max_connections_per_ip_per_sec".into()] };
    let rev = admin(&env.cluster.nodes[&1].addr).update_settings(req).await.unwrap().into_inner().revision;
    env.proxy.wait_revision(rev).await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(tokio::net::TcpStream::connect(&env.proxy.wss).await.unwrap());
    }
    // Refused ones are closed at once; admitted ones wait for a ClientHello.
    let mut open = 0;
    for c in &mut stalled {
        let mut b = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await.is_err() {
            open += 1;
        }
    }
    // Three a second: the 20 connections may straddle a second's edge.
    assert!((1..=6).contains(&open), "{open} of 20 stalled handshakes held");
    let failures = env.proxy.metric("switchyard_proxy_handshake_failures_total{reason=\"client_rate\"}").await;
    assert!(failures.unwrap_or(0.0) >= 14.0, "{failures:?}");
    // The next second, a real client is served.
    let (mut ws, _, _) = eventually("a wss client within the rate", Duration::from_secs(5), || async {
        wss_connect(&env.proxy.wss, "a.example", "/", env.ca.client_config()).await.ok()
    })
    .await;
    echo_on(&mut ws, Message::text("served")).await.unwrap();
}

/// `switchyard_proxy_tls_certificate_reloads_total{result="ok"}`.
async fn reloads(p: &ProxyProcess, result: &str) -> u64 {
    p.metric(&format!("switchyard_proxy_tls_certificate_reloads_total{{result=\"{result}\"}}")).await.unwrap_or(0.0)
        as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_1000_wss_connections_and_new_handshakes_get_the_new_certificate() {
    let _g = serial().await;
    let mut old = Vec::new();
    let env = setup(|ca, certs| {
        old = ca.issue(certs, "a", &["a.example"]).2;
        s(&["--wss-listen", "127.0.0.1:0", "--wss-cert-dir", &certs.display().to_string()])
    })
    .await;
    let p = env.proxy.wss.clone();
    let cfg = env.ca.client_config();
    let conns: Vec<_> = futures::stream::iter(0..1000)
        .map(|_| {
            let (p, cfg) = (p.clone(), cfg.clone());
            async move { wss_connect(&p, "a.example", "/", cfg).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut conns: Vec<_> = conns.into_iter().map(|c| c.expect("wss connect")).collect();
    assert!(conns.iter().all(|(_, _, c)| c.as_ref() == &old[..]));

    // Replace the pair on disk; the proxy notices on its next poll.
    let certs = env.dir.path().join("certs");
    let new = env.ca.issue_to(&certs.join("a.crt"), &certs.join("a.key"), &["a.example"]);
    assert_ne!(old, new);
    eventually("the new certificate served", Duration::from_secs(15), || {
        let (p, cfg) = (p.clone(), cfg.clone());
        let new = new.clone();
        async move {
            let (_, cert) = tls_connect(&p, "a.example", cfg).await.ok()?;
            (cert.as_ref() == &new[..]).then_some(())
        }
    })
    .await;
    assert!(reloads(&env.proxy, "ok").await >= 1);

    // Every connection made before the reload is still there and still echoes.
    let results = futures::stream::iter(conns.iter_mut().enumerate())
        .map(|(i, (ws, _, _))| async move { echo_on(ws, Message::text(format!("after reload {i}"))).await })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 0, "{failed} of 1000 connections lost across the reload");
    let (_, _, cert) = wss_connect(&p, "a.example", "/", cfg).await.unwrap();
    assert_eq!(cert.as_ref(), &new[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_file_keeps_the_old_set_and_sighup_reloads() {
    let _g = serial().await;
    let mut old = Vec::new();
    let env = setup(|ca, certs| {
        old = ca.issue(certs, "a", &["a.example"]).2;
        s(&["--wss-listen", "127.0.0.1:0", "--wss-cert-dir", &certs.display().to_string()])
    })
    .await;
    let (p, cfg) = (env.proxy.wss.clone(), env.ca.client_config());
    let certs = env.dir.path().join("certs");
    // SIGHUP with nothing changed on disk: a reload all the same (the mtime poll would not).
    env.proxy.signal("HUP");
    eventually("a reload on SIGHUP", Duration::from_secs(10), || async {
        (reloads(&env.proxy, "ok").await >= 1).then_some(())
    })
    .await;
    // A certificate that is not PEM: the reload fails and the old certificate stays.
    std::fs::write(certs.join("a.crt"), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    env.proxy.signal("HUP");
    eventually("a failed reload", Duration::from_secs(10), || async {
        (reloads(&env.proxy, "failed").await >= 1).then_some(())
    })
    .await;
    let (mut ws, _, cert) = wss_connect(&p, "a.example", "/", cfg.clone()).await.unwrap();
    assert_eq!(cert.as_ref(), &old[..], "still the old certificate");
    echo_on(&mut ws, Message::text("still served")).await.unwrap();
    // A key that does not match its certificate fails the same way.
    let other = env.ca.issue(env.dir.path(), "other", &["a.example"]);
    let good = env.ca.issue_to(&certs.join("a.crt"), &certs.join("a.key"), &["a.example"]);
    std::fs::copy(&other.1, certs.join("a.key")).unwrap();
    env.proxy.signal("HUP");
    eventually("a second failed reload", Duration::from_secs(10), || async {
        (reloads(&env.proxy, "failed").await >= 2).then_some(())
    })
    .await;
    let (_, cert) = tls_connect(&p, "a.example", cfg).await.unwrap();
    assert_eq!(cert.as_ref(), &old[..], "a mismatched key keeps the old certificate");
    assert_ne!(good, old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls_are_verified_and_an_unverifiable_one_gets_502_and_is_not_used() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (rogue, rogue_dir) = TestCa::untrusted(dir.path());
    let (gc, gk, _) = ca.issue(dir.path(), "good", &["127.0.0.1"]);
    let (bc, bk, _) = rogue.issue(&rogue_dir, "bad", &["127.0.0.1"]);
    let good = TlsEchoBackend::start("tls-good", &gc, &gk).await;
    let bad = TlsEchoBackend::start("tls-bad", &bc, &bk).await;

    let cluster = Cluster::start(1, &[]).await;
    let mut a = admin(&cluster.nodes[&1].addr);
    let mut rev = 0;
    for (pool, backend, host) in [("good", &good.addr, ""), ("bad", &bad.addr, "bad.example")] {
        a.create_pool(CreatePoolRequest { pool: Some(Pool { name: pool.into(), ..Default::default() }) })
            .await
            .unwrap();
        let b = Backend { pool: pool.into(), address: backend.clone(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
        let route = Route { name: pool.into(), pool: pool.into(), host: host.into(), ..Default::default() };
        rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    }
    let extra = s(&["--backend-tls", "--backend-tls-ca", &ca.ca_file.display().to_string()]);
    let proxy = ProxyProcess::spawn_with(&cluster.endpoints(), &dir.path().join("proxy.cache"), "p1", &extra);
    proxy.wait_revision(rev).await;

    let (mut ws, hello) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
    assert_eq!(hello, "tls-good");
    echo(&mut ws, Message::text("to a TLS backend")).await.unwrap();
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 253) as u8).collect();
    echo(&mut ws, Message::binary(big)).await.unwrap();

    let head = "GET / HTTP/1.1\r\nHost: bad.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut c = tokio::net::TcpStream::connect(&proxy.ws).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await.unwrap().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(bad.upgrades(), 0, "the unverified backend saw no WebSocket handshake");
    let st = proxy.status().await.unwrap();
    let b = st["backends"].as_array().unwrap().iter().find(|b| b["pool"] == "bad").cloned().unwrap();
    assert_eq!(b["ejected"], true, "{b}");
    assert_eq!(good.upgrades(), 1);
}
