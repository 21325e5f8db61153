//! Socket I/O for the relay: pooled read buffers, a read that saves the syscall that would
//! only report "would block", and writes that try once and box any wait, so that neither a
//! buffer nor a write's wait takes room in an idle connection's state.

use std::future::Future;
use std::io;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use futures::FutureExt;

use super::stream::Stream;
use tokio::time::Instant;

/// Per-read buffer size: a 16 KiB message with its frame header arrives in one read (with
/// 16 KiB it took two reads and two writes, and 16 KiB messages went at 0.66x the rate),
/// small enough that thousands of busy connections stay cheap.
const BUF: usize = 32 * 1024;
/// Buffers kept for reuse, per thread.
const POOL_MAX: usize = 512;

thread_local! {
    /// Per worker thread, so borrowing a buffer takes no lock. A buffer may come back on
    /// another thread (its task moved); each pool is capped.
    static POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer borrowed for one read and the write after it: an idle connection holds none.
/// It goes back to the pool on drop, however the read ends.
pub struct Buf(Box<[u8]>);

impl Buf {
    pub fn take() -> Buf {
        Buf(POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice()))
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // An empty boxed slice does not allocate.
        let b = std::mem::take(&mut self.0);
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(b);
            }
        });
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// Writes all of `buf`, and for TLS until its records are out too.
async fn write_all(s: &Stream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() || s.pending() {
        s.writable().await?;
        let n = s.try_write(buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Writes what the socket takes now, without waiting: the fast path of every write. The
/// caller finishes with [`write_rest`] when it returns less than all, or the stream is
/// [`Stream::pending`].
#[inline]
pub fn try_write(s: &Stream, buf: &[u8]) -> io::Result<usize> {
    s.try_write(buf)
}

/// Whether a write that took `sent` of `len` bytes must still wait.
#[inline]
pub fn unfinished(s: &Stream, sent: usize, len: usize) -> bool {
    sent < len || s.pending()
}

/// Writes the rest of a write that [`try_write`] could not finish, waiting on a slow peer
/// until `by` at most (then `TimedOut`: a peer that stops reading must not pin the connection
/// forever). Boxed, so that its readiness future and timer take no room in every connection's
/// state; a plain `fn`, so that the caller's future holds only the box.
pub fn write_rest<'a>(s: &'a Stream, rest: &'a [u8], by: Instant) -> impl Future<Output = io::Result<()>> + 'a {
    Box::pin(tokio::time::timeout_at(by, write_all(s, rest)))
        .map(|r| r.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))))
}

/// Writes one of the proxy's own frames (a Ping, a Close: a few bytes), waiting on a peer
/// that does not read for `stall` at most, as data writes do: a client that stops reading
/// when its buffers are exactly full must not pin the connection behind the proxy's Ping.
pub async fn write_frame(s: &Stream, frame: &[u8], stall: Duration) -> io::Result<()> {
    let sent = try_write(s, frame)?;
    if unfinished(s, sent, frame.len()) {
        write_rest(s, &frame[sent..], Instant::now() + stall).await?;
    }
    Ok(())
}

/// Sends our FIN; the socket stays open for reading.
pub fn shutdown_write(s: &Stream) -> io::Result<()> {
    s.shutdown_write()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy's Ping or Close to a client that stopped reading with its buffers full ends
    /// in `TimedOut` after the stall bound, as a data write does, instead of waiting forever.
    #[tokio::test]
    async fn the_proxys_own_frame_waits_on_a_peer_that_does_not_read_no_longer_than_the_stall() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _far = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let s = Stream::Plain(l.accept().await.unwrap().0);
        let chunk = vec![0u8; 1 << 16];
        while try_write(&s, &chunk).unwrap() > 0 {}
        let t = Instant::now();
        let r = write_frame(&s, &[0x89, 0], Duration::from_millis(300)).await;
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        assert!(t.elapsed() >= Duration::from_millis(300), "gave up after {:?}", t.elapsed());
    }
}
