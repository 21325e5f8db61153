//! Whether the control-plane node a proxy follows is still worth following. A node cut off
//! from its cluster can keep a stream open and quiet forever; the proxy leaves it when it goes
//! silent (no event or progress for [`SILENT_AFTER`]) or when it does not reach a revision its
//! own progress said the leader had within [`BEHIND_AFTER`]. Comparing against a target
//! heard earlier, not the latest gap, keeps a node that trails a busy leader by a few
//! revisions (always a little behind, always catching up) from counting as stale.

use std::time::{Duration, Instant};

use switchyard_model::limits::WATCH_PROGRESS_EVERY;

/// Three progress intervals without a word: the node is gone or cut off.
pub const SILENT_AFTER: Duration = WATCH_PROGRESS_EVERY.saturating_mul(3);
/// How long a node may take to reach a revision its progress said the leader had.
pub const BEHIND_AFTER: Duration = WATCH_PROGRESS_EVERY.saturating_mul(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Nothing heard for this long.
    Silent(Duration),
    /// Still short of `target` (the leader's revision when first heard) after `for_`.
    Behind {
        target: u64,
        for_: Duration,
    },
}

/// What the proxy knows of the stream it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub last_heard: Instant,
    /// The highest leader revision progress reported on this stream (0: none yet).
    pub leader_revision: u64,
    /// The leader revision this node has yet to reach, and when it was heard.
    pub behind_since: Option<(u64, Instant)>,
}

impl Freshness {
    pub fn new(now: Instant) -> Freshness {
        Freshness { last_heard: now, leader_revision: 0, behind_since: None }
    }

    /// Something arrived at `now`: an event or progress (with the leader's revision). `through`
    /// is the revision the proxy's config is now current through (the stream's progress can
    /// put it above the config's own revision when no change came in between).
    pub fn heard(&mut self, now: Instant, through: u64, leader_revision: Option<u64>) {
        self.last_heard = now;
        if let Some(l) = leader_revision {
            self.leader_revision = self.leader_revision.max(l);
        }
        if self.behind_since.is_some_and(|(target, _)| through >= target) {
            self.behind_since = None;
        }
        if self.behind_since.is_none() && self.leader_revision > through {
            self.behind_since = Some((self.leader_revision, now));
        }
    }

    /// Revisions the proxy trails the leader, as last heard.
    pub fn behind(&self, through: u64) -> u64 {
        self.leader_revision.saturating_sub(through)
    }

    /// Keep following, or leave for another node.
    pub fn verdict(&self, through: u64, now: Instant) -> Verdict {
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= SILENT_AFTER {
            return Verdict::Silent(silent);
        }
        match self.behind_since {
            Some((target, since)) if through < target && now.saturating_duration_since(since) >= BEHIND_AFTER => {
                Verdict::Behind { target, for_: now.saturating_duration_since(since) }
            }
            _ => Verdict::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_node_that_goes_silent_is_left() {
        let t0 = Instant::now();
        let mut f = Freshness::new(t0);
        f.heard(t0, 10, Some(10));
        assert_eq!(f.verdict(10, t0 + 2 * S), Verdict::Keep);
        f.heard(t0 + 2 * S, 10, Some(10));
        assert_eq!(f.verdict(10, t0 + 4 * S), Verdict::Keep, "progress keeps a quiet stream");
        assert_eq!(f.verdict(10, t0 + 5 * S), Verdict::Silent(3 * S));
    }

    #[test]
    fn a_node_that_keeps_talking_but_stays_behind_the_leader_is_left() {
        let t0 = Instant::now();
        let mut f = Freshness::new(t0);
        f.heard(t0, 10, Some(15));
        assert_eq!(f.behind(10), 5);
        for s in 1..3 {
            f.heard(t0 + s * S, 10, Some(15 + s as u64));
            assert_eq!(f.verdict(10, t0 + s * S), Verdict::Keep);
        }
        f.heard(t0 + 3 * S, 12, Some(20));
        assert_eq!(f.verdict(12, t0 + 3 * S), Verdict::Behind { target: 15, for_: 3 * S });
    }

    #[test]
    fn a_node_that_trails_a_busy_leader_but_catches_up_is_kept() {
        let t0 = Instant::now();
        let mut f = Freshness::new(t0);
        // Each second the leader is 5 ahead, and each second the node reaches what it said.
        for s in 0..10u64 {
            let now = t0 + Duration::from_secs(s);
            f.heard(now, 100 * s, Some(100 * s + 5));
            f.heard(now + S / 2, 100 * s + 10, None);
            assert_eq!(f.verdict(100 * s + 10, now + S / 2), Verdict::Keep, "second {s}");
        }
        assert_eq!(f.behind(905), 0);
    }
}
