//! The peer service's limits hold against a real node: a request over the peer message cap is
//! refused from its length prefix (not buffered whole), and a Raft core that stops fatally
//! makes the node NOT_SERVING and exits it non-zero, for a supervisor to restart.

use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::Vote;
use switchyard_control::store::{self, log::LogStore};
use switchyard_proto::raft::raft_client::RaftClient;
use switchyard_proto::raft::RaftPayload;
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

/// A process's resident memory in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_250_mb_request_to_the_peer_service_is_refused_from_its_length_prefix() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let n = &c.nodes[&1];
    let cluster_id = status(&n.addr).await.unwrap().cluster_id;
    let before = rss_kib(n.pid().unwrap());
    let garbage = vec![0xA5u8; 250_000_000];
    for method in ["append", "forward"] {
        let mut req = tonic::Request::new(RaftPayload { data: garbage.clone() });
        req.metadata_mut().insert("switchyard-cluster-id", cluster_id.parse().unwrap());
        let mut peer = RaftClient::new(channel(&n.addr)).max_encoding_message_size(usize::MAX);
        let r = match method {
            "append" => peer.append_entries(req).await,
            _ => peer.forward(req).await,
        };
        let e = r.expect_err("a 250 MB request must be refused");
        assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{method}: {e}");
        assert!(e.message().contains("too large"), "{method}: {e}");
    }
    let after = rss_kib(n.pid().unwrap());
    eprintln!("peer service RSS around two 250 MB requests: {before} KiB before, {after} KiB after");
    let req = CreatePoolRequest { pool: Some(Pool { name: "still".into(), ..Default::default() }) };
    admin(&n.addr).create_pool(req).await.expect("the node still takes writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_core_that_stops_fatally_turns_health_not_serving_and_exits_non_zero() {
    let _g = serial().await;
    let mut c = Cluster::start(1, &[]).await;
    let req = CreatePoolRequest { pool: Some(Pool { name: "p".into(), ..Default::default() }) };
    admin(&c.nodes[&1].addr).create_pool(req).await.unwrap();
    assert!(c.node(1).terminate().success());
    // A vote persisted at term u64::MAX (as one forged Vote left it before the peer service
    // refused such votes): at its next election the core adds 1 to the term and panics.
    {
        // Without sled's background flusher, which could still hold the lock when the node
        // opens the dir.
        let db = store::open_with(&c.nodes[&1].data_dir, 1, false).unwrap();
        let mut log = LogStore::new(db, &c.nodes[&1].data_dir).unwrap();
        log.save_vote(&Vote::new(u64::MAX, 2)).await.unwrap();
    }
    // The log's purge thread holds the database a little after the drop: the node starts
    // once it could open the dir itself.
    let dir = c.nodes[&1].data_dir.clone();
    eventually("the data dir to be free", Duration::from_secs(10), || {
        let dir = dir.clone();
        async move { store::open_with(&dir, 1, false).ok().map(drop) }
    })
    .await;
    c.node(1).start();
    let addr = c.nodes[&1].addr.clone();
    let req = HealthCheckRequest { service: String::new() };
    let mut health = HealthClient::new(channel(&addr)).watch(req).await.expect("health watch").into_inner();
    let mut seen = Vec::new();
    while let Ok(Some(r)) = health.message().await {
        seen.push(r.status);
        if r.status == ServingStatus::NotServing as i32 {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&(ServingStatus::NotServing as i32)), "health went NOT_SERVING: {seen:?}");
    let status = c.node(1).wait_exit(Duration::from_secs(20)).expect("the node exits by itself");
    assert_eq!(status.code(), Some(1), "{status}");
    let log = std::fs::read_to_string(c.nodes[&1].data_dir.with_extension("log")).unwrap();
    assert!(log.contains("the Raft core") && log.contains("fatal"), "{log}");
}
