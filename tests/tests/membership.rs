//! Voter changes cut short: what `cluster status` shows while one is under way, and that the
//! leader finishes it once it can, with real nodes killed and restarted.

use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;

fn voters(s: &ClusterStatusReply) -> Vec<u64> {
    s.members.iter().filter(|m| m.role == MemberRole::Voter as i32).map(|m| m.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_removal_cut_short_is_shown_and_finished_by_the_leader() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let others: Vec<u64> = c.nodes.keys().copied().filter(|i| *i != leader).collect();
    let (down, removed) = (others[0], others[1]);
    let addr = c.nodes[&leader].addr.clone();

    // With `down` dead, the joint configuration ({all three}, {leader, down}) cannot commit:
    // its new set needs both. Refused, as etcd's strict reconfig check refuses it; removing
    // `down` itself is what can commit.
    c.node(down).kill9();
    let err = admin(&addr).remove_node(RemoveNodeRequest { id: removed, force: false }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("only 1 of them answer") && err.message().contains("--force"), "{err:?}");
    assert!(status(&addr).await.expect("status").joint_new_voters.is_empty(), "nothing proposed");
    // Forced, the call runs out of time after proposing it.
    let err = admin(&addr).remove_node(RemoveNodeRequest { id: removed, force: true }).await.unwrap_err();
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded),
        "the removal cannot finish without node {down}: {err:?}"
    );
    let s = status(&addr).await.expect("status from the leader");
    let mut all: Vec<u64> = c.nodes.keys().copied().collect();
    all.sort();
    let mut kept = vec![leader, down];
    kept.sort();
    assert_eq!(s.joint_old_voters, all, "status shows the change under way: {s:?}");
    assert_eq!(s.joint_new_voters, kept, "{s:?}");

    // The CLI says so in words too.
    let out = std::process::Command::new(bin("switchyard"))
        .args(["--endpoints", &addr, "cluster", "status"])
        .output()
        .expect("run switchyard");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("voter change under way"), "{text}");

    // Once `down` is back the joint entry commits, and with no call left to take the second
    // step, the leader takes it: `removed` is gone and the status is uniform again.
    c.node(down).start();
    let s = eventually("the leader to finish the removal", Duration::from_secs(20), || async {
        let s = status(&addr).await?;
        (s.joint_new_voters.is_empty() && !s.members.iter().any(|m| m.id == removed)).then_some(s)
    })
    .await;
    assert_eq!(voters(&s), kept, "{s:?}");
    assert!(s.joint_old_voters.is_empty(), "{s:?}");
    // Writes commit with the two voters left.
    let pool = Pool { name: "after".into(), ..Default::default() };
    admin(&addr).create_pool(CreatePoolRequest { pool: Some(pool) }).await.expect("write after the change");
}

/// A node started with --join answers at once that it is not a member yet (it used to hold
/// each call for the write timeout, then call a write's outcome unknown), so a client that
/// lists it first goes on to a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waiting_to_join_sends_callers_on_to_a_member() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let mut flags = test_flags();
    flags.push("--join".into());
    let n2 = ControlNode::spawn(2, reserve(), &c.dir.path().join("node-2"), &flags);

    let pool = Pool { name: "p".into(), ..Default::default() };
    let err = admin(&n2.addr).create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("has not joined"), "{}", err.message());
    assert!(!switchyard_model::grpc::outcome_unknown(&err), "nothing was proposed: {:?}", err.metadata());

    // A membership call is not retried once its outcome is unknown, so this failed before.
    let endpoints = format!("{},{}", n2.addr, c.nodes[&1].addr);
    let out = std::process::Command::new(bin("switchyard"))
        .args(["--endpoints", &endpoints, "--output", "json", "cluster", "add-node", "2", &n2.addr])
        .output()
        .expect("run switchyard");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(members.as_array().unwrap().iter().any(|m| m["id"] == 2), "{members}");
}
