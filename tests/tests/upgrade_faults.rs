//! Backends that take the connection but fail the upgrade: one that closes without answering
//! is passed over for the next backend within the same handshake, and ejected once it has
//! done so five times in a row, a second apart at least (a backend drops a head it cannot
//! parse that way, so one such close, which a client can provoke, proves nothing); one that never answers costs its client
//! a 504 at the handshake timeout and is ejected at once, so the clients after go elsewhere
//! (it used to take every other client for the whole timeout and answer 502, for as long as
//! it hung).

use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;
use tokio::io::AsyncReadExt;

/// A backend that accepts connections and reads the head: `close` closes each one then
/// without a byte back; otherwise it is held open, unanswered.
async fn broken_backend(close: bool) -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            if !close {
                held.push(s);
            }
        }
    });
    (addr, task)
}

fn backend_status(s: &serde_json::Value, pool: &str, addr: &str) -> serde_json::Value {
    let all = s["backends"].as_array().expect("backends");
    all.iter().find(|b| b["pool"] == pool && b["address"] == addr).cloned().expect("the backend in /status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_the_upgrade_is_passed_over_or_answered_504_and_ejected() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let good = EchoBackend::start("good").await;
    let (closer, _closer_task) = broken_backend(true).await;
    let (hanger, _hanger_task) = broken_backend(false).await;
    let mut a = admin(&addr);
    for (pool, broken) in [("closes", &closer), ("hangs", &hanger)] {
        a.create_pool(CreatePoolRequest { pool: Some(Pool { name: pool.into(), ..Default::default() }) })
            .await
            .unwrap();
        for b in [broken, &good.addr] {
            let b = Backend { pool: pool.into(), address: b.clone(), weight: 1, ..Default::default() };
            a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
        }
        let route =
            Route { name: pool.into(), host: format!("{pool}.example"), pool: pool.into(), ..Default::default() };
        a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap();
    }
    let s = Settings { handshake_timeout_ms: 1000, ..Default::default() };
    let req = UpdateSettingsRequest { settings: Some(s), update_mask: vec!["handshake_timeout_ms".into()] };
    let rev = a.update_settings(req).await.unwrap().into_inner().revision;
    let p = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p");
    p.wait_revision(rev).await;

    // Closed without an answer: the same handshake goes on to the good backend, and the
    // closer is ejected only after five such closes in a row, at least a second apart (a
    // burst counts once), so not within the first four seconds.
    let start = std::time::Instant::now();
    let upgrades = std::sync::atomic::AtomicUsize::new(0);
    eventually("the closer ejected after five spaced hangups", Duration::from_secs(30), || async {
        let got = upgrade_status(&p.ws, "closes.example").await;
        assert_eq!(got, "HTTP/1.1 101 Switching Protocols", "upgrade {upgrades:?}");
        upgrades.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let closes = backend_status(&p.status().await.unwrap(), "closes", &closer);
        (closes["ejected"] == true).then_some(closes)
    })
    .await;
    let closes = backend_status(&p.status().await.unwrap(), "closes", &closer);
    assert_eq!(closes["connect_failures"], 1, "{closes}");
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "ejected after {:?}: hangups counted in a burst",
        start.elapsed()
    );

    // Never answered: one client gets 504 at the timeout, and the ejection spares the rest.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(upgrade_status(&p.ws, "hangs.example").await);
    }
    let timeouts = answers.iter().filter(|a| *a == "HTTP/1.1 504 Gateway Timeout").count();
    let upgraded = answers.iter().filter(|a| *a == "HTTP/1.1 101 Switching Protocols").count();
    assert_eq!((timeouts, upgraded), (1, 3), "{answers:?}");
    let hangs = backend_status(&p.status().await.unwrap(), "hangs", &hanger);
    assert!(hangs["connect_failures"] == 1 && hangs["ejected"] == true, "{hangs}");
    let good_there = backend_status(&p.status().await.unwrap(), "hangs", &good.addr);
    assert_eq!(good_there["total"], 3, "{good_there}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_backend_back_from_a_restart_is_tried_at_once_though_ejected() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    // The backend's address, with nothing listening there yet.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lone = gone.local_addr().unwrap().to_string();
    drop(gone);
    let mut a = admin(&addr);
    a.create_pool(CreatePoolRequest { pool: Some(Pool { name: "lone".into(), ..Default::default() }) }).await.unwrap();
    let b = Backend { pool: "lone".into(), address: lone.clone(), weight: 1, ..Default::default() };
    a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    let route = Route { name: "lone".into(), host: "lone.example".into(), pool: "lone".into(), ..Default::default() };
    let rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    // Ejected for a minute: far past the end of this test.
    let flags = ["--eject-ms".to_string(), "60000".to_string()];
    let p = ProxyProcess::spawn_with(&c.endpoints(), &c.dir.path().join("p.cache"), "p", &flags);
    p.wait_revision(rev).await;

    let down = upgrade_status(&p.ws, "lone.example").await;
    assert!(down.starts_with("HTTP/1.1 503"), "{down}");
    let s = backend_status(&p.status().await.unwrap(), "lone", &lone);
    assert!(s["connect_failures"] == 1 && s["ejected"] == true, "{s}");
    // Back (a restart that took a second): the next client reaches it, though the proxy's
    // ejection has 59 s to run. Every backend of the pool is ejected, so they are tried.
    let _back = EchoBackend::start_at("lone", &lone).await;
    assert_eq!(upgrade_status(&p.ws, "lone.example").await, "HTTP/1.1 101 Switching Protocols");
}
