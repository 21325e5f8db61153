//! Active health checks on the leader: a backend that stops answering is marked unhealthy
//! after `fall` probes, healthy again after `rise`, and a new leader carries on; a pool that
//! asks for it has its proxies close the connections of a backend marked down.

use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;

async fn health_of(addr: &str, backend: &str) -> Option<i32> {
    health_in(addr, "p", backend).await
}

async fn health_in(addr: &str, pool: &str, backend: &str) -> Option<i32> {
    let r = query(addr)
        .list_backends(ListBackendsRequest { consistency: Consistency::Local as i32, pool: pool.into() })
        .await
        .ok()?;
    r.into_inner().backends.into_iter().find(|b| b.address == backend).map(|b| b.health)
}

async fn wait_health(c: &Cluster, backend: &str, want: Health, within: Duration) {
    eventually(&format!("{backend} to be {want:?} on every node"), within, || async {
        for n in c.nodes.values().filter(|n| n.is_running()) {
            if health_of(&n.addr, backend).await? != want as i32 {
                return None;
            }
        }
        Some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_flip_health_after_rise_and_fall_probes_and_a_new_leader_takes_over() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let mut tcp_backend = DemoBackend::spawn("tcp");
    let mut ws_backend = DemoBackend::spawn("ws");
    let addr = c.nodes[&1].addr.clone();
    let mut a = admin(&addr);
    // interval 200 ms, rise 2, fall 2: transitions within about 400 ms of the change.
    let hc = |kind: HealthCheckKind| HealthCheck {
        kind: kind as i32,
        interval_ms: 200,
        timeout_ms: 150,
        rise: 2,
        fall: 2,
        path: "/".into(),
        close_on_failure: false,
    };
    let pool = Pool { name: "p".into(), health_check: Some(hc(HealthCheckKind::HealthCheckTcp)), ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    for b in [&tcp_backend, &ws_backend] {
        let backend = Backend { pool: "p".into(), address: b.addr.clone(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap();
    }
    let bound = Duration::from_secs(3);
    wait_health(&c, &tcp_backend.addr, Health::Healthy, bound).await;

    tcp_backend.kill9();
    wait_health(&c, &tcp_backend.addr, Health::Unhealthy, bound).await;
    tcp_backend.start();
    wait_health(&c, &tcp_backend.addr, Health::Healthy, bound).await;

    // The WebSocket check: a real handshake and a ping answered with a pong.
    let pool =
        Pool { name: "p".into(), health_check: Some(hc(HealthCheckKind::HealthCheckWebsocket)), ..Default::default() };
    a.update_pool(UpdatePoolRequest { pool: Some(pool), update_mask: vec!["health_check".into()], force: false })
        .await
        .unwrap();
    ws_backend.kill9();
    wait_health(&c, &ws_backend.addr, Health::Unhealthy, bound).await;
    ws_backend.start();
    wait_health(&c, &ws_backend.addr, Health::Healthy, bound).await;

    // Kill the leader: the next one probes within an interval and keeps the states true.
    let leader = c.leader(Duration::from_secs(5)).await;
    c.node(leader).kill9();
    c.leader(Duration::from_secs(10)).await;
    ws_backend.kill9();
    wait_health(&c, &ws_backend.addr, Health::Unhealthy, Duration::from_secs(5)).await;
    ws_backend.start();
    wait_health(&c, &ws_backend.addr, Health::Healthy, Duration::from_secs(5)).await;
}

/// A pool whose check says to close on failure: a backend frozen mid-session (SIGSTOP: its
/// kernel still takes connections and bytes, the process answers nothing, so no reset or FIN
/// ever tells the proxy) is marked down, and its clients get Close 1001 and can reconnect to
/// a healthy backend. In a pool that does not say so, the frozen backend's client stays
/// connected, as NGINX and HAProxy leave it by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_asks_has_the_connections_of_a_backend_marked_down_closed() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let frozen = DemoBackend::spawn("frozen");
    let well = DemoBackend::spawn("well");
    let addr = c.nodes[&1].addr.clone();
    let mut a = admin(&addr);
    let mut rev = 0;
    for (pool, close) in [("closes", true), ("keeps", false)] {
        let hc = HealthCheck {
            kind: HealthCheckKind::HealthCheckWebsocket as i32,
            interval_ms: 200,
            timeout_ms: 150,
            rise: 2,
            fall: 2,
            path: "/".into(),
            close_on_failure: close,
        };
        let p = Pool { name: pool.into(), health_check: Some(hc), ..Default::default() };
        a.create_pool(CreatePoolRequest { pool: Some(p) }).await.unwrap();
        for b in [&frozen, &well] {
            let backend = Backend { pool: pool.into(), address: b.addr.clone(), weight: 1, ..Default::default() };
            a.add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap();
        }
        let route =
            Route { name: pool.into(), host: format!("{pool}.example"), pool: pool.into(), ..Default::default() };
        rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    }
    let p = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p");
    p.wait_revision(rev).await;
    // One client on the backend about to freeze, in each pool (round robin: two tries at most).
    let mut on_frozen = Vec::new();
    for pool in ["closes", "keeps"] {
        let host = format!("{pool}.example");
        let mut found = None;
        for _ in 0..2 {
            let (ws, name) = ws_connect(&p.ws, "/", &[("host", &host)]).await.expect("connect");
            if name == "frozen" {
                found = Some(ws);
                break;
            }
        }
        on_frozen.push(found.unwrap_or_else(|| panic!("no client of {pool} landed on the frozen backend")));
    }
    let (mut closes, mut keeps) = (on_frozen.remove(0), on_frozen.remove(0));

    frozen.signal("STOP");
    let bound = Duration::from_secs(5);
    for pool in ["closes", "keeps"] {
        eventually(&format!("the frozen backend to be marked down in {pool}"), bound, || async {
            (health_in(&addr, pool, &frozen.addr).await? == Health::Unhealthy as i32).then_some(())
        })
        .await;
    }
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match closes.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("a Close for the client of the pool that asks, within 10 s");
    assert_eq!(close, Some(1001));
    // The proxy ran the config that marked the backend down (it closed the first client),
    // and the other pool's client is still relayed to the frozen backend.
    let s = p.status().await.expect("status");
    let keeps_frozen = s["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["pool"] == "keeps" && b["address"] == frozen.addr.as_str()))
        .cloned()
        .expect("the frozen backend of keeps in /status");
    assert_eq!(keeps_frozen["active"], 1, "{s}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), keeps.next()).await.is_err(),
        "nothing comes to the client of the pool that keeps its connections"
    );
    // The closed client reconnects, to the healthy backend.
    let (_ws, name) = ws_connect(&p.ws, "/", &[("host", "closes.example")]).await.expect("reconnect");
    assert_eq!(name, "well");
    frozen.signal("CONT");
}
