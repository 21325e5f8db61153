//! The stored snapshot: one file, `snapshot`, in the node's data dir, beside sled's files.
//!
//! Not in sled: a value of tens of megabytes written into the database the log shares held up
//! the log's appends and flushes, and so the Raft core, for hundreds of milliseconds (long
//! enough for followers to stand for election). A file written aside, flushed and renamed
//! into place costs the log nothing.
//!
//! Layout: magic, meta length (u32 LE), meta (postcard), data length (u64 LE), data, CRC-32 of
//! everything before it (u32 LE). Builds before this kept the snapshot in sled tree
//! `snapshot` (`meta` and `data`); it is read while no file exists, and
//! cleared once one does.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::super::{read_err, write_err};
use crate::store::log::PurgeGate;
use crate::types::{SnapshotMeta, StorageError};

const FILE: &str = "snapshot";
const TMP: &str = "snapshot.tmp";
const MAGIC: &[u8; 8] = b"SYSNAP\x00\x01";
/// How much snapshot data is written between fsyncs.
const SYNC_EVERY: usize = 4 << 20;
/// A meta bigger than this is not one this build wrote (it holds ids and a membership).
const MAX_META: usize = 16 << 20;

/// Where the current snapshot is kept. Clones share one lock, which serializes every read and
/// write of it (builds, installs, and reads for followers).
#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    legacy: sled::Tree,
    lock: Arc<Mutex<()>>,
    /// Told where the durable snapshot stands, so the log is never purged past it.
    gate: Option<PurgeGate>,
}

impl SnapshotStore {
    pub fn open(dir: &Path, db: &sled::Db) -> Result<Self, StorageError> {
        let legacy = db.open_tree("snapshot").map_err(read_err)?;
        Ok(SnapshotStore { dir: dir.to_path_buf(), legacy, lock: Arc::default(), gate: None })
    }

    /// From now on, tells `gate` the index of the snapshot durably stored, starting with the
    /// one stored now.
    pub fn gate_purges(&mut self, gate: PurgeGate) -> Result<(), StorageError> {
        let stored = {
            let _g = self.guard();
            self.meta_locked()?
        };
        gate.durable(stored.and_then(|m| m.last_log_id));
        gate.sized(std::fs::metadata(self.dir.join(FILE)).map_or(0, |m| m.len()));
        self.gate = Some(gate);
        Ok(())
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored snapshot's meta: the file's, else an older build's in sled.
    fn meta_locked(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        match read_meta(&self.dir.join(FILE))? {
            Some(m) => Ok(Some(m)),
            None => legacy_meta(&self.legacy),
        }
    }

    /// The stored snapshot, whole and checked: the file, else an older build's in sled.
    fn read_locked(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        match read_file(&self.dir.join(FILE))? {
            Some(s) => Ok(Some(s)),
            None => read_legacy(&self.legacy),
        }
    }

    /// The stored snapshot, whole and checked. Blocking: reads the file.
    pub fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let _g = self.guard();
        self.read_locked()
    }

    /// Stores `data` as the snapshot, unless the one stored is at least as new: then that one
    /// is returned instead (`None`: this one was stored). Blocking: writes and fsyncs a file.
    pub fn store_unless_newer(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let _g = self.guard();
        if self.meta_locked()?.is_some_and(|s| s.last_log_id >= meta.last_log_id) {
            if let Some(current) = self.read_locked()? {
                return Ok(Some(current));
            }
        }
        self.write_locked(meta, data)?;
        Ok(None)
    }

    /// Stores `data` as the snapshot, whatever is stored. Blocking.
    pub fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let _g = self.guard();
        self.write_locked(meta, data)
    }

    fn write_locked(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let encoded = postcard::to_stdvec(meta).map_err(write_err)?;
        let mut head = Vec::with_capacity(MAGIC.len() + 12 + encoded.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        head.extend_from_slice(&encoded);
        head.extend_from_slice(&(data.len() as u64).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(data);
        let tmp = self.dir.join(TMP);
        let io = |what: &str, e: std::io::Error| write_err(format!("{what} {}: {e}", tmp.display()));
        // It holds token records and the affinity secret: private however the umask is set
        // (a leftover temp file keeps its old mode through `open`, so it is set again).
        let mut f = {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io("create", e))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| io("chmod", e))?;
            f
        };
        f.write_all(&head).map_err(|e| io("write", e))?;
        // A few megabytes at a time, each made durable before the next: the log's fsyncs
        // share the disk, and one behind hundreds of megabytes of dirty snapshot pages waited
        // long enough for followers to stand for election.
        for chunk in data.chunks(SYNC_EVERY) {
            f.write_all(chunk).map_err(|e| io("write", e))?;
            f.sync_data().map_err(|e| io("fsync", e))?;
        }
        f.write_all(&crc.finalize().to_le_bytes()).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join(FILE)).map_err(|e| io("rename", e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync the dir of", e))?;
        if let Some(gate) = &self.gate {
            gate.durable(meta.last_log_id);
            gate.sized(data.len() as u64);
        }
        // The file is what counts from now on; an older build's copy in sled is dead weight.
        for kv in self.legacy.iter().keys() {
            self.legacy.remove(kv.map_err(read_err)?).map_err(write_err)?;
        }
        Ok(())
    }
}

fn corrupt(path: &Path, why: &str) -> StorageError {
    read_err(format!("snapshot file {} is corrupt: {why}", path.display()))
}

