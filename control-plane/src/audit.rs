//! The audit log: one record per accepted admin write (who, when by the leader's clock, what,
//! at which revision), replicated through Raft in the same entry as the write itself and
//! bounded to the last [`MAX_AUDIT`] records, oldest dropped first.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// How many records a cluster keeps.
pub const MAX_AUDIT: usize = 10_000;

/// What a write says about itself; `at_ms` is stamped by the leader that proposes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNote {
    pub who: String,
    pub role: String,
    pub method: String,
    /// What changed, never a secret (no token, no session key).
    pub summary: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log: keys the stored row, and orders records within one revision.
    pub seq: u64,
    pub revision: u64,
    /// Shared with the command it audits: applying a write, and cloning the state for a
    /// snapshot, copy a pointer, not four strings (same encoding as the note itself).
    pub note: Arc<AuditNote>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditLog {
    records: VecDeque<AuditRecord>,
    next_seq: u64,
}

impl AuditLog {
    /// The log from stored records, in any order.
    pub fn from_records(mut records: Vec<AuditRecord>) -> AuditLog {
        records.sort_by_key(|r| r.seq);
        let next_seq = records.last().map_or(0, |r| r.seq + 1);
        let mut log = AuditLog { records: records.into(), next_seq };
        while log.records.len() > MAX_AUDIT {
            log.records.pop_front();
        }
        log
    }

    /// Appends a record; returns it and the seq of the one dropped to stay in bounds.
    pub fn push(&mut self, revision: u64, note: Arc<AuditNote>) -> (AuditRecord, Option<u64>) {
        let rec = AuditRecord { seq: self.next_seq, revision, note };
        self.next_seq += 1;
        self.records.push_back(rec.clone());
        let dropped = if self.records.len() > MAX_AUDIT { self.records.pop_front().map(|r| r.seq) } else { None };
        (rec, dropped)
    }

    /// Records at `revision` or later, oldest first.
    pub fn since(&self, revision: u64) -> impl Iterator<Item = &AuditRecord> {
        let start = self.records.partition_point(|r| r.revision < revision);
        self.records.range(start..)
    }

    pub fn records(&self) -> impl DoubleEndedIterator<Item = &AuditRecord> {
        self.records.iter()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(what: &str) -> Arc<AuditNote> {
        Arc::new(AuditNote {
            who: "cert alice".into(),
            role: "admin".into(),
            method: what.into(),
            summary: String::new(),
            at_ms: 1,
        })
    }

    #[test]
    fn bounded_oldest_first_and_listed_from_a_revision() {
        let mut log = AuditLog::default();
        for i in 0..MAX_AUDIT as u64 {
            assert_eq!(log.push(10 + i, note("a")).1, None);
        }
        let (rec, dropped) = log.push(99_999, note("b"));
        assert_eq!(dropped, Some(0));
        assert_eq!(rec.seq, MAX_AUDIT as u64);
        assert_eq!(log.len(), MAX_AUDIT);
        assert_eq!(log.since(99_999).count(), 1);
        assert_eq!(log.since(10).count(), MAX_AUDIT);
        assert_eq!(log.since(12).next().unwrap().revision, 12);
        let again = AuditLog::from_records({
            let mut v: Vec<_> = log.records().cloned().collect();
            v.reverse();
            v
        });
        assert_eq!(again, log);
    }
}

#[cfg(test)]
mod encoding {
    use super::*;

    /// The record as it was before its note was shared: logs and snapshots hold this.
    #[derive(Serialize)]
    struct Plain {
        seq: u64,
        revision: u64,
        note: AuditNote,
    }

    #[test]
    fn a_shared_note_encodes_as_the_note_itself() {
        let note =
            AuditNote { who: "w".into(), role: "admin".into(), method: "m".into(), summary: "s".into(), at_ms: 7 };
        let shared = AuditRecord { seq: 1, revision: 2, note: Arc::new(note.clone()) };
        let plain = Plain { seq: 1, revision: 2, note };
        assert_eq!(postcard::to_stdvec(&shared).unwrap(), postcard::to_stdvec(&plain).unwrap());
    }
}
