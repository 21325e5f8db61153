//! Session affinity on a proxy: the bindings the control plane streamed (which backend
//! serves a session key), and the bindings made or kept alive here, waiting to be reported.
//! Streamed bindings change only through the config's install step.
//!
//! A live binding is re-reported only once a third of its TTL has passed since the control
//! plane last acknowledged it: idle sessions then cost one refresh per TTL/3, not one per
//! report, and two missed refreshes still leave a third of the TTL to spare.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use switchyard_proto::v1::{change, SessionBinding};
use tokio::sync::Notify;

/// A live connection's binding: (pool, key, backend).
pub type LiveKey = (String, String, String);

/// Streamed bindings by pool, then key: (backend, TTL in ms).
type Bound = HashMap<String, HashMap<String, (String, u64)>>;

/// A binding used here: its connections, when the control plane last acknowledged a report
/// of it, and when it was last used since. Kept after its last connection ends while that
/// acknowledgement is recent, so a session's next request does not report it again at once;
/// and refreshed while it is used, even if no connection is open when the report is taken: a
/// long-polling session's requests come and go between reports.
#[derive(Default)]
struct Live {
    conns: usize,
    acked: Option<Instant>,
    used: Option<Instant>,
}

/// Most bindings one report carries: about 1 MiB encoded, well under the control plane's
/// 4 MiB message limit and the leader's batch budget.
pub const MAX_REPORT_BINDINGS: usize = 10_000;

#[derive(Default)]
pub struct Affinity {
    /// As the control plane last streamed them: pool → key → (backend, TTL in ms). Nested,
    /// so a lookup by `&str` allocates nothing: one is made per handshake with affinity, and
    /// one per live session at every report.
    bound: RwLock<Bound>,
    /// Made here, not yet reported.
    pending: Mutex<Vec<SessionBinding>>,
    /// Sessions used here, refreshed while they have connections.
    live: Mutex<HashMap<LiveKey, Live>>,
    /// Woken when a new binding should be reported soon.
    pub report_now: Notify,
}

fn binding((pool, key, backend): &LiveKey) -> SessionBinding {
    SessionBinding { pool: pool.clone(), key: key.clone(), backend: backend.clone(), ..Default::default() }
}

fn key_of(b: &SessionBinding) -> LiveKey {
    (b.pool.clone(), b.key.clone(), b.backend.clone())
}

impl Affinity {
    /// The backend the cluster binds `key` to in `pool`, if any.
    pub fn backend_for(&self, pool: &str, key: &str) -> Option<String> {
        let bound = self.bound.read().unwrap_or_else(|e| e.into_inner());
        bound.get(pool).and_then(|keys| keys.get(key)).map(|b| b.0.clone())
    }

    /// A connection for `key` went to `backend`: keep the binding refreshed while the
    /// connection lives, and report it at once unless the cluster already holds it. Returns
    /// the key for [`Self::unbind_live`].
    pub fn bind_live(&self, pool: &str, key: &str, backend: &str) -> LiveKey {
        if self.backend_for(pool, key).as_deref() == Some(backend) {
            return self.hold_live(pool, key, backend);
        }
        let k = self.hold_live(pool, key, backend);
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(binding(&k));
        self.report_now.notify_one();
        k
    }

    /// Like [`Self::bind_live`] for a binding this proxy already holds: kept live (and so
    /// refreshed by the periodic report when due) without reporting it at once, so a stream
    /// of plain HTTP requests on one session costs no report per request.
    pub fn hold_live(&self, pool: &str, key: &str, backend: &str) -> LiveKey {
        let k = (pool.to_string(), key.to_string(), backend.to_string());
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let l = live.entry(k.clone()).or_default();
        l.conns += 1;
        l.used = Some(now);
        k
    }

