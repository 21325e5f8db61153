//! The leader's registry of proxies: their last reports (for `proxy list`) and their live
//! connection counts, summed into cluster-wide loads for least-connections and p2c.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_proto::v1::{BackendLoad, ProxyStatus};

/// A proxy that has not reported for this long no longer counts toward cluster-wide loads.
pub const LOAD_STALE: Duration = Duration::from_secs(15);

#[derive(Default)]
pub struct ProxyRegistry {
    statuses: Mutex<BTreeMap<String, ProxyStatus>>,
    loads: Mutex<BTreeMap<String, (Vec<BackendLoad>, Instant)>>,
}

impl ProxyRegistry {
    /// Records a proxy's report, replacing its previous one, whose applied revision and
    /// receipt time (unix ms) it returns.
    pub fn record(&self, status: ProxyStatus, loads: Vec<BackendLoad>) -> Option<(u64, u64)> {
        let id = status.proxy_id.clone();
        self.loads.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), (loads, Instant::now()));
        let before = self.statuses.lock().unwrap_or_else(|e| e.into_inner()).insert(id, status);
        before.map(|s| (s.applied_revision, s.last_report_ms))
    }

    /// Every proxy that ever reported to this leader, by id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Live connections per backend, summed over proxies that reported recently.
    pub fn cluster_loads(&self) -> Vec<BackendLoad> {
        self.cluster_loads_at(Instant::now())
    }

    fn cluster_loads_at(&self, now: Instant) -> Vec<BackendLoad> {
        let mut sum: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads.retain(|_, (_, at)| now.saturating_duration_since(*at) < LOAD_STALE);
        for (ls, _) in loads.values() {
            for l in ls {
                *sum.entry((l.pool.clone(), l.address.clone())).or_default() += l.connections;
            }
        }
        sum.into_iter().map(|((pool, address), connections)| BackendLoad { pool, address, connections }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pool: &str, address: &str, connections: u64) -> BackendLoad {
        BackendLoad { pool: pool.into(), address: address.into(), connections }
    }

    fn status(id: &str) -> ProxyStatus {
        ProxyStatus { proxy_id: id.into(), ..Default::default() }
    }

    #[test]
    fn loads_sum_over_proxies_and_stale_reports_drop_out() {
        let r = ProxyRegistry::default();
        r.record(status("a"), vec![load("p", "x:1", 2), load("p", "y:1", 1)]);
        r.record(status("b"), vec![load("p", "x:1", 3)]);
        // A newer report from the same proxy replaces its older one.
        r.record(status("a"), vec![load("p", "x:1", 4)]);
        assert_eq!(r.cluster_loads(), vec![load("p", "x:1", 7)]);
        assert_eq!(r.list().len(), 2);
        assert!(r.cluster_loads_at(Instant::now() + LOAD_STALE).is_empty());
        // Statuses stay listed after their loads go stale: `proxy list` shows how old they are.
        assert_eq!(r.list().len(), 2);
    }
}
