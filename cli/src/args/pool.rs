//! `switchyard pool …`: the pool commands and the options a pool is created or changed with.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use switchyard_proto::v1::{Algorithm, HealthCheckKind};

/// `--backend-tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendTlsArg {
    On,
    Off,
    Proxy,
}

/// `--algorithm`: clap rejects any other name, so nothing falls back to round robin unasked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    RoundRobin,
    LeastConnections,
    IpHash,
    ConsistentHash,
    P2c,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(a: AlgorithmArg) -> Algorithm {
        match a {
            AlgorithmArg::RoundRobin => Algorithm::RoundRobin,
            AlgorithmArg::LeastConnections => Algorithm::LeastConnections,
            AlgorithmArg::IpHash => Algorithm::IpHash,
            AlgorithmArg::ConsistentHash => Algorithm::ConsistentHash,
            AlgorithmArg::P2c => Algorithm::P2c,
        }
    }
}

/// `--health-check`. `Off` rather than `None`, to not read as `Option::None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HealthCheckArg {
    #[value(name = "none")]
    Off,
    Tcp,
    Websocket,
}

impl From<HealthCheckArg> for HealthCheckKind {
    fn from(k: HealthCheckArg) -> HealthCheckKind {
        match k {
            HealthCheckArg::Off => HealthCheckKind::HealthCheckNone,
            HealthCheckArg::Tcp => HealthCheckKind::HealthCheckTcp,
            HealthCheckArg::Websocket => HealthCheckKind::HealthCheckWebsocket,
        }
    }
}

#[derive(Args, Debug, Default, Clone)]
pub struct PoolOpts {
    /// Balancing algorithm.
    #[arg(long, value_enum)]
    pub algorithm: Option<AlgorithmArg>,
    /// Key for consistent hashing: header:NAME, cookie:NAME, query:NAME or ip.
    #[arg(long)]
    pub hash_key: Option<String>,
    /// Session affinity key: header:NAME, cookie:NAME, query:NAME or ip; "none" to turn off.
    #[arg(long)]
    pub affinity: Option<String>,
    /// How long an idle session binding lives, e.g. 30m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub affinity_ttl: Option<Duration>,
    /// Connections per backend at most (0 = unlimited).
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Window over which a draining backend's connections are closed, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Plain HTTP: the largest request body taken, in bytes (0 = the proxy's 10 MiB).
    #[arg(long)]
    pub max_body: Option<u64>,
    /// Plain HTTP: how long a backend may take to start answering, e.g. 90s (long-polling
    /// requests are held for tens of seconds; default 120s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub response_timeout: Option<Duration>,
    /// TLS to the pool's backends: on (with --backend-tls-ca), off (plain TCP even on proxies
    /// started with --backend-tls), or proxy (each proxy's own --backend-tls setting).
    #[arg(long, value_enum)]
    pub backend_tls: Option<BackendTlsArg>,
    /// PEM CA bundle the backends' certificates are verified against (turns backend TLS on).
    #[arg(long, value_name = "FILE")]
    pub backend_tls_ca: Option<std::path::PathBuf>,
    /// The name backends' certificates must carry, also sent as SNI (default: each
    /// backend's host).
    #[arg(long, value_name = "NAME")]
    pub backend_tls_server_name: Option<String>,
    /// Active health check.
    #[arg(long, value_enum)]
    pub health_check: Option<HealthCheckArg>,
    /// Time between probes of each backend [default: 2s; 100ms to 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    /// How long a probe may take before it counts as failed [default: 1s; at most the
    /// interval].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Probes in a row that must pass to mark a backend healthy [default: 2; 1 to 100].
    #[arg(long)]
    pub health_rise: Option<u32>,
    /// Probes in a row that must fail to mark a backend unhealthy [default: 3; 1 to 100].
    #[arg(long)]
    pub health_fall: Option<u32>,
    /// Request path for websocket health checks.
    #[arg(long)]
    pub health_path: Option<String>,
    /// When the check marks a backend unhealthy, close its connections (Close 1001) so their
    /// clients reconnect to a healthy one (HAProxy's `on-marked-down shutdown-sessions`).
    /// Off by default: established connections stay, as in NGINX and HAProxy.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub health_close_on_failure: Option<bool>,
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    Create {
        name: String,
        #[command(flatten)]
        opts: PoolOpts,
    },
    List,
    Get {
        name: String,
    },
    /// Change only the options given.
    Update {
        name: String,
        #[command(flatten)]
        opts: PoolOpts,
        /// Change the affinity key of a pool that holds session bindings (every session
        /// moves); refused without this.
        #[arg(long)]
        force: bool,
    },
    Delete {
        name: String,
    },
}
