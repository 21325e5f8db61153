//! Harness for end-to-end tests: real `switchyard-control` processes on real sockets with
//! real sled dirs, killed by guards so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::query_client::QueryClient;
use switchyard_proto::v1::{ClusterStatusReply, ClusterStatusRequest};
use tonic::transport::{Channel, Endpoint};

/// Cluster tests elect leaders on timers; run them one at a time so two clusters do not
/// starve each other of the machine's two cores.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

/// A workspace binary, built by `cargo test --workspace` (or `cargo build --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

/// Free loopback ports: bound to port 0, read back, released for the nodes to take.
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0")).collect();
    ls.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `switchyard-control` process; killed (SIGKILL) when dropped.
pub struct ControlNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
}

impl ControlNode {
    pub fn spawn(id: u64, addr: &str, data_dir: &Path, extra: &[String]) -> ControlNode {
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--listen".into(),
            addr.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let mut n = ControlNode { id, addr: addr.into(), data_dir: data_dir.into(), args, child: None };
        n.start();
        n
    }

    /// (Re)starts the process with the same flags and data dir.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = std::fs::File::create(self.data_dir.with_extension("log")).expect("log file");
        let child = Command::new(bin("switchyard-control"))
            .args(&self.args)
            .env("RUST_LOG", "warn,openraft=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard-control");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("node {} did not exit within 10s of SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn channel(&self) -> Channel {
        channel(&self.addr)
    }
}

impl Drop for ControlNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
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
}

impl Cluster {
    /// Starts `n` founding members with `extra` flags, and waits for a leader.
    pub async fn start(n: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(n as usize);
        let addrs: BTreeMap<u64, String> =
            (1..=n).map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1]))).collect();
        let initial = addrs.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",");
        let mut flags = test_flags();
        flags.extend(["--initial-cluster".to_string(), initial]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let nodes = addrs
            .iter()
            .map(|(i, a)| (*i, ControlNode::spawn(*i, a, &dir.path().join(format!("node-{i}")), &flags)))
            .collect();
        let c = Cluster { dir, nodes };
        c.leader(Duration::from_secs(15)).await;
        c
    }

    pub fn endpoints(&self) -> String {
        self.nodes.values().filter(|n| n.is_running()).map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// The leader every running node agrees on.
    pub async fn leader(&self, timeout: Duration) -> u64 {
        eventually("a leader all running nodes agree on", timeout, || async {
            let mut leader = None;
            for n in self.nodes.values().filter(|n| n.is_running()) {
                let s = status(&n.addr).await?;
                if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                    return None;
                }
                leader = Some(s.leader_id);
            }
            leader.filter(|l| self.nodes.get(l).is_some_and(|n| n.is_running()))
        })
        .await
    }

    pub fn node(&mut self, id: u64) -> &mut ControlNode {
        self.nodes.get_mut(&id).expect("node id")
    }
}

pub async fn status(addr: &str) -> Option<ClusterStatusReply> {
    query(addr).cluster_status(ClusterStatusRequest {}).await.ok().map(|r| r.into_inner())
}
