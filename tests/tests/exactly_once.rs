//! Exactly-once admin writes on a real 3-node cluster: a write whose reply is lost after it
//! committed (a relay cuts the connection when the answer starts) and is retried with the
//! same request id succeeds once, with the first revision, and is not applied again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_model::grpc::{with_request_id, CLIENT_ID_KEY, REQUEST_SEQ_KEY};
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Code, Request};

/// HTTP/2 frame type of HEADERS: the first one a server sends on a stream starts its answer.
const HEADERS: u8 = 0x1;

/// A TCP relay in front of a node that passes a client's request on but cuts both
/// connections the moment the server starts answering (its first HTTP/2 HEADERS frame; the
/// SETTINGS, PING and WINDOW_UPDATE frames before it pass). For a write the answer starts
/// once it has committed, so the client loses the reply to a write that worked.
struct CutAfterCommit {
    addr: String,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CutAfterCommit {
    async fn start(target: &str) -> CutAfterCommit {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let cuts = Arc::new(AtomicUsize::new(0));
        let (target, counter) = (target.to_string(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else { continue };
                tokio::spawn(relay(client, server, counter.clone()));
            }
        });
        CutAfterCommit { addr, cuts, task }
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CutAfterCommit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Client to server: copied as it comes. Server to client: whole frames up to the first
/// HEADERS frame, then both connections are dropped.
async fn relay(client: TcpStream, server: TcpStream, cuts: Arc<AtomicUsize>) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    'read: loop {
        match server_rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // Frame header: 24-bit length, type, flags, stream id.
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf[3] == HEADERS {
                cuts.fetch_add(1, Ordering::SeqCst);
                break 'read;
            }
            if buf.len() < 9 + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..9 + len).collect();
            if client_wr.write_all(&frame).await.is_err() {
                break 'read;
            }
        }
    }
    upstream.abort();
}

fn add(pool: &str, address: &str) -> AddBackendRequest {
    AddBackendRequest {
        backend: Some(Backend { pool: pool.into(), address: address.into(), weight: 1, ..Default::default() }),
    }
}

fn once<T>(req: T, client: &str, seq: u64) -> Request<T> {
    with_request_id(req, client, seq).expect("a valid request id")
}

async fn backends(addr: &str, pool: &str) -> Vec<Backend> {
    let req = ListBackendsRequest { consistency: Consistency::Linearizable as i32, pool: pool.into() };
    query(addr).list_backends(req).await.expect("list backends").into_inner().backends
}

/// A cluster with pool `p`, its leader's address and a follower's.
async fn cluster_with_pool() -> (Cluster, String, String) {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = c.nodes.keys().copied().find(|id| *id != leader).expect("a follower");
    let (leader, follower) = (c.nodes[&leader].addr.clone(), c.nodes[&follower].addr.clone());
    let p = CreatePoolRequest { pool: Some(Pool { name: "p".into(), ..Default::default() }) };
    admin(&leader).create_pool(p).await.expect("create pool");
    (c, leader, follower)
}

