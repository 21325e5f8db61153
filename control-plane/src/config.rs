//! A node's configuration ([`NodeConfig`], with its named defaults), and how
//! `switchyard-control` builds it: flags, or the same keys in a TOML file (`--config`); a flag
//! given on the command line wins over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use switchyard_model::grpc::ClientTls;
use switchyard_model::tls::{Role, TlsFiles};

use crate::error::NodeError;
use crate::types::NodeId;

/// Named defaults. Elections are called by [`crate::node::election`]: a follower stands once
/// its leader has been silent for `election_max` plus a random part of
/// `election_min..election_max` (360-480 ms here, seven to ten missed heartbeats, so a busy
/// machine does not see spurious elections), or, when the leader's process is gone (its
/// listening port refuses), as soon as the other voters' lease (`election_min`) has run out.
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
pub const DEFAULT_ELECTION_MIN_MS: u64 = 120;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 240;
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
pub const DEFAULT_KEEP_LOGS: u64 = 1_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 5_000;
/// The most the pools, backends and routes may take in a config snapshot by default: 64 MiB,
/// about a million plain backends, a quarter of what a proxy takes in one message
/// ([`switchyard_model::limits::MAX_GRPC_MESSAGE`]). Session bindings take the rest, at most
/// [`crate::sessions::MAX_SESSION_BYTES`], so the most this allows and they fit together.
pub const DEFAULT_MAX_CONFIG_BYTES: u64 = 64 << 20;
/// The range `--max-config-bytes` takes: half a proxy's message at most.
pub const MAX_CONFIG_BYTES_RANGE: std::ops::RangeInclusive<u64> =
    (64 << 10)..=(switchyard_model::limits::MAX_GRPC_MESSAGE as u64 / 2);
/// The longest heartbeat or election timeout a node takes (ms).
pub const MAX_TIMING_MS: u64 = 60_000;
/// The longest write timeout a node takes.
pub const MAX_WRITE_TIMEOUT: Duration = Duration::from_secs(600);
/// How many election timeouts (`election_max`) a node may go without a leader, or without
/// being a member, before it stops serving watches: long enough to ride out an ordinary
/// election, short enough that a cut-off node's watchers move on within seconds.
pub const UNSERVING_AFTER_ELECTIONS: u32 = 3;

/// Everything one node needs, validated by [`NodeConfig::validate`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// The address peers and clients use to reach this node; defaults to this node's entry in
    /// `initial_cluster`, else `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Founding members (id → address). Empty with `join` = wait to be added by the CLI.
    pub initial_cluster: BTreeMap<NodeId, String>,
    pub join: bool,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Take a snapshot after this many log entries since the last one (and, once snapshots
    /// are large, not before the log since the last one is half its size: see
    /// [`crate::node::compaction`]).
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_logs: u64,
    /// How long a write may wait for a quorum before the caller gets UNAVAILABLE.
    pub write_timeout: Duration,
    /// Writes that would grow the config's pools, backends and routes past this many bytes
    /// (as encoded for proxies) are refused with RESOURCE_EXHAUSTED: the limit travels with
    /// each write and is checked as it applies (`state::Guard::Room`).
    pub max_config_bytes: u64,
    /// The cluster CA and this node's certificate (role `node`): with them the node serves
    /// only TLS and calls its peers with its certificate.
    pub tls: TlsFiles,
    /// Serve cleartext on a routable address. Without TLS a node otherwise listens only on
    /// loopback, where nothing outside the machine can reach it.
    pub insecure: bool,
    /// Where to serve Prometheus metrics over plain HTTP; `None`: not at all.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `metrics_listen` is the default rather than asked for: a default port already
    /// taken (several nodes on one machine, an older script) is then only a warning.
    pub metrics_listen_default: bool,
}

