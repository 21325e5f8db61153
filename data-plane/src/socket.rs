//! Socket reads and writes shared by the relay and the wss record layer, below both.
//!
//! They call the kernel through rustix, not libc: glibc's `recv` and `send` are thread
//! cancellation points, and switch asynchronous cancellation off and on again around every
//! call, which was 1.5% of the proxy's CPU relaying small messages. The proxy never cancels a
//! thread.

use std::cell::Cell;
use std::io;

use rustix::net::{RecvFlags, SendFlags};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads what the socket has. A read that does not fill the buffer drained the socket, so
/// readiness is cleared at once (through `try_io`, which keeps any readiness that arrived
/// meanwhile) instead of spending a second `recv` to learn it would block: this saves a
/// syscall per message, which is most of the proxy's own cost.
#[inline]
pub fn read_socket(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    note_read();
    let mut got = 0;
    let res = s.try_io(Interest::READABLE, || {
        let (n, _) = rustix::net::recv(s, &mut *buf, RecvFlags::empty())?;
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

/// Writes what the socket takes now: `Ok(0)` when it takes nothing (readiness is cleared by
/// `try_io` then).
#[inline]
pub fn write_socket(s: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    match s.try_io(Interest::WRITABLE, || Ok(rustix::net::send(s, buf, SendFlags::NOSIGNAL)?)) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

thread_local! {
    /// This thread tried to read a socket since it last asked [`read_since_asked`].
    static READ: Cell<bool> = const { Cell::new(false) };
}

/// Records that this thread tried to read a socket: a worker's cue to yield before it parks
/// (`connection::accept`).
#[inline]
pub fn note_read() {
    READ.with(|r| r.set(true));
}

/// Whether this thread tried to read a socket since it last asked.
pub fn read_since_asked() -> bool {
    READ.with(|r| r.replace(false))
}
