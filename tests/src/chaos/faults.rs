//! The faults the suite injects, and a seeded schedule of them.

use super::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 the leader, restart it after a pause.
    KillLeader,
    /// kill -9 a follower, restart it after a pause.
    KillFollower,
    /// kill -9 every node, restart them all.
    KillAll,
    /// SIGSTOP the leader for longer than an election timeout, then SIGCONT.
    PauseLeader,
    /// The leader's link goes down: peers and clients lose it.
    IsolateLeader,
    /// A follower loses its peers (both ways) but still answers clients.
    MinorityPartition,
    /// The leader cannot reach one follower; that follower still reaches the leader.
    OneWayPartition,
    /// 30 ms ± 10 ms on every peer link, and 5 % of chunks cut their connection.
    LatencyLoss,
    /// A proxy is killed (or terminated) under load and started again.
    ProxyRestart,
    /// Pools and backends added, weights changed, backends drained and removed.
    ConfigChurn,
    /// A follower's data dir is wiped: it must be refused, then re-added.
    WipedDataDir,
}

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillAll,
        Fault::PauseLeader,
        Fault::IsolateLeader,
        Fault::MinorityPartition,
        Fault::OneWayPartition,
        Fault::LatencyLoss,
        Fault::ProxyRestart,
        Fault::ConfigChurn,
        Fault::WipedDataDir,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill -9 leader",
            Fault::KillFollower => "kill -9 follower",
            Fault::KillAll => "kill -9 all nodes",
            Fault::PauseLeader => "SIGSTOP leader",
            Fault::IsolateLeader => "leader isolated",
            Fault::MinorityPartition => "minority partition",
            Fault::OneWayPartition => "one-way partition",
            Fault::LatencyLoss => "latency+loss",
            Fault::ProxyRestart => "proxy restart",
            Fault::ConfigChurn => "config churn",
            Fault::WipedDataDir => "wiped data dir",
        }
    }
}

/// Rounds of every fault in a seeded order; the wiped data dir (slow: a node is removed and
/// added again) only in the first round.
pub struct Schedule {
    rng: Rng,
    round: Vec<Fault>,
    rounds: u64,
    only: Option<u16>,
}

impl Schedule {
    /// `only`: a mask over [`Fault::ALL`] of the faults to inject (all when `None`).
    pub fn new(seed: u64, only: Option<u16>) -> Schedule {
        Schedule { rng: Rng::new(seed), round: Vec::new(), rounds: 0, only }
    }

    pub fn next_fault(&mut self) -> Fault {
        if self.round.is_empty() {
            let only = self.only.unwrap_or(u16::MAX);
            let mut all: Vec<Fault> = (Fault::ALL.iter().enumerate())
                .filter(|(i, f)| only & 1 << i != 0 && (self.rounds == 0 || **f != Fault::WipedDataDir))
                .map(|(_, f)| *f)
                .collect();
            if all.is_empty() {
                // Asked for the wiped data dir alone: it repeats.
                all.push(Fault::WipedDataDir);
            }
            // Fisher–Yates; popped from the back.
            for i in (1..all.len()).rev() {
                all.swap(i, self.rng.below(i as u64 + 1) as usize);
            }
            self.round = all;
            self.rounds += 1;
        }
        self.round.pop().expect("a fault")
    }

    /// Milliseconds in `lo..=hi`, for how long a fault holds.
    pub fn hold_ms(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.rng.below(hi - lo + 1)
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}
