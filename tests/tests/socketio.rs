//! socket.io, for real: two socket.io server nodes (npm's `socket.io`) behind two proxies with
//! cookie affinity, and npm's `socket.io-client` on its default transports (long-polling, then
//! the upgrade to WebSocket), on polling only and on WebSocket only. Every session must stay
//! on one node (socket.io refuses a poll or an upgrade for a session another node holds) and
//! every message must be acknowledged. A pool without affinity is the control: polling
//! sessions there break, which shows the check can fail.
//!
//! Needs Node.js and `npm ci` in tests/socketio (`.ci/run` does both, and sets
//! SWITCHYARD_REQUIRE_NODE so a missing one fails there); elsewhere the test says it was
//! skipped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use switchyard_tests::*;

const LONG: Duration = Duration::from_secs(20);

fn socketio_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/socketio"))
}

/// Runs the client script: one JSON value per client.
fn clients(urls: &str, n: usize, messages: usize, transports: &str, path: &str) -> Vec<Value> {
    let out = Command::new("node")
        .arg("client.js")
        .args([urls, &n.to_string(), &messages.to_string(), transports, path])
        .current_dir(socketio_dir())
        .output()
        .expect("run node client.js");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client.js failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str::<Vec<Value>>(line).unwrap_or_else(|e| panic!("client.js printed {line:?}: {e}"))
}

/// Each client ended with no error, every message acknowledged, all by one node, on
/// `transport`; returns the nodes that served.
fn all_sticky(results: &[Value], messages: u64, transport: &str) -> std::collections::BTreeSet<String> {
    let mut nodes = std::collections::BTreeSet::new();
    for (i, c) in results.iter().enumerate() {
        assert_eq!(c["errors"], serde_json::json!([]), "client {i}: {c}");
        assert_eq!(c["acked"].as_u64(), Some(messages), "client {i}: {c}");
        assert_eq!(c["transport"].as_str(), Some(transport), "client {i}: {c}");
        let servers: std::collections::BTreeSet<&str> =
            c["servers"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(servers.len(), 1, "client {i} was served by {servers:?}");
        nodes.extend(servers.into_iter().map(str::to_string));
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_sessions_stay_on_one_node_on_every_transport() {
    let node_ready = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())
        && socketio_dir().join("node_modules/socket.io").is_dir();
    if !node_ready {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_NODE").is_none(),
            "Node.js or tests/socketio/node_modules missing (run `npm ci` in tests/socketio)"
        );
        eprintln!("skipped: no Node.js, or no `npm ci` in tests/socketio");
        return;
    }
    let _g = serial().await;
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for name in ["node-a", "node-b"] {
        let mut p = Proc::default();
        let mut cmd = Command::new("node");
        cmd.args(["server.js", name]).current_dir(socketio_dir());
        let line = p.start_reporting(&mut cmd, &format!("socket.io server {name}"));
        let port = line.strip_prefix("listening ").unwrap_or_else(|| panic!("{name} said {line:?}"));
        addrs.push(format!("127.0.0.1:{port}"));
        servers.push(p);
    }
    let c = Cluster::start(1, &[]).await;
    let eps = c.endpoints();
    for args in [
        vec!["pool", "create", "sio", "--affinity", "cookie:sy"],
        vec!["backend", "add", "sio", &addrs[0]],
        vec!["backend", "add", "sio", &addrs[1]],
        vec!["route", "set", "sio", "--pool", "sio", "--path-prefix", "/socket.io/"],
        vec!["pool", "create", "loose"],
        vec!["backend", "add", "loose", &addrs[0]],
        vec!["backend", "add", "loose", &addrs[1]],
        vec!["route", "set", "loose", "--pool", "loose", "--path-prefix", "/loose/"],
    ] {
        let mut all = vec!["--endpoints", &eps];
        all.extend(args.iter());
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let p1 = ProxyProcess::spawn(&eps, &dir.path().join("p1.cache"), "sio-1");
    let p2 = ProxyProcess::spawn(&eps, &dir.path().join("p2.cache"), "sio-2");
    for p in [&p1, &p2] {
        eventually("the proxy to route socket.io's handshake", LONG, || async {
            let mut tx = http_client(&p.ws).await;
            let (code, _, body) = http_send(&mut tx, get("/loose/?EIO=4&transport=polling", &[])).await;
            (code == 200 && body.contains("\"sid\"")).then_some(())
        })
        .await;
    }
    let urls = format!("http://{},http://{}", p1.ws, p2.ws);

    // Default transports: long-polling first, then the upgrade, which must reach the node
    // that holds the session (or socket.io refuses it and the client stays on polling).
    let mut nodes = all_sticky(&clients(&urls, 10, 6, "default", "/socket.io/"), 6, "websocket");
    nodes.extend(all_sticky(&clients(&urls, 10, 6, "polling", "/socket.io/"), 6, "polling"));
    nodes.extend(all_sticky(&clients(&urls, 10, 6, "websocket", "/socket.io/"), 6, "websocket"));
    assert_eq!(nodes.len(), 2, "sessions were spread over both nodes: {nodes:?}");

    // The control: without affinity, polling sessions meet the node that does not know them.
    let loose = clients(&urls, 6, 4, "polling", "/loose/");
    assert!(
        loose.iter().any(|c| c["errors"].as_array().is_some_and(|e| !e.is_empty())),
        "without affinity every polling session survived round robin: {loose:?}"
    );
}
