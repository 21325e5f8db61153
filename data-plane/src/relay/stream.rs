//! One side of a relayed connection: a plain TCP socket, TLS to a backend (buffered rustls,
//! here), or a wss client (unbuffered rustls, [`crate::tls::edge`]). The relay works on
//! readiness and non-blocking reads and writes; for TLS those drive rustls by hand:
//! a read feeds ciphertext in and takes plaintext out, a write encrypts one record and hands
//! it to the socket. Encrypted bytes the socket did not take stay in rustls and count as
//! [`Stream::pending`], so a writer waits for them exactly as for a short plain write.
//!
//! Both directions of a connection run in one task, so the lock around rustls' state is
//! never contended; it is there so the task stays `Send`.

use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::socket::{read_socket, write_socket};

pub enum Stream {
    Plain(TcpStream),
    /// TLS to a backend (buffered rustls).
    Tls(Box<TlsIo>),
    /// A wss client (unbuffered rustls: an idle one holds no buffer).
    Edge(Box<crate::tls::edge::EdgeTls>),
}

pub struct TlsIo {
    tcp: TcpStream,
    st: Mutex<TlsState>,
}

struct TlsState {
    conn: rustls::Connection,
    /// Decrypted bytes may be waiting in rustls: the next read needs no readiness.
    buffered: bool,
}

impl Stream {
    /// TLS over `tcp`, past its handshake. Plaintext rustls already decrypted is read first.
    pub fn tls(tcp: TcpStream, conn: impl Into<rustls::Connection>) -> Stream {
        Stream::Tls(Box::new(TlsIo { tcp, st: Mutex::new(TlsState { conn: conn.into(), buffered: true }) }))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.tcp,
            Stream::Edge(t) => t.tcp(),
        }
    }

    /// Ready when [`Self::read_some`] may have something. A poll rather than a future: the
    /// waker waits in the socket's registration, so a relay waiting on it holds no state.
    #[inline]
    pub fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx),
            Stream::Tls(t) => {
                if t.lock().buffered {
                    return std::task::Poll::Ready(Ok(()));
                }
                t.tcp.poll_read_ready(cx)
            }
            Stream::Edge(t) => {
                if t.buffered() {
                    return std::task::Poll::Ready(Ok(()));
                }
                t.tcp().poll_read_ready(cx)
            }
        }
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// Reads what is there without waiting: `Ok(0)` at the end of the stream, `WouldBlock`
    /// when nothing is.
    #[inline]
    pub fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => read_socket(s, buf),
            Stream::Tls(t) => t.read_some(buf),
            Stream::Edge(t) => t.read_some(buf),
        }
    }

    /// Writes what the socket takes now, without waiting; for TLS, the plaintext taken (its
    /// record may still be [`Self::pending`]).
    #[inline]
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => write_socket(s, buf),
            Stream::Tls(t) => t.try_write(buf),
            Stream::Edge(t) => t.try_write(buf),
        }
    }

    /// Encrypted bytes written but not yet taken by the socket.
    #[inline]
    pub fn pending(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.lock().conn.wants_write(),
            Stream::Edge(t) => t.pending(),
        }
    }

    /// Ends our direction: TLS says `close_notify` first, then the FIN; the socket stays open
    /// for reading.
    pub fn shutdown_write(&self) -> io::Result<()> {
        if let Stream::Edge(t) = self {
            return t.shutdown_write();
        }
        if let Stream::Tls(t) = self {
            let mut st = t.lock();
            st.conn.send_close_notify();
            let _ = flush(&t.tcp, &mut st.conn);
        }
        socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Write)
    }

    /// Closes our side, then reads and discards until the peer closes its own, for at most
    /// `bound` (Envoy's delayed close, HAProxy's linger, NGINX's `lingering_close`). Dropping a socket with input unread, or getting
    /// input after it is closed, makes the kernel reset the connection and throw away what it
    /// has not yet delivered: a client that sends anything after its Close (a Pong on its
    /// way, a Ping as in Autobahn case 7.1.6) would lose the end of what it was sent, the
    /// Close frame with it, and see the connection fail (1006) instead of close.
    pub async fn linger(&self, bound: std::time::Duration) {
        let tcp = self.tcp();
        // On this future, in room the relay's state leaves in every connection's task (more
        // would grow them all): late input is a frame or two, and a mass disconnect should
        // not borrow a relay buffer for every lingering socket.
        let mut sink = [0u8; 512];
        // A client that answered the closing handshake has often hung up already: then there
        // is nothing to wait for, and this costs what the plain drop did.
        if matches!(tcp.try_read(&mut sink), Ok(0)) || self.shutdown_write().is_err() {
            return;
        }
        // A wss client's close_notify (and what was sealed before it) still queued: it goes
        // out first, within the bound, then the FIN that `shutdown_write` held back.
        if let Stream::Edge(t) = self {
            if t.pending() {
                let out = tokio::time::timeout(bound, std::future::poll_fn(|cx| t.poll_flush_outbox(cx))).await;
                if !matches!(out, Ok(Ok(()))) || t.shutdown_write().is_err() {
                    return;
                }
            }
        }
        let _ = tokio::time::timeout(bound, async {
            loop {
                if tcp.readable().await.is_err() {
                    return;
                }
                match tcp.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

/// The socket as rustls' reader; remembers whether a read came back short (the socket is
/// drained), the same saved syscall as [`read_socket`].
struct SockRead<'a> {
    s: &'a TcpStream,
    short: bool,
}

impl Read for SockRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::socket::note_read();
        let n = (&*socket2::SockRef::from(self.s)).read(buf)?;
        self.short = n > 0 && n < buf.len();
        Ok(n)
    }
}

struct SockWrite<'a>(&'a TcpStream);

