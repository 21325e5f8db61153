//! Accepting connections: each worker thread runs its own accept loop on the shared
//! listening socket (admission by descriptor budget, 503 past it), and a connection lives on
//! the worker that accepted it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{handle, Ctx};
use crate::access_log;
use crate::handshake::{self, Reject};
use crate::state::ProxyState;

/// A listening socket and whether it is the wss one (its connections start with a TLS
/// handshake).
pub struct Listen {
    pub listener: TcpListener,
    pub tls: bool,
}

/// Starts the connection workers: one single-threaded runtime per thread, like NGINX's
/// worker processes, each accepting from every listener itself. A connection lives on one
/// thread from accept to close, so neither handing it over nor relaying a message wakes
/// another thread: a hand-over from a separate accept loop cost a deregister, a register
/// and a cross-thread wake-up per connection. Every worker's poller watches the same
/// socket, so an idle worker may wake for a connection another one took; the accept that
/// finds nothing costs one syscall, and a busy worker takes fewer new connections.
///
/// Returns each accept loop's handle; they end at shutdown (after waiting `gate` for a
/// first config, when set). Each thread stays until its connections are done.
pub fn start(
    n: usize,
    park_yield: bool,
    listeners: Vec<Listen>,
    gate: Option<Duration>,
    state: Arc<ProxyState>,
    ctx: Arc<Ctx>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    // Back to plain sockets: each worker registers its own copy with its own poller.
    let mut shared = Vec::new();
    for l in listeners {
        // Accepted sockets inherit TCP_NODELAY from their listener (Linux and the BSDs): set
        // once here, it saves a `setsockopt` per connection (checked on each worker's first).
        let _ = socket2::SockRef::from(&l.listener).set_tcp_nodelay(true);
        shared.push((l.listener.into_std()?, l.tls));
    }
    let mut loops = Vec::new();
    for i in 0..n.max(1) {
        let mut rt = tokio::runtime::Builder::new_current_thread();
        rt.enable_all();
        if park_yield {
            rt.on_thread_park(yield_before_park(std::thread::yield_now));
        }
        let rt = rt.build()?;
        for (l, tls) in &shared {
            let l = l.try_clone()?;
            let (state, ctx, tls) = (state.clone(), ctx.clone(), *tls);
            loops.push(rt.spawn(async move {
                let l = match TcpListener::from_std(l) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("worker cannot watch its listener: {e}");
                        return;
                    }
                };
                if let Some(limit) = gate {
                    configured(&state, limit).await;
                }
                serve(l, state, ctx, tls).await
            }));
        }
        rt.spawn(heartbeat(state.clone()));
        let st = state.clone();
        std::thread::Builder::new().name(format!("sy-worker-{i}")).spawn(move || {
            rt.block_on(async move {
                st.runtime.shutdown.cancelled().await;
                // Accepting stopped: stay until the connections are done.
                st.runtime.connections.wait().await;
            });
        })?;
    }
    Ok(loops)
}

/// A worker's hook for when it is about to park (sleep in `epoll_wait`, no task ready): if
/// it tried to read a socket since the hook last ran, it first yields its core (`yield_now`)
/// to whatever else is runnable there.
///
/// On a core shared with busy processes (a sidecar's application, a load test's clients
/// and backends) the peer this worker just wrote to is often runnable on it: run first, it
/// usually brings the worker's next input before the worker sleeps, which spares the worker
/// a sleep and its wake-up, and the peer the cost of waking it. With nothing else runnable
/// the yield returns at once (one syscall). The cost: a yielded worker waits its turn
/// behind a neighbour that keeps its core busy, where a woken one would be run first; and a
/// neighbour in another cgroup may not be run at all. `--no-park-yield` turns it off.
fn yield_before_park(yield_now: fn()) -> impl Fn() + Send + Sync + 'static {
    move || {
        if crate::socket::read_since_asked() {
            yield_now();
        }
    }
}

