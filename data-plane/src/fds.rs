//! File descriptors bound how many connections one proxy process can carry: each proxied
//! connection holds two (the client's socket and the backend's). The proxy raises its soft
//! limit to the hard one at start, says how many connections that allows, and answers 503 at
//! accept once they are spent, instead of failing `accept` in a loop or a backend connect
//! halfway through a handshake.

use std::sync::atomic::Ordering::Relaxed;

use crate::state::Runtime;

/// Descriptors kept for everything else: the admin port's connections (up to
/// [`crate::admin::MAX_ADMIN_CONNECTIONS`]) and 64 for the rest (listeners, control-plane
/// channels, the cache file, each worker's poller, the 503 itself: about 26 in use at start).
pub const RESERVED: u64 = 64 + crate::admin::MAX_ADMIN_CONNECTIONS as u64;

/// Raises the soft descriptor limit to the hard limit; returns the limit now in force, or
/// `None` when there is none (or it cannot be read).
pub fn raise_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if setrlimit(Resource::Nofile, lim).is_err() {
            lim = getrlimit(Resource::Nofile);
        }
    }
    lim.current.filter(|&n| n < i64::MAX as u64)
}

/// Proxied connections a descriptor limit leaves room for.
pub fn connections_for(limit: u64) -> usize {
    (limit.saturating_sub(RESERVED) / 2) as usize
}

/// One open client connection, counted until it drops.
pub struct Slot<'a>(&'a Runtime);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

impl<'a> Slot<'a> {
    /// Takes charge of a slot [`reserve`] counted: whoever ends up holding the connection
    /// (its worker, or the accept loop when the hand-over failed) gives it back on drop.
    pub fn adopt(rt: &'a Runtime) -> Slot<'a> {
        Slot(rt)
    }
}

/// Counts a new client connection, or says no when the budget is spent: the cap
/// (`--max-connections` or the descriptor room) on client connections, and the descriptor
/// room itself, of which idle pooled connections (to plain-HTTP backends and auth endpoints)
/// take one descriptor each. When those are what stands in the way, this worker's are closed
/// at once and the other workers' are asked to close theirs, and the client is let in: the
/// others close theirs within moments, before this client's backend connect, and the
/// descriptors kept in reserve cover the overlap. The slot crosses to a worker thread with
/// the socket; see [`Slot::adopt`].
pub fn reserve(rt: &Runtime) -> bool {
    let (max, room) = (rt.max_open.load(Relaxed), rt.fd_room.load(Relaxed));
    let n = rt.open.fetch_add(1, Relaxed);
    let capped = max > 0 && n >= max;
    let fits = || room == 0 || n + rt.pooled.load(Relaxed).div_ceil(2) < room;
    if !capped && fits() {
        return true;
    }
    if !capped && rt.pooled.load(Relaxed) > 0 {
        crate::plain::close_idle(rt);
        return true;
    }
    rt.open.fetch_sub(1, Relaxed);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_two_descriptors_a_connection_after_the_reserve() {
        assert_eq!(connections_for(20_000), 9_936);
        assert_eq!(connections_for(10), 0);
    }
}
