//! The leader's registry of proxies: their last reports (for `proxy list`) and their live
//! connection counts, summed into cluster-wide loads for least-connections and p2c.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_proto::v1::{BackendLoad, ProxyStatus};

/// A proxy that has not reported for this long no longer counts toward cluster-wide loads.
pub const LOAD_STALE: Duration = Duration::from_secs(15);
/// A proxy that has not reported for this long is no longer listed: proxies come and go
/// under new names (a Deployment's pods), and the leader would otherwise keep, list and
/// export a metric series for every one that ever reported. An hour leaves a gone proxy
/// in `proxy list`, with its age, long enough to be noticed.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// At most this many proxies are kept; past it the one silent longest goes. Reports are
/// answered to anyone with a proxy's credentials, whatever name they give.
pub const MAX_PROXIES: usize = 10_000;
/// How often the registry looks for proxies to forget (a look costs one pass over them).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub struct ProxyRegistry {
    statuses: Mutex<Statuses>,
    loads: Mutex<BTreeMap<String, (Vec<BackendLoad>, Instant)>>,
}

struct Statuses {
    by_id: BTreeMap<String, (ProxyStatus, Instant)>,
    swept: Instant,
}

impl Default for ProxyRegistry {
    fn default() -> Self {
        let statuses = Statuses { by_id: BTreeMap::new(), swept: Instant::now() };
        ProxyRegistry { statuses: Mutex::new(statuses), loads: Mutex::default() }
    }
}

impl Statuses {
    /// Forgets the proxies silent for [`FORGET_AFTER`], once a [`SWEEP_EVERY`]; and, to make
    /// room for `new`, the one silent longest when [`MAX_PROXIES`] are kept.
    fn sweep(&mut self, now: Instant, new: &str) {
        if now.saturating_duration_since(self.swept) >= SWEEP_EVERY {
            self.swept = now;
            self.by_id.retain(|_, (_, at)| now.saturating_duration_since(*at) < FORGET_AFTER);
        }
        if self.by_id.len() >= MAX_PROXIES && !self.by_id.contains_key(new) {
            let oldest = self.by_id.iter().min_by_key(|(_, (_, at))| *at).map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.by_id.remove(&id);
            }
        }
    }
}

impl ProxyRegistry {
    /// Records a proxy's report, replacing its previous one, whose applied revision and
    /// receipt time (unix ms) it returns.
    pub fn record(&self, status: ProxyStatus, loads: Vec<BackendLoad>) -> Option<(u64, u64)> {
        self.record_at(status, loads, Instant::now())
    }

    fn record_at(&self, status: ProxyStatus, loads: Vec<BackendLoad>, now: Instant) -> Option<(u64, u64)> {
        let id = status.proxy_id.clone();
        {
            let mut l = self.loads.lock().unwrap_or_else(|e| e.into_inner());
            // Stale loads go here too: a report under a new name each time would otherwise
            // pile up between the reads that prune them.
            if l.len() >= MAX_PROXIES && !l.contains_key(&id) {
                l.retain(|_, (_, at)| now.saturating_duration_since(*at) < LOAD_STALE);
                if l.len() >= MAX_PROXIES {
                    let oldest = l.iter().min_by_key(|(_, (_, at))| *at).map(|(id, _)| id.clone());
                    l.remove(&oldest.unwrap_or_default());
                }
            }
            l.insert(id.clone(), (loads, now));
        }
        let mut st = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        st.sweep(now, &id);
        let before = st.by_id.insert(id, (status, now));
        before.map(|(s, _)| (s.applied_revision, s.last_report_ms))
    }

    /// Every proxy that reported to this leader within [`FORGET_AFTER`] (at most
    /// [`MAX_PROXIES`] of them), by id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        self.list_at(Instant::now())
    }

    fn list_at(&self, now: Instant) -> Vec<ProxyStatus> {
        let st = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        let live = |at: &Instant| now.saturating_duration_since(*at) < FORGET_AFTER;
        st.by_id.values().filter(|(_, at)| live(at)).map(|(s, _)| s.clone()).collect()
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

    #[test]
    fn proxies_silent_for_an_hour_are_forgotten_and_the_registry_is_bounded() {
        let r = ProxyRegistry::default();
        let t0 = Instant::now();
        r.record_at(status("gone"), vec![], t0);
        r.record_at(status("here"), vec![], t0 + FORGET_AFTER / 2);
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        let ids = |v: Vec<ProxyStatus>| v.into_iter().map(|s| s.proxy_id).collect::<Vec<_>>();
        assert_eq!(ids(r.list_at(later)), ["here"], "not listed once silent for the hour");
        r.record_at(status("new"), vec![], later);
        assert_eq!(r.statuses.lock().unwrap().by_id.len(), 2, "and no longer kept after the next sweep");
        // Names made up report after report: the registry stays at its bound, the one silent
        // longest going first, and a proxy that keeps reporting stays.
        let t1 = later + SWEEP_EVERY;
        for i in 0..MAX_PROXIES + 50 {
            let at = t1 + Duration::from_millis(i as u64);
            r.record_at(status(&format!("made-up-{i}")), vec![load("p", "x:1", 1)], at);
            if i % 100 == 0 {
                r.record_at(status("here"), vec![], at);
            }
        }
        let st = r.statuses.lock().unwrap();
        assert_eq!(st.by_id.len(), MAX_PROXIES);
        assert!(st.by_id.contains_key("here") && !st.by_id.contains_key("made-up-0"));
        drop(st);
        assert!(r.loads.lock().unwrap().len() <= MAX_PROXIES);
    }
}
