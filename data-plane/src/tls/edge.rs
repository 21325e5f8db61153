//! wss termination on rustls' unbuffered API, driven by hand.
//!
//! Buffered rustls keeps a read buffer of at least 4 KiB in every connection for as long as
//! it lives: more than all the rest of an idle wss connection. Here ciphertext is read into a
//! per-worker scratch buffer and decrypted from there, and encrypted into another; a
//! connection keeps bytes of its own only while a record is split across reads, a reader's
//! buffer was too small for what was decrypted, or the socket would not take what was
//! encrypted. Once the handshake is over, the keys are taken out of rustls and records are
//! opened and sealed by [`records`]: an idle connection then holds its keys and sequence
//! numbers, and nothing else.
//!
//! The relay uses it through [`crate::relay::Stream`] (readiness and non-blocking reads and
//! writes); the handshake phase and plain HTTP through `AsyncRead`/`AsyncWrite`.

use std::cell::RefCell;
use std::io;
use std::sync::{Mutex, MutexGuard};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, UnbufferedStatus, WriteTraffic,
};
use tokio::net::TcpStream;

use self::records::Records;
use crate::socket::write_socket;

/// Ciphertext one socket read takes at most: a 16 KiB message in its record arrives whole.
const READ: usize = 32 * 1024;
/// The read scratch: what a connection may hold back (a handshake message being joined,
/// which rustls caps at 64 KiB, or the start of a record) and one read after it.
const IN_CAP: usize = 64 * 1024 + 1024 + READ;
/// Socket reads one [`EdgeTls::read_some`] makes that bring no plaintext (records with no
/// data, a key update, a warning) before it gives the task back: a peer streaming such records
/// does not hold the worker.
const EMPTY_READS: usize = 4;
/// The most room an unfinished record is kept in between reads: one whole record of the
/// largest size a peer may send (RFC 8446 5.2), with its header.
const KEPT_INBOX: usize = 5 + (1 << 14) + 256;
/// Plaintext one write encrypts at most (a caller with more writes again).
const WRITE_MAX: usize = 64 * 1024;
/// The write scratch: `WRITE_MAX` in 16 KiB records, each with at most 64 bytes of header,
/// padding and tag.
const OUT_CAP: usize = WRITE_MAX + (WRITE_MAX / (16 * 1024) + 1) * 64;

thread_local! {
    /// Per worker thread: every use is synchronous, so one buffer serves all its connections.
    static IN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer (made on first use), or on a fresh one should
/// the scratch be in use already.
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    cap: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < cap {
                v.resize(cap, 0);
            }
            f(&mut v[..cap])
        }
        Err(_) => f(&mut vec![0u8; cap]),
    })
}

/// A wss client's connection: the socket and rustls' state for it.
pub struct EdgeTls {
    tcp: TcpStream,
    /// Both directions of a connection run in one task, so this is never contended; it is
    /// there so the connection is `Sync` for the relay's shared references.
    st: Mutex<State>,
}

/// Who protects records: rustls during the handshake, [`Records`] after it.
enum Engine {
    Rustls(Box<UnbufferedServerConnection>),
    Records(Records),
    /// Between the two, and after a failed hand-over.
    Gone,
}

struct State {
    engine: Engine,
    /// Ciphertext read and not yet used up: the start of a record split across reads, or a
    /// handshake message being joined. Empty, and unallocated, between whole records.
    inbox: Vec<u8>,
    /// Plaintext decrypted and not yet read, from `plain_at`: only when a reader's buffer was
    /// smaller than what its read decrypted.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes the socket has not taken yet, from `out_at`.
    outbox: Vec<u8>,
    out_at: usize,
    /// The peer said close_notify, or hung up: no more plaintext will come.
    eof: bool,
    close_sent: bool,
    /// Why TLS failed: every later read and write fails the same way.
    failed: Option<rustls::Error>,
}

fn broken(e: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.clone())
}

