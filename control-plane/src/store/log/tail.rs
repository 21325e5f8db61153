//! The log's newest entries, kept decoded beside sled. Each entry is read back at least three
//! times on a leader (once per follower's replication, once to apply) and once on a follower
//! (to apply); served from here, those reads cost a shared pointer's clone instead of a sled
//! range scan and a postcard decode each.
//!
//! Invariant: when not empty, the tail ends at the log's last entry and holds a contiguous run
//! of it. Every successful write pushes, every truncation cuts it, and anything else (a failed
//! write, a hole found at start) clears it, so a read it cannot serve goes to sled.

use std::collections::VecDeque;

use crate::types::Entry;

/// At most this many entries...
const MAX_ENTRIES: usize = 4096;
/// ...and about this many encoded bytes are kept.
const MAX_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub struct Tail {
    /// Entries with their encoded sizes, by index from `first`.
    entries: VecDeque<(Entry, usize)>,
    first: u64,
    bytes: usize,
}

impl Tail {
    fn last(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.first + self.entries.len() as u64 - 1)
    }

    /// Adds an entry just written to the log (`size`: its encoded length).
    pub fn push(&mut self, entry: Entry, size: usize) {
        let i = entry.log_id.index;
        match self.last() {
            Some(last) if i == last + 1 => {}
            // Written over a suffix (a truncation this tail was not told of cannot happen, but
            // the cut keeps it contiguous either way).
            Some(last) if i > self.first && i <= last => self.truncate_from(i),
            _ => {
                self.clear();
                self.first = i;
            }
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > 1 && (self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
            self.first += 1;
        }
    }

    /// Forgets entries from index `i` on (the log was truncated there).
    pub fn truncate_from(&mut self, i: u64) {
        while self.last().is_some_and(|last| last >= i) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets entries up to and including index `i` (purged).
    pub fn purge_to(&mut self, i: u64) {
        while !self.entries.is_empty() && self.first <= i {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries from `start` to before `end` (`None`: to the last), stopping once more than
    /// `max_bytes` are taken (at least one entry always is), if the tail holds all of them;
    /// `None` if some must come from sled.
    pub fn get(&self, start: u64, end: Option<u64>, max_bytes: usize) -> Option<Vec<Entry>> {
        let last = self.last()?;
        if start < self.first {
            return None;
        }
        let end = end.map_or(last + 1, |e| e.min(last + 1));
        let mut out = Vec::new();
        let mut bytes = 0;
        for i in start..end {
            let (e, size) = &self.entries[(i - self.first) as usize];
            bytes += size;
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::LogId;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    fn ids(v: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        v.map(|v| v.iter().map(|e| (e.log_id.index, e.log_id.leader_id.term)).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut t = Tail::default();
        assert_eq!(ids(t.get(1, None, usize::MAX)), None, "an empty tail serves nothing");
        for i in 5..=9 {
            t.push(entry(i, 1), 10);
        }
        assert_eq!(ids(t.get(4, Some(7), usize::MAX)), None, "index 4 is only in sled");
        assert_eq!(ids(t.get(5, Some(7), usize::MAX)), Some(vec![(5, 1), (6, 1)]));
        assert_eq!(ids(t.get(8, None, usize::MAX)), Some(vec![(8, 1), (9, 1)]));
        assert_eq!(ids(t.get(8, Some(100), usize::MAX)), Some(vec![(8, 1), (9, 1)]), "nothing past the last");
        assert_eq!(ids(t.get(10, None, usize::MAX)), Some(vec![]));
        assert_eq!(ids(t.get(5, None, 25)), Some(vec![(5, 1), (6, 1)]), "capped by bytes");
        assert_eq!(ids(t.get(5, None, 1)), Some(vec![(5, 1)]), "one entry always goes");
    }

    #[test]
    fn truncation_purge_and_rewrites_keep_it_contiguous() {
        let mut t = Tail::default();
        for i in 1..=6 {
            t.push(entry(i, 1), 10);
        }
        t.truncate_from(5);
        assert_eq!(ids(t.get(1, None, usize::MAX)).unwrap().len(), 4);
        t.push(entry(5, 2), 10);
        // Written over index 3 by a new leader without a truncation first: 4 and 5 go.
        t.push(entry(3, 3), 10);
        assert_eq!(ids(t.get(1, None, usize::MAX)), Some(vec![(1, 1), (2, 1), (3, 3)]));
        t.purge_to(2);
        assert_eq!(ids(t.get(1, None, usize::MAX)), None);
        assert_eq!(ids(t.get(3, None, usize::MAX)), Some(vec![(3, 3)]));
        // A write that does not follow on starts the tail over.
        t.push(entry(10, 3), 10);
        assert_eq!(ids(t.get(3, None, usize::MAX)), None);
        assert_eq!(ids(t.get(10, None, usize::MAX)), Some(vec![(10, 3)]));
        assert_eq!(t.bytes, 10);
    }

    #[test]
    fn it_is_bounded_by_count_and_bytes() {
        let mut t = Tail::default();
        for i in 1..=(MAX_ENTRIES as u64 + 10) {
            t.push(entry(i, 1), 1);
        }
        assert_eq!(t.entries.len(), MAX_ENTRIES);
        assert_eq!(t.first, 11);
        t.push(entry(MAX_ENTRIES as u64 + 11, 1), MAX_BYTES);
        assert_eq!(t.entries.len(), 1, "one entry over the byte cap is still kept alone");
        assert_eq!(t.bytes, MAX_BYTES);
    }
}
