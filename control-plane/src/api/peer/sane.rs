//! Raft requests no legitimate peer can send, refused before openraft sees them.
//!
//! Read against openraft 0.9.25, what is refused and why:
//! - a term or log index above [`LIMIT`]: no cluster gets within 2^32 of `u64::MAX` by
//!   elections or writes, and openraft adds 1 to terms and indexes without checking (a vote at
//!   term `u64::MAX` panics the core when the node next campaigns, and the vote is persisted);
//! - an entry, previous log id, commit or snapshot from a term after the sender's vote: a
//!   leader of term T only has entries of terms up to T;
//! - entries that do not follow `prev_log_id` one index at a time, or whose terms go down:
//!   openraft truncates and appends by index on trust;
//! - a vote request under a committed vote, entries or a snapshot under one not committed,
//!   or any of them under a vote naming this node (see [`carrier`]);
//! - a snapshot whose membership comes after its last log id, an oversized snapshot id, a
//!   chunk that does not continue what this node received of that snapshot, or one that
//!   takes it past [`MAX_SNAPSHOT_BYTES`]: openraft writes a chunk at its offset into an
//!   in-memory buffer, so one chunk with a far offset would allocate that many bytes.
//!
//! Votes from unknown node ids and higher (sane) terms are left to openraft and to the peer
//! role check: they are what an election looks like.

use std::sync::Mutex;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{RaftLogId, Vote};

use crate::types::{LogId, NodeId, TypeConfig};

