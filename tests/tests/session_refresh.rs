//! Session refresh costs nothing in steady state: idle bound sessions are re-reported only
//! every third of their TTL, and the leader commits no refresh that would only move
//! `last_seen` by less than that, while a session in use still outlives its TTL, a
//! long-polling one (only plain requests, none open at a report) too.

use std::time::{Duration, Instant};

use switchyard_model::AffinitySecret;
use switchyard_proto::v1::*;
use switchyard_tests::*;

/// Sessions held open during the quiet window; `SWITCHYARD_IDLE_SESSIONS` raises it to measure.
fn idle_sessions() -> usize {
    std::env::var("SWITCHYARD_IDLE_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

/// The quiet window; `SWITCHYARD_IDLE_WINDOW_SECS` lengthens it past the first refreshes (a
/// third of the 60 s TTL after each binding) to measure the steady state.
fn idle_window() -> Duration {
    Duration::from_secs(std::env::var("SWITCHYARD_IDLE_WINDOW_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(4))
}

async fn session(addr: &str, secret: &AffinitySecret, pool: &str, key: &str) -> Option<SessionBinding> {
    let key = secret.hash(key.as_bytes()).expect("a secret");
    let req = GetSessionRequest { consistency: Consistency::Local as i32, pool: pool.into(), key };
    query(addr).get_session(req).await.ok().map(|r| r.into_inner())
}

async fn pool_with_route(addr: &str, name: &str, ttl_ms: u64, backend: &str) -> u64 {
    let mut a = admin(addr);
    let pool =
        Pool { name: name.into(), affinity: "header:X-Session".into(), affinity_ttl_ms: ttl_ms, ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    let b = Backend { pool: name.into(), address: backend.into(), weight: 1, ..Default::default() };
    a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    let route = Route { name: name.into(), path_prefix: format!("/{name}"), pool: name.into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_bound_sessions_commit_nothing_and_a_session_in_use_outlives_its_ttl() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let addr = c.nodes[&leader].addr.clone();
    let secret = affinity_secret(&addr).await;
    let b = EchoBackend::start("b1").await;
    let rev = pool_with_route(&addr, "idle", 60_000, &b.addr).await;
    let p = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p");
    p.wait_revision(rev).await;

    let n = idle_sessions();
    let binding = Instant::now();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("idle-{i}");
        let (ws, _) = ws_connect(&p.ws, "/idle", &[("X-Session", &key)]).await.unwrap();
        held.push(ws);
    }
    eventually("every idle session bound", Duration::from_secs(20), || async {
        (status(&addr).await?.session_count >= n as u64).then_some(())
    })
    .await;

    // A measurement window, not a wait for a condition: how many entries commit meanwhile.
    let window = idle_window();
    let before = status(&addr).await.unwrap();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = status(&addr).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let entries = after.committed_index - before.committed_index;
    let revisions = after.applied_revision - before.applied_revision;
    println!(
        "{n} idle bound sessions (opened and bound in {:.1} s): {entries} Raft entries in {secs:.1} s ({:.2}/s), {revisions} revisions",
        (started - binding).as_secs_f64(),
        entries as f64 / secs
    );
    // A session comes due for a refresh a third of its TTL (20 s here) after its binding was
    // acknowledged, and the proxy sends due refreshes only with its periodic report (every
    // second here): so at most an entry per second once the first sessions are due (thousands
    // of sessions take that long to open), and none before.
    let most = if binding.elapsed() >= Duration::from_secs(20) { window.as_secs() + 1 } else { 1 };
    assert!(entries <= most, "{n} idle sessions committed {entries} entries in {secs:.1} s");
    assert_eq!(after.session_count, n as u64, "no idle session expired");

    // One session in use, held for more than twice its TTL: refreshed, never expired. (Its
    // pool comes only now: a short TTL makes the proxy report more often.)
    let rev = pool_with_route(&addr, "short", 1_500, &b.addr).await;
    p.wait_revision(rev).await;
    let (_ws, _) = ws_connect(&p.ws, "/short", &[("X-Session", "kept")]).await.unwrap();
    let first = eventually("the kept session bound", Duration::from_secs(5), || async {
        session(&addr, &secret, "short", "kept").await
    })
    .await;
    eventually("the kept session refreshed past twice its TTL", Duration::from_secs(10), || async {
        let now = session(&addr, &secret, "short", "kept").await.expect("a session in use must not expire");
        (now.last_seen_ms >= first.last_seen_ms + 2 * 1_500).then_some(())
    })
    .await;
    drop(held);
}

/// A long-polling session makes only plain HTTP requests, each held by its backend and none
/// open when a report is taken, yet its binding is refreshed for as long as they come: it
/// outlives three TTLs on the backend it was bound to, never made anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_polling_session_outlives_its_ttl() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes.values().next().unwrap().addr.clone();
    let secret = affinity_secret(&addr).await;
    let (b1, b2) = (HttpBackend::start("b1").await, HttpBackend::start("b2").await);
    let mut a = admin(&addr);
    let pool =
        Pool { name: "poll".into(), affinity: "header:X-Session".into(), affinity_ttl_ms: 1_500, ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    for b in [&b1.addr, &b2.addr] {
        let b = Backend { pool: "poll".into(), address: b.clone(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    }
    let route = Route { name: "poll".into(), host: "poll.example".into(), pool: "poll".into(), ..Default::default() };
    let rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    let p = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p");
    p.wait_revision(rev).await;

    let poll = |path: &str| {
        hyper::Request::get(path)
            .header("host", "poll.example")
            .header("x-session", "poller")
            .body(http_body_util::Full::new(hyper::body::Bytes::new()))
            .unwrap()
    };
    let mut tx = http_client(&p.ws).await;
    let (code, _, served_by) = http_send(&mut tx, poll("/")).await;
    assert_eq!(code, 200);
    let first = eventually("the session bound", Duration::from_secs(5), || async {
        session(&addr, &secret, "poll", "poller").await
    })
    .await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3 * 1_500) {
        let (code, _, body) = http_send(&mut tx, poll("/hold?ms=400")).await;
        assert_eq!((code, body.as_str()), (200, served_by.as_str()), "the session moved after {:?}", started.elapsed());
    }
    let now = session(&addr, &secret, "poll", "poller").await.expect("a session in use must not expire");
    assert_eq!(now.created_revision, first.created_revision, "the binding expired and was made anew");
    assert!(now.last_seen_ms >= first.last_seen_ms + 1_500, "refreshed: {first:?} then {now:?}");
}
