//! When a node snapshots its state (and so lets the log before it be purged). openraft's own
//! policy is off (`SnapshotPolicy::Never`); this task triggers builds instead.
//!
//! openraft's policy counts entries only: a snapshot every `--snapshot-every` of them. A
//! snapshot's cost grows with the state, not with those entries: with a few million backends
//! each build encoded and wrote 600 MB, and under saturating writes the three nodes' snapshot
//! threads took 15% of a core each, CPU the Raft threads then waited for (a leader that waits
//! long enough looks dead to its followers). So once the snapshot is large, the next one also
//! waits until the log written since it is half its size: building then costs at most about
//! two bytes of encoding per byte of log, and a restart still replays no more log than half a
//! snapshot's worth (loading the snapshot itself costs as much). Below [`SIZED_FROM`] the
//! entry count alone decides, as before.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::context::NodeCtx;

/// How often the log is weighed.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A snapshot smaller than this is cheap to build: the entry count alone decides.
pub const SIZED_FROM: u64 = 16 << 20;
/// While a build runs, openraft ignores further triggers; one is sent again at most this often.
const RETRIGGER: Duration = Duration::from_secs(1);

/// Whether a snapshot is due, with `entries` applied and `log_bytes` of log written since the
/// last one, which takes `snapshot_bytes` (0: none yet), and `every` the entry count.
pub fn due(entries: u64, log_bytes: u64, snapshot_bytes: u64, every: u64) -> bool {
    entries >= every && (snapshot_bytes < SIZED_FROM || log_bytes.saturating_mul(2) >= snapshot_bytes)
}

/// Runs for the node's lifetime.
pub async fn run(node: Arc<NodeCtx>) {
    let every = node.config.snapshot_every;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut triggered: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let entries = {
            let m = node.raft.metrics();
            let m = m.borrow();
            let applied = m.last_applied.map_or(0, |l| l.index + 1);
            applied.saturating_sub(m.snapshot.map_or(0, |l| l.index + 1))
        };
        if triggered.is_some_and(|t| t.elapsed() < RETRIGGER) {
            continue;
        }
        let (log_bytes, snapshot_bytes) = node.log.since_snapshot();
        if !due(entries, log_bytes, snapshot_bytes, every) {
            continue;
        }
        tracing::debug!(entries, log_bytes, snapshot_bytes, "snapshot due");
        triggered = Some(Instant::now());
        if node.raft.trigger().snapshot().await.is_err() {
            // Raft stopped (shut down or fatal): `fatal::watch` reports it.
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_snapshot_goes_by_entries_alone() {
        assert!(!due(9_999, 0, 0, 10_000));
        assert!(due(10_000, 1, 0, 10_000));
        assert!(due(10_000, 1, SIZED_FROM - 1, 10_000));
    }

    #[test]
    fn a_large_snapshot_waits_for_half_its_size_of_log() {
        let snap = 600 << 20;
        assert!(!due(1_000_000, (snap / 2) - 1, snap, 10_000));
        assert!(due(1_000_000, snap / 2, snap, 10_000));
        // Bytes alone are not enough: the entry count still has to be reached.
        assert!(!due(9_999, snap, snap, 10_000));
    }
}
