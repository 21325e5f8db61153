//! Harness for end-to-end tests: real `switchyard-control` processes on real sockets with
//! real sled dirs, killed by guards so a failing test leaves nothing behind.
//!
//! No port is picked, released and rebound: every process binds port 0 and reports the port
//! it got, except control-plane nodes, which must know each other's addresses before they
//! start. For those the harness binds the socket itself and hands it over as fd 3 (systemd
//! socket activation), keeping it for the test's whole life so a restarted node gets it back.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
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

/// The packages whose binaries the tests run.
const BIN_PACKAGES: [&str; 3] = ["switchyard-control-plane", "switchyard-proxy", "switchyard-cli"];

/// A workspace binary, built by Cargo for this test process: the first call runs
/// `$CARGO build --bins` for the packages the tests run, with the test binary's own profile
/// (a no-op when they are fresh), and takes the executables' paths from Cargo's report.
pub fn bin(name: &str) -> PathBuf {
    static BINS: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    let bins = BINS.get_or_init(build_bins);
    match bins.get(name) {
        Some(p) => p.clone(),
        None => panic!("Cargo built no binary {name:?}, only {:?}", bins.keys().collect::<Vec<_>>()),
    }
}

fn build_bins() -> BTreeMap<String, PathBuf> {
    // Cargo sets CARGO for the tests it runs; the test binary lives in target/PROFILE-DIR/deps.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let exe = std::env::current_exe().expect("test binary path");
    let profile = match exe.parent().and_then(Path::parent).and_then(Path::file_name).and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(dir) => dir,
    };
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--bins", "--message-format=json-render-diagnostics", "--profile", profile]);
    for p in BIN_PACKAGES {
        cmd.args(["-p", p]);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
    assert!(
        out.status.success(),
        "building the binaries the tests run failed ({cmd:?}: {}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bins = BTreeMap::new();
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        if let (Some("compiler-artifact"), Some(name), Some(exe)) =
            (msg["reason"].as_str(), msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            bins.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    bins
}

/// A loopback address where nothing listens and, while this lives, nothing else can bind: a
/// bound socket that never listens, so connections to it are refused.
pub struct ClosedPort {
    pub addr: String,
    _sock: socket2::Socket,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind 127.0.0.1:0");
        let addr = sock.local_addr().expect("local addr").as_socket().expect("inet address").to_string();
        ClosedPort { addr, _sock: sock }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
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

    /// Spawns `cmd` with its stdout piped and returns the first line it prints (processes
    /// report the addresses they bound there). A process that exits or stays silent for 30 s
    /// fails the test; the process is this guard's from the moment it is spawned.
    pub fn start_reporting(&mut self, cmd: &mut Command, what: &str) -> String {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let out = child.stdout.take().expect("stdout");
        self.set(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if !line.is_empty() => line.trim_end().to_string(),
            Ok(_) => panic!("{what} exited without reporting its address"),
            Err(_) => panic!("{what} did not report its address within 30s"),
        }
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
    listener: TcpListener,
    proc: Proc,
    /// Refuses connections while the process is down: declared after `proc`, so dropped
    /// after it.
    parked: Option<Parked>,
}

impl ControlNode {
    /// Starts node `id` on `listener` (see [`reserve`]) and waits until it serves.
    pub fn spawn(id: u64, listener: TcpListener, data_dir: &Path, extra: &[String]) -> ControlNode {
        let addr = listener.local_addr().expect("local addr").to_string();
        let mut args = vec!["--id".to_string(), id.to_string(), "--data-dir".into(), data_dir.display().to_string()];
        args.extend(extra.iter().cloned());
        let mut n =
            ControlNode { id, addr, data_dir: data_dir.into(), args, listener, proc: Proc::default(), parked: None };
        n.start();
        n
    }

    /// (Re)starts the process with the same flags, data dir and socket, and waits until it
    /// serves.
    pub fn start(&mut self) {
        // Stop turning connections away first: from here on they wait for the new process.
        self.parked = None;
        let log_path = self.data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let sock = self.listener.try_clone().expect("clone the node's socket");
        let mut cmd = Command::new(bin("switchyard-control"));
        cmd.args(&self.args)
            .env("RUST_LOG", "warn,openraft=error")
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS_FIRST_FD")
            .stderr(log)
            .fd_mappings(vec![FdMapping { parent_fd: sock.into(), child_fd: 3 }])
            .expect("one fd mapping");
        let what = format!("switchyard-control node {} (log: {})", self.id, log_path.display());
        let line = self.proc.start_reporting(&mut cmd, &what);
        assert_eq!(line, format!("listening grpc={}", self.addr), "{what} serves the socket it was given");
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
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Parked {
    fn new(listener: &TcpListener) -> Parked {
        let l = listener.try_clone().expect("clone the node's socket");
        // Shared with the node process, which sets it too: tokio needs it.
        l.set_nonblocking(true).expect("non-blocking socket");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        // Linger 0: close with a reset, like a refused connection.
                        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Parked { stop, thread: Some(thread) }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
        let sockets: BTreeMap<u64, TcpListener> = (1..=n).map(|i| (i, reserve())).collect();
        let initial = sockets
            .iter()
            .map(|(i, l)| format!("{i}={}", l.local_addr().expect("local addr")))
            .collect::<Vec<_>>()
            .join(",");
        let mut flags = test_flags();
        flags.extend(["--initial-cluster".to_string(), initial]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let nodes = sockets
            .into_iter()
            .map(|(i, l)| (i, ControlNode::spawn(i, l, &dir.path().join(format!("node-{i}")), &flags)))
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

    /// (Re)starts the proxy; a restart asks for the ports it reported the first time.
    pub fn start(&mut self) {
        let mut cmd = Command::new(bin("switchyard-proxy"));
        cmd.args(&self.args).env("RUST_LOG", "warn").stderr(Stdio::null());
        let line = self.proc.start_reporting(&mut cmd, "switchyard-proxy");
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
    /// Starts a backend on an ephemeral port and reads it back from its first line of output.
    pub fn spawn(name: &str) -> DemoBackend {
        let mut b = DemoBackend { addr: "127.0.0.1:0".into(), name: name.into(), proc: Proc::default() };
        b.start();
        b
    }

    /// Starts (again) on the same address: the port reported the first time.
    pub fn start(&mut self) {
        let mut cmd = Command::new(bin("switchyard"));
        cmd.args(["demo-backend", "--listen", &self.addr, "--name", &self.name]).stderr(Stdio::null());
        let line = self.proc.start_reporting(&mut cmd, "switchyard demo-backend");
        // `demo backend NAME on ws://ADDR`
        let addr = line.rsplit_once("ws://").map(|(_, a)| a.to_string()).unwrap_or_default();
        assert!(
            addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() != 0),
            "demo backend did not report the address it bound: {line:?}"
        );
        assert!(self.addr.ends_with(":0") || self.addr == addr, "restarted on {addr}, not {}", self.addr);
        self.addr = addr;
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }
}
