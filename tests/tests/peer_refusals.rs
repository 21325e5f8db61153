//! The peer service refuses what no legitimate peer can send, before openraft sees it: votes
//! and appends with terms or indexes near u64::MAX, entries out of order, and forwarded
//! commands that only the leader itself may propose. Refused requests change nothing, also
//! after a full restart (a persisted poisoned vote would panic every node again).

use std::time::Duration;

use openraft::{CommittedLeaderId, EntryPayload, Vote};
use switchyard_control::network::encode;
use switchyard_control::node::calls::{AddNode, Envelope, Writes};
use switchyard_control::pb::Pb;
use switchyard_control::state::{Command, Proposed};
use switchyard_control::types::{Entry, LogId, TypeConfig};
use switchyard_proto::raft::raft_client::RaftClient;
use switchyard_proto::raft::RaftPayload;
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

type AppendEntries = openraft::raft::AppendEntriesRequest<TypeConfig>;
type VoteRequest = openraft::raft::VoteRequest<u64>;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

/// Sends a forged peer call, carrying the cluster id as a real peer would, and returns the
/// refusal (a forged call that is taken fails the test).
async fn forge(addr: &str, cluster_id: &str, which: &str, data: Vec<u8>) -> tonic::Status {
    let mut req = tonic::Request::new(RaftPayload { data });
    req.metadata_mut().insert("switchyard-cluster-id", cluster_id.parse().unwrap());
    let mut peer = RaftClient::new(channel(addr));
    let r = match which {
        "vote" => peer.vote(req).await.map(drop),
        "append" => peer.append_entries(req).await.map(drop),
        // The same append on a held AppendStream: refused there too, and the refusal ends it.
        "stream" => {
            let (meta, _, payload) = req.into_parts();
            let mut req = tonic::Request::new(futures::stream::iter([payload]));
            *req.metadata_mut() = meta;
            match peer.append_stream(req).await {
                Ok(replies) => replies.into_inner().message().await.map(drop),
                Err(s) => Err(s),
            }
        }
        "snapshot" => peer.install_snapshot(req).await.map(drop),
        _ => peer.forward(req).await.map(drop),
    };
    r.expect_err("a forged request must be refused")
}

fn refused(s: &tonic::Status, why: &str) {
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");
    assert!(s.message().contains(why), "{why:?} not in: {}", s.message());
}

