//! Session affinity on a proxy: the bindings the control plane streamed (which backend
//! serves a session key), and the bindings made or kept alive here, waiting to be reported.
//! Streamed bindings change only through the config's install step.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use switchyard_proto::v1::{change, SessionBinding};
use tokio::sync::Notify;

/// A live connection's binding: (pool, key, backend).
pub type LiveKey = (String, String, String);

#[derive(Default)]
pub struct Affinity {
    /// As the control plane last streamed them: (pool, key) → backend.
    bound: RwLock<HashMap<(String, String), String>>,
    /// Made or refreshed here, not yet reported.
    pending: Mutex<Vec<SessionBinding>>,
    /// Sessions with live connections here, refreshed while they last: key → count.
    live: Mutex<HashMap<LiveKey, usize>>,
    /// Woken when a new binding should be reported soon.
    pub report_now: Notify,
}

impl Affinity {
    /// The backend the cluster binds `key` to in `pool`, if any.
    pub fn backend_for(&self, pool: &str, key: &str) -> Option<String> {
        self.bound.read().unwrap_or_else(|e| e.into_inner()).get(&(pool.to_string(), key.to_string())).cloned()
    }

    /// A connection for `key` went to `backend`: report the binding (new or refreshed) and keep
    /// refreshing it while the connection lives. Returns the key for [`Self::unbind_live`].
    pub fn bind_live(&self, pool: &str, key: &str, backend: &str) -> LiveKey {
        let k = (pool.to_string(), key.to_string(), backend.to_string());
        *self.live.lock().unwrap_or_else(|e| e.into_inner()).entry(k.clone()).or_default() += 1;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(SessionBinding {
            pool: k.0.clone(),
            key: k.1.clone(),
            backend: k.2.clone(),
            ..Default::default()
        });
        self.report_now.notify_one();
        k
    }

    /// Like [`Self::bind_live`] for a binding this proxy already holds: kept live (and so
    /// refreshed by the periodic report) without reporting it again at once, so a stream of
    /// plain HTTP requests on one session costs no report per request.
    pub fn hold_live(&self, pool: &str, key: &str, backend: &str) -> LiveKey {
        let k = (pool.to_string(), key.to_string(), backend.to_string());
        *self.live.lock().unwrap_or_else(|e| e.into_inner()).entry(k.clone()).or_default() += 1;
        k
    }

    /// The connection behind `k` ended.
    pub fn unbind_live(&self, k: &LiveKey) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                live.remove(k);
            }
        }
    }

    /// The bindings to report now: the new ones, plus every live one when `refresh` (so the
    /// control plane keeps them past their TTL while connections last).
    pub fn take_report(&self, refresh: bool) -> Vec<SessionBinding> {
        let mut out = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if refresh {
            out.extend(self.live.lock().unwrap_or_else(|e| e.into_inner()).keys().map(|(p, k, b)| SessionBinding {
                pool: p.clone(),
                key: k.clone(),
                backend: b.clone(),
                ..Default::default()
            }));
        }
        out
    }

    /// Replaces the streamed bindings (a whole new config).
    pub(crate) fn replace(&self, bound: HashMap<(String, String), String>) {
        *self.bound.write().unwrap_or_else(|e| e.into_inner()) = bound;
    }

    /// Applies streamed session changes; other kinds are not this map's business.
    pub(crate) fn update(&self, changes: &[change::Kind]) {
        let mut map = self.bound.write().unwrap_or_else(|e| e.into_inner());
        for c in changes {
            match c {
                change::Kind::SessionPut(s) => {
                    map.insert((s.pool.clone(), s.key.clone()), s.backend.clone());
                }
                change::Kind::SessionRemoved(s) => {
                    map.remove(&(s.pool.clone(), s.key.clone()));
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
    fn live_bindings_are_reported_once_then_on_every_refresh_while_they_last() {
        let a = Affinity::default();
        let k1 = a.bind_live("p", "s", "b:1");
        let k2 = a.bind_live("p", "s", "b:1");
        assert_eq!(a.take_report(false).len(), 2);
        assert!(a.take_report(false).is_empty());
        assert_eq!(a.take_report(true).len(), 1);
        a.unbind_live(&k1);
        assert_eq!(a.take_report(true).len(), 1, "one connection still holds it");
        a.unbind_live(&k2);
        assert!(a.take_report(true).is_empty());
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
        a.update(&[change::Kind::SessionRemoved(SessionRef { pool: "p".into(), key: "s".into() })]);
        assert_eq!(a.backend_for("p", "s"), None);
        a.replace(HashMap::new());
        assert_eq!(a.backend_for("p", "t"), None);
    }
}
