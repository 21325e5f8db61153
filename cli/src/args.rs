//! The command line: `switchyard [--endpoints A,B,C] [--output table|json] <noun> <verb>`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

pub mod pool;
pub use pool::{BackendTlsArg, PoolCmd, PoolOpts};

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version = switchyard_model::version::protocol_line(),
    about = "Switchyard: administer the WebSocket load balancer, or run it locally with `switchyard dev`"
)]
pub struct Cli {
    /// Control-plane nodes to talk to, comma-separated host:port (scheme optional).
    #[arg(long, global = true, env = "SWITCHYARD_ENDPOINTS", default_value = "127.0.0.1:7400")]
    pub endpoints: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Format,
    /// Read from this node's state as it is, instead of confirming with the leader.
    #[arg(long, global = true)]
    pub local: bool,
    /// The cluster CA (PEM) to verify nodes with; endpoints are then spoken to over TLS only.
    #[arg(long, global = true, env = "SWITCHYARD_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Your certificate (PEM), from `switchyard certs issue`; its role decides what you may do.
    #[arg(long, global = true, env = "SWITCHYARD_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Your certificate's private key (PEM).
    #[arg(long, global = true, env = "SWITCHYARD_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Bearer token to authenticate with (`switchyard token create`); prefer the env var or
    /// --token-file, since a flag shows in the process list.
    #[arg(long, global = true, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file (e.g. a node's DATA_DIR/admin.token); wins over
    /// --token and SWITCHYARD_TOKEN.
    #[arg(long, global = true)]
    pub token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Remote commands first, so `--help` lists them before the local ones.
#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(flatten)]
    Remote(RemoteCmd),
    #[command(flatten)]
    Local(LocalCmd),
}

