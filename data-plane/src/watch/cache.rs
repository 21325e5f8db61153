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

/// Loads the cache file, if there is a usable one, with the time it was written.
pub fn load(path: &Path) -> Option<(Topology, SystemTime)> {
    let bytes = std::fs::read(path).ok()?;
    let written = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
    match Topology::decode(bytes.as_slice()) {
        Ok(t) => Some((t, written)),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring unreadable config cache: {e}");
            None
        }
    }
}

/// Writes atomically (temp file, then rename), so a crash never leaves half a cache.
pub fn write(path: &Path, t: &Topology) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, t.encode_to_vec())?;
    std::fs::rename(&tmp, path)
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

    #[test]
    fn a_written_cache_loads_back_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.pb");
        let t = Topology { revision: 42, ..Default::default() };
        write(&path, &t).unwrap();
        assert_eq!(load(&path).map(|(t, _)| t.revision), Some(42));
        std::fs::write(&path, b"\xff\xff\xff not protobuf").unwrap();
        assert!(load(&path).is_none());
        assert!(load(&dir.path().join("missing")).is_none());
    }
}
