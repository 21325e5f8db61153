use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::pb::Pb;
use crate::state::{Batch, Command};

fn id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// An entry of about 100 KiB (a pool with a long hash key, never applied here).
fn big(index: u64) -> Entry {
    let pool = switchyard_proto::v1::Pool { name: "p".into(), hash_key: "x".repeat(100 * 1024), ..Default::default() };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch(Arc::new(vec![Command::CreatePool(Pb(pool)).into()]))),
    }
}

#[tokio::test]
async fn a_log_with_a_hole_left_by_an_older_build_ends_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = crate::store::open(tmp.path(), 1).unwrap();
    let mut log = LogStore::new(db.clone(), tmp.path()).unwrap();
    // What a crash inside a truncation could leave under builds that removed segments in no
    // set order: a segment removed, the later one not.
    log.write_entries((1..=3).map(big)).unwrap();
    log.write_entries((5..=6).map(big)).unwrap();
    assert_eq!(log.check().unwrap(), 3, "entries 1 to 3 are kept");
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(3), "5 and 6 went with the hole");
    assert_eq!(log.check().unwrap(), 3, "a log without a hole is left as it is");
    drop(log);
    let mut log = LogStore::new(db, tmp.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(3), "and so it stays");
}

#[tokio::test]
async fn a_hole_in_a_log_kept_in_order_stops_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let db = crate::store::open(tmp.path(), 1).unwrap();
    let log = LogStore::new(db.clone(), tmp.path()).unwrap();
    assert_eq!(log.check().unwrap(), 0, "this build checked the log once: it is kept in order from now on");
    // The log as a deleted segment (entries 4 to 9) leaves it: 1-3, then 10 on.
    log.write_entries((1..=3).map(big)).unwrap();
    log.write_entries((10..=11).map(big)).unwrap();
    drop(log);
    let log = LogStore::new(db.clone(), tmp.path()).unwrap();
    let err = log.check().unwrap_err().to_string();
    assert!(
        err.contains("entries from index 4 are missing, and the segment starting at 10")
            && err.contains("empty data dir"),
        "{err}"
    );
    let mut log = LogStore::new(db, tmp.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(11), "refused, not cut: the entries after it are all there");
}

#[tokio::test]
async fn a_purge_a_crash_cut_short_is_recorded_at_start_so_the_log_has_no_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let db = crate::store::open(tmp.path(), 1).unwrap();
    let log = LogStore::new(db.clone(), tmp.path()).unwrap();
    // Entries 1-3 from before a snapshot at 10 was installed, then 11-12 appended after it;
    // the crash came before the purge recorded its point.
    log.write_entries((1..=3).map(big)).unwrap();
    log.write_entries((11..=12).map(big)).unwrap();
    log.purge_gate().durable(Some(id(10)));
    assert_eq!(log.check().unwrap(), 2, "11 and 12 are kept; 1 to 3 go with the purge to the snapshot");
    // Raft sees a log that starts after the snapshot, with nothing missing from its middle:
    // every index from the purge point on can be read.
    let state = log.clone().get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(10)));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(12));
    let read: Vec<u64> = log.clone().try_get_log_entries(0..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(read, [11, 12]);
    // Recorded, not only seen: a restart finds the same.
    drop(log);
    let mut log = LogStore::new(db, tmp.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id.map(|l| l.index)), (Some(id(10)), Some(12)));
}

#[tokio::test]
async fn a_first_snapshot_appended_past_before_its_purge_was_recorded_is_purged_to_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let db = crate::store::open(tmp.path(), 1).unwrap();
    let log = LogStore::new(db.clone(), tmp.path()).unwrap();
    // A node that joined with an empty log: the leader's snapshot at 10 installed and on disk,
    // 11-12 appended and acknowledged, then a crash before the purge to 10 was recorded (the
    // purge thread looks at its gate every 50 ms). No purge point, and no entry 0: openraft
    // would read index 0 and fail to start, on every start.
    log.write_entries((11..=12).map(big)).unwrap();
    log.purge_gate().durable(Some(id(10)));
    assert_eq!(log.check().unwrap(), 2, "11 and 12 are kept");
    let state = log.clone().get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id.map(|l| l.index)), (Some(id(10)), Some(12)));
    drop(log);
    let mut log = LogStore::new(db, tmp.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(10)), "recorded, so a restart finds it");
}

#[tokio::test]
async fn a_log_without_a_gap_below_the_snapshot_is_not_purged_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let db = crate::store::open(tmp.path(), 1).unwrap();
    let log = LogStore::new(db, tmp.path()).unwrap();
    log.write_entries((0..=6).map(big)).unwrap();
    log.purge_gate().durable(Some(id(4)));
    assert_eq!(log.check().unwrap(), 7, "no gap: nothing is purged at start");
    assert_eq!(log.get_meta::<LogId>("last_purged").unwrap(), None);
}

