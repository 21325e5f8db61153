use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta, StoredMembership};

use super::*;
use crate::types::Entry;

fn id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry { log_id: id(term, index), payload: EntryPayload::Blank }
}

fn append_req(term: u64, prev: Option<LogId>, entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest { vote: Vote::new_committed(term, 1), prev_log_id: prev, entries, leader_commit: None }
}

fn snap(term: u64, last: Option<LogId>, membership: Option<LogId>, offset: u64) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: Vote::new_committed(term, 1),
        meta: SnapshotMeta {
            last_log_id: last,
            last_membership: StoredMembership::new(membership, Default::default()),
            snapshot_id: "1-1-5-123".into(),
        },
        offset,
        data: vec![0; 10],
        done: false,
    }
}

#[test]
fn terms_and_indexes_near_u64_max_are_refused_everywhere() {
    let v = |term, last| VoteRequest { vote: Vote::new(term, 2), last_log_id: last };
    assert_eq!(vote(&v(5, Some(id(4, 10)))), Ok(()));
    assert_eq!(vote(&v(LIMIT, None)), Ok(()));
    assert!(matches!(vote(&v(u64::MAX, None)), Err(Insane::Term { what: "vote", .. })));
    assert!(matches!(vote(&v(LIMIT + 1, None)), Err(Insane::Term { .. })));
    assert!(matches!(vote(&v(5, Some(id(5, u64::MAX)))), Err(Insane::Index { .. })));
    assert!(matches!(vote(&v(5, Some(id(6, 1)))), Err(Insane::FutureTerm { .. })));

    assert!(matches!(append(&append_req(u64::MAX, None, vec![])), Err(Insane::Term { .. })));
    assert!(matches!(append(&append_req(5, Some(id(5, u64::MAX - 1)), vec![])), Err(Insane::Index { .. })));
    assert!(matches!(append(&append_req(5, None, vec![entry(u64::MAX, 1)])), Err(Insane::Term { .. })));
    let mut commit = append_req(5, None, vec![]);
    commit.leader_commit = Some(id(9, 3));
    assert!(matches!(append(&commit), Err(Insane::FutureTerm { what: "leader_commit", .. })));

    assert!(matches!(snapshot(&snap(u64::MAX, None, None, 0)), Err(Insane::Term { .. })));
    assert!(matches!(snapshot(&snap(5, Some(id(5, u64::MAX)), None, 0)), Err(Insane::Index { .. })));
    assert!(matches!(snapshot(&snap(5, Some(id(5, 9)), Some(id(u64::MAX, 2)), 0)), Err(Insane::Term { .. })));
}

#[test]
fn entries_must_follow_prev_log_id_one_by_one_with_terms_never_going_down() {
    let ok = append_req(5, Some(id(3, 7)), vec![entry(3, 8), entry(4, 9), entry(5, 10)]);
    assert_eq!(append(&ok), Ok(()));
    assert_eq!(append(&append_req(5, None, vec![entry(1, 0), entry(1, 1)])), Ok(()));
    let gap = append_req(5, Some(id(3, 7)), vec![entry(3, 8), entry(3, 10)]);
    assert_eq!(append(&gap), Err(Insane::NotConsecutive { want: 9, got: 10 }));
    let behind = append_req(5, Some(id(3, 7)), vec![entry(3, 7)]);
    assert_eq!(append(&behind), Err(Insane::NotConsecutive { want: 8, got: 7 }));
    let down = append_req(5, Some(id(3, 7)), vec![entry(4, 8), entry(2, 9)]);
    assert_eq!(append(&down), Err(Insane::TermGoesDown { index: 9, term: 2, before: 4 }));
    let below_prev = append_req(5, Some(id(3, 7)), vec![entry(2, 8)]);
    assert!(matches!(append(&below_prev), Err(Insane::TermGoesDown { .. })));
    let future = append_req(5, Some(id(3, 7)), vec![entry(6, 8)]);
    assert!(matches!(append(&future), Err(Insane::FutureTerm { what: "entry", .. })));
}

#[test]
fn snapshot_chunks_continue_what_arrived_and_meta_is_consistent() {
    assert_eq!(snapshot(&snap(5, Some(id(5, 9)), Some(id(4, 3)), 0)), Ok(()));
    let bad_membership = snap(5, Some(id(5, 9)), Some(id(5, 12)), 0);
    assert!(matches!(snapshot(&bad_membership), Err(Insane::MembershipAfterSnapshot { .. })));
    let mut long = snap(5, None, None, 0);
    long.meta.snapshot_id = "x".repeat(MAX_SNAPSHOT_ID + 1);
    assert!(matches!(snapshot(&long), Err(Insane::SnapshotId(_))));

    let chunks = Chunks::default();
    // A far offset before anything arrived would make openraft allocate that many bytes.
    assert_eq!(chunks.check(&snap(5, None, None, 1 << 30)), Err(Insane::Offset { offset: 1 << 30, received: 0 }));
    let first = snap(5, None, None, 0);
    assert_eq!(chunks.check(&first), Ok(()));
    chunks.accepted(&first.meta.snapshot_id, 0, 10);
    assert_eq!(chunks.check(&snap(5, None, None, 10)), Ok(()), "the next chunk");
    assert_eq!(chunks.check(&snap(5, None, None, 5)), Ok(()), "a resend");
    assert!(chunks.check(&snap(5, None, None, 11)).is_err(), "a gap");
    let mut other = snap(5, None, None, 10);
    other.meta.snapshot_id = "another".into();
    assert!(chunks.check(&other).is_err(), "another snapshot starts at 0");

    // A peer streaming chunks without end is stopped at the bound.
    chunks.accepted("big", 0, (MAX_SNAPSHOT_BYTES - 10) as usize);
    let mut next = snap(5, None, None, MAX_SNAPSHOT_BYTES - 10);
    next.meta.snapshot_id = "big".into();
    assert_eq!(chunks.check(&next), Ok(()), "up to the bound");
    next.offset += 1;
    assert_eq!(chunks.check(&next), Err(Insane::TooLarge { offset: MAX_SNAPSHOT_BYTES - 9, len: 10 }));
    next.offset = u64::MAX - 5;
    assert!(matches!(chunks.check(&next), Err(Insane::TooLarge { .. })), "no overflow");
}

#[test]
fn a_vote_is_carried_by_whom_it_names_and_never_names_the_receiver() {
    // Node 3 receives. A candidate (2) asks with its own vote, not committed.
    assert_eq!(carrier(3, &Vote::new(5, 2), false), Ok(()));
    assert_eq!(carrier(3, &Vote::new_committed(5, 2), false), Err(Insane::CommittedCandidate));
    // A leader (2) sends entries and snapshots under its committed vote.
    assert_eq!(carrier(3, &Vote::new_committed(5, 2), true), Ok(()));
    assert_eq!(carrier(3, &Vote::new(5, 2), true), Err(Insane::UncommittedLeader));
    // Leadership handed to the receiver by one request (openraft's transfer path): refused
    // whatever the request.
    assert_eq!(carrier(3, &Vote::new_committed(6, 3), true), Err(Insane::NamesReceiver(3)));
    assert_eq!(carrier(3, &Vote::new_committed(6, 3), false), Err(Insane::NamesReceiver(3)));
    assert_eq!(carrier(3, &Vote::new(6, 3), false), Err(Insane::NamesReceiver(3)));
}
