//! What a proxy holds while it runs: the routing table in use and per-backend stats, session
//! affinity ([`Affinity`]), what it says about its config ([`ConfigStatus`]), and the
//! runtime pieces its connections share ([`Runtime`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::affinity::Affinity;
use crate::stats::Registry;
use crate::status::ConfigStatus;
use crate::table::Table;

pub struct ProxyState {
    pub proxy_id: String,
    /// Swapped whole on every config change; a connection reads the one current when it came.
    pub table: ArcSwap<Table>,
    pub registry: Registry,
    pub affinity: Affinity,
    pub status: ConfigStatus,
    pub runtime: Runtime,
    /// What tables compile and keep across config changes (key sets, backend TLS).
    pub compiled: crate::table::Compiled,
}

/// A value on a cache line of its own: one every worker writes on every request would
/// otherwise drag the counters beside it from core to core.
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What connections share apart from config: admission, counters, shutdown.
pub struct Runtime {
    pub admission: Admission,
    pub accepted: AtomicU64,
    /// Client connections open (accepted and not yet ended), and how many the descriptor
    /// limit leaves room for (0: no cap); see [`crate::fds`].
    pub open: AtomicUsize,
    pub max_open: AtomicUsize,
    /// Connections the descriptor limit leaves room for (0: no limit), and the idle
    /// keep-alive connections in the plain-HTTP and edge-auth pools, one descriptor each, which
    /// count against it; raised to have every worker close its idle ones when room is short.
    pub fd_room: AtomicUsize,
    pub pooled: Padded<AtomicUsize>,
    pub close_idle: tokio::sync::Notify,
    /// wss certificate sets loaded after the first, and loads that failed (old set kept).
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    next_conn: AtomicU64,
    /// Set at start when access logging is on.
    pub access_log: std::sync::OnceLock<Arc<crate::access_log::AccessLog>>,
    /// Cancelled on SIGTERM: stop accepting, close connections.
    pub shutdown: CancellationToken,
    pub connections: TaskTracker,
}

impl Runtime {
    pub fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Relaxed)
    }

    pub fn count_failure(&self, reason: &'static str) {
        *self.handshake_failures.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// Refused handshakes so far, by reason.
    pub fn failures(&self) -> BTreeMap<&'static str, u64> {
        self.handshake_failures.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ProxyState {
    pub fn new(proxy_id: String) -> Arc<ProxyState> {
        Arc::new(ProxyState {
            proxy_id,
            table: ArcSwap::from_pointee(Table::empty()),
            registry: Registry::default(),
            affinity: Affinity::default(),
            status: ConfigStatus::default(),
            compiled: Default::default(),
            runtime: Runtime {
                admission: Admission::default(),
                accepted: AtomicU64::new(0),
                open: AtomicUsize::new(0),
                max_open: AtomicUsize::new(0),
                fd_room: AtomicUsize::new(0),
                pooled: Padded(AtomicUsize::new(0)),
                close_idle: tokio::sync::Notify::new(),
                tls_reloads: AtomicU64::new(0),
                tls_reload_failures: AtomicU64::new(0),
                handshake_failures: Mutex::new(BTreeMap::new()),
                next_conn: AtomicU64::new(1),
                access_log: std::sync::OnceLock::new(),
                shutdown: CancellationToken::new(),
                connections: TaskTracker::new(),
            },
        })
    }
}
