//! Connection slots for the small HTTP ports operators and their tools use (a node's metrics
//! and console port, a proxy's admin port): a cap on all connections, and a smaller one per
//! client address. Without the second, one client holding the whole cap open keeps the
//! orchestrator's health probe out, and a probe that cannot connect gets the process
//! restarted (or, for a proxy's readiness, taken out of service).
//!
//! A refused connection is said in the log at most once every [`REPORT_EVERY`], with how many
//! were refused since: a client opening connections in a loop would otherwise write a warning
//! per connection, as fast as it can connect, and fill the disk the logs are on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most one warning about refused connections per port this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A port's slots. Cloned handles share them.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Inner>,
}

struct Inner {
    total: usize,
    per_peer: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    all: usize,
    by_peer: HashMap<IpAddr, usize>,
    /// Refused since the last report, and when that report was.
    refused: u64,
    reported: Option<Instant>,
}

/// Why a connection got no slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// Every slot of the port is held.
    All(usize),
    /// Every slot this client may hold is held.
    Peer(usize),
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::All(n) => write!(f, "{n} connections open"),
            Full::Peer(n) => write!(f, "{n} connections open from this client"),
        }
    }
}

/// A held slot, given back when dropped.
pub struct Slot {
    inner: Arc<Inner>,
    peer: IpAddr,
}

impl Slots {
    pub fn new(total: usize, per_peer: usize) -> Slots {
        Slots { inner: Arc::new(Inner { total, per_peer, held: Mutex::default() }) }
    }

    /// A slot for a connection from `peer`, if the port and that client have one free.
    pub fn take(&self, peer: IpAddr) -> Result<Slot, Full> {
        let peer = client(peer);
        let mut h = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if h.all >= self.inner.total {
            return Err(Full::All(self.inner.total));
        }
        let mine = h.by_peer.entry(peer).or_default();
        if *mine >= self.inner.per_peer {
            return Err(Full::Peer(self.inner.per_peer));
        }
        *mine += 1;
        h.all += 1;
        Ok(Slot { inner: self.inner.clone(), peer })
    }

    /// The next connection on `listener` that gets a slot. Those over the caps are closed at
    /// once and said in the log (as `port`) once every [`REPORT_EVERY`]; a failing accept (out
    /// of descriptors, most likely) backs off rather than spins. Cancel-safe.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
        port: &str,
    ) -> (tokio::net::TcpStream, SocketAddr, Slot) {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.take(peer.ip()) {
                Ok(slot) => return (sock, peer, slot),
                Err(full) => {
                    if let Some(n) = self.refused() {
                        let every = REPORT_EVERY.as_secs();
                        tracing::warn!(%peer, "{port}: {full}; {n} new connection(s) closed since the last such warning (at most one every {every} s)");
                    }
                }
            }
        }
    }

    /// Counts a refused connection; returns how many were refused since the last report when
    /// one is due (the first at once, then at most one every [`REPORT_EVERY`]).
    pub fn refused(&self) -> Option<u64> {
        self.refused_at(Instant::now())
    }

    fn refused_at(&self, now: Instant) -> Option<u64> {
        let mut h = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        h.refused += 1;
        if h.reported.is_some_and(|t| now.saturating_duration_since(t) < REPORT_EVERY) {
            return None;
        }
        h.reported = Some(now);
        Some(std::mem::take(&mut h.refused))
    }
}

/// The client a peer address counts as: an IPv4 peer seen through a dual-stack socket counts
/// as itself. (Not an IPv6 /64 as one client: on a LAN, or a cluster network handing pods
/// addresses of one /64, every neighbour would share the probe's share.)
fn client(peer: IpAddr) -> IpAddr {
    peer.to_canonical()
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        h.all -= 1;
        if let Some(n) = h.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                h.by_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_slot_and_slots_come_back() {
        let s = Slots::new(5, 2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = s.take(a).unwrap();
        let _a2 = s.take(a).unwrap();
        assert_eq!(s.take(a).err(), Some(Full::Peer(2)), "a has its share");
        let _b = [s.take(b).unwrap(), s.take(b).unwrap()];
        let _c1 = s.take(c).unwrap();
        assert_eq!(s.take(c).err(), Some(Full::All(5)), "the port is full");
        drop(a1);
        let _c2 = s.take(c).expect("a slot given back is free again");
        assert!(s.inner.held.lock().unwrap().by_peer.len() == 3);
    }

    #[test]
    fn an_ipv4_client_is_itself_through_a_dual_stack_socket() {
        let s = Slots::new(10, 2);
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        let _c = [s.take(ip("::ffff:10.0.0.1")).unwrap(), s.take(ip("10.0.0.1")).unwrap()];
        assert_eq!(s.take(ip("10.0.0.1")).err(), Some(Full::Peer(2)), "an IPv4-mapped address is the IPv4 one");
        let _v6 = [s.take(ip("2001:db8::1")).unwrap(), s.take(ip("2001:db8::2")).unwrap()];
        assert!(s.take(ip("2001:db8::3")).is_ok(), "IPv6 neighbours are clients of their own");
    }

    #[test]
    fn refusals_are_reported_at_once_then_at_most_every_period_with_their_count() {
        let s = Slots::new(1, 1);
        let t = Instant::now();
        assert_eq!(s.refused_at(t), Some(1), "the first refusal is said at once");
        for i in 1..=1000 {
            assert_eq!(s.refused_at(t + Duration::from_millis(i)), None, "refusal {i} within the period");
        }
        assert_eq!(s.refused_at(t + REPORT_EVERY), Some(1001), "the next report counts every one since");
        assert_eq!(s.refused_at(t + REPORT_EVERY + Duration::from_secs(1)), None);
    }
}
