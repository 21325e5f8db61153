//! TLS on the proxy: wss termination with certificates chosen by SNI and reloaded while
//! running, and optional verified TLS to backends. The crypto provider is ring, installed
//! once by [`switchyard_model::tls::install_provider`].

pub mod certs;
pub mod edge;
pub mod pool;
pub mod reload;

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use certs::{CertSet, CertSources, SniResolver};
pub use pool::{PoolTls, PoolTlsCache};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The wss listener's config: TLS 1.3 and 1.2 only, ALPN `http/1.1` (WebSocket upgrades are
/// HTTP/1.1), certificates from `resolver`. Stateful resumption (rustls' in-memory session
/// cache) stays on, so reconnecting browsers skip the signature; one TLS 1.3 ticket per
/// handshake instead of rustls' two saves a record and a cache entry per new connection.
pub fn server_config(resolver: Arc<SniResolver>) -> Arc<ServerConfig> {
    switchyard_model::tls::install_provider();
    let mut c = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.send_tls13_tickets = 1;
    // The keys leave rustls once the handshake is over: `edge::records` protects the records.
    c.enable_secret_extraction = true;
    Arc::new(c)
}

/// The config for TLS to backends: backends' certificates are verified against the CA bundle
/// in `ca` (there is no switch to turn verification off).
pub fn backend_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in switchyard_model::tls::load_certs(ca).map_err(|e| TlsError(e.to_string()))? {
        roots.add(c).map_err(|e| TlsError(format!("{}: not a usable CA certificate: {e}", ca.display())))?;
    }
    Ok(switchyard_model::backend_tls::client_config(roots))
}

/// TLS toward backends (the proxy's own, or a pool's): the client config and the name to verify (and send as
/// SNI); without a name, the host part of each backend's address is used.
#[derive(Clone)]
pub struct BackendTls {
    pub config: Arc<ClientConfig>,
    pub server_name: Option<String>,
    /// Unique per value made, so connections made under it can be told from others.
    pub id: u64,
}

impl BackendTls {
    /// Checks `server_name` now, so a bad one stops the start rather than every connection.
    pub fn new(config: Arc<ClientConfig>, server_name: Option<String>) -> Result<BackendTls, TlsError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(16);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let b = BackendTls { config, server_name, id };
        if b.server_name.is_some() {
            b.name_for("")?;
        }
        Ok(b)
    }

    /// The name a backend at `address` (host:port) must prove.
    pub fn name_for(&self, address: &str) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
        switchyard_model::backend_tls::name_for(self.server_name.as_deref().unwrap_or(""), address).map_err(TlsError)
    }
}
