//! `switchyard-proxy` configuration: flags, or the same keys in a TOML file; flags win.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use switchyard_model::grpc::ClientTls;
use switchyard_model::tls::{Role, TlsFiles};

use crate::handling::Tuning;

#[derive(Debug, Default, clap::Parser)]
#[command(name = "switchyard-proxy", version = switchyard_model::version::protocol_line(), about = "Switchyard WebSocket proxy")]
pub struct Args {
    /// TOML file with any of the keys below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// WebSocket (ws://) listener [default: 0.0.0.0:8080, unless only --wss-listen is given].
    /// A listening socket passed on fd 3 (`LISTEN_FDS=1`, systemd socket activation, or a
    /// supervisor handing it from the old process to the new one) serves instead.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// WebSocket over TLS (wss://) listener; needs certificates (--wss-cert/--wss-key or
    /// --wss-cert-dir).
    #[arg(long)]
    pub wss_listen: Option<SocketAddr>,
    /// A PEM certificate chain to serve, chosen by SNI from its SAN names; repeatable, paired
    /// in order with --wss-key. The first is the default for clients without a known name.
    #[arg(long)]
    pub wss_cert: Vec<PathBuf>,
    /// The PEM private key of the --wss-cert in the same position.
    #[arg(long)]
    pub wss_key: Vec<PathBuf>,
    /// Serve every NAME.crt with a NAME.key beside it in this directory (after any
    /// --wss-cert pairs; CA certificates are skipped). Files are reloaded when they change
    /// and on SIGHUP.
    #[arg(long)]
    pub wss_cert_dir: Option<PathBuf>,
    /// TLS to every backend, verified against --backend-tls-ca.
    #[arg(long)]
    pub backend_tls: bool,
    /// PEM CA bundle backends' certificates must chain to.
    #[arg(long)]
    pub backend_tls_ca: Option<PathBuf>,
    /// The name backends' certificates must carry (and the SNI sent) [default: the host part
    /// of each backend's address].
    #[arg(long)]
    pub backend_tls_server_name: Option<String>,
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
    /// How long a connect to a backend (with its TLS handshake, for TLS backends) may take
    /// before the next backend is tried [default: 3000; 1 to 600000].
    #[arg(long)]
    pub connect_timeout_ms: Option<u64>,
    /// How long a backend this proxy failed to reach is passed over, by this proxy alone
    /// [default: 10000; 0 to 86400000].
    #[arg(long)]
    pub eject_ms: Option<u64>,
    /// A backend connection whose sent data goes unacknowledged this long (its host is gone
    /// or cut off, or it advertised a zero window throughout) is given up, and its client
    /// gets Close 1001 [default: 60000; 0: the kernel's own, about 15 minutes].
    #[arg(long)]
    pub backend_unacked_timeout_ms: Option<u64>,
    /// TCP keepalive on backend connections: a probe once a backend has sent nothing this
    /// long (rounded up to whole seconds), then every third of it. A backend host that
    /// vanished under quiet connections is given up after the unacknowledged timeout (or nine
    /// unanswered probes without one), and its clients get Close 1001 [default: 30000; 0: off].
    #[arg(long)]
    pub backend_keepalive_ms: Option<u64>,
    /// On SIGTERM, connections are closed over this long.
    #[arg(long)]
    pub shutdown_grace_ms: Option<u64>,
    /// Connection worker threads [default: one per core].
    #[arg(long)]
    pub workers: Option<usize>,
    /// A worker that did work sleeps at once when it runs out, instead of first yielding its
    /// core to whatever else is runnable there: for cores kept for the proxy alone, or
    /// real-time scheduling (see the README's "Workers" note).
    #[arg(long)]
    pub no_park_yield: bool,
    /// Client connections open at once; more get 503 at accept [default: what the file
    /// descriptor limit allows, two descriptors per connection]. A larger value is lowered to
    /// that.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Write one line per connection (and per refused handshake) here when it ends; `-` is
    /// stdout. SIGUSR1 reopens the file. Off by default.
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<PathBuf>,
    /// The access log's line format.
    #[arg(long, value_enum)]
    pub access_log_format: Option<crate::access_log::Format>,
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
    wss_listen: Option<SocketAddr>,
    #[serde(default)]
    wss_cert: Vec<PathBuf>,
    #[serde(default)]
    wss_key: Vec<PathBuf>,
    wss_cert_dir: Option<PathBuf>,
    backend_tls: Option<bool>,
    backend_tls_ca: Option<PathBuf>,
    backend_tls_server_name: Option<String>,
    admin: Option<SocketAddr>,
    control_plane: Option<String>,
    cache_file: Option<PathBuf>,
    proxy_id: Option<String>,
    connect_timeout_ms: Option<u64>,
    eject_ms: Option<u64>,
    backend_unacked_timeout_ms: Option<u64>,
    backend_keepalive_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    workers: Option<usize>,
    park_yield: Option<bool>,
    max_connections: Option<usize>,
    access_log: Option<PathBuf>,
    access_log_format: Option<crate::access_log::Format>,
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
    /// Where access-log lines go, if anywhere.
    pub access_log: Option<crate::access_log::Target>,
}

