//! A node's Prometheus metrics. Counters and histograms are bumped where things happen (log
//! flushes, proposals, snapshots, health probes, gRPC calls); gauges that mirror Raft's or the
//! registry's state are read at scrape time, so they can never drift from what they mirror.
//! Served as OpenMetrics text on `--metrics-listen` ([`serve`]).

pub mod layer;
pub mod serve;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

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
    pub snapshot_builds: Counter,
    pub snapshot_installs: Counter,
    /// The highest committed index the log store was told of.
    pub committed: AtomicU64,
    pub watch_streams: AtomicI64,
    /// Proxy reports the leader took in, and the session bindings in them it proposed.
    pub reports: Counter,
    pub bindings_absorbed: Counter,
    /// Health probes by result (`ok`, `failed`) and health flips by the new state.
    pub probes: Family<Labels, Counter>,
    pub flips: Family<Labels, Counter>,
    /// gRPC calls answered, by service, method and code (see [`layer`]).
    pub calls: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            proposals: Counter::default(),
            // 1, 2, 4 ... 1024 (the batch cap).
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 50 µs to about 1.6 s.
            log_flush: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            snapshot_builds: Counter::default(),
            snapshot_installs: Counter::default(),
            committed: AtomicU64::new(0),
            watch_streams: AtomicI64::new(0),
            reports: Counter::default(),
            bindings_absorbed: Counter::default(),
            probes: Family::default(),
            flips: Family::default(),
            calls: Family::default(),
        }
    }
}

impl Metrics {
    pub fn set_committed(&self, index: u64) {
        self.committed.fetch_max(index, Relaxed);
    }

    /// Counts one open watch stream until the guard is dropped.
    pub fn watch_stream(self: &std::sync::Arc<Self>) -> WatchGuard {
        self.watch_streams.fetch_add(1, Relaxed);
        WatchGuard(self.clone())
    }
}

/// Held by a watch stream's task.
pub struct WatchGuard(std::sync::Arc<Metrics>);

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

    gauge(&mut reg, "raft_term", "Current Raft term", raft.current_term as i64);
    gauge(
        &mut reg,
        "raft_leader_id",
        "Id of the leader this node knows of (0: none)",
        raft.current_leader.unwrap_or(0) as i64,
    );
    let state = Family::<Labels, Gauge>::default();
    for (s, name) in [
        (ServerState::Leader, "leader"),
        (ServerState::Follower, "follower"),
        (ServerState::Candidate, "candidate"),
        (ServerState::Learner, "learner"),
        (ServerState::Shutdown, "shutdown"),
    ] {
        state.get_or_create(&vec![("state", name.to_string())]).set((raft.state == s) as i64);
    }
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
    reg.register("snapshot_builds", "Snapshots this node built", m.snapshot_builds.clone());
    reg.register("snapshot_installs", "Snapshots this node installed from a leader", m.snapshot_installs.clone());
    gauge(&mut reg, "watch_streams", "Discovery watch streams open on this node", m.watch_streams.load(Relaxed));

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
    reg.register("health_probes", "Active health probes the leader ran, by result", m.probes.clone());
    reg.register("health_flips", "Backend health changes the leader recorded, by new state", m.flips.clone());
    reg.register("grpc_server_handled", "gRPC calls answered, by service, method and code", m.calls.clone());

    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
