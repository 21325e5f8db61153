//! The client's side of a plain HTTP connection: its bytes (the first head, read before hyper
//! took over, then the socket), and what its one idle/head timer looks at.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::streams::ClientIo;

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
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity { base: tokio::time::Instant::now(), busy: AtomicU32::new(0), idle_since: AtomicU64::new(0) }
    }

    /// A request began: in flight until the `Busy` is dropped (with its response's end).
    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Relaxed);
        Busy(self.clone())
    }

    /// When the connection is next due to close (`None`: now).
    pub(super) fn due(&self, limit: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if self.busy.load(Relaxed) > 0 {
            return Some(now + limit);
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
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.base.elapsed().as_millis() as u64, Relaxed);
        a.busy.fetch_sub(1, Relaxed);
    }
}

/// The first head's bytes, then the connection.
pub(super) struct Prefixed {
    pub(super) first: Bytes,
    pub(super) io: ClientIo,
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
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_due_a_whole_limit_after_its_last_request_ended_never_during_one() {
        let limit = Duration::from_secs(10);
        let a = Arc::new(Activity::new());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(a.due(limit).is_some(), "opened 4 s ago");
        let busy = a.begin();
        tokio::time::advance(Duration::from_secs(30)).await;
        // In flight: put off by a whole limit, however long it has run.
        assert_eq!(a.due(limit), Some(tokio::time::Instant::now() + limit));
        drop(busy);
        let ended = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(a.due(limit), Some(ended + limit));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.due(limit), None, "idle for the whole limit");
    }
}
