//! The descriptor budget under a real `RLIMIT_NOFILE` (the proxy started through `prlimit`):
//! idle keep-alive connections (to plain-HTTP backends, and to edge-auth endpoints) count
//! against it, and are closed to make room for clients rather than holding descriptors the
//! next WebSocket needs.

use std::convert::Infallible;
use std::time::Duration;

use switchyard_tests::*;

const LONG: Duration = Duration::from_secs(15);

/// Where the idle connections that stand in the clients' way lead.
#[derive(Clone, Copy, PartialEq)]
enum Idle {
    /// A plain-HTTP backend, after overlapping requests.
    Backend,
    /// The auth endpoint of a route with `--auth-request`, after overlapping handshakes.
    AuthEndpoint,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backend_connections_make_room_for_clients_when_descriptors_run_short() {
    room_is_made_from(Idle::Backend).await;
}

/// Connections to an auth endpoint are counted as backend ones are, and every client slot is
/// usable with them about. (Whether they are closed to make room cannot show here: the next
/// handshake's own check opens one again, and the reserve holds a few dozen idle ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_auth_endpoint_connections_count_against_the_descriptor_budget() {
    room_is_made_from(Idle::AuthEndpoint).await;
}

/// An auth endpoint that lets every request through, on connections it keeps alive.
async fn auth_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Empty::<hyper::body::Bytes>::new()))
                });
                let io = hyper_util::rt::TokioIo::new(s);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    (addr, task)
}

async fn room_is_made_from(kind: Idle) {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let eps = c.endpoints();
    let (ws_backend, http_backend) = (EchoBackend::start("e1").await, HttpBackend::start("h1").await);
    let (gate, _gate_task) = auth_endpoint().await;
    let gate_url = format!("http://{gate}/check");
    let mut setup = vec![vec!["pool", "create", "ws"], vec!["backend", "add", "ws", &ws_backend.addr]];
    setup.extend(match kind {
        Idle::Backend => vec![
            vec!["route", "set", "all", "--pool", "ws"],
            vec!["pool", "create", "web"],
            vec!["backend", "add", "web", &http_backend.addr],
            vec!["route", "set", "web", "--pool", "web", "--host", "app.example"],
        ],
        Idle::AuthEndpoint => vec![vec!["route", "set", "all", "--pool", "ws", "--auth-request", &gate_url]],
    });
    for args in setup {
        let mut all = vec!["--endpoints", &eps];
        all.extend(args.iter());
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // 200 descriptors: 128 kept for the rest (the admin port's 64 among them), room for 36.
    let proxy = ProxyProcess::spawn_limited(&eps, &c.dir.path().join("p.cache"), "p1", &[], 200);
    eventually("the proxy to route", LONG, || async {
        match kind {
            Idle::Backend => {
                let mut tx = http_client(&proxy.ws).await;
                (http_send(&mut tx, get("/", &[])).await.0 == 200).then_some(())
            }
            Idle::AuthEndpoint => ws_connect(&proxy.ws, "/", &[]).await.ok().map(drop),
        }
    })
    .await;
    let s = proxy.status().await.unwrap();
    assert_eq!(s["max_connections"].as_u64(), Some(36), "{s}");

    // Overlapping requests (or handshakes, each asking the auth endpoint) leave idle
    // connections once their clients are gone (how many depends on how far they overlapped:
    // one is enough to make the point).
    let clients = (0..16).map(|_| {
        let addr = proxy.ws.clone();
        tokio::spawn(async move {
            match kind {
                Idle::Backend => {
                    let mut tx = http_client(&addr).await;
                    http_send(&mut tx, get("/drip?ms=100&n=3", &[])).await.0
                }
                Idle::AuthEndpoint => match ws_connect(&addr, "/", &[]).await {
                    Ok(_) => 101,
                    Err(e) => panic!("an authenticated handshake: {e}"),
                },
            }
        })
    });
    let want = if kind == Idle::Backend { 200 } else { 101 };
    for r in futures::future::join_all(clients).await {
        assert_eq!(r.unwrap(), want);
    }
    let s = eventually("the clients to be gone and their idle connections counted", LONG, || async {
        let s = proxy.status().await?;
        (s["open_connections"].as_u64() == Some(0) && s["idle_backend_connections"].as_u64() >= Some(1)).then_some(s)
    })
    .await;
    let pooled = s["idle_backend_connections"].as_u64().unwrap();

    // Every client slot is usable at the first try: the idle connections go (the client that
    // finds them in its way is let in while every worker closes its own), rather than waiting
    // for their sweep; and the backend is never blamed.
    let mut held = Vec::new();
    for i in 0..36 {
        let r = ws_connect(&proxy.ws, "/", &[]).await;
        held.push(r.unwrap_or_else(|e| panic!("WebSocket {i} of 36 with {pooled} idle connections: {e}")).0);
    }
    let e = ws_connect(&proxy.ws, "/", &[]).await.map(|_| ()).expect_err("the 37th is over the room");
    assert!(e.to_string().contains("503"), "{e}");
    let s = eventually("every worker's idle connections closed", LONG, || async {
        let s = proxy.status().await?;
        (s["idle_backend_connections"].as_u64() == Some(0)).then_some(s)
    })
    .await;
    assert_eq!(s["open_connections"].as_u64(), Some(36), "{s}");
    assert_eq!(s["handshake_failures"]["max_connections"].as_u64(), Some(1), "only the 37th: {s}");
    assert!(s["handshake_failures"]["no_backend"].is_null(), "the backend was never out of use: {s}");
    echo(&mut held[35], tokio_tungstenite::tungstenite::Message::text("last")).await.unwrap();
}
