//! Relays a WebSocket connection after the `101`: bytes are forwarded as they arrive, and
//! only frame headers are parsed (see [`crate::frame`]), so a message costs two reads, two
//! writes and a few header bytes of parsing. Both directions run in one task; an idle
//! connection holds no buffer (a buffer is borrowed from a pool for a read and the write
//! after it). The proxy writes its own frames (Close, Ping) only at frame boundaries: masked
//! toward the backend, unmasked toward the client.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::frame::{self, Tracker, Violation, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG};
use crate::stats::{BackendStats, ConnCtl};

/// Per-read buffer size: large enough for typical messages in one read, small enough that
/// thousands of busy connections stay cheap.
const BUF: usize = 16 * 1024;
/// Buffers kept for reuse.
const POOL_MAX: usize = 512;
/// After the proxy sends its Close, how long it waits for the peer to finish.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// "No deadline": a timer parked a day out.
const FAR: Duration = Duration::from_secs(86_400);

thread_local! {
    /// Per worker thread, so borrowing a buffer takes no lock. A buffer may come back on
    /// another thread (its task moved); each pool is capped.
    static POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice())
}

fn give_buf(b: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(b);
        }
    });
}

/// Reads what the socket has. A read that does not fill the buffer drained the socket, so
/// readiness is cleared at once (through `try_io`, which keeps any readiness that arrived
/// meanwhile) instead of spending a second `recv` to learn it would block: this saves a
/// syscall per message, which is most of the proxy's own cost.
fn read_some(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
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

pub async fn write_all(s: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
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

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_message: u64,
    pub idle_timeout: Option<Duration>,
    pub ping_interval: Option<Duration>,
}

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A peer closed (its Close frame went through, or its TCP connection ended).
    Peer,
    /// The proxy closed it with this code toward the client.
    Proxy(u16),
    /// The client stopped answering pings.
    DeadClient,
    Error,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToBackend,
    ToClient,
}

#[derive(Clone, Copy)]
struct Codes {
    client: u16,
    backend: u16,
    /// When the proxy decided to close: an output stuck mid-frame gets `CLOSE_LINGER` more.
    at: Instant,
}

/// A value both directions read and write. Both run in one task, so the lock is never
/// contended; it is a lock only so the task stays `Send`.
struct Slot<T: Copy>(Mutex<T>);

impl<T: Copy> Slot<T> {
    fn new(v: T) -> Self {
        Slot(Mutex::new(v))
    }
    fn get(&self) -> T {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn set(&self, v: T) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

struct Shared {
    close: Slot<Option<Codes>>,
    wake: Notify,
    /// Activity times, as nanoseconds since `base`: written on every read, so atomics rather
    /// than locks.
    base: Instant,
    last_client_ns: AtomicU64,
    last_any_ns: AtomicU64,
    /// When one direction finished, so the other does not wait forever.
    finished_at: Slot<Option<Instant>>,
    end: Slot<Option<End>>,
}

impl Shared {
    fn touch(&self, dir: Dir, now: Instant) {
        let ns = now.duration_since(self.base).as_nanos() as u64;
        self.last_any_ns.store(ns, Relaxed);
        if dir == Dir::ToBackend {
            self.last_client_ns.store(ns, Relaxed);
        }
    }

    fn last_client(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_client_ns.load(Relaxed))
    }

    fn last_any(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_any_ns.load(Relaxed))
    }

    fn request_close(&self, client: u16, backend: u16, end: End) {
        if self.close.get().is_none() {
            self.close.set(Some(Codes { client, backend, at: Instant::now() }));
            self.end.set(Some(end));
            self.wake.notify_waiters();
        }
    }
}

/// Relays until both directions are done. `client_early` and `backend_early` are bytes
/// already read past each side's HTTP head.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    client_early: &[u8],
    backend_early: &[u8],
    limits: Limits,
    ctl: &ConnCtl,
    stats: &BackendStats,
) -> End {
    let now = Instant::now();
    let sh = Shared {
        close: Slot::new(None),
        wake: Notify::new(),
        base: now,
        last_client_ns: AtomicU64::new(0),
        last_any_ns: AtomicU64::new(0),
        finished_at: Slot::new(None),
        end: Slot::new(None),
    };
    let c2b = pump(Dir::ToBackend, client, backend, client_early, limits, &sh, ctl, stats);
    let b2c = pump(Dir::ToClient, backend, client, backend_early, limits, &sh, ctl, stats);
    let (a, b) = tokio::join!(c2b, b2c);
    sh.end.get().unwrap_or(if a.is_err() || b.is_err() { End::Error } else { End::Peer })
}

/// Tells the other direction, however this one ends (return, error, or drop), so it finishes
/// within `CLOSE_LINGER` instead of waiting on a peer that may never speak again.
struct Finished<'a>(&'a Shared);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        if self.0.finished_at.get().is_none() {
            self.0.finished_at.set(Some(Instant::now()));
        }
        self.0.wake.notify_waiters();
    }
}

