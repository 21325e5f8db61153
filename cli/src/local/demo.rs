//! A demo WebSocket echo backend (tokio-tungstenite): greets each connection with its name,
//! then echoes every text and binary message; a plain HTTP request is answered `200` with its
//! name, so `curl` through a proxy shows plain HTTP proxying too. `switchyard dev` runs three;
//! benchmarks and manual tests can run one with `switchyard demo-backend`.

use anyhow::{anyhow, Result};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::args::DemoArgs;
use crate::output;

/// `switchyard demo-backend`: reports the address it bound, which differs from `--listen`
/// when that asks for port 0.
pub(super) async fn run(a: DemoArgs) -> Result<()> {
    let listener = TcpListener::bind(a.listen).await.map_err(|e| anyhow!("cannot listen on {}: {e}", a.listen))?;
    output::demo_backend(&a.name, listener.local_addr()?);
    echo_server(listener, a.name, !a.no_greeting).await;
    Ok(())
}

pub(super) async fn echo_server(listener: TcpListener, name: String, greet: bool) {
    while let Ok((sock, _)) = listener.accept().await {
        let _ = sock.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let Some(sock) = websocket_or_answer(sock, &name).await else { return };
            // A 4 KiB read buffer (NGINX's default proxy buffer): tungstenite zero-fills all of
            // it before every read, and its 128 KiB default made that a third of an echo's CPU.
            let cfg = WebSocketConfig::default()
                .max_message_size(Some(64 << 20))
                .max_frame_size(Some(64 << 20))
                .read_buffer_size(4096);
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(sock, Some(cfg)).await else { return };
            if greet && ws.send(Message::text(name)).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = ws.next().await {
                let echo = matches!(m, Message::Text(_) | Message::Binary(_));
                if m.is_close() || (echo && ws.send(m).await.is_err()) {
                    break;
                }
            }
        });
    }
}

/// The socket back when its request asks for a WebSocket upgrade; otherwise the request is
/// answered `200` with this backend's name (then closed) and `None` returned.
async fn websocket_or_answer(mut sock: tokio::net::TcpStream, name: &str) -> Option<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut buf = vec![0u8; 16 * 1024];
    let head = loop {
        let n = sock.peek(&mut buf).await.ok()?;
        let seen = &buf[..n];
        if n == 0 {
            return None;
        }
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
        }
        if n == buf.len() {
            // No head within 16 KiB: tungstenite refuses it.
            return Some(sock);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    if head.lines().any(|l| l.starts_with("upgrade:") && l.contains("websocket")) {
        return Some(sock);
    }
    let body = format!("{name}\n");
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(answer.as_bytes()).await;
    let _ = sock.shutdown().await;
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn plain_requests_get_the_name_and_upgrades_the_echo() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(echo_server(listener, "echo-t".into(), true));

        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("\r\n\r\necho-t\n"), "{out:?}");

        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo-t"));
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    }
}
