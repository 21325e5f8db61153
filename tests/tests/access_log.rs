//! The proxy's access log: a line per relayed connection and per refused handshake, with what
//! an operator looks for (termination, route, pool, backend, close codes, byte and message
//! counts) and without what must not be written (the query string), reopened on SIGUSR1.

use std::time::Duration;

use futures::StreamExt;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;

/// The JSON lines of an access log, once it has at least `n`.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    eventually("access log lines", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_connection_and_refusal_and_reopens_on_sigusr1() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let b = EchoBackend::start("b1").await;
    let rev = route_all(&c.nodes[&1].addr, "p", &[&b.addr]).await;
    let log = c.dir.path().join("access.log");
    let extra = ["--access-log".to_string(), log.display().to_string()];
    let proxy = ProxyProcess::spawn_with(&c.endpoints(), &c.dir.path().join("p.cache"), "p1", &extra);
    proxy.wait_revision(rev).await;

    let (mut ws, _) = ws_connect(&proxy.ws, "/room?token=secret", &[]).await.unwrap();
    echo(&mut ws, Message::text("one")).await.unwrap();
    echo(&mut ws, Message::text("two")).await.unwrap();
    let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    ws.close(Some(normal)).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    let mut plain = tokio::net::TcpStream::connect(&proxy.ws).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let lines = log_lines(&log, 2).await;
    let done = lines.iter().find(|l| l["status"] == 101).expect("the relayed connection's line");
    assert_eq!(done["termination"], "client_closed", "{done}");
    assert_eq!((done["pool"].as_str(), done["route"].as_str()), (Some("p"), Some("all")), "{done}");
    assert_eq!(done["backend"].as_str(), Some(b.addr.as_str()));
    assert_eq!(done["path"], "/room", "the query (which may hold credentials) is left out");
    // The greeting and two echoes came back; the client sent two messages and Close 1000.
    assert_eq!((done["messages_in"].as_u64(), done["messages_out"].as_u64()), (Some(2), Some(3)), "{done}");
    assert_eq!(done["close_client"].as_u64(), Some(1000), "{done}");
    assert!(done["bytes_in"].as_u64().unwrap() > 0 && done["duration_ms"].as_f64().unwrap() > 0.0);
    let refused = lines.iter().find(|l| l["status"] == 426).expect("the refused handshake's line");
    assert_eq!(refused["termination"], "upgrade_required", "{refused}");

    // Rotation: move the file away, SIGUSR1, and new lines go to a new file at the old path.
    let rotated = c.dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    proxy.signal("USR1");
    eventually("lines go to a reopened file", Duration::from_secs(10), || async {
        // Each try is a refused handshake, which writes a line.
        let mut s = tokio::net::TcpStream::connect(&proxy.ws).await.ok()?;
        let half_upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut s, half_upgrade).await.ok()?;
        std::fs::metadata(&log).ok().filter(|m| m.len() > 0)
    })
    .await;
    assert!(std::fs::read_to_string(&rotated).unwrap().lines().count() >= 2, "the rotated file keeps its lines");
}
