//! Opening the WAL, moving in the log an older build left in sled.

use std::path::Path;
use std::sync::Arc;

use crate::store::wal::Wal;
use crate::store::{read_err, write_err};
use crate::types::{Entry, LogId, StorageError};

/// The log of the data dir `dir`, moved out of `db` first if an older build left it there.
///
/// Before the WAL, entries were in sled's tree `log`. They are copied into `wal.tmp/`,
/// synced, and the directory renamed to `wal/` in one step, so a crash leaves either no WAL
/// (copied again on the next start) or all of it; only then is the tree emptied.
pub(super) fn open_wal(db: &sled::Db, dir: &Path) -> Result<Arc<Wal>, StorageError> {
    let path = dir.join("wal");
    let old = db.open_tree("log").map_err(read_err)?;
    if !path.exists() && !old.is_empty() {
        let tmp = dir.join("wal.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(write_err)?;
        }
        let (wal, _) = Wal::open(&tmp).map_err(write_err)?;
        let mut run: Vec<(LogId, Vec<u8>)> = Vec::new();
        for kv in old.iter() {
            let (_, v) = kv.map_err(read_err)?;
            let id = postcard::from_bytes::<Entry>(&v).map_err(read_err)?.log_id;
            if run.last().is_some_and(|(l, _)| id.index != l.index + 1) || run.len() >= 1024 {
                wal.append(&run).map_err(write_err)?;
                run.clear();
            }
            run.push((id, v.to_vec()));
        }
        wal.append(&run).map_err(write_err)?;
        wal.sync().map_err(write_err)?;
        drop(wal);
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write_err)?;
        tracing::info!(entries = old.len(), "moved the Raft log out of sled into wal/");
    }
    let (wal, recovered) = Wal::open(&path).map_err(read_err)?;
    if recovered.dropped_bytes > 0 {
        tracing::warn!(
            bytes = recovered.dropped_bytes,
            "the log ended in a torn write (a crash before it was synced, so never acknowledged); cut off"
        );
    }
    if !old.is_empty() {
        old.clear().map_err(write_err)?;
        db.flush().map_err(write_err)?;
    }
    Ok(Arc::new(wal))
}
