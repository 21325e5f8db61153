//! Switchyard's data plane: a stateless WebSocket proxy that follows the control plane's
//! config stream, balances new connections over backends, and relays frames with small,
//! bounded memory per connection.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod affinity;
pub mod balance;
pub mod config;
pub mod connection;
pub mod drain;
pub mod edge_auth;
pub mod fds;
pub mod frame;
pub mod handling;
pub mod handshake;
mod hash;
pub mod plain;
pub mod relay;
mod socket;
pub mod state;
pub mod stats;
pub mod status;
pub mod table;
pub mod tls;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::{ProxyConfig, TlsConfig};
pub use state::ProxyState;

/// A running proxy.
pub struct Proxy {
    pub state: Arc<ProxyState>,
    /// The ws listener's address (the wss one's when there is no ws listener).
    pub listen: std::net::SocketAddr,
    pub ws: Option<std::net::SocketAddr>,
    pub wss: Option<std::net::SocketAddr>,
    pub admin: std::net::SocketAddr,
    accept: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("no listener: give --listen, --wss-listen or both")]
    NoListener,
    #[error(
        "the file descriptor limit ({0}) leaves no room for a proxied connection: the proxy keeps {1} for itself \
         and needs two per connection; raise it (ulimit -n, LimitNOFILE=)"
    )]
    NoDescriptors(u64, u64),
    #[error("--wss-listen needs its listener and certificates together")]
    WssIncomplete,
    #[error("cannot open the access log {0}: {1}")]
    AccessLog(String, std::io::Error),
    #[error("--cache-file {0}: {1}")]
    CacheFile(String, watch::cache::CacheError),
}

/// The sockets a proxy serves.
pub struct Listeners {
    pub ws: Option<TcpListener>,
    pub wss: Option<TcpListener>,
    pub admin: TcpListener,
}

impl Proxy {
    /// Starts serving ws on `listener`: see [`Proxy::start_with`].
    pub fn start(cfg: ProxyConfig, listener: TcpListener, admin: TcpListener) -> Result<Proxy, StartError> {
        Proxy::start_with(cfg, Listeners { ws: Some(listener), wss: None, admin }, &TlsConfig::default())
    }

