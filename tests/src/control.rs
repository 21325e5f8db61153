//! Control-plane nodes: harness-held sockets passed as fd 3, node processes, clusters, and
//! gRPC clients for them.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use switchyard_model::grpc::Channel;
use switchyard_model::grpc::{self, ChannelOptions, ClientTls};
use switchyard_model::AffinitySecret;
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::query_client::QueryClient;
use switchyard_proto::v1::{
    watch_event, AddBackendRequest, Backend, ClusterStatusReply, ClusterStatusRequest, CreatePoolRequest, Pool, Route,
    SetRouteRequest, WatchRequest,
};

use crate::process::{bin, eventually, Proc};

/// A loopback socket for a control-plane node, bound (and listening) by the harness so the
/// node's address is known before it starts and stays reserved until the test ends.
pub fn reserve() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A running `switchyard-control` process; killed (SIGKILL) when dropped. It serves the
/// socket the harness holds (passed as fd 3, `LISTEN_FDS=1`), so a restart gets the same
/// address back.
pub struct ControlNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    /// Environment variables set on every start (an upgrade test plays older releases so).
    pub env: Vec<(String, String)>,
    /// The metrics port it reported (port 0 asked: a new one on every start).
    pub metrics: String,
    listener: TcpListener,
    proc: Proc,
    /// Refuses connections while the process is down: declared after `proc`, so dropped
    /// after it.
    parked: Option<Parked>,
}

impl ControlNode {
    /// Starts node `id` on `listener` (see [`reserve`]) and waits until it serves.
    pub fn spawn(id: u64, listener: TcpListener, data_dir: &Path, extra: &[String]) -> ControlNode {
        Self::spawn_env(id, listener, data_dir, extra, &[])
    }