#[tokio::test]
async fn a_purge_is_recorded_only_once_the_snapshot_it_relies_on_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = LogStore::new(crate::store::open(tmp.path(), 1).unwrap(), tmp.path()).unwrap();
    let gate = log.purge_gate();
    // Two segments: the purge below removes the first whole.
    log.write_entries((1..=6).map(big)).unwrap();
    log.write_entries((8..=10).map(big)).unwrap();
    log.purge(LogId::new(CommittedLeaderId::new(1, 1), 6)).await.unwrap();
    // Raft sees the purge at once...
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(6));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
    let first = log.try_get_log_entries(0..).await.unwrap().first().map(|e| e.log_id.index);
    assert_eq!(first, Some(8));
    // ...but while no durable snapshot covers index 6, nothing is recorded or removed: a
    // crash now restarts from the old snapshot with every entry after it.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(log.get_meta::<LogId>("last_purged").unwrap(), None);
    assert_eq!(log.wal.runs(), [(1, 6), (8, 10)]);
    gate.durable(Some(id(6)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.wal.runs() != [(8, 10)] {
        assert!(std::time::Instant::now() < deadline, "purge never ran: {:?}", log.wal.runs());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(log.get_meta::<LogId>("last_purged").unwrap().map(|l| l.index), Some(6));
}

#[tokio::test]
async fn a_log_left_in_sled_by_an_older_build_moves_to_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let db = crate::store::open(tmp.path(), 1).unwrap();
    {
        // As an older build wrote it: big-endian index keys, a gap below a purge point.
        let tree = db.open_tree("log").unwrap();
        for e in (1..=3).chain(7..=9).map(big) {
            tree.insert(e.log_id.index.to_be_bytes(), postcard::to_stdvec(&e).unwrap()).unwrap();
        }
        // A copy cut short by a crash is started over.
        std::fs::create_dir_all(tmp.path().join("wal.tmp")).unwrap();
        std::fs::write(tmp.path().join("wal.tmp").join("00000000000000000001.wal"), b"torn").unwrap();
    }
    let mut log = LogStore::new(db.clone(), tmp.path()).unwrap();
    assert!(db.open_tree("log").unwrap().is_empty(), "the old tree is emptied");
    assert!(!tmp.path().join("wal.tmp").exists());
    assert_eq!(log.wal.runs(), [(1, 3), (7, 9)]);
    let got: Vec<u64> = log.try_get_log_entries(7..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(got, [7, 8, 9]);
    drop(log);
    let log = LogStore::new(db, tmp.path()).unwrap();
    assert_eq!(log.wal.runs(), [(1, 3), (7, 9)], "and stays moved");
}

#[tokio::test]
async fn replication_reads_are_capped_by_bytes_not_only_by_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = LogStore::new(crate::store::open(tmp.path(), 1).unwrap(), tmp.path()).unwrap();
    log.write_entries((1..=30).map(big)).unwrap();
    let got = log.limited_get_log_entries(1, 31).await.unwrap();
    let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (1..=10).collect::<Vec<_>>(), "about 1 MiB of 100 KiB entries, in order");
    // One entry over the cap still goes alone, so replication never stalls.
    let got = log.limited_get_log_entries(30, 31).await.unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn reads_from_the_tail_match_reads_from_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let db = crate::store::open(tmp.path(), 1).unwrap();
    let mut cached = LogStore::new(db.clone(), tmp.path()).unwrap();
    cached.write_entries((1..=30).map(big)).unwrap();
    cached.truncate(LogId::new(CommittedLeaderId::new(1, 1), 26)).await.unwrap();
    cached.write_entries((26..=27).map(big)).unwrap();
    // A store opened on the same data dir holds no tail: every read goes to the WAL.
    let mut cold = LogStore::new(db, tmp.path()).unwrap();
    let ids = |v: Vec<Entry>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
    for (start, end) in [(1, 31), (5, 9), (20, 28), (27, 28), (28, 40)] {
        let a = ids(cached.limited_get_log_entries(start, end).await.unwrap());
        assert_eq!(a, ids(cold.limited_get_log_entries(start, end).await.unwrap()), "{start}..{end}");
        let a = ids(cached.try_get_log_entries(start..end).await.unwrap());
        assert_eq!(a, ids(cold.try_get_log_entries(start..end).await.unwrap()), "{start}..{end}");
    }
    let a = ids(cached.try_get_log_entries(3..).await.unwrap());
    assert_eq!(a, (3..=27).collect::<Vec<_>>());
    assert_eq!(a, ids(cold.try_get_log_entries(3..).await.unwrap()));
    let a = ids(cached.try_get_log_entries(27..=u64::MAX).await.unwrap());
    assert_eq!(a, vec![27]);
    cached.purge(LogId::new(CommittedLeaderId::new(1, 1), 10)).await.unwrap();
    assert_eq!(ids(cached.try_get_log_entries(0..13).await.unwrap()), vec![11, 12]);
}

/// Whether `reached(index)` resolves within a short wait.
async fn reaches(d: &Durable, index: u64) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(100), d.reached(index)).await.is_ok()
}

