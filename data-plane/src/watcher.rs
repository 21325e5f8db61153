//! Following the control plane: `Discovery.Watch` from any node, resuming from the last
//! applied revision on another node when one fails; each applied revision rebuilds the
//! routing table, is written to the cache file, and is acknowledged with `Discovery.Report`.
//! With every node down, the proxy keeps the table it has.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::{
    change, watch_event, Backend, BackendLoad, Pool, ProxyReport, Route, SessionBinding, Settings, Topology,
    WatchEvent, WatchRequest,
};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::drain;
use crate::state::{ConfigInfo, ProxyState};
use crate::table::Table;

/// The proxy's copy of the replicated model.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Mirror {
    pub revision: u64,
    pools: BTreeMap<String, Pool>,
    backends: BTreeMap<(String, String), Backend>,
    routes: BTreeMap<String, Route>,
    settings: Option<Settings>,
    sessions: BTreeMap<(String, String), SessionBinding>,
}

impl Mirror {
    pub fn from_topology(t: Topology) -> Mirror {
        Mirror {
            revision: t.revision,
            pools: t.pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            backends: t.backends.into_iter().map(|b| ((b.pool.clone(), b.address.clone()), b)).collect(),
            routes: t.routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
            settings: t.settings,
            sessions: t.sessions.into_iter().map(|s| ((s.pool.clone(), s.key.clone()), s)).collect(),
        }
    }

    pub fn to_topology(&self) -> Topology {
        Topology {
            revision: self.revision,
            pools: self.pools.values().cloned().collect(),
            backends: self.backends.values().cloned().collect(),
            routes: self.routes.values().cloned().collect(),
            settings: self.settings,
            sessions: self.sessions.values().cloned().collect(),
        }
    }

    /// Session bindings as a map, for the proxy's lookups.
    pub fn sessions(&self) -> std::collections::HashMap<(String, String), String> {
        self.sessions.iter().map(|(k, s)| (k.clone(), s.backend.clone())).collect()
    }

    /// Applies one event. Events at or below the current revision are ignored, so a resumed
    /// stream can never take the proxy backwards.
    pub fn apply(&mut self, ev: WatchEvent) -> bool {
        if ev.revision < self.revision || (ev.revision == self.revision && self.revision != 0) {
            return false;
        }
        match ev.kind {
            Some(watch_event::Kind::Snapshot(t)) => *self = Mirror::from_topology(t),
            Some(watch_event::Kind::Changes(cs)) => {
                for c in cs.changes {
                    match c.kind {
                        Some(change::Kind::PoolPut(p)) => {
                            self.pools.insert(p.name.clone(), p);
                        }
                        Some(change::Kind::PoolDeleted(n)) => {
                            self.pools.remove(&n);
                        }
                        Some(change::Kind::BackendPut(b)) => {
                            self.backends.insert((b.pool.clone(), b.address.clone()), b);
                        }
                        Some(change::Kind::BackendRemoved(b)) => {
                            self.backends.remove(&(b.pool, b.address));
                        }
                        Some(change::Kind::RoutePut(r)) => {
                            self.routes.insert(r.name.clone(), r);
                        }
                        Some(change::Kind::RouteDeleted(n)) => {
                            self.routes.remove(&n);
                        }
                        Some(change::Kind::SettingsPut(s)) => self.settings = Some(s),
                        Some(change::Kind::SessionPut(s)) => {
                            self.sessions.insert((s.pool.clone(), s.key.clone()), s);
                        }
                        Some(change::Kind::SessionRemoved(s)) => {
                            self.sessions.remove(&(s.pool, s.key));
                        }
                        None => {}
                    }
                }
            }
            None => return false,
        }
        self.revision = ev.revision;
        true
    }
}

/// Loads the cache file, if there is a usable one.
pub fn load_cache(path: &Path) -> Option<(Topology, SystemTime)> {
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
fn write_cache(path: &Path, t: &Topology) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, t.encode_to_vec())?;
    std::fs::rename(&tmp, path)
}

