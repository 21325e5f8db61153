//! The streams of a connection before the relay: a wss client's TLS handshake, the
//! connection to a backend (TLS when configured), and turning both into relay streams.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::{handshake_timeout, Ctx, Tuning};
use crate::relay::Stream;
use crate::state::ProxyState;
use crate::tls::edge::{self, EdgeTls};
use crate::tls::PoolTls;

/// A client during its handshake: plain, or past its TLS handshake (boxed: rustls' state
/// would otherwise take room in every connection's future, ws ones included).
pub type ClientIo = Either<TcpStream, Box<EdgeTls>>;
pub type BackendIo = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// The TLS handshake of a wss client, on the connection's own task and under the handshake
/// timeout: the connection and the name it asked for (SNI). A failure costs a debug line and
/// a count (`tls_error`, `tls_timeout`), and is returned as that reason.
pub async fn accept_tls(
    state: &ProxyState,
    ctx: &Ctx,
    sock: TcpStream,
    peer: SocketAddr,
) -> Result<(ClientIo, Option<String>), &'static str> {
    let Some(config) = ctx.wss.as_ref() else { return Err("tls_error") };
    let limit = handshake_timeout(&state.table.load().settings);
    // Boxed: the handshake's state lives only while it runs, not in every connection.
    match tokio::time::timeout(limit, Box::pin(edge::accept(sock, config.clone()))).await {
        Ok(Ok((s, sni))) => Ok((Either::Right(Box::new(s)), sni)),
        Ok(Err(e)) => {
            state.runtime.count_failure("tls_error");
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            Err("tls_error")
        }
        Err(_) => {
            state.runtime.count_failure("tls_timeout");
            tracing::debug!(%peer, ?limit, "TLS handshake timed out");
            Err("tls_timeout")
        }
    }
}

/// Why a backend could not be used: its TCP connection failed, or TLS did after it.
#[derive(Debug, thiserror::Error)]
pub enum BackendFail {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("TLS to the backend failed: {0}")]
    Tls(String),
    /// The proxy itself is out of something a connection needs (descriptors, memory, local
    /// ports): no fault of the backend's, which is not ejected for it.
    #[error("connect failed for want of local resources: {0}")]
    Local(String),
    /// Connected, but the upgrade got no usable answer.
    #[error("upgrade failed: {0}")]
    Upgrade(&'static str),
    /// Connected and sent the upgrade, which the backend closed on without a word. A
    /// backend may do that to one request it cannot parse (tungstenite drops a target it
    /// cannot read, or a head of more than 124 headers, unanswered), so one such close is no
    /// proof the backend is broken: see [`HANGUPS_TO_EJECT`].
    #[error("upgrade failed: {0}")]
    Hangup(&'static str),
}

/// Hangups in a row that eject a backend (Envoy's outlier detection ejects after 5
/// consecutive gateway failures). Ejected on the first, a client sending heads the
/// backends drop would take one backend out per attempt, three per request, every 10 s.
pub const HANGUPS_TO_EJECT: u64 = 5;
/// Hangups closer together than this count as one toward [`HANGUPS_TO_EJECT`].
pub const HANGUP_SPACING_MS: u64 = 1000;

impl BackendFail {
    /// A connect error that is the proxy's own shortage, not the backend's failure.
    fn from_connect(e: std::io::Error) -> BackendFail {
        use rustix::io::Errno;
        let local = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM, Errno::ADDRNOTAVAIL];
        match e.raw_os_error() {
            Some(n) if local.iter().any(|l| l.raw_os_error() == n) => BackendFail::Local(e.to_string()),
            _ => BackendFail::Connect(e.to_string()),
        }
    }
}

/// Connects to a backend under the connect timeout, TLS handshake included (one bound for
/// both: a backend that takes the TCP connection and stalls its TLS would otherwise hold
/// each attempt for twice the timeout), with TLS when its pool (or, where the pool says
/// nothing, the proxy) asks for it.
pub async fn connect_backend(address: &str, tls: &PoolTls, ctx: &Ctx) -> Result<BackendIo, BackendFail> {
    let bt = match tls {
        PoolTls::Proxy => ctx.backend_tls.as_ref(),
        PoolTls::Off => None,
        PoolTls::On(t) => Some(t),
        PoolTls::Broken(why) => {
            return Err(BackendFail::Tls(format!("the pool's backend TLS does not compile: {why}")))
        }
    };
    let deadline = tokio::time::Instant::now() + ctx.tuning.connect_timeout;
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(BackendFail::from_connect(e)),
        Err(_) => return Err(BackendFail::Connect("timed out".into())),
    };
    let _ = tcp.set_nodelay(true);
    if let Some(t) = ctx.tuning.backend_unacked {
        let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(t));
    }
    if let Some(idle) = ctx.tuning.backend_keepalive {
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive(idle));
    }
    let Some(bt) = bt else { return Ok(Either::Left(tcp)) };
    let name = bt.name_for(address).map_err(|e| BackendFail::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(bt.config.clone());
    match tokio::time::timeout_at(deadline, Box::pin(connector.connect(name, tcp))).await {
        Ok(Ok(s)) => Ok(Either::Right(Box::new(s))),
        Ok(Err(e)) => Err(BackendFail::Tls(e.to_string())),
        Err(_) => Err(BackendFail::Tls("handshake timed out".into())),
    }
}