/// Sends alice's AddBackend through a relay in front of `via` that loses the reply, and
/// checks the client saw a failure for a write that committed.
async fn add_and_lose_the_reply(via: &str, leader: &str) {
    let relay = CutAfterCommit::start(via).await;
    let err = admin(&relay.addr).add_backend(once(add("p", "10.0.0.1:80"), "alice", 1)).await;
    let err = err.expect_err("the reply was cut off");
    // A broken connection shows as UNKNOWN ("transport error"), which the CLI retries only
    // for a write with a request id.
    assert!(matches!(err.code(), Code::Unavailable | Code::Unknown), "a transport error: {err:?}");
    assert_eq!(relay.cuts(), 1, "cut once, as the answer started");
    assert_eq!(backends(leader, "p").await.len(), 1, "the write committed before the cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_its_reply_was_lost_succeeds_once_with_the_first_revision() {
    let _g = serial().await;
    let (c, leader, follower) = cluster_with_pool().await;
    add_and_lose_the_reply(&follower, &leader).await;

    // The same write, same id, straight to each node: one success, the first revision, and
    // no second backend (nor ALREADY_EXISTS).
    let added = backends(&leader, "p").await.remove(0);
    for n in c.nodes.values() {
        let r = admin(&n.addr).add_backend(once(add("p", "10.0.0.1:80"), "alice", 1)).await;
        let r = r.unwrap_or_else(|s| panic!("retry through node {}: {s:?}", n.id)).into_inner();
        assert_eq!(r.revision, added.updated_revision, "node {}: the revision it was applied at", n.id);
        assert_eq!(r.backend.as_ref(), Some(&added), "node {}: the backend as it was added", n.id);
    }
    assert_eq!(backends(&leader, "p").await, vec![added]);

    // A new seq is a new write: this one is refused because the backend exists.
    let again = admin(&leader).add_backend(once(add("p", "10.0.0.1:80"), "alice", 2)).await;
    assert_eq!(again.expect_err("a second add").code(), Code::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_add_does_not_bring_back_a_backend_removed_since() {
    let _g = serial().await;
    let (_c, leader, follower) = cluster_with_pool().await;
    add_and_lose_the_reply(&leader, &leader).await;
    let added = backends(&leader, "p").await.remove(0);

    let remove = RemoveBackendRequest { pool: "p".into(), address: "10.0.0.1:80".into(), force: false };
    let removed = admin(&follower).remove_backend(once(remove, "bob", 1)).await.expect("bob removes it").into_inner();
    assert!(removed.revision > added.updated_revision);

    let r = admin(&follower).add_backend(once(add("p", "10.0.0.1:80"), "alice", 1)).await;
    let r = r.expect("alice's retry is answered as the first time").into_inner();
    assert_eq!(r.revision, added.updated_revision);
    assert!(backends(&leader, "p").await.is_empty(), "the removed backend stays removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_retries_a_write_whose_reply_was_lost_and_it_applies_once() {
    let _g = serial().await;
    let (_c, leader, _) = cluster_with_pool().await;
    let relay = CutAfterCommit::start(&leader).await;
    // The relay first: the CLI's first attempt loses its reply and is sent again, same id,
    // to the next endpoint.
    let out = tokio::process::Command::new(bin("switchyard"))
        .args(["--endpoints", &format!("{},{leader}", relay.addr), "--output", "json"])
        .args(["backend", "add", "p", "10.0.0.1:80"])
        .output()
        .await
        .expect("run switchyard");
    assert!(out.status.success(), "switchyard backend add: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(relay.cuts(), 1, "the first attempt's reply was cut off");
    let got = backends(&leader, "p").await;
    assert_eq!(got.len(), 1, "applied once");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(printed["address"], "10.0.0.1:80", "{printed}");
    assert_eq!(printed["updated_revision"], got[0].updated_revision, "the first attempt's answer: {printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_id_is_invalid_argument() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let bad: [(&[(&str, &str)], &str); 4] = [
        (&[(CLIENT_ID_KEY, "c"), (REQUEST_SEQ_KEY, "0")], REQUEST_SEQ_KEY),
        (&[(CLIENT_ID_KEY, "c"), (REQUEST_SEQ_KEY, "x")], REQUEST_SEQ_KEY),
        (&[(CLIENT_ID_KEY, &"c".repeat(65)), (REQUEST_SEQ_KEY, "1")], CLIENT_ID_KEY),
        (&[(CLIENT_ID_KEY, "c")], REQUEST_SEQ_KEY),
    ];
    for (md, needle) in bad {
        let mut req = Request::new(CreatePoolRequest { pool: Some(Pool { name: "p".into(), ..Default::default() }) });
        for (k, v) in md {
            req.metadata_mut().insert(*k, v.parse().unwrap());
        }
        let s = admin(&addr).create_pool(req).await.expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{md:?}: {s:?}");
        assert!(s.message().contains(needle), "{md:?}: {}", s.message());
    }
    let pools = query(&addr).list_pools(ReadRequest { consistency: Consistency::Linearizable as i32 }).await;
    assert!(pools.unwrap().into_inner().pools.is_empty(), "nothing was written");
}
