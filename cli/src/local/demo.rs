//! A demo WebSocket echo backend (tokio-tungstenite): greets each connection with its name,
//! then echoes every text and binary message. `switchyard dev` runs three; benchmarks and
//! manual tests can run one with `switchyard demo-backend`.

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
            let cfg = WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20));
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
