//! The Raft log ([`Wal`], in `wal/` beside sled) and the vote (in sled).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, Vote};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::blobs::Blobs;
use super::wal::Wal;
use super::{read_err, write_err};
use crate::metrics::Metrics;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

mod check;
mod flush;
mod migrate;
mod purge;
mod tail;

pub use flush::Durable;
use flush::{flush_loop, Flush, SyncCost};
use purge::purge_loop;
pub use purge::PurgeGate;
use tail::Tail;

/// Log entries in the WAL; vote, committed and purged ids in sled's tree `meta`.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    wal: Arc<Wal>,
    meta: sled::Tree,
    flusher: std::sync::mpsc::Sender<Flush>,
    purger: std::sync::mpsc::Sender<LogId>,
    /// This node's id, as its data dir records it (`None`: never leads, see [`Self::leading`]).
    id: Option<NodeId>,
    /// Whether the vote last saved is this node's own granted one: its appends are then a
    /// leader's, acknowledged before they are durable (see [`Durable`]).
    leading: Arc<AtomicBool>,
    durable: Durable,
    sync_cost: SyncCost,
    /// The first index not purged (0: none purged since start). Entries below it may still be
    /// in the WAL, awaiting the purge thread; reads skip them.
    first_kept: Arc<AtomicU64>,
    /// The purge point Raft asked for, not yet recorded on disk (the purge thread records it
    /// once the snapshot covering it is durable).
    pending_purge: Arc<std::sync::Mutex<Option<LogId>>>,
    /// One more than the index of the durably stored snapshot, if purges wait for it.
    gate: PurgeGate,
    metrics: Arc<Metrics>,
    /// sled's blob files, synced with every flush of sled.
    blobs: Blobs,
    /// The newest entries, decoded, for reads that would otherwise decode them again.
    tail: Arc<std::sync::Mutex<Tail>>,
}

/// Marks `db`'s empty log as starting after `at` (a restored snapshot's position), as if
/// everything up to it had been purged. No store is opened, so no flusher thread holds `db`.
pub fn start_after(db: &sled::Db, at: LogId) -> Result<(), StorageError> {
    let meta = db.open_tree("meta").map_err(write_err)?;
    meta.insert("last_purged", postcard::to_stdvec(&at).map_err(write_err)?).map_err(write_err)?;
    Ok(())
}

impl LogStore {
    /// The purge point and the last entry (the purge point when every entry was purged).
    fn ends(&self) -> Result<(Option<LogId>, Option<LogId>), StorageError> {
        let stored: Option<LogId> = self.get_meta("last_purged")?;
        let pending = *self.pending_purge.lock().unwrap_or_else(|e| e.into_inner());
        let last_purged = stored.max(pending);
        let purged_index = last_purged.map(|p| p.index);
        let last = match self.wal.last() {
            // Entries at or below the purge point may still await the purge thread.
            Some(last) if Some(last.index) > purged_index => Some(last),
            _ => last_purged,
        };
        Ok((last_purged, last))
    }