impl NodeConfig {
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> Self {
        NodeConfig {
            id,
            listen,
            advertise: None,
            data_dir,
            initial_cluster: BTreeMap::new(),
            join: false,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_min_ms: DEFAULT_ELECTION_MIN_MS,
            election_max_ms: DEFAULT_ELECTION_MAX_MS,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            keep_logs: DEFAULT_KEEP_LOGS,
            write_timeout: Duration::from_millis(DEFAULT_WRITE_TIMEOUT_MS),
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
            tls: TlsFiles::default(),
            insecure: false,
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().expect("default is valid")),
            metrics_listen_default: true,
        }
    }

    /// How this node calls its peers: over TLS with its own certificate when it has one.
    pub fn peer_tls(&self) -> Result<ClientTls, NodeError> {
        ClientTls::from_files(&self.tls).map_err(|e| NodeError::Config(e.to_string()))
    }

    /// How this node's transport is secured, as `cluster status` and the startup log say it.
    pub fn security(&self) -> Security {
        match (self.tls.enabled(), self.insecure) {
            (true, _) => Security::Mtls,
            (false, false) => Security::Loopback,
            (false, true) => Security::Insecure,
        }
    }

    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |m: String| Err(NodeError::Config(m));
        if self.id == 0 {
            return bad("node id must be 1 or more".into());
        }
        if !self.initial_cluster.is_empty() && !self.initial_cluster.contains_key(&self.id) {
            return bad(format!("--initial-cluster does not name this node's id {}", self.id));
        }
        if self.join && !self.initial_cluster.is_empty() {
            return bad("--join and --initial-cluster are exclusive: a joining node is added with `switchyard cluster add-node`".into());
        }
        if self.tls.enabled() {
            if self.insecure {
                return bad("--insecure is for a node without TLS; this one has --tls-* files".into());
            }
            self.tls.check_for(Role::Node).map_err(|e| NodeError::Config(e.to_string()))?;
        } else if !self.insecure && !self.listen.ip().is_loopback() {
            return bad(format!(
                "--listen {} is not a loopback address and this node has no TLS: give it --tls-ca, --tls-cert \
                 and --tls-key (see `switchyard certs`), or --insecure to serve cleartext anyway",
                self.listen
            ));
        }
        // Bounded first, so the products below and the leader's quorum check cannot
        // overflow (etcd caps its election timeout at 50 s).
        if self.heartbeat_ms > MAX_TIMING_MS
            || self.election_min_ms > MAX_TIMING_MS
            || self.election_max_ms > MAX_TIMING_MS
        {
            return bad(format!("--heartbeat-ms, --election-min-ms and --election-max-ms are at most {MAX_TIMING_MS}"));
        }
        if self.heartbeat_ms == 0
            || self.election_min_ms <= self.heartbeat_ms * 2
            || self.election_max_ms <= self.election_min_ms
        {
            return bad("need 0 < heartbeat < election-min/2 and election-min < election-max".into());
        }
        if self.write_timeout.is_zero() || self.write_timeout > MAX_WRITE_TIMEOUT {
            return bad(format!(
                "--write-timeout-ms must be 1 to {} (every write would time out at 0)",
                MAX_WRITE_TIMEOUT.as_millis()
            ));
        }
        if self.snapshot_every == 0 {
            return bad("--snapshot-every must be 1 or more".into());
        }
        if !MAX_CONFIG_BYTES_RANGE.contains(&self.max_config_bytes) {
            return bad(format!(
                "--max-config-bytes must be {} to {}: every proxy receives the whole config in one message of at most {} \
                 bytes, session bindings included",
                MAX_CONFIG_BYTES_RANGE.start(),
                MAX_CONFIG_BYTES_RANGE.end(),
                switchyard_model::limits::MAX_GRPC_MESSAGE
            ));
        }
        Ok(())
    }

    /// openraft's `heartbeat_interval`, which is not our heartbeat: openraft makes it the
    /// deadline of every AppendEntries (and read-index round), so at 50 ms a 30 ms link or a
    /// slow fsync would stop all commits. Heartbeats go out every `heartbeat_ms` from
    /// [`crate::node::heartbeat`] instead, and this is three quarters of election-min
    /// (openraft requires less than its election timeout).
    pub fn replication_deadline_ms(&self) -> u64 {
        (self.election_min_ms * 3 / 4).max(self.heartbeat_ms + 1)
    }

    /// The leader lease: how long a voter that heard from its leader refuses every candidate.
    /// It is the least time in which a dead leader can be replaced.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.openraft_election_ms().1)
    }

    /// openraft's `election_timeout_min` and `_max`. Its timer is off, so only the max counts:
    /// openraft takes it as the lease. The min only has to sit between the deadline and it.
    pub fn openraft_election_ms(&self) -> (u64, u64) {
        let min = self.replication_deadline_ms() + 1;
        (min, self.election_min_ms.max(min + 1))
    }

    /// How long this node must have been without a leader, or not a member, before it ends
    /// its watch streams ([`UNSERVING_AFTER_ELECTIONS`] election timeouts).
    pub fn unserving_after(&self) -> Duration {
        Duration::from_millis(self.election_max_ms) * UNSERVING_AFTER_ELECTIONS
    }

    /// How long a follower may go without hearing from its leader before it counts as having
    /// none: the leader's lease, after which openraft lets it call an election.
    pub fn leader_silence(&self) -> Duration {
        Duration::from_millis(self.election_max_ms)
    }

    /// How callers without a credential are treated: refused on a TLS node; trusted as admin
    /// and peer without TLS (loopback only, or `--insecure`), since there is nothing to check.
    pub fn auth_mode(&self) -> crate::auth::Auth {
        match self.security() {
            Security::Mtls => crate::auth::Auth::Required,
            Security::Loopback | Security::Insecure => crate::auth::Auth::LoopbackTrusted,
        }
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise
            .clone()
            .or_else(|| self.initial_cluster.get(&self.id).cloned())
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// How a node's transport is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// mTLS: every caller shows a certificate from the cluster CA or a bearer token.
    Mtls,
    /// Cleartext on loopback only: anyone on this machine may call it.
    Loopback,
    /// Cleartext on a routable address, by `--insecure`.
    Insecure,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Mtls => "mtls",
            Security::Loopback => "cleartext-loopback",
            Security::Insecure => "INSECURE-cleartext",
        }
    }
}

