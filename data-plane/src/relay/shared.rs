//! What the two directions of one connection share: the close the proxy decided, activity
//! times, when one direction finished, and how the connection ended.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::limits::{End, Side, Why};
use super::signal::Signal;

/// The close the proxy decided: the code each side hears.
#[derive(Clone, Copy, Debug)]
pub struct Codes {
    pub client: u16,
    pub backend: u16,
    /// The client broke the protocol: what the backend sends until it answers our Close still
    /// reaches the client (the replies to messages that came before the offending frame), then
    /// the client hears `client` in place of the backend's answer.
    pub hold_client: bool,
    /// When the proxy decided: both peers have `CLOSE_LINGER` from then to finish.
    pub at: Instant,
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

pub struct Shared {
    close: Slot<Option<Codes>>,
    /// Wakes both directions when `close` or `finished_at` changes their deadlines.
    pub wake: Signal,
    /// Activity times, as nanoseconds since `base`: written on every read, so atomics rather
    /// than locks.
    base: Instant,
    last_client_ns: AtomicU64,
    last_any_ns: AtomicU64,
    /// When one direction finished, so the other does not wait forever.
    finished_at: Slot<Option<Instant>>,
    end: Slot<Option<End>>,
    why: Slot<Option<Why>>,
    first: Slot<Option<Side>>,
    /// Which Close frames went by, and whether both sockets are plain (see
    /// [`Self::closed_for`]).
    closes: AtomicU8,
    /// When the first peer's Close went by, as nanoseconds since `base` plus one (0: none).
    close_seen_ns: AtomicU64,
    /// The relay ended on the closing handshake with the client's socket still open for
    /// reading: it is to be closed by lingering (see [`super::Stream::linger`]).
    client_open: AtomicBool,
}

/// Bits of [`Shared::closes`]: a Close came from the peer feeding `side`, a Close went out to
/// `side`'s peer, both sockets are plain TCP.
fn came_from(side: Side) -> u8 {
    match side {
        Side::ToBackend => 1,
        Side::ToClient => 2,
    }
}
fn went_to(side: Side) -> u8 {
    match side {
        Side::ToBackend => 4,
        Side::ToClient => 8,
    }
}
const PLAIN: u8 = 16;

impl Shared {
    pub fn new(now: Instant) -> Shared {
        Shared {
            close: Slot::new(None),
            wake: Signal::default(),
            base: now,
            last_client_ns: AtomicU64::new(0),
            last_any_ns: AtomicU64::new(0),
            finished_at: Slot::new(None),
            end: Slot::new(None),
            why: Slot::new(None),
            first: Slot::new(None),
            closes: AtomicU8::new(0),
            close_seen_ns: AtomicU64::new(0),
            client_open: AtomicBool::new(false),
        }
    }

    /// Both sockets are plain TCP: closing one sends its FIN, with nothing owed before it.
    pub fn set_plain(&self) {
        self.closes.fetch_or(PLAIN, Relaxed);
    }

    /// The relay leaves the client's socket open for reading (see [`Self::client_open`]).
    pub fn leave_client_open(&self) {
        self.client_open.store(true, Relaxed);
    }

    pub fn client_open(&self) -> bool {
        self.client_open.load(Relaxed)
    }

    /// The peer feeding `side` sent its Close frame (at `now`).
    pub fn close_came(&self, side: Side, now: Instant) {
        self.closes.fetch_or(came_from(side), Relaxed);
        let ns = now.saturating_duration_since(self.base).as_nanos() as u64 + 1;
        if self.close_seen_ns.compare_exchange(0, ns, Relaxed, Relaxed).is_ok() {
            // The client output watches the closing handshake's bound, whichever side began it.
            self.wake.raise();
        }
    }

    /// When the first peer's Close went by, if one did.
    pub fn close_seen_at(&self) -> Option<Instant> {
        match self.close_seen_ns.load(Relaxed) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns - 1)),
        }
    }

    /// A Close frame (the other peer's, or the proxy's own) went out to `side`'s peer.
    pub fn close_went(&self, side: Side) {
        self.closes.fetch_or(went_to(side), Relaxed);
    }

    /// A Close frame went out to `side`'s peer.
    pub fn close_went_to(&self, side: Side) -> bool {
        self.closes.load(Relaxed) & went_to(side) != 0
    }

    /// The peer that `side` writes to has sent its Close and been sent one (its peer's or the
    /// proxy's), and both sockets are plain: it may send nothing more (RFC 6455 5.5.1). Once
    /// the other peer is gone, the relay then ends at once instead of half-closing this one
    /// and waiting for its FIN (a client's socket is then closed by lingering, outside the
    /// relay: see [`Self::leave_client_open`]).
    pub fn closed_for(&self, side: Side) -> bool {
        let done = came_from(side.other()) | went_to(side) | PLAIN;
        self.closes.load(Relaxed) & done == done
    }

    /// Records that `side`'s input was just heard from (the client, if it feeds the backend),
    /// and whether it `spoke`: sent more than Pongs, which show a peer is alive (for pings)
    /// but not that the connection is in use (for the idle timeout).
    pub fn touch(&self, side: Side, now: Instant, spoke: bool) {
        let ns = now.duration_since(self.base).as_nanos() as u64;
        if spoke {
            self.last_any_ns.store(ns, Relaxed);
        }
        if side == Side::ToBackend {
            self.last_client_ns.store(ns, Relaxed);
        }
    }

    pub fn last_client(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_client_ns.load(Relaxed))
    }

    pub fn last_any(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_any_ns.load(Relaxed))
    }

    /// Decides to close (the first decision wins) and wakes both directions to send it.
    pub fn request_close(&self, client: u16, backend: u16, end: End, why: Why) {
        self.decide(Codes { client, backend, hold_client: false, at: Instant::now() }, end, why);
    }

    /// As [`Self::request_close`], with the client's Close held until the backend answered
    /// (see [`Codes::hold_client`]).
    pub fn request_close_held(&self, client: u16, backend: u16, end: End, why: Why) {
        self.decide(Codes { client, backend, hold_client: true, at: Instant::now() }, end, why);
    }

    fn decide(&self, codes: Codes, end: End, why: Why) {
        if self.close.get().is_none() {
            self.close.set(Some(codes));
            self.why.set(Some(why));
            self.end.set(Some(end));
            self.wake.raise();
        }
    }

    pub fn close(&self) -> Option<Codes> {
        self.close.get()
    }

    pub fn finished_at(&self) -> Option<Instant> {
        self.finished_at.get()
    }

    pub fn set_end(&self, end: End) {
        self.end.set(Some(end));
    }

    pub fn end(&self) -> Option<End> {
        self.end.get()
    }

    pub fn why(&self) -> Option<Why> {
        self.why.get()
    }

    /// Records that the peer feeding `side` ended (Close or end of stream), if none did yet.
    pub fn peer_ended(&self, side: Side) {
        if self.first.get().is_none() {
            self.first.set(Some(side));
        }
    }

    pub fn first(&self) -> Option<Side> {
        self.first.get()
    }
}

/// Tells the other direction, however this one ends (return, error, or drop), so it finishes
/// within `CLOSE_LINGER` instead of waiting on a peer that may never speak again.
pub struct Finished<'a>(pub &'a Shared);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        if self.0.finished_at.get().is_none() {
            self.0.finished_at.set(Some(Instant::now()));
        }
        self.0.wake.raise();
    }
}