async fn serving(addr: &str) -> bool {
    let req = HealthCheckRequest { service: String::new() };
    let r = HealthClient::new(channel(addr)).check(req).await;
    r.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// (leader, term) as every node reports them, all healthy.
async fn steady(c: &Cluster) -> (u64, u64) {
    let leader = c.leader(Duration::from_secs(15)).await;
    let mut terms = Vec::new();
    for n in c.nodes.values() {
        let s = status(&n.addr).await.expect("status");
        assert_eq!(s.leader_id, leader, "node {} follows another leader", n.id);
        assert!(serving(&n.addr).await, "node {} is not SERVING", n.id);
        terms.push(s.term);
    }
    assert!(terms.windows(2).all(|w| w[0] == w[1]), "nodes disagree on the term: {terms:?}");
    (leader, terms[0])
}

async fn create_pool(c: &Cluster, name: &str) {
    let leader = c.leader(Duration::from_secs(15)).await;
    let req = CreatePoolRequest { pool: Some(Pool { name: name.into(), ..Default::default() }) };
    admin(&c.nodes[&leader].addr).create_pool(req).await.expect("the cluster takes writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_votes_and_malformed_appends_change_nothing_even_after_a_full_restart() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    create_pool(&c, "before").await;
    let (leader, term) = steady(&c).await;
    let cluster_id = status(&c.nodes[&leader].addr).await.unwrap().cluster_id;
    let big = u64::MAX - 1;

    for (&id, n) in c.nodes.iter() {
        let at = |which: &'static str, data: Vec<u8>| forge(&n.addr, &cluster_id, which, data);
        // Leadership handed to the receiver in one request (openraft's transfer path), under a
        // vote a term ahead: no election would make it leader.
        let handed = Vote::new_committed(term + 1, id);
        refused(
            &at("vote", encode(&VoteRequest { vote: handed, last_log_id: Some(log_id(term, 1 << 20)) })).await,
            "names this node",
        );
        let heartbeat = AppendEntries { vote: handed, prev_log_id: None, entries: vec![], leader_commit: None };
        refused(&at("append", encode(&heartbeat)).await, "names this node");
        refused(&at("stream", encode(&heartbeat)).await, "names this node");
        let snapshot = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
            vote: handed,
            meta: Default::default(),
            offset: 0,
            data: vec![],
            done: false,
        };
        refused(&at("snapshot", encode(&snapshot)).await, "names this node");
        // A candidate's vote request is never committed; a leader's entries always are.
        let committed = VoteRequest { vote: Vote::new_committed(term + 1, 9), last_log_id: None };
        refused(&at("vote", encode(&committed)).await, "committed vote");
        let uncommitted =
            AppendEntries { vote: Vote::new(term + 1, 9), prev_log_id: None, entries: vec![], leader_commit: None };
        refused(&at("append", encode(&uncommitted)).await, "not committed");

        // The reported attack: one vote at term 2^64-1.
        refused(&at("vote", encode(&VoteRequest { vote: Vote::new(u64::MAX, 9), last_log_id: None })).await, "term");
        let vote = VoteRequest { vote: Vote::new(term + 1, 9), last_log_id: Some(log_id(term, big)) };
        refused(&at("vote", encode(&vote)).await, "index");

        let append = |vote_term, prev, entries| AppendEntries {
            vote: Vote::new_committed(vote_term, leader),
            prev_log_id: prev,
            entries,
            leader_commit: None,
        };
        refused(&at("append", encode(&append(u64::MAX, None, vec![]))).await, "term");
        refused(&at("stream", encode(&append(u64::MAX, None, vec![]))).await, "term");
        refused(&at("stream", Vec::new()).await, "bad payload");
        refused(&at("append", encode(&append(term, Some(log_id(term, big)), vec![]))).await, "index");
        refused(&at("append", encode(&append(term, None, vec![entry(u64::MAX, 0)]))).await, "term");
        // Even under the current leader's own vote: entries with a gap, or not after prev.
        let gap = append(term, Some(log_id(term, 1)), vec![entry(term, 2), entry(term, 5)]);
        refused(&at("append", encode(&gap)).await, "consecutive");
        refused(&at("stream", encode(&gap)).await, "consecutive");
        let not_after = append(term, Some(log_id(term, 1)), vec![entry(term, 1)]);
        refused(&at("append", encode(&not_after)).await, "consecutive");
        let future = append(term, Some(log_id(term, 1)), vec![entry(term + 1, 2)]);
        refused(&at("append", encode(&future)).await, "after the sender's vote");

        let snapshot = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(u64::MAX, leader),
            meta: Default::default(),
            offset: 1 << 40,
            data: vec![],
            done: false,
        };
        refused(&at("snapshot", encode(&snapshot)).await, "term");
        let far = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(term, leader),
            ..snapshot
        };
        refused(&at("snapshot", encode(&far)).await, "offset");
    }

    assert_eq!(steady(&c).await, (leader, term), "leader and term stay as they were");
    create_pool(&c, "after").await;

    // Nothing was persisted: every node comes back, elects a leader and takes writes.
    for id in [1, 2, 3] {
        assert!(c.node(id).terminate().success(), "node {id} stops cleanly");
    }
    for id in [1, 2, 3] {
        c.node(id).start();
    }
    let (_, term_after) = steady(&c).await;
    assert!(term_after < 1 << 32, "term {term_after} after the restart");
    create_pool(&c, "after-restart").await;
    let leader = c.leader(Duration::from_secs(15)).await;
    let pools = query(&c.nodes[&leader].addr).list_pools(ReadRequest { consistency: 0 }).await.unwrap();
    let names: Vec<String> = pools.into_inner().pools.into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["after", "after-restart", "before"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forward_of_an_internal_command_is_refused_and_the_backend_keeps_routing() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let (leader, _) = steady(&c).await;
    let addr = c.nodes[&leader].addr.clone();
    let cluster_id = status(&addr).await.unwrap().cluster_id;
    let backend = EchoBackend::start("b1").await;
    let rev = route_all(&addr, "chat", &[&backend.addr]).await;
    let p = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p");
    p.wait_revision(rev).await;
    assert_eq!(ws_connect(&p.ws, "/", &[]).await.unwrap().1, "b1");

    let unhealthy = Command::SetBackendHealth {
        pool: "chat".into(),
        address: backend.addr.clone(),
        health: Health::Unhealthy as i32,
    };
    let legit = Command::CreatePool(Pb(Pool { name: "smuggled".into(), ..Default::default() }));
    let alone = Envelope::Writes(Writes(vec![Proposed::from(unhealthy.clone())]));
    let hidden = Envelope::Writes(Writes(vec![Proposed::from(legit), Proposed::from(unhealthy)]));
    for n in c.nodes.values() {
        for env in [&alone, &hidden] {
            refused(&forge(&n.addr, &cluster_id, "forward", encode(env)).await, "internal");
        }
    }
    // A node added as the Admin API would never have taken it: id 0 (what replies use for "no
    // leader"), or an address nothing can dial.
    let zero = Envelope::AddNode(AddNode { id: 0, addr: "127.0.0.1:1".into() });
    refused(&forge(&addr, &cluster_id, "forward", encode(&zero)).await, "node id must be 1 or more");
    let nowhere = Envelope::AddNode(AddNode { id: 9, addr: "garbage".into() });
    refused(&forge(&addr, &cluster_id, "forward", encode(&nowhere)).await, "must be host:port");

    // A write after the refusals, read linearizably: had the forged ones applied, they would
    // show.
    let after = admin(&addr).delete_route(DeleteRouteRequest { name: "none".into() }).await;
    assert_eq!(after.unwrap_err().code(), Code::NotFound);
    let req = ListBackendsRequest { consistency: Consistency::Linearizable as i32, pool: "chat".into() };
    let bs = query(&addr).list_backends(req).await.unwrap().into_inner().backends;
    assert_eq!(bs[0].health, Health::Unknown as i32, "health untouched");
    let pools = query(&addr).list_pools(ReadRequest { consistency: Consistency::Linearizable as i32 }).await.unwrap();
    assert!(pools.into_inner().pools.iter().all(|p| p.name != "smuggled"), "the whole forged call was refused");
    for _ in 0..3 {
        assert_eq!(ws_connect(&p.ws, "/", &[]).await.unwrap().1, "b1", "handshakes still route");
    }
    assert_eq!(steady(&c).await.0, leader);
}
