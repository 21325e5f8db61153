//! The sled state machine beyond the seen table: the high-water session clock kept across
//! reopening and snapshots, and stored snapshots never replaced by older ones.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use switchyard_control::state::{Batch, Command};
use switchyard_control::store::{self, sm::StateMachineStore};
use switchyard_control::types::{Entry, LogId};

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch(vec![cmd.into()])),
    }
}

fn open(dir: &std::path::Path) -> (sled::Db, StateMachineStore) {
    let db = store::open(dir, 1).expect("open sled");
    (db.clone(), StateMachineStore::open(db).expect("open state machine"))
}

fn clock(sm: &StateMachineStore) -> u64 {
    sm.shared().read().state.clock_ms()
}

#[tokio::test]
async fn the_session_clock_survives_reopening_and_travels_in_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, mut sm) = open(&tmp.path().join("a"));
    sm.apply([entry(1, Command::ExpireSessions { now_ms: 5000 })]).await.unwrap();
    sm.apply([entry(2, Command::ExpireSessions { now_ms: 4000 })]).await.unwrap();
    assert_eq!(clock(&sm), 5000);
    db.flush().unwrap();
    drop((db, sm));
    let (db, mut sm) = open(&tmp.path().join("a"));
    assert_eq!(clock(&sm), 5000);
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    drop((db, sm));
    let (db, mut other) = open(&tmp.path().join("b"));
    other.install_snapshot(&snap.meta, snap.snapshot).await.expect("install");
    assert_eq!(clock(&other), 5000);
    db.flush().unwrap();
    drop((db, other));
    let (_db, other) = open(&tmp.path().join("b"));
    assert_eq!(clock(&other), 5000);
}
