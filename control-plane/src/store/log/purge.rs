//! Purging the log in the background, no further than a durable snapshot allows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::store::blobs::Blobs;
use crate::store::wal::Wal;
use crate::store::write_err;
use crate::types::{LogId, StorageError};

/// How far the log may be purged: one more than the index of the snapshot durably stored
/// (0: none). The state machine's snapshot store raises it once a snapshot is on disk.
///
/// openraft 0.9 asks for a purge up to an installed snapshot in the same breath as it hands
/// the install to the state machine, without waiting for it: a purge recorded before that
/// snapshot is on disk would leave, after a crash, a log that starts past the snapshot the
/// node restarts from, and a node that cannot start. A store whose gate nobody took
/// ([`super::LogStore::purge_gate`]: tools, tests of the log alone) purges at once.
///
/// It also carries the durable snapshot's size, which [`super::LogStore::since_snapshot`]
/// weighs the log against.
#[derive(Clone)]
pub struct PurgeGate {
    next: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    /// The durable snapshot's log id, for the purge [`super::LogStore::check`] may have to
    /// record at start.
    id: Arc<std::sync::Mutex<Option<LogId>>>,
}

impl PurgeGate {
    /// A gate nobody has taken yet: purges go through at once.
    pub(super) fn open() -> Self {
        PurgeGate { next: Arc::new(AtomicU64::new(u64::MAX)), bytes: Arc::default(), id: Arc::default() }
    }

    /// Lets purges through up to `id` (the last entry of a snapshot now durable).
    pub fn durable(&self, id: Option<LogId>) {
        *self.id.lock().unwrap_or_else(|e| e.into_inner()) = id;
        self.next.store(id.map_or(0, |i| i.index + 1), Ordering::Release);
    }

    /// The durable snapshot's last log id (`None`: none, or nobody took the gate).
    pub(super) fn snapshot_id(&self) -> Option<LogId> {
        *self.id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the size in bytes of the snapshot now durable.
    pub fn sized(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// The durable snapshot's size in bytes (0: none, or not known).
    pub(super) fn snapshot_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// One more than the durable snapshot's index; 0 if no snapshot or nobody took the gate.
    pub(super) fn floor(&self) -> u64 {
        match self.next.load(Ordering::Acquire) {
            u64::MAX => 0,
            f => f,
        }
    }

    pub(super) fn allows(&self, index: u64) -> bool {
        index < self.next.load(Ordering::Acquire)
    }
}

/// Purges in the background, in order: openraft awaits `purge` inside its core, and removing
/// the ten thousand or so entries a snapshot frees took 100–800 ms when the log was in sled,
/// time in which the core sent no heartbeat and answered nothing (followers stood for
/// election); the point waits for the gate besides.
///
/// A point is recorded (and made durable) only once the gate allows it, and before anything
/// is removed, so a crash at any moment leaves either the old point with every entry after it,
/// or the new one: never a gap, never a log starting past the stored snapshot. Reads skip what
/// awaits removal.
pub(super) fn purge_loop(
    db: sled::Db,
    blobs: Blobs,
    wal: Arc<Wal>,
    meta: sled::Tree,
    gate: PurgeGate,
    rx: std::sync::mpsc::Receiver<LogId>,
) {
    let mut want: Option<LogId> = None;
    loop {
        match want {
            Some(upto) if gate.allows(upto.index) => {
                want = None;
                if let Err(e) = purge_upto(&db, &blobs, &wal, &meta, upto) {
                    // Not fatal: the entries stay, and the next purge covers them.
                    tracing::warn!(error = %e, upto = %upto, "log purge failed");
                }
            }
            // Waiting for the snapshot to be durable: look again shortly, or take a newer point.
            Some(_) => match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(p) => want = want.max(Some(p)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(p) => want = Some(p),
                Err(_) => return,
            },
        }
        // Only the latest point matters when several are waiting.
        want = rx.try_iter().fold(want, |w, p| w.max(Some(p)));
    }
}

pub(super) fn purge_upto(
    db: &sled::Db,
    blobs: &Blobs,
    wal: &Wal,
    meta: &sled::Tree,
    upto: LogId,
) -> Result<(), StorageError> {
    meta.insert("last_purged", postcard::to_stdvec(&upto).map_err(write_err)?).map_err(write_err)?;
    super::flush::flush_with_blobs(db, blobs).map_err(write_err)?;
    // Whole segments only: what the last one still holds below the point stays, unread.
    wal.purge(upto.index).map_err(write_err)
}
