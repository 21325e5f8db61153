//! A node's Prometheus metrics. Counters and histograms are bumped where things happen (log
//! flushes, proposals, snapshots, health probes, gRPC calls); gauges that mirror Raft's or the
//! registry's state are read at scrape time, so they can never drift from what they mirror.
//! Served as OpenMetrics text on `--metrics-listen` ([`serve`]).

pub mod layer;
pub mod serve;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use openraft::ServerState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::node::context::NodeCtx;

pub use serve::serve;

/// Every metric name starts with this.
pub const PREFIX: &str = "switchyard_control";

type Labels = Vec<(&'static str, String)>;

/// The metrics a node updates as it works. Clones of a metric share its value, so a scrape
/// registers clones into a fresh registry beside the gauges it reads then.
pub struct Metrics {
    /// Commands handed to Raft by this node's proposer (leader only).
    pub proposals: Counter,
    /// Commands per Raft entry.
    pub batch_size: Histogram,
    /// Time of one fsync of the log (one flush makes every waiting append durable).
    pub log_flush: Histogram,
    /// sled blob files fsynced with sled's flushes (see `store::blobs`).
    pub log_blobs_synced: Counter,
    pub snapshot_builds: Counter,
    pub snapshot_installs: Counter,
    /// The highest committed index the log store was told of.
    pub committed: AtomicU64,
    pub watch_streams: AtomicI64,
    /// Proxy reports the leader took in, and the session bindings in them it proposed.
    pub reports: Counter,
    pub bindings_absorbed: Counter,
    /// Refreshes in reports left out: the binding was seen within a third of its TTL.
    pub refreshes_skipped: Counter,
    /// New bindings the leader did not propose because the state held its most.
    pub bindings_refused_full: Counter,
    /// Health probes by result (`ok`, `failed`) and health flips by the new state.
    pub probes: Family<Labels, Counter>,
    pub flips: Family<Labels, Counter>,
    /// Elections this node called, by why (see [`crate::node::election`]).
    pub elections: Family<Labels, Counter>,
    /// gRPC calls answered, by service, method and code (see [`layer`]).
    pub calls: Family<Labels, Counter>,
    /// Leader: from a revision applied here to a proxy running it, by the proxy's report.
    pub propagation: Histogram,
    /// When recent apply batches finished: (last index, unix ms), oldest first.
    applied_at: Mutex<VecDeque<(u64, u64)>>,
    /// The revision each open watch stream has sent through.
    watch_sent: Mutex<Vec<Weak<AtomicU64>>>,
}

/// Apply batches remembered for propagation times: minutes of writes at any sane rate.
const APPLIED_REMEMBERED: usize = 4096;

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            proposals: Counter::default(),
            // 1, 2, 4 ... 1024 (the batch cap).
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 50 µs to about 1.6 s.
            log_flush: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            log_blobs_synced: Counter::default(),
            snapshot_builds: Counter::default(),
            snapshot_installs: Counter::default(),
            committed: AtomicU64::new(0),
            watch_streams: AtomicI64::new(0),
            reports: Counter::default(),
            bindings_absorbed: Counter::default(),
            refreshes_skipped: Counter::default(),
            bindings_refused_full: Counter::default(),
            probes: Family::default(),
            flips: Family::default(),
            elections: Family::default(),
            calls: Family::default(),
            // 1 ms to about 16 s.
            propagation: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            applied_at: Mutex::new(VecDeque::with_capacity(APPLIED_REMEMBERED)),
            watch_sent: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    pub fn set_committed(&self, index: u64) {
        self.committed.fetch_max(index, Relaxed);
    }

    /// Counts one open watch stream until the guard is dropped.
    pub fn watch_stream(self: &Arc<Self>) -> WatchGuard {
        self.watch_streams.fetch_add(1, Relaxed);
        let sent = Arc::new(AtomicU64::new(0));
        let mut all = self.watch_sent.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&sent));
        WatchGuard(self.clone(), sent)
    }

    /// Records that this node applied through `index` at `at_ms`.
    pub fn note_applied(&self, index: u64, at_ms: u64) {
        let mut q = self.applied_at.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == APPLIED_REMEMBERED {
            q.pop_front();
        }
        q.push_back((index, at_ms));
    }

    /// When this node applied `revision`, if it is recent enough to be remembered (the batch
    /// before it must be known too, or the revision may be older than the memory).
    pub fn applied_time(&self, revision: u64) -> Option<u64> {
        let q = self.applied_at.lock().unwrap_or_else(|e| e.into_inner());
        let i = q.partition_point(|(idx, _)| *idx < revision);
        (i > 0).then(|| q.get(i).map(|(_, at)| *at)).flatten()
    }

    /// Leader: a proxy reported running `revision` since `proxy_ms` (its clock, unix ms).
    /// Only a revision applied after the proxy's previous report (`reported_ms`) is timed: an
    /// older one is a proxy catching up (just started, or back from a restart), not a write
    /// propagating. Clocks of different machines differ by their NTP error; a proxy ahead of
    /// the leader's clock counts as 0.
    pub fn observe_propagation(&self, revision: u64, proxy_ms: u64, reported_ms: u64) {
        if let Some(t) = self.applied_time(revision).filter(|t| *t >= reported_ms) {
            self.propagation.observe(proxy_ms.saturating_sub(t) as f64 / 1000.0);
        }
    }

    #[cfg(test)]
    fn propagation_count(&self) -> u64 {
        self.propagation_sum_count().1
    }

    #[cfg(test)]
    fn propagation_sum(&self) -> f64 {
        self.propagation_sum_count().0
    }

    #[cfg(test)]
    fn propagation_sum_count(&self) -> (f64, u64) {
        let mut reg = Registry::default();
        reg.register("p", "propagation", self.propagation.clone());
        let mut out = String::new();
        encode(&mut out, &reg).expect("writing to a String cannot fail");
        let value = |name: &str| {
            out.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        (value("p_sum "), value("p_count ") as u64)
    }

    /// The most revisions an open watch stream is behind `applied`.
    fn watch_lag(&self, applied: u64) -> u64 {
        let all = self.watch_sent.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter_map(Weak::upgrade).map(|s| applied.saturating_sub(s.load(Relaxed))).max().unwrap_or(0)
    }
}

