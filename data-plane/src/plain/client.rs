//! The client's side of a plain HTTP connection: its bytes (the first head, read before hyper
//! took over, then the socket), and what its one idle/head timer looks at.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::handling::streams::{ClientIo, Linger};

/// Whether a plain HTTP connection has a request in flight, and when its last one ended: the
/// connection's one timer reads it when it fires. A connection with no request in flight has
/// the handshake timeout to finish its next head, counted from when the last response ended
/// (or the connection opened): an idle keep-alive connection closes then, as does one whose
/// client sends a head slowly (slowloris). A request in flight puts it off.
pub(super) struct Activity {
    base: tokio::time::Instant,
    busy: AtomicU32,
    /// Milliseconds after `base`.
    idle_since: AtomicU64,
    /// When the response body last handed hyper data that hyper has not asked past since
    /// (milliseconds after `base`, plus one; 0: not waiting on the client). hyper asks for
    /// more once what it has is written, so this ages only while the client does not read.
    handed: AtomicU64,
    /// Since when the response body has waited on its backend (milliseconds after `base`,
    /// plus one; 0: not waiting), and how long it may (the pool's response timeout, NGINX's
    /// `proxy_read_timeout`): a backend that stops inside a body would otherwise hold the
    /// client, its backend connection and its slot for good.
    backend_wait: AtomicU64,
    silence_ms: AtomicU64,
    /// The connection was closed on a silent backend (for the access log).
    silent: AtomicBool,
    /// A wait on the backend began since the connection's timer last looked.
    wait_began: AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            base: tokio::time::Instant::now(),
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            backend_wait: AtomicU64::new(0),
            silence_ms: AtomicU64::new(0),
            silent: AtomicBool::new(false),
            wait_began: AtomicBool::new(false),
        }
    }

    /// A response's body starts: its backend may be silent this long between data.
    pub(super) fn responding(&self, silence: Duration) {
        self.silence_ms.store(silence.as_millis() as u64, Relaxed);
        self.backend_wait.store(0, Relaxed);
    }

    /// The response body has no data from its backend for now; the wait starts unless it
    /// already had.
    pub(super) fn backend_waits(&self) {
        if self.backend_wait.load(Relaxed) == 0 {
            self.backend_wait.store(self.base.elapsed().as_millis() as u64 + 1, Relaxed);
            self.wait_began.store(true, Relaxed);
        }
    }

    /// The response body is over (or gone): no wait on its backend goes on. A chunked body
    /// usually ends after one (its last chunk comes on a later turn of the backend's
    /// connection), and the next request on the connection would otherwise be judged by it:
    /// closed once the pool's response timeout had passed since, while it sent its body or
    /// waited for its own response head.
    pub(super) fn backend_done(&self) {
        self.backend_wait.store(0, Relaxed);
        self.wait_began.store(false, Relaxed);
    }

    /// The end of the backend's bound, once, when a wait on it has just begun (the
    /// connection's timer may need to move up for it).
    pub(super) fn backend_deadline(&self) -> Option<tokio::time::Instant> {
        // Looked at on every wake-up of the connection: a load, and a store only when set.
        if !self.wait_began.load(Relaxed) {
            return None;
        }
        self.wait_began.store(false, Relaxed);
        let waits = self.backend_wait.load(Relaxed).checked_sub(1)?;
        Some(self.base + Duration::from_millis(waits + self.silence_ms.load(Relaxed)))
    }

    /// Whether the connection was closed because its backend went silent inside a response.
    pub(super) fn silent(&self) -> bool {
        self.silent.load(Relaxed)
    }

    /// A request began: in flight until the `Busy` is dropped (with its response's end).
    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Relaxed);
        Busy(self.clone())
    }

    /// The response body handed hyper data to write to the client.
    pub(super) fn handed(&self) {
        self.handed.store(self.base.elapsed().as_millis() as u64 + 1, Relaxed);
        self.backend_wait.store(0, Relaxed);
    }

    /// hyper asked the response body for more (what it had is written), or the body is gone.
    pub(super) fn asked(&self) {
        self.handed.store(0, Relaxed);
    }

    pub(super) fn in_flight(&self) -> bool {
        self.busy.load(Relaxed) > 0
    }

    /// When the connection is next due to close (`None`: now): `limit` after its last
    /// response ended when none is in flight; with one in flight, once the client has left
    /// response data unread for `stall` (NGINX's `send_timeout`: a client that stops reading
    /// would otherwise hold its request, and the backend connection, for as long as it likes),
    /// or once the backend has sent nothing of a response body for the pool's response
    /// timeout.
    pub(super) fn due(&self, limit: Duration, stall: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if self.busy.load(Relaxed) > 0 {
            let (handed, waits) = (self.handed.load(Relaxed), self.backend_wait.load(Relaxed));
            let at = if handed != 0 {
                self.base + Duration::from_millis(handed - 1) + stall
            } else if waits != 0 {
                let at = self.base + Duration::from_millis(waits - 1 + self.silence_ms.load(Relaxed));
                if at <= now {
                    self.silent.store(true, Relaxed);
                }
                at
            } else {
                return Some(now + limit);
            };
            return (at > now).then(|| at.min(now + limit));
        }
        let due = self.base + Duration::from_millis(self.idle_since.load(Relaxed)) + limit;
        (due > now).then_some(due)
    }
}

/// A request in flight on its connection (see [`Activity`]).
pub(super) struct Busy(Arc<Activity>);

impl Busy {
    /// Another hold on the same request: the request body keeps one, since the response may
    /// end while the client is still sending its body (a backend that answers early).
    pub(super) fn again(&self) -> Busy {
        self.0.begin()
    }