/// Listeners and TLS beyond [`ProxyConfig`] (kept apart so that embedders of [`ProxyConfig`]
/// that serve only ws are unaffected).
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// No ws listener: only `--wss-listen` was given.
    pub no_ws: bool,
    pub wss_listen: Option<SocketAddr>,
    pub wss_certs: crate::tls::CertSources,
    pub backend: Option<BackendTlsConfig>,
}

#[derive(Debug, Clone)]
pub struct BackendTlsConfig {
    pub ca: PathBuf,
    pub server_name: Option<String>,
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
    let bad = |e: switchyard_model::tls::TlsError| ConfigError(e.to_string());
    tls.check_for(Role::Proxy).map_err(bad)?;
    ClientTls::from_files(tls).map_err(bad)
}

impl Args {
    pub fn into_config(self) -> Result<(ProxyConfig, TlsConfig), ConfigError> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", p.display())))?
            }
        };
        let tls = tls_config(&self, &file)?;
        let listen = self.listen.or(file.listen);
        let listen = listen.or(tls.wss_listen.filter(|_| tls.no_ws));
        let listen = listen.unwrap_or_else(|| "0.0.0.0:8080".parse().expect("valid"));
        let admin = self.admin.or(file.admin).unwrap_or_else(|| "127.0.0.1:8081".parse().expect("valid"));
        let cp = self.control_plane.or(file.control_plane).unwrap_or_else(|| "127.0.0.1:7400".into());
        let control_plane: Vec<String> =
            cp.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if control_plane.is_empty() {
            return Err(ConfigError("--control-plane needs at least one host:port".into()));
        }
        let mut tuning = Tuning::default();
        // Each bounded: a connect timeout of 0 would eject every backend, and an ejection
        // past the clock's range would end at once.
        let within = |flag: &str, ms: u64, least: u64, most: u64| {
            if (least..=most).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(ConfigError(format!("--{flag} {ms} is not {least} to {most}")))
            }
        };
        if let Some(ms) = self.connect_timeout_ms.or(file.connect_timeout_ms) {
            tuning.connect_timeout = within("connect-timeout-ms", ms, 1, 600_000)?;
        }
        if let Some(ms) = self.eject_ms.or(file.eject_ms) {
            tuning.eject_for = within("eject-ms", ms, 0, 86_400_000)?;
        }
        if let Some(ms) = self.backend_unacked_timeout_ms.or(file.backend_unacked_timeout_ms) {
            // The kernel takes milliseconds as a u32 (about 49 days).
            if ms > u64::from(u32::MAX) {
                return Err(ConfigError(format!("--backend-unacked-timeout-ms {ms} is over {}", u32::MAX)));
            }
            tuning.backend_unacked = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(ms) = self.backend_keepalive_ms.or(file.backend_keepalive_ms) {
            // The kernel takes whole seconds as an i32 (TCP_KEEPIDLE's own cap is 32767).
            if ms > 32_767_000 {
                return Err(ConfigError(format!("--backend-keepalive-ms {ms} is over 32767000 (the kernel's cap)")));
            }
            tuning.backend_keepalive = (ms > 0).then(|| Duration::from_secs(ms.div_ceil(1000)));
        }
        if let Some(ms) = self.shutdown_grace_ms.or(file.shutdown_grace_ms) {
            tuning.shutdown_grace = within("shutdown-grace-ms", ms, 0, 86_400_000)?;
        }
        if let Some(w) = self.workers.or(file.workers) {
            if w == 0 {
                return Err(ConfigError("--workers must be 1 or more".into()));
            }
            tuning.workers = w;
        }
        tuning.park_yield = !self.no_park_yield && file.park_yield.unwrap_or(true);
        if let Some(m) = self.max_connections.or(file.max_connections) {
            if m == 0 {
                return Err(ConfigError("--max-connections must be 1 or more".into()));
            }
            tuning.max_connections = Some(m);
        }
        let proxy_id = self.proxy_id.or(file.proxy_id).unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            format!("{}:{}", if host.is_empty() { "proxy" } else { &host }, listen.port())
        });
        // Shown by `proxy list` and the console, and kept by the control plane, which refuses
        // what this refuses: said here, at start, rather than in every report.
        if proxy_id.is_empty() || proxy_id.len() > 256 || proxy_id.chars().any(char::is_control) {
            return Err(ConfigError(format!(
                "--proxy-id {proxy_id:?} must be 1 to 256 bytes with no control characters"
            )));
        }
        let control_files = TlsFiles {
            ca: self.tls_ca.or(file.tls_ca),
            cert: self.tls_cert.or(file.tls_cert),
            key: self.tls_key.or(file.tls_key),
        };
        let control_tls = control_tls(&control_files)?;
        let cfg = ProxyConfig {
            control_tls,
            listen,
            admin,
            control_plane,
            cache_file: self.cache_file.or(file.cache_file),
            proxy_id,
            tuning,
            access_log: self.access_log.or(file.access_log).map(|path| crate::access_log::Target {
                path,
                format: self.access_log_format.or(file.access_log_format).unwrap_or(crate::access_log::Format::Json),
            }),
        };
        Ok((cfg, tls))
    }
}

