//! What a config change does to established connections: nothing, unless their own backend
//! was removed or disabled (closed now, with 1001) or set to draining (closed with 1001,
//! spread with jitter over the pool's drain window, so clients do not reconnect at once).

use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use switchyard_proto::v1::AdminState;

use crate::frame::CLOSE_GOING_AWAY;
use crate::relay::CloseHandle;
use crate::state::ProxyState;
use crate::table::Table;

pub fn on_change(state: &ProxyState, old: &Table, new: &Table) {
    for (name, old_pool) in &old.pools {
        let new_pool = new.pools.get(name);
        for e in &old_pool.backends {
            let now = new_pool.and_then(|p| p.backends.iter().find(|n| n.backend.address == e.backend.address));
            let was = e.backend.admin_state;
            match now {
                None => close_all(&e.stats.connections()),
                Some(n) if n.backend.admin_state == AdminState::Disabled as i32 && was != n.backend.admin_state => {
                    close_all(&n.stats.connections())
                }
                Some(n) if n.backend.admin_state == AdminState::Draining as i32 && was != n.backend.admin_state => {
                    let window = Duration::from_millis(new_pool.map_or(30_000, |p| p.pool.drain_timeout_ms.max(1)));
                    let conns = n.stats.connections();
                    tracing::info!(backend = %n.backend.address, connections = conns.len(), ?window, "draining");
                    let token = state.shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = drain(conns, window) => {}
                        }
                    });
                }
                _ => {}
            }
        }
    }
}

fn close_all(conns: &[Arc<CloseHandle>]) {
    for c in conns {
        c.close(CLOSE_GOING_AWAY);
    }
}

/// Closes `conns` at evenly spaced, jittered times across 90% of `window`; whatever is
/// left at the window's end is closed then.
pub async fn drain(mut conns: Vec<Arc<CloseHandle>>, window: Duration) {
    conns.shuffle(&mut rand::rng());
    let n = conns.len().max(1) as u32;
    let span = window.mul_f64(0.9);
    let step = span / n;
    let start = tokio::time::Instant::now();
    for (i, c) in conns.iter().enumerate() {
        let jitter = step.mul_f64(rand::random::<f64>());
        tokio::time::sleep_until(start + step * i as u32 + jitter).await;
        c.close(CLOSE_GOING_AWAY);
    }
    tokio::time::sleep_until(start + window).await;
    close_all(&conns);
}

