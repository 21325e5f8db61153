//! A real 3-node control plane: formation, replication, leader loss, membership changes and
//! snapshots. Each test starts `switchyard-control` processes with their own sled dirs.

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;

fn pool(name: &str) -> CreatePoolRequest {
    CreatePoolRequest { pool: Some(Pool { name: name.into(), ..Default::default() }) }
}

async fn pool_names(addr: &str, consistency: Consistency) -> Option<BTreeSet<String>> {
    let r = query(addr).list_pools(ReadRequest { consistency: consistency as i32 }).await.ok()?;
    Some(r.into_inner().pools.into_iter().map(|p| p.name).collect())
}

/// Creates pool `name` through `endpoints` in turn until acknowledged. ALREADY_EXISTS after a
/// retry means an earlier attempt committed, which counts as acknowledged too.
async fn create_acked(endpoints: &[String], name: &str, start: usize) -> usize {
    let mut i = start;
    let mut tried = false;
    loop {
        let addr = &endpoints[i % endpoints.len()];
        match admin(addr).create_pool(pool(name)).await {
            Ok(_) => return i,
            Err(s) if s.code() == Code::AlreadyExists && tried => return i,
            Err(s) if s.code() == Code::AlreadyExists => panic!("{name} existed before it was written"),
            Err(_) => {
                tried = true;
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_writes_through_any_node_reach_every_node() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    assert!((1..=3).contains(&leader));
    let status = status(&c.nodes[&1].addr).await.unwrap();
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| m.role == MemberRole::Voter as i32));

    // One write through each node, followers included: they forward to the leader.
    for (id, n) in &c.nodes {
        let r = admin(&n.addr).create_pool(pool(&format!("via-{id}"))).await.expect("write through node");
        assert!(r.into_inner().revision > 0);
    }
    let want: BTreeSet<String> = (1..=3).map(|i| format!("via-{i}")).collect();
    for n in c.nodes.values() {
        // Linearizable reads see every acknowledged write at once, on any node.
        assert_eq!(pool_names(&n.addr, Consistency::Linearizable).await.unwrap(), want, "node {}", n.id);
        // Local reads catch up.
        eventually("local read to catch up", Duration::from_secs(5), || async {
            (pool_names(&n.addr, Consistency::Local).await? == want).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_writes_loses_no_acknowledged_write_and_rejoins() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = c.nodes.values().map(|n| n.addr.clone()).collect();
    let old = c.leader(Duration::from_secs(10)).await;

    let mut acked = Vec::new();
    let mut next = 0;
    for i in 0..40 {
        let name = format!("w-{i}");
        next = create_acked(&endpoints, &name, next).await;
        acked.push(name);
    }
    c.node(old).kill9();
    // Writes go on through every endpoint, the dead one included, while a new leader is elected.
    for i in 40..80 {
        let name = format!("w-{i}");
        next = create_acked(&endpoints, &name, next).await;
        acked.push(name);
    }
    let new = c.leader(Duration::from_secs(5)).await;
    assert_ne!(new, old, "a new leader took over");

    let want: BTreeSet<String> = acked.iter().cloned().collect();
    for n in c.nodes.values().filter(|n| n.is_running()) {
        let got = pool_names(&n.addr, Consistency::Linearizable).await.unwrap();
        assert_eq!(got, want, "node {} has every acknowledged write and nothing else", n.id);
    }

    // The killed node restarts from its sled dir and catches up.
    c.node(old).start();
    let addr = c.nodes[&old].addr.clone();
    eventually("restarted node to catch up", Duration::from_secs(15), || async {
        (pool_names(&addr, Consistency::Local).await? == want).then_some(())
    })
    .await;
}

/// One sample of this node's metrics (`name{labels}` as exposed), 0 if absent.
async fn metric(n: &ControlNode, sample: &str) -> f64 {
    let text = n.scrape().await.unwrap_or_else(|| panic!("node {} serves /metrics", n.id));
    let key = format!("{sample} ");
    text.lines().find_map(|l| l.strip_prefix(&key)?.trim().parse().ok()).unwrap_or(0.0)
}

/// Elections this node called for `why`, from its metrics.
async fn elections(n: &ControlNode, why: &str) -> f64 {
    metric(n, &format!("switchyard_control_elections_called_total{{why=\"{why}\"}}")).await
}

/// Elections for silence called by every node but `except`.
async fn silent_elections(c: &Cluster, except: u64) -> f64 {
    let mut sum = 0.0;
    for n in c.nodes.values().filter(|n| n.id != except) {
        sum += elections(n, "leader_silent").await;
    }
    sum
}

/// A leader whose process dies is replaced because its followers see it gone (the stream
/// each holds open to it breaks and its port turns them away), not because it went silent:
/// here silence would take over 4 s, and the test fails if any node stood for silence or
/// the winner did not stand for the leader being gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_because_its_followers_see_it_gone() {
    let _g = serial().await;
    let timing = ["--heartbeat-ms", "100", "--election-min-ms", "400", "--election-max-ms", "4000"];
    let mut c = Cluster::start_timed(3, &timing).await;
    let endpoints: Vec<String> = c.nodes.values().map(|n| n.addr.clone()).collect();
    let old = c.leader(Duration::from_secs(10)).await;
    // The followers hold their streams by the time a write has gone through the leader.
    create_acked(&endpoints, "before", 0).await;
    // Counted on the same nodes before and after: the survivors.
    let before = silent_elections(&c, old).await;
    c.node(old).kill9();
    let new = c.leader(Duration::from_secs(15)).await;
    assert_ne!(new, old);
    assert!(elections(&c.nodes[&new], "leader_gone").await >= 1.0, "node {new} won standing for the leader being gone");
    assert_eq!(silent_elections(&c, old).await, before, "no node stood for silence");
    create_acked(&endpoints, "after", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_added_from_snapshot_promoted_and_removed() {
    let _g = serial().await;
    // Snapshot often and keep no log behind it, so a new node can only catch up by snapshot.
    let c = Cluster::start(3, &["--snapshot-every", "20", "--keep-logs", "0"]).await;
    let endpoints: Vec<String> = c.nodes.values().map(|n| n.addr.clone()).collect();
    for i in 0..60 {
        create_acked(&endpoints, &format!("s-{i}"), i).await;
    }
    let leader = c.leader(Duration::from_secs(5)).await;
    let s = eventually("leader to snapshot and purge its log", Duration::from_secs(10), || async {
        let s = status(&c.nodes[&leader].addr).await?;
        (s.snapshot_index > 0 && s.purged_index > 0).then_some(s)
    })
    .await;
    assert!(s.purged_index >= 20, "log compacted: purged up to {}", s.purged_index);

    let mut flags = test_flags();
    flags.push("--join".into());
    let n4 = ControlNode::spawn(4, reserve(), &c.dir.path().join("node-4"), &flags);
    let addr4 = n4.addr.clone();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin("switchyard"))
            .args(["--endpoints", &c.endpoints(), "--output", "json"])
            .args(args)
            .output()
            .expect("run switchyard");
        assert!(out.status.success(), "switchyard {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json output")
    };
    let members = cli(&["cluster", "add-node", "4", &addr4]);
    assert!(members.as_array().unwrap().iter().any(|m| m["id"] == 4 && m["role"] == "learner"), "{members}");

    let want: BTreeSet<String> = (0..60).map(|i| format!("s-{i}")).collect();
    eventually("learner to catch up", Duration::from_secs(15), || async {
        (pool_names(&n4.addr, Consistency::Local).await? == want).then_some(())
    })
    .await;
    let s4 = status(&n4.addr).await.unwrap();
    assert!(s4.snapshot_index > 0, "node 4 installed a snapshot (its log started at {})", s4.purged_index);

    let members = cli(&["cluster", "promote", "4"]);
    assert!(members.as_array().unwrap().iter().any(|m| m["id"] == 4 && m["role"] == "voter"), "{members}");
    // A write through the new voter.
    admin(&n4.addr).create_pool(pool("after-promote")).await.expect("write via node 4");

    let members = cli(&["cluster", "remove-node", "4"]);
    assert!(!members.as_array().unwrap().iter().any(|m| m["id"] == 4), "{members}");
    let status = cli(&["cluster", "status"]);
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
}

#[derive(Default)]
struct Seen {
    revs: Vec<u64>,
    names: Vec<String>,
    snapshots: usize,
}

async fn collect_until(stream: &mut tonic::Streaming<WatchEvent>, seen: &mut Seen, want_pool: &str) {
    let Seen { revs, names, snapshots } = seen;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("watch event in time")
            .expect("stream ok")
            .expect("stream open");
        if let Some(watch_event::Kind::Progress(p)) = &ev.kind {
            // Progress changes nothing; it never names a revision below one already sent.
            assert!(
                revs.last().is_none_or(|l| p.node_revision >= *l),
                "progress at {} after {revs:?}",
                p.node_revision
            );
            continue;
        }
        if let Some(last) = revs.last() {
            assert!(ev.revision > *last, "revision went from {last} to {}", ev.revision);
        }
        revs.push(ev.revision);
        match ev.kind {
            Some(watch_event::Kind::Snapshot(t)) => {
                *snapshots += 1;
                names.extend(t.pools.into_iter().map(|p| p.name))
            }
            Some(watch_event::Kind::Changes(cs)) => {
                for ch in cs.changes {
                    if let Some(change::Kind::PoolPut(p)) = ch.kind {
                        names.push(p.name);
                    }
                }
            }
            Some(watch_event::Kind::Progress(_)) => unreachable!("skipped above"),
            None => panic!("empty event"),
        }
        if names.iter().any(|n| n == want_pool) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_follower_resumes_on_another_node_without_gaps_or_repeats() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let followers: Vec<&ControlNode> = c.nodes.values().filter(|n| n.id != leader).collect();
    let leader_addr = &c.nodes[&leader].addr;
    admin(leader_addr).create_pool(pool("before")).await.unwrap();

    let mut seen = Seen::default();
    let mut s1 = discovery(&followers[0].addr)
        .watch(WatchRequest { proxy_id: "t".into(), from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    for i in 0..20 {
        admin(leader_addr).create_pool(pool(&format!("a-{i}"))).await.unwrap();
    }
    collect_until(&mut s1, &mut seen, "a-19").await;
    drop(s1); // the stream is cut

    // Written while nobody watches.
    for i in 0..20 {
        admin(leader_addr).create_pool(pool(&format!("b-{i}"))).await.unwrap();
    }
    let last = *seen.revs.last().unwrap();
    let mut s2 = discovery(&followers[1].addr)
        .watch(WatchRequest { proxy_id: "t".into(), from_revision: last })
        .await
        .unwrap()
        .into_inner();
    collect_until(&mut s2, &mut seen, "b-19").await;

    let mut want = vec!["before".to_string()];
    want.extend((0..20).map(|i| format!("a-{i}")));
    want.extend((0..20).map(|i| format!("b-{i}")));
    assert_eq!(seen.names, want, "every change once, in order");
    // Resumed from the node's history: change sets only, no second snapshot.
    assert_eq!(seen.snapshots, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_quorum_answer_unavailable_and_reads_fail_fast() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let others: Vec<u64> = c.nodes.keys().copied().filter(|i| *i != leader).collect();
    for id in &others {
        c.node(*id).kill9();
    }
    let addr = c.nodes[&leader].addr.clone();
    let started = std::time::Instant::now();
    let err = admin(&addr).create_pool(pool("lost")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("no quorum"), "{}", err.message());
    // Clients learn that the write may still commit from metadata, not from the text.
    assert!(switchyard_model::grpc::outcome_unknown(&err), "{:?}", err.metadata());
    // Bounded by the node's write timeout (3s here), not hanging until the client gives up.
    assert!(started.elapsed() < Duration::from_secs(9), "answered in {:?}", started.elapsed());
    let err = query(&addr).list_pools(ReadRequest { consistency: Consistency::Linearizable as i32 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // A local read still answers.
    assert!(pool_names(&addr, Consistency::Local).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_asked_for_port_0_reports_and_advertises_the_port_it_got() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Proc::default();
    let mut cmd = std::process::Command::new(bin("switchyard-control"));
    cmd.args(["--id", "1", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("node-1"))
        .stderr(std::process::Stdio::null());
    let line = node.start_reporting(&mut cmd, "switchyard-control");
    let (addr, metrics) = line
        .strip_prefix("listening grpc=")
        .and_then(|r| r.split_once(" metrics="))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert!(addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() != 0), "{line:?}");
    assert!(metrics.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() != 0), "{line:?}");
    assert!(http_get(metrics, "/healthz").await.is_some(), "the metrics port answers");
    let s = eventually("the node to lead", Duration::from_secs(10), || async {
        status(addr).await.filter(|s| s.leader_id == 1)
    })
    .await;
    let members: Vec<&str> = s.members.iter().map(|m| m.address.as_str()).collect();
    assert_eq!(members, [addr], "the member address is the bound one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_learner_that_has_not_caught_up_is_refused_and_changes_nothing() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let mut a = admin(&addr);
    // A learner nothing answers for: it never catches up.
    let gone = ClosedPort::new();
    a.add_node(AddNodeRequest { id: 7, address: gone.addr.clone() }).await.expect("add learner");
    // A learner that does not answer would make a voter set ({1, 7}) that cannot commit.
    let err = a.promote_node(PromoteNodeRequest { id: 7, force: false }).await.expect_err("promotion refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("would be 1, 7, and only 1 of them answer"), "{err:?}");
    // Forced past that check, the leader still refuses a learner that has not caught up.
    let asked = std::time::Instant::now();
    let err = a.promote_node(PromoteNodeRequest { id: 7, force: true }).await.expect_err("promotion refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("node 7 is") && err.message().contains("behind"), "{err:?}");
    // Refused after a bounded wait (half the 3 s write timeout), not when the caller gives up.
    assert!(asked.elapsed() < Duration::from_millis(2500), "took {:?}", asked.elapsed());
    let s = status(&addr).await.expect("status");
    let roles: Vec<(u64, i32)> = s.members.iter().map(|m| (m.id, m.role)).collect();
    assert_eq!(roles, [(1, MemberRole::Voter as i32), (7, MemberRole::Learner as i32)]);
    // The one voter still commits alone.
    a.create_pool(pool("after-refusal")).await.expect("write after the refusal");
}

/// A leader restarted with its vote still on disk must not answer a linearizable read from
/// the commit index it happened to have flushed: a write acknowledged just before every node
/// was killed at once is in its log, but possibly not yet in what it remembers as committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_right_after_a_write_then_restarted_reads_the_write() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    for round in 0..4 {
        let leader = c.leader(Duration::from_secs(10)).await;
        let addr = c.nodes[&leader].addr.clone();
        let name = format!("last-{round}");
        admin(&addr).create_pool(pool(&name)).await.expect("write through the leader");
        // Killed within a millisecond or two of the acknowledgement, most likely before sled's
        // 500 ms background flush: what survives is what Raft flushed itself (the log, the
        // vote), not necessarily the commit index that covers this write.
        for id in &ids {
            c.node(*id).kill9();
        }
        for id in &ids {
            c.node(*id).start();
        }
        let got = eventually("a linearizable read after the restart", Duration::from_secs(15), || async {
            pool_names(&addr, Consistency::Linearizable).await
        })
        .await;
        assert!(got.contains(&name), "round {round}: acknowledged {name} missing from a linearizable read: {got:?}");
    }
}

/// Blob files sled wrote for the log, synced with the log, from a node's metrics.
async fn blobs_synced(n: &ControlNode) -> f64 {
    metric(n, "switchyard_control_log_blobs_synced_total").await
}

/// Large entries (here binding reports of 600 sessions, about 60 KB each) go to the log's
/// own segment files, and a cluster killed outright comes back with every binding it
/// acknowledged. (When the log was in sled, such entries went to sled's blob files, which its
/// flush did not sync; any blob sled still writes is synced too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_log_entries_survive_a_kill_of_every_node() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let addr = c.nodes[&leader].addr.clone();
    let big = Pool {
        name: "big".into(),
        affinity: "header:X-Session".into(),
        affinity_ttl_ms: 3_600_000,
        ..Default::default()
    };
    admin(&addr).create_pool(CreatePoolRequest { pool: Some(big) }).await.unwrap();
    let b = Backend { pool: "big".into(), address: "127.0.0.1:9".into(), weight: 1, ..Default::default() };
    admin(&addr).add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();

    let mut acked = 0u64;
    for r in 0..24u64 {
        let bindings = (0..600u64)
            .map(|i| SessionBinding {
                pool: "big".into(),
                key: format!("{r:016x}{i:016x}"),
                backend: "127.0.0.1:9".into(),
                ..Default::default()
            })
            .collect();
        let report = ProxyReport { proxy_id: "bulk".into(), bindings, ..Default::default() };
        discovery(&addr).report(report).await.expect("the report is kept");
        acked += 600;
    }
    let want = acked;
    eventually("every node applied every binding", Duration::from_secs(15), || async {
        for n in c.nodes.values() {
            if status(&n.addr).await?.session_count < want {
                return None;
            }
        }
        Some(())
    })
    .await;
    for n in c.nodes.values() {
        let segments = std::fs::read_dir(n.data_dir.join("wal")).expect("a wal/ directory").count();
        assert!(segments >= 1, "node {} has no log segment", n.id);
        // Every blob still on disk was synced: one written after the last flush waits at
        // most the idle flusher's 100 ms.
        eventually(&format!("node {}'s blobs all synced", n.id), Duration::from_secs(5), || async {
            let on_disk = std::fs::read_dir(n.data_dir.join("blobs")).map_or(0, |d| d.count()) as f64;
            (blobs_synced(n).await >= on_disk).then_some(())
        })
        .await;
    }

    for id in [1, 2, 3] {
        c.node(id).kill9();
    }
    for id in [1, 2, 3] {
        c.node(id).start();
    }
    let leader = c.leader(Duration::from_secs(15)).await;
    let addr = c.nodes[&leader].addr.clone();
    eventually("the restarted cluster to hold every binding", Duration::from_secs(15), || async {
        (status(&addr).await?.session_count == want).then_some(())
    })
    .await;
}

/// What a proxy reports is checked like any request: a name past the bound is refused, and a
/// binding's TTL is held to what a pool may set (30 days), not `u64::MAX`, which never expires.
/// And a session is deleted by its keyed hash only: a raw key may be a client's credential,
/// and is refused before it reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_proxies_and_admins_send_about_sessions_is_checked_before_it_is_kept() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let pool = Pool { name: "p".into(), affinity: "header:X-Session".into(), ..Default::default() };
    admin(&addr).create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    let b = Backend { pool: "p".into(), address: "127.0.0.1:9".into(), weight: 1, ..Default::default() };
    admin(&addr).add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();

    let long = ProxyReport { proxy_id: "p".repeat(300), ..Default::default() };
    let e = discovery(&addr).report(long).await.expect_err("a 300-byte proxy name");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    let forever = SessionBinding {
        pool: "p".into(),
        key: format!("{:032x}", 7u128),
        backend: "127.0.0.1:9".into(),
        ttl_ms: u64::MAX,
        ..Default::default()
    };
    let report = ProxyReport { proxy_id: "p1".into(), bindings: vec![forever], ..Default::default() };
    discovery(&addr).report(report).await.expect("the report is kept");
    let all = query(&addr)
        .list_sessions(ListSessionsRequest { consistency: 0, pool: "p".into(), limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.sessions.len(), 1);
    assert_eq!(all.sessions[0].ttl_ms, 30 * 24 * 3600 * 1000);

    let delete = |key: String| DeleteSessionRequest { pool: "p".into(), key, all: false };
    let e = admin(&addr).delete_session(delete("sid=alice-secret".into())).await.expect_err("a raw key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    admin(&addr).delete_session(delete(format!("{:032x}", 7u128))).await.expect("deleted by its hash");
}
