//! The state machine beyond the seen table: durable through its snapshots (what came after
//! the last one is re-applied from the log), the high-water session clock kept in them, stored
//! snapshots never replaced by older ones, and the rows of a format-3 data dir read once.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use switchyard_control::state::{Batch, Command};
use switchyard_control::store::{self, sm::StateMachineStore};
use switchyard_control::types::{Entry, LogId};

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch(std::sync::Arc::new(vec![cmd.into()]))),
    }
}

/// Opens (or reopens) a store. sled's background flusher may hold a just-dropped database
/// (and its file lock) for a moment, more so with tests running side by side: a reopen waits
/// for the lock, within a deadline.
fn open(dir: &std::path::Path) -> (sled::Db, StateMachineStore) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match store::open(dir, 1) {
            Ok(db) => break db,
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("open sled: {e}"),
        }
    };
    (db.clone(), StateMachineStore::open(db, dir).expect("open state machine"))
}

fn clock(sm: &StateMachineStore) -> u64 {
    sm.shared().read().state.clock_ms()
}

#[tokio::test]
async fn the_session_clock_survives_in_snapshots_and_travels_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, mut sm) = open(&tmp.path().join("a"));
    sm.apply([entry(1, Command::ExpireSessions { now_ms: 5000 })]).await.unwrap();
    sm.apply([entry(2, Command::ExpireSessions { now_ms: 4000 })]).await.unwrap();
    assert_eq!(clock(&sm), 5000);
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    drop((db, sm));
    let (db, sm) = open(&tmp.path().join("a"));
    assert_eq!(clock(&sm), 5000);
    drop((db, sm));
    let (db, mut other) = open(&tmp.path().join("b"));
    other.install_snapshot(&snap.meta, snap.snapshot).await.expect("install");
    assert_eq!(clock(&other), 5000);
    db.flush().unwrap();
    drop((db, other));
    let (_db, other) = open(&tmp.path().join("b"));
    assert_eq!(clock(&other), 5000);
}

fn index(meta: &switchyard_control::types::SnapshotMeta) -> Option<u64> {
    meta.last_log_id.map(|l| l.index)
}

#[tokio::test]
async fn a_build_from_an_older_state_does_not_replace_a_newer_installed_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    // The leader's snapshot, at index 5.
    let (_ldb, mut leader) = open(&tmp.path().join("leader"));
    for i in 1..=5 {
        leader.apply([entry(i, Command::ExpireSessions { now_ms: i })]).await.unwrap();
    }
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(index(&snap.meta), Some(5));

    // A follower whose builder sees the state at index 1 (as a build that read the state just
    // before the install did): a second handle on the same database, left behind.
    let (db, mut builder_view) = open(&tmp.path().join("follower"));
    builder_view.apply([entry(1, Command::ExpireSessions { now_ms: 1 })]).await.unwrap();
    let mut follower = StateMachineStore::open(db.clone(), &tmp.path().join("follower")).unwrap();
    follower.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();

    let built = builder_view.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(index(&built.meta), Some(5), "the build answers with the newer stored snapshot");
    let stored = follower.get_current_snapshot().await.unwrap().expect("a stored snapshot");
    assert_eq!(index(&stored.meta), Some(5), "the installed snapshot is still the stored one");
    assert_eq!(stored.meta.snapshot_id, snap.meta.snapshot_id);
}

fn audited(index: u64, cmd: Command, what: &str) -> Entry {
    let audit = Some(switchyard_control::audit::AuditNote {
        who: "cert alice".into(),
        role: "admin".into(),
        method: what.into(),
        summary: String::new(),
        at_ms: 7,
    });
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch(std::sync::Arc::new(vec![switchyard_control::state::Proposed {
            id: None,
            cmd,
            audit: audit.map(std::sync::Arc::new),
        }]))),
    }
}

fn token(id: &str) -> switchyard_control::auth::tokens::TokenRecord {
    switchyard_control::auth::tokens::TokenRecord {
        id: id.into(),
        name: "ci".into(),
        role: "viewer".into(),
        hash: switchyard_control::auth::tokens::hash(id),
        created_ms: 1,
        expires_ms: 0,
        created_revision: 0,
    }
}

