//! The proxy under faults and limits: a backend killed, SIGTERM, oversized messages, and the
//! other balancing algorithms; plus what the admin endpoints and `proxy list` report.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;

async fn pool_with(addr: &str, algorithm: Algorithm, backends: &[(&str, u32)]) -> u64 {
    let mut a = admin(addr);
    let pool = Pool { name: "p".into(), algorithm: algorithm as i32, drain_timeout_ms: 1000, ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    for (address, weight) in backends {
        let b = Backend { pool: "p".into(), address: address.to_string(), weight: *weight, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    }
    let route = Route { name: "all".into(), pool: "p".into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision
}

/// The code of the next Close the client gets within 10 s, past any other frames.
async fn next_close_code(ws: &mut Ws) -> Option<u16> {
    let close = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), close).await.expect("a Close within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_clients_get_a_close_and_new_connections_avoid_it() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let mut b1 = DemoBackend::spawn("b1");
    let b2 = DemoBackend::spawn("b2");
    let rev = pool_with(&c.nodes[&1].addr, Algorithm::RoundRobin, &[(&b1.addr, 1), (&b2.addr, 1)]).await;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    let mut on_b1 = Vec::new();
    for _ in 0..4 {
        let (ws, name) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
        if name == "b1" {
            on_b1.push(ws);
        }
    }
    assert_eq!(on_b1.len(), 2);
    b1.kill9();
    for ws in &mut on_b1 {
        assert_eq!(next_close_code(ws).await, Some(1001), "a Close frame, not a hang");
    }
    // The first new connection may try b1, fail to connect, eject it and go to b2; after
    // that b1 is skipped without a try.
    for _ in 0..6 {
        let (mut ws, name) = ws_connect(&proxy.ws, "/", &[]).await.expect("served by the live backend");
        assert_eq!(name, "b2");
        echo(&mut ws, Message::text("ok")).await.unwrap();
    }
    let s = proxy.status().await.unwrap();
    let b1s = s["backends"].as_array().unwrap().iter().find(|b| b["address"] == b1.addr.as_str()).unwrap().clone();
    assert!(b1s["connect_failures"].as_u64().unwrap() >= 1 && b1s["ejected"] == true, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let b = EchoBackend::start("b1").await;
    let rev = pool_with(&c.nodes[&1].addr, Algorithm::RoundRobin, &[(&b.addr, 1)]).await;
    let mut proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(ws_connect(&proxy.ws, "/", &[]).await.unwrap().0);
    }
    let ws_addr = proxy.ws.clone();
    let waiter = std::thread::spawn(move || proxy.terminate());
    for ws in &mut conns {
        assert_eq!(next_close_code(ws).await, Some(1001));
    }
    drop(conns);
    let status = waiter.join().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(tokio::net::TcpStream::connect(&ws_addr).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_gets_1009_and_the_proxy_keeps_serving() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let b = EchoBackend::start("b1").await;
    let addr = c.nodes[&1].addr.clone();
    pool_with(&addr, Algorithm::RoundRobin, &[(&b.addr, 1)]).await;
    let s = Settings { max_message_bytes: 64 * 1024, ..Default::default() };
    let req = UpdateSettingsRequest { settings: Some(s), update_mask: vec!["max_message_bytes".into()] };
    let rev = admin(&addr).update_settings(req).await.unwrap().into_inner().revision;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    let (mut ws, _) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
    echo(&mut ws, Message::binary(vec![1u8; 60 * 1024])).await.unwrap();
    ws.send(Message::binary(vec![2u8; 100 * 1024])).await.unwrap();
    assert_eq!(next_close_code(&mut ws).await, Some(1009));
    let (mut ws2, _) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
    echo(&mut ws2, Message::text("fine")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_p2c_and_ip_hash_distribute_as_designed() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let bs = [EchoBackend::start("b1").await, EchoBackend::start("b2").await, EchoBackend::start("b3").await];
    let rev =
        pool_with(&addr, Algorithm::LeastConnections, &[(&bs[0].addr, 1), (&bs[1].addr, 1), (&bs[2].addr, 2)]).await;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    let mut held = Vec::new();
    let count = |m: &mut BTreeMap<String, usize>, n: String| *m.entry(n).or_default() += 1;
    let mut lc = BTreeMap::new();
    for _ in 0..40 {
        let (ws, n) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
        count(&mut lc, n);
        held.push(ws);
    }
    // Connections held open: least connections fills by weight, exactly 10/10/20.
    assert_eq!((lc["b1"], lc["b2"], lc["b3"]), (10, 10, 20), "{lc:?}");

    for (algo, name) in [(Algorithm::P2c, "p2c"), (Algorithm::IpHash, "ip-hash")] {
        let pool = Pool { name: "p".into(), algorithm: algo as i32, ..Default::default() };
        let req = UpdatePoolRequest { pool: Some(pool), update_mask: vec!["algorithm".into()], force: false };
        let rev = admin(&addr).update_pool(req).await.unwrap().into_inner().revision;
        proxy.wait_revision(rev).await;
        let mut m = BTreeMap::new();
        let mut more = Vec::new();
        for _ in 0..30 {
            let (ws, n) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
            count(&mut m, n);
            more.push(ws);
        }
        if algo == Algorithm::IpHash {
            // Every test client is 127.0.0.1: one IP, one backend.
            assert_eq!(m.len(), 1, "{name}: {m:?}");
        } else {
            // Held connections make b1 and b2 (weight 1, 10 each) and b3 (weight 2, 20)
            // equally loaded per weight; p2c keeps the load per weight close to even.
            let per_weight: Vec<f64> = [("b1", 10.0, 1.0), ("b2", 10.0, 1.0), ("b3", 20.0, 2.0)]
                .iter()
                .map(|(b, held, w)| (held + *m.get(*b).unwrap_or(&0) as f64) / w)
                .collect();
            let spread = per_weight.iter().cloned().fold(f64::MIN, f64::max)
                - per_weight.iter().cloned().fold(f64::MAX, f64::min);
            assert!(spread <= 6.0, "{name}: load per weight {per_weight:?} from {m:?}");
        }
        held.extend(more);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_proxy_list_report_what_runs() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let b = EchoBackend::start("b1").await;
    let rev = pool_with(&c.nodes[&1].addr, Algorithm::RoundRobin, &[(&b.addr, 1)]).await;
    let p1 = ProxyProcess::spawn(&c.nodes[&1].addr, &c.dir.path().join("p1.cache"), "proxy-one");
    let p2 = ProxyProcess::spawn(&c.nodes[&2].addr, &c.dir.path().join("p2.cache"), "proxy-two");
    p1.wait_revision(rev).await;
    p2.wait_revision(rev).await;
    let (mut ws, _) = ws_connect(&p1.ws, "/", &[]).await.unwrap();
    echo(&mut ws, Message::text("count me")).await.unwrap();

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&p1.admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(
        text.contains(&format!("switchyard_proxy_active_connections{{pool=\"p\",backend=\"{}\"}} 1", b.addr)),
        "{text}"
    );
    assert!(text.contains("switchyard_proxy_config_revision"), "{text}");
    assert!(text.contains("switchyard_proxy_control_plane_connected 1"), "{text}");
    // Ready: it runs a config. One that never reached a node and has no cache is alive (for
    // liveness) but not ready (for a load balancer), and says why.
    let get = async |admin: &str, path: &str| {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    };
    assert!(get(&p1.admin, "/readyz").await.starts_with("HTTP/1.1 200"));
    let lone = ProxyProcess::spawn("127.0.0.1:1", &c.dir.path().join("lone.cache"), "lone");
    let not_ready = get(&lone.admin, "/readyz").await;
    assert!(not_ready.starts_with("HTTP/1.1 503") && not_ready.contains("no config yet"), "{not_ready}");
    assert!(get(&lone.admin, "/healthz").await.starts_with("HTTP/1.1 200"));
    drop(lone);

    // Every node lists both proxies, whichever node each reports to.
    for n in c.nodes.values() {
        let list = eventually("both proxies listed", Duration::from_secs(10), || async {
            let out = Command::new(bin("switchyard"))
                .args(["--endpoints", &n.addr, "-o", "json", "proxy", "list"])
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let ids: Vec<String> =
                v.as_array()?.iter().map(|p| p["proxy_id"].as_str().unwrap_or("").to_string()).collect();
            let fresh = v.as_array()?.iter().all(|p| p["applied_revision"].as_u64() >= Some(rev));
            (ids.contains(&"proxy-one".to_string()) && ids.contains(&"proxy-two".to_string()) && fresh).then_some(v)
        })
        .await;
        assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    }

    // An election adds an entry that changes nothing a proxy follows: a proxy that has every
    // change is listed at the cluster's revision all the same (its config's own revision stays
    // below it), not as if it were behind.
    let p3 = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p3.cache"), "proxy-three");
    p3.wait_revision(rev).await;
    let old = c.leader(Duration::from_secs(10)).await;
    c.node(old).kill9();
    let new = c.leader(Duration::from_secs(10)).await;
    let addr = c.nodes[&new].addr.clone();
    let (config, through, cluster) = eventually("proxy-three listed current", Duration::from_secs(15), || async {
        let cluster = status(&addr).await?.applied_revision;
        let out = Command::new(bin("switchyard"))
            .args(["--endpoints", &addr, "-o", "json", "proxy", "list"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let p = v.as_array()?.iter().find(|p| p["proxy_id"] == "proxy-three")?.clone();
        let through = p["current_through"].as_u64()?;
        (through == cluster).then_some((p["applied_revision"].as_u64()?, through, cluster))
    })
    .await;
    assert!(config < through, "config {config}, current through {through}, cluster {cluster}");
    let out = Command::new(bin("switchyard")).args(["--endpoints", &addr, "proxy", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.starts_with("proxy-three")).unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(1), Some(cluster.to_string().as_str()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_dead_clients_are_detected_by_ping() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let b = EchoBackend::start("b1").await;
    let addr = c.nodes[&1].addr.clone();
    pool_with(&addr, Algorithm::RoundRobin, &[(&b.addr, 1)]).await;
    let s = Settings { idle_timeout_ms: 1000, ping_interval_ms: 0, ..Default::default() };
    let req = UpdateSettingsRequest {
        settings: Some(s),
        update_mask: vec!["idle_timeout_ms".into(), "ping_interval_ms".into()],
    };
    let rev = admin(&addr).update_settings(req).await.unwrap().into_inner().revision;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    let (mut ws, _) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
    assert_eq!(next_close_code(&mut ws).await, Some(1001), "idle connection closed by the proxy");

    // Pings every 200 ms; a client that never answers is cut off after the next interval.
    let s = Settings { idle_timeout_ms: 0, ping_interval_ms: 200, ..Default::default() };
    let req = UpdateSettingsRequest {
        settings: Some(s),
        update_mask: vec!["idle_timeout_ms".into(), "ping_interval_ms".into()],
    };
    let rev = admin(&addr).update_settings(req).await.unwrap().into_inner().revision;
    proxy.wait_revision(rev).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(&proxy.ws).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_all).await.expect("dead client cut off, not kept forever");
    assert!(got.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&got));
    assert!(got.windows(4).any(|w| w == [0x89, 2, b's', b'y']), "the proxy pinged the client");
    // A client that answers pings (tungstenite does, while reading) stays, through at least
    // three ping intervals and three pings.
    let (mut ws, _) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("pinged within 2 s") {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("a client that answers pings must stay, got {other:?}"),
        }
    }
    echo(&mut ws, Message::text("alive")).await.unwrap();

    // Both at once, the defaults' shape (pings more often than the idle timeout): a client
    // that only answers pings is idle, and the idle timeout still ends it. Its Pongs kept it
    // open for good when they counted as use.
    let s = Settings { idle_timeout_ms: 1000, ping_interval_ms: 200, ..Default::default() };
    let req = UpdateSettingsRequest {
        settings: Some(s),
        update_mask: vec!["idle_timeout_ms".into(), "ping_interval_ms".into()],
    };
    let rev = admin(&addr).update_settings(req).await.unwrap().into_inner().revision;
    proxy.wait_revision(rev).await;
    let (mut ws, _) = ws_connect(&proxy.ws, "/", &[]).await.unwrap();
    assert_eq!(next_close_code(&mut ws).await, Some(1001), "an idle client answering pings closed by the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_and_no_usable_backend_is_503_with_retry_after() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let b = EchoBackend::start("b1").await;
    let addr = c.nodes[&1].addr.clone();
    pool_with(&addr, Algorithm::RoundRobin, &[(&b.addr, 1)]).await;
    let mut a = admin(&addr);
    a.delete_route(DeleteRouteRequest { name: "all".into() }).await.unwrap();
    let route = Route { name: "chat".into(), pool: "p".into(), path_prefix: "/chat".into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap();
    // The pool's only backend, behind a route: refused without `force`.
    let req = SetBackendStateRequest {
        pool: "p".into(),
        address: b.addr.clone(),
        state: AdminState::Disabled as i32,
        force: true,
    };
    let rev = a.set_backend_state(req).await.unwrap().into_inner().revision;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    let head = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = |path: &'static str| {
        let (p, h) = (proxy.ws.clone(), head(path));
        async move {
            let mut s = tokio::net::TcpStream::connect(&p).await.unwrap();
            s.write_all(h.as_bytes()).await.unwrap();
            let mut out = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
            out
        }
    };
    assert!(ask("/elsewhere").await.starts_with("HTTP/1.1 404"));
    let r = ask("/chat/room").await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    let retry: u64 = r.lines().find_map(|l| l.strip_prefix("Retry-After: ")).unwrap().trim().parse().unwrap();
    assert!((1..=5).contains(&retry), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_caps_answer_503_with_retry_after_and_recover() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let b = EchoBackend::start("b1").await;
    let addr = c.nodes[&1].addr.clone();
    pool_with(&addr, Algorithm::RoundRobin, &[(&b.addr, 1)]).await;
    let set = |per_ip: u32, per_sec: u32| UpdateSettingsRequest {
        settings: Some(Settings {
            max_connections_per_ip_per_sec: per_ip,
            max_handshakes_per_sec: per_sec,
            ..Default::default()
        }),
        update_mask: vec!["max_connections_per_ip_per_sec".into(), "max_handshakes_per_sec".into()],
    };
    let rev = admin(&addr).update_settings(set(3, 0)).await.unwrap().into_inner().revision;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;

    // Per client IP: 3 a second, the rest get 503 until the next second.
    let mut ok = 0;
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..8 {
        match ws_connect(&proxy.ws, "/", &[]).await {
            Ok((ws, _)) => {
                ok += 1;
                held.push(ws);
            }
            Err(e) => {
                assert!(e.to_string().contains("503"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(ok <= 6 && refused >= 2, "ok {ok}, refused {refused}");
    eventually("the next second admits again", Duration::from_secs(3), || async {
        ws_connect(&proxy.ws, "/", &[]).await.ok().map(|_| ())
    })
    .await;

    // Per proxy: a bucket of 5 a second (ramping up after start) refuses a burst of 30.
    let rev = admin(&addr).update_settings(set(0, 5)).await.unwrap().into_inner().revision;
    proxy.wait_revision(rev).await;
    let attempts = futures::future::join_all((0..30).map(|_| ws_connect(&proxy.ws, "/", &[]))).await;
    let refused = attempts.iter().filter(|r| r.as_ref().is_err_and(|e| e.to_string().contains("503"))).count();
    assert!(refused >= 20, "a burst of 30 over a 5/s cap: {refused} refused");
    let s = proxy.status().await.unwrap();
    assert!(s["handshake_failures"]["over_capacity"].as_u64().unwrap() >= 20, "{s}");
    assert!(s["handshake_failures"]["client_rate"].as_u64().unwrap() >= 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_not_held_forever() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let b = EchoBackend::start("b1").await;
    let addr = c.nodes[&1].addr.clone();
    pool_with(&addr, Algorithm::RoundRobin, &[(&b.addr, 1)]).await;
    let s = Settings { ping_interval_ms: 500, max_message_bytes: 64 << 20, ..Default::default() };
    let req = UpdateSettingsRequest {
        settings: Some(s),
        update_mask: vec!["ping_interval_ms".into(), "max_message_bytes".into()],
    };
    let rev = admin(&addr).update_settings(req).await.unwrap().into_inner().revision;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(&proxy.ws).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    // One 32 MiB masked binary frame; the backend echoes it, and this client never reads it.
    let len: u64 = 32 << 20;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.resize(frame.len() + len as usize, 7);
    let (mut rd, mut wr) = raw.into_split();
    let writer = tokio::spawn(async move { wr.write_all(&frame).await });
    // The connection is relayed, then released while this client still has not read a byte.
    let relayed = |min: u64| {
        let proxy = &proxy;
        async move {
            let s = proxy.status().await?;
            let b = s["backends"].as_array()?.first()?.clone();
            (b["total"].as_u64()? >= min && b["active"].as_u64()? == 0).then_some(())
        }
    };
    eventually("the stalled connection released", Duration::from_secs(20), || relayed(1)).await;
    // Now read: what was buffered comes out, then the end, not the whole echo.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let read_all = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all).await.expect("the proxy ended the stalled connection");
    assert!(got < len as usize, "read {got} bytes: the proxy kept the stalled connection");
    writer.abort();
}

/// A one-node cluster, one echo backend routed for every request, and a proxy started with
/// the flags `extra` makes (given the cluster's temp dir), running that config.
async fn one_backend_behind(
    extra: impl FnOnce(&std::path::Path) -> Vec<String>,
) -> (Cluster, EchoBackend, ProxyProcess) {
    let c = Cluster::start(1, &[]).await;
    let b = EchoBackend::start("b1").await;
    let rev = pool_with(&c.nodes[&1].addr, Algorithm::RoundRobin, &[(&b.addr, 1)]).await;
    let proxy = ProxyProcess::spawn_with(&c.endpoints(), &c.dir.path().join("p.cache"), "p1", &extra(c.dir.path()));
    proxy.wait_revision(rev).await;
    (c, b, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_clients_get_503_at_accept_until_one_leaves() {
    let _g = serial().await;
    let (_c, _b, proxy) = one_backend_behind(|_| vec!["--max-connections".into(), "3".into()]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_connect(&proxy.ws, "/", &[]).await.expect("within the cap").0);
    }
    let e = ws_connect(&proxy.ws, "/", &[]).await.map(|_| ()).expect_err("the fourth is refused");
    assert!(e.to_string().contains("503"), "{e}");
    let s = proxy.status().await.unwrap();
    assert_eq!((s["max_connections"].as_u64(), s["open_connections"].as_u64()), (Some(3), Some(3)), "{s}");
    assert_eq!(s["handshake_failures"]["max_connections"].as_u64(), Some(1), "{s}");
    // The held connections still work, and once one leaves a new one gets in.
    echo(&mut held[0], Message::text("still here")).await.unwrap();
    held.pop().unwrap().close(None).await.unwrap();
    let (mut ws, _) =
        eventually("a slot frees up", Duration::from_secs(10), || async { ws_connect(&proxy.ws, "/", &[]).await.ok() })
            .await;
    echo(&mut ws, Message::text("in")).await.unwrap();
}
