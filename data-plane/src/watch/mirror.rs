//! The proxy's copy of the replicated model at a revision: the shared [`Model`] plus the
//! revision, moved forward by watch events and never backwards.

use std::collections::HashMap;

use switchyard_model::Model;
use switchyard_proto::v1::{change, watch_event, Topology, WatchEvent};

#[derive(Default, Clone, Debug, PartialEq)]
pub struct Mirror {
    pub revision: u64,
    model: Model,
    /// The config is not known to come from the cluster now streaming (a cache beside no
    /// cluster id, say): its revision says nothing about that cluster's, so the next snapshot
    /// replaces it whatever its revision.
    pub foreign: bool,
}

/// What an applied event changed, so installing it does only the work it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Topology or settings changed: rebuild the routing table.
    All,
    /// Only session bindings changed (they change far more often than topology): update the
    /// lookup map, keep the table.
    Sessions(Vec<change::Kind>),
}

impl Mirror {
    pub fn from_topology(t: Topology) -> Mirror {
        Mirror { revision: t.revision, model: Model::from_topology(t), foreign: false }
    }

    pub fn to_topology(&self) -> Topology {
        self.model.to_topology(self.revision)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Session bindings as a map, for the proxy's lookups: (backend, TTL in ms).
    pub fn session_map(&self) -> HashMap<(String, String), (String, u64)> {
        self.model.sessions.iter().map(|(k, s)| (k.clone(), (s.backend.clone(), s.ttl_ms))).collect()
    }

    /// Applies one event and says what it changed. Events below the current revision, and
    /// changes at it, are ignored (`None`), so a resumed stream can never take the proxy
    /// backwards; a snapshot at the current revision replaces the config (it is the whole
    /// truth, asked for when the config came from a cache that may be wrong). Progress changes
    /// nothing, its revision included: only config moves the revision.
    pub fn apply(&mut self, ev: WatchEvent) -> Option<Delta> {
        let snapshot = matches!(ev.kind, Some(watch_event::Kind::Snapshot(_)));
        if self.foreign && !snapshot {
            return None;
        }
        let behind = ev.revision < self.revision || (ev.revision == self.revision && self.revision != 0 && !snapshot);
        if behind && !self.foreign {
            return None;
        }
        let delta = match ev.kind? {
            watch_event::Kind::Snapshot(t) => {
                *self = Mirror::from_topology(t);
                Delta::All
            }
            watch_event::Kind::Changes(cs) => {
                for c in &cs.changes {
                    self.model.apply(c);
                }
                let sessions_only = cs
                    .changes
                    .iter()
                    .all(|c| matches!(c.kind, Some(change::Kind::SessionPut(_) | change::Kind::SessionRemoved(_))));
                if sessions_only {
                    Delta::Sessions(cs.changes.into_iter().filter_map(|c| c.kind).collect())
                } else {
                    Delta::All
                }
            }
            watch_event::Kind::Progress(_) => return None,
        };
        self.revision = ev.revision;
        Some(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::v1::{Backend, Change, ChangeSet, Pool, Progress, SessionBinding};

    fn changes(rev: u64, kinds: Vec<change::Kind>) -> WatchEvent {
        let changes = kinds.into_iter().map(|k| Change { kind: Some(k) }).collect();
        WatchEvent { revision: rev, kind: Some(watch_event::Kind::Changes(ChangeSet { changes })) }
    }

    fn session(key: &str) -> change::Kind {
        change::Kind::SessionPut(SessionBinding {
            pool: "p".into(),
            key: key.into(),
            backend: "a:1".into(),
            ..Default::default()
        })
    }

    #[test]
    fn events_move_forward_only_and_say_what_they_changed() {
        let mut m = Mirror::default();
        let topo = Topology {
            revision: 3,
            pools: vec![Pool { name: "p".into(), ..Default::default() }],
            ..Default::default()
        };
        let snap = WatchEvent { revision: 3, kind: Some(watch_event::Kind::Snapshot(topo)) };
        assert_eq!(m.apply(snap.clone()), Some(Delta::All));
        assert_eq!(m.revision, 3);
        // Changes at the same revision, or an older one, change nothing; a snapshot at it
        // replaces the config.
        assert_eq!(m.apply(changes(3, vec![session("same")])), None);
        assert_eq!(m.apply(changes(2, vec![session("old")])), None);
        assert_eq!(m.apply(snap), Some(Delta::All));
        assert!(m.model().sessions.is_empty());

        assert_eq!(m.apply(changes(4, vec![session("k")])), Some(Delta::Sessions(vec![session("k")])));
        assert_eq!(m.session_map().get(&("p".into(), "k".into())).map(|b| b.0.as_str()), Some("a:1"));
        let backend = Backend { pool: "p".into(), address: "a:1".into(), ..Default::default() };
        let mixed = changes(5, vec![session("j"), change::Kind::BackendPut(backend)]);
        assert_eq!(m.apply(mixed), Some(Delta::All));
        assert_eq!(m.revision, 5);
        assert_eq!(m.model().backends.len(), 1);
        assert_eq!(Mirror::from_topology(m.to_topology()), m);
        assert_eq!(m.apply(WatchEvent { revision: 6, kind: None }), None);
    }

    #[test]
    fn a_config_from_another_cluster_is_replaced_by_the_next_snapshot_whatever_its_revision() {
        // A cache at 900 held beside no cluster id; the cluster streaming is at 40.
        let cached = Topology {
            revision: 900,
            pools: vec![Pool { name: "old".into(), ..Default::default() }],
            ..Default::default()
        };
        let mut m = Mirror::from_topology(cached);
        m.foreign = true;
        assert_eq!(m.apply(changes(950, vec![session("k")])), None, "no change lands on another cluster's config");
        let topo = Topology {
            revision: 40,
            pools: vec![Pool { name: "new".into(), ..Default::default() }],
            ..Default::default()
        };
        assert_eq!(
            m.apply(WatchEvent { revision: 40, kind: Some(watch_event::Kind::Snapshot(topo)) }),
            Some(Delta::All)
        );
        assert_eq!((m.revision, m.foreign), (40, false));
        assert!(m.model().pools.contains_key("new") && !m.model().pools.contains_key("old"));
        // From then on, forward only again.
        assert_eq!(m.apply(changes(39, vec![session("old")])), None);
        assert!(m.apply(changes(41, vec![session("k")])).is_some());
    }

    #[test]
    fn progress_never_moves_the_revision() {
        let mut m = Mirror::default();
        assert_eq!(m.apply(changes(4, vec![session("k")])), Some(Delta::Sessions(vec![session("k")])));
        let before = m.clone();
        let p = Progress { leader_revision: 9, node_revision: 7 };
        assert_eq!(m.apply(WatchEvent { revision: 7, kind: Some(watch_event::Kind::Progress(p)) }), None);
        assert_eq!(m, before);
        assert_eq!(m.revision, 4);
        // The next change still applies: progress did not claim its revision.
        assert!(m.apply(changes(5, vec![session("j")])).is_some());
        assert_eq!(m.revision, 5);
    }
}
