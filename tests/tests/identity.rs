//! Cluster identity and amnesia: a node whose data dir was wiped, or comes from another
//! cluster, must not take part; peer calls from another cluster are refused.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use switchyard_proto::raft::raft_client::RaftClient;
use switchyard_proto::raft::RaftPayload;
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;

/// Runs `switchyard-control` with `args` (on a port of its own) until it exits, at most 20 s;
/// the exit success and what it wrote to stderr.
fn run_to_exit(args: &[String]) -> (bool, String) {
    let mut args = args.to_vec();
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    switchyard_tests::run_to_exit("switchyard-control", &args)
}

async fn write_pool(c: &Cluster, name: &str) {
    let leader = c.leader(Duration::from_secs(10)).await;
    let req = CreatePoolRequest { pool: Some(Pool { name: name.into(), ..Default::default() }) };
    admin(&c.nodes[&leader].addr).create_pool(req).await.expect("the cluster takes writes");
}

fn follower(c: &Cluster, leader: u64) -> u64 {
    *c.nodes.keys().find(|id| **id != leader).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_refuses_to_start_and_says_how_to_re_add_it() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    write_pool(&c, "before").await;
    let f = follower(&c, leader);
    let cluster_id = status(&c.nodes[&leader].addr).await.unwrap().cluster_id;
    assert_eq!(cluster_id.len(), 32, "cluster status shows the cluster id");
    // A write commits on a majority, which may not include `f` yet: wait for it to catch up.
    eventually("the follower to learn the cluster id", Duration::from_secs(10), || async {
        status(&c.nodes[&f].addr).await.filter(|t| t.cluster_id == cluster_id)
    })
    .await;

    c.node(f).kill9();
    let dir = c.nodes[&f].data_dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    let (ok, stderr) = run_to_exit(&c.nodes[&f].args);
    assert!(!ok, "a wiped voter must exit non-zero:\n{stderr}");
    for want in [
        format!("node {f} has an empty data dir but cluster {cluster_id} already counts it as a member"),
        format!("switchyard cluster remove-node {f}"),
        "--join".to_string(),
        format!("switchyard cluster add-node {f} "),
    ] {
        assert!(stderr.contains(&want), "stderr lacks {want:?}:\n{stderr}");
    }
    write_pool(&c, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_data_dir_and_peer_calls_are_refused() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let f = follower(&c, leader);
    let ours = status(&c.nodes[&leader].addr).await.unwrap().cluster_id;

    // A peer call carrying another cluster's id never reaches Raft.
    let other = "0123456789abcdef0123456789abcdef";
    let mut req = tonic::Request::new(RaftPayload { data: vec![] });
    req.metadata_mut().insert("switchyard-cluster-id", other.parse().unwrap());
    let mut peer = RaftClient::new(channel(&c.nodes[&f].addr));
    let e = peer.append_entries(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains(&format!("belongs to cluster {ours}, the request came from cluster {other}")), "{e}");

    // So does a watch from a proxy that followed another cluster; a good one is told the id.
    let watch = |id: &str| {
        let mut req = tonic::Request::new(WatchRequest { proxy_id: "p".into(), from_revision: 0 });
        req.metadata_mut().insert("switchyard-cluster-id", id.parse().unwrap());
        req
    };
    let e = discovery(&c.nodes[&leader].addr).watch(watch(other)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let ok = discovery(&c.nodes[&leader].addr).watch(watch(&ours)).await.expect("a watch from this cluster");
    assert_eq!(ok.metadata().get("switchyard-cluster-id").unwrap().to_str().unwrap(), ours);

    // A one-node cluster of its own, with the follower's id, leaves a data dir behind.
    let foreign = c.dir.path().join("foreign");
    let (ok, theirs) = run_single_then_stop(f, &foreign).await;
    assert!(ok && theirs != ours);
    c.node(f).kill9();
    let dir = c.nodes[&f].data_dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&foreign, &dir).unwrap();
    let (ok, stderr) = run_to_exit(&c.nodes[&f].args);
    assert!(!ok, "a node with another cluster's data dir must exit non-zero:\n{stderr}");
    assert!(stderr.contains("this data dir is from another cluster"), "{stderr}");
    let want = format!("node {f}'s data dir belongs to cluster {theirs}, but peer ");
    assert!(stderr.contains(&want) && stderr.contains(&format!("belongs to cluster {ours}")), "{stderr}");
    write_pool(&c, "still").await;
}

/// Starts node `id` alone on `dir` (a new one-node cluster), waits until it leads, stops it.
async fn run_single_then_stop(id: u64, dir: &Path) -> (bool, String) {
    let l = reserve();
    let mut args = test_flags();
    args.extend(["--advertise".into(), l.local_addr().unwrap().to_string()]);
    let mut n = ControlNode::spawn(id, l, dir, &args);
    let leads = eventually("the one-node cluster to elect itself", Duration::from_secs(10), || async {
        status(&n.addr).await.filter(|s| s.leader_id == id && s.cluster_id.len() == 32)
    })
    .await;
    let ok = n.terminate().success();
    (ok, leads.cluster_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn founders_form_the_cluster_without_node_1_and_refuse_to_with_different_lists() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sockets: BTreeMap<u64, TcpListener> = (1..=3).map(|i| (i, reserve())).collect();
    let list = |ls: &BTreeMap<u64, TcpListener>| {
        ls.iter().map(|(i, l)| format!("{i}={}", l.local_addr().unwrap())).collect::<Vec<_>>().join(",")
    };
    let mut flags = test_flags();
    flags.extend(["--initial-cluster".into(), list(&sockets)]);
    // Node 1 never starts: 2, the lowest founder up, initializes after the wait.
    let n2 = ControlNode::spawn(2, sockets.remove(&2).unwrap(), &dir.path().join("node-2"), &flags);
    let n3 = ControlNode::spawn(3, sockets.remove(&3).unwrap(), &dir.path().join("node-3"), &flags);
    let s = eventually("nodes 2 and 3 to form the cluster", Duration::from_secs(20), || async {
        status(&n2.addr).await.filter(|s| s.leader_id != 0 && s.cluster_id.len() == 32)
    })
    .await;
    assert_eq!(s.members.len(), 3, "with node 1 a member, to be started later");
    // Node 3 learns the id when the leader's first entries reach it, which may be a beat later.
    eventually("node 3 to share the cluster id", Duration::from_secs(10), || async {
        status(&n3.addr).await.filter(|t| t.cluster_id == s.cluster_id)
    })
    .await;
    drop((n2, n3));

    // Founders given different lists initialize nothing.
    let ls: BTreeMap<u64, TcpListener> = (1..=3).map(|i| (i, reserve())).collect();
    let mut short = ls.iter().take(2).map(|(i, l)| (*i, l.try_clone().unwrap())).collect::<BTreeMap<_, _>>();
    let mut f1 = test_flags();
    f1.extend(["--initial-cluster".into(), list(&short)]);
    let mut f2 = test_flags();
    f2.extend(["--initial-cluster".into(), list(&ls)]);
    let n1 = ControlNode::spawn(1, short.remove(&1).unwrap(), &dir.path().join("m-1"), &f1);
    let n2 = ControlNode::spawn(2, short.remove(&2).unwrap(), &dir.path().join("m-2"), &f2);
    // Each founder sees the other's list differ and gives up: wait for both to say so, then
    // check that neither formed anything.
    let logs = [dir.path().join("m-1.log"), dir.path().join("m-2.log")];
    eventually("both founders to refuse the differing lists", Duration::from_secs(15), || {
        let logs = logs.clone();
        async move {
            logs.iter()
                .all(|l| std::fs::read_to_string(l).unwrap_or_default().contains("--initial-cluster differs"))
                .then_some(())
        }
    })
    .await;
    for n in [&n1, &n2] {
        let s = status(&n.addr).await.unwrap();
        assert!(s.leader_id == 0 && s.cluster_id.is_empty(), "node {} formed a cluster: {s:?}", n.id);
    }
    let log = std::fs::read_to_string(dir.path().join("m-1.log")).unwrap();
    assert!(log.contains("--initial-cluster differs from node 2's"), "{log}");
}