/// (token ids, audit (revision, method)) as a store holds them.
fn access(sm: &StateMachineStore) -> (Vec<String>, Vec<(u64, String)>) {
    let shared = sm.shared();
    let live = shared.read();
    let tokens = live.state.tokens().iter().map(|t| t.id.clone()).collect();
    let audit = live.state.audit().records().map(|r| (r.revision, r.note.method.clone())).collect();
    (tokens, audit)
}

#[tokio::test]
async fn tokens_and_audit_records_survive_in_snapshots_and_travel_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, mut sm) = open(&tmp.path().join("a"));
    sm.apply([audited(1, Command::CreateToken(token("t1")), "create")]).await.unwrap();
    sm.apply([audited(2, Command::CreateToken(token("t2")), "create")]).await.unwrap();
    sm.apply([audited(3, Command::RevokeToken { id: "t1".into() }, "revoke")]).await.unwrap();
    // A refused write is not audited.
    sm.apply([audited(4, Command::RevokeToken { id: "t1".into() }, "revoke")]).await.unwrap();
    let want = (vec!["t2".to_string()], vec![(1, "create".into()), (2, "create".into()), (3, "revoke".into())]);
    assert_eq!(access(&sm), want);
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    drop((db, sm));
    let (db, sm) = open(&tmp.path().join("a"));
    assert_eq!(access(&sm), want);
    drop((db, sm));
    let (db, mut other) = open(&tmp.path().join("b"));
    other.install_snapshot(&snap.meta, snap.snapshot).await.expect("install");
    assert_eq!(access(&other), want);
    db.flush().unwrap();
    drop((db, other));
    let (_db, other) = open(&tmp.path().join("b"));
    assert_eq!(access(&other), want);
}

fn pool(index: u64, name: &str) -> Entry {
    use switchyard_control::pb::Pb;
    entry(index, Command::CreatePool(Pb(switchyard_proto::v1::Pool { name: name.into(), ..Default::default() })))
}

fn pools(sm: &StateMachineStore) -> Vec<String> {
    sm.shared().read().state.pools.keys().cloned().collect()
}

/// Applying writes nothing: a reopened store is at its last snapshot, and reports that
/// index so Raft re-applies the committed entries after it from the log.
#[tokio::test]
async fn a_reopened_store_is_at_its_last_snapshot_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, mut sm) = open(&tmp.path().join("a"));
    sm.apply([pool(1, "p1"), pool(2, "p2")]).await.unwrap();
    sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    sm.apply([pool(3, "p3")]).await.unwrap();
    assert_eq!(pools(&sm), ["p1", "p2", "p3"]);
    drop((db, sm));
    let (db, mut sm) = open(&tmp.path().join("a"));
    assert_eq!(pools(&sm), ["p1", "p2"]);
    assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(2));
    // Raft's re-apply of entry 3 brings it back.
    sm.apply([pool(3, "p3")]).await.unwrap();
    assert_eq!(pools(&sm), ["p1", "p2", "p3"]);
    drop((db, sm));
}

/// A data dir from a build that wrote the state machine row by row (storage format 3) starts
/// where it stopped; once a snapshot covers the rows, they are dropped.
#[tokio::test]
async fn rows_of_a_format_3_data_dir_are_read_until_a_snapshot_covers_them() {
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    {
        let db = store::open(&dir, 1).unwrap();
        let rows = db.open_tree("sm").unwrap();
        let mut key = vec![b'p', 0];
        key.extend_from_slice(b"old");
        rows.insert(key, switchyard_proto::v1::Pool { name: "old".into(), ..Default::default() }.encode_to_vec())
            .unwrap();
        let at: Option<LogId> = Some(LogId::new(CommittedLeaderId::new(1, 1), 5));
        rows.insert("~last_applied", postcard::to_stdvec(&at).unwrap()).unwrap();
        db.flush().unwrap();
    }
    let (db, mut sm) = open(&dir);
    assert_eq!(pools(&sm), ["old"]);
    assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(5));
    sm.apply([pool(6, "new")]).await.unwrap();
    sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    drop((db, sm));
    let (db, sm) = open(&dir);
    assert_eq!(pools(&sm), ["new", "old"]);
    assert!(db.open_tree("sm").unwrap().is_empty(), "the snapshot covers the rows");
}