/// Probes after `idle` of silence, then every third of it (at least a second): with the
/// unacknowledged bound set the kernel gives up once nothing has come back for that bound and
/// a probe is out, so the probes must come often enough for that bound to be what decides.
fn keepalive(idle: Duration) -> socket2::TcpKeepalive {
    let every = Duration::from_secs((idle.as_secs() / 3).max(1));
    socket2::TcpKeepalive::new().with_time(idle).with_interval(every)
}

/// Ends a client connection the proxy answered (a refused handshake, plain HTTP): our FIN
/// (TLS's close_notify first), then what the client still sends is read and discarded until
/// its FIN, for at most `CLOSE_LINGER` (NGINX's `lingering_close`). Closing on unread bytes
/// resets the connection: a client still writing (an oversized head or body) would see its
/// write fail, and may never read the answer. See also `Stream::linger`.
pub async fn linger(c: &mut ClientIo) {
    let mut l = Linger::default();
    let _ = std::future::poll_fn(|cx| l.poll(c, cx)).await;
}

/// [`linger`] as a poll, for an `AsyncWrite::poll_shutdown` (hyper's end of a plain HTTP
/// connection): the deadline, set once our side is shut.
#[derive(Default)]
pub struct Linger(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl Linger {
    pub fn poll<S>(&mut self, io: &mut S, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use std::future::Future;
        use std::pin::Pin;
        use std::task::Poll;
        let until = match &mut self.0 {
            Some(until) => until,
            None => {
                std::task::ready!(Pin::new(&mut *io).poll_shutdown(cx))?;
                self.0.insert(Box::pin(tokio::time::sleep(crate::relay::CLOSE_LINGER)))
            }
        };
        let mut sink = [0u8; 4096];
        // A few reads a turn, so that a client streaming at line rate cannot hold the worker.
        for _ in 0..8 {
            let mut b = tokio::io::ReadBuf::new(&mut sink);
            match Pin::new(&mut *io).poll_read(cx, &mut b) {
                Poll::Ready(Ok(())) if !b.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return until.as_mut().poll(cx).map(Ok),
            }
        }
        cx.waker().wake_by_ref();
        until.as_mut().poll(cx).map(Ok)
    }
}

pub fn client_stream(c: ClientIo) -> Stream {
    match c {
        Either::Left(s) => Stream::Plain(s),
        Either::Right(t) => Stream::Edge(t),
    }
}

pub fn backend_stream(c: BackendIo) -> Stream {
    match c {
        Either::Left(s) => Stream::Plain(s),
        Either::Right(t) => {
            let (tcp, conn) = t.into_inner();
            Stream::tls(tcp, conn)
        }
    }
}

/// Passive health: a backend this proxy could not connect to gets no new connections or
/// requests from it for a while.
pub(crate) fn eject_locally(
    state: &ProxyState,
    b: &crate::table::BackendEntry,
    pool: &str,
    tuning: &Tuning,
    why: &BackendFail,
) {
    if let BackendFail::Local(_) = why {
        // Once per 10 s at most: a shortage fails every connect at once.
        static WARNED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let (now, last) = (state.registry.now_ms(), WARNED_MS.load(Relaxed));
        if now.saturating_sub(last) >= 10_000 && WARNED_MS.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            tracing::warn!(backend = %b.backend.address, pool, "{why}; the backend is not ejected");
        }
        return;
    }
    if let BackendFail::Hangup(_) = why {
        // Hangups less than a second apart count once: a burst of requests from one client,
        // each tried on every backend, is one event, not five.
        let now = state.registry.now_ms();
        let last = b.stats.last_hangup_ms.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < HANGUP_SPACING_MS {
            return;
        }
        b.stats.last_hangup_ms.store(now, Relaxed);
        if b.stats.hangups.fetch_add(1, Relaxed) + 1 < HANGUPS_TO_EJECT {
            tracing::debug!(backend = %b.backend.address, pool, "{why}; not ejected for one");
            return;
        }
        b.stats.hangups.store(0, Relaxed);
    }
    b.stats.connect_failures.fetch_add(1, Relaxed);
    b.stats
        .ejected_until_ms
        .store(state.registry.now_ms().saturating_add(tuning.eject_for.as_millis() as u64), Relaxed);
    tracing::warn!(backend = %b.backend.address, pool, "{why}; ejected locally");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_probes_start_after_the_idle_time_and_repeat_every_third_of_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let sock = socket2::SockRef::from(&s);
        for (idle, every) in [(30, 10), (1, 1), (4, 1), (600, 200)] {
            sock.set_tcp_keepalive(&keepalive(Duration::from_secs(idle))).unwrap();
            assert!(sock.keepalive().unwrap());
            assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(idle));
            assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(every), "idle {idle} s");
        }
    }

    #[test]
    fn the_proxys_own_shortages_are_not_the_backends_failures() {
        use rustix::io::Errno;
        let io = |e: Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
        for local in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM, Errno::ADDRNOTAVAIL] {
            assert!(matches!(BackendFail::from_connect(io(local)), BackendFail::Local(_)), "{local:?}");
        }
        for theirs in [Errno::CONNREFUSED, Errno::HOSTUNREACH, Errno::CONNRESET] {
            assert!(matches!(BackendFail::from_connect(io(theirs)), BackendFail::Connect(_)), "{theirs:?}");
        }
    }
}
