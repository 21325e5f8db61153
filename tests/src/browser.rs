//! A real headless Chromium, driven over the DevTools protocol (JSON messages on a
//! WebSocket): open a page, evaluate JavaScript in it, read the values back. Written on
//! tokio-tungstenite rather than a CDP crate, which would generate the whole protocol and add
//! minutes of build on two cores for the three methods used here.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::process::Proc;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium binary: `SWITCHYARD_CHROMIUM`, else the first of Debian's and others' names
/// on PATH.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHYARD_CHROMIUM") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

pub struct Browser {
    socket: Socket,
    session: String,
    next_id: u64,
    _proc: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a fresh profile and one blank tab to drive.
    pub async fn launch(binary: &std::path::Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                // Tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary:?}: {e}"));
        let err = child.stderr.take().expect("stderr");
        let mut proc = Proc::default();
        proc.set(child);
        // Chromium says where its DevTools endpoint is on stderr; the rest of stderr is drained
        // so it never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("Chromium to print its DevTools address");
        let (socket, _) = tokio_tungstenite::connect_async(&url).await.expect("connect to DevTools");
        let mut b = Browser { socket, session: String::new(), next_id: 0, _proc: proc, _profile: profile };
        let target = b.call(None, "Target.createTarget", json!({"url": "about:blank"})).await;
        let target = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true})).await;
        b.session = attached["sessionId"].as_str().expect("sessionId").to_string();
        b
    }

    /// One DevTools call and its result; events in between are skipped.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.try_call(session, method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method} failed: {e}"),
        }
    }

    /// One DevTools call: its result, or the error DevTools answered with.
    async fn try_call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.socket.send(Message::text(msg.to_string())).await.expect("send to DevTools");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next()).await;
            let m = match next {
                Ok(Some(Ok(m))) => m,
                other => panic!("DevTools went away during {method}: {other:?}"),
            };
            let Ok(text) = m.into_text() else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    return Err(e.clone());
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Loads `url` in the tab (returns once navigation is committed; poll for content).
    pub async fn open(&mut self, url: &str) {
        let s = self.session.clone();
        self.call(Some(&s), "Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value as JSON. A
    /// page that navigates (a reload, a sign-out) while the expression runs yields an
    /// `exception` value, which `wait_for` polls past, rather than failing the test.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let s = self.session.clone();
        let params = json!({"expression": expr, "returnByValue": true, "awaitPromise": true});
        let r = match self.try_call(Some(&s), "Runtime.evaluate", params).await {
            Ok(r) => r,
            Err(e) => {
                let msg = e["message"].as_str().unwrap_or_default();
                let navigating = msg.contains("navigated or closed") || msg.contains("Cannot find context");
                assert!(navigating, "Runtime.evaluate failed: {e}");
                return json!({ "exception": msg });
            }
        };
        if let Some(e) = r.get("exceptionDetails") {
            return json!({ "exception": e["exception"]["description"].clone() });
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it yields something other than null, false or "" and returns it
    /// with how long that took; past `timeout` the test fails, naming `what`.
    pub async fn wait_for(&mut self, what: &str, expr: &str, timeout: Duration) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let v = self.eval(expr).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v.get("exception").is_some()) {
                return (v, start.elapsed());
            }
            assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what} (last: {v})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
