//! `switchyard-proxy` configuration: flags, or the same keys in a TOML file; flags win.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use switchyard_model::grpc::ClientTls;
use switchyard_model::tls::{Role, TlsFiles};

use crate::connection::Tuning;

#[derive(Debug, Default, clap::Parser)]
#[command(name = "switchyard-proxy", version, about = "Switchyard WebSocket proxy")]
pub struct Args {
    /// TOML file with any of the keys below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// WebSocket listener [default: 0.0.0.0:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin HTTP (/metrics, /status) [default: 127.0.0.1:8081].
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Control-plane nodes, comma-separated host:port [default: 127.0.0.1:7400].
    #[arg(long)]
    pub control_plane: Option<String>,
    /// Where to keep the last known config, to start from when no node answers.
    #[arg(long)]
    pub cache_file: Option<PathBuf>,
    /// This proxy's name in `switchyard proxy list` [default: host name and listen port].
    #[arg(long)]
    pub proxy_id: Option<String>,
    #[arg(long)]
    pub connect_timeout_ms: Option<u64>,
    #[arg(long)]
    pub eject_ms: Option<u64>,
    /// On SIGTERM, connections are closed over this long.
    #[arg(long)]
    pub shutdown_grace_ms: Option<u64>,
    /// Connection worker threads [default: one per core].
    #[arg(long)]
    pub workers: Option<usize>,
    /// The cluster CA (PEM): with it the proxy talks to the control plane over TLS only.
    #[arg(long, env = "SWITCHYARD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This proxy's certificate (PEM), issued with `switchyard certs issue --role proxy`.
    #[arg(long, env = "SWITCHYARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This proxy's private key (PEM).
    #[arg(long, env = "SWITCHYARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    control_plane: Option<String>,
    cache_file: Option<PathBuf>,
    proxy_id: Option<String>,
    connect_timeout_ms: Option<u64>,
    eject_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    workers: Option<usize>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub control_plane: Vec<String>,
    pub cache_file: Option<PathBuf>,
    pub proxy_id: String,
    pub tuning: Tuning,
    /// How the proxy reaches the control plane (cleartext when no TLS file was given).
    pub control_tls: ClientTls,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The proxy's client TLS: all three files or none, and a certificate with the proxy role (a
/// proxy given an admin's certificate would hold more power than it needs).
fn control_tls(tls: &TlsFiles) -> Result<ClientTls, ConfigError> {
    if !tls.enabled() {
        return Ok(ClientTls::cleartext());
    }
    let (Some(_), Some(cert), Some(_)) = (&tls.ca, &tls.cert, &tls.key) else {
        return Err(ConfigError(
            "TLS to the control plane needs all three of --tls-ca, --tls-cert and --tls-key".into(),
        ));
    };
    let bad = |e: switchyard_model::tls::TlsError| ConfigError(e.to_string());
    if let Some(id) = tls.own_identity().map_err(bad)?.filter(|i| i.role != Role::Proxy) {
        return Err(ConfigError(format!(
            "{} is a certificate for {} {:?}; a proxy needs one issued with --role proxy",
            cert.display(),
            id.role,
            id.name
        )));
    }
    ClientTls::from_files(tls).map_err(bad)
}

impl Args {
    pub fn into_config(self) -> Result<ProxyConfig, ConfigError> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", p.display())))?
            }
        };
        let listen = self.listen.or(file.listen).unwrap_or_else(|| "0.0.0.0:8080".parse().expect("valid"));
        let admin = self.admin.or(file.admin).unwrap_or_else(|| "127.0.0.1:8081".parse().expect("valid"));
        let cp = self.control_plane.or(file.control_plane).unwrap_or_else(|| "127.0.0.1:7400".into());
        let control_plane: Vec<String> =
            cp.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if control_plane.is_empty() {
            return Err(ConfigError("--control-plane needs at least one host:port".into()));
        }
        let mut tuning = Tuning::default();
        if let Some(ms) = self.connect_timeout_ms.or(file.connect_timeout_ms) {
            tuning.connect_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.eject_ms.or(file.eject_ms) {
            tuning.eject_for = Duration::from_millis(ms);
        }
        if let Some(ms) = self.shutdown_grace_ms.or(file.shutdown_grace_ms) {
            tuning.shutdown_grace = Duration::from_millis(ms);
        }
        if let Some(w) = self.workers.or(file.workers) {
            if w == 0 {
                return Err(ConfigError("--workers must be 1 or more".into()));
            }
            tuning.workers = w;
        }
        let proxy_id = self.proxy_id.or(file.proxy_id).unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            format!("{}:{}", if host.is_empty() { "proxy" } else { &host }, listen.port())
        });
        let tls = TlsFiles {
            ca: self.tls_ca.or(file.tls_ca),
            cert: self.tls_cert.or(file.tls_cert),
            key: self.tls_key.or(file.tls_key),
        };
        let control_tls = control_tls(&tls)?;
        Ok(ProxyConfig {
            control_tls,
            listen,
            admin,
            control_plane,
            cache_file: self.cache_file.or(file.cache_file),
            proxy_id,
            tuning,
        })
    }
}
