//! What a config change does to established connections: nothing, unless their own backend
//! was disabled (closed now, with 1001), set to draining or removed (closed with 1001,
//! spread with jitter over the pool's drain window, so clients do not reconnect at once), or
//! marked down by a health check that says to close (closed now, with 1001).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use switchyard_proto::v1::{AdminState, Health};

use crate::frame::CLOSE_GOING_AWAY;
use crate::relay::CloseHandle;
use crate::state::ProxyState;
use crate::table::{BackendEntry, PoolTable, Table};

/// A pool's backends by address: each is looked up once per change, not searched for.
fn by_address(p: &PoolTable) -> HashMap<&str, &BackendEntry> {
    p.backends.iter().map(|b| (b.backend.address.as_str(), b)).collect()
}

pub fn on_change(state: &ProxyState, old: &Table, new: &Table) {
    for (name, old_pool) in &old.pools {
        let new_pool = new.pools.get(name);
        if old_pool.panic && new_pool.is_some_and(|p| !p.panic) {
            tracing::info!(pool = %name, "the pool has a usable backend again: out of panic");
        }
        let new_backends = new_pool.map(|p| by_address(p)).unwrap_or_default();
        for e in &old_pool.backends {
            let now = new_backends.get(e.backend.address.as_str()).copied();
            let was = e.backend.admin_state;
            match now {
                // Removed: drained as if set draining first, over the pool's window (a removal
                // is how scale-down scripts and operators take a backend away, and closing all
                // of its connections at once sends every client back together). A drain under
                // way goes on; a disabled backend's connections are already closed.
                None if was == AdminState::Active as i32 => {
                    let window = drain_window(Some(&**old_pool));
                    start_drain(state, e, window, "removed: draining");
                }
                None => {}
                Some(n) if n.backend.admin_state == AdminState::Disabled as i32 && was != n.backend.admin_state => {
                    close_all(&n.stats.connections())
                }
                Some(n) if n.backend.admin_state == AdminState::Draining as i32 && was != n.backend.admin_state => {
                    let window = drain_window(new_pool.map(|p| &**p));
                    start_drain(state, n, window, "draining");
                }
                // Marked down by its health check, in a pool that asks for it (HAProxy's
                // `on-marked-down shutdown-sessions`): closed now, not spread over a window,
                // since its clients are likely talking to nothing.
                // Not when that leaves the pool in panic (every backend marked down): its
                // backends all take connections then, and closing them would only send every
                // client back at once to the same backends.
                // Also once the pool leaves panic with it still down (its closes were held
                // then, and a frozen backend's clients would otherwise stay on it for good),
                // and when the pool starts asking for it while it is down.
                Some(n)
                    if n.backend.health == Health::Unhealthy as i32
                        && new_pool.is_some_and(|p| !p.panic)
                        && closes_on_failure(new_pool.map(|p| &**p))
                        && (e.backend.health != Health::Unhealthy as i32
                            || old_pool.panic
                            || !closes_on_failure(Some(&**old_pool))) =>
                {
                    let conns = n.stats.connections();
                    tracing::info!(backend = %n.backend.address, connections = conns.len(), "health check failed: closing its connections");
                    close_all(&conns)
                }
                // Set active again mid-drain (a drain started by mistake, or called off): the
                // connections not yet closed stay, as HAProxy's `ready` keeps them.
                Some(n) if was == AdminState::Draining as i32 && n.backend.admin_state == AdminState::Active as i32 => {
                    n.stats.drain_epoch.fetch_add(1, Relaxed);
                    tracing::info!(backend = %n.backend.address, "drain called off: the backend is active again");
                }
                _ => {}
            }
        }
    }
    // Added back while a removal's drain runs (the same address keeps its counters): the
    // drain is called off, as for a backend set active again.
    for (name, new_pool) in &new.pools {
        // Said once as it starts (and once as it ends, above), not at every config change.
        if new_pool.panic && !old.pools.get(name).is_some_and(|o| o.panic) {
            tracing::warn!(pool = %name, "every backend is marked down by its health check: all of them take connections anyway (panic)");
        }
        let old_backends = old.pools.get(name).map(|p| by_address(p)).unwrap_or_default();
        for n in &new_pool.backends {
            let was_there = old_backends.contains_key(n.backend.address.as_str());
            if !was_there && n.backend.admin_state == AdminState::Active as i32 {
                n.stats.drain_epoch.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Closes the backend's connections spread over `window` (see [`drain`]), unless it is set
/// active again first.
fn closes_on_failure(pool: Option<&PoolTable>) -> bool {
    pool.and_then(|p| p.pool.health_check.as_ref()).is_some_and(|h| h.close_on_failure)
}

/// A pool's drain window: its own, 30 s where it has none (it is gone, or came from a
/// control plane or stored state from before the default was applied at write: 0 would
/// close every connection at once, the storm a drain is there to spread), a day at most.
fn drain_window(pool: Option<&PoolTable>) -> Duration {
    let ms = pool.map_or(0, |p| p.pool.drain_timeout_ms);
    Duration::from_millis(if ms == 0 { 30_000 } else { ms.min(86_400_000) })
}

fn start_drain(state: &ProxyState, b: &BackendEntry, window: Duration, what: &'static str) {
    let conns = b.stats.connections();
    tracing::info!(backend = %b.backend.address, connections = conns.len(), ?window, "{what}");
    let token = state.runtime.shutdown.clone();
    let stats = b.stats.clone();
    let until = state.registry.now_ms().saturating_add(window.as_millis() as u64);
    stats.drain_until_ms.store(until, Relaxed);
    let epoch = stats.drain_epoch.fetch_add(1, Relaxed) + 1;
    let current = move || stats.drain_epoch.load(Relaxed) == epoch;
    tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => {}
            _ = drain(conns, window, current) => {}
        }
    });
}

fn close_all(conns: &[Arc<CloseHandle>]) {
    for c in conns {
        c.close(CLOSE_GOING_AWAY);
    }
}

/// Closes `conns` at evenly spaced, jittered times across 90% of `window`; whatever is
/// left at the window's end is closed then. Stops, closing no more, once `current` says the
/// drain was called off.
pub async fn drain(mut conns: Vec<Arc<CloseHandle>>, window: Duration, current: impl Fn() -> bool) {
    conns.shuffle(&mut rand::rng());
    let n = conns.len().max(1) as u32;
    let span = window.mul_f64(0.9);
    let step = span / n;
    let start = tokio::time::Instant::now();
    for (i, c) in conns.iter().enumerate() {
        let jitter = step.mul_f64(rand::random::<f64>());
        tokio::time::sleep_until(start + step * i as u32 + jitter).await;
        if !current() {
            return;
        }
        c.close(CLOSE_GOING_AWAY);
    }
    tokio::time::sleep_until(start + window).await;
    if current() {
        close_all(&conns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Duration, Instant};

    /// Runs `drain` on a paused clock and returns each connection's close time, as an offset
    /// from the start.
    async fn close_times(n: usize, window: Duration) -> Vec<Duration> {
        let conns: Vec<_> = (0..n).map(|_| Arc::new(CloseHandle::default())).collect();
        let start = Instant::now();
        // One watcher per connection, woken by its close: on a paused clock it runs at the very
        // instant of the close, since time only moves when every task waits on a timer.
        let watchers: Vec<_> = conns
            .iter()
            .map(|c| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.asked().await;
                    start.elapsed()
                })
            })
            .collect();
        drain(conns.clone(), window, || true).await;
        let mut at = Vec::with_capacity(n);
        for w in watchers {
            at.push(w.await.unwrap());
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn closes_spread_over_90_percent_of_the_window() {
        let window = Duration::from_secs(10);
        let at = close_times(50, window).await;
        let (first, last) = (at.iter().min().unwrap(), at.iter().max().unwrap());
        assert!(*last <= window.mul_f64(0.9), "last close at {last:?}");
        assert!(*first < Duration::from_secs(1), "the first close is early, at {first:?}");
        assert!(*last > Duration::from_secs(8), "the last close is late, at {last:?}");
        // Evenly: each tenth of the span gets about a tenth of the connections.
        for k in 0..9 {
            let slot = Duration::from_millis(1000 * k)..Duration::from_millis(1000 * (k + 1));
            let n = at.iter().filter(|t| slot.contains(*t)).count();
            assert!((2..=9).contains(&n), "{n} closes in {slot:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_order_is_shuffled() {
        let at = close_times(20, Duration::from_secs(1)).await;
        let mut sorted = at.clone();
        sorted.sort();
        // 20 connections closed in their given order by chance: 1 in 20!.
        assert_ne!(at, sorted, "closed in the order given");
    }

    #[tokio::test(start_paused = true)]
    async fn every_connection_is_closed_by_the_windows_end() {
        let conns: Vec<_> = (0..3).map(|_| Arc::new(CloseHandle::default())).collect();
        let start = Instant::now();
        drain(conns.clone(), Duration::from_millis(100), || true).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert!(conns.iter().all(|c| c.requested() == Some(CLOSE_GOING_AWAY)));
        // A single connection is closed within the span too, not at the end.
        let one = close_times(1, Duration::from_secs(10)).await;
        assert!(one[0] <= Duration::from_secs(9), "{one:?}");
    }

    /// A drain called off midway (the backend set active again) closes nothing more.
    #[tokio::test(start_paused = true)]
    async fn a_drain_called_off_closes_nothing_more() {
        let conns: Vec<_> = (0..10).map(|_| Arc::new(CloseHandle::default())).collect();
        let start = Instant::now();
        let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still = on.clone();
        let task = tokio::spawn(drain(conns.clone(), Duration::from_secs(10), move || still.load(Relaxed)));
        tokio::time::sleep(Duration::from_secs(3)).await;
        on.store(false, Relaxed);
        let closed_then = conns.iter().filter(|c| c.requested().is_some()).count();
        task.await.unwrap();
        // Turns are 0.9 s apart with up to 0.9 s of jitter: the next one after 3 s comes
        // before 4.8 s, and a drain not called off would run to the window's end at 10 s.
        assert!(start.elapsed() < Duration::from_millis(4800), "stopped at the next turn, at {:?}", start.elapsed());
        let closed = conns.iter().filter(|c| c.requested().is_some()).count();
        assert_eq!(closed, closed_then, "nothing closed after the drain was called off");
        assert!((1..10).contains(&closed), "{closed} of 10 closed in the first 3 s");
    }
}
