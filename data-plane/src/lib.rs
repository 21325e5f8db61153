//! Switchyard's data plane: a stateless WebSocket proxy that follows the control plane's
//! config stream, balances new connections over backends, and relays frames with small,
//! bounded memory per connection.

pub mod admin;
pub mod admission;
pub mod affinity;
pub mod balance;
pub mod config;
pub mod connection;
pub mod drain;
pub mod frame;
pub mod handshake;
mod hash;
pub mod relay;
pub mod state;
pub mod stats;
pub mod status;
pub mod table;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::ProxyConfig;
pub use state::ProxyState;

/// A running proxy.
pub struct Proxy {
    pub state: Arc<ProxyState>,
    pub listen: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts serving on the given listeners: from the cache file at once if there is one,
    /// then from the control plane as soon as a node answers.
    pub fn start(cfg: ProxyConfig, listener: TcpListener, admin: TcpListener) -> std::io::Result<Proxy> {
        switchyard_model::tls::install_provider();
        let state = ProxyState::new(cfg.proxy_id.clone());
        let mut mirror = watch::mirror::Mirror::default();
        if let Some((t, written)) = cfg.cache_file.as_deref().and_then(watch::cache::load) {
            mirror = watch::mirror::Mirror::from_topology(t);
            watch::install::install(&state, &mirror, &watch::mirror::Delta::All, "cache", written);
            tracing::warn!(
                revision = mirror.revision,
                "serving from the config cache until a control-plane node answers"
            );
        }
        let listen = listener.local_addr()?;
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
        let workers = connection::Workers::start(cfg.tuning.workers, state.clone(), cfg.tuning)?;
        let accept = tokio::spawn(connection::serve(listener, state.clone(), workers));
        Ok(Proxy { state, listen, admin: admin_addr, accept })
    }

    /// SIGTERM behaviour: stop accepting, ask every connection to close with 1001 (spread
    /// over the grace period), and wait for them, at most the grace period plus a little.
    pub async fn shutdown(self, grace: Duration) {
        self.state.runtime.shutdown.cancel();
        let _ = self.accept.await;
        let conns: Vec<_> = self.state.registry.all().into_iter().flat_map(|(_, s)| s.connections()).collect();
        tracing::info!(connections = conns.len(), ?grace, "closing connections");
        tokio::spawn(drain::drain(conns, grace));
        self.state.runtime.connections.close();
        if tokio::time::timeout(grace + Duration::from_secs(3), self.state.runtime.connections.wait()).await.is_err() {
            tracing::warn!("grace period over with connections still open; exiting");
        }
    }
}
