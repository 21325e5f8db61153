//! Following the control plane: `Discovery.Watch` from any node, resuming from the last
//! applied revision on another node when one fails, goes silent or falls behind the leader
//! ([`freshness`](super::freshness)). With every node down, the proxy keeps the config it has.
//! A stream from another cluster than the one followed so far (kept beside the config cache)
//! is refused, never applied. A proxy that started from its cache asks its first stream for
//! the state whole, so a cache that was wrong in any way is replaced, not patched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchyard_model::grpc::{self, ChannelOptions, ClientTls};
use switchyard_model::limits::MAX_GRPC_MESSAGE;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::{watch_event, WatchRequest};
use tokio::sync::watch;

use super::freshness::{Freshness, Verdict};
use super::install::install;
use super::mirror::Mirror;
use crate::state::ProxyState;

/// The watch reply's metadata key naming the cluster a restored cluster replaced.
const RESTORED_FROM: &str = "switchyard-restored-from";
/// How long a node may take to start a watch stream before the next one is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a followed node's freshness is judged.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Follows the endpoints in turn until shutdown. Each applied revision is installed, then
/// announced on `applied` (for the reporter and the cache writer).
pub async fn run(
    state: Arc<ProxyState>,
    endpoints: Vec<String>,
    mirror: Arc<Mutex<Mirror>>,
    applied: watch::Sender<u64>,
    cache_file: Option<PathBuf>,
    tls: ClientTls,
) {
    let cluster_file = cache_file.as_deref().map(cluster_file);
    let lock = || mirror.lock().unwrap_or_else(|e| e.into_inner());
    let shutdown = state.runtime.shutdown.clone();
    let mut backoff = BACKOFF_MIN;
    let mut next = 0usize;
    // The cluster followed so far, from the first stream that named one.
    let mut cluster: Option<String> = cluster_file.as_deref().and_then(load_cluster);
    // Until a snapshot replaced the config the proxy started from (its cache), every stream
    // asks for one; later ones resume after the revision applied.
    let mut resync = lock().revision > 0;
    let mut unreached = Unreached::new(endpoints.len());
    // A cluster id adopted from a stream, to be written beside the cache once that stream's
    // config is applied.
    let mut unsaved: Option<String> = None;
    while !shutdown.is_cancelled() {
        let addr = endpoints[next % endpoints.len()].clone();
        next += 1;
        let from = lock().revision;
        let mut ask = if resync { 0 } else { from };
        let stream = match grpc::channel(&addr, &ChannelOptions::PROXY, &tls) {
            Ok(ch) => {
                let mut c = DiscoveryClient::new(ch).max_decoding_message_size(MAX_GRPC_MESSAGE);
                let mut req =
                    tonic::Request::new(WatchRequest { proxy_id: state.proxy_id.clone(), from_revision: ask });
                if let Some(v) = cluster.as_deref().and_then(|id| id.parse().ok()) {
                    req.metadata_mut().insert(grpc::CLUSTER_ID_KEY, v);
                }
                match tokio::time::timeout(OPEN_TIMEOUT, c.watch(req)).await {
                    Ok(Ok(s)) => {
                        let got = s.metadata().get(grpc::CLUSTER_ID_KEY).and_then(|v| v.to_str().ok());
                        let mut knew = cluster.is_some();
                        let restored_from = s.metadata().get(RESTORED_FROM).and_then(|v| v.to_str().ok());
                        if let (Some(g), Some(old)) = (got, restored_from) {
                            if cluster.as_deref() == Some(old) && g != old {
                                // A cluster restored from a backup of the one followed: its
                                // revisions are not comparable with this proxy's, so the node
                                // sends the state whole and it replaces the config.
                                tracing::warn!(node = %addr, "cluster {g} was restored from cluster {old}, which this proxy followed: taking its state whole");
                                cluster = Some(g.to_string());
                                knew = false;
                                *lock() = Mirror::default();
                                state.status.restart_through();
                                ask = 0;
                            }
                        }
                        match same_cluster(&mut cluster, got) {
                            Ok(()) => {
                                // A config held from before this proxy knew the cluster (a
                                // cache beside no cluster id: lost, or from a build before
                                // ids): its revision is not this cluster's, and a snapshot
                                // from it below that revision must still replace it.
                                if !knew && got.is_some() && ask == 0 && lock().revision > 0 {
                                    lock().foreign = true;
                                }
                                // Written once this cluster's config has replaced the one
                                // held: a crash before would leave its id beside the other's
                                // config, at a revision its snapshot could not replace.
                                if !knew {
                                    unsaved = cluster.clone();
                                }
                                Some(s)
                            }
                            Err(why) => {
                                tracing::error!(node = %addr, "refusing its watch stream: {why}");
                                None
                            }
                        }
                    }
                    Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => {
                        tracing::error!(node = %addr, "refused to stream: {}", s.message());
                        None
                    }
                    Ok(Err(s)) => {
                        unreached.failed(&addr, &format!("{:?}: {}", s.code(), s.message()), lock().revision);
                        None
                    }
                    Err(_) => {
                        unreached.failed(
                            &addr,
                            &format!("no answer within {}s", OPEN_TIMEOUT.as_secs()),
                            lock().revision,
                        );
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(node = %addr, "bad control-plane address: {e}");
                None
            }
        };
        let Some(stream) = stream else {
            state.status.set_control_plane(None, None);
            let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        let runs = switchyard_model::version::of_reply(stream.metadata()).describe();
        let mut stream = stream.into_inner();
        tracing::info!(node = %addr, from = ask, runs, "following the control plane");
        unreached = Unreached::new(endpoints.len());
        state.status.set_control_plane(Some(addr.clone()), Some(runs));
        // Reset once the stream brings something: a node (or something before it) that takes
        // the stream and ends it at once would otherwise be asked again, and again, at once.
        let mut heard = false;
        let mut fresh = Freshness::new(Instant::now());
        // The revision the stream has brought this proxy up to date with: the config's, or
        // above it when progress says no change came in between.
        let mut through = lock().revision;
        state.status.heard(fresh.last_heard, None, through);
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.message() => ev,
                _ = check.tick() => match fresh.verdict(through, Instant::now()) {
                    Verdict::Keep => continue,
                    v => {
                        tracing::warn!(node = %addr, "leaving a stale control-plane node: {v:?}");
                        break;
                    }
                },
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(s) => {
                    tracing::warn!(node = %addr, "control-plane stream ended: {}", s.message());
                    break;
                }
            };
            if !heard {
                heard = true;
                backoff = BACKOFF_MIN;
            }
            let now = Instant::now();
            let (leader_revision, node_revision) = match &ev.kind {
                Some(watch_event::Kind::Progress(p)) => (Some(p.leader_revision), p.node_revision),
                _ => (None, 0),
            };
            let snapshot = matches!(ev.kind, Some(watch_event::Kind::Snapshot(_)));
            let mut m = lock();
            let delta = m.apply(ev);
            // A snapshot older than the config (a node behind this proxy) is not applied; the
            // next stream asks again.
            resync &= !(snapshot && delta.is_some());
            if let Some(delta) = &delta {
                install(&state, &m, delta, "control-plane", SystemTime::now());
            }
            let rev = m.revision;
            drop(m);
            through = through.max(rev).max(node_revision);
            fresh.heard(now, through, leader_revision);
            state.status.heard(now, leader_revision, through);
            if delta.is_some() {
                let _ = applied.send(rev);
                if let (Some(cache), Some(f), Some(id)) = (&cache_file, &cluster_file, unsaved.take()) {
                    // The cache first (the writer would have it within 200 ms): the id must
                    // never sit beside the config of another cluster.
                    let t = lock().to_topology();
                    if let Err(e) = super::cache::write(cache, &t).and_then(|()| save_cluster(f, &id)) {
                        tracing::warn!("cannot write {} or {}: {e}", cache.display(), f.display());
                        // Tried again with the next applied event.
                        unsaved = Some(id);
                    }
                }
            }
        }
        tracing::warn!(node = %addr, revision = lock().revision, "control-plane stream ended; trying the next node");
        state.status.set_control_plane(None, None);
        if !heard {
            let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Says so when no control-plane node answers: once every node has failed in a row, then at
/// most every [`Unreached::REPEAT`], each attempt's reason logged at debug.
struct Unreached {
    nodes: usize,
    in_a_row: usize,
    warned: Option<Instant>,
}

impl Unreached {
    const REPEAT: Duration = Duration::from_secs(30);

    fn new(nodes: usize) -> Unreached {
        Unreached { nodes: nodes.max(1), in_a_row: 0, warned: None }
    }

    fn failed(&mut self, node: &str, why: &str, revision: u64) {
        tracing::debug!(node, "cannot open a watch stream: {why}");
        self.in_a_row += 1;
        if self.in_a_row >= self.nodes && self.warned.is_none_or(|w| w.elapsed() >= Self::REPEAT) {
            self.warned = Some(Instant::now());
            tracing::warn!(
                nodes = self.nodes,
                attempts = self.in_a_row,
                revision,
                "no control-plane node answers (last, {node}: {why}); serving the config held, trying on"
            );
        }
    }
}

/// Beside the config cache: the id of the cluster the proxy follows, so a restarted proxy
/// serving from its cache still refuses another cluster.
pub fn cluster_file(cache: &Path) -> PathBuf {
    let mut p = cache.as_os_str().to_owned();
    p.push(".cluster-id");
    p.into()
}

/// The id in `path`, if it holds one (32 lowercase hex digits).
fn load_cluster(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| s.to_string())
}

/// Written aside and renamed into place, so a crash leaves the old file or the new one.
fn save_cluster(path: &Path, id: &str) -> std::io::Result<()> {
    super::cache::write_file(path, format!("{id}\n").as_bytes())
}

/// Whether a stream from cluster `got` may be followed after `known`; the first id seen is
/// kept. A node that names no cluster (one from before cluster ids) is not checked.
fn same_cluster(known: &mut Option<String>, got: Option<&str>) -> Result<(), String> {
    match (known.as_deref(), got) {
        (_, None) => Ok(()),
        (None, Some(g)) => {
            *known = Some(g.to_string());
            Ok(())
        }
        (Some(k), Some(g)) if k == g => Ok(()),
        (Some(k), Some(g)) => Err(format!("it serves cluster {g}, this proxy follows cluster {k}; keeping its config")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_from_another_cluster_is_refused() {
        let mut known = None;
        assert_eq!(same_cluster(&mut known, None), Ok(()));
        assert_eq!(known, None);
        assert_eq!(same_cluster(&mut known, Some("aa")), Ok(()));
        assert_eq!(known.as_deref(), Some("aa"));
        assert_eq!(same_cluster(&mut known, Some("aa")), Ok(()));
        let e = same_cluster(&mut known, Some("bb")).unwrap_err();
        assert!(e.contains("serves cluster bb, this proxy follows cluster aa"), "{e}");
        assert_eq!(known.as_deref(), Some("aa"), "the followed cluster stays");
    }

    #[test]
    fn the_followed_cluster_is_kept_beside_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let f = cluster_file(&dir.path().join("config.cache"));
        assert!(f.ends_with("config.cache.cluster-id"));
        assert_eq!(load_cluster(&f), None);
        let id = "0123456789abcdef0123456789abcdef";
        save_cluster(&f, id).unwrap();
        assert_eq!(load_cluster(&f).as_deref(), Some(id));
        std::fs::write(&f, "not an id").unwrap();
        assert_eq!(load_cluster(&f), None);
    }
}
