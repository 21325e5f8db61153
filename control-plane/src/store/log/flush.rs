//! The log's flush thread (group commit) and how far the log is durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::LogFlushed;

use crate::metrics::Metrics;
use crate::store::blobs::Blobs;
use crate::store::wal::Wal;
use crate::types::TypeConfig;

/// How far this node's log is durable: every entry up to the index it names.
///
/// openraft 0.9 waits for the leader's own flush before it sends an entry to the followers,
/// so a write paid the leader's flush and then a follower's, in a row. The Raft paper (10.2.1)
/// lets the leader write in parallel with replicating, provided it counts itself toward a
/// quorum only once its write is durable. Here the leader's appends are acknowledged to
/// openraft at once, and what nobody may see before the leader's copy is durable waits here
/// instead: the commit index sent to any peer (`network`), and the applying of an entry
/// (the state machine), hence every client's answer. A commit index the leader computed
/// early is therefore seen by nobody until its own copy is on disk, so a leader that dies
/// before its flush leaves no trace of that commit, exactly as if it had counted itself late.
/// Followers still acknowledge only what they flushed.
#[derive(Clone, Default)]
pub struct Durable(Arc<tokio::sync::watch::Sender<Through>>);

/// One more than the index the log is durable through (0: nothing), and how many truncations
/// came before: a flush queued before a truncation must not raise the index past it.
#[derive(Clone, Copy, Default)]
struct Through {
    next: u64,
    epoch: u64,
}

impl Durable {
    /// Waits until the log is durable through `index`. Never returns if the flusher stops.
    pub async fn reached(&self, index: u64) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|t| t.next > index).await;
    }

    pub(super) fn epoch(&self) -> u64 {
        self.0.borrow().epoch
    }

    /// Durable through `index` now, unless the log was truncated since `epoch`.
    pub(super) fn raise(&self, index: u64, epoch: u64) {
        self.0.send_if_modified(|t| {
            let raised = t.epoch == epoch && index + 1 > t.next;
            if raised {
                t.next = index + 1;
            }
            raised
        });
    }

    /// Entries from `index` on were removed, and all before it are durable: a flush still
    /// queued from before speaks of entries that are gone.
    pub(super) fn truncated(&self, index: u64) {
        self.0.send_modify(|t| {
            t.next = index;
            t.epoch += 1;
        });
    }
}

/// The exit status of a node whose log failed to flush after it had counted a leader's
/// entries (sysexits' EX_IOERR).
const EXIT_UNFLUSHED: i32 = 74;

/// How long a blob sled's own background work wrote may wait for its fsync while no append
/// comes to do it.
const IDLE_BLOB_SYNC: std::time::Duration = std::time::Duration::from_millis(100);

/// `db.flush()`, with the blob files it points to made durable too (see [`Blobs`]): first
/// those written before it, most of them, then those written while it ran. Returns the number
/// of blobs synced.
pub(super) fn flush_with_blobs(db: &sled::Db, blobs: &Blobs) -> sled::Result<u64> {
    let before = blobs.sync()?;
    db.flush()?;
    Ok(before + blobs.sync()?)
}

/// A follower syncs its appends in place while the log's fsyncs cost no more than this on
/// average; a slower disk's go to the flusher thread, so that the node's other work (watches,
/// reads, forwarded writes, all on one runtime thread) does not stall behind each one.
const IN_PLACE_SYNC_MAX: Duration = Duration::from_millis(1);

/// What the log's fsyncs have cost lately: a moving average over about the last eight.
#[derive(Clone, Default)]
pub(super) struct SyncCost(Arc<AtomicU64>);

impl SyncCost {
    /// Syncs `wal`, timing it into this average and into the node's flush histogram.
    pub(super) fn sync(&self, wal: &Wal, metrics: &Metrics) -> std::io::Result<()> {
        let started = Instant::now();
        let res = wal.sync();
        let took = started.elapsed();
        metrics.log_flush.observe(took.as_secs_f64());
        self.observe(took);
        res
    }

    /// Two threads may race here and lose one sample: an average needs no more.
    pub(super) fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.0.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.0.store(new, Ordering::Relaxed);
    }

    /// Whether a sync is cheap enough to run on the caller's thread.
    pub(super) fn cheap(&self) -> bool {
        self.0.load(Ordering::Relaxed) <= u64::try_from(IN_PLACE_SYNC_MAX.as_micros()).unwrap_or(u64::MAX)
    }
}

/// An append for the flusher: its last index, the truncation epoch it was written in, and
/// openraft's callback unless the append was a leader's, acknowledged already.
pub(super) struct Flush(pub u64, pub u64, pub Option<LogFlushed<TypeConfig>>);

/// Group commit: every append waiting when a flush starts is made durable by that one flush,
/// and Raft goes on appending and replicating meanwhile instead of waiting on each fsync.
///
/// It is a thread of its own: an fsync blocks. Only the log is synced here; sled holds just
/// the vote and other records whose writers flush it themselves.
pub(super) fn flush_loop(
    wal: Arc<Wal>,
    blobs: Blobs,
    rx: std::sync::mpsc::Receiver<Flush>,
    durable: Durable,
    metrics: Arc<Metrics>,
    cost: SyncCost,
) {
    let mut waiting = Vec::new();
    loop {
        let first = match rx.recv_timeout(IDLE_BLOB_SYNC) {
            Ok(f) => f,
            // sled's own cleaner may copy records into a new blob and delete the old one while
            // no flush comes: such a blob waits no longer than this for its fsync.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                match blobs.sync() {
                    Ok(n) => {
                        metrics.log_blobs_synced.inc_by(n);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not sync sled's blob files; trying again"),
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        waiting.push(first);
        waiting.extend(rx.try_iter());
        let res = cost.sync(&wal, &metrics);
        match &res {
            Ok(_) => {
                for f in &waiting {
                    durable.raise(f.0, f.1);
                }
            }
            // A leader's entries were acknowledged as durable and cannot be taken back: stop
            // the node, as a database stops on a failed fsync, rather than run on a log that
            // may not hold what Raft counted.
            Err(e) if waiting.iter().any(|f| f.2.is_none()) => {
                tracing::error!(error = %e, "the Raft log could not be flushed after this leader counted its entries; stopping");
                std::process::exit(EXIT_UNFLUSHED);
            }
            Err(_) => {}
        }
        for Flush(_, _, cb) in waiting.drain(..) {
            if let Some(cb) = cb {
                cb.log_io_completed(res.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
            }
        }
    }
}
