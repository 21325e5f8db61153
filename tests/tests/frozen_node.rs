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