    /// Starts serving on the given listeners: from the cache file at once if there is one,
    /// then from the control plane as soon as a node answers. wss certificates are loaded
    /// here, so a bad file stops the start with its name.
    pub fn start_with(cfg: ProxyConfig, listeners: Listeners, tls: &TlsConfig) -> Result<Proxy, StartError> {
        switchyard_model::tls::install_provider();
        let Listeners { ws: listener, wss, admin } = listeners;
        if listener.is_none() && wss.is_none() {
            return Err(StartError::NoListener);
        }
        if wss.is_some() == tls.wss_certs.is_empty() {
            return Err(StartError::WssIncomplete);
        }
        // The files as they were before the first load: one that changes while it loads is
        // loaded again at the first poll.
        let seen = tls::reload::fingerprint(&tls.wss_certs);
        let resolver = match wss {
            Some(_) => {
                let set = tls::CertSet::load(&tls.wss_certs)?;
                for p in &set.problems {
                    tracing::warn!("wss certificate directory: {p}");
                }
                Some(Arc::new(tls::SniResolver::new(set)))
            }
            None => None,
        };
        let backend_tls = match &tls.backend {
            Some(b) => Some(tls::BackendTls::new(tls::backend_config(&b.ca)?, b.server_name.clone())?),
            None => None,
        };
        let state = ProxyState::new(cfg.proxy_id.clone());
        let limit = fds::raise_limit();
        let room = limit.map(fds::connections_for);
        // No room at all would read as "no cap" below (0): the proxy would accept without
        // limit and fail in accept and connect, what the budget is there to prevent.
        if let (Some(limit), Some(0)) = (limit, room) {
            return Err(StartError::NoDescriptors(limit, fds::RESERVED));
        }
        let max = match (room, cfg.tuning.max_connections) {
            (Some(room), Some(asked)) if asked > room => {
                tracing::warn!("--max-connections {asked} lowered to {room}: the file descriptor limit allows no more");
                room
            }
            (_, Some(asked)) => asked,
            (Some(room), None) => room,
            (None, None) => 0,
        };
        state.runtime.max_open.store(max, std::sync::atomic::Ordering::Relaxed);
        state.runtime.fd_room.store(room.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        match room {
            Some(room) => tracing::info!(
                "the file descriptor limit leaves room for {room} proxied connections (two descriptors each); \
                 serving at most {max}, 503 at accept past that"
            ),
            None => tracing::info!("no file descriptor limit; serving at most {max} connections (0: no cap)"),
        }
        if let Some(target) = &cfg.access_log {
            let log = access_log::AccessLog::start(target.clone())
                .map_err(|e| StartError::AccessLog(target.path.display().to_string(), e))?;
            let _ = state.runtime.access_log.set(log.clone());
            // SIGUSR1: reopen the file (after logrotate moved it).
            if let Ok(mut usr1) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
                tokio::spawn(async move {
                    while usr1.recv().await.is_some() {
                        log.reopen();
                    }
                });
            }
        }
        let mut mirror = watch::mirror::Mirror::default();
        let cached = match cfg.cache_file.as_deref() {
            Some(p) => watch::cache::open(p).map_err(|e| StartError::CacheFile(p.display().to_string(), e))?,
            None => None,
        };
        if let Some((t, written)) = cached {
            mirror = watch::mirror::Mirror::from_topology(t);
            watch::install::install(&state, &mirror, &watch::mirror::Delta::All, "cache", written);
            tracing::warn!(
                revision = mirror.revision,
                "serving from the config cache until a control-plane node answers"
            );
        }
        let ws_addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let wss_addr = wss.as_ref().map(|l| l.local_addr()).transpose()?;
        let listen = ws_addr.or(wss_addr).ok_or(StartError::NoListener)?;
        let admin_addr = admin.local_addr()?;
        tokio::spawn(admin::serve(admin, state.clone()));
        watch::start(
            state.clone(),
            watch::WatchConfig {
                endpoints: cfg.control_plane.clone(),
                cache_file: cfg.cache_file.clone(),
                tls: cfg.control_tls.clone(),
            },
            mirror,
        );
        match &resolver {
            Some(r) => tls::reload::spawn(r.clone(), tls.wss_certs.clone(), seen, state.clone()),
            None => tls::reload::ignore_hangup(state.clone()),
        }
        let ctx = Arc::new(handling::Ctx { tuning: cfg.tuning, wss: resolver.map(tls::server_config), backend_tls });
        let listeners = [(listener, false), (wss, true)]
            .into_iter()
            .filter_map(|(l, tls)| l.map(|listener| connection::Listen { listener, tls }))
            .collect();
        let gate = cfg.tuning.accept_when_configured;
        let accept = connection::start(cfg.tuning.workers, cfg.tuning.park_yield, listeners, gate, state.clone(), ctx)?;
        Ok(Proxy { state, listen, ws: ws_addr, wss: wss_addr, admin: admin_addr, accept })
    }

    /// SIGTERM behaviour: stop accepting, ask every connection to close with 1001 (spread
    /// over the grace period), and wait for them, at most the grace period plus a little.
    pub async fn shutdown(self, grace: Duration) {
        self.state.runtime.shutdown.cancel();
        for a in self.accept {
            let _ = a.await;
        }
        let conns: Vec<_> = self.state.registry.all().into_iter().flat_map(|(_, s)| s.connections()).collect();
        tracing::info!(connections = conns.len(), ?grace, "closing connections");
        tokio::spawn(drain::drain(conns, grace, || true));
        self.state.runtime.connections.close();
        if tokio::time::timeout(grace + Duration::from_secs(3), self.state.runtime.connections.wait()).await.is_err() {
            tracing::warn!("grace period over with connections still open; exiting");
        }
    }
}
