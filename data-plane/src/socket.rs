//! Socket reads shared by the relay and the wss record layer, below both.

use std::io::{self, Read};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads what the socket has. A read that does not fill the buffer drained the socket, so
/// readiness is cleared at once (through `try_io`, which keeps any readiness that arrived
/// meanwhile) instead of spending a second `recv` to learn it would block: this saves a
/// syscall per message, which is most of the proxy's own cost.
#[inline]
pub fn read_socket(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    let res = s.try_io(Interest::READABLE, || {
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
