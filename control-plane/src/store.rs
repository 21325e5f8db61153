//! A node's storage: the Raft log in its own WAL ([`wal`]) and the vote in sled
//! ([`log::LogStore`]), the state machine and snapshots ([`sm::StateMachineStore`]); one sled
//! database per node, the WAL and the current snapshot in files beside it.

pub mod blobs;
pub mod log;
pub mod sm;
pub mod wal;

use std::path::Path;

use crate::error::NodeError;
use crate::types::StorageError;

/// The on-disk format this build reads and writes: bumped whenever the log entry, state
/// machine or snapshot encoding changes, so an older node's data dir is refused by name
/// instead of failing to decode as "corrupt". 2: request ids in log entries, the session clock
/// and the seen-request table in the state machine and snapshots. 3: audit notes in log
/// entries, bearer tokens and the audit log in the state machine and snapshots. 4: the state
/// machine is no longer written row by row, only in snapshots (a build that reads format 3
/// would take the rows it finds for the current state). 5: the Raft log is in its own WAL
/// (`wal/`), not in sled (a build that reads format 4 would find an empty log beside a vote).
pub const FORMAT: u32 = 5;
/// Older formats this build opens, and upgrades in place: format 3's rows are read once, and
/// a log left in sled is moved to the WAL (`log::LogStore::new`); entries and snapshots are
/// encoded alike in all three.
const UPGRADES_FROM: &[u32] = &[3, 4];
/// The format snapshots, and so backups, are encoded in: unchanged since format 4, so
/// backups stay readable by builds of format 4.
pub const SNAPSHOT_FORMAT: u32 = 4;

/// Opens (or creates) a node's data dir and checks it belongs to this node.
///
/// sled can panic on some corrupt files; that is caught here and turned into an error so a
/// bad data dir stops the node with a message.
/// sled's error without the `backtrace ()` its corruption errors print.
fn sled_reason(e: &sled::Error) -> String {
    match e {
        sled::Error::Corruption { at: Some(at), .. } => format!("corrupt data at {at:?}"),
        sled::Error::Corruption { at: None, .. } => "corrupt data".into(),
        e => e.to_string(),
    }
}

pub fn open(dir: &Path, node_id: u64) -> Result<sled::Db, NodeError> {
    open_with(dir, node_id, true)
}

/// [`open`], with or without sled's background flusher: a restore opens without it, so the
/// database is released the moment it is dropped and the node can open it right after.
pub fn open_with(dir: &Path, node_id: u64, background_flush: bool) -> Result<sled::Db, NodeError> {
    let path = dir.display().to_string();
    let err = |reason: String| NodeError::DataDir { path: path.clone(), reason };
    let existed = dir.join("conf").exists();
    if dir.exists() && !dir.is_dir() {
        return Err(err("is not a directory; point --data-dir at an empty or new directory".into()));
    }
    if dir.exists() {
        let entries: Vec<_> = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?.filter_map(|e| e.ok()).collect();
        let looks_like_sled = entries.iter().any(|e| e.file_name() == "conf" || e.file_name() == "db");
        if !entries.is_empty() && !looks_like_sled {
            return Err(err("exists and is not a Switchyard data dir (no sled database in it); \
                 point --data-dir at an empty or new directory"
                .into()));
        }
    }
    let d = dir.to_path_buf();
    let flush_every = background_flush.then_some(500);
    let db = std::panic::catch_unwind(move || sled::Config::new().path(d).flush_every_ms(flush_every).open())
        .map_err(|_| err("sled panicked opening it: the database is corrupt".into()))?
        .map_err(|e| {
            err(format!("cannot open sled database: {} (corrupt or in use by another process?)", sled_reason(&e)))
        })?;
    let meta = db.open_tree("meta").map_err(|e| err(e.to_string()))?;
    match meta.get("node_id").map_err(|e| err(e.to_string()))? {
        Some(v) => {
            let owner: u64 = postcard::from_bytes(&v).map_err(|e| err(format!("corrupt node id: {e}")))?;
            if owner != node_id {
                return Err(err(format!("belongs to node {owner}, not node {node_id}")));
            }
        }
        // sled drops what fails its checksums as if it were a torn write; a database that was
        // set up before but lost even its identity is corrupt, not new.
        None if existed => {
            return Err(err("holds a sled database without this node's identity: it is corrupt \
                 (or its first start never finished); move it aside to start the node empty"
                .into()))
        }
        None => {
            meta.insert("node_id", postcard::to_stdvec(&node_id).expect("u64 encodes"))
                .map_err(|e| err(e.to_string()))?;
            meta.insert("format", &FORMAT.to_be_bytes()).map_err(|e| err(e.to_string()))?;
            db.flush().map_err(|e| err(e.to_string()))?;
        }
    }
    // Data dirs from before formats were recorded are format 1.
    let format = match meta.get("format").map_err(|e| err(e.to_string()))? {
        None => 1,
        Some(v) => {
            let b: [u8; 4] = v.as_ref().try_into().map_err(|_| err("corrupt format marker".into()))?;
            u32::from_be_bytes(b)
        }
    };
    if UPGRADES_FROM.contains(&format) {
        meta.insert("format", &FORMAT.to_be_bytes()).map_err(|e| err(e.to_string()))?;
        db.flush().map_err(|e| err(e.to_string()))?;
    } else if format != FORMAT {
        return Err(err(format!(
            "was written in storage format {format}, and this build reads format {FORMAT}: move it aside \
             and start the node empty (a member of a running cluster is then removed and re-added: \
             `switchyard cluster remove-node`, start with --join, `add-node`, `promote`)"
        )));
    }
    Ok(db)
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    let io = std::io::Error::other(e.to_string());
    openraft::StorageIOError::read(&io).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    let io = std::io::Error::other(e.to_string());
    openraft::StorageIOError::write(&io).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_of_another_storage_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        drop(open(&path, 1).unwrap());
        // Reopening a dir this build wrote works.
        drop(open(&path, 1).unwrap());
        // A dir from before formats were recorded (no marker) is named as such.
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            db.open_tree("meta").unwrap().remove("format").unwrap();
            db.flush().unwrap();
        }
        let e = open(&path, 1).unwrap_err().to_string();
        assert!(e.contains("storage format 1") && e.contains("reads format 5"), "{e}");
    }

    #[test]
    fn a_format_3_data_dir_opens_and_is_marked_as_this_builds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        {
            let db = open(&path, 1).unwrap();
            db.open_tree("meta").unwrap().insert("format", &3u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let db = open(&path, 1).unwrap();
        let marker = db.open_tree("meta").unwrap().get("format").unwrap().unwrap();
        assert_eq!(&*marker, &FORMAT.to_be_bytes());
    }
}
