//! What a proxy says about its config: which revision it runs, where that came from and when,
//! which control-plane node it follows, and when recent revisions were applied (for timing
//! how fast a change reaches proxies).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use tokio::sync::Notify;

/// Applied revisions remembered for `/applied`.
const APPLIED_HISTORY: usize = 4096;

/// Where the running config came from.
#[derive(Clone, Debug)]
pub struct ConfigInfo {
    /// "none", "cache" or "control-plane".
    pub source: &'static str,
    pub revision: u64,
    /// When this proxy applied it (or when the cache file was written).
    pub applied_at: SystemTime,
}

#[derive(Clone, Debug)]
pub struct ControlPlaneInfo {
    pub connected: Option<String>,
    pub since: Instant,
    /// The leader's revision as last reported by a progress event (0: never).
    pub leader_revision: u64,
    /// The revision the config is current through: the config's own, or above it when
    /// progress said no change came after it.
    pub through: u64,
    /// When a followed node last sent anything (event or progress).
    pub last_heard: Option<Instant>,
    /// What the followed node said it runs, from its watch reply's metadata
    /// (`0.1.0 (protocol 1.1)`, or "an unknown version" from a node before versions).
    pub node_version: Option<String>,
}

pub struct ConfigStatus {
    config: Mutex<ConfigInfo>,
    applied: Mutex<VecDeque<(u64, SystemTime)>>,
    /// Woken whenever a revision is applied.
    pub applied_changed: Notify,
    control_plane: Mutex<ControlPlaneInfo>,
    /// When this proxy started.
    pub started: Instant,
}

impl Default for ConfigStatus {
    fn default() -> Self {
        ConfigStatus {
            config: Mutex::new(ConfigInfo { source: "none", revision: 0, applied_at: SystemTime::now() }),
            applied: Mutex::new(VecDeque::new()),
            applied_changed: Notify::new(),
            control_plane: Mutex::new(ControlPlaneInfo {
                connected: None,
                since: Instant::now(),
                leader_revision: 0,
                through: 0,
                last_heard: None,
                node_version: None,
            }),
            started: Instant::now(),
        }
    }
}

impl ConfigStatus {
    pub fn config(&self) -> ConfigInfo {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records that `revision`, from `source`, is now in use.
    pub fn record(&self, source: &'static str, revision: u64, applied_at: SystemTime) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = ConfigInfo { source, revision, applied_at };
        let mut a = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if a.len() == APPLIED_HISTORY {
            a.pop_front();
        }
        a.push_back((revision, applied_at));
        drop(a);
        self.applied_changed.notify_waiters();
    }

    /// When the first revision at or after `revision` was applied, if it has been.
    pub fn applied_at(&self, revision: u64) -> Option<(u64, SystemTime)> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(r, _)| *r >= revision).copied()
    }

    /// Revisions the config in use trails the leader's, as last heard.
    pub fn behind(&self) -> u64 {
        let (config, cp) = (self.config().revision, self.control_plane());
        cp.leader_revision.saturating_sub(config.max(cp.through))
    }

    pub fn control_plane(&self) -> ControlPlaneInfo {
        self.control_plane.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node followed now (`None`: none), and what it said it runs.
    pub fn set_control_plane(&self, connected: Option<String>, node_version: Option<String>) {
        let mut cp = self.control_plane.lock().unwrap_or_else(|e| e.into_inner());
        if cp.connected != connected {
            cp.connected = connected;
            cp.since = Instant::now();
        }
        cp.node_version = node_version;
    }

    /// This proxy's version and the followed node's, for `/status` (`"versions"`).
    pub fn versions(&self) -> serde_json::Value {
        use switchyard_model::version;
        serde_json::json!({
            "proxy": version::VERSION,
            "protocol": version::PROTOCOL.to_string(),
            "control_plane_node": self.control_plane().node_version,
        })
    }

    /// The config was replaced by another cluster's (restored from a backup of the one
    /// followed): what it was current through no longer counts.
    pub fn restart_through(&self) {
        self.control_plane.lock().unwrap_or_else(|e| e.into_inner()).through = 0;
    }

    /// The followed node spoke at `at` (`leader_revision` when it was progress), and the
    /// config is current through `through`.
    pub fn heard(&self, at: Instant, leader_revision: Option<u64>, through: u64) {
        let mut cp = self.control_plane.lock().unwrap_or_else(|e| e.into_inner());
        cp.last_heard = Some(at);
        cp.through = cp.through.max(through);
        if let Some(l) = leader_revision {
            cp.leader_revision = l;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_finds_the_first_revision_at_or_after() {
        let s = ConfigStatus::default();
        let t = SystemTime::UNIX_EPOCH;
        s.record("control-plane", 5, t);
        s.record("control-plane", 9, t);
        assert_eq!(s.applied_at(3).map(|x| x.0), Some(5));
        assert_eq!(s.applied_at(6).map(|x| x.0), Some(9));
        assert_eq!(s.applied_at(10), None);
        assert_eq!(s.config().revision, 9);
    }

    #[test]
    fn behind_counts_from_what_the_stream_is_current_through() {
        let s = ConfigStatus::default();
        s.record("control-plane", 5, SystemTime::UNIX_EPOCH);
        s.heard(Instant::now(), Some(8), 5);
        assert_eq!(s.behind(), 3);
        // Progress says nothing changed up to 8 (blank or membership entries): not behind.
        s.heard(Instant::now(), None, 8);
        assert_eq!(s.behind(), 0);
        assert_eq!(s.config().revision, 5);
    }
}