/// Highest term or log index accepted: 2^32 below `u64::MAX`.
pub const LIMIT: u64 = u64::MAX - (1 << 32);
/// Longest snapshot id accepted (ours are `term-node-index-nanos`, well under 100 bytes).
pub const MAX_SNAPSHOT_ID: usize = 256;
/// Most snapshot data accepted, held in memory until it is whole. A state this large would
/// be about 20 million session bindings; without a bound, a peer could stream chunks until
/// this node ran out of memory.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Insane {
    #[error("{what} term {term} is within 2^32 of u64::MAX")]
    Term { what: &'static str, term: u64 },
    #[error("{what} index {index} is within 2^32 of u64::MAX")]
    Index { what: &'static str, index: u64 },
    #[error("{what} term {term} is after the sender's vote term {vote}")]
    FutureTerm { what: &'static str, term: u64, vote: u64 },
    #[error("entry {got} does not follow index {want} (entries must be consecutive after prev_log_id)")]
    NotConsecutive { want: u64, got: u64 },
    #[error("entry {index} has term {term}, below the term {before} before it")]
    TermGoesDown { index: u64, term: u64, before: u64 },
    #[error("snapshot membership log id {membership} is after its last log id {last}")]
    MembershipAfterSnapshot { membership: String, last: String },
    #[error("snapshot id is {0} bytes, over {MAX_SNAPSHOT_ID}")]
    SnapshotId(usize),
    #[error("snapshot chunk at offset {offset} does not continue the {received} bytes received")]
    Offset { offset: u64, received: u64 },
    #[error("snapshot chunk at offset {offset} of {len} bytes goes past {MAX_SNAPSHOT_BYTES} bytes")]
    TooLarge { offset: u64, len: usize },
    #[error("the vote names this node (node {0}) as its leader or candidate")]
    NamesReceiver(NodeId),
    #[error("a vote request carries a committed vote (a candidate's is not committed)")]
    CommittedCandidate,
    #[error("entries or a snapshot sent under a vote not committed (a leader's is)")]
    UncommittedLeader,
}

fn vote_term(v: &Vote<NodeId>) -> Result<u64, Insane> {
    let term = v.leader_id().term;
    if term > LIMIT {
        return Err(Insane::Term { what: "vote", term });
    }
    Ok(term)
}

/// A log id within bounds and not from a term after `vote`.
fn log_id(what: &'static str, id: Option<&LogId>, vote: u64) -> Result<(), Insane> {
    let Some(id) = id else { return Ok(()) };
    let term = id.leader_id.term;
    if term > LIMIT {
        return Err(Insane::Term { what, term });
    }
    if id.index > LIMIT {
        return Err(Insane::Index { what, index: id.index });
    }
    if term > vote {
        return Err(Insane::FutureTerm { what, term, vote });
    }
    Ok(())
}

/// Whose vote a request carries: a candidate asks with its own, not yet committed; a leader
/// sends entries and snapshots under its committed one. Neither names the node it is sent to.
/// openraft 0.9 takes a committed vote naming the receiver as leadership handed over to it
/// (its leader-transfer path, which Switchyard does not use): one such request would make
/// this node leader with no election, and its appends could truncate committed entries on
/// followers behind it.
pub fn carrier(me: NodeId, vote: &Vote<NodeId>, from_leader: bool) -> Result<(), Insane> {
    if vote.leader_id().voted_for() == Some(me) {
        return Err(Insane::NamesReceiver(me));
    }
    match (vote.is_committed(), from_leader) {
        (true, false) => Err(Insane::CommittedCandidate),
        (false, true) => Err(Insane::UncommittedLeader),
        _ => Ok(()),
    }
}

pub fn vote(rpc: &VoteRequest<NodeId>) -> Result<(), Insane> {
    let v = vote_term(&rpc.vote)?;
    log_id("last_log_id", rpc.last_log_id.as_ref(), v)
}

pub fn append(rpc: &AppendEntriesRequest<TypeConfig>) -> Result<(), Insane> {
    let v = vote_term(&rpc.vote)?;
    log_id("prev_log_id", rpc.prev_log_id.as_ref(), v)?;
    log_id("leader_commit", rpc.leader_commit.as_ref(), v)?;
    let mut want = rpc.prev_log_id.as_ref().map_or(0, |p| p.index + 1);
    let mut before = rpc.prev_log_id.as_ref().map_or(0, |p| p.leader_id.term);
    for e in &rpc.entries {
        let id = e.get_log_id();
        log_id("entry", Some(id), v)?;
        if id.index != want {
            return Err(Insane::NotConsecutive { want, got: id.index });
        }
        if id.leader_id.term < before {
            return Err(Insane::TermGoesDown { index: id.index, term: id.leader_id.term, before });
        }
        want = id.index + 1;
        before = id.leader_id.term;
    }
    Ok(())
}

pub fn snapshot(rpc: &InstallSnapshotRequest<TypeConfig>) -> Result<(), Insane> {
    let v = vote_term(&rpc.vote)?;
    let meta = &rpc.meta;
    log_id("snapshot last_log_id", meta.last_log_id.as_ref(), v)?;
    let membership = meta.last_membership.log_id().as_ref();
    log_id("snapshot membership log id", membership, v)?;
    if membership.is_some() && membership > meta.last_log_id.as_ref() {
        return Err(Insane::MembershipAfterSnapshot {
            membership: format!("{membership:?}"),
            last: format!("{:?}", meta.last_log_id),
        });
    }
    if meta.snapshot_id.len() > MAX_SNAPSHOT_ID {
        return Err(Insane::SnapshotId(meta.snapshot_id.len()));
    }
    Ok(())
}

/// How much of the snapshot being received has arrived, so a chunk can only start at 0 (a
/// new or restarted transfer) or within what is already there (a resend).
#[derive(Default)]
pub struct Chunks(Mutex<Option<(String, u64)>>);

impl Chunks {
    pub fn check(&self, rpc: &InstallSnapshotRequest<TypeConfig>) -> Result<(), Insane> {
        if rpc.offset.checked_add(rpc.data.len() as u64).is_none_or(|end| end > MAX_SNAPSHOT_BYTES) {
            return Err(Insane::TooLarge { offset: rpc.offset, len: rpc.data.len() });
        }
        if rpc.offset == 0 {
            return Ok(());
        }
        let got = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let received = match &*got {
            Some((id, n)) if *id == rpc.meta.snapshot_id => *n,
            _ => 0,
        };
        if rpc.offset > received {
            return Err(Insane::Offset { offset: rpc.offset, received });
        }
        Ok(())
    }

    /// openraft took the chunk.
    pub fn accepted(&self, rpc_id: &str, offset: u64, len: usize) {
        let mut got = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset + len as u64;
        match &mut *got {
            Some((id, n)) if id == rpc_id => *n = (*n).max(end),
            other => *other = Some((rpc_id.to_string(), end)),
        }
    }
}

#[cfg(test)]
#[path = "sane_tests.rs"]
mod tests;