    /// [`ControlNode::spawn`] with environment variables `env`, kept for restarts.
    pub fn spawn_env(
        id: u64,
        listener: TcpListener,
        data_dir: &Path,
        extra: &[String],
        env: &[(String, String)],
    ) -> ControlNode {
        let addr = listener.local_addr().expect("local addr").to_string();
        let mut args = vec!["--id".to_string(), id.to_string(), "--data-dir".into(), data_dir.display().to_string()];
        // Nodes of parallel tests must not fight over the default metrics port.
        if !extra.iter().any(|a| a == "--metrics-listen") {
            args.extend(["--metrics-listen".to_string(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().cloned());
        let mut n = ControlNode {
            id,
            addr,
            data_dir: data_dir.into(),
            args,
            env: env.to_vec(),
            metrics: String::new(),
            listener,
            proc: Proc::default(),
            parked: None,
        };
        n.start();
        n
    }

    /// (Re)starts the process with the same flags, data dir and socket, and waits until it
    /// serves.
    pub fn start(&mut self) {
        // Stop turning connections away first: from here on they wait for the new process.
        self.parked = None;
        let log_path = self.data_dir.with_extension("log");
        let (log, filter) = match crate::kept_log(&format!("node{}", self.id)) {
            Some(kept) => kept,
            None => (std::fs::File::create(&log_path).expect("log file"), "warn,openraft=error".into()),
        };
        let sock = self.listener.try_clone().expect("clone the node's socket");
        let mut cmd = Command::new(bin("switchyard-control"));
        cmd.args(&self.args)
            .env("RUST_LOG", filter)
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS_FIRST_FD")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(log)
            .fd_mappings(vec![FdMapping { parent_fd: sock.into(), child_fd: 3 }])
            .expect("one fd mapping");
        let what = format!("switchyard-control node {} (log: {})", self.id, log_path.display());
        let line = self.proc.start_reporting(&mut cmd, &what);
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("listening"), "{what}: first line {line:?}");
        assert_eq!(parts.next(), Some(format!("grpc={}", self.addr).as_str()), "{what} serves the socket it was given");
        self.metrics = parts.find_map(|p| p.strip_prefix("metrics=")).unwrap_or_default().to_string();
    }

    /// The node's `/metrics` text (OpenMetrics), if it serves metrics and answers.
    pub async fn scrape(&self) -> Option<String> {
        crate::http_get(&self.metrics, "/metrics").await
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        self.proc.kill9();
        self.park();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = self.proc.terminate();
        self.park();
        status
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Waits up to `timeout` for the process to exit by itself (see [`Proc::wait_exit`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.proc.wait_exit(timeout);
        self.park();
        status
    }

    fn park(&mut self) {
        if self.parked.is_none() {
            self.parked = Some(Parked::new(&self.listener));
        }
    }
}

/// The socket of a node that is down stays bound, so no one else takes its port, and
/// listening, so connections to it would queue unanswered until the client times out (10 s
/// here, 3 s in a proxy) where a dead node refuses them at once. While parked, a thread
/// accepts them and resets them right away, which clients see as a dead node.
struct Parked {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Parked {
    fn new(listener: &TcpListener) -> Parked {
        let l = listener.try_clone().expect("clone the node's socket");
        // Shared with the node process, which sets it too: tokio needs it.
        l.set_nonblocking(true).expect("non-blocking socket");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("register the node's socket");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        r = l.accept() => if let Ok((c, _)) = r {
                            // Linger 0: close with a reset, like a refused connection.
                            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                        },
                    }
                }
            });
        });
        Parked { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The CLI's kind of channel, with a shorter connect timeout: tests dial nodes they just killed.
pub fn channel(addr: &str) -> Channel {
    tls_channel(addr, &ClientTls::cleartext())
}

/// [`channel`] over TLS (or not, as `tls` says).
pub fn tls_channel(addr: &str, tls: &ClientTls) -> Channel {
    let opts = ChannelOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Some(Duration::from_secs(10)),
        ..ChannelOptions::CLI
    };
    grpc::channel(addr, &opts, tls).expect("a valid address")
}

pub fn admin(addr: &str) -> AdminClient<Channel> {
    AdminClient::new(channel(addr))
}

pub fn query(addr: &str) -> QueryClient<Channel> {
    QueryClient::new(channel(addr))
}

pub fn discovery(addr: &str) -> DiscoveryClient<Channel> {
    DiscoveryClient::new(channel(addr))
}

/// Flags that keep cluster tests quick without risking spurious elections on 2 cores.
pub fn test_flags() -> Vec<String> {
    ["--heartbeat-ms", "100", "--election-min-ms", "400", "--election-max-ms", "700", "--write-timeout-ms", "3000"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A cluster of processes sharing one temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, ControlNode>,
    /// How the test talks to the nodes (cleartext unless the cluster was started with TLS).
    pub tls: ClientTls,
}

impl Cluster {
    /// Starts `n` founding members with `extra` flags, and waits for a leader and its
    /// affinity secret.
    pub async fn start(n: u64, extra: &[&str]) -> Cluster {
        Cluster::start_with(n, extra, ClientTls::cleartext()).await
    }

    /// [`Cluster::start`], for nodes the test reaches through `tls`.
    pub async fn start_with(n: u64, extra: &[&str], tls: ClientTls) -> Cluster {
        Cluster::start_env(n, extra, tls, &[]).await
    }

    /// [`Cluster::start_with`], every node started with environment variables `env`.
    pub async fn start_env(n: u64, extra: &[&str], tls: ClientTls, env: &[(String, String)]) -> Cluster {
        Cluster::start_full(n, test_flags(), extra, tls, env, true).await
    }

    /// [`Cluster::start`] returning as soon as the nodes agree on a leader, before the leader
    /// has minted the affinity secret (for tests of what happens first on a new cluster).
    pub async fn start_new(n: u64) -> Cluster {
        Cluster::start_full(n, test_flags(), &[], ClientTls::cleartext(), &[], false).await
    }

    /// [`Cluster::start`] with `timing` in place of [`test_flags`].
    pub async fn start_timed(n: u64, timing: &[&str]) -> Cluster {
        let timing = timing.iter().map(|s| s.to_string()).collect();
        Cluster::start_full(n, timing, &[], ClientTls::cleartext(), &[], true).await
    }

    async fn start_full(
        n: u64,
        mut flags: Vec<String>,
        extra: &[&str],
        tls: ClientTls,
        env: &[(String, String)],
        wait_for_secret: bool,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let sockets: BTreeMap<u64, TcpListener> = (1..=n).map(|i| (i, reserve())).collect();
        let initial = sockets
            .iter()
            .map(|(i, l)| format!("{i}={}", l.local_addr().expect("local addr")))
            .collect::<Vec<_>>()
            .join(",");
        flags.extend(["--initial-cluster".to_string(), initial]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let nodes = sockets
            .into_iter()
            .map(|(i, l)| (i, ControlNode::spawn_env(i, l, &dir.path().join(format!("node-{i}")), &flags, env)))
            .collect();
        let c = Cluster { dir, nodes, tls };
        let leader = c.leader(Duration::from_secs(15)).await;
        // A new leader mints the affinity secret (a change event of its own) soon after it
        // wins: tests start once that has happened, so it never lands inside one. (Over TLS
        // the test holds an admin's certificate, and admins' watches never carry the secret.)
        if wait_for_secret && !c.tls.enabled() {
            affinity_secret(&c.nodes[&leader].addr).await;
        }
        c
    }

    pub fn endpoints(&self) -> String {
        self.nodes.values().filter(|n| n.is_running()).map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// The leader every running node agrees on.
    pub async fn leader(&self, timeout: Duration) -> u64 {
        let running: Vec<&str> = self.nodes.values().filter(|n| n.is_running()).map(|n| n.addr.as_str()).collect();
        eventually("a leader all running nodes agree on", timeout, || async {
            let leader = leader_of(&running, &self.tls).await?;
            self.nodes.get(&leader).is_some_and(|n| n.is_running()).then_some(leader)
        })
        .await
    }

    pub fn node(&mut self, id: u64) -> &mut ControlNode {
        self.nodes.get_mut(&id).expect("node id")
    }
}

/// The leader every node at `addrs` names, if they all name the same one.
pub async fn leader_of(addrs: &[&str], tls: &ClientTls) -> Option<u64> {
    let mut leader = None;
    for a in addrs {
        let s = status_with(a, tls).await?;
        if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
            return None;
        }
        leader = Some(s.leader_id);
    }
    leader
}

/// Waits for the nodes at `addrs` to agree on a leader.
pub async fn agreed_leader(addrs: &[&str], tls: &ClientTls, timeout: Duration) -> u64 {
    eventually("a leader all nodes agree on", timeout, || leader_of(addrs, tls)).await
}

pub async fn status(addr: &str) -> Option<ClusterStatusReply> {
    status_with(addr, &ClientTls::cleartext()).await
}

pub async fn status_with(addr: &str, tls: &ClientTls) -> Option<ClusterStatusReply> {
    QueryClient::new(tls_channel(addr, tls)).cluster_status(ClusterStatusRequest {}).await.ok().map(|r| r.into_inner())
}

/// The cluster's affinity hashing secret, as a proxy receives it on a watch, once the leader
/// has minted it. Tests hash raw session keys with it to look their bindings up.
pub async fn affinity_secret(addr: &str) -> AffinitySecret {
    affinity_secret_with(addr, &ClientTls::cleartext()).await
}

/// [`affinity_secret`] through `tls` (which must carry a proxy's certificate).
pub async fn affinity_secret_with(addr: &str, tls: &ClientTls) -> AffinitySecret {
    eventually("the leader to mint the affinity secret", Duration::from_secs(10), || async {
        let req = WatchRequest { proxy_id: String::new(), from_revision: 0 };
        let mut stream = DiscoveryClient::new(tls_channel(addr, tls)).watch(req).await.ok()?.into_inner();
        match stream.message().await.ok()??.kind? {
            watch_event::Kind::Snapshot(t) => {
                Some(AffinitySecret::from_bytes(&t.affinity_secret)).filter(|s| s.is_set())
            }
            _ => None,
        }
    })
    .await
}

/// Pool `pool` with default settings, `backends` in it at weight 1 and route "all" to it for
/// every host; returns the revision of the route.
pub async fn route_all(addr: &str, pool: &str, backends: &[&str]) -> u64 {
    let mut a = admin(addr);
    let p = Pool { name: pool.into(), ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(p) }).await.expect("create pool");
    for b in backends {
        let b = Backend { pool: pool.into(), address: b.to_string(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(b) }).await.expect("add backend");
    }
    let route = Route { name: "all".into(), pool: pool.into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(route), force: false }).await.expect("set route").into_inner().revision
}
