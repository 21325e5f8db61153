//! The data plane under test: proxy processes, echo backends (in-process and as
//! `switchyard demo-backend`), and WebSocket clients.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{bin, eventually, Proc};

/// A running `switchyard-proxy` process; killed when dropped.
pub struct ProxyProcess {
    pub ws: String,
    /// The wss listener's address, when the proxy was given `--wss-listen`.
    pub wss: String,
    pub admin: String,
    pub args: Vec<String>,
    /// The ws listening socket the harness holds and hands over as fd 3, if it does.
    pub socket: Option<std::net::TcpListener>,
    /// A descriptor limit to start it under (with `prlimit`), if any.
    pub nofile: Option<u64>,
    proc: Proc,
}

impl ProxyProcess {
    /// Starts a proxy that serves ws on `socket`, held by the harness and passed as fd 3
    /// (`LISTEN_FDS=1`), as a supervisor does: two processes given the same socket share it,
    /// so a new one can take over an address while the old one drains.
    /// Its admin port is `admin` (`127.0.0.1:0` for any): a new process given the one it
    /// replaces binds beside it, as it binds that process's wss port.
    pub fn spawn_on(
        socket: &std::net::TcpListener,
        control_plane: &str,
        cache_file: &Path,
        id: &str,
        admin: &str,
    ) -> ProxyProcess {
        let args = [
            "--admin",
            admin,
            "--control-plane",
            control_plane,
            "--cache-file",
            &cache_file.display().to_string(),
            "--proxy-id",
            id,
            "--shutdown-grace-ms",
            "1000",
        ]
        .map(String::from)
        .to_vec();
        let socket = Some(socket.try_clone().expect("clone the proxy's socket"));
        let mut p = ProxyProcess {
            ws: String::new(),
            wss: String::new(),
            admin: String::new(),
            args,
            socket,
            nofile: None,
            proc: Proc::default(),
        };
        p.start();
        p
    }

    /// Starts a proxy on ephemeral ports and reads them back from its first line of output.
    pub fn spawn(control_plane: &str, cache_file: &Path, id: &str) -> ProxyProcess {
        Self::spawn_with(control_plane, cache_file, id, &[])
    }

    /// As [`Self::spawn`], with more flags (`--wss-listen 127.0.0.1:0 --wss-cert ...`).
    pub fn spawn_with(control_plane: &str, cache_file: &Path, id: &str, extra: &[String]) -> ProxyProcess {
        Self::launch(control_plane, cache_file, id, extra, None)
    }

    /// [`ProxyProcess::spawn_with`] under a descriptor limit of `nofile`, soft and hard.
    pub fn spawn_limited(
        control_plane: &str,
        cache_file: &Path,
        id: &str,
        extra: &[String],
        nofile: u64,
    ) -> ProxyProcess {
        Self::launch(control_plane, cache_file, id, extra, Some(nofile))
    }

    fn launch(control_plane: &str, cache_file: &Path, id: &str, extra: &[String], nofile: Option<u64>) -> ProxyProcess {
        // With `--wss-listen` among `extra`, there is a ws listener only if `extra` asks.
        let ws = !extra.iter().any(|a| a == "--wss-listen");
        let mut args: Vec<String> = if ws { vec!["--listen".into(), "127.0.0.1:0".into()] } else { Vec::new() };
        args.extend([
            "--admin".to_string(),
            "127.0.0.1:0".into(),
            "--control-plane".into(),
            control_plane.into(),
            "--cache-file".into(),
            cache_file.display().to_string(),
            "--proxy-id".into(),
            id.into(),
            "--shutdown-grace-ms".into(),
            "1000".into(),
        ]);
        args.extend_from_slice(extra);
        let mut p = ProxyProcess {
            ws: String::new(),
            wss: String::new(),
            admin: String::new(),
            args,
            socket: None,
            nofile,
            proc: Proc::default(),
        };
        p.start();
        p
    }

    /// (Re)starts the proxy; a restart asks for the ports it reported the first time.
    pub fn start(&mut self) {
        use command_fds::{CommandFdExt, FdMapping};
        let mut cmd = match self.nofile {
            // prlimit sets the limit on itself and execs the proxy: the same process.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin("switchyard-proxy"));
                c
            }
            None => Command::new(bin("switchyard-proxy")),
        };
        match crate::kept_log("proxy") {
            Some((log, filter)) => cmd.args(&self.args).env("RUST_LOG", filter).stderr(log),
            None => cmd.args(&self.args).env("RUST_LOG", "warn").stderr(Stdio::null()),
        };
        if let Some(sock) = &self.socket {
            let fd = sock.try_clone().expect("clone the proxy's socket");
            cmd.env("LISTEN_FDS", "1")
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDS_FIRST_FD")
                .fd_mappings(vec![FdMapping { parent_fd: fd.into(), child_fd: 3 }])
                .expect("one fd mapping");
        }
        let line = self.proc.start_reporting(&mut cmd, "switchyard-proxy");
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("ws=") {
                self.ws = a.to_string();
            }
            if let Some(a) = part.strip_prefix("wss=") {
                self.wss = a.to_string();
            }
            if let Some(a) = part.strip_prefix("admin=") {
                self.admin = a.to_string();
            }
        }
        assert!(!self.ws.is_empty() || !self.wss.is_empty(), "proxy did not report its address: {line:?}");
        // Keep the same ports on restart.
        for (flag, v) in
            [("--listen", self.ws.clone()), ("--wss-listen", self.wss.clone()), ("--admin", self.admin.clone())]
        {
            if let Some(i) = self.args.iter().position(|a| a == flag) {
                self.args[i + 1] = v;
            }
        }
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid().expect("proxy running")
    }

    /// Sends a signal (`HUP`, say) by name.
    pub fn signal(&self, name: &str) {
        let pid = self.proc.pid().expect("proxy running");
        let ok = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().expect("kill");
        assert!(ok.success(), "kill -{name} {pid} failed");
    }

    /// The proxy's `/metrics` text.
    pub async fn metrics(&self) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.admin).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8(out).ok()?.split_once("\r\n\r\n")?.1.to_string())
    }

    /// A counter or gauge from `/metrics`: the sample whose name and labels start with
    /// `prefix` (`switchyard_proxy_handshake_failures_total{reason="tls_error"}`).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.metrics().await?;
        text.lines().find(|l| l.starts_with(prefix))?.rsplit_once(' ')?.1.parse().ok()
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.proc.terminate()
    }

    /// The proxy's `/status` JSON.
    pub async fn status(&self) -> Option<serde_json::Value> {
        Self::status_at(&self.admin).await
    }

    /// The `/status` JSON of the proxy whose admin port is `admin`.
    pub async fn status_at(admin: &str) -> Option<serde_json::Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
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
        Self::start_at(name, "127.0.0.1:0").await
    }

    /// One listening at `addr` (a backend coming back where it was).
    pub async fn start_at(name: &str, addr: &str) -> EchoBackend {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind echo backend");
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

    /// Sends a signal (`STOP`, `CONT`, ...) to the running backend.
    pub fn signal(&self, name: &str) {
        let pid = self.proc.pid().expect("the backend runs");
        let ok = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {pid}");
    }
}

/// The status line of the proxy's answer to a WebSocket upgrade for `host`. Reads up to the
/// end of the head, not to EOF: an upgraded connection stays open.
pub async fn upgrade_status(proxy: &str, host: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut c = tokio::net::TcpStream::connect(proxy).await.expect("connect to the proxy");
    c.write_all(head.as_bytes()).await.expect("write the upgrade");
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_string()
}
