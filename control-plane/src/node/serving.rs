//! Whether this node may serve watches: it knows a live leader and is a member. A node cut
//! off from the leader, or removed, would otherwise keep its watchers on a frozen config, so
//! once it has not been serving for [`NodeConfig::unserving_after`] its streams end, and new
//! watches and reports are refused, with UNAVAILABLE.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::types::{NodeId, Raft};

/// Whether watches may be served; if not, the UNAVAILABLE message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Serving,
    Unavailable(String),
}

/// Why this node is not serving at this moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gap {
    NoLeader,
    NotMember,
}

/// What a node knows of itself at one moment.
#[derive(Clone, Debug)]
pub struct Facts {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    /// In the membership Raft acts on (the latest it has; a removed node may never get the
    /// entry that removes it, and then it loses its leader instead).
    pub member: bool,
    /// For a leader: since a quorum last acknowledged it (openraft 0.9 keeps a leader that
    /// lost its quorum leading, so this is how it learns it is cut off).
    pub since_quorum_ack: Option<Duration>,
    /// For a follower: since the leader last reached it (a learner never calls an election,
    /// so without this it would believe in a dead leader forever).
    pub since_leader_contact: Option<Duration>,
}

/// Serving at this moment: a member with a leader heard from within `silence`.
pub fn assess(f: &Facts, silence: Duration) -> Result<(), Gap> {
    if !f.member {
        return Err(Gap::NotMember);
    }
    let fresh = |d: Option<Duration>| d.is_some_and(|d| d <= silence);
    match f.leader {
        Some(l) if l == f.id && fresh(f.since_quorum_ack) => Ok(()),
        Some(l) if l != f.id && fresh(f.since_leader_contact) => Ok(()),
        _ => Err(Gap::NoLeader),
    }
}

/// Turns moment-to-moment assessments into [`Health`]: unavailable only after `grace`
/// without serving, so an ordinary election does not end anyone's stream.
pub struct Tracker {
    grace: Duration,
    last_ok: Instant,
}

impl Tracker {
    pub fn new(grace: Duration, now: Instant) -> Tracker {
        Tracker { grace, last_ok: now }
    }

    pub fn update(&mut self, now: Instant, r: Result<(), Gap>) -> Health {
        let Err(gap) = r else {
            self.last_ok = now;
            return Health::Serving;
        };
        let out = now.saturating_duration_since(self.last_ok);
        if out < self.grace {
            return Health::Serving;
        }
        Health::Unavailable(match gap {
            Gap::NoLeader => format!("this node has had no leader for {:.1}s; try another", out.as_secs_f64()),
            Gap::NotMember => "this node is not a member of the cluster; try another".to_string(),
        })
    }
}

/// A node's serving state, owned by its context: read by Discovery, fed by the peer service
/// (leader contact) and a task following Raft's metrics.
pub struct Serving {
    rx: watch::Receiver<Health>,
    epoch: Instant,
    /// Milliseconds after `epoch` when the leader last reached this node (`u64::MAX`: never).
    contact_ms: Arc<AtomicU64>,
    /// The same for the last tick of the stream held to the leader ([`crate::node::election`]).
    alive_ms: AtomicU64,
    /// The same for the last vote this node cast (for a candidate that asked, or for itself).
    vote_ms: AtomicU64,
}