    /// The last entry's id, as [`RaftLogStorage::get_log_state`] gives it: for a pre-vote,
    /// asked outside Raft's core.
    pub fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self.ends()?.1)
    }

    /// The bytes of log after the durable snapshot, and that snapshot's size (0 before any):
    /// what [`crate::node::compaction`] weighs to decide when the next snapshot is worth its
    /// cost.
    pub fn since_snapshot(&self) -> (u64, u64) {
        (self.wal.bytes_from(self.gate.floor()), self.gate.snapshot_bytes())
    }

    /// Opens the log of the data dir `dir`, whose sled database is `db`, and starts the
    /// flusher thread; it ends when the last clone of this store is dropped. sled's blob files
    /// are not synced: for a store a node does not run on.
    pub fn new(db: sled::Db, dir: &Path) -> Result<Self, StorageError> {
        Self::with_metrics(db, dir, Blobs::none(), Arc::default())
    }

    /// [`Self::new`], syncing `blobs` with every flush of sled, timing flushes and noting
    /// commits into a node's metrics.
    pub fn with_metrics(db: sled::Db, dir: &Path, blobs: Blobs, metrics: Arc<Metrics>) -> Result<Self, StorageError> {
        let wal = migrate::open_wal(&db, dir)?;
        let meta = db.open_tree("meta").map_err(read_err)?;
        let (flusher, rx) = std::sync::mpsc::channel();
        let (flush_wal, flush_blobs) = (wal.clone(), blobs.clone());
        let flush_metrics = metrics.clone();
        let durable = Durable::default();
        let flush_durable = durable.clone();
        let sync_cost = SyncCost::default();
        let flush_cost = sync_cost.clone();
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || flush_loop(flush_wal, flush_blobs, rx, flush_durable, flush_metrics, flush_cost))
            .map_err(write_err)?;
        let (purger, rx) = std::sync::mpsc::channel();
        let gate = PurgeGate::open();
        let (purge_db, purge_wal, purge_meta, purge_gate) = (db.clone(), wal.clone(), meta.clone(), gate.clone());
        std::thread::Builder::new()
            .name("log-purge".into())
            .spawn({
                let blobs = blobs.clone();
                move || purge_loop(purge_db, blobs, purge_wal, purge_meta, purge_gate, rx)
            })
            .map_err(write_err)?;
        let purged = meta.get("last_purged").map_err(read_err)?;
        let purged: Option<LogId> = purged.map(|v| postcard::from_bytes(&v)).transpose().map_err(read_err)?;
        let first_kept = Arc::new(AtomicU64::new(purged.map_or(0, |p| p.index + 1)));
        let id = meta.get("node_id").map_err(read_err)?.and_then(|v| postcard::from_bytes(&v).ok());
        let me = LogStore {
            db,
            wal,
            meta,
            flusher,
            purger,
            id,
            leading: Arc::default(),
            durable,
            sync_cost,
            first_kept,
            pending_purge: Arc::default(),
            gate,
            metrics,
            blobs,
            tail: Arc::default(),
        };
        // What a data dir holds when it opens is on disk.
        if let Some(last) = me.ends()?.1 {
            me.durable.raise(last.index, 0);
        }
        Ok(me)
    }

    /// How far this node's log is durable, for what must not be seen before the leader's own
    /// copy is ([`Durable`]).
    pub fn durable(&self) -> Durable {
        self.durable.clone()
    }

    /// Makes purges wait for the snapshot they rely on to be durable: the caller (the node)
    /// hands the gate to the state machine's snapshot store, which sets where it stands.
    /// Closed until then.
    pub fn purge_gate(&self) -> PurgeGate {
        self.gate.durable(None);
        self.gate.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(read_err),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError> {
        let bytes = postcard::to_stdvec(v).map_err(write_err)?;
        self.meta.insert(key, bytes).map_err(write_err)?;
        Ok(())
    }

    /// Writes entries to the log (not yet durable: `append` has them flushed). A crash
    /// mid-append leaves a shorter log (the WAL cuts a torn write off), and nothing depends on
    /// an entry before the flush (a follower's acknowledgement, a leader's commit, see
    /// [`Durable`]).
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<Option<u64>, StorageError> {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let records: Vec<_> = entries
            .iter()
            .map(|e| postcard::to_stdvec(e).map(|v| (e.log_id, v)))
            .collect::<Result<_, _>>()
            .map_err(write_err)?;
        let last = entries.last().map(|e| e.log_id.index);
        let mut tail = self.tail();
        if let Err(err) = self.wal.append(&records) {
            // The tail must end where the log does; the log now ends somewhere unknown.
            tail.clear();
            return Err(write_err(err));
        }
        for (e, (_, v)) in entries.into_iter().zip(&records) {
            tail.push(e, v.len());
        }
        Ok(last)
    }

    /// Returns once entries from `first` on may be written: at once, unless they would leave a
    /// hole after the log's last entry (a follower that installed a snapshot past its log goes
    /// on from the snapshot). Then it waits for that snapshot to be durable. Until it is, a
    /// crash would restart the node from its older snapshot with a hole in its log, and
    /// [`Self::check`] would cut off everything past the hole: entries this node had
    /// acknowledged, which the leader may have counted toward a commit. openraft 0.9 hands the
    /// install to the state machine without waiting for it, and goes on appending.
    async fn past_a_hole(&self, first: u64) {
        let hole = match self.wal.last() {
            Some(last) => first > last.index + 1,
            None => first > 0,
        };
        if !hole {
            return;
        }
        let mut waited = false;
        while !self.gate.allows(first - 1) {
            if !waited {
                tracing::info!(
                    first,
                    "an append past a hole in the log waits for the snapshot before it to be durable"
                );
                waited = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A flush outside the flusher thread: the log, then sled with its blobs
    /// ([`flush::flush_with_blobs`]).
    async fn flush(&self) -> Result<(), StorageError> {
        let (db, blobs, wal) = (self.db.clone(), self.blobs.clone(), self.wal.clone());
        tokio::task::spawn_blocking(move || {
            wal.sync().map_err(write_err)?;
            flush::flush_with_blobs(&db, &blobs).map_err(write_err)
        })
        .await
        .map_err(write_err)??;
        Ok(())
    }

    /// Entries from the WAL, decoded (see [`Wal::read`]).
    fn read(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<Entry>, StorageError> {
        let raw = self.wal.read(start, end, max_bytes).map_err(read_err)?;
        raw.iter().map(|v| postcard::from_bytes(v).map_err(read_err)).collect()
    }

    fn first_kept(&self) -> u64 {
        self.first_kept.load(Ordering::Acquire)
    }

    /// No vote and no log: this node has never promised anything to anyone (or forgot it).
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.wal.is_empty()
            && self.get_meta::<Vote<NodeId>>("vote")?.is_none()
            && self.get_meta::<LogId>("last_purged")?.is_none())
    }
}

/// Most stored bytes of log entries replication sends in one AppendEntries (at least one
/// entry always goes): openraft gives each such RPC only its replication deadline, so a batch
/// capped by entry count alone could be too big to ever arrive in time on a slow link.
pub const MAX_APPEND_BYTES: usize = 1024 * 1024;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        }
        .max(self.first_kept());
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(cached) = self.tail().get(start, end, usize::MAX) {
            return Ok(cached);
        }
        self.read(start, end.unwrap_or(u64::MAX), usize::MAX)
    }

    /// Entries from `start`, stopping before `end` or once [`MAX_APPEND_BYTES`] are taken.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let start = start.max(self.first_kept());
        if start >= end {
            return Ok(Vec::new());
        }
        if let Some(cached) = self.tail().get(start, Some(end), MAX_APPEND_BYTES) {
            return Ok(cached);
        }
        self.read(start, end, MAX_APPEND_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (last_purged, last) = self.ends()?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta("vote", vote)?;
        self.flush().await?;
        // That flush took every entry written so far to disk: a new leader starts with its
        // whole log durable.
        if let Some(last) = self.ends()?.1 {
            self.durable.raise(last.index, self.durable.epoch());
        }
        let own = self.id.is_some_and(|id| vote.leader_id.node_id == id) && vote.committed;
        self.leading.store(own, Ordering::Release);
        Ok(())
    }

    /// The vote as stored, but never as a granted leadership: openraft 0.9 restarts a node
    /// whose stored vote is its own granted one as leader at once, and takes the first entry
    /// of its old term as the read index's floor. What that node remembers as committed is
    /// what it happened to flush, so a linearizable read could miss writes it acknowledged
    /// before it was killed. Without the grant the node stands for election: a new term, a new
    /// entry of its own to commit first. The term and the node voted for stay, so it still
    /// grants no other candidate in that term.
    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.get_meta::<Vote<NodeId>>("vote")?.map(|v| Vote { committed: false, ..v }))
    }

    /// Not flushed: a lost committed index is recomputed by the next leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.metrics.set_committed(c.index);
        }
        self.put_meta("committed", &committed)
    }

    /// At most the last entry held. The committed id is not flushed with the log: a follower
    /// records what its leader says is committed, entries it has not synced yet included, so
    /// after a crash cut its unsynced tail the record can point past the log's end. openraft
    /// would then fail to start, reading entries that are gone; the leader sends them again.
    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let mut committed = self.get_meta::<Option<LogId>>("committed")?.flatten();
        let last = self.ends()?.1;
        if committed.is_some_and(|c| last.is_none_or(|l| l.index < c.index)) {
            tracing::warn!(
                committed = committed.map(|c| c.index),
                last = last.map(|l| l.index),
                "the committed index recorded is past the log's end (its unsynced tail was cut): \
                 taking the end; the leader sends the rest again"
            );
            committed = last;
        }
        if let Some(c) = committed {
            self.metrics.set_committed(c.index);
        }
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Some(first) = entries.first() {
            self.past_a_hole(first.log_id.index).await;
        }
        let Some(last) = self.write_entries(entries)? else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // A follower's copy counts toward a quorum only once the flusher has made it durable
        // and called back; a leader's counts at once, and [`Durable`] holds back what depends
        // on it.
        let early = self.leading.load(Ordering::Acquire);
        let epoch = self.durable.epoch();
        // openraft 0.9's core awaits this callback before it does anything else, so a
        // follower's core gains nothing from the flusher thread but two hand-offs between
        // threads: it syncs here while syncs are cheap (1 client's writes: 6-10% more of them
        // per second, measured).
        if !early && self.sync_cost.cheap() {
            let res = self.sync_cost.sync(&self.wal, &self.metrics);
            if res.is_ok() {
                self.durable.raise(last, epoch);
            }
            callback.log_io_completed(res.map_err(|e| std::io::Error::other(e.to_string())));
            return Ok(());
        }
        let (flush, now) =
            if early { (Flush(last, epoch, None), Some(callback)) } else { (Flush(last, epoch, Some(callback)), None) };
        if let Err(std::sync::mpsc::SendError(Flush(_, _, cb))) = self.flusher.send(flush) {
            if let Some(cb) = cb.or(now) {
                cb.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
            }
            return Ok(());
        }
        if let Some(cb) = now {
            cb.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail().truncate_from(log_id.index);
        if let Err(e) = self.wal.truncate(log_id.index) {
            self.tail().clear();
            return Err(write_err(e));
        }
        self.flush().await?;
        self.durable.truncated(log_id.index);
        Ok(())
    }

    /// Hands the point to the purge thread (`purge::purge_loop`), which records it and removes the
    /// entries once the gate allows, and returns at once.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut pending = self.pending_purge.lock().unwrap_or_else(|e| e.into_inner());
            *pending = (*pending).max(Some(log_id));
        }
        self.first_kept.fetch_max(log_id.index + 1, Ordering::Release);
        self.tail().purge_to(log_id.index);
        self.purger.send(log_id).map_err(|_| write_err("log purge thread stopped"))
    }
}

#[cfg(test)]
mod tests;