/// Command-line flags of `switchyard-control`.
#[derive(Debug, Default, clap::Parser)]
#[command(name = "switchyard-control", version = switchyard_model::version::build_line(), about = "Switchyard control-plane node")]
pub struct Args {
    /// TOML file with any of the keys below (e.g. `id = 1`, `data-dir = "/var/lib/sy"`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id (1 or more), unique in the cluster and stable across restarts.
    #[arg(long)]
    pub id: Option<NodeId>,
    /// Address to serve gRPC on (admin, query, discovery, raft) [default: 127.0.0.1:7400].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address others use to reach this node, if not the one in --initial-cluster or --listen.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory for the sled database [default: ./switchyard-data-ID].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Founding members, `1=host:port,2=host:port,3=host:port`. The lowest id initializes an
    /// empty cluster once. Without it (and without --join) the node forms a one-node cluster.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Start empty and wait to be added with `switchyard cluster add-node`.
    #[arg(long)]
    pub join: bool,
    /// How often a leader reaches every follower [default: 50].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// The leader lease: a voter that heard from its leader this lately votes for no one else;
    /// a leader whose process is gone is replaced about this long after it last spoke
    /// [default: 120].
    #[arg(long)]
    pub election_min_ms: Option<u64>,
    /// A follower whose leader has been silent for this plus a random part of
    /// election-min..election-max stands for election [default: 240].
    #[arg(long)]
    pub election_max_ms: Option<u64>,
    /// Snapshot after this many log entries (once the snapshot is over 16 MiB, also not before
    /// the log since it is half its size).
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot.
    #[arg(long)]
    pub keep_logs: Option<u64>,
    /// How long a write waits for a quorum before answering UNAVAILABLE.
    #[arg(long)]
    pub write_timeout_ms: Option<u64>,
    /// Refuse writes that would grow the pools, backends and routes past this many bytes (as
    /// sent to proxies, all in one message); set the same on every node [default: 67108864,
    /// 64 MiB].
    #[arg(long)]
    pub max_config_bytes: Option<u64>,
    /// The cluster CA certificate (PEM): peers, proxies and the CLI must show certificates it
    /// signed, or a bearer token.
    #[arg(long, env = "SWITCHYARD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), issued with `switchyard certs issue --role node`.
    #[arg(long, env = "SWITCHYARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "SWITCHYARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve cleartext on a non-loopback address: anyone who can reach the port can change the
    /// cluster. For trusted networks only.
    #[arg(long)]
    pub insecure: bool,
    /// Address to serve Prometheus metrics on (`GET /metrics`, plain HTTP, no credentials), or
    /// `off` [default: 127.0.0.1:7480]. Port 0 picks a free port, printed at start.
    #[arg(long, value_name = "ADDR|off")]
    pub metrics_listen: Option<String>,
    /// Make a NEW cluster from a backup (`switchyard snapshot save`): fill this node's empty
    /// data dir with the backup's state and the members of --initial-cluster, then start.
    /// Every founding member restores the same file. Start later runs without it.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    id: Option<NodeId>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    initial_cluster: Option<String>,
    join: Option<bool>,
    heartbeat_ms: Option<u64>,
    election_min_ms: Option<u64>,
    election_max_ms: Option<u64>,
    snapshot_every: Option<u64>,
    keep_logs: Option<u64>,
    write_timeout_ms: Option<u64>,
    max_config_bytes: Option<u64>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    insecure: Option<bool>,
    metrics_listen: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7480";

/// Parses `--metrics-listen`: an address, or `off`.
pub fn parse_metrics_listen(s: &str) -> Result<Option<SocketAddr>, NodeError> {
    match s.trim() {
        "off" | "none" | "" => Ok(None),
        a => a
            .parse()
            .map(Some)
            .map_err(|_| NodeError::Config(format!("--metrics-listen {a:?} is not an address (host:port) or `off`"))),
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, String>, NodeError> {
    let mut out: BTreeMap<NodeId, String> = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| NodeError::Config(format!("--initial-cluster entry {part:?} is not ID=HOST:PORT")))?;
        let id: NodeId =
            id.trim().parse().map_err(|_| NodeError::Config(format!("--initial-cluster: {id:?} is not a node id")))?;
        let addr = addr.trim();
        crate::validate::address(addr)
            .map_err(|_| NodeError::Config(format!("--initial-cluster: {addr:?} is not host:port")))?;
        if let Some((other, _)) = out.iter().find(|(_, a)| a.eq_ignore_ascii_case(addr)) {
            return Err(NodeError::Config(format!(
                "--initial-cluster gives nodes {other} and {id} one address, {addr}"
            )));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(NodeError::Config(format!("--initial-cluster names node {id} twice")));
        }
    }
    Ok(out)
}

impl Args {
    /// Merges the file (if any) under the flags and validates the result.
    pub fn into_config(self) -> Result<NodeConfig, NodeError> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| NodeError::Config(format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| NodeError::Config(format!("{}: {e}", p.display())))?
            }
        };
        let id = self.id.or(file.id).ok_or_else(|| NodeError::Config("--id is required".into()))?;
        let listen = match self.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN.parse().expect("default is valid"),
        };
        let data_dir =
            self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(format!("switchyard-data-{id}")));
        let mut c = NodeConfig::new(id, listen, data_dir);
        c.advertise = self.advertise.or(file.advertise);
        if let Some(ic) = self.initial_cluster.or(file.initial_cluster) {
            c.initial_cluster = parse_initial_cluster(&ic)?;
        }
        c.join = self.join || file.join.unwrap_or(false);
        c.heartbeat_ms = self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(c.heartbeat_ms);
        c.election_min_ms = self.election_min_ms.or(file.election_min_ms).unwrap_or(c.election_min_ms);
        c.election_max_ms = self.election_max_ms.or(file.election_max_ms).unwrap_or(c.election_max_ms);
        c.snapshot_every = self.snapshot_every.or(file.snapshot_every).unwrap_or(c.snapshot_every);
        c.keep_logs = self.keep_logs.or(file.keep_logs).unwrap_or(c.keep_logs);
        if let Some(ms) = self.write_timeout_ms.or(file.write_timeout_ms) {
            c.write_timeout = Duration::from_millis(ms);
        }
        c.max_config_bytes = self.max_config_bytes.or(file.max_config_bytes).unwrap_or(c.max_config_bytes);
        c.tls = TlsFiles {
            ca: self.tls_ca.or(file.tls_ca),
            cert: self.tls_cert.or(file.tls_cert),
            key: self.tls_key.or(file.tls_key),
        };
        c.insecure = self.insecure || file.insecure.unwrap_or(false);
        if let Some(m) = self.metrics_listen.or(file.metrics_listen) {
            c.metrics_listen = parse_metrics_listen(&m)?;
            c.metrics_listen_default = false;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests;
