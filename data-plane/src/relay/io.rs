//! Socket I/O for the relay: pooled read buffers, a read that saves the syscall that would
//! only report "would block", and writes that try once and box any wait, so that neither a
//! buffer nor a write's wait takes room in an idle connection's state.

use std::future::Future;
use std::io;
use std::ops::{Deref, DerefMut};

use futures::FutureExt;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Per-read buffer size: large enough for typical messages in one read, small enough that
/// thousands of busy connections stay cheap.
const BUF: usize = 16 * 1024;
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

/// Reads what the socket has. A read that does not fill the buffer drained the socket, so
/// readiness is cleared at once (through `try_io`, which keeps any readiness that arrived
/// meanwhile) instead of spending a second `recv` to learn it would block: this saves a
/// syscall per message, which is most of the proxy's own cost.
pub fn read_some(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut got = 0;
    let res = s.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(s)).read(buf)?;
        got = n;
        if n > 0 && n < buf.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match res {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

async fn write_all(s: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes what the socket takes now, without waiting: the fast path of every write.
pub fn try_write(s: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    match s.try_write(buf) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// Writes the rest of a write that [`try_write`] could not finish, waiting on a slow peer
/// until `by` at most (then `TimedOut`: a peer that stops reading must not pin the connection
/// forever). Boxed, so that its readiness future and timer take no room in every connection's
/// state; a plain `fn`, so that the caller's future holds only the box.
pub fn write_rest<'a>(s: &'a TcpStream, rest: &'a [u8], by: Instant) -> impl Future<Output = io::Result<()>> + 'a {
    Box::pin(tokio::time::timeout_at(by, write_all(s, rest)))
        .map(|r| r.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))))
}

/// Writes one of the proxy's own frames (a few bytes), however long it takes.
pub async fn write_frame(s: &TcpStream, frame: &[u8]) -> io::Result<()> {
    let sent = try_write(s, frame)?;
    if sent < frame.len() {
        Box::pin(write_all(s, &frame[sent..])).await?;
    }
    Ok(())
}

/// Sends our FIN; the socket stays open for reading.
pub fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write)
}
