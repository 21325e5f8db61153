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

/// How long a locked database is waited for at open.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether sled failed to take the database's file lock (sled says so only in words).
fn locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Why sled could not open the database, in words that point at the fix: its corruption
/// errors print an empty `backtrace ()`, and a full disk or a lock is no corruption.
fn sled_reason(e: &sled::Error) -> String {
    match e {
        sled::Error::Corruption { at: Some(at), .. } => format!("corrupt data at {at:?}"),
        sled::Error::Corruption { at: None, .. } => "corrupt data".into(),
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            "the disk is full: free space and start it again".into()
        }
        e if locked(e) => format!("{e} (is another process using this data dir?)"),
        e => format!("{e} (corrupt, or in use by another process?)"),
    }
}

/// Least free space a node opens its data dir with. sled writes as it opens (a snapshot of
/// its page table, a segment), and one of those writes failing on a full disk left a database
/// it then refused as corrupt, for good; a node that stopped because its disk filled must not
/// be restarted into that by its supervisor before space is freed.
pub const MIN_FREE_BYTES: u64 = 32 << 20;

/// Free bytes on the filesystem holding `dir` (or the nearest existing folder above it), for
/// an unprivileged writer; `None` when that cannot be told.
fn free_bytes(dir: &Path) -> Option<u64> {
    let at = dir.ancestors().find(|p| p.exists())?;
    let at = if at.as_os_str().is_empty() { Path::new(".") } else { at };
    let st = rustix::fs::statvfs(at).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Refuses to open with less than [`MIN_FREE_BYTES`] free.
fn room_to_open(free: u64) -> Result<(), String> {
    if free < MIN_FREE_BYTES {
        return Err(format!(
            "only {} KiB free on its filesystem; a node needs {} MiB free to open its database safely: free space and start it again",
            free / 1024,
            MIN_FREE_BYTES >> 20
        ));
    }
    Ok(())
}

/// Creates `dir` (and any parent missing) for this user alone, or makes an existing one so:
/// it holds the cluster's affinity secret, the audit log and token hashes, and its files are
/// made with the process's umask.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Opens (or creates) a node's data dir and checks it belongs to this node.
///
/// sled can panic on some corrupt files; that is caught here and turned into an error so a
/// bad data dir stops the node with a message.
pub fn open(dir: &Path, node_id: u64) -> Result<sled::Db, NodeError> {
    open_with(dir, node_id, true)
}

/// [`open`], with or without sled's background flusher: a restore opens without it, so the
/// database is released the moment it is dropped and the node can open it right after.
/// Written into a data dir when `--restore` starts filling it and removed when it is done:
/// a restore stopped halfway leaves a dir with state and no cluster id, which must not start
/// as if it were whole.
pub const RESTORING: &str = "RESTORING";

pub fn open_with(dir: &Path, node_id: u64, background_flush: bool) -> Result<sled::Db, NodeError> {
    let path = dir.display().to_string();
    let err = |reason: String| NodeError::DataDir { path: path.clone(), reason };
    let existed = dir.join("conf").exists();
    if dir.exists() && !dir.is_dir() {
        return Err(err("is not a directory; point --data-dir at an empty or new directory".into()));
    }
    if dir.join(RESTORING).exists() {
        return Err(err("holds a restore that did not finish (the node was stopped during --restore): move it \
             aside and run --restore again into an empty data dir"
            .into()));
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
    private_dir(dir).map_err(|e| err(format!("cannot make it private to this user: {e}")))?;
    if let Some(free) = free_bytes(dir) {
        room_to_open(free).map_err(err)?;
    }
    let flush_every = background_flush.then_some(500);
    // A database this process just dropped may still be locked for a moment by sled's own
    // threads (a restore reopens at once): a lock is waited for briefly, then refused.
    let since = std::time::Instant::now();
    let db = loop {
        let d = dir.to_path_buf();
        let opened = std::panic::catch_unwind(move || sled::Config::new().path(d).flush_every_ms(flush_every).open())
            .map_err(|_| err("sled panicked opening it: the database is corrupt".into()))?;
        match opened {
            Ok(db) => break db,
            Err(e) if locked(&e) && since.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(err(format!("cannot open sled database: {}", sled_reason(&e)))),
        }
    };
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
    fn a_nearly_full_disk_is_refused_before_sled_writes_and_the_free_space_is_read() {
        let e = room_to_open(MIN_FREE_BYTES - 1).unwrap_err();
        assert!(e.contains("free space and start it again") && e.contains("32 MiB"), "{e}");
        room_to_open(MIN_FREE_BYTES).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Read through the nearest folder that exists.
        assert!(free_bytes(&dir.path().join("not/yet")).is_some_and(|f| f > 0));
    }

    #[test]
    fn a_data_dir_with_an_unfinished_restore_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        drop(open_with(&path, 1, false).unwrap());
        std::fs::write(path.join(RESTORING), b"").unwrap();
        let e = open(&path, 1).unwrap_err().to_string();
        assert!(e.contains("restore that did not finish") && e.contains("--restore again"), "{e}");
    }

    #[test]
    fn a_data_dir_is_made_private_to_its_user_new_or_not() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/node");
        drop(open_with(&new, 1, false).unwrap());
        assert_eq!(mode(&new), 0o700);
        let old = dir.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(open_with(&old, 1, false).unwrap());
        assert_eq!(mode(&old), 0o700, "a dir made readable by others is closed");
    }

    #[test]
    fn a_data_dir_of_another_storage_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        drop(open_with(&path, 1, false).unwrap());
        // Reopening a dir this build wrote works.
        drop(open_with(&path, 1, false).unwrap());
        // A dir from before formats were recorded (no marker) is named as such.
        {
            let db = sled::Config::new().path(&path).flush_every_ms(None).open().unwrap();
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
            // Without the background flusher, whose thread could still hold the lock when
            // the second open comes.
            let db = open_with(&path, 1, false).unwrap();
            db.open_tree("meta").unwrap().insert("format", &3u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let db = open(&path, 1).unwrap();
        let marker = db.open_tree("meta").unwrap().get("format").unwrap().unwrap();
        assert_eq!(&*marker, &FORMAT.to_be_bytes());
    }
}
