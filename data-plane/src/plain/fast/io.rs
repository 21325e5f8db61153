//! The fast path's reads and writes: bounded by one per-connection clock, into buffers lent
//! by the worker.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

/// Buffers a worker's connections borrow for a request (a backend's bytes, heads on their
/// way out) and give back when it ends: an idle kept-alive connection holds none.
pub(super) mod spare {
    use std::cell::RefCell;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }
    /// Kept per worker; a buffer grown past `BIG` is freed instead.
    const KEPT: usize = 64;
    const BIG: usize = 64 * 1024;

    pub(in crate::plain::fast) fn lend(v: &mut Vec<u8>) {
        if v.capacity() == 0 {
            *v = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        }
    }

    pub(in crate::plain::fast) fn give_back(v: &mut Vec<u8>) {
        let mut v = std::mem::take(v);
        if v.capacity() == 0 || v.capacity() > BIG {
            return;
        }
        v.clear();
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEPT {
                s.push(v);
            }
        });
    }
}

/// One deadline at a time, on one timer: each phase of a request sets when it must be over,
/// and the timer is moved only when it fires early or the new deadline is sooner (moving
/// it for every phase of every request would cost a timer-wheel update each).
pub(super) struct Clock {
    pub(super) sleep: Pin<Box<Sleep>>,
    pub(super) due: Instant,
}

impl Clock {
    pub(super) fn set(&mut self, due: Instant) {
        self.due = due;
        if due < self.sleep.deadline() {
            self.sleep.as_mut().reset(due);
        }
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= self.due {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(self.due);
        }
    }
}

#[derive(Debug)]
pub(super) enum Fail {
    Timeout,
    Io,
    /// The other side (the client, while its backend is awaited) closed.
    Gone,
}

pub(super) fn poll_read_into<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    room: usize,
    cx: &mut Context<'_>,
) -> Poll<Result<usize, Fail>> {
    buf.reserve(room);
    crate::socket::note_read();
    poll_read_buf(Pin::new(io), cx, buf).map_err(|_| Fail::Io)
}

/// Writes all of `bytes` to `io`, and flushes it, before `clock` is due.
pub(super) async fn write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    mut bytes: &[u8],
    clock: &mut Clock,
) -> Result<(), Fail> {
    std::future::poll_fn(|cx| {
        while !bytes.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, bytes) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Fail::Io)),
                Poll::Ready(Ok(n)) => bytes = &bytes[n..],
                Poll::Pending => return clock.poll(cx).map(|()| Err(Fail::Timeout)),
            }
        }
        match Pin::new(&mut *io).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(|_| Fail::Io)),
            Poll::Pending => clock.poll(cx).map(|()| Err(Fail::Timeout)),
        }
    })
    .await
}