/// Keeps a timer at most a second out on the worker. tokio's timer wakes its own poller
/// (an `eventfd` write, and one more `epoll_wait` round) whenever a new timer is due before
/// the poller's planned wake-up, and a worker that parked with no timer at all plans none:
/// so, without this, about every other handshake's connect timeout cost that write. A
/// wake-up a second is nothing beside it.
async fn heartbeat(state: Arc<ProxyState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.runtime.shutdown.cancelled() => return,
            _ = tick.tick() => {}
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

/// Accepts until shutdown and serves each connection on this worker, tracked for shutdown.
async fn serve(listener: TcpListener, state: Arc<ProxyState>, ctx: Arc<Ctx>, tls: bool) {
    // Failed accepts since the last warning, and when that was: one line per 10 s at most.
    let (mut failed, mut warned) = (0u64, None::<tokio::time::Instant>);
    // Whether accepted sockets come with TCP_NODELAY from the listener (see `start`); until
    // the first one says, unknown.
    let mut inherits_nodelay = None;
    loop {
        let (sock, peer) = tokio::select! {
            _ = state.runtime.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or similar: idle backend connections go (they are
                    // the descriptors the proxy can give back at once), and accepting backs
                    // off instead of spinning.
                    crate::plain::close_idle(&state.runtime);
                    failed += 1;
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!("accept: {e} ({failed} failed accepts since the last warning)");
                        (failed, warned) = (0, Some(tokio::time::Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        state.runtime.accepted.fetch_add(1, Relaxed);
        // An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`: one client,
        // one address, for ip-hash, affinity by IP, rate limits and logs on every listener.
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        // A client IP's new connections per second, counted here, before TLS or a head: a
        // client holding half-finished handshakes takes no more slots than its rate allows.
        // First, so that a client over its rate costs nothing else (no idle backend
        // connection is closed to make it room).
        let per_ip = state.table.load().settings.max_connections_per_ip_per_sec;
        if per_ip > 0 && state.runtime.admission.admit(peer.ip(), 0, per_ip).is_err() {
            refuse_at_accept(&state, &sock, peer, tls, Reject::ClientRate, Some(1 + rand::random::<u64>() % 5));
            continue;
        }
        if !crate::fds::reserve(&state.runtime) {
            refuse_at_accept(&state, &sock, peer, tls, Reject::OverCapacity, Some(1));
            continue;
        }
        if !*inherits_nodelay.get_or_insert_with(|| sock.nodelay().unwrap_or(false)) {
            let _ = sock.set_nodelay(true);
        }
        let (st, ctx) = (state.clone(), ctx.clone());
        tokio::spawn(state.runtime.connections.track_future(handle(st, sock, peer, ctx, tls)));
    }
}

/// A connection refused as it is accepted: 503 and closed, without reading (a TLS client gets
/// no readable answer, but is not left hanging). Logged and counted under `max_connections`
/// for a spent budget, under the refusal's reason otherwise.
fn refuse_at_accept(state: &ProxyState, sock: &TcpStream, peer: SocketAddr, tls: bool, r: Reject, retry: Option<u64>) {
    let termination = match r {
        Reject::OverCapacity => "max_connections",
        _ => r.reason(),
    };
    if let Some(log) = state.runtime.access_log.get() {
        log.log(access_log::Record { client: Some(peer), status: 503, termination, ..Default::default() });
    }
    if !tls {
        let _ = sock.try_write(&handshake::error_response(&r, retry));
    }
    state.runtime.count_failure(termination);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    use super::yield_before_park;

    static YIELDS: AtomicUsize = AtomicUsize::new(0);

    /// A worker runtime with the hook parks after a timer without yielding, and yields once
    /// when it parks after reading a socket.
    #[test]
    fn a_worker_yields_before_parking_after_a_read_and_not_after_a_timer_alone() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(yield_before_park(|| {
                YIELDS.fetch_add(1, SeqCst);
            }))
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            crate::socket::read_since_asked();
            let before = YIELDS.load(SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(YIELDS.load(SeqCst), before, "a park after a timer alone yielded");
            c.try_write(b"hi").unwrap();
            s.readable().await.unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(crate::socket::read_socket(&s, &mut buf).unwrap(), 2);
            // Parks: the hook sees the read.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(YIELDS.load(SeqCst), before + 1, "the park after a read did not yield once");
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(YIELDS.load(SeqCst), before + 1, "a later park with no read yielded");
        });
    }
}