/// Copies a handshake record (or alert) rustls has ready onto the end of `outbox`.
fn encode(outbox: &mut Vec<u8>, e: &mut EncodeTlsData<'_, ServerConnectionData>) -> io::Result<()> {
    let mut room = 4096;
    loop {
        let start = outbox.len();
        outbox.resize(start + room, 0);
        match e.encode(&mut outbox[start..]) {
            Ok(n) => {
                outbox.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outbox.truncate(start);
                room = required_size;
            }
            Err(other) => {
                outbox.truncate(start);
                return Err(io::Error::other(other.to_string()));
            }
        }
    }
}

impl State {
    /// Processes the ciphertext in `inb[*start..]`: plaintext goes to `out[*filled..]` (what
    /// does not fit, to `plain`), records rustls owes the peer to `outbox`, and `start` moves
    /// past what rustls is done with. Stops once every whole record is used and more
    /// ciphertext is needed, or the peer closed.
    fn process(&mut self, inb: &mut [u8], start: &mut usize, out: &mut [u8], filled: &mut usize) -> io::Result<()> {
        let conn = match &mut self.engine {
            Engine::Rustls(conn) => conn,
            Engine::Records(_) => return self.open_records(inb, start, out, filled),
            Engine::Gone => return Err(self.gone()),
        };
        loop {
            // Once the handshake is over rustls gets no more input, only the chance to hand out
            // what it owes (tickets, its Finished): a record after the client's Finished (a key
            // update, say) is for `Records`, which takes the keys as they are now.
            let over = !conn.is_handshaking();
            let input = if over { &mut [][..] } else { &mut inb[*start..] };
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(input);
            let res = match state {
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut res = Ok(false);
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => {
                                discard += rec.discard;
                                let p = rec.payload;
                                let n = p.len().min(out.len() - *filled);
                                out[*filled..*filled + n].copy_from_slice(&p[..n]);
                                *filled += n;
                                self.plain.extend_from_slice(&p[n..]);
                            }
                            Err(e) => {
                                res = Err(e);
                                break;
                            }
                        }
                    }
                    res
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut self.outbox, &mut e).map(|_| false).map_err(|e| rustls::Error::General(e.to_string()))
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // Queued in `outbox`, which goes out before anything encrypted later.
                    t.done();
                    Ok(false)
                }
                Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
                    self.eof = true;
                    Ok(true)
                }
                Ok(ConnectionState::BlockedHandshake) | Ok(ConnectionState::WriteTraffic(_)) => Ok(true),
                // No early data is offered, so none can arrive.
                Ok(_) => Err(rustls::Error::General("unexpected TLS state".into())),
                Err(e) => Err(e),
            };
            // Dropping from the front is moving the start: rustls sees the same bytes.
            *start += discard;
            match res {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.fail(e, &mut inb[*start..])),
            }
        }
    }

    /// rustls finished the handshake and the keys are still to be handed over.
    fn handshake_over(&self) -> bool {
        matches!(&self.engine, Engine::Rustls(conn) if !conn.is_handshaking())
    }

    fn gone(&self) -> io::Error {
        // A rustls error inside, as for every TLS failure: what reads it can tell TLS from the
        // bytes it carries (see `plain::bodies`).
        io::Error::new(io::ErrorKind::InvalidData, rustls::Error::General("TLS connection has no keys".into()))
    }

    /// Marks the connection failed, with the alert rustls queued saying why in `outbox`.
    /// rustls hands out queued records before it looks at input again, and it is asked only
    /// while it has some: looking at the input again would fail, and alert, a second time.
    fn fail(&mut self, e: rustls::Error, rest: &mut [u8]) -> io::Error {
        for _ in 0..4 {
            let Engine::Rustls(conn) = &mut self.engine else { break };
            if !conn.wants_write() {
                break;
            }
            match conn.process_tls_records(rest).state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    if encode(&mut self.outbox, &mut enc).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        let io = broken(&e);
        self.failed = Some(e);
        io
    }

    /// Encrypts with `f` (application data, or a close_notify) into `o`, after any records
    /// rustls owes the peer first (a key update, say), which go to `outbox`.
    fn encrypt(
        &mut self,
        o: &mut [u8],
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut [u8]) -> Result<usize, EncryptError>,
    ) -> io::Result<usize> {
        let mut f = Some(f);
        loop {
            let Engine::Rustls(conn) = &mut self.engine else { return Err(self.gone()) };
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut self.inbox[..]);
            let res = match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let f = f.take().expect("encrypts once");
                    return f(&mut w, o).map_err(|e| io::Error::other(e.to_string()));
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut self.outbox, &mut e).map_err(|e| rustls::Error::General(e.to_string()))
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Ok(())
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.eof = true;
                    Ok(())
                }
                Ok(ConnectionState::Closed) => return Err(io::ErrorKind::BrokenPipe.into()),
                // Reads use up every whole record, so a write finds none; anything else
                // means the handshake is not done.
                Ok(_) => Err(rustls::Error::General("TLS connection not ready for data".into())),
                Err(e) => Err(e),
            };
            if discard > 0 {
                self.inbox.drain(..discard);
            }
            if let Err(e) = res {
                let mut rest = std::mem::take(&mut self.inbox);
                let err = self.fail(e, &mut rest);
                self.inbox = rest;
                return Err(err);
            }
        }
    }

    fn pending(&self) -> bool {
        self.out_at < self.outbox.len()
    }

    /// Hands `outbox` to the socket until it is empty (then freed) or the socket is full.
    fn flush(&mut self, tcp: &TcpStream) -> io::Result<()> {
        while self.pending() {
            match write_socket(tcp, &self.outbox[self.out_at..])? {
                0 => return Ok(()),
                n => self.out_at += n,
            }
        }
        if !self.outbox.is_empty() {
            self.outbox = Vec::new();
            self.out_at = 0;
        }
        Ok(())
    }

    /// Sends `o` after whatever is already waiting in `outbox`; what the socket does not take
    /// waits there.
    fn send(&mut self, tcp: &TcpStream, o: &[u8]) -> io::Result<()> {
        if self.pending() {
            self.outbox.extend_from_slice(o);
            return self.flush(tcp);
        }
        let sent = write_socket(tcp, o)?;
        if sent < o.len() {
            self.outbox.clear();
            self.out_at = 0;
            self.outbox.extend_from_slice(&o[sent..]);
        }
        Ok(())
    }

    fn take_plain(&mut self, out: &mut [u8]) -> usize {
        let n = (self.plain.len() - self.plain_at).min(out.len());
        out[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        n
    }
}

