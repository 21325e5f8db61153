//! Processes and binaries: building the workspace's binaries through Cargo, a child
//! process guard that kills on drop, and polling with a deadline.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// Runs one of the project's binaries to its exit, which must come within 20 s (it is meant
/// to refuse to start), and returns whether it succeeded and what it wrote to stderr.
pub fn run_to_exit(bin_name: &str, args: &[String]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("stderr.log");
    let mut proc = Proc::default();
    proc.set(
        Command::new(bin(bin_name))
            .args(args)
            .env("RUST_LOG", "warn,openraft=error")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin_name}: {e}")),
    );
    let status = proc.wait_exit(Duration::from_secs(20));
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), stderr),
        None => panic!("{bin_name} still ran after 20 s; it should have refused to start:\n{stderr}"),
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

    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
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

    /// Waits up to `timeout` for the process to exit by itself and returns its status; one
    /// still running then is killed (SIGKILL) and `None` is returned.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.0.take().expect("process running");
        let pid = c.id().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        // The child is reaped only by this thread, so its pid stays valid for a kill below.
        std::thread::spawn(move || {
            let _ = tx.send(c.wait());
        });
        match rx.recv_timeout(timeout) {
            Ok(s) => Some(s.expect("wait")),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                let _ = rx.recv();
                None
            }
        }
    }

    /// SIGTERM, then its exit status; a process still running 10 s later fails the test.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.as_ref().expect("process running").id();
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        self.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("process {pid} did not exit within 10s of SIGTERM"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The body of a plain HTTP/1.1 `GET path` to `addr`, if it answers 200.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8(out).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Where a child's log goes when `SWITCHYARD_TEST_LOGS=DIR` is set (for chasing a rare
/// failure): `DIR/NAME-N.log`, kept after the test, with `SWITCHYARD_TEST_RUST_LOG` (default:
/// debug, with openraft and the transport and storage crates at info) as the filter. Unset,
/// `None`.
pub fn kept_log(name: &str) -> Option<(std::fs::File, String)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(std::env::var_os("SWITCHYARD_TEST_LOGS")?);
    std::fs::create_dir_all(&dir).expect("SWITCHYARD_TEST_LOGS dir");
    let path = dir.join(format!("{name}-{}.log", N.fetch_add(1, Ordering::Relaxed)));
    let filter = std::env::var("SWITCHYARD_TEST_RUST_LOG")
        .unwrap_or_else(|_| "debug,openraft=info,h2=info,hyper=info,tower=info,rustls=info,sled=info".into());
    Some((std::fs::File::create(&path).expect("kept log file"), filter))
}