impl Write for SockWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*socket2::SockRef::from(self.0)).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*socket2::SockRef::from(self.0)).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hands rustls' encrypted output to the socket until it is all out or the socket is full.
fn flush(tcp: &TcpStream, conn: &mut rustls::Connection) -> io::Result<()> {
    while conn.wants_write() {
        match tcp.try_io(Interest::WRITABLE, || conn.write_tls(&mut SockWrite(tcp))) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Socket reads one [`TlsIo::read_some`] makes that bring no plaintext before it gives the
/// task back (as the wss side's reads do).
const MAX_EMPTY_READS: usize = 4;

impl TlsIo {
    fn lock(&self) -> MutexGuard<'_, TlsState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.lock();
        let mut empty_reads = 0;
        loop {
            match st.conn.reader().read(buf) {
                Ok(n) => {
                    st.buffered = n > 0 && n == buf.len();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer hung up without close_notify: an end like any other to the relay.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            st.buffered = false;
            // A backend streaming records that hold no data (session tickets, say, each a key
            // derivation to rustls) would otherwise keep this loop, and its worker, forever;
            // the readiness stays set, so the relay comes back after the task yields.
            if empty_reads == MAX_EMPTY_READS {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            empty_reads += 1;
            let mut got = 0;
            let res = self.tcp.try_io(Interest::READABLE, || {
                let mut rd = SockRead { s: &self.tcp, short: false };
                let n = st.conn.read_tls(&mut rd)?;
                got = n;
                if rd.short {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            match res {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = st.conn.process_new_packets() {
                // rustls queued an alert saying why; the peer may as well hear it.
                let _ = flush(&self.tcp, &mut st.conn);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Answers rustls owes the peer (a key update, say) go out with no wait.
            flush(&self.tcp, &mut st.conn)?;
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.lock();
        // What is already encrypted goes first; a socket still full takes nothing new.
        flush(&self.tcp, &mut st.conn)?;
        if st.conn.wants_write() {
            return Ok(0);
        }
        let n = if buf.is_empty() { 0 } else { st.conn.writer().write(buf)? };
        flush(&self.tcp, &mut st.conn)?;
        Ok(n)
    }
}