#[tokio::test]
async fn only_this_nodes_own_granted_vote_makes_its_appends_a_leaders() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = LogStore::new(crate::store::open(tmp.path(), 1).unwrap(), tmp.path()).unwrap();
    let leading = |log: &LogStore| log.leading.load(Ordering::Acquire);
    assert!(!leading(&log), "a store opens as no leader's");
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    assert!(!leading(&log), "a candidate's own vote, not yet granted");
    log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    assert!(leading(&log), "its own vote, granted by a quorum");
    log.save_vote(&Vote::new_committed(2, 3)).await.unwrap();
    assert!(!leading(&log), "another node's leadership");
}

#[tokio::test]
async fn durability_follows_flushes_and_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = LogStore::new(crate::store::open(tmp.path(), 1).unwrap(), tmp.path()).unwrap();
    let d = log.durable();
    assert!(!reaches(&d, 0).await, "an empty log holds nothing");
    // Written but not flushed: not durable.
    log.write_entries((1..=3).map(big)).unwrap();
    assert!(!reaches(&d, 1).await);
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    assert!(reaches(&d, 3).await && !reaches(&d, 4).await, "a vote's flush takes the whole log");
    d.raise(5, d.epoch());
    let stale = d.epoch();
    log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 2)).await.unwrap();
    assert!(reaches(&d, 1).await && !reaches(&d, 2).await, "what was cut is no longer durable");
    d.raise(9, stale);
    assert!(!reaches(&d, 2).await, "a flush queued before the truncation raises nothing");
}

#[test]
fn a_follower_syncs_in_place_only_while_syncs_are_cheap() {
    use std::time::Duration;
    let cost = flush::SyncCost::default();
    assert!(cost.cheap(), "no sync measured yet");
    cost.observe(Duration::from_micros(150));
    assert!(cost.cheap());
    for _ in 0..20 {
        cost.observe(Duration::from_millis(20));
    }
    assert!(!cost.cheap(), "a slow disk's syncs go to the flusher");
    for _ in 0..60 {
        cost.observe(Duration::from_micros(150));
    }
    assert!(cost.cheap(), "and come back once the disk is fast again");
}

#[tokio::test]
async fn an_append_past_a_hole_waits_for_the_snapshot_before_it_to_be_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogStore::new(crate::store::open(tmp.path(), 1).unwrap(), tmp.path()).unwrap();
    let gate = log.purge_gate();
    log.write_entries((1..=3).map(big)).unwrap();
    let quick = std::time::Duration::from_millis(100);
    assert!(tokio::time::timeout(quick, log.past_a_hole(4)).await.is_ok(), "the next entry goes at once");
    // A snapshot at 10 installed, not yet on disk: entry 11 would follow a hole.
    let waiting = tokio::spawn({
        let log = log.clone();
        async move { log.past_a_hole(11).await }
    });
    tokio::time::sleep(quick).await;
    assert!(!waiting.is_finished(), "it waits while the snapshot is not durable");
    gate.durable(Some(id(9)));
    tokio::time::sleep(quick).await;
    assert!(!waiting.is_finished(), "a snapshot short of the hole does not do");
    gate.durable(Some(id(10)));
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("goes on once it is").unwrap();
}

#[test]
fn since_snapshot_weighs_the_log_after_the_durable_snapshot_against_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogStore::new(crate::store::open(tmp.path(), 1).unwrap(), tmp.path()).unwrap();
    let gate = log.purge_gate();
    log.write_entries((1..=4).map(big)).unwrap();
    let (all, none) = log.since_snapshot();
    assert!(all > 4 * 100 * 1024, "four entries of about 100 KiB: {all}");
    assert_eq!(none, 0, "no snapshot yet");
    // A snapshot at 2, of 5 MB: the log after it is entries 3 and 4, half of the whole.
    gate.durable(Some(id(2)));
    gate.sized(5_000_000);
    let (after, size) = log.since_snapshot();
    assert_eq!((after * 2, size), (all, 5_000_000));
}

/// A follower records as committed what its leader says, entries it has not synced
/// included; a crash that cuts those off leaves the record past the log's end, and openraft
/// would fail to start reading entries that are gone.
#[tokio::test]
async fn a_committed_index_past_the_log_end_is_read_as_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let db = crate::store::open(tmp.path(), 1).unwrap();
    let mut log = LogStore::new(db.clone(), tmp.path()).unwrap();
    log.write_entries((1..=6).map(big)).unwrap();
    log.save_committed(Some(id(6))).await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), Some(id(6)));
    log.flush().await.unwrap();
    drop(log);
    // The records from entry 5 on never reached the disk: zeros, as written ahead.
    let wal = tmp.path().join("wal");
    let seg = std::fs::read_dir(&wal).unwrap().next().unwrap().unwrap().path();
    let entry = postcard::to_stdvec(&big(1)).unwrap().len() as u64 + 8;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 2 * entry as usize], 4 * entry).unwrap();
    drop(f);
    let mut log = LogStore::new(db, tmp.path()).unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(4));
    assert_eq!(log.read_committed().await.unwrap(), Some(id(4)));
}