/// Magic and meta length, checked; then the meta.
fn read_head(path: &Path, f: &mut impl Read) -> Result<SnapshotMeta, StorageError> {
    let mut fixed = [0u8; 12];
    f.read_exact(&mut fixed).map_err(|_| corrupt(path, "shorter than its header"))?;
    if &fixed[..8] != MAGIC {
        return Err(corrupt(path, "not a snapshot file (bad magic)"));
    }
    let len = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes")) as usize;
    if len > MAX_META {
        return Err(corrupt(path, "meta length out of range"));
    }
    let mut meta = vec![0u8; len];
    f.read_exact(&mut meta).map_err(|_| corrupt(path, "shorter than its meta"))?;
    postcard::from_bytes(&meta).map_err(|e| corrupt(path, &format!("meta: {e}")))
}

fn read_meta(path: &Path) -> Result<Option<SnapshotMeta>, StorageError> {
    let mut f = match File::open(path) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(format!("open {}: {e}", path.display()))),
    };
    read_head(path, &mut f).map(Some)
}

fn read_file(path: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(format!("read {}: {e}", path.display()))),
    };
    let mut cursor = bytes.as_slice();
    let meta = read_head(path, &mut cursor)?;
    let head_len = bytes.len() - cursor.len() + 8;
    let mut len = [0u8; 8];
    cursor.read_exact(&mut len).map_err(|_| corrupt(path, "shorter than its header"))?;
    let len = u64::from_le_bytes(len);
    if cursor.len() as u64 != len.saturating_add(4) {
        return Err(corrupt(path, "its length does not match its header (torn write?)"));
    }
    let body = bytes.len() - 4;
    let stored = u32::from_le_bytes(bytes[body..].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..body]) != stored {
        return Err(corrupt(path, "checksum mismatch"));
    }
    bytes.truncate(body);
    bytes.drain(..head_len);
    Ok(Some((meta, bytes)))
}

fn legacy_meta(legacy: &sled::Tree) -> Result<Option<SnapshotMeta>, StorageError> {
    match legacy.get("meta").map_err(read_err)? {
        Some(meta) => Ok(Some(postcard::from_bytes(&meta).map_err(read_err)?)),
        None => Ok(None),
    }
}

fn read_legacy(legacy: &sled::Tree) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let Some(meta) = legacy_meta(legacy)? else { return Ok(None) };
    let data = legacy.get("data").map_err(read_err)?.ok_or_else(|| read_err("stored snapshot has no data"))?;
    Ok(Some((meta, data.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;
    use openraft::CommittedLeaderId;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    fn store() -> (tempfile::TempDir, SnapshotStore) {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let s = SnapshotStore::open(tmp.path(), &db).unwrap();
        (tmp, s)
    }

    /// The snapshot holds token records and the affinity secret: private, whatever the umask.
    #[test]
    fn the_snapshot_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (tmp, s) = store();
        std::fs::write(tmp.path().join(TMP), b"left over").unwrap();
        std::fs::set_permissions(tmp.path().join(TMP), std::fs::Permissions::from_mode(0o644)).unwrap();
        s.store(&meta(1), b"one").unwrap();
        let mode = std::fs::metadata(tmp.path().join(FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn stores_reads_back_and_never_goes_back() {
        let (_tmp, s) = store();
        assert!(s.read().unwrap().is_none());
        assert!(s.store_unless_newer(&meta(5), b"five").unwrap().is_none());
        let (m, d) = s.read().unwrap().unwrap();
        assert_eq!((m.snapshot_id.as_str(), d.as_slice()), ("s5", &b"five"[..]));
        // An older build is refused, and the stored one handed back.
        let (m, d) = s.store_unless_newer(&meta(3), b"three").unwrap().expect("newer one kept");
        assert_eq!((m.snapshot_id.as_str(), d.as_slice()), ("s5", &b"five"[..]));
        // An install replaces whatever is there.
        s.store(&meta(2), b"two").unwrap();
        assert_eq!(s.read().unwrap().unwrap().1, b"two");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_snapshot() {
        let (tmp, s) = store();
        s.store(&meta(5), b"some snapshot data").unwrap();
        let path = tmp.path().join(FILE);
        let whole = std::fs::read(&path).unwrap();
        // Torn: cut short.
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        assert!(s.read().unwrap_err().to_string().contains("torn write"));
        // A flipped bit in the data.
        let mut flipped = whole.clone();
        let at = flipped.len() - 8;
        flipped[at] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(s.read().unwrap_err().to_string().contains("checksum"));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(s.read().unwrap_err().to_string().contains("corrupt"));
    }

    #[test]
    fn an_older_builds_snapshot_in_sled_is_read_then_replaced() {
        let (tmp, s) = store();
        s.legacy.insert("meta", postcard::to_stdvec(&meta(4)).unwrap()).unwrap();
        s.legacy.insert("data", &b"four"[..]).unwrap();
        assert_eq!(s.read().unwrap().unwrap().1, b"four");
        assert!(s.store_unless_newer(&meta(9), b"nine").unwrap().is_none());
        assert!(s.legacy.is_empty(), "the sled copy is cleared once the file is written");
        assert!(tmp.path().join(FILE).exists());
        assert_eq!(s.read().unwrap().unwrap().1, b"nine");
    }
}