    pub(super) fn activity(&self) -> Arc<Activity> {
        self.0.clone()
    }

    pub(super) fn silent(&self) -> bool {
        self.0.silent()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.base.elapsed().as_millis() as u64, Relaxed);
        a.busy.fetch_sub(1, Relaxed);
    }
}

/// The first head's bytes, then the connection. Its shutdown lingers.
pub(super) struct Prefixed {
    pub(super) first: Bytes,
    pub(super) io: ClientIo,
    linger: Linger,
}

impl Prefixed {
    pub(super) fn new(first: Bytes, io: ClientIo) -> Prefixed {
        Prefixed { first, io, linger: Linger::default() }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    /// hyper's end of the connection: our FIN, then lingering (as `handling::streams::linger`
    /// does for a refused handshake). An answer given before its request was read whole (413,
    /// 431, an early error) is followed by the rest of the request; closing on those bytes
    /// resets the connection, and the client sees its write fail instead of the answer.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        me.linger.poll(&mut me.io, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_due_a_whole_limit_after_its_last_request_ended_never_during_one() {
        let (limit, stall) = (Duration::from_secs(10), Duration::from_secs(60));
        let a = Arc::new(Activity::new());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(a.due(limit, stall).is_some(), "opened 4 s ago");
        let busy = a.begin();
        tokio::time::advance(Duration::from_secs(30)).await;
        // In flight: put off by a whole limit, however long it has run.
        assert_eq!(a.due(limit, stall), Some(tokio::time::Instant::now() + limit));
        drop(busy);
        let ended = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(a.due(limit, stall), Some(ended + limit));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.due(limit, stall), None, "idle for the whole limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_its_response_unread_is_due_after_the_stall() {
        let (limit, stall) = (Duration::from_secs(10), Duration::from_secs(25));
        let a = Arc::new(Activity::new());
        let _busy = a.begin();
        a.handed();
        let handed = tokio::time::Instant::now();
        // Checked at the limit's pace, and at the stall's end.
        assert_eq!(a.due(limit, stall), Some(handed + limit));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(a.due(limit, stall), Some(handed + stall));
        // hyper asked for more: the client is reading, and a backend slow to send is no stall.
        a.asked();
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(a.due(limit, stall), Some(tokio::time::Instant::now() + limit));
        a.handed();
        tokio::time::advance(stall).await;
        assert_eq!(a.due(limit, stall), None, "unread for the whole stall");
        assert!(a.in_flight());
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_silent_inside_a_response_body_for_its_bound_is_due() {
        let (limit, stall, silence) = (Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(3));
        let a = Arc::new(Activity::new());
        let _busy = a.begin();
        a.responding(silence);
        a.asked();
        a.backend_waits();
        let began = tokio::time::Instant::now();
        assert_eq!(a.backend_deadline(), Some(began + silence), "the timer is told when a wait begins");
        assert_eq!(a.backend_deadline(), None, "and only then");
        tokio::time::advance(Duration::from_secs(2)).await;
        a.backend_waits();
        assert_eq!(a.due(limit, stall), Some(began + silence), "a wait goes on from when it began");
        // Data came and was written: the wait is over, and a new one starts from scratch.
        a.handed();
        a.asked();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(a.due(limit, stall), Some(tokio::time::Instant::now() + limit));
        a.backend_waits();
        tokio::time::advance(silence - Duration::from_millis(1)).await;
        assert!(a.due(limit, stall).is_some() && !a.silent());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(a.due(limit, stall), None, "silent for the whole bound");
        assert!(a.silent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_left_by_a_finished_body_does_not_judge_the_next_request() {
        let (limit, stall, silence) = (Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(3));
        let a = Arc::new(Activity::new());
        // A chunked body: its last data, a wait, then its end.
        let first = a.begin();
        a.responding(silence);
        a.handed();
        a.asked();
        a.backend_waits();
        a.backend_done();
        drop(first);
        // The next request is sent, its body slowly: longer than the silence bound.
        let _next = a.begin();
        tokio::time::advance(silence * 4).await;
        assert_eq!(a.due(limit, stall), Some(tokio::time::Instant::now() + limit), "in flight, not silent");
        assert!(!a.silent());
    }

    /// hyper's shutdown sends the FIN at once, takes what the client still sends, and ends at
    /// the client's FIN, or at the bound when it never comes.
    #[tokio::test]
    async fn shutting_down_lingers_until_the_clients_fin_or_the_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        for client_closes in [true, false] {
            let mut peer = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let ours = tokio_util::either::Either::Left(l.accept().await.unwrap().0);
            let mut p = Prefixed::new(Bytes::new(), ours);
            let t = tokio::time::Instant::now();
            let shut = tokio::spawn(async move { p.shutdown().await });
            peer.write_all(&vec![b'z'; 256 << 10]).await.expect("the rest of a request is taken");
            let mut b = [0u8; 16];
            assert_eq!(peer.read(&mut b).await.unwrap(), 0, "our FIN comes first");
            if client_closes {
                peer.shutdown().await.unwrap();
            }
            let done = tokio::time::timeout(Duration::from_secs(5), shut).await.expect("lingering ended");
            done.unwrap().unwrap();
            let took = t.elapsed();
            if client_closes {
                assert!(took < crate::relay::CLOSE_LINGER, "ended {took:?} after, not at the client's FIN");
            } else {
                assert!(took >= crate::relay::CLOSE_LINGER, "ended {took:?} after, before its bound");
            }
        }
    }
}
