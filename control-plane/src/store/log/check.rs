//! The log checked at start, before Raft reads it: a purge a crash cut short recorded, and a
//! hole after the snapshot refused (or, in a data dir from an older build, cut).

use std::sync::atomic::Ordering;

use openraft::Vote;

use super::{purge, LogStore};
use crate::store::{read_err, write_err};
use crate::types::{LogId, NodeId, StorageError};

impl LogStore {
    /// Ends the log at its first hole, and returns how many entries it holds from the purge
    /// point on. (Opening the WAL decoded every entry once, so a corrupt log has stopped the
    /// node already, not mid-replication.)
    ///
    /// Entries are appended in order and synced before they count; segments enter the
    /// directory in order and a truncation removes them last first, each for good before the
    /// next (see [`Wal`]). So a hole after the snapshot is damage (a segment file deleted),
    /// and entries this node acknowledged may have gone with it: the node does not start, as
    /// for a segment that is there but empty (refused when the WAL opens). A data dir last
    /// written by a build before that order is cut at its first hole, once, as those builds
    /// did: a crash there could leave one (a segment whose directory entry was not yet
    /// durable while a later one's was, or a truncation cut short), and what followed it was
    /// never acknowledged, or was being truncated; Raft sends it again.
    ///
    /// Holes are looked for only after the durable snapshot. Below it, a gap is what an append
    /// past a purge still waiting left (a follower that installed a snapshot past its log, and
    /// crashed before the purge to it was recorded): that purge is recorded here, as the purge
    /// thread would have, so that Raft sees a log that starts after the snapshot rather than
    /// one with entries missing from its middle. Call it once the state machine has set the
    /// purge gate ([`Self::purge_gate`]).
    pub fn check(&self) -> Result<u64, StorageError> {
        let purged: Option<LogId> = self.get_meta("last_purged")?;
        let mut kept_from = purged.map_or(0, |p| p.index + 1);
        let floor = kept_from.max(self.gate.floor());
        let mut runs = self.wal.runs();
        let cut_short = first_missing(&runs, kept_from).is_some_and(|at| at < floor);
        if let (true, Some(snap)) = (cut_short, self.gate.snapshot_id()) {
            purge::purge_upto(&self.db, &self.blobs, &self.wal, &self.meta, snap)?;
            self.first_kept.fetch_max(snap.index + 1, Ordering::Release);
            self.tail().purge_to(snap.index);
            tracing::info!(upto = %snap, "recorded a purge to the snapshot that a crash had cut short");
            (kept_from, runs) = (snap.index + 1, self.wal.runs());
        }
        let hole = runs.windows(2).find_map(|w| {
            let (end, next) = (w[0].1, w[1].0);
            (end >= kept_from && next != end + 1 && end + 1 >= floor).then_some(end + 1)
        });
        let held = |to: u64| -> u64 {
            runs.iter().filter(|r| r.1 >= kept_from && r.0 < to).map(|r| r.1.min(to - 1) + 1 - r.0.max(kept_from)).sum()
        };
        let mut kept = held(u64::MAX);
        let ordered = self.get_meta::<bool>(ORDERED)?.unwrap_or(false);
        if let (Some(from), true) = (hole, ordered) {
            let segment = runs.iter().find(|r| r.0 > from).map_or(0, |r| r.0);
            return Err(read_err(format!(
                "the log has a hole: entries from index {from} are missing, and the segment starting at \
                 {segment} follows. Segments are written to disk in order, so a segment file is gone (deleted \
                 or lost), and entries this node acknowledged may be gone with it. Take this node out of the \
                 cluster and add it back with an empty data dir"
            )));
        }
        if let Some(from) = hole {
            let dropped = kept - held(from);
            kept = held(from);
            self.tail().clear();
            self.wal.truncate(from).map_err(write_err)?;
            self.wal.sync().map_err(write_err)?;
            self.durable.truncated(from);
            tracing::warn!(from, dropped, "the log had a hole at index {from} (entries lost to a crash before they were durable); it now ends before it");
        }
        if !ordered {
            // After any cut above is durable: holes from here on are damage.
            self.put_meta(ORDERED, &true)?;
        }
        self.get_meta::<Vote<NodeId>>("vote")?;
        Ok(kept)
    }
}

/// Set in the log's metadata once a build that keeps segments in order in the directory has
/// checked the log: from then on, a hole in it is refused rather than cut.
const ORDERED: &str = "wal_ordered";

/// The first index from `kept_from` on that the log should hold and does not: before its
/// first run (a log emptied by a snapshot's install, then appended past it) or between runs.
/// openraft reads a log with no purge point from index 0, and every index after the purge
/// point up to the last: a gap anywhere there is one it cannot load.
fn first_missing(runs: &[(u64, u64)], kept_from: u64) -> Option<u64> {
    let mut next = kept_from;
    for &(first, last) in runs {
        if last < next {
            continue;
        }
        if first > next {
            return Some(next);
        }
        next = last + 1;
    }
    None
}