/// Installs a new config: rebuild the table, swap it in, and act on backends whose state
/// changed (drain, disable, removal). Established connections are otherwise untouched.
pub fn install(state: &ProxyState, mirror: &Mirror, source: &'static str, applied_at: SystemTime) {
    let topo = mirror.to_topology();
    let new = Arc::new(Table::build(&topo, &state.registry));
    let old = state.table.swap(new.clone());
    *state.config.lock().unwrap_or_else(|e| e.into_inner()) =
        ConfigInfo { source, revision: mirror.revision, applied_at };
    state.record_applied(mirror.revision, applied_at);
    drain::on_change(state, &old, &new);
    state.registry.retain(|(p, a)| mirror.backends.contains_key(&(p.clone(), a.clone())));
}

pub struct WatchConfig {
    pub endpoints: Vec<String>,
    pub cache_file: Option<PathBuf>,
}

fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Runs until shutdown. `mirror` is what the proxy starts from (the cache, or empty).
pub async fn run(state: Arc<ProxyState>, cfg: WatchConfig, mirror: Mirror) {
    // The cache writer takes a copy of the mirror at most once per interval: with thousands
    // of session bindings a second, copying on every event would cost more than the events.
    let shared_mirror = Arc::new(std::sync::Mutex::new(mirror));
    let lock = || shared_mirror.lock().unwrap_or_else(|e| e.into_inner());
    let (applied_tx, applied_rx) = watch::channel(lock().revision);
    let (cache_tx, cache_rx) = watch::channel(0u64);
    if let Some(path) = cfg.cache_file.clone() {
        tokio::spawn(cache_writer(path, cache_rx, shared_mirror.clone()));
    }
    tokio::spawn(reporter(state.clone(), cfg.endpoints.clone(), applied_rx));
    let mut backoff = Duration::from_millis(100);
    let mut next = 0usize;
    while !state.shutdown.is_cancelled() {
        let addr = cfg.endpoints[next % cfg.endpoints.len()].clone();
        next += 1;
        let from = lock().revision;
        let stream = match channel(&addr) {
            Ok(ch) => {
                let mut c = DiscoveryClient::new(ch).max_decoding_message_size(256 << 20);
                tokio::time::timeout(
                    Duration::from_secs(3),
                    c.watch(WatchRequest { proxy_id: state.proxy_id.clone(), from_revision: from }),
                )
                .await
            }
            Err(e) => {
                tracing::warn!(node = %addr, "bad control-plane address: {e}");
                tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut stream = match stream {
            Ok(Ok(s)) => s.into_inner(),
            _ => {
                state.set_control_plane(None);
                let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1);
                tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!(node = %addr, from, "following the control plane");
        state.set_control_plane(Some(addr.clone()));
        backoff = Duration::from_millis(100);
        loop {
            let ev = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                ev = stream.message() => ev,
            };
            let Ok(Some(ev)) = ev else { break };
            // Session bindings change far more often than topology: they update the lookup map
            // without rebuilding the routing table.
            let sessions: Option<Vec<change::Kind>> = match &ev.kind {
                Some(watch_event::Kind::Changes(cs)) => cs
                    .changes
                    .iter()
                    .map(|c| match &c.kind {
                        Some(k @ (change::Kind::SessionPut(_) | change::Kind::SessionRemoved(_))) => Some(k.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            };
            let mut mirror = lock();
            if !mirror.apply(ev) {
                continue;
            }
            let now = SystemTime::now();
            match sessions {
                Some(changes) => {
                    let mut map = state.sessions.write().unwrap_or_else(|e| e.into_inner());
                    for c in changes {
                        match c {
                            change::Kind::SessionPut(s) => {
                                map.insert((s.pool, s.key), s.backend);
                            }
                            change::Kind::SessionRemoved(s) => {
                                map.remove(&(s.pool, s.key));
                            }
                            _ => {}
                        }
                    }
                    drop(map);
                    let mut cfg = state.config.lock().unwrap_or_else(|e| e.into_inner());
                    *cfg = ConfigInfo { source: "control-plane", revision: mirror.revision, applied_at: now };
                    drop(cfg);
                    state.record_applied(mirror.revision, now);
                }
                None => {
                    install(&state, &mirror, "control-plane", now);
                    *state.sessions.write().unwrap_or_else(|e| e.into_inner()) = mirror.sessions();
                }
            }
            let rev = mirror.revision;
            drop(mirror);
            let _ = applied_tx.send(rev);
            let _ = cache_tx.send(rev);
        }
        tracing::warn!(node = %addr, revision = lock().revision, "control-plane stream ended; trying the next node");
        state.set_control_plane(None);
    }
}

/// Writes the latest config to the cache file, at most every 200 ms.
async fn cache_writer(path: PathBuf, mut rx: watch::Receiver<u64>, mirror: Arc<std::sync::Mutex<Mirror>>) {
    while rx.changed().await.is_ok() {
        rx.borrow_and_update();
        let t = mirror.lock().unwrap_or_else(|e| e.into_inner()).to_topology();
        let p = path.clone();
        match tokio::task::spawn_blocking(move || write_cache(&p, &t)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(path = %path.display(), "cannot write config cache: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tells the control plane which revision this proxy runs, its connection counts, and the
/// session bindings it made: at once when something changed, and otherwise often enough to
/// keep live sessions' bindings fresh (a third of the shortest affinity TTL, at most 1 s). The
/// reply brings back the other proxies' connection counts.
async fn reporter(state: Arc<ProxyState>, endpoints: Vec<String>, mut applied: watch::Receiver<u64>) {
    let mut i = 0usize;
    let mut last_refresh = std::time::Instant::now();
    loop {
        let refresh_every = refresh_interval(&state);
        let refresh = last_refresh.elapsed() >= refresh_every;
        let mut bindings = std::mem::take(&mut *state.pending_bindings.lock().unwrap_or_else(|e| e.into_inner()));
        if refresh {
            last_refresh = std::time::Instant::now();
            bindings.extend(state.live_sessions.lock().unwrap_or_else(|e| e.into_inner()).keys().map(|(p, k, b)| {
                SessionBinding { pool: p.clone(), key: k.clone(), backend: b.clone(), ..Default::default() }
            }));
        }
        let rev = *applied.borrow_and_update();
        let loads: Vec<BackendLoad> = state
            .registry
            .all()
            .into_iter()
            .map(|((pool, address), s)| BackendLoad {
                pool,
                address,
                connections: s.active.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        let mine: std::collections::HashMap<(String, String), u64> =
            loads.iter().map(|l| ((l.pool.clone(), l.address.clone()), l.connections)).collect();
        let report = ProxyReport {
            proxy_id: state.proxy_id.clone(),
            applied_revision: rev,
            rejected_reason: String::new(),
            loads,
            bindings,
        };
        let addr = state.control_plane_info().connected.unwrap_or_else(|| endpoints[i % endpoints.len()].clone());
        if let Ok(ch) = channel(&addr) {
            let mut c = DiscoveryClient::new(ch);
            match tokio::time::timeout(Duration::from_secs(2), c.report(report)).await {
                Ok(Ok(reply)) => {
                    // Other proxies' connections: the cluster's count less what this proxy sent.
                    for l in reply.into_inner().cluster_loads {
                        let own = mine.get(&(l.pool.clone(), l.address.clone())).copied().unwrap_or(0);
                        state
                            .registry
                            .get(&l.pool, &l.address)
                            .cluster_active
                            .store(l.connections.saturating_sub(own), std::sync::atomic::Ordering::Relaxed);
                    }
                }
                _ => i += 1,
            }
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
            _ = state.report_now.notified() => {
                // Gather the bindings of a burst of new connections into one report.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ = tokio::time::sleep(refresh_every.saturating_sub(last_refresh.elapsed())) => {}
        }
    }
}

/// Reports go out every second (connection counts feed cluster-wide balancing), and more
/// often when an affinity TTL is short.
fn refresh_interval(state: &ProxyState) -> Duration {
    let table = state.table.load();
    let min_ttl = table.pools.values().filter(|p| !p.pool.affinity.is_empty()).map(|p| p.pool.affinity_ttl_ms).min();
    match min_ttl {
        Some(ttl) => Duration::from_millis((ttl / 3).clamp(200, 1000)),
        None => Duration::from_secs(1),
    }
}