/// Commands sent to the control plane.
#[derive(Subcommand, Debug)]
pub enum RemoteCmd {
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Pools: named groups of backends with a balancing algorithm.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Backends in a pool.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Routes: Host and path prefix to pool.
    #[command(subcommand)]
    Route(RouteCmd),
    /// Session affinity bindings.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Proxy-wide limits and timeouts.
    #[command(subcommand)]
    Settings(SettingsCmd),
    /// Proxies reporting to the control plane.
    #[command(subcommand)]
    Proxy(ProxyCmd),
    /// Bearer tokens for scripts and people without a certificate (admin only).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Backups of the cluster's state (admin only); restore with `switchyard-control --restore`.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Accepted admin writes: who, when, what, at which revision (admin only).
    Audit {
        /// Only records at this revision or later.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Print every change as the cluster applies it.
    Watch {
        /// Resume after this revision instead of starting with the whole state.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Save the state at one revision (every acknowledged write) to FILE, with a checksum.
    /// The file holds token hashes and the affinity secret: it is written 0600.
    Save { file: std::path::PathBuf },
}

/// Commands that run in this process and need no control plane.
#[derive(Subcommand, Debug)]
pub enum LocalCmd {
    /// Run Switchyard on this machine: 3 control-plane nodes, 2 proxies and 3 demo echo
    /// backends, in this process, on loopback.
    Dev(DevArgs),
    /// A demo WebSocket echo backend (greets with its name, then echoes).
    DemoBackend(DemoArgs),
    /// A cluster CA and the certificates of its parts (nodes, proxies, people).
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Print a shell completion script (e.g. `switchyard completions bash >
    /// /usr/share/bash-completion/completions/switchyard`).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): `switchyard man > /usr/share/man/man1/switchyard.1`.
    Man,
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Make a cluster CA: DIR/ca.crt and DIR/ca.key (mode 0600).
    Init { dir: std::path::PathBuf },
    /// Issue DIR/NAME.crt and DIR/NAME.key, signed by DIR's CA, for one role.
    Issue {
        dir: std::path::PathBuf,
        /// What the holder may do: node, proxy, admin, operator or viewer.
        #[arg(long)]
        role: switchyard_model::tls::Role,
        /// The holder's name, shown in audit records and logs.
        #[arg(long)]
        name: String,
        /// A host name or IP address the holder serves on (repeatable; default localhost
        /// and 127.0.0.1).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Mint a token and print it once; the cluster keeps only its hash.
    Create {
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// How long it is valid, e.g. 12h, 30d.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A name for it, shown in listings and audit records.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Ids, names, roles and expiry; never a secret.
    List,
    /// Revoke a token by id: calls bearing it are refused from then on.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Leader, term, revision and every member with its role.
    Status,
    /// Members and their roles.
    Members,
    /// Add a node as a learner (it must be running with --join).
    AddNode { id: u64, address: String },
    /// Promote a learner to voter.
    Promote {
        id: u64,
        /// Promote even if a majority of the voters after the change does not answer now.
        #[arg(long)]
        force: bool,
    },
    /// Remove a node (voter or learner) from the cluster.
    RemoveNode {
        id: u64,
        /// Remove even if a majority of the voters left does not answer now (the change then
        /// waits for them, and so does every write).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    Add {
        pool: String,
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long, default_value = "")]
        zone: String,
        /// KEY=VALUE, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Backends of one pool, or of all pools.
    List { pool: Option<String> },
    SetWeight {
        pool: String,
        address: String,
        weight: u32,
        /// Weight 0 for the last backend of a routed pool taking new connections.
        #[arg(long)]
        force: bool,
    },
    /// Take no new sessions; close existing ones over the pool's drain window.
    Drain {
        pool: String,
        address: String,
        /// Drain the last backend of a routed pool taking new connections.
        #[arg(long)]
        force: bool,
    },
    /// Back to active.
    Enable { pool: String, address: String },
    /// No new sessions, and existing connections are closed.
    Disable {
        pool: String,
        address: String,
        /// Disable the last backend of a routed pool taking new connections.
        #[arg(long)]
        force: bool,
    },
    Remove {
        pool: String,
        address: String,
        /// Remove the last backend of a routed pool taking new connections.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// Create or replace a route. With neither --host nor --path-prefix it matches every request.
    Set {
        name: String,
        #[arg(long)]
        pool: String,
        #[arg(long, default_value = "")]
        host: String,
        #[arg(long, default_value = "")]
        path_prefix: String,
        #[command(flatten)]
        auth: Box<RouteAuthOpts>,
        /// Replace a route that has edge authentication with one that has none (opening it
        /// to every client), or repoint a route from a pool with a backend in service to one
        /// with none (503 to every new client); both are refused without this.
        #[arg(long)]
        force: bool,
    },
    List,
    Delete {
        name: String,
    },
}

/// Edge authentication for a route: a JWT checked against a key set, or an HTTP endpoint asked.
#[derive(Args, Debug, Default, Clone)]
pub struct RouteAuthOpts {
    /// Verify a JWT on every request with the keys of this JSON Web Key Set file (public RSA,
    /// EC P-256/P-384 or Ed25519 keys). Setting the route again with a new file rotates them.
    #[arg(long, value_name = "FILE", conflicts_with = "auth_request")]
    pub jwt_jwks: Option<std::path::PathBuf>,
    /// Where the token is: header:NAME (Bearer in Authorization), cookie:NAME or query:NAME.
    #[arg(long, value_name = "SPEC", requires = "jwt_jwks")]
    pub jwt_from: Option<String>,
    /// An accepted `iss` (repeatable; none = any issuer).
    #[arg(long, value_name = "ISS", requires = "jwt_jwks")]
    pub jwt_issuer: Vec<String>,
    /// An accepted `aud` (repeatable; none = the audience is not checked).
    #[arg(long, value_name = "AUD", requires = "jwt_jwks")]
    pub jwt_audience: Vec<String>,
    /// Pass a claim to the backend as a header, CLAIM=HEADER (repeatable).
    #[arg(long, value_name = "CLAIM=HEADER", requires = "jwt_jwks")]
    pub jwt_claim_header: Vec<String>,
    /// Ask this http:// endpoint first (NGINX auth_request): 2xx lets the request through,
    /// 401 and 403 are passed back to the client.
    #[arg(long, value_name = "URL")]
    pub auth_request: Option<String>,
    /// How long the auth endpoint may take, e.g. 2s.
    #[arg(long, value_parser = humantime::parse_duration, requires = "auth_request")]
    pub auth_timeout: Option<Duration>,
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    List {
        pool: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    Get {
        pool: String,
        key: String,
    },
    /// Deletes one binding, or with `--all` every binding of the pool (needs cluster feature
    /// level 2).
    Delete {
        pool: String,
        /// The binding's key as `session list` shows it (its keyed hash, not the raw value).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        key: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SettingsCmd {
    Get,
    /// Change only the options given.
    Set(SettingsOpts),
}

#[derive(Args, Debug, Default, Clone)]
pub struct SettingsOpts {
    /// How long a client has to send its whole request head (and, idle, its next one)
    /// [default: 10s; 100ms to 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// The largest request head taken (431 past it) [default: 16384; 1 KiB to 1 MiB].
    #[arg(long)]
    pub max_header_bytes: Option<u32>,
    /// The largest WebSocket message relayed (Close 1009 past it) [default: 16 MiB; 125 B to
    /// 1 GiB].
    #[arg(long)]
    pub max_message_bytes: Option<u64>,
    /// A connection with no frame but Pongs either way this long is closed with 1001
    /// [default: 5m; 1s to 7 days]. 0s turns it off.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// How often the proxy pings each client; one silent for another interval is cut off
    /// [default: 30s; 100ms to 1h]. 0s turns it off.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// New connections a second one client address may open on each proxy (503 past it)
    /// [default: 0, no limit].
    #[arg(long)]
    pub max_connections_per_ip_per_sec: Option<u32>,
    /// WebSocket handshakes a second each proxy takes (503 past it) [default: 0, no limit].
    #[arg(long)]
    pub max_handshakes_per_sec: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum ProxyCmd {
    List,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// First control-plane port; the three nodes take this one and the next two (their
    /// consoles +80 to +82, so at most 65453).
    #[arg(long, default_value_t = 7400, value_parser = clap::value_parser!(u16).range(1..=65453))]
    pub base_port: u16,
    /// First proxy's WebSocket port (admin on the next port, wss +363); the second proxy
    /// takes +10 (so at most 65162).
    #[arg(long, default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..=65162))]
    pub proxy_port: u16,
    /// Keep data here instead of a temporary directory removed on exit.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: std::net::SocketAddr,
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Do not send the greeting (pure echo, for benchmarks).
    #[arg(long)]
    pub no_greeting: bool,
}

#[cfg(test)]
mod tests {
    use super::pool::{AlgorithmArg, HealthCheckArg};
    use super::*;
    use crate::output;
    use clap::ValueEnum;
    use switchyard_proto::v1::{Algorithm, HealthCheckKind};

    fn pool_create(flag: &str, value: &str) -> Result<PoolOpts, clap::Error> {
        let cli = Cli::try_parse_from(["switchyard", "pool", "create", "p", flag, value])?;
        match cli.command {
            Command::Remote(RemoteCmd::Pool(PoolCmd::Create { opts, .. })) => Ok(opts),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Each name parses, and maps to the proto value that prints back as the same name.
    #[test]
    fn every_algorithm_maps_to_its_proto_value() {
        for v in AlgorithmArg::value_variants() {
            let name = v.to_possible_value().expect("no hidden variants").get_name().to_string();
            let opts = pool_create("--algorithm", &name).expect("known name parses");
            assert_eq!(opts.algorithm, Some(*v));
            assert_eq!(output::algorithm(Algorithm::from(*v) as i32), name);
        }
        assert_eq!(AlgorithmArg::value_variants().len(), 5);
    }

    #[test]
    fn every_health_check_maps_to_its_proto_value() {
        for v in HealthCheckArg::value_variants() {
            let name = v.to_possible_value().expect("no hidden variants").get_name().to_string();
            let opts = pool_create("--health-check", &name).expect("known name parses");
            assert_eq!(opts.health_check, Some(*v));
            assert_eq!(output::health_check_kind(HealthCheckKind::from(*v) as i32), name);
        }
        assert_eq!(HealthCheckArg::value_variants().len(), 3);
    }

    /// `dev` adds up to 82 to its first node's port and 373 to its first proxy's: a port
    /// past that would wrap (or panic), so it is refused as it is parsed.
    #[test]
    fn dev_ports_that_would_not_fit_are_refused() {
        let dev = |flag: &str, v: &str| Cli::try_parse_from(["switchyard", "dev", flag, v]).map(|_| ());
        assert!(dev("--base-port", "65453").is_ok());
        assert!(dev("--proxy-port", "65162").is_ok());
        for (flag, v) in
            [("--base-port", "65454"), ("--base-port", "0"), ("--proxy-port", "65163"), ("--proxy-port", "0")]
        {
            assert_eq!(dev(flag, v).unwrap_err().kind(), clap::error::ErrorKind::ValueValidation, "{flag} {v}");
        }
    }

    #[test]
    fn unknown_names_are_clap_errors() {
        for (flag, value) in [("--algorithm", "random"), ("--algorithm", "Round-Robin"), ("--health-check", "http")] {
            let err = pool_create(flag, value).expect_err(value);
            assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue, "{flag} {value}");
        }
    }
}