impl EdgeTls {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.lock().engine {
            Engine::Rustls(conn) => conn.protocol_version(),
            Engine::Records(r) => Some(r.protocol_version()),
            Engine::Gone => None,
        }
    }

    /// Plaintext is waiting here: the next read needs no readiness from the socket.
    pub fn buffered(&self) -> bool {
        let st = self.lock();
        st.plain_at < st.plain.len()
    }

    /// Reads plaintext without waiting: `Ok(0)` at the end of the stream (close_notify, or
    /// the peer hung up without it), `WouldBlock` when nothing is there.
    pub fn read_some(&self, out: &mut [u8]) -> io::Result<usize> {
        let mut guard = self.lock();
        let st = &mut *guard;
        // Plaintext opened before a record that failed is still the peer's: it goes first.
        if st.plain_at < st.plain.len() {
            return Ok(st.take_plain(out));
        }
        if let Some(e) = &st.failed {
            return Err(broken(e));
        }
        if st.eof {
            return Ok(0);
        }
        let res = with_scratch(&IN, IN_CAP, |inb| {
            let mut used = st.inbox.len();
            inb[..used].copy_from_slice(&st.inbox);
            let mut start = 0;
            let mut filled = 0;
            let mut empty_reads = 0;
            let res = loop {
                // (Nothing to process is nothing to do: what rustls owes comes out of input.)
                if used > start {
                    if let Err(e) = st.process(&mut inb[..used], &mut start, out, &mut filled) {
                        // What came before the bad record is read first; the failure is kept
                        // for the next read.
                        break if filled > 0 { Ok(filled) } else { Err(e) };
                    }
                }
                if filled > 0 || st.eof || !st.plain.is_empty() || st.handshake_over() {
                    break Ok(filled);
                }
                if empty_reads == EMPTY_READS {
                    break Err(io::ErrorKind::WouldBlock.into());
                }
                // Only the start of a record is left: it moves to the front, once per read.
                if start > 0 {
                    inb.copy_within(start..used, 0);
                    used -= start;
                    start = 0;
                }
                if used == inb.len() {
                    let e = rustls::Error::General("TLS message too large".into());
                    break Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                let end = inb.len().min(used + READ);
                match crate::socket::read_socket(&self.tcp, &mut inb[used..end]) {
                    Ok(0) if used > start => {
                        // A FIN inside a record: the stream was cut, not closed (TLS's
                        // protection against truncation).
                        let e = rustls::Error::General("TLS record cut short by the peer's FIN".into());
                        let io = io::Error::new(io::ErrorKind::UnexpectedEof, e.clone());
                        st.failed = Some(e);
                        break Err(io);
                    }
                    Ok(0) => {
                        st.eof = true;
                        break Ok(0);
                    }
                    Ok(n) => {
                        used += n;
                        empty_reads += 1;
                    }
                    Err(e) => break Err(e),
                }
            };
            // After the end, or a failure, what is left can never be used.
            let rest = if st.eof || st.failed.is_some() { &inb[..0] } else { &inb[start..used] };
            if rest.is_empty() {
                st.inbox = Vec::new();
            } else if st.inbox.capacity() > KEPT_INBOX.max(2 * rest.len()) {
                // A big handshake flight once grew it: what is left now is not kept in that
                // room for the connection's life.
                st.inbox = rest.to_vec();
            } else {
                st.inbox.clear();
                st.inbox.extend_from_slice(rest);
            }
            res
        });
        // Records rustls owes the peer (handshake flights, alerts, a key update) go out with
        // no wait; a write error shows on the next write.
        let _ = st.flush(&self.tcp);
        res
    }

    /// Encrypts and sends what the socket takes now, without waiting: the plaintext taken
    /// (its records may still be [`Self::pending`]), 0 while earlier records still wait.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(e) = &st.failed {
            return Err(broken(e));
        }
        st.flush(&self.tcp)?;
        if st.pending() || buf.is_empty() {
            return Ok(0);
        }
        let buf = &buf[..buf.len().min(WRITE_MAX)];
        with_scratch(&OUT, OUT_CAP, |o| {
            let n = match &mut st.engine {
                Engine::Records(r) => r.seal_data(buf, o).map_err(|f| st.failed_records(f))?,
                _ => st.encrypt(o, |w, o| w.encrypt(buf, o))?,
            };
            st.send(&self.tcp, &o[..n])
        })?;
        Ok(buf.len())
    }

    /// Encrypted bytes not yet taken by the socket.
    pub fn pending(&self) -> bool {
        self.lock().pending()
    }

    /// Queues close_notify (once) and sends what the socket takes.
    fn close_notify(&self) -> io::Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if !st.close_sent && st.failed.is_none() {
            st.close_sent = true;
            with_scratch(&OUT, OUT_CAP, |o| {
                let n = match &mut st.engine {
                    Engine::Records(r) => r.close_notify(o).map_err(|f| st.failed_records(f))?,
                    _ => st.encrypt(o, |w, o| w.queue_close_notify(o))?,
                };
                st.send(&self.tcp, &o[..n])
            })?;
        }
        st.flush(&self.tcp)
    }

    /// Ends our direction: close_notify, then the FIN; the socket stays open for reading.
    /// While the socket has not taken all that is sealed (close_notify among it), the FIN
    /// waits: sent now, it would cut what is still queued here, and the client would see a
    /// truncated stream. [`crate::relay::Stream::linger`] sends it once the queue is out.
    pub fn shutdown_write(&self) -> io::Result<()> {
        let _ = self.close_notify();
        if self.pending() {
            return Ok(());
        }
        socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write)
    }
}

mod handshake;
mod records;
#[cfg(test)]
mod tests;

pub use handshake::accept;
