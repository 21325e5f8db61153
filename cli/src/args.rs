//! The command line: `switchyard [--endpoints A,B,C] [--output table|json] <noun> <verb>`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Print every change as the cluster applies it.
    Watch {
        /// Resume after this revision instead of starting with the whole state.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Run Switchyard on this machine: 3 control-plane nodes, 2 proxies and 3 demo echo
    /// backends, in this process, on loopback.
    Dev(DevArgs),
    /// A demo WebSocket echo backend (greets with its name, then echoes).
    DemoBackend {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "demo")]
        name: String,
        /// Do not send the greeting (pure echo, for benchmarks).
        #[arg(long)]
        no_greeting: bool,
    },
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
    Promote { id: u64 },
    /// Remove a node (voter or learner) from the cluster.
    RemoveNode { id: u64 },
}

#[derive(Args, Debug, Default, Clone)]
pub struct PoolOpts {
    /// round-robin, least-connections, ip-hash, consistent-hash or p2c.
    #[arg(long, value_parser = ["round-robin", "least-connections", "ip-hash", "consistent-hash", "p2c"])]
    pub algorithm: Option<String>,
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
    /// Active health check: none, tcp or websocket.
    #[arg(long, value_parser = ["none", "tcp", "websocket"])]
    pub health_check: Option<String>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_timeout: Option<Duration>,
    #[arg(long)]
    pub health_rise: Option<u32>,
    #[arg(long)]
    pub health_fall: Option<u32>,
    /// Request path for websocket health checks.
    #[arg(long)]
    pub health_path: Option<String>,
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
    },
    Delete {
        name: String,
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
    List {
        pool: Option<String>,
    },
    SetWeight {
        pool: String,
        address: String,
        weight: u32,
    },
    /// Take no new sessions; close existing ones over the pool's drain window.
    Drain {
        pool: String,
        address: String,
    },
    /// Back to active.
    Enable {
        pool: String,
        address: String,
    },
    /// No new sessions, and existing connections are closed.
    Disable {
        pool: String,
        address: String,
    },
    Remove {
        pool: String,
        address: String,
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
    },
    List,
    Delete {
        name: String,
    },
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
    Delete {
        pool: String,
        key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SettingsCmd {
    Get,
    /// Change only the options given.
    Set {
        #[arg(long, value_parser = humantime::parse_duration)]
        handshake_timeout: Option<Duration>,
        #[arg(long)]
        max_header_bytes: Option<u32>,
        #[arg(long)]
        max_message_bytes: Option<u64>,
        /// 0s turns it off.
        #[arg(long, value_parser = humantime::parse_duration)]
        idle_timeout: Option<Duration>,
        /// 0s turns it off.
        #[arg(long, value_parser = humantime::parse_duration)]
        ping_interval: Option<Duration>,
        #[arg(long)]
        max_connections_per_ip_per_sec: Option<u32>,
        #[arg(long)]
        max_handshakes_per_sec: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProxyCmd {
    List,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// First control-plane port; the three nodes take this one and the next two.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// First proxy's WebSocket port (admin on the next port); the second proxy takes +10.
    #[arg(long, default_value_t = 8080)]
    pub proxy_port: u16,
    /// Keep data here instead of a temporary directory removed on exit.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}
