//! Bodies on their way through: the client's request body, counted and cut at the pool's
//! limit, and the backend's response body, counted, holding what must last as long as the
//! response does (the in-flight count, the live session binding, the access-log record).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body sent to a backend: a client's body is streamed, never buffered whole.
/// Not boxed: every request would pay an allocation for it.
pub type ReqBody = Limited;

#[derive(Debug, thiserror::Error)]
#[error("request body over the pool's limit of {0} bytes")]
pub struct TooLarge(pub u64);

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
}

/// A client's request body: fails with [`TooLarge`] once more than `max` bytes came, and
/// says so in `counts.over` (the answer is then 413, whatever the backend did with the part
/// it got).
pub struct Limited {
    pub inner: Incoming,
    pub max: u64,
    pub counts: Arc<Counts>,
}

impl Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let max = self.max;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = self.counts.to_backend.fetch_add(d.len() as u64, Relaxed) + d.len() as u64;
                    if n > max {
                        self.counts.over.store(true, Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(max)))));
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
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
}

impl<H: Send + Unpin + 'static> Body for Relayed<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.counts.to_client.fetch_add(d.len() as u64, Relaxed);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.hold = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                self.hold = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
