//! The config cache file: the last known config, written as it changes, so a proxy can start
//! and serve while no control-plane node answers ("static stability").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;
use switchyard_proto::v1::Topology;
use tokio::sync::watch;

use super::mirror::Mirror;

/// The cache is rewritten at most this often: with thousands of session bindings a second,
/// copying the mirror on every event would cost more than the events.
const WRITE_EVERY: Duration = Duration::from_millis(200);

/// The file starts with this, then the payload's length (u64 LE) and CRC-32 (u32 LE): a cache
/// cut short or damaged is refused whole rather than taken for the config it happens to decode
/// as (a protobuf cut at a field boundary still decodes).
const MAGIC: &[u8; 8] = b"SYCACHE1";
const HEADER: usize = MAGIC.len() + 8 + 4;

/// Why a cache file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("not a Switchyard config cache (no header)")]
    NotACache,
    #[error("truncated or padded: header says {want} bytes, file has {got}")]
    Length { want: u64, got: u64 },
    #[error("checksum mismatch: the file is damaged")]
    Checksum,
    #[error("undecodable config: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the file is not a Switchyard config cache; refusing to overwrite it (move it away or name another)")]
    Foreign,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Frames an encoded topology for the file.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the framing and decodes the topology inside.
fn unframe(bytes: &[u8]) -> Result<Topology, CacheError> {
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err(CacheError::NotACache);
    }
    let want = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != want {
        return Err(CacheError::Length { want, got: payload.len() as u64 });
    }
    if crc32fast::hash(payload) != crc {
        return Err(CacheError::Checksum);
    }
    Ok(Topology::decode(payload)?)
}

