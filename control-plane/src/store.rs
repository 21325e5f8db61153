//! sled storage: the Raft log and vote ([`log::LogStore`]), the state machine and snapshots
//! ([`sm::StateMachineStore`]), all in one sled database per node.

pub mod log;
pub mod sm;

use std::path::Path;

use crate::error::NodeError;
use crate::types::StorageError;

/// Opens (or creates) a node's data dir and checks it belongs to this node.
///
/// sled can panic on some corrupt files; that is caught here and turned into an error so a
/// bad data dir stops the node with a message.
pub fn open(dir: &Path, node_id: u64) -> Result<sled::Db, NodeError> {
    let path = dir.display().to_string();
    let err = |reason: String| NodeError::DataDir { path: path.clone(), reason };
    let existed = dir.join("conf").exists();
    if dir.exists() {
        let entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).collect();
        let looks_like_sled = entries.iter().any(|e| e.file_name() == "conf" || e.file_name() == "db");
        if !entries.is_empty() && !looks_like_sled {
            return Err(err("exists and is not a Switchyard data dir (no sled database in it); \
                 point --data-dir at an empty or new directory"
                .into()));
        }
    }
    let d = dir.to_path_buf();
    let db = std::panic::catch_unwind(move || sled::Config::new().path(d).open())
        .map_err(|_| err("sled panicked opening it: the database is corrupt".into()))?
        .map_err(|e| err(format!("cannot open sled database: {e} (corrupt or in use by another process?)")))?;
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
            db.flush().map_err(|e| err(e.to_string()))?;
        }
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
