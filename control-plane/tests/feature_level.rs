//! The cluster feature level in the sled state machine: kept across reopening, carried in
//! snapshots (and read as 1 from snapshots written before levels), never lowered, and a level
//! above this binary's stops `apply` before anything is applied.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use switchyard_control::state::{Batch, Command};
use switchyard_control::store::{self, sm::StateMachineStore};
use switchyard_control::types::{Entry, LogId};
use switchyard_model::version::max_feature_level;

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch(std::sync::Arc::new(vec![cmd.into()]))),
    }
}

fn open(dir: &std::path::Path) -> (sled::Db, StateMachineStore) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match store::open(dir, 1) {
            Ok(db) => break db,
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                // sled's file lock outlives a dropped Db briefly; retried until the deadline.
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("open sled: {e}"),
        }
    };
    (db.clone(), StateMachineStore::open(db, dir).expect("open state machine"))
}

fn level(sm: &StateMachineStore) -> u32 {
    sm.shared().read().state.feature_level()
}

#[tokio::test]
async fn the_level_survives_reopening_travels_in_snapshots_and_never_goes_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, mut sm) = open(&tmp.path().join("a"));
    assert_eq!(level(&sm), 1, "a fresh state machine runs at level 1");
    sm.apply([entry(1, Command::SetFeatureLevel(2))]).await.unwrap();
    sm.apply([entry(2, Command::SetFeatureLevel(1))]).await.unwrap();
    assert_eq!(level(&sm), 2, "never lowered");
    // The state machine is durable through its snapshots (entries after one are re-applied
    // from the log by Raft).
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    drop((db, sm));
    let (db, sm) = open(&tmp.path().join("a"));
    assert_eq!(level(&sm), 2);
    drop((db, sm));
    let (_db, mut other) = open(&tmp.path().join("b"));
    other.install_snapshot(&snap.meta, snap.snapshot).await.expect("install");
    assert_eq!(level(&other), 2);
}

#[tokio::test]
async fn a_snapshot_from_before_levels_installs_at_level_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, mut sm) = open(&tmp.path().join("a"));
    sm.apply([entry(1, Command::ExpireSessions { now_ms: 7 })]).await.unwrap();
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    let mut data = snap.snapshot.into_inner();
    // The tail is one postcard varint (level 1): what an older build wrote ends before it.
    assert_eq!(data.pop(), Some(1));
    let (_db, mut other) = open(&tmp.path().join("b"));
    other.install_snapshot(&snap.meta, Box::new(std::io::Cursor::new(data))).await.expect("install");
    assert_eq!(level(&other), 1);
    assert_eq!(other.shared().read().state.clock_ms(), 7, "the rest of the snapshot still reads");
}

#[tokio::test]
async fn a_level_above_this_binary_stops_apply_before_it_applies_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, mut sm) = open(&tmp.path().join("a"));
    let too_high = max_feature_level() + 1;
    let e = sm.apply([entry(1, Command::SetFeatureLevel(too_high))]).await.unwrap_err().to_string();
    assert!(e.contains(&format!("runs at feature level {too_high}")), "{e}");
    assert_eq!(level(&sm), 1);
}

#[tokio::test]
async fn entries_before_the_refused_level_in_the_same_call_are_not_applied_either() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, mut sm) = open(&tmp.path().join("a"));
    let too_high = Command::SetFeatureLevel(max_feature_level() + 1);
    let r = sm.apply([entry(1, Command::ExpireSessions { now_ms: 9 }), entry(2, too_high)]).await;
    assert!(r.is_err());
    let live = sm.shared();
    let live = live.read();
    assert_eq!((live.revision(), live.state.clock_ms()), (0, 0));
}
