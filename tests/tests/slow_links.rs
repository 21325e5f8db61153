//! Peer links slower than a heartbeat: openraft gives each AppendEntries its
//! `heartbeat_interval` as a deadline, so with that equal to a 50 ms heartbeat, a 30-40 ms
//! one-way link (60-80 ms round trip) timed out every replication and nothing committed.

use std::time::{Duration, Instant};

use switchyard_proto::v1::*;
use switchyard_tests::chaos::relay::Faults;
use switchyard_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_over_peer_links_slower_than_a_heartbeat() {
    let _g = serial().await;
    // The default 50 ms heartbeat; elections wider than the defaults, so a busy 2-core
    // machine does not add spurious elections to the latency.
    let flags = ["--heartbeat-ms", "50", "--election-min-ms", "300", "--election-max-ms", "500"];
    let c = RelayedCluster::start(3, &[&flags[..], &["--write-timeout-ms", "3000"]].concat()).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let addr = c.nodes[&leader].addr.clone();
    admin(&addr)
        .create_pool(CreatePoolRequest { pool: Some(Pool { name: "before".into(), ..Default::default() }) })
        .await
        .expect("a write before any latency");

    c.set_links(Faults { delay: Some((Duration::from_millis(35), Duration::from_millis(5))), ..Default::default() });
    let term = status(&addr).await.expect("status").term;
    let started = Instant::now();
    let writes = 10;
    for i in 0..writes {
        let pool = Pool { name: format!("slow-{i}"), ..Default::default() };
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            admin(&addr).create_pool(CreatePoolRequest { pool: Some(pool) }),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("write {i} over 30-40 ms links failed: {e}"),
            Err(_) => panic!("write {i} over 30-40 ms links did not commit in 5 s"),
        }
    }
    let per_write = started.elapsed() / writes;
    let after = status(&addr).await.expect("status");
    println!("{writes} writes over 30-40 ms peer links: {per_write:?} each; term {term} -> {}", after.term);
    assert_eq!(after.leader_id, leader, "the leader held through the latency");
}
