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

/// A child process that is killed (SIGKILL) when dropped, so a failing test leaves nothing
/// running.
#[derive(Default)]
pub struct Proc(Option<Child>);

impl Proc {
    pub fn set(&mut self, child: Child) {
        assert!(self.0.is_none(), "process already running");
        self.0 = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then its exit status; a process still running 10 s later fails the test.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.0.take().expect("process running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("process {} did not exit within 10s of SIGTERM", c.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `switchyard-control` process; killed (SIGKILL) when dropped.
pub struct ControlNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    proc: Proc,
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
        let mut n = ControlNode { id, addr: addr.into(), data_dir: data_dir.into(), args, proc: Proc::default() };
        n.start();
        n
    }

    /// (Re)starts the process with the same flags and data dir.
    pub fn start(&mut self) {
        let log = std::fs::File::create(self.data_dir.with_extension("log")).expect("log file");
        let child = Command::new(bin("switchyard-control"))
            .args(&self.args)
            .env("RUST_LOG", "warn,openraft=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard-control");
        self.proc.set(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.proc.terminate()
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
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

/// A running `switchyard-proxy` process; killed when dropped.
pub struct ProxyProcess {
    pub ws: String,
    pub admin: String,
    pub args: Vec<String>,
    proc: Proc,
}

impl ProxyProcess {
    /// Starts a proxy on ephemeral ports and reads them back from its first line of output.
    pub fn spawn(control_plane: &str, cache_file: &Path, id: &str) -> ProxyProcess {
        let args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--control-plane".into(),
            control_plane.into(),
            "--cache-file".into(),
            cache_file.display().to_string(),
            "--proxy-id".into(),
            id.into(),
            "--shutdown-grace-ms".into(),
            "1000".into(),
        ];
        let mut p = ProxyProcess { ws: String::new(), admin: String::new(), args, proc: Proc::default() };
        p.start();
        p
    }

    pub fn start(&mut self) {
        use std::io::BufRead;
        let mut child = Command::new(bin("switchyard-proxy"))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn switchyard-proxy");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("proxy output");
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("ws=") {
                self.ws = a.to_string();
            }
            if let Some(a) = part.strip_prefix("admin=") {
                self.admin = a.to_string();
            }
        }
        assert!(!self.ws.is_empty(), "proxy did not report its address: {line:?}");
        // Keep the same ports on restart.
        for (flag, v) in [("--listen", self.ws.clone()), ("--admin", self.admin.clone())] {
            let i = self.args.iter().position(|a| a == flag).expect("flag") + 1;
            self.args[i] = v;
        }
        self.proc.set(child);
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.proc.terminate()
    }

    /// The proxy's `/status` JSON.
    pub async fn status(&self) -> Option<serde_json::Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.admin).await.ok()?;
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8(out).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }

    /// Waits until the proxy runs config at `revision` or later.
    pub async fn wait_revision(&self, revision: u64) {
        eventually(&format!("proxy at revision {revision}"), Duration::from_secs(10), || async {
            let s = self.status().await?;
            (s["config"]["revision"].as_u64()? >= revision).then_some(())
        })
        .await
    }
}

/// A real WebSocket echo server (tokio-tungstenite) that first sends its own name, so tests
/// can tell which backend a connection reached.
pub struct EchoBackend {
    pub addr: String,
    pub name: String,
    pub last_headers: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoBackend {
    pub async fn start(name: &str) -> EchoBackend {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind echo backend");
        let addr = listener.local_addr().expect("addr").to_string();
        let last_headers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (n, h) = (name.to_string(), last_headers.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (n, h) = (n.clone(), h.clone());
                tokio::spawn(async move {
                    let cb =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                         resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                            *h.lock().unwrap() = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect();
                            Ok(resp)
                        };
                    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                        .max_message_size(Some(64 << 20))
                        .max_frame_size(Some(64 << 20));
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(sock, cb, Some(cfg)).await else {
                        return;
                    };
                    if ws.send(Message::text(n.clone())).await.is_err() {
                        return;
                    }
                    while let Some(Ok(m)) = ws.next().await {
                        let echo = matches!(m, Message::Text(_) | Message::Binary(_));
                        if matches!(m, Message::Close(_)) || (echo && ws.send(m).await.is_err()) {
                            break;
                        }
                    }
                });
            }
        });
        EchoBackend { addr, name: name.to_string(), last_headers, task }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a WebSocket client through `proxy` and returns it with the backend's name.
pub async fn ws_connect(proxy: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<(Ws, String)> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{proxy}{path}").into_client_request()?;
    for (k, v) in headers {
        req.headers_mut()
            .insert(tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
    }
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async_with_config(req, Some(cfg), false),
    )
    .await??;
    let hello = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?.ok_or(anyhow::anyhow!("closed"))??;
    Ok((ws, hello.into_text()?.to_string()))
}

/// Sends a message and expects it back unchanged.
pub async fn echo(ws: &mut Ws, m: tokio_tungstenite::tungstenite::Message) -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    ws.send(m.clone()).await?;
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?.ok_or(anyhow::anyhow!("closed"))??;
    anyhow::ensure!(back == m, "echo mismatch");
    Ok(())
}

/// `switchyard demo-backend` in its own process, so it can be killed and restarted for real.
pub struct DemoBackend {
    pub addr: String,
    pub name: String,
    proc: Proc,
}

impl DemoBackend {
    pub fn spawn(name: &str) -> DemoBackend {
        let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        let mut b = DemoBackend { addr, name: name.into(), proc: Proc::default() };
        b.start();
        b
    }

    /// Starts (again) on the same address.
    pub fn start(&mut self) {
        use std::io::BufRead;
        let mut child = Command::new(bin("switchyard"))
            .args(["demo-backend", "--listen", &self.addr, "--name", &self.name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn demo backend");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("backend output");
        assert!(line.contains(&self.addr), "demo backend did not start: {line:?}");
        self.proc.set(child);
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }
}
