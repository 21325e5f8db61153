//! A rolling upgrade of a real 3-node cluster and two proxies, one process at a time, under
//! WebSocket load and admin writes.
//!
//! The "old" release is this build with `SWITCHYARD_TEST_MAX_FEATURE_LEVEL=1` (what it
//! advertises and accepts), the "new" one the same build without it. Every node is restarted
//! (SIGTERM, then started again on its data dir) as the new release; the feature level stays 1
//! while any node is old, and a level-2 write (`session delete --all`) is refused naming the
//! old node; after the last restart the leader raises the level to 2 by itself and the write
//! is accepted. Then each proxy is replaced: the new process gets the same listening socket
//! (as from systemd), the old one is sent SIGTERM and closes its connections with 1001 over its
//! grace period, and their clients reconnect to the same address.
//!
//! What must hold: no WebSocket connection ends while nodes restart; through a proxy restart
//! every connection ends only with a Close 1001 from the proxy and reconnects at once (no
//! reset, refusal or failed handshake); every message is echoed; every acknowledged write is
//! in the final state.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use switchyard_model::grpc::{outcome_unknown, with_request_id};
use switchyard_model::version;
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;

/// Clients held through each proxy.
const CLIENTS_PER_PROXY: usize = 4;

#[derive(Default)]
struct Load {
    echoed: AtomicU64,
    /// Connections the proxy ended with Close 1001 (each reconnected).
    going_away: AtomicU64,
    /// Anything else: a reset, a refused connect or handshake, another close code, a lost
    /// or wrong echo.
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Load {
    fn fail(&self, why: String) {
        self.failures.lock().unwrap().push(why);
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

/// One client: connects through `proxy`, sends a numbered message every 20 ms and expects it
/// back; reconnects (resending what was in flight) after a Close 1001 from the proxy.
async fn client(proxy: String, name: String, load: Arc<Load>) {
    let mut seq = 0u64;
    'connect: while !load.stop.load(Ordering::SeqCst) {
        let mut ws = match ws_connect(&proxy, "/", &[]).await {
            Ok((ws, _backend)) => ws,
            Err(e) => return load.fail(format!("{name}: connect through {proxy}: {e}")),
        };
        while !load.stop.load(Ordering::SeqCst) {
            let m = Message::text(format!("{name}-{seq}"));
            if let Err(e) = ws.send(m.clone()).await {
                return load.fail(format!("{name}: send: {e}"));
            }
            let reply = loop {
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    // The proxy's keep-alive pings (answered by tungstenite) are not replies.
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    r => break r,
                }
            };
            match reply {
                Ok(Some(Ok(r))) if r == m => {
                    load.echoed.fetch_add(1, Ordering::SeqCst);
                    seq += 1;
                }
                Ok(Some(Ok(Message::Close(Some(f))))) if f.code == CloseCode::Away => {
                    load.going_away.fetch_add(1, Ordering::SeqCst);
                    continue 'connect;
                }
                other => return load.fail(format!("{name}: message {seq}: {other:?}")),
            }
            // Pacing, not waiting: a client that talks every 20 ms the whole run.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = ws.close(None).await;
    }
}

/// Admin writes with request ids, each retried with the same id on the next node until
/// acknowledged: the backends it added (acknowledged), in pool `writes`.
async fn writer(endpoints: Vec<String>, load: Arc<Load>) -> Vec<String> {
    let mut acked = Vec::new();
    let mut next = 0usize;
    for seq in 1u64.. {
        if load.stop.load(Ordering::SeqCst) {
            break;
        }
        let address = format!("10.9.{}.{}:80", seq / 250, seq % 250 + 1);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let b = Backend { pool: "writes".into(), address: address.clone(), weight: 1, ..Default::default() };
            let req = with_request_id(AddBackendRequest { backend: Some(b) }, "upgrade-writer", seq).unwrap();
            match admin(&endpoints[next % endpoints.len()]).add_backend(req).await {
                Ok(_) => break,
                Err(s)
                    if outcome_unknown(&s)
                        || matches!(
                            s.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                        ) =>
                {
                    next += 1;
                    assert!(Instant::now() < deadline, "write {seq} not acknowledged within 15 s: {s}");
                    // Back-off between retries of the same write, bounded by the deadline above.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("write {seq} refused: {s}"),
            }
        }
        acked.push(address);
        // Pacing: a steady trickle of writes through every restart, not a flood.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    acked
}

/// The feature level of this build, which the cluster reaches once every node runs it.
const TOP: u32 = version::MAX_FEATURE_LEVEL;

/// A pool with TLS to its backends: the write gated at feature level 3.
fn tls_pool() -> CreatePoolRequest {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
    let backend_tls = Some(BackendTls { enabled: true, ca_pem, server_name: String::new() });
    CreatePoolRequest { pool: Some(Pool { name: "tls".into(), backend_tls, ..Default::default() }) }
}

/// `session delete POOL --all`: the command gated at feature level 2.
async fn delete_all_sessions(addr: &str) -> Result<u64, tonic::Status> {
    let req = DeleteSessionRequest { pool: "chat".into(), key: String::new(), all: true };
    admin(addr).delete_session(req).await.map(|r| r.into_inner().revision)
}

/// Waits until every running node answers with the same leader and has applied what the
/// leader had committed when asked.
async fn caught_up(c: &Cluster) {
    let leader = c.leader(Duration::from_secs(15)).await;
    let target = status(&c.nodes[&leader].addr).await.expect("leader status").committed_index;
    eventually("every node caught up with the leader", Duration::from_secs(15), || async {
        for n in c.nodes.values() {
            if status(&n.addr).await?.applied_revision < target {
                return None;
            }
        }
        Some(())
    })
    .await;
}

async fn feature_levels(c: &Cluster) -> Vec<u32> {
    let mut out = Vec::new();
    for n in c.nodes.values() {
        out.push(status(&n.addr).await.map_or(0, |s| s.feature_level));
    }
    out
}

/// Blocking process control (waiting for an exit, or for a first line) off the runtime's
/// threads, so clients and the writer keep running meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_and_its_proxies_upgrade_one_process_at_a_time_without_dropping_anyone() {
    let _g = serial().await;
    let t0 = Instant::now();
    let old = vec![(version::TEST_MAX_FEATURE_LEVEL_ENV.to_string(), "1".to_string())];
    let mut c = Cluster::start_env(3, &[], switchyard_model::grpc::ClientTls::cleartext(), &old).await;
    eprintln!("cluster up at {:?}", t0.elapsed());
    let endpoints: Vec<String> = c.nodes.values().map(|n| n.addr.clone()).collect();
    let any = endpoints[0].clone();

    // A caller of another major version is refused, naming both versions.
    let raw = tonic::transport::Endpoint::from_shared(format!("http://{any}")).unwrap().connect().await.unwrap();
    let mut req = tonic::Request::new(ClusterStatusRequest {});
    req.metadata_mut().insert(version::PROTOCOL_KEY, "2.0".parse().unwrap());
    req.metadata_mut().insert(version::VERSION_KEY, "9.0.0".parse().unwrap());
    let s = query_client::QueryClient::new(raw.clone()).cluster_status(req).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let ours = format!("{} (protocol {})", version::VERSION, version::PROTOCOL);
    assert!(s.message().contains("9.0.0 (protocol 2.0)") && s.message().contains(&ours), "{}", s.message());
    // Without any version header (grpcurl, an old client): served, and told the server's.
    let r = query_client::QueryClient::new(raw).cluster_status(ClusterStatusRequest {}).await.unwrap();
    assert_eq!(r.metadata().get(version::VERSION_KEY).unwrap(), version::VERSION);

    let backends = [EchoBackend::start("b1").await, EchoBackend::start("b2").await];
    let rev = route_all(&any, "chat", &[&backends[0].addr, &backends[1].addr]).await;
    let p = Pool { name: "writes".into(), ..Default::default() };
    admin(&any).create_pool(CreatePoolRequest { pool: Some(p) }).await.expect("pool writes");

    let sockets =
        [std::net::TcpListener::bind("127.0.0.1:0").unwrap(), std::net::TcpListener::bind("127.0.0.1:0").unwrap()];
    let cp = endpoints.join(",");
    let mut proxies: Vec<ProxyProcess> = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            ProxyProcess::spawn_on(
                s,
                &cp,
                &c.dir.path().join(format!("proxy-{i}.cache")),
                &format!("edge-{i}"),
                "127.0.0.1:0",
            )
        })
        .collect();
    for p in &proxies {
        p.wait_revision(rev).await;
        let st = p.status().await.expect("proxy status");
        assert!(st["control_plane"]["connected"].as_bool().unwrap_or(false), "{st}");
        // The proxy says what it runs and what the node it follows runs.
        assert_eq!(st["versions"]["proxy"], env!("CARGO_PKG_VERSION"), "{st}");
        assert!(st["versions"]["control_plane_node"].as_str().is_some_and(|v| !v.is_empty()), "{st}");
    }