fn tls_config(a: &Args, file: &FileConfig) -> Result<TlsConfig, ConfigError> {
    let wss_listen = a.wss_listen.or(file.wss_listen);
    let (certs, keys) = if a.wss_cert.is_empty() && a.wss_key.is_empty() {
        (file.wss_cert.clone(), file.wss_key.clone())
    } else {
        (a.wss_cert.clone(), a.wss_key.clone())
    };
    if certs.len() != keys.len() {
        return Err(ConfigError(format!(
            "--wss-cert and --wss-key go in pairs: {} certificate(s), {} key(s)",
            certs.len(),
            keys.len()
        )));
    }
    let wss_certs = crate::tls::CertSources {
        pairs: certs.into_iter().zip(keys).collect(),
        dir: a.wss_cert_dir.clone().or(file.wss_cert_dir.clone()),
    };
    match (wss_listen.is_some(), wss_certs.is_empty()) {
        (true, true) => {
            return Err(ConfigError("--wss-listen needs certificates: --wss-cert/--wss-key or --wss-cert-dir".into()))
        }
        (false, false) => return Err(ConfigError("wss certificates given without --wss-listen".into())),
        _ => {}
    }
    let backend_on = a.backend_tls || file.backend_tls.unwrap_or(false);
    let ca = a.backend_tls_ca.clone().or(file.backend_tls_ca.clone());
    let server_name = a.backend_tls_server_name.clone().or(file.backend_tls_server_name.clone());
    let backend =
        match (backend_on, ca) {
            (true, Some(ca)) => Some(BackendTlsConfig { ca, server_name }),
            (true, None) => return Err(ConfigError(
                "--backend-tls needs --backend-tls-ca FILE (the CA bundle backends' certificates are verified against)"
                    .into(),
            )),
            (false, Some(_)) => return Err(ConfigError("--backend-tls-ca given without --backend-tls".into())),
            (false, None) if server_name.is_some() => {
                return Err(ConfigError("--backend-tls-server-name given without --backend-tls".into()))
            }
            (false, None) => None,
        };
    let no_ws = wss_listen.is_some() && a.listen.or(file.listen).is_none();
    Ok(TlsConfig { no_ws, wss_listen, wss_certs, backend })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(flags: &[&str]) -> Result<ProxyConfig, String> {
        let args = Args::try_parse_from([&["switchyard-proxy"], flags].concat()).map_err(|e| e.to_string())?;
        args.into_config().map(|(c, _)| c).map_err(|e| e.to_string())
    }

    #[test]
    fn timings_past_their_bounds_are_refused_at_start() {
        assert!(config(&["--eject-ms", "60000", "--connect-timeout-ms", "500"]).is_ok());
        let e = config(&["--eject-ms", "18446744073709551615"]).unwrap_err();
        assert!(e.contains("--eject-ms 18446744073709551615 is not 0 to 86400000"), "{e}");
        assert!(config(&["--connect-timeout-ms", "0"]).unwrap_err().contains("--connect-timeout-ms"));
        assert!(config(&["--shutdown-grace-ms", "99999999999"]).unwrap_err().contains("--shutdown-grace-ms"));
    }

    /// Workers yield before they park unless the flag or the file says not to.
    #[test]
    fn the_park_yield_is_on_unless_turned_off() {
        assert!(config(&[]).unwrap().tuning.park_yield);
        assert!(!config(&["--no-park-yield"]).unwrap().tuning.park_yield);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, "park-yield = false\n").unwrap();
        assert!(!config(&["--config", file.to_str().unwrap()]).unwrap().tuning.park_yield);
    }
}