/// Held by a watch stream's task; says how far the stream has sent.
pub struct WatchGuard(Arc<Metrics>, Arc<AtomicU64>);

impl WatchGuard {
    /// The stream is current through `revision`.
    pub fn sent(&self, revision: u64) {
        self.1.store(revision, Relaxed);
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watch_streams.fetch_sub(1, Relaxed);
    }
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn idx(i: Option<u64>) -> i64 {
    i.map_or(0, |i| i as i64)
}

/// The whole exposition for one scrape.
pub fn render(node: &NodeCtx) -> String {
    let m = &node.metrics;
    let mut reg = Registry::with_prefix(PREFIX);
    let raft = node.raft.metrics().borrow().clone();

    // A leader cut off from every majority is `leader_without_quorum`, not `leader`, and names
    // no leader: a "more than one leader" alert must not fire for it (see
    // `NodeCtx::leading_without_quorum`).
    let cut_off = node.leading_without_quorum().is_some();
    gauge(&mut reg, "raft_term", "Current Raft term", raft.current_term as i64);
    gauge(
        &mut reg,
        "raft_leader_id",
        "Id of the leader this node knows of (0: none)",
        if cut_off { 0 } else { raft.current_leader.unwrap_or(0) as i64 },
    );
    let state = Family::<Labels, Gauge>::default();
    for (s, name) in [
        (ServerState::Leader, "leader"),
        (ServerState::Follower, "follower"),
        (ServerState::Candidate, "candidate"),
        (ServerState::Learner, "learner"),
        (ServerState::Shutdown, "shutdown"),
    ] {
        let is = raft.state == s && !(cut_off && s == ServerState::Leader);
        state.get_or_create(&vec![("state", name.to_string())]).set(is as i64);
    }
    state.get_or_create(&vec![("state", "leader_without_quorum".to_string())]).set(cut_off as i64);
    reg.register("raft_state", "1 for this node's Raft role, 0 for the others", state);
    gauge(&mut reg, "raft_last_log_index", "Index of the last entry in this node's log", idx(raft.last_log_index));
    gauge(&mut reg, "raft_commit_index", "Highest log index known committed", m.committed.load(Relaxed) as i64);
    gauge(
        &mut reg,
        "raft_applied_index",
        "Index of the last entry applied (the revision)",
        idx(raft.last_applied.map(|l| l.index)),
    );
    gauge(&mut reg, "raft_snapshot_index", "Index the latest snapshot covers", idx(raft.snapshot.map(|l| l.index)));
    let matched = Family::<Labels, Gauge>::default();
    let lag = Family::<Labels, Gauge>::default();
    let last = idx(raft.last_log_index);
    for (id, log_id) in raft.replication.iter().flatten().filter(|(id, _)| **id != node.id) {
        let l = vec![("follower", id.to_string())];
        let at = idx(log_id.map(|l| l.index));
        matched.get_or_create(&l).set(at);
        lag.get_or_create(&l).set((last - at).max(0));
    }
    reg.register("raft_follower_matched_index", "Leader only: the last index each follower holds", matched);
    reg.register("raft_follower_lag_entries", "Leader only: entries each follower is behind the leader's log", lag);

    reg.register("proposals", "Commands this node proposed to Raft as leader", m.proposals.clone());
    reg.register("proposal_batch_size_commands", "Commands per Raft entry proposed", m.batch_size.clone());
    reg.register("log_flush_duration_seconds", "Time of one fsync of the Raft log", m.log_flush.clone());
    reg.register(
        "log_blobs_synced",
        "sled blob files (large log messages) fsynced with the log that points to them",
        m.log_blobs_synced.clone(),
    );
    reg.register("snapshot_builds", "Snapshots this node built", m.snapshot_builds.clone());
    reg.register("snapshot_installs", "Snapshots this node installed from a leader", m.snapshot_installs.clone());
    gauge(&mut reg, "watch_streams", "Discovery watch streams open on this node", m.watch_streams.load(Relaxed));
    let applied_rev = raft.last_applied.map_or(0, |l| l.index);
    gauge(
        &mut reg,
        "watch_lag_revisions",
        "Most revisions any watch stream on this node is behind what it applied (entries without changes count until the next progress event)",
        m.watch_lag(applied_rev) as i64,
    );
    reg.register(
        "proxy_propagation_seconds",
        "Leader only: from a revision applied on the leader to a proxy running it, by proxy reports",
        m.propagation.clone(),
    );

    let applied = Family::<Labels, Gauge>::default();
    if node.is_leader() {
        for p in node.proxies.list() {
            applied.get_or_create(&vec![("proxy", p.proxy_id)]).set(p.applied_revision as i64);
        }
    }
    reg.register("proxy_applied_revision", "Leader only: the revision each proxy last reported running", applied);
    reg.register("proxy_reports", "Proxy reports the leader took in", m.reports.clone());
    reg.register(
        "session_bindings_absorbed",
        "Session bindings from proxy reports the leader proposed",
        m.bindings_absorbed.clone(),
    );
    reg.register(
        "session_refreshes_skipped",
        "Leader only: bindings in proxy reports not proposed: refreshes seen within a third of their TTL, and bindings apply would ignore",
        m.refreshes_skipped.clone(),
    );
    reg.register(
        "session_bindings_refused_full",
        "Leader only: new session bindings not proposed because the cluster held its most (sessions go on without replicated affinity until room is made)",
        m.bindings_refused_full.clone(),
    );
    reg.register("health_probes", "Active health probes the leader ran, by result", m.probes.clone());
    reg.register("elections_called", "Elections this node called, by why it stood", m.elections.clone());
    reg.register("health_flips", "Backend health changes the leader recorded, by new state", m.flips.clone());
    reg.register("grpc_server_handled", "gRPC calls answered, by service, method and code", m.calls.clone());

    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_applied_after_a_proxys_previous_report_are_timed() {
        let m = Metrics::default();
        for (index, at) in [(5, 1_000), (9, 2_000), (12, 3_000)] {
            m.note_applied(index, at);
        }
        // Revision 9 was applied at 2,000 (the batch through 9); a proxy that last reported
        // at 1,500 and runs it since 2,040 took 40 ms.
        m.observe_propagation(9, 2_040, 1_500);
        assert_eq!((m.propagation_count(), m.propagation_sum()), (1, 0.04));
        // A proxy catching up (its previous report came after the write) is not timed.
        m.observe_propagation(12, 9_000, 3_500);
        // Nor is a revision older than what is remembered.
        m.observe_propagation(3, 9_000, 0);
        assert_eq!(m.propagation_count(), 1);
    }
}
