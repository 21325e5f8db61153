//! Per-backend counters and live connections. They outlive routing tables: a table rebuilt
//! on a config change picks the same stats back up, so counts and connections carry over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::relay::close::CloseHandle;
use crate::relay::limits::Side;

/// Messages and bytes relayed each way, counted apart by each worker thread. Every relayed
/// message adds to these; one set written from every worker moved its cache line between
/// the cores on each message.
#[derive(Default)]
pub struct Traffic {
    shards: [Shard; SHARDS],
}

/// Workers counting apart; more share a shard.
const SHARDS: usize = 8;

/// One worker's counts, on cache lines of their own (128 bytes: adjacent lines are fetched in
/// pairs).
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    messages: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

fn way(side: Side) -> usize {
    match side {
        Side::ToBackend => 0,
        Side::ToClient => 1,
    }
}

impl Traffic {
    pub fn add(&self, side: Side, messages: u64, bytes: u64) {
        let s = &self.shards[SHARD.with(|s| *s)];
        s.bytes[way(side)].fetch_add(bytes, Relaxed);
        s.messages[way(side)].fetch_add(messages, Relaxed);
    }

    pub fn messages(&self, side: Side) -> u64 {
        self.shards.iter().map(|s| s.messages[way(side)].load(Relaxed)).sum()
    }

    pub fn bytes(&self, side: Side) -> u64 {
        self.shards.iter().map(|s| s.bytes[way(side)].load(Relaxed)).sum()
    }
}

#[derive(Default)]
pub struct BackendStats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub traffic: Traffic,
    pub connect_failures: AtomicU64,
    /// Upgrades this backend took and then closed on without an answer, in a row (an
    /// answered one resets it): see [`crate::handling::streams::HANGUPS_TO_EJECT`].
    pub hangups: AtomicU64,
    /// When the last hangup counted (registry milliseconds).
    pub last_hangup_ms: AtomicU64,
    /// Passive health: no new connections before this time (ms on the registry's clock).
    pub ejected_until_ms: AtomicU64,
    /// Connections through other proxies, as the control plane last reported.
    pub cluster_active: AtomicU64,
    /// Bumped when a drain starts and when it is called off (the backend set active again):
    /// a drain task closes connections only while the number it started with is current.
    pub drain_epoch: AtomicU64,
    /// While set draining: the end of its window (registry milliseconds). A session bound here
    /// keeps its plain HTTP requests here until then (HAProxy's drain keeps persistent
    /// sessions): each long-poll is a new request, and one sent elsewhere finds its session
    /// unknown there ("Session ID unknown"), every polling client at once.
    pub drain_until_ms: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<CloseHandle>>>,
}

impl BackendStats {
    pub fn register(&self, id: u64, ctl: Arc<CloseHandle>) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(id, ctl);
    }

    pub fn unregister(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Live connections' handles, for closing them.
    pub fn connections(&self) -> Vec<Arc<CloseHandle>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Load used by the least-connections and p2c balancers.
    pub fn load(&self) -> u64 {
        self.active.load(Relaxed) + self.cluster_active.load(Relaxed)
    }

    /// Counts a connection to this backend in `active` until the returned guard drops.
    pub fn count(self: &Arc<Self>) -> Counted {
        self.active.fetch_add(1, Relaxed);
        Counted(self.clone())
    }
}

/// One connection (or request) counted against its backend from the moment the backend was
/// picked, as NGINX's `least_conn` counts: a burst of handshakes in flight together sees each
/// other, so least connections and power of two choices spread it and
/// `max_connections_per_backend` holds, where counting from the 101 sent the whole burst to
/// the backend that looked idlest. A guard, so every way out (a failed attempt, a refusal, a
/// panic in the relay) gives the count back.
pub struct Counted(Arc<BackendStats>);

impl Counted {
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// All backends' stats, by (pool, address).
pub struct Registry {
    map: RwLock<HashMap<(String, String), Arc<BackendStats>>>,
    start: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { map: RwLock::default(), start: Instant::now() }
    }
}

impl Registry {
    pub fn get(&self, pool: &str, addr: &str) -> Arc<BackendStats> {
        let key = (pool.to_string(), addr.to_string());
        if let Some(s) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return s.clone();
        }
        self.map.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone()
    }

    /// The stats of a backend this proxy tracks, without starting to track it.
    pub fn find(&self, pool: &str, addr: &str) -> Option<Arc<BackendStats>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(&(pool.to_string(), addr.to_string())).cloned()
    }

    /// Forgets backends no longer configured once their last connection is gone.
    pub fn retain(&self, keep: impl Fn(&(String, String)) -> bool) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).retain(|k, s| keep(k) || s.active.load(Relaxed) > 0);
    }

    pub fn all(&self) -> Vec<((String, String), Arc<BackendStats>)> {
        let mut v: Vec<_> =
            self.map.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Milliseconds since the registry started: the clock for ejections.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}