/// The cache at start, with the time it was written: `None` when there is none or it is a
/// damaged cache (it is then replaced), an error for a file this proxy must not overwrite:
/// something that is not a cache at all (a mistyped path naming another file), or a path it
/// cannot read or that is not a file.
pub fn open(path: &Path) -> Result<Option<(Topology, SystemTime)>, CacheError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !meta.is_file() {
        return Err(CacheError::Io(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_FILE {
        // Its first bytes say whose it is, without reading the rest into memory.
        let mut head = [0u8; MAGIC.len()];
        std::io::Read::read_exact(&mut std::fs::File::open(path)?, &mut head)?;
        if head != *MAGIC {
            return Err(CacheError::Foreign);
        }
        tracing::warn!(path = %path.display(), bytes = meta.len(), "config cache larger than any config: ignored");
        return Ok(None);
    }
    let bytes = std::fs::read(path)?;
    if !bytes.is_empty() && !bytes.starts_with(&MAGIC[..bytes.len().min(MAGIC.len())]) {
        return Err(CacheError::Foreign);
    }
    Ok(usable(path, &bytes, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// The largest cache file read: a config is at most one gRPC message, and the header is
/// small. A larger file (sparse, or grown by someone else) is not read into memory.
const MAX_FILE: u64 = switchyard_model::limits::MAX_GRPC_MESSAGE as u64 + 1024;

/// Loads the cache file, if there is a usable one, with the time it was written.
pub fn load(path: &Path) -> Option<(Topology, SystemTime)> {
    if std::fs::metadata(path).ok()?.len() > MAX_FILE {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let written = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
    usable(path, &bytes, written)
}

/// The topology in a cache file's `bytes`, written at `written`; a damaged one is said and
/// ignored.
fn usable(path: &Path, bytes: &[u8], written: SystemTime) -> Option<(Topology, SystemTime)> {
    match unframe(bytes) {
        Ok(t) => Some((t, written)),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring unusable config cache: {e}");
            None
        }
    }
}

/// Writes atomically and durably: a temp file, flushed to disk, renamed over the old one, and
/// the directory flushed, so a crash leaves either the old cache or the new one, whole. The
/// file is its owner's alone (0600): it holds the cluster's affinity hashing key.
pub fn write(path: &Path, t: &Topology) -> std::io::Result<()> {
    write_file(path, &frame(&t.encode_to_vec()))
}

/// Writes so far by this process: the count in each temp file's name.
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `bytes` to `path` through a temp file beside it, durably (see [`write`]). The temp file's
/// name is the whole name plus this process's id and a count: two proxies whose cache files
/// differ only in their extension (`edge.8080`, `edge.8443`) must not write through one temp
/// file and rename each other's config into place, nor two writes of one proxy (the cache
/// writer, and the follower's write when it adopts a cluster).
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        // A new file or none: a leftover of that name (a crashed process whose id came back)
        // goes first, and `create_new` (O_EXCL) neither follows a link planted at the name,
        // in a directory others can write to, nor truncates what it points to.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The umask may have taken bits from the mode: set it before any byte.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Writes the mirror to `path` whenever its revision moves, at most every [`WRITE_EVERY`].
pub async fn writer(path: PathBuf, mut rx: watch::Receiver<u64>, mirror: Arc<Mutex<Mirror>>) {
    while rx.changed().await.is_ok() {
        rx.borrow_and_update();
        let t = mirror.lock().unwrap_or_else(|e| e.into_inner()).to_topology();
        let p = path.clone();
        match tokio::task::spawn_blocking(move || write(&p, &t)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(path = %path.display(), "cannot write config cache: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(WRITE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use switchyard_proto::v1::{Pool, Route};

    fn topology() -> Topology {
        Topology {
            revision: 42,
            pools: (0..3).map(|i| Pool { name: format!("p{i}"), ..Default::default() }).collect(),
            routes: vec![Route { name: "r".into(), pool: "p0".into(), ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn a_written_cache_loads_back_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.pb");
        write(&path, &topology()).unwrap();
        assert_eq!(load(&path).map(|(t, _)| t), Some(topology()));
        std::fs::write(&path, b"\xff\xff\xff not protobuf").unwrap();
        assert!(load(&path).is_none());
        assert!(load(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn only_a_cache_missing_empty_or_damaged_may_be_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.pb");
        assert!(open(&path).unwrap().is_none(), "missing");
        std::fs::write(&path, b"").unwrap();
        assert!(open(&path).unwrap().is_none(), "empty");
        write(&path, &topology()).unwrap();
        assert_eq!(open(&path).unwrap().map(|(t, _)| t), Some(topology()));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(open(&path).unwrap().is_none(), "a damaged cache is replaced");
        std::fs::write(&path, &MAGIC[..3]).unwrap();
        assert!(open(&path).unwrap().is_none(), "a header cut short is a damaged cache");
        std::fs::write(&path, b"listen: 0.0.0.0:8080\n").unwrap();
        assert!(matches!(open(&path), Err(CacheError::Foreign)), "someone else's file");
        assert!(matches!(open(dir.path()), Err(CacheError::Io(_))), "a directory");
    }

    #[test]
    fn the_cache_file_is_private_even_when_an_open_one_existed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.pb");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        write(&path, &topology()).unwrap();
        assert_eq!(mode(&path), 0o600);
        // An older proxy left it world-readable, and a temp file beside it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(path.with_extension("tmp"), b"old").unwrap();
        std::fs::set_permissions(path.with_extension("tmp"), std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&path, &topology()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load(&path).map(|(t, _)| t), Some(topology()));
    }

    /// A cache file larger than any config is not read into memory: ignored (and so
    /// replaced) when it is a cache, refused when it is someone else's file.
    #[test]
    fn a_file_larger_than_any_config_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
        for (p, head) in [(&ours, &MAGIC[..]), (&theirs, &b"not a cache"[..])] {
            let f = std::fs::File::create(p).unwrap();
            std::io::Write::write_all(&mut &f, head).unwrap();
            f.set_len(MAX_FILE + 1).unwrap(); // sparse: no gigabytes written
        }
        assert!(matches!(open(&ours), Ok(None)));
        assert!(matches!(open(&theirs), Err(CacheError::Foreign)));
        assert!(load(&ours).is_none());
    }

    /// In a directory others can write to, a link planted at the temp file's (predictable)
    /// name is not followed: the file it points to is left as it was.
    #[test]
    fn a_link_planted_at_the_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("cache");
        let next = WRITES.load(std::sync::atomic::Ordering::Relaxed);
        for n in next..next + 64 {
            let tmp = dir.path().join(format!("cache.{}.{n}.tmp", std::process::id()));
            std::os::unix::fs::symlink(&victim, tmp).unwrap();
        }
        write(&path, &topology()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(load(&path).is_some(), "the cache itself was written");
    }

    #[test]
    fn a_cache_cut_at_a_field_boundary_is_refused() {
        // Without framing, a file cut where the routes begin still decodes: the config with
        // no routes at revision 42, which the proxy would have served as the truth.
        let t = topology();
        let payload = t.encode_to_vec();
        let cut = Topology { routes: vec![], ..t.clone() }.encode_to_vec().len();
        assert!(payload.len() > cut);
        let truncated = Topology::decode(&payload[..cut]).expect("the unframed cut decodes");
        assert_eq!((truncated.revision, truncated.routes.len()), (42, 0));

        let framed = frame(&payload);
        let short = &framed[..HEADER + cut];
        assert!(matches!(unframe(short), Err(CacheError::Length { .. })));
        let mut flipped = framed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(matches!(unframe(&flipped), Err(CacheError::Checksum)));
        // An old, unframed cache is not taken for a framed one.
        assert!(matches!(unframe(&payload), Err(CacheError::NotACache)));
        assert_eq!(unframe(&framed).unwrap(), t);
    }
}