    /// The connection or request behind `k` ended. Its binding stays until the report: it
    /// was used, so it is refreshed.
    pub fn unbind_live(&self, k: &LiveKey) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = live.get_mut(k) {
            l.conns = l.conns.saturating_sub(1);
        }
    }

    /// The bindings to report at `now`: the new ones, each one in use (with a connection, or
    /// used since its last acknowledgement) that was never acknowledged, and, when
    /// `refreshes` (the periodic report), each one in use whose last acknowledged report is a
    /// third of its TTL old. The TTL is its pool's (`ttl`), or the
    /// binding's own when shorter (it keeps the TTL it was made with when the pool's changes).
    /// Forgets ended sessions whose acknowledgement and last use aged out.
    ///
    /// Refreshes wait for the periodic report because every other report follows a new
    /// revision: a refresh sent with it commits one, which prompts the next report, and with
    /// thousands of sessions coming due one after another that loop committed an entry per
    /// round trip (381 entries in the 30 s that held 9,000 idle sessions' first refreshes,
    /// against 18 now) instead of one per period.
    pub fn take_report(&self, now: Instant, ttl: impl Fn(&str) -> Duration, refreshes: bool) -> Vec<SessionBinding> {
        let bound = self.bound.read().unwrap_or_else(|e| e.into_inner());
        let ttl = |(pool, key, backend): &LiveKey| {
            let own = bound.get(pool).and_then(|keys| keys.get(key)).filter(|b| b.0 == *backend && b.1 > 0);
            own.map_or(ttl(pool), |b| ttl(pool).min(Duration::from_millis(b.1)))
        };
        let mut out = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut reported: HashSet<LiveKey> = HashSet::new();
        out.retain(|b| reported.insert(key_of(b)));
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|k, l| {
            let age = l.acked.map(|at| now.saturating_duration_since(at));
            let used = l.used.is_some_and(|at| now.saturating_duration_since(at) < ttl(k));
            if l.conns == 0 && !used {
                return age.is_some_and(|a| a < ttl(k));
            }
            let due = match age {
                None => true,
                Some(a) => refreshes && a >= ttl(k) / 3,
            };
            if due && !reported.contains(k) {
                out.push(binding(k));
            }
            true
        });
        drop(live);
        if out.len() > MAX_REPORT_BINDINGS {
            // The rest wait for the next report (the commit of this one prompts it), first in
            // line. Uncapped, a report past the control plane's 4 MiB message limit (about
            // 40,000 bindings, after an outage on a busy proxy) was refused whole, every time:
            // its bindings stayed due, the next was as large, and the proxy reported nothing
            // again.
            let rest = out.split_off(MAX_REPORT_BINDINGS);
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let newer = std::mem::replace(&mut *pending, rest);
            pending.extend(newer);
        }
        out
    }

    /// The control plane acknowledged (committed, or found fresh) the report of `sent`, taken
    /// at `at`: uses since then are still to be refreshed.
    pub fn acknowledged(&self, sent: &[SessionBinding], at: Instant) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for b in sent {
            if let Some(l) = live.get_mut(&key_of(b)) {
                l.acked = Some(at);
                if l.used.is_some_and(|u| u <= at) {
                    l.used = None;
                }
            }
        }
    }

    /// Replaces the streamed bindings (a whole new config).
    pub(crate) fn replace(&self, bound: HashMap<(String, String), (String, u64)>) {
        let mut nested = Bound::new();
        for ((pool, key), b) in bound {
            nested.entry(pool).or_default().insert(key, b);
        }
        *self.bound.write().unwrap_or_else(|e| e.into_inner()) = nested;
    }

    /// Applies streamed session changes; other kinds are not this map's business.
    pub(crate) fn update(&self, changes: &[change::Kind]) {
        let mut map = self.bound.write().unwrap_or_else(|e| e.into_inner());
        for c in changes {
            match c {
                change::Kind::SessionPut(s) => {
                    map.entry(s.pool.clone()).or_default().insert(s.key.clone(), (s.backend.clone(), s.ttl_ms));
                }
                change::Kind::SessionRemoved(s) => {
                    if let Some(keys) = map.get_mut(&s.pool) {
                        keys.remove(&s.key);
                        if keys.is_empty() {
                            map.remove(&s.pool);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::v1::SessionRef;

    #[test]
    fn live_bindings_are_reported_at_once_then_every_third_of_their_ttl() {
        let a = Affinity::default();
        let ttl = |_: &str| Duration::from_secs(30);
        let t0 = Instant::now();
        let k1 = a.bind_live("p", "s", "b:1");
        let k2 = a.bind_live("p", "s", "b:1");
        let sent = a.take_report(t0, ttl, true);
        assert_eq!(sent.len(), 1, "one binding, however many connections");
        a.acknowledged(&sent, t0);
        assert!(a.take_report(t0 + Duration::from_secs(9), ttl, true).is_empty(), "fresh: not again");
        let due = a.take_report(t0 + Duration::from_secs(10), ttl, true);
        assert_eq!(due.len(), 1, "a third of the TTL on");
        assert!(!a.take_report(t0 + Duration::from_secs(11), ttl, true).is_empty(), "unacknowledged: again");
        a.acknowledged(&due, t0 + Duration::from_secs(11));
        a.unbind_live(&k1);
        assert!(a.take_report(t0 + Duration::from_secs(12), ttl, true).is_empty(), "one connection still holds it");
        a.unbind_live(&k2);
        // Back within a third of the TTL of its last acknowledgement: not reported at once.
        let k3 = a.hold_live("p", "s", "b:1");
        assert!(a.take_report(t0 + Duration::from_secs(15), ttl, true).is_empty());
        a.unbind_live(&k3);
        // Used since its last acknowledgement, though no connection is open now: refreshed.
        let used = a.take_report(t0 + Duration::from_secs(25), ttl, true);
        assert_eq!(used.len(), 1, "a session used between reports is refreshed");
        a.acknowledged(&used, t0 + Duration::from_secs(25));
        assert!(a.take_report(t0 + Duration::from_secs(41), ttl, true).is_empty(), "unused since: no refresh");
        assert!(a.take_report(t0 + Duration::from_secs(56), ttl, true).is_empty());
        assert!(a.live.lock().unwrap().is_empty(), "forgotten once its acknowledgement aged out");
    }

    #[test]
    fn a_report_carries_at_most_its_cap_and_the_rest_go_in_the_next() {
        let a = Affinity::default();
        let ttl = |_: &str| Duration::from_secs(30);
        let t0 = Instant::now();
        let n = MAX_REPORT_BINDINGS + 2_500;
        for i in 0..n {
            a.bind_live("p", &format!("{i:064x}"), "b:1");
        }
        let first = a.take_report(t0, ttl, true);
        assert_eq!(first.len(), MAX_REPORT_BINDINGS);
        a.acknowledged(&first, t0);
        let second = a.take_report(t0, ttl, true);
        assert_eq!(second.len(), 2_500, "the rest, in the next report");
        let keys: HashSet<&str> = first.iter().chain(&second).map(|b| b.key.as_str()).collect();
        assert_eq!(keys.len(), n, "every binding once");
        a.acknowledged(&second, t0);
        assert!(a.take_report(t0, ttl, true).is_empty());
    }

    /// A long-polling session: each request is held briefly and none is open when the
    /// periodic report is taken, yet the binding is refreshed for as long as requests come.
    #[test]
    fn a_session_of_short_requests_is_refreshed_while_they_come() {
        let a = Affinity::default();
        let ttl = |_: &str| Duration::from_secs(3);
        let k = a.bind_live("p", "s", "b:1");
        a.unbind_live(&k);
        let t0 = Instant::now();
        let first = a.take_report(t0, ttl, true);
        assert_eq!(first.len(), 1, "the new binding");
        a.acknowledged(&first, t0);
        let later = t0 + Duration::from_secs(1);
        assert!(a.take_report(later, ttl, true).is_empty(), "not used since: no refresh");
        // One request, over before the next periodic report.
        let k = a.hold_live("p", "s", "b:1");
        a.unbind_live(&k);
        let refresh = a.take_report(later, ttl, true);
        assert_eq!(refresh.len(), 1, "used since the last acknowledgement: refreshed");
        a.acknowledged(&refresh, later);
        assert!(a.take_report(later + Duration::from_secs(1), ttl, true).is_empty(), "not used since");
        assert!(a.take_report(later + Duration::from_secs(4), ttl, true).is_empty());
        assert!(a.live.lock().unwrap().is_empty(), "forgotten once its acknowledgement aged out");
    }

    #[test]
    fn refreshes_wait_for_the_periodic_report_and_new_bindings_do_not() {
        let a = Affinity::default();
        let ttl = |_: &str| Duration::from_secs(30);
        let t0 = Instant::now();
        a.bind_live("p", "old", "b:1");
        let sent = a.take_report(t0, ttl, false);
        assert_eq!(sent.len(), 1, "a new binding goes with any report");
        a.acknowledged(&sent, t0);
        // A third of the TTL on, "old" is due; a new session binds meanwhile.
        let later = t0 + Duration::from_secs(10);
        a.bind_live("p", "new", "b:1");
        let keys = |v: Vec<SessionBinding>| v.into_iter().map(|b| b.key).collect::<Vec<_>>();
        let first = a.take_report(later, ttl, false);
        a.acknowledged(&first, later);
        assert_eq!(keys(first), ["new"], "the refresh waits");
        assert_eq!(keys(a.take_report(later, ttl, true)), ["old"], "and goes with the periodic report");
    }

    #[test]
    fn a_binding_the_cluster_already_streamed_is_not_reported_at_once() {
        let a = Affinity::default();
        a.replace(HashMap::from([(("p".into(), "s".into()), ("b:1".into(), 30_000))]));
        a.bind_live("p", "s", "b:1");
        assert!(a.pending.lock().unwrap().is_empty());
        assert_eq!(
            a.take_report(Instant::now(), |_| Duration::from_secs(30), true).len(),
            1,
            "never acknowledged here"
        );
        a.bind_live("p", "s", "b:2");
        assert_eq!(a.pending.lock().unwrap().len(), 1, "a different backend is new");
    }

    #[test]
    fn a_binding_made_with_a_shorter_ttl_than_its_pools_now_is_refreshed_by_its_own() {
        let a = Affinity::default();
        a.replace(HashMap::from([(("p".into(), "s".into()), ("b:1".into(), 3_000))]));
        a.bind_live("p", "s", "b:1");
        let t0 = Instant::now();
        let pool_ttl = |_: &str| Duration::from_secs(3600);
        a.acknowledged(&a.take_report(t0, pool_ttl, true), t0);
        assert!(a.take_report(t0 + Duration::from_millis(900), pool_ttl, true).is_empty());
        assert_eq!(a.take_report(t0 + Duration::from_secs(1), pool_ttl, true).len(), 1, "a third of 3 s, not of 1 h");
    }

    #[test]
    fn streamed_bindings_follow_puts_and_removals() {
        let a = Affinity::default();
        let put = |k: &str, b: &str| {
            change::Kind::SessionPut(SessionBinding {
                pool: "p".into(),
                key: k.into(),
                backend: b.into(),
                ..Default::default()
            })
        };
        a.update(&[put("s", "b:1"), put("t", "b:2")]);
        assert_eq!(a.backend_for("p", "s").as_deref(), Some("b:1"));
        let removed = |k: &str| change::Kind::SessionRemoved(SessionRef { pool: "p".into(), key: k.into() });
        a.update(&[removed("s")]);
        assert_eq!(a.backend_for("p", "s"), None);
        assert_eq!(a.backend_for("p", "t").as_deref(), Some("b:2"), "the pool's other binding stays");
        a.update(&[removed("t")]);
        assert!(a.bound.read().unwrap().is_empty(), "a pool without bindings is not kept");
        a.replace(HashMap::from([(("q".into(), "u".into()), ("b:3".into(), 1_000))]));
        assert_eq!(a.backend_for("q", "u").as_deref(), Some("b:3"));
        a.replace(HashMap::new());
        assert_eq!(a.backend_for("q", "u"), None);
    }
}
