//! Accepting connections: the listener loop (admission by descriptor budget, 503 past it),
//! and the worker threads each connection is handed to and lives on.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::{handle, Ctx};
use crate::access_log;
use crate::handshake::{self, Reject};
use crate::state::ProxyState;

/// Connection workers: one single-threaded runtime per thread, like NGINX's worker
/// processes. A connection lives on one thread from accept to close, so relaying a message
/// wakes no other thread (with work stealing, cross-thread wake-ups cost more than the relay).
pub struct Workers {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr, bool)>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Workers {
    pub fn start(n: usize, state: Arc<ProxyState>, ctx: Arc<Ctx>) -> std::io::Result<Workers> {
        let mut senders = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr, bool)>();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let st = state.clone();
            let ctx = ctx.clone();
            std::thread::Builder::new().name(format!("sy-worker-{i}")).spawn(move || {
                rt.block_on(async move {
                    while let Some((sock, peer, tls)) = rx.recv().await {
                        let Ok(sock) = TcpStream::from_std(sock) else {
                            drop(crate::fds::Slot::adopt(&st.runtime));
                            continue;
                        };
                        let (st2, ctx) = (st.clone(), ctx.clone());
                        tokio::spawn(
                            st.runtime.connections.track_future(async move { handle(st2, sock, peer, ctx, tls).await }),
                        );
                    }
                    // Accepting stopped: stay until this thread's connections are done.
                    st.runtime.connections.wait().await;
                });
            })?;
            senders.push(tx);
        }
        Ok(Workers { senders, next: std::sync::atomic::AtomicUsize::new(0) })
    }

    /// Hands a connection to the next worker; false if it could not.
    fn dispatch(&self, sock: TcpStream, peer: SocketAddr, tls: bool) -> bool {
        let i = self.next.fetch_add(1, Relaxed) % self.senders.len();
        match sock.into_std() {
            Ok(std_sock) => self.senders[i].send((std_sock, peer, tls)).is_ok(),
            Err(_) => false,
        }
    }
}

/// Waits until the proxy runs a config, at most `limit` (or until shutdown).
pub async fn configured(state: &ProxyState, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Registered before the check, so a config recorded in between still wakes it.
        let changed = state.status.applied_changed.notified();
        if state.status.config().source != "none" {
            return;
        }
        tokio::select! {
            _ = state.runtime.shutdown.cancelled() => return,
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if state.status.config().source == "none" {
        tracing::warn!(?limit, "no config yet; accepting anyway");
    }
}

/// Accepts until shutdown and hands each connection to a worker, tracked for shutdown;
/// `tls`: the wss listener, whose connections start with a TLS handshake.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>, workers: Arc<Workers>, tls: bool) {
    loop {
        let (sock, peer) = tokio::select! {
            _ = state.runtime.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        state.runtime.accepted.fetch_add(1, Relaxed);
        if !crate::fds::reserve(&state.runtime) {
            if let Some(log) = state.runtime.access_log.get() {
                let termination = "max_connections";
                log.log(access_log::Record { client: Some(peer), status: 503, termination, ..Default::default() });
            }
            // Out of descriptors for another proxied connection: say so and close, without
            // reading (a TLS client gets no readable answer, but is not left hanging).
            if !tls {
                let _ = sock.try_write(&handshake::error_response(&Reject::OverCapacity, Some(1)));
            }
            state.runtime.count_failure("max_connections");
            continue;
        }
        let _ = sock.set_nodelay(true);
        if !workers.dispatch(sock, peer, tls) {
            drop(crate::fds::Slot::adopt(&state.runtime));
        }
    }
}