/// One direction of the relay.
#[allow(clippy::too_many_arguments)]
async fn pump(
    dir: Dir,
    from: &TcpStream,
    to: &TcpStream,
    early: &[u8],
    limits: Limits,
    sh: &Shared,
    ctl: &ConnCtl,
    stats: &BackendStats,
) -> io::Result<()> {
    let _finished = Finished(sh);
    let stall = write_stall(limits);
    let mut t = Tracker::new(limits.max_message);
    // A ping that fell due while this output was mid-frame; sent at the next boundary.
    let mut ping_pending = false;
    let mut sent_close = false;
    let mut ping_sent: Option<Instant> = None;
    let mut linger_until: Option<Instant> = None;
    if !early.is_empty() && !forward(dir, &mut t, early, to, sh, stats, Instant::now() + stall).await? {
        sent_close = close_if_boundary(dir, &t, to, sh).await?;
        linger_until = Some(Instant::now() + CLOSE_LINGER);
    }
    // The wake-ups and the timer live across iterations: re-creating them for every message
    // would register and deregister waiters and timers on the hot path.
    let wake = sh.wake.notified();
    tokio::pin!(wake);
    let ctl_close = ctl.notify.notified();
    tokio::pin!(ctl_close);
    let timer = tokio::time::sleep_until(Instant::now() + FAR);
    tokio::pin!(timer);
    let mut rearm = true;
    loop {
        // A close the proxy decided: send ours once this output is between frames; after
        // that, only wait for the peer to finish, discarding what it still sends.
        if !sent_close && sh.close.get().is_some() && t.at_boundary() {
            // After the peer's own Close went out on this output, a second one is not allowed.
            sent_close = t.saw_close || close_if_boundary(dir, &t, to, sh).await?;
            linger_until = Some(Instant::now() + CLOSE_LINGER);
            rearm = true;
        }
        if rearm {
            // Activity only pushes deadlines later, so the timer may fire early; it then
            // checks the real condition and re-arms. No timer work per message.
            let d = next_deadline(dir, limits, sh, ping_sent, ping_pending, linger_until)
                .unwrap_or_else(|| Instant::now() + FAR);
            timer.as_mut().reset(d);
            rearm = false;
        }
        let mut buf = None;
        tokio::select! {
            biased;
            _ = &mut wake => {
                wake.set(sh.wake.notified());
                rearm = true;
                continue;
            }
            _ = &mut ctl_close, if dir == Dir::ToClient => {
                ctl_close.set(ctl.notify.notified());
                let code = ctl.requested().unwrap_or(CLOSE_GOING_AWAY);
                sh.request_close(code, CLOSE_GOING_AWAY, End::Proxy(code));
                rearm = true;
                continue;
            }
            _ = &mut timer => {
                rearm = true;
                let now = Instant::now();
                if linger_until.is_some_and(|l| now >= l) {
                    return Ok(());
                }
                if sh.finished_at.get().is_some_and(|f| now >= f + CLOSE_LINGER) {
                    return Ok(());
                }
                if sh.close.get().is_some_and(|c| now >= c.at + CLOSE_LINGER) {
                    // Stuck mid-frame past the grace: end without our Close.
                    return Ok(());
                }
                if dir == Dir::ToClient && sh.close.get().is_none() {
                    if let Some(idle) = limits.idle_timeout {
                        if now >= sh.last_any() + idle {
                            sh.request_close(CLOSE_GOING_AWAY, CLOSE_GOING_AWAY, End::Proxy(CLOSE_GOING_AWAY));
                            continue;
                        }
                    }
                    if let Some(every) = limits.ping_interval {
                        match ping_sent {
                            Some(at) if sh.last_client() < at && now >= at + every => {
                                // No word from the client for a whole interval after our ping.
                                sh.end.set(Some(End::DeadClient));
                                return Ok(());
                            }
                            _ if now >= sh.last_client() + every && !t.saw_close => {
                                if t.at_boundary() {
                                    write_all(to, &frame::control_frame(frame::OP_PING, b"sy", None)).await?;
                                    ping_sent = Some(now);
                                } else {
                                    ping_pending = true;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                continue;
            }
            r = from.readable() => {
                r?;
                let mut b = take_buf();
                match read_some(from, &mut b) {
                    Ok(0) => {
                        give_buf(b);
                        // The peer hung up without a Close frame (crashed, killed, cut off):
                        // the other side still gets a proper Close, then the FIN.
                        if !sent_close && !t.saw_close && t.at_boundary() {
                            let _ = write_all(to, &proxy_close(dir, CLOSE_GOING_AWAY)).await;
                        }
                        let _ = shutdown_write(to);
                        return Ok(());
                    }
                    Ok(n) => buf = Some((b, n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => give_buf(b),
                    Err(e) => {
                        give_buf(b);
                        return Err(e);
                    }
                }
            }
        }
        if let Some((b, n)) = buf {
            let now = Instant::now();
            sh.touch(dir, now);
            let res =
                if sent_close { Ok(true) } else { forward(dir, &mut t, &b[..n], to, sh, stats, now + stall).await };
            give_buf(b);
            if !res? {
                sent_close = close_if_boundary(dir, &t, to, sh).await?;
                linger_until = Some(Instant::now() + CLOSE_LINGER);
                rearm = true;
            } else if ping_pending && t.at_boundary() && !t.saw_close && !sent_close {
                write_all(to, &frame::control_frame(frame::OP_PING, b"sy", None)).await?;
                ping_sent = Some(Instant::now());
                ping_pending = false;
                rearm = true;
            }
        }
    }
}

/// Forwards `data` from one side to the other. Returns false when the data broke a limit;
/// then the part before the offending frame has been forwarded and a close requested.
async fn forward(
    dir: Dir,
    t: &mut Tracker,
    data: &[u8],
    to: &TcpStream,
    sh: &Shared,
    stats: &BackendStats,
    write_by: Instant,
) -> io::Result<bool> {
    let before = t.messages;
    let was_boundary = t.at_boundary();
    let (ok_len, violation) = match t.feed(data) {
        Ok(()) => (data.len(), None),
        Err((n, v)) => (n, Some(v)),
    };
    if ok_len > 0 {
        // Usually the socket takes it all at once. Otherwise wait, but only until `write_by`: a
        // peer that stops reading must not pin the connection (and its timers) forever. The
        // slow path is boxed so the timer costs nothing in an idle connection's state.
        let sent = match to.try_write(&data[..ok_len]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent < ok_len {
            match Box::pin(tokio::time::timeout_at(write_by, write_all(to, &data[sent..ok_len]))).await {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")),
            }
        }
    }
    let (bytes, msgs) = match dir {
        Dir::ToBackend => (&stats.bytes_to_backend, &stats.messages_to_backend),
        Dir::ToClient => (&stats.bytes_to_client, &stats.messages_to_client),
    };
    bytes.fetch_add(ok_len as u64, Relaxed);
    msgs.fetch_add(t.messages - before, Relaxed);
    let Some(v) = violation else { return Ok(true) };
    let code = if v == Violation::MessageTooBig { CLOSE_TOO_BIG } else { CLOSE_PROTOCOL_ERROR };
    // The side that broke the limit hears why; the other side hears the proxy is going away.
    match dir {
        Dir::ToBackend => sh.request_close(code, CLOSE_GOING_AWAY, End::Proxy(code)),
        Dir::ToClient => sh.request_close(CLOSE_GOING_AWAY, code, End::Proxy(CLOSE_GOING_AWAY)),
    }
    // The tracker stopped at the offending header. The output is at a boundary only if none
    // of that header went out with an earlier read; otherwise the tracker stays mid-frame, so
    // no Close is written after half a header (the connection just ends).
    if ok_len > 0 || was_boundary {
        *t = Tracker::new(u64::MAX);
    }
    Ok(false)
}

/// Sends the proxy's Close on this output. Returns whether it was sent.
async fn close_if_boundary(dir: Dir, t: &Tracker, to: &TcpStream, sh: &Shared) -> io::Result<bool> {
    let Some(codes) = sh.close.get() else { return Ok(false) };
    if !t.at_boundary() {
        return Ok(false);
    }
    let f = match dir {
        Dir::ToClient => proxy_close(dir, codes.client),
        Dir::ToBackend => proxy_close(dir, codes.backend),
    };
    write_all(to, &f).await?;
    Ok(true)
}

/// The proxy's own Close toward one side: masked toward the backend, plain toward the client.
fn proxy_close(dir: Dir, code: u16) -> Vec<u8> {
    match dir {
        Dir::ToClient => frame::close_frame(code, "", None),
        Dir::ToBackend => frame::close_frame(code, "", Some(rand::random())),
    }
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write)
}

fn next_deadline(
    dir: Dir,
    limits: Limits,
    sh: &Shared,
    ping_sent: Option<Instant>,
    ping_pending: bool,
    linger_until: Option<Instant>,
) -> Option<Instant> {
    let mut d: Option<Instant> = linger_until;
    let mut min = |x: Instant| d = Some(d.map_or(x, |y| y.min(x)));
    if let Some(f) = sh.finished_at.get() {
        min(f + CLOSE_LINGER);
    }
    if let Some(c) = sh.close.get() {
        min(c.at + CLOSE_LINGER);
    }
    if dir == Dir::ToClient && sh.close.get().is_none() {
        if let Some(idle) = limits.idle_timeout {
            min(sh.last_any() + idle);
        }
        if let Some(every) = limits.ping_interval {
            match ping_sent {
                Some(at) if sh.last_client() < at => min(at + every),
                // A pending ping waits for a frame boundary, not for the timer.
                _ if ping_pending => {}
                _ => min(sh.last_client() + every),
            }
        }
    }
    d
}

/// How long one write may wait on a peer that does not read before the connection ends.
fn write_stall(limits: Limits) -> Duration {
    let mut d = Duration::from_secs(300);
    if let Some(idle) = limits.idle_timeout {
        d = d.min(idle);
    }
    if let Some(p) = limits.ping_interval {
        d = d.min(p * 2);
    }
    d.max(Duration::from_secs(1))
}
