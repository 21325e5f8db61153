//! Replicated session affinity: bindings live in Raft, so a returning session reaches the same
//! backend through any proxy, across pool changes, proxy loss and leader loss.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_model::AffinitySecret;
use switchyard_proto::v1::*;
use switchyard_tests::*;

/// The binding of raw session key `key`, looked up by its hash (all the cluster stores).
async fn session(addr: &str, secret: &AffinitySecret, key: &str) -> Option<SessionBinding> {
    let key = secret.hash(key.as_bytes()).expect("a secret");
    let req = GetSessionRequest { consistency: Consistency::Local as i32, pool: "chat".into(), key };
    query(addr).get_session(req).await.ok().map(|r| r.into_inner())
}

/// A cluster with pool "chat" (with `affinity`) and a route to it. The affinity secret is
/// minted first, so a proxy at the returned revision has it.
async fn setup(affinity: &str, ttl_ms: u64, backends: &[EchoBackend]) -> (Cluster, u64, AffinitySecret) {
    let c = Cluster::start(3, &[]).await;
    let secret = affinity_secret(&c.nodes[&1].addr).await;
    let mut a = admin(&c.nodes[&1].addr);
    let pool = Pool { name: "chat".into(), affinity: affinity.into(), affinity_ttl_ms: ttl_ms, ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    for b in backends {
        let backend = Backend { pool: "chat".into(), address: b.addr.clone(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap();
    }
    let route = Route { name: "all".into(), pool: "chat".into(), ..Default::default() };
    let rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    (c, rev, secret)
}

/// The affinity secret of the node at `addr` as its watch shows it now (unset if none yet).
async fn secret_now(addr: &str) -> AffinitySecret {
    let req = WatchRequest { proxy_id: String::new(), from_revision: 0 };
    let mut stream = switchyard_proto::v1::discovery_client::DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .watch(req)
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().and_then(|e| e.kind) {
        Some(watch_event::Kind::Snapshot(t)) => AffinitySecret::from_bytes(&t.affinity_secret),
        other => panic!("a watch from revision 0 starts with a snapshot, not {other:?}"),
    }
}

/// A proxy that routed a session before the secret reached it gave that connection no
/// affinity at all, for its whole life. So the first write on a new cluster mints the secret
/// before it applies: no pool exists without it, and a proxy's first config carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_pool_of_a_new_cluster_never_exists_before_the_affinity_secret() {
    let _g = serial().await;
    let c = Cluster::start_new(1).await;
    let addr = c.nodes[&1].addr.clone();
    let b1 = EchoBackend::start("b1").await;
    let pool = Pool { name: "chat".into(), affinity: "header:X-Session".into(), ..Default::default() };
    admin(&addr).create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    let secret = secret_now(&addr).await;
    assert!(secret.is_set(), "a pool was applied before the affinity secret");

    let backend = Backend { pool: "chat".into(), address: b1.addr.clone(), weight: 1, ..Default::default() };
    admin(&addr).add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap();
    let route = Route { name: "all".into(), pool: "chat".into(), ..Default::default() };
    admin(&addr).set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap();
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    // The first connection the proxy routes is bound, as every later one.
    let _held = eventually("the proxy to route", Duration::from_secs(10), || async {
        ws_connect(&proxy.ws, "/", &[("X-Session", "first")]).await.ok()
    })
    .await;
    let bound = eventually("the first session bound", Duration::from_secs(10), || async {
        session(&addr, &secret, "first").await
    })
    .await;
    assert_eq!(bound.backend, b1.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_returns_to_its_backend_through_any_proxy_after_joins_and_losses() {
    let _g = serial().await;
    let bs = [EchoBackend::start("b1").await, EchoBackend::start("b2").await, EchoBackend::start("b3").await];
    let (mut c, rev, secret) = setup("header:X-Session", 600_000, &bs).await;
    let mut p1 = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p1.cache"), "p1");
    let p2 = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p2.cache"), "p2");
    p1.wait_revision(rev).await;
    p2.wait_revision(rev).await;

    let keys: Vec<String> = (0..12).map(|i| format!("session-{i}")).collect();
    let mut home = BTreeMap::new();
    for k in &keys {
        let (_ws, name) = ws_connect(&p1.ws, "/", &[("X-Session", k)]).await.unwrap();
        home.insert(k.clone(), name);
    }
    let any = c.nodes[&2].addr.clone();
    for k in &keys {
        eventually("binding replicated", Duration::from_secs(5), || async { session(&any, &secret, k).await }).await;
    }
    let check = |label: &'static str, proxy: String| {
        let home = home.clone();
        async move {
            for (k, want) in &home {
                let (_ws, name) = ws_connect(&proxy, "/", &[("X-Session", k)]).await.unwrap();
                assert_eq!(&name, want, "{label}: {k} moved");
            }
        }
    };
    check("through the other proxy", p2.ws.clone()).await;

    // A new backend joins: consistent hashing alone would move about a quarter of the keys.
    let b4 = EchoBackend::start("b4").await;
    let backend = Backend { pool: "chat".into(), address: b4.addr.clone(), weight: 1, ..Default::default() };
    let rev =
        admin(&any).add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap().into_inner().revision;
    p2.wait_revision(rev).await;
    check("after a backend joined", p2.ws.clone()).await;

    p1.kill9();
    check("after the proxy that bound them died", p2.ws.clone()).await;

    let leader = c.leader(Duration::from_secs(5)).await;
    c.node(leader).kill9();
    c.leader(Duration::from_secs(10)).await;
    check("after the leader died", p2.ws.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_racing_on_a_new_key_end_with_one_binding() {
    let _g = serial().await;
    let bs = [EchoBackend::start("b1").await, EchoBackend::start("b2").await, EchoBackend::start("b3").await];
    let (c, rev, secret) = setup("header:X-Session", 600_000, &bs).await;
    let p1 = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p1.cache"), "p1");
    let p2 = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p2.cache"), "p2");
    p1.wait_revision(rev).await;
    p2.wait_revision(rev).await;
    for i in 0..10 {
        let k = format!("race-{i}");
        let hdr = [("X-Session", k.as_str())];
        let (a, b) = tokio::join!(ws_connect(&p1.ws, "/", &hdr), ws_connect(&p2.ws, "/", &hdr));
        let (a, b) = (a.unwrap().1, b.unwrap().1);
        assert_eq!(a, b, "{k}: both proxies chose the same backend");
        let bound = eventually("one binding", Duration::from_secs(5), || async {
            session(&c.nodes[&1].addr, &secret, &k).await
        })
        .await;
        assert_eq!(bound.backend, bs.iter().find(|x| x.name == a).unwrap().addr);
        let (_ws, again) = ws_connect(&p2.ws, "/", &[("X-Session", &k)]).await.unwrap();
        assert_eq!(again, a);
    }
    let all = query(&c.nodes[&1].addr)
        .list_sessions(ListSessionsRequest { consistency: 0, pool: "chat".into(), limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.sessions.len(), 10, "one binding per key");
    // Not the whole of a table clients fill, at once.
    let err = query(&c.nodes[&1].addr)
        .list_sessions(ListSessionsRequest { consistency: 0, pool: "chat".into(), limit: u32::MAX })
        .await
        .expect_err("a limit past the cap");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("over 10000"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_expire_after_their_ttl_once_connections_are_gone_and_cookies_are_issued() {
    let _g = serial().await;
    let bs = [EchoBackend::start("b1").await, EchoBackend::start("b2").await];
    let (c, rev, secret) = setup("cookie:sy_session", 1000, &bs).await;
    let p = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p");
    p.wait_revision(rev).await;

    // No cookie: the proxy issues one on the 101.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = format!("ws://{}/", p.ws).into_client_request().unwrap();
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    let cookie = resp.headers().get("set-cookie").expect("Set-Cookie on the 101").to_str().unwrap().to_string();
    let key = cookie.split(';').next().unwrap().strip_prefix("sy_session=").unwrap().to_string();
    let addr = c.nodes[&1].addr.clone();
    let bound =
        eventually("cookie session bound", Duration::from_secs(5), || async { session(&addr, &secret, &key).await })
            .await;

    // Held open for three TTLs: refreshed (last seen moves on), never expired.
    eventually("binding refreshed across three TTLs", Duration::from_secs(10), || async {
        let now = session(&addr, &secret, &key).await.expect("a binding with a live connection must not expire");
        (now.last_seen_ms >= bound.last_seen_ms + 3 * 1000).then_some(())
    })
    .await;
    let cookie_header = format!("sy_session={key}");
    let (_ws2, name) = ws_connect(&p.ws, "/", &[("Cookie", &cookie_header)]).await.unwrap();
    assert_eq!(bs.iter().find(|b| b.name == name).unwrap().addr, bound.backend, "the cookie brings it back");
    drop(_ws2);
    drop(ws);
    eventually("binding to expire", Duration::from_secs(6), || async {
        session(&addr, &secret, &key).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_across_two_proxies_balances_the_cluster_totals() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let bs = [EchoBackend::start("b1").await, EchoBackend::start("b2").await];
    let addr = c.nodes[&1].addr.clone();
    let mut a = admin(&addr);
    let pool = Pool { name: "chat".into(), algorithm: Algorithm::LeastConnections as i32, ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    for b in &bs {
        let backend = Backend { pool: "chat".into(), address: b.addr.clone(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap();
    }
    let route = Route { name: "all".into(), pool: "chat".into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap();
    // Proxy 1 puts 10 connections on b1 while b2 takes none.
    let state = |s: AdminState| SetBackendStateRequest {
        pool: "chat".into(),
        address: bs[1].addr.clone(),
        state: s as i32,
        force: false,
    };
    let rev = a.set_backend_state(state(AdminState::Disabled)).await.unwrap().into_inner().revision;
    let p1 = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p1.cache"), "p1");
    let p2 = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p2.cache"), "p2");
    p1.wait_revision(rev).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        let (ws, name) = ws_connect(&p1.ws, "/", &[]).await.unwrap();
        assert_eq!(name, "b1");
        held.push(ws);
    }
    let rev = a.set_backend_state(state(AdminState::Active)).await.unwrap().into_inner().revision;
    p2.wait_revision(rev).await;
    // Proxy 2 learns proxy 1's counts through the control plane.
    eventually("proxy 2 to see proxy 1's connections", Duration::from_secs(10), || async {
        let s = p2.status().await?;
        let b1 = s["backends"].as_array()?.iter().find(|b| b["address"] == bs[0].addr.as_str())?.clone();
        (b1["active_elsewhere"].as_u64()? == 10).then_some(())
    })
    .await;
    let mut to_b2 = 0;
    for _ in 0..10 {
        let (ws, name) = ws_connect(&p2.ws, "/", &[]).await.unwrap();
        to_b2 += (name == "b2") as usize;
        held.push(ws);
    }
    assert_eq!(to_b2, 10, "cluster-wide least connections evens the totals at 10/10");
    // `backend list` shows the live connections across both proxies.
    let out = eventually("cluster totals in backend list", Duration::from_secs(10), || async {
        let out = std::process::Command::new(bin("switchyard"))
            .args(["--endpoints", &addr, "-o", "json", "backend", "list", "chat"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.iter().all(|b| b["connections"] == 10).then_some(v)
    })
    .await;
    assert_eq!(out.as_array().unwrap().len(), 2);
}

/// A new affinity key for a pool that holds bindings would move every session at once (they
/// are keyed by the old one): refused without `--force`. Other fields, and the key of a pool
/// with no bindings, change freely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_affinity_key_for_a_pool_holding_sessions_takes_force() {
    let _g = serial().await;
    let b1 = EchoBackend::start("b1").await;
    let (c, rev, secret) = setup("header:X-Session", 600_000, std::slice::from_ref(&b1)).await;
    let addr = c.nodes[&1].addr.clone();
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    let _held = ws_connect(&proxy.ws, "/", &[("X-Session", "first")]).await.unwrap();
    eventually("the session bound", Duration::from_secs(10), || async { session(&addr, &secret, "first").await }).await;
    let eps = c.endpoints();
    let cli = |args: &[&str]| {
        let mut all = vec!["--endpoints", eps.as_str()];
        all.extend(args);
        run_cli(&all)
    };
    let affinity = || async {
        let req = GetPoolRequest { consistency: Consistency::Linearizable as i32, name: "chat".into() };
        query(&addr).get_pool(req).await.unwrap().into_inner().affinity
    };

    let (code, _, err) = cli(&["pool", "update", "chat", "--affinity", "header:X-Other"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pool chat holds session bindings") && err.contains("--force"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(affinity().await, "header:X-Session", "the refused update changed nothing");
    assert!(session(&addr, &secret, "first").await.is_some(), "the binding stays");

    assert_eq!(cli(&["pool", "update", "chat", "--affinity-ttl", "5m"]).0, 0, "another field");
    let (code, _, err) = cli(&["pool", "update", "chat", "--affinity", "header:x-session"]);
    assert_eq!(code, 0, "the same header in another case moves nothing: {err}");
    assert_eq!(cli(&["pool", "create", "quiet", "--affinity", "header:X-A"]).0, 0);
    assert_eq!(cli(&["pool", "update", "quiet", "--affinity", "header:X-B"]).0, 0, "no bindings to move");
    let (code, _, err) = cli(&["pool", "update", "chat", "--affinity", "header:X-Other", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(affinity().await, "header:X-Other", "forced");
}