impl Serving {
    /// Starts following `raft` until `shutdown`.
    pub fn start(raft: Raft, config: &NodeConfig, shutdown: CancellationToken) -> Serving {
        let (tx, rx) = watch::channel(Health::Serving);
        let s = Serving {
            rx,
            epoch: Instant::now(),
            contact_ms: Arc::new(AtomicU64::new(u64::MAX)),
            alive_ms: AtomicU64::new(u64::MAX),
            vote_ms: AtomicU64::new(u64::MAX),
        };
        let contact = (s.epoch, s.contact_ms.clone());
        let every = Duration::from_millis(config.heartbeat_ms);
        let (id, silence, grace) = (config.id, config.leader_silence(), config.unserving_after());
        tokio::spawn(async move {
            let mut metrics = raft.metrics();
            let mut tracker = Tracker::new(grace, Instant::now());
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = metrics.changed() => if r.is_err() { return },
                    _ = tick.tick() => {}
                }
                let facts = {
                    let m = metrics.borrow_and_update();
                    let at = contact.1.load(Relaxed);
                    Facts {
                        id,
                        leader: m.current_leader,
                        member: m.membership_config.membership().get_node(&id).is_some(),
                        since_quorum_ack: m.millis_since_quorum_ack.map(Duration::from_millis),
                        since_leader_contact: (at != u64::MAX)
                            .then(|| contact.0.elapsed().saturating_sub(Duration::from_millis(at))),
                    }
                };
                let health = tracker.update(Instant::now(), assess(&facts, silence));
                tx.send_if_modified(|cur| {
                    let same =
                        matches!((&*cur, &health), (Health::Unavailable(_), Health::Unavailable(_))) || *cur == health;
                    if !same {
                        match &health {
                            Health::Serving => tracing::info!("serving watches again"),
                            Health::Unavailable(why) => tracing::warn!("not serving watches: {why}"),
                        }
                        *cur = health;
                    }
                    !same
                });
            }
        });
        s
    }

    /// The leader reached this node (an append or snapshot it accepted).
    pub fn heard_from_leader(&self) {
        self.contact_ms.store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    /// Since the leader last reached this node; `None` if it never has since this process
    /// started.
    pub fn since_leader_contact(&self) -> Option<Duration> {
        self.since(&self.contact_ms)
    }

    /// The stream held to the leader ticked: its process and runtime are alive.
    pub fn leader_alive(&self) {
        self.alive_ms.store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    /// This node cast a vote: granted one a candidate asked for, or stood. Recorded as it
    /// happens, where Raft's metrics show it only once its core has written the vote (on a
    /// busy disk, a hundred milliseconds and more later).
    pub fn voted(&self) {
        self.vote_ms.store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    /// Since this node last cast a vote (`None`: never).
    pub fn since_voted(&self) -> Option<Duration> {
        self.since(&self.vote_ms)
    }

    /// Since the leader last reached this node or this node last cast a vote, whichever is
    /// later (`None`: neither yet): how long ago an elected or electing leader was heard.
    pub fn since_leader_or_vote(&self) -> Option<Duration> {
        [self.since_leader_contact(), self.since_voted()].into_iter().flatten().min()
    }

    /// Since the stream held to the leader last ticked (`None`: never).
    pub fn since_leader_alive(&self) -> Option<Duration> {
        self.since(&self.alive_ms)
    }

    fn since(&self, at: &AtomicU64) -> Option<Duration> {
        let at = at.load(Relaxed);
        (at != u64::MAX).then(|| self.epoch.elapsed().saturating_sub(Duration::from_millis(at)))
    }

    /// `Err` with the UNAVAILABLE message while not serving.
    pub fn check(&self) -> Result<(), String> {
        match &*self.rx.borrow() {
            Health::Serving => Ok(()),
            Health::Unavailable(why) => Err(why.clone()),
        }
    }

    /// Follows changes of the serving state.
    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENCE: Duration = Duration::from_millis(700);

    fn facts(leader: Option<NodeId>) -> Facts {
        Facts {
            id: 3,
            leader,
            member: true,
            since_quorum_ack: Some(Duration::ZERO),
            since_leader_contact: Some(Duration::from_millis(100)),
        }
    }

    #[test]
    fn serving_needs_membership_and_a_leader_heard_from_lately() {
        assert_eq!(assess(&facts(Some(1)), SILENCE), Ok(()));
        assert_eq!(assess(&facts(Some(3)), SILENCE), Ok(()));
        assert_eq!(assess(&facts(None), SILENCE), Err(Gap::NoLeader));
        assert_eq!(assess(&Facts { member: false, ..facts(Some(1)) }, SILENCE), Err(Gap::NotMember));
        // A follower (or learner) its leader stopped reaching.
        let quiet = Facts { since_leader_contact: Some(Duration::from_secs(2)), ..facts(Some(1)) };
        assert_eq!(assess(&quiet, SILENCE), Err(Gap::NoLeader));
        assert_eq!(assess(&Facts { since_leader_contact: None, ..facts(Some(1)) }, SILENCE), Err(Gap::NoLeader));
        // A leader no quorum has acknowledged lately.
        let alone = Facts { since_quorum_ack: Some(Duration::from_secs(2)), ..facts(Some(3)) };
        assert_eq!(assess(&alone, SILENCE), Err(Gap::NoLeader));
    }

    #[test]
    fn unavailable_only_after_the_grace_without_serving() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        let mut t = Tracker::new(grace, t0);
        assert_eq!(t.update(t0 + Duration::from_secs(1), Err(Gap::NoLeader)), Health::Serving);
        // Serving again restarts the clock.
        assert_eq!(t.update(t0 + Duration::from_millis(1500), Ok(())), Health::Serving);
        assert_eq!(t.update(t0 + Duration::from_secs(3), Err(Gap::NoLeader)), Health::Serving);
        match t.update(t0 + Duration::from_millis(3600), Err(Gap::NoLeader)) {
            Health::Unavailable(why) => assert!(why.contains("no leader for 2.1s"), "{why}"),
            h => panic!("{h:?}"),
        }
        match t.update(t0 + Duration::from_secs(4), Err(Gap::NotMember)) {
            Health::Unavailable(why) => assert!(why.contains("not a member"), "{why}"),
            h => panic!("{h:?}"),
        }
        assert_eq!(t.update(t0 + Duration::from_secs(5), Ok(())), Health::Serving);
    }
}
