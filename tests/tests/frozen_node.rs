//! A frozen control-plane node (SIGSTOP: its kernel still takes connections, the process
//! answers nothing): the CLI moves past it once its HTTP/2 pings go unanswered (it used to
//! wait out its 15 s request deadline and fail with "Timeout expired"), and says what it met
//! when no other node is listed.

use std::process::Command;
use std::time::Duration;

use switchyard_tests::*;

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill").args([format!("-{name}"), pid.to_string()]).status().expect("run kill");
    assert!(ok.success(), "kill -{name} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_moves_past_a_frozen_node_and_names_it_when_none_other_answers() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    // A follower, listed first: the leader keeps its quorum with the other.
    let frozen = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let first = c.nodes[&frozen].addr.clone();
    let others: Vec<String> = c.nodes.iter().filter(|(id, _)| **id != frozen).map(|(_, n)| n.addr.clone()).collect();
    let eps = format!("{first},{}", others.join(","));
    signal(c.nodes[&frozen].pid().unwrap(), "STOP");

    for args in [vec!["pool", "create", "while-frozen"], vec!["pool", "list"], vec!["audit"]] {
        let mut all = vec!["--endpoints", eps.as_str()];
        all.extend(args.iter());
        let (code, out, err) = run_cli(&all);
        assert_eq!(code, 0, "{args:?} with a frozen node listed first: {err}");
        if args == ["pool", "list"] {
            assert!(out.contains("while-frozen"), "{out}");
        }
    }

    let (code, _, err) = run_cli(&["--endpoints", &first, "pool", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains(&first) && err.contains("no answer to HTTP/2 pings"), "{err}");
    assert!(!err.contains("TLS"), "a frozen node is not a TLS mismatch: {err}");
    let (code, _, err) = run_cli(&["--endpoints", &first, "pool", "create", "unsure"]);
    assert_ne!(code, 0);
    assert!(err.contains("may have been applied"), "a write sent to a frozen node has an unknown outcome: {err}");
    signal(c.nodes[&frozen].pid().unwrap(), "CONT");
}

/// A leader whose followers are all frozen keeps openraft's lead (openraft has no
/// check-quorum step-down) but no longer claims it: its status names no leader and says why,
/// its metrics count it as `leader_without_quorum`, and it refuses writes and reads at once,
/// as not taken, instead of holding each for the 3 s write timeout. Once a follower is back,
/// it leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_no_majority_answers_says_so_and_refuses_at_once() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let addr = c.nodes[&leader].addr.clone();
    let followers: Vec<u32> = c.nodes.iter().filter(|(id, _)| **id != leader).map(|(_, n)| n.pid().unwrap()).collect();
    followers.iter().for_each(|&p| signal(p, "STOP"));

    let s = eventually("the cut-off leader to say so", Duration::from_secs(10), || async {
        let s = status(&addr).await?;
        s.state.starts_with("Leader without quorum").then_some(s)
    })
    .await;
    assert_eq!(s.leader_id, 0, "a cut-off leader names no leader: {s:?}");
    let metrics = c.nodes[&leader].scrape().await.expect("metrics");
    assert!(metrics.contains("switchyard_control_raft_state{state=\"leader\"} 0"), "{metrics}");
    assert!(metrics.contains("switchyard_control_raft_state{state=\"leader_without_quorum\"} 1"), "{metrics}");

    let (code, _, err) = run_cli(&["--endpoints", &addr, "pool", "create", "cut-off"]);
    assert_ne!(code, 0);
    assert!(err.contains("no quorum") && err.contains("not taken"), "{err}");
    assert!(!err.contains("may have been applied") && !err.contains("outcome is unknown"), "{err}");
    let (code, _, err) = run_cli(&["--endpoints", &addr, "pool", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("no quorum") && !err.contains("BasicNode"), "{err}");

    followers.iter().for_each(|&p| signal(p, "CONT"));
    eventually("a leader with a quorum again", Duration::from_secs(10), || async {
        let s = status(&addr).await?;
        (s.leader_id != 0 && !s.state.contains("without quorum")).then_some(())
    })
    .await;
    let (code, _, err) = run_cli(&["--endpoints", &c.endpoints(), "pool", "create", "healed"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run_cli(&["--endpoints", &c.endpoints(), "pool", "list"]);
    assert!(out.contains("healed") && !out.contains("cut-off"), "{out}");
}

/// A write with a request id sent to a follower while the leader is frozen is not held for
/// the frozen leader: once the others elect a new one, the follower hands it there, and the
/// one attempt succeeds (it waited out the write timeout and answered outcome unknown).
/// Without an id it could apply twice, so it still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_an_id_moves_from_a_frozen_leader_to_the_new_one() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = c.nodes.iter().find(|(id, _)| **id != leader).map(|(_, n)| n.addr.clone()).unwrap();
    let leader_pid = c.nodes[&leader].pid().unwrap();
    signal(leader_pid, "STOP");

    let pool = switchyard_proto::v1::Pool { name: "moved".into(), ..Default::default() };
    let req = switchyard_proto::v1::CreatePoolRequest { pool: Some(pool) };
    let req = switchyard_model::grpc::with_request_id(req, "frozen-test", 1).unwrap();
    let r = admin(&follower).create_pool(req).await;
    signal(leader_pid, "CONT");
    let r = r.expect("one attempt through a follower, with the leader frozen");
    let again = switchyard_proto::v1::CreatePoolRequest {
        pool: Some(switchyard_proto::v1::Pool { name: "moved".into(), ..Default::default() }),
    };
    let again = switchyard_model::grpc::with_request_id(again, "frozen-test", 1).unwrap();
    // To the first node, perhaps the resumed old leader: a repeat there is answered too (a
    // resumed leader's own command, forwarded in a batch with it, once got it refused).
    let first = c.endpoints().split(',').next().unwrap().to_string();
    let repeat = admin(&first).create_pool(again).await;
    assert_eq!(repeat.expect("a repeat is answered").into_inner().revision, r.into_inner().revision, "applied once");
}
