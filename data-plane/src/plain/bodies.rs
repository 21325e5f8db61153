//! Bodies on their way through: the client's request body, counted and cut at the pool's
//! limit, and the backend's response body, counted, holding what must last as long as the
//! response does (the in-flight count, the live session binding, the access-log record).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body sent to a backend: a client's body is streamed, never buffered whole.
/// Not boxed: every request would pay an allocation for it.
pub type ReqBody = Limited;

#[derive(Debug, thiserror::Error)]
#[error("request body over the pool's limit of {0} bytes")]
pub struct TooLarge(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of its request body for {0:?}")]
pub struct Stalled(pub Duration);

/// What one request's bodies carried, shared by both bodies and the request's handler (one
/// allocation for the three, not one each).
#[derive(Default)]
pub struct Counts {
    /// Request body bytes from the client.
    pub to_backend: AtomicU64,
    /// Response body bytes to the client.
    pub to_client: AtomicU64,
    /// The request body went over the pool's limit.
    pub over: AtomicBool,
    /// The client stopped sending its request body.
    pub stalled: AtomicBool,
    /// The client's request body broke its own framing (a bad chunk): 400, as NGINX.
    pub malformed: AtomicBool,
    /// The client's connection ended inside its request body.
    pub client_gone: AtomicBool,
    /// When the request body had all gone to the backend: milliseconds after the request
    /// started, plus one (0: not yet). The backend's time to answer counts from there.
    pub body_sent: AtomicU64,
    /// When the request body last handed hyper data that hyper has not asked past since
    /// (milliseconds after the request started, plus one; 0: asked since). hyper asks for
    /// more once what it has is written to the backend: this ages only while the backend
    /// does not read (see `inflight::send_within`).
    pub handed: AtomicU64,
}

impl Counts {
    /// Since when the backend has left request body data unread, if it has.
    pub fn unread_since(&self, started: tokio::time::Instant) -> Option<tokio::time::Instant> {
        when(&self.handed, started)
    }

    /// When the backend had the whole request, if it has.
    pub fn body_sent_at(&self, started: tokio::time::Instant) -> Option<tokio::time::Instant> {
        when(&self.body_sent, started)
    }
}

/// Records now as milliseconds after `started`, plus one (0 stands for none): what [`when`]
/// reads back.
fn stamp(at: &AtomicU64, started: tokio::time::Instant) {
    at.store(started.elapsed().as_millis() as u64 + 1, Relaxed);
}

fn when(at: &AtomicU64, started: tokio::time::Instant) -> Option<tokio::time::Instant> {
    match at.load(Relaxed) {
        0 => None,
        ms => Some(started + Duration::from_millis(ms - 1)),
    }
}

/// Whether a client's body error is the client breaking its framing (a bad chunk size line,
/// say) rather than its connection ending: hyper's decoder says the first with
/// `InvalidData`/`InvalidInput`, which a TLS connection's own failure (a bad record, an
/// alert) also uses, with a rustls error inside.
fn is_malformed(e: &hyper::Error) -> bool {
    let Some(io) = std::error::Error::source(e).and_then(|c| c.downcast_ref::<std::io::Error>()) else {
        return false;
    };
    let tls = io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    !tls && matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput)
}

/// A client's request body: fails with [`TooLarge`] once more than `max` bytes came, and
/// says so in `counts.over` (the answer is then 413, whatever the backend did with the part
/// it got); fails with [`Stalled`] when the client sends nothing for `stall` while the body is
/// asked for, and says so in `counts.stalled` (408). Only the time spent waiting on the
/// client counts: a backend slow to take the body does not make the client stall.
pub struct Limited {
    inner: Incoming,
    max: u64,
    counts: Arc<Counts>,
    stall: Duration,
    /// Made the first time the client keeps the body waiting (never, for most requests).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last poll found the client's bytes pending (the wait goes on).
    waiting: bool,
    /// When the request started (see `Counts::body_sent`).
    started: tokio::time::Instant,
    /// The request stays in flight on its connection while its body is being sent.
    _busy: super::client::Busy,
}

impl Limited {
    pub(super) fn new(
        inner: Incoming,
        max: u64,
        counts: Arc<Counts>,
        stall: Duration,
        started: tokio::time::Instant,
        busy: super::client::Busy,
    ) -> Limited {
        if inner.is_end_stream() {
            // Nothing to send (most requests): the backend has it all from the start, and no
            // clock is read for it.
            counts.body_sent.store(1, Relaxed);
        }
        Limited { inner, max, counts, stall, timer: None, waiting: false, started, _busy: busy }
    }

    fn sent(&self) {
        stamp(&self.counts.body_sent, self.started);
    }
}

impl Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.counts.handed.store(0, Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            // A wait for the client starts now, unless it was already going on.
            let deadline = tokio::time::Instant::now() + this.stall;
            let timer = match &mut this.timer {
                Some(t) => {
                    if !this.waiting {
                        t.as_mut().reset(deadline);
                    }
                    t
                }
                None => this.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            this.waiting = true;
            if timer.as_mut().poll(cx).is_ready() {
                this.counts.stalled.store(true, Relaxed);
                return Poll::Ready(Some(Err(Box::new(Stalled(this.stall)))));
            }
            return Poll::Pending;
        };
        this.waiting = false;
        match frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    let n = this.counts.to_backend.fetch_add(d.len() as u64, Relaxed) + d.len() as u64;
                    if n > this.max {
                        this.counts.over.store(true, Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.max)))));
                    }
                }
                // hyper sends no more once the body says it has ended, without a last poll.
                if this.inner.is_end_stream() {
                    this.sent();
                } else {
                    stamp(&this.counts.handed, this.started);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Some(Err(e)) => {
                let flag = if is_malformed(&e) { &this.counts.malformed } else { &this.counts.client_gone };
                flag.store(true, Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                this.sent();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A backend's response body on its way to the client; `hold` is dropped when the body ends
/// or the client goes away, whichever comes first.
pub struct Relayed<H: Send + 'static> {
    pub inner: Incoming,
    pub counts: Arc<Counts>,
    pub hold: Option<H>,
    /// Told when data goes to hyper, when hyper asks for more and when the backend has none
    /// yet, so a client that stops reading and a backend that stops sending are seen.
    pub(super) activity: Arc<super::client::Activity>,
}

impl<H: Send + 'static> Drop for Relayed<H> {
    fn drop(&mut self) {
        self.activity.asked();
        self.activity.backend_done();
    }
}

impl<H: Send + Unpin + 'static> Body for Relayed<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.activity.asked();
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.counts.to_client.fetch_add(d.len() as u64, Relaxed);
                    self.activity.handed();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.hold = None;
                self.activity.backend_done();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                self.hold = None;
                self.activity.backend_done();
                Poll::Ready(None)
            }
            Poll::Pending => {
                // hyper wrote what it had and asks for more: the backend keeps it waiting.
                self.activity.backend_waits();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
