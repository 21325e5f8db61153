//! What a proxy knows: the current routing table, per-backend stats, where its config came
//! from, and counters for the admin endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::stats::Registry;
use crate::table::Table;

/// Where the running config came from.
#[derive(Clone, Debug)]
pub struct ConfigInfo {
    /// "none", "cache" or "control-plane".
    pub source: &'static str,
    pub revision: u64,
    /// When this proxy applied it (or when the cache file was written).
    pub applied_at: SystemTime,
}

#[derive(Clone, Debug)]
pub struct ControlPlaneInfo {
    pub connected: Option<String>,
    pub since: Instant,
}

pub struct ProxyState {
    pub proxy_id: String,
    pub table: ArcSwap<Table>,
    pub registry: Registry,
    pub config: Mutex<ConfigInfo>,
    /// When recent revisions were applied, for measuring how fast changes reach proxies.
    pub applied: Mutex<std::collections::VecDeque<(u64, SystemTime)>>,
    pub applied_changed: tokio::sync::Notify,
    pub control_plane: Mutex<ControlPlaneInfo>,
    pub handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    pub accepted: AtomicU64,
    next_conn: AtomicU64,
    /// Session bindings as the control plane last streamed them: (pool, key) → backend.
    pub sessions: std::sync::RwLock<std::collections::HashMap<(String, String), String>>,
    /// Bindings made or refreshed here, waiting to be reported.
    pub pending_bindings: Mutex<Vec<switchyard_proto::v1::SessionBinding>>,
    /// Sessions with live connections here, refreshed while they last: key → count.
    pub live_sessions: Mutex<std::collections::HashMap<(String, String, String), usize>>,
    pub report_now: tokio::sync::Notify,
    pub admission: crate::admission::Admission,
    /// Cancelled on SIGTERM: stop accepting, close connections.
    pub shutdown: CancellationToken,
    pub connections: TaskTracker,
}

impl ProxyState {
    pub fn new(proxy_id: String) -> Arc<ProxyState> {
        Arc::new(ProxyState {
            proxy_id,
            table: ArcSwap::from_pointee(Table::empty()),
            registry: Registry::default(),
            config: Mutex::new(ConfigInfo { source: "none", revision: 0, applied_at: SystemTime::now() }),
            applied: Mutex::new(std::collections::VecDeque::new()),
            applied_changed: tokio::sync::Notify::new(),
            control_plane: Mutex::new(ControlPlaneInfo { connected: None, since: Instant::now() }),
            handshake_failures: Mutex::new(BTreeMap::new()),
            sessions: Default::default(),
            pending_bindings: Mutex::new(Vec::new()),
            live_sessions: Mutex::new(Default::default()),
            report_now: tokio::sync::Notify::new(),
            admission: Default::default(),
            accepted: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        })
    }

    pub fn session_backend(&self, pool: &str, key: &str) -> Option<String> {
        self.sessions.read().unwrap_or_else(|e| e.into_inner()).get(&(pool.to_string(), key.to_string())).cloned()
    }

    /// A connection for `key` went to `backend`: report the binding (new or refreshed) and keep
    /// refreshing it while the connection lives. Returns the guard key for [`Self::unbind_live`].
    pub fn bind_live(&self, pool: &str, key: &str, backend: &str) -> (String, String, String) {
        let k = (pool.to_string(), key.to_string(), backend.to_string());
        *self.live_sessions.lock().unwrap_or_else(|e| e.into_inner()).entry(k.clone()).or_default() += 1;
        self.pending_bindings.lock().unwrap_or_else(|e| e.into_inner()).push(switchyard_proto::v1::SessionBinding {
            pool: k.0.clone(),
            key: k.1.clone(),
            backend: k.2.clone(),
            ..Default::default()
        });
        self.report_now.notify_one();
        k
    }

    pub fn unbind_live(&self, k: &(String, String, String)) {
        let mut live = self.live_sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                live.remove(k);
            }
        }
    }

    pub fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Relaxed)
    }

    pub fn count_failure(&self, reason: &'static str) {
        *self.handshake_failures.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    pub fn config_info(&self) -> ConfigInfo {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records that `revision` is now in use.
    pub fn record_applied(&self, revision: u64, at: SystemTime) {
        let mut a = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if a.len() == 4096 {
            a.pop_front();
        }
        a.push_back((revision, at));
        drop(a);
        self.applied_changed.notify_waiters();
    }

    /// When the first revision at or after `revision` was applied, if it has been.
    pub fn applied_at(&self, revision: u64) -> Option<(u64, SystemTime)> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(r, _)| *r >= revision).copied()
    }

    pub fn control_plane_info(&self) -> ControlPlaneInfo {
        self.control_plane.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_control_plane(&self, connected: Option<String>) {
        let mut cp = self.control_plane.lock().unwrap_or_else(|e| e.into_inner());
        if cp.connected != connected {
            *cp = ControlPlaneInfo { connected, since: Instant::now() };
        }
    }
}
