//! The seen-requests table in sled: written with the entry that records it, read back when
//! the store reopens, carried by snapshots and restored when one is installed.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use switchyard_control::pb::Pb;
use switchyard_control::seen::RequestId;
use switchyard_control::state::{Batch, Command, Proposed};
use switchyard_control::store::{self, sm::StateMachineStore};
use switchyard_control::types::{Entry, LogId, Response};
use switchyard_proto::v1::Pool;

fn entry(index: u64, client: &str, seq: u64, pool: &str) -> Entry {
    let cmd = Command::CreatePool(Pb(Pool { name: pool.into(), ..Default::default() }));
    let id = Some(RequestId { client: client.into(), seq });
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch(std::sync::Arc::new(vec![Proposed { id, cmd, audit: None }]))),
    }
}

async fn apply(sm: &mut StateMachineStore, e: Entry) -> Response {
    sm.apply([e]).await.expect("apply").remove(0)
}

fn open(dir: &std::path::Path) -> (sled::Db, StateMachineStore) {
    let db = store::open(dir, 1).expect("open sled");
    (db.clone(), StateMachineStore::open(db, dir).expect("open state machine"))
}

#[tokio::test]
async fn the_seen_table_survives_in_snapshots_and_travels_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, mut sm) = open(&tmp.path().join("a"));
    let first = apply(&mut sm, entry(1, "alice", 1, "p")).await;
    assert_eq!(first.0[0].0, 1);
    assert!(first.0[0].1.is_ok());
    sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    drop((db, sm));

    // Reopened from its snapshot: the repeat is answered from the table, not applied (it
    // would be ALREADY_EXISTS).
    let (db, mut sm) = open(&tmp.path().join("a"));
    assert_eq!(apply(&mut sm, entry(2, "alice", 1, "p")).await.0, first.0);
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    drop((db, sm));

    // A node that receives the snapshot answers the repeat the same way, before and after
    // it reopens.
    let (db, mut other) = open(&tmp.path().join("b"));
    other.install_snapshot(&snap.meta, snap.snapshot).await.expect("install");
    assert_eq!(apply(&mut other, entry(3, "alice", 1, "p")).await.0, first.0);
    db.flush().unwrap();
    drop((db, other));
    let (_db, mut other) = open(&tmp.path().join("b"));
    assert_eq!(apply(&mut other, entry(4, "alice", 1, "p")).await.0, first.0);
    assert_eq!(other.shared().read().state.pools.len(), 1);
    // A new seq from the same client is a new write.
    assert!(apply(&mut other, entry(5, "alice", 2, "p")).await.0[0].1.is_err());
}
