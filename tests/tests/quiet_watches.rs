//! Watches that must not go quiet: a node that loses its leader, or is removed, ends its
//! watch streams with UNAVAILABLE, and a proxy following it moves to a node that keeps up.

use std::time::{Duration, Instant};

use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;

/// From the fault to the node's streams ending: the node notices within about an election
/// timeout (700 ms in the test flags), then waits three more before giving up on a leader.
const BOUND: Duration = Duration::from_secs(10);

fn pool(name: &str) -> CreatePoolRequest {
    CreatePoolRequest { pool: Some(Pool { name: name.into(), ..Default::default() }) }
}

fn watch_req() -> WatchRequest {
    WatchRequest { proxy_id: "raw-watcher".into(), from_revision: 0 }
}

/// Reads `stream` until it ends with an error status, within `within`.
async fn ending(stream: &mut tonic::Streaming<WatchEvent>, within: Duration) -> tonic::Status {
    let end = async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(s) => return s,
            }
        }
    };
    tokio::time::timeout(within, end).await.expect("the watch stream ended within the bound")
}

/// Waits until `proxy` follows `node` and has heard progress naming at least `revision`.
async fn following(proxy: &ProxyProcess, node: &str, revision: u64) {
    eventually(&format!("proxy following {node} with progress"), Duration::from_secs(10), || async {
        let s = proxy.status().await?;
        let cp = &s["control_plane"];
        (cp["node"] == node && cp["leader_revision"].as_u64()? >= revision && cp["behind"] == 0).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_without_a_leader_ends_its_watches_and_the_proxy_leaves_it() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let n3 = c.nodes[&3].addr.clone();
    let rev = admin(&c.nodes[&1].addr).create_pool(pool("p")).await.unwrap().into_inner().revision;
    // Node 3 first: the proxy follows it while it is up.
    let endpoints = format!("{n3},{},{}", c.nodes[&1].addr, c.nodes[&2].addr);
    let proxy = ProxyProcess::spawn(&endpoints, &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    following(&proxy, &n3, rev).await;
    let mut raw = discovery(&n3).watch(watch_req()).await.unwrap().into_inner();
    // A quiet stream carries progress with the leader's revision.
    let progress = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(watch_event::Kind::Progress(p)) = raw.message().await.unwrap().unwrap().kind {
                return p;
            }
        }
    })
    .await
    .expect("progress on a quiet stream");
    assert!(progress.leader_revision >= rev && progress.node_revision >= rev, "{progress:?}");

    let killed = Instant::now();
    c.node(1).kill9();
    c.node(2).kill9();
    let status = ending(&mut raw, BOUND).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no leader"), "{status:?}");
    let err = discovery(&n3).watch(watch_req()).await.expect_err("a new watch is refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let report = ProxyReport { proxy_id: "raw-watcher".into(), ..Default::default() };
    let err = discovery(&n3).report(report).await.expect_err("a report is refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    let s = eventually("the proxy to stop following node 3", BOUND.saturating_sub(killed.elapsed()), || async {
        let s = proxy.status().await?;
        (s["control_plane"]["connected"] == false).then_some(s)
    })
    .await;
    assert!(s["control_plane"]["last_heard_seconds"].as_f64().is_some_and(|t| t > 0.0), "{s}");
    // Static stability: the config it has stays in force.
    assert!(s["config"]["revision"].as_u64() >= Some(rev), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_ends_its_watches_and_the_proxy_moves_on_and_keeps_up() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let gone = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let gone_addr = c.nodes[&gone].addr.clone();
    let leader_addr = c.nodes[&leader].addr.clone();
    let rest: Vec<String> = c.nodes.values().filter(|n| n.id != gone).map(|n| n.addr.clone()).collect();
    let rev = admin(&leader_addr).create_pool(pool("before")).await.unwrap().into_inner().revision;
    let endpoints = format!("{gone_addr},{}", rest.join(","));
    let proxy = ProxyProcess::spawn(&endpoints, &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    following(&proxy, &gone_addr, rev).await;
    let mut raw = discovery(&gone_addr).watch(watch_req()).await.unwrap().into_inner();

    let removed_at = admin(&leader_addr)
        .remove_node(RemoveNodeRequest { id: gone, force: false })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let status = ending(&mut raw, BOUND).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let err = discovery(&gone_addr).watch(watch_req()).await.expect_err("a new watch is refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Membership entries move the leader's revision with no change to send: the proxy, on a
    // member now, is current through them and not behind, though its config is older.
    let s = eventually("the proxy on a member, current through the removal", BOUND, || async {
        let s = proxy.status().await?;
        let cp = &s["control_plane"];
        let on_member = cp["connected"] == true && cp["node"] != gone_addr.as_str();
        (on_member && cp["leader_revision"].as_u64()? >= removed_at && cp["behind"] == 0).then_some(s)
    })
    .await;
    assert!(s["config"]["revision"].as_u64() < Some(removed_at), "{s}");
    let after = admin(&leader_addr).create_pool(pool("after")).await.unwrap().into_inner().revision;

    // The proxy moved to a member and runs what was written after the removal.
    let s = eventually("the proxy to follow a member at the new revision", BOUND, || async {
        let s = proxy.status().await?;
        let cp = &s["control_plane"];
        let on_member = cp["connected"] == true && cp["node"] != gone_addr.as_str();
        (on_member && s["config"]["revision"].as_u64()? >= after).then_some(s)
    })
    .await;
    assert!(rest.iter().any(|a| s["control_plane"]["node"] == a.as_str()), "{s}");
    // And it keeps getting new revisions there.
    let later = admin(&leader_addr).create_pool(pool("later")).await.unwrap().into_inner().revision;
    proxy.wait_revision(later).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_across_an_election_is_current_through_the_new_leaders_blank_entry() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let f = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let f_addr = c.nodes[&f].addr.clone();
    let rev = admin(&c.nodes[&leader].addr).create_pool(pool("p")).await.unwrap().into_inner().revision;
    let mut raw = discovery(&f_addr).watch(watch_req()).await.unwrap().into_inner();

    c.node(leader).kill9();
    let new_leader = c.leader(BOUND).await;
    // The new leader's blank entry: a revision with no change to send.
    let blank = eventually("the new leader to apply its blank entry", BOUND, || async {
        let s = status(&c.nodes[&new_leader].addr).await?;
        (s.applied_revision > rev).then_some(s.applied_revision)
    })
    .await;
    let mut last_change = 0;
    let p = tokio::time::timeout(BOUND, async {
        loop {
            let ev = raw.message().await.expect("the stream stays open through an election").expect("open");
            match ev.kind {
                Some(watch_event::Kind::Progress(p)) if p.node_revision >= blank => return p,
                Some(watch_event::Kind::Progress(_)) => {}
                _ => last_change = ev.revision,
            }
        }
    })
    .await
    .expect("progress current through the blank entry");
    assert!(last_change < blank, "no change event came for the blank entry (last {last_change}, blank {blank})");
    assert!(p.leader_revision >= blank, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_ends_its_watches() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let addr = c.nodes[&leader].addr.clone();
    admin(&addr).create_pool(pool("p")).await.unwrap();
    let mut raw = discovery(&addr).watch(watch_req()).await.unwrap().into_inner();
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        c.node(id).kill9();
    }
    // openraft 0.9 keeps it leading; no quorum has acknowledged it since.
    let status = ending(&mut raw, BOUND).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no leader"), "{status:?}");
}

/// A proxy takes a report's answer as its bindings' commit and does not send them again for
/// a third of their TTL: a report the cluster could not keep must not be answered OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_whose_bindings_cannot_commit_is_refused_not_acknowledged() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let addr = c.nodes[&leader].addr.clone();
    admin(&addr).create_pool(pool("p")).await.unwrap();
    // A backend the bindings can go to: the leader proposes none that apply would ignore.
    let b = Backend { pool: "p".into(), address: "127.0.0.1:9".into(), weight: 1, ..Default::default() };
    admin(&addr).add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    let report = |key: &str| ProxyReport {
        proxy_id: "raw-reporter".into(),
        bindings: vec![SessionBinding {
            pool: "p".into(),
            key: key.into(),
            backend: "127.0.0.1:9".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    // While the quorum is there, a binding commits and the report is answered.
    discovery(&addr).report(report(&"a".repeat(32))).await.expect("a report with a quorum is kept");
    // What operators' terminals print comes without escape sequences or line breaks: a
    // proxy id with one is refused, a rejection reason has them blanked.
    let escaped = ProxyReport { proxy_id: "edge\n\u{1b}[2J".into(), ..Default::default() };
    let err = discovery(&addr).report(escaped).await.expect_err("a proxy id with control characters");
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "proxy_id holds a control character"));
    // A watcher's name is logged when its watch starts and ends: checked the same way.
    let escaped = WatchRequest { proxy_id: "edge\n\u{1b}[2J".into(), ..Default::default() };
    let err = discovery(&addr).watch(escaped).await.expect_err("a watcher's id with control characters");
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "proxy_id holds a control character"));
    let long = WatchRequest { proxy_id: "w".repeat(4096), ..Default::default() };
    assert_eq!(discovery(&addr).watch(long).await.expect_err("a 4 KiB watcher id").code(), Code::InvalidArgument);
    let reason = ProxyReport {
        proxy_id: "edge-9".into(),
        rejected_reason: "bad\u{1b}[31m\nconfig".into(),
        ..Default::default()
    };
    discovery(&addr).report(reason).await.expect("a report with an odd reason is kept");
    let listed = query(&addr).list_proxies(ReadRequest::default()).await.unwrap().into_inner().proxies;
    let shown = listed.iter().find(|p| p.proxy_id == "edge-9").expect("edge-9 listed");
    assert_eq!(shown.rejected_reason, "bad [31m config");
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        c.node(id).kill9();
    }
    // The leader still serves for about an election timeout, but nothing it proposes commits.
    let err =
        discovery(&addr).report(report(&"b".repeat(32))).await.expect_err("a report that was not kept is refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("not kept"), "{err:?}");
}