    eprintln!("setup done at {:?}", t0.elapsed());
    let load = Arc::new(Load::default());
    let mut clients = Vec::new();
    for (i, p) in proxies.iter().enumerate() {
        for j in 0..CLIENTS_PER_PROXY {
            clients.push(tokio::spawn(client(p.ws.clone(), format!("p{i}c{j}"), load.clone())));
        }
    }
    let writes = tokio::spawn(writer(endpoints.clone(), load.clone()));
    eventually("every client echoing", Duration::from_secs(10), || async {
        (load.echoed.load(Ordering::SeqCst) >= 2 * (2 * CLIENTS_PER_PROXY) as u64).then_some(())
    })
    .await;

    // Every node old: the level-2 write is refused with the reason, once the leader has heard
    // from every member (within a second or so).
    let refusal = eventually("the leader to name the old nodes", Duration::from_secs(10), || async {
        let e = delete_all_sessions(&any).await.expect_err("level 2 refused at level 1");
        (e.code() == Code::FailedPrecondition && e.message().contains("max level 1")).then(|| e.message().to_string())
    })
    .await;
    assert!(refusal.contains("needs feature level 2; the cluster runs at 1 until every node is upgraded"), "{refusal}");
    let e = admin(&any).create_pool(tls_pool()).await.expect_err("level 3 refused at level 1");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("TLS to a pool's backends needs feature level 3"), "{}", e.message());

    // Nodes one at a time, as the new release (no env var).
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    for (k, id) in ids.iter().enumerate() {
        let t = Instant::now();
        let status = blocking(|| c.node(*id).terminate());
        eprintln!("node {id} stopped in {:?}", t.elapsed());
        assert!(status.success(), "node {id} exited {status} on SIGTERM");
        c.node(*id).env.clear();
        blocking(|| c.node(*id).start());
        caught_up(&c).await;
        eprintln!("node {id} back and caught up after {:?}", t.elapsed());
        if k + 1 < ids.len() {
            // Still a mixed cluster: stays at 1, and the refusal names an old node.
            assert_eq!(feature_levels(&c).await, vec![1, 1, 1]);
            let e = delete_all_sessions(&any).await.expect_err("still refused");
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            let old_one = format!("node {} runs {}, max level 1", ids[ids.len() - 1], version::VERSION);
            assert!(e.message().contains(&old_one) || e.message().contains("has not said"), "{}", e.message());
        }
    }
    eventually("the leader to raise the feature level to the top by itself", Duration::from_secs(10), || async {
        (feature_levels(&c).await == vec![TOP; 3]).then_some(())
    })
    .await;
    delete_all_sessions(&any).await.expect("level-2 write accepted at the top level");
    admin(&any).create_pool(tls_pool()).await.expect("level-3 write accepted at the top level");
    let st = status(&any).await.unwrap();
    assert_eq!((st.feature_level, st.max_feature_level, st.version.as_str()), (TOP, TOP, version::VERSION));
    for m in &st.members {
        assert_eq!((m.version.as_str(), m.max_feature_level), (version::VERSION, TOP), "member {m:?}");
    }
    // What an operator sees: `switchyard cluster status` and `switchyard-control --version`.
    let out = std::process::Command::new(bin("switchyard"))
        .args(["--endpoints", &any, "-o", "json", "cluster", "status"])
        .output()
        .expect("run switchyard");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cluster status JSON");
    assert_eq!(j["feature_level"], TOP, "{j}");
    for m in j["members"].as_array().expect("members") {
        let want = (Some(version::VERSION), Some(TOP as u64));
        assert_eq!((m["version"].as_str(), m["max_feature_level"].as_u64()), want, "{m}");
    }
    let out = std::process::Command::new(bin("switchyard-control")).arg("--version").output().expect("--version");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let want =
        format!("switchyard-control {} (protocol {}, max feature level {TOP})", version::VERSION, version::PROTOCOL);
    assert_eq!(line.trim_end(), want);
    // A node of the old release can no longer be added: it could not apply the log.
    let mut flags = test_flags();
    flags.push("--join".into());
    let n4 = blocking(|| ControlNode::spawn_env(4, reserve(), &c.dir.path().join("node-4"), &flags, &old));
    let e = admin(&any).add_node(AddNodeRequest { id: 4, address: n4.addr.clone() }).await.expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let want = format!("node 4 runs {}, max feature level 1, and the cluster runs at {TOP}", version::VERSION);
    assert!(e.message().contains(&want), "{}", e.message());
    drop(n4);
    assert!(load.failures().is_empty(), "failures while nodes restarted: {:?}", load.failures());
    assert_eq!(load.going_away.load(Ordering::SeqCst), 0, "no connection ends while nodes restart");

    eprintln!("nodes done at {:?}", t0.elapsed());
    // Proxies one at a time: the new process takes the socket, then the old one drains.
    for i in 0..proxies.len() {
        let before = load.going_away.load(Ordering::SeqCst);
        // Same socket, same cache file: it serves from its first accepted connection. Same
        // admin port too, as a unit or manifest fixes it: bound beside the old process's.
        let cache = c.dir.path().join(format!("proxy-{i}.cache"));
        let admin = proxies[i].admin.clone();
        let new = blocking(|| ProxyProcess::spawn_on(&sockets[i], &cp, &cache, &format!("edge-{i}"), &admin));
        assert_eq!(new.admin, admin);
        // While both processes accept from the socket, new clients get in, whichever takes them.
        for k in 0..6 {
            let (mut ws, _) = ws_connect(&new.ws, "/", &[]).await.unwrap_or_else(|e| panic!("new client {k}: {e}"));
            echo(&mut ws, Message::text("hello")).await.expect("echo while two processes share the socket");
        }
        new.wait_revision(rev).await;
        let exit = blocking(|| proxies[i].terminate());
        assert!(exit.success(), "proxy {i} exited {exit} on SIGTERM");
        proxies[i] = new;
        eventually("proxy's clients reconnected after its drain", Duration::from_secs(10), || async {
            (load.going_away.load(Ordering::SeqCst) - before == CLIENTS_PER_PROXY as u64).then_some(())
        })
        .await;
    }
    // Everyone still exchanges messages afterwards.
    let echoed = load.echoed.load(Ordering::SeqCst);
    eventually("echoes after the proxy restarts", Duration::from_secs(5), || async {
        (load.echoed.load(Ordering::SeqCst) >= echoed + 2 * (2 * CLIENTS_PER_PROXY) as u64).then_some(())
    })
    .await;

    load.stop.store(true, Ordering::SeqCst);
    let acked = writes.await.expect("writer");
    for c in clients {
        c.await.expect("client task");
    }
    assert!(load.failures().is_empty(), "connections dropped or messages lost: {:?}", load.failures());
    assert_eq!(load.going_away.load(Ordering::SeqCst), 2 * CLIENTS_PER_PROXY as u64);

    // Every acknowledged write is there.
    let req = ListBackendsRequest { consistency: Consistency::Linearizable as i32, pool: "writes".into() };
    let stored: BTreeSet<String> = query(&any)
        .list_backends(req)
        .await
        .expect("list")
        .into_inner()
        .backends
        .into_iter()
        .map(|b| b.address)
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|a| !stored.contains(*a)).collect();
    assert!(acked.len() >= 20, "the writer only got {} writes in", acked.len());
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");

    // No way back: an old binary refuses the upgraded cluster's data dir, by name.
    blocking(|| c.node(1).terminate());
    let mut args = c.nodes[&1].args.clone();
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let log = c.dir.path().join("downgrade.log");
    let mut old_node = Proc::default();
    old_node.set(
        std::process::Command::new(bin("switchyard-control"))
            .args(&args)
            .envs(old.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the old binary"),
    );
    let exit = blocking(|| old_node.wait_exit(Duration::from_secs(20))).expect("the old binary refuses to start");
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!exit.success(), "{err}");
    assert!(err.contains(&format!("runs at feature level {TOP}")) && err.contains("supports at most level 1"), "{err}");

    eprintln!(
        "upgrade: {} writes, {} echoes, {} reconnects, {:.1}s",
        acked.len(),
        load.echoed.load(Ordering::SeqCst),
        load.going_away.load(Ordering::SeqCst),
        t0.elapsed().as_secs_f64()
    );
}
