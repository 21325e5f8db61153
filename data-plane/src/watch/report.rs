//! Reports to the control plane: which revision this proxy runs, its connection counts, and
//! the session bindings it made; the reply brings back the other proxies' connection counts.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_model::grpc::{self, ChannelOptions, ClientTls};
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::{BackendLoad, ProxyReport, SessionBinding};
use tokio::sync::watch;

use crate::state::ProxyState;
use crate::table::Table;

/// A report that gets no answer within this long counts as failed; the next node is tried.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// New connections arriving together are reported together.
const GATHER: Duration = Duration::from_millis(2);

/// Reports at once when something changed, and otherwise often enough to refresh live
/// sessions' bindings when due ([`refresh_interval`], [`Affinity::take_report`]).
///
/// [`Affinity::take_report`]: crate::affinity::Affinity::take_report
pub async fn run(state: Arc<ProxyState>, endpoints: Vec<String>, mut applied: watch::Receiver<u64>, tls: ClientTls) {
    let mut i = 0usize;
    // The channel to the node last reported to, kept so each report does not cost a new
    // connection (and, with TLS, a handshake).
    let mut open: Option<(String, grpc::Channel)> = None;
    let mut last_tick = Instant::now();
    loop {
        let table = state.table.load();
        let refresh_every = refresh_interval(&table);
        // Due refreshes go only with the periodic report (see `Affinity::take_report`).
        let periodic = last_tick.elapsed() >= refresh_every;
        if periodic {
            last_tick = Instant::now();
        }
        let taken = Instant::now();
        let bindings = state.affinity.take_report(taken, |pool| affinity_ttl(&table, pool), periodic);
        drop(table);
        let sent: Vec<SessionBinding> = bindings.clone();
        let rev = *applied.borrow_and_update();
        let loads: Vec<BackendLoad> = state
            .registry
            .all()
            .into_iter()
            .map(|((pool, address), s)| BackendLoad { pool, address, connections: s.active.load(Relaxed) })
            .collect();
        let mine: HashMap<(String, String), u64> =
            loads.iter().map(|l| ((l.pool.clone(), l.address.clone()), l.connections)).collect();
        let report = ProxyReport {
            proxy_id: state.proxy_id.clone(),
            applied_revision: rev,
            current_through: rev.max(state.status.control_plane().through),
            rejected_reason: String::new(),
            loads,
            bindings,
            handshake_failures: state.runtime.failures().values().sum(),
            applied_unix_ms: state
                .status
                .applied_at(rev)
                .map_or(0, |(_, at)| at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)),
        };
        let addr = state.status.control_plane().connected.unwrap_or_else(|| endpoints[i % endpoints.len()].clone());
        let ch = match &open {
            Some((a, ch)) if *a == addr => Ok(ch.clone()),
            _ => {
                grpc::channel(&addr, &ChannelOptions::PROXY, &tls).inspect(|ch| open = Some((addr.clone(), ch.clone())))
            }
        };
        if let Ok(ch) = ch {
            let mut c = DiscoveryClient::new(ch);
            match tokio::time::timeout(REPORT_TIMEOUT, c.report(report)).await {
                Ok(Ok(reply)) => {
                    tracing::debug!(node = %addr, bindings = sent.len(), "report answered");
                    // Answered only once the bindings committed (or were found fresh).
                    state.affinity.acknowledged(&sent, taken);
                    // Other proxies' connections: the cluster's count less what this proxy sent.
                    // Only for backends tracked here: a load for one this config lacks (as an
                    // earlier report of this proxy's may have sent) must not bring it back.
                    for l in reply.into_inner().cluster_loads {
                        let own = mine.get(&(l.pool.clone(), l.address.clone())).copied().unwrap_or(0);
                        if let Some(s) = state.registry.find(&l.pool, &l.address) {
                            s.cluster_active.store(l.connections.saturating_sub(own), Relaxed);
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(node = %addr, bindings = sent.len(), error = %e, "report refused");
                    i += 1
                }
                Err(_) => {
                    tracing::debug!(node = %addr, bindings = sent.len(), "report timed out");
                    i += 1
                }
            }
        }
        tokio::select! {
            _ = state.runtime.shutdown.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
            _ = state.affinity.report_now.notified() => tokio::time::sleep(GATHER).await,
            _ = tokio::time::sleep(refresh_every.saturating_sub(last_tick.elapsed())) => {}
        }
    }
}

/// Reports go out every second (connection counts feed cluster-wide balancing), and more
/// often when an affinity TTL is short: a sixth of the shortest, at least 100 ms, so a
/// binding due at a third of its TTL goes out by half of it.
pub fn refresh_interval(table: &Table) -> Duration {
    let min_ttl = table.pools.values().filter(|p| p.affinity_key.is_some()).map(|p| p.pool.affinity_ttl_ms).min();
    match min_ttl {
        Some(ttl) => Duration::from_millis((ttl / 6).clamp(100, 1000)),
        None => Duration::from_secs(1),
    }
}

/// A pool's affinity TTL; zero (refresh at every report) for a pool this proxy does not know.
fn affinity_ttl(table: &Table, pool: &str) -> Duration {
    Duration::from_millis(table.pools.get(pool).map_or(0, |p| p.pool.affinity_ttl_ms))
}
