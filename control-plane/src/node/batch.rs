//! Group commit. openraft writes one entry at a time and waits for its flush, so whatever
//! queued up meanwhile goes into the next entry; a few entries are kept in flight so batches
//! pipeline. Followers gather the writes they forward the same way ([`next_batch`]).

use std::sync::Arc;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::calls::{ExecError, Written};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::{Batch, Proposed};
use crate::types::Raft;

/// Most commands one entry (or one forwarded call) carries.
pub const MAX_BATCH: usize = 1024;
/// Bytes of commands one entry (or one forwarded call) gathers before it is closed. Each
/// command came in one request under tonic's 4 MiB limit, so an entry stays under this plus
/// one command: far below what a peer accepts (`MAX_PEER_MESSAGE`, 64 MiB). Without it, 1,024
/// large writes queued together made one entry no peer would take, which the leader then
/// sent again forever while every later write waited behind it.
pub const BATCH_BYTES: usize = 8 << 20;
/// Entries submitted to Raft and not yet answered. openraft queues whatever it is given one
/// entry per message, so holding writes back here is what lets them gather into batches.
/// With the log's real fsync (the WAL), 3 left the cores idle part of the time at 64 writers:
/// 6 made 1.03-1.18x the writes/s of 3 in five interleaved rounds, and 12 less than 6.
pub const IN_FLIGHT: usize = 6;

/// A write waiting to be batched into the next Raft entry.
pub struct Proposal {
    pub cmd: Proposed,
    pub tx: oneshot::Sender<Result<Written, ExecError>>,
}

/// Waits for work and a free in-flight slot, then takes everything queued meanwhile (up to
/// [`MAX_BATCH`]). `None` once the channel is closed.
pub async fn next_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    buf: &mut Vec<T>,
    slots: &Arc<Semaphore>,
) -> Option<OwnedSemaphorePermit> {
    if rx.recv_many(buf, MAX_BATCH).await == 0 {
        return None;
    }
    let slot = slots.clone().acquire_owned().await.ok()?;
    while buf.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(x) => buf.push(x),
            Err(_) => break,
        }
    }
    Some(slot)
}

/// `items` in runs, in order, each closed once its sizes reach `budget` (so a run exceeds it
/// by at most its last item).
pub fn by_size<T>(items: Vec<T>, size: impl Fn(&T) -> usize, budget: usize) -> Vec<Vec<T>> {
    let mut runs = vec![Vec::new()];
    let mut bytes = 0;
    for item in items {
        if bytes >= budget {
            runs.push(Vec::new());
            bytes = 0;
        }
        bytes += size(&item);
        runs.last_mut().expect("one run at least").push(item);
    }
    runs
}

/// A command's size as it is written to the log (postcard), without writing it.
pub fn encoded_size(p: &Proposed) -> usize {
    postcard::serialize_with_flavor::<_, _, usize>(p, postcard::ser_flavors::Size::default()).unwrap_or(usize::MAX)
}

/// Answers every waiter of a batch with the same error.
pub fn fail_all<T>(txs: Vec<oneshot::Sender<Result<T, ExecError>>>, e: ExecError) {
    for tx in txs {
        let _ = tx.send(Err(e.clone()));
    }
}

/// The leader's proposer: each batch becomes one Raft entry; entries are submitted without
/// waiting for the previous one to commit.
pub async fn propose_loop(raft: Raft, mut rx: mpsc::Receiver<Proposal>, metrics: Arc<Metrics>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(slot) = next_batch(&mut rx, &mut buf, &slots).await {
        // Audit records take the leader's time, stamped here where every write is proposed.
        let now_ms = crate::clock::now_ms();
        let slot = Arc::new(slot);
        for run in by_size(std::mem::take(&mut buf), |p| encoded_size(&p.cmd), BATCH_BYTES) {
            let (cmds, txs): (Vec<Proposed>, Vec<_>) = run
                .into_iter()
                .map(|mut p| {
                    if let Some(a) = &mut p.cmd.audit {
                        std::sync::Arc::make_mut(a).at_ms = now_ms;
                    }
                    (p.cmd, p.tx)
                })
                .unzip();
            submit(&raft, &metrics, cmds, txs, slot.clone()).await;
        }
    }
}

/// Proposes one entry of `cmds` and answers `txs` once it is decided, holding `slot` until
/// then.
async fn submit(
    raft: &Raft,
    metrics: &Metrics,
    cmds: Vec<Proposed>,
    txs: Vec<oneshot::Sender<Result<Written, ExecError>>>,
    slot: Arc<OwnedSemaphorePermit>,
) {
    metrics.proposals.inc_by(cmds.len() as u64);
    metrics.batch_size.observe(cmds.len() as f64);
    let pending = match raft.client_write_ff(Batch(Arc::new(cmds))).await {
        Ok(p) => p,
        Err(f) => {
            fail_all(txs, ExecError::Api(ApiError::Unavailable(format!("raft stopped: {f}"))));
            return;
        }
    };
    tokio::spawn(async move {
        let _slot = slot;
        match pending.await {
            Ok(Ok(resp)) => {
                // Each command's own revision: a repeated request answers with its first.
                for (tx, written) in txs.into_iter().zip(resp.data.0) {
                    let _ = tx.send(Ok(written));
                }
            }
            Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                fail_all(txs, ExecError::NotLeader(f.leader_node.map(|n| n.addr)))
            }
            Ok(Err(e)) => fail_all(txs, ExecError::Api(ApiError::Internal(e.to_string()))),
            // The core took the entry and then stopped (a failed disk write, say): it may
            // be in the log on disk and apply after a restart.
            Err(_) => fail_all(
                txs,
                ExecError::Api(ApiError::OutcomeUnknown(
                    "raft stopped after taking the write (it may apply once the node restarts); read before retrying"
                        .into(),
                )),
            ),
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_batch_takes_everything_queued_up_to_the_cap() {
        let (tx, mut rx) = mpsc::channel(4 * MAX_BATCH);
        for i in 0..MAX_BATCH + 10 {
            tx.send(i).await.unwrap();
        }
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut buf = Vec::new();
        let _slot = next_batch(&mut rx, &mut buf, &slots).await.unwrap();
        assert_eq!(buf.len(), MAX_BATCH);
        assert_eq!(buf[0], 0);
        buf.clear();
        let _slot2 = next_batch(&mut rx, &mut buf, &slots).await.unwrap();
        assert_eq!(buf, (MAX_BATCH..MAX_BATCH + 10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_a_free_slot_and_gathers_meanwhile() {
        let (tx, mut rx) = mpsc::channel(64);
        let slots = Arc::new(Semaphore::new(1));
        let held = slots.clone().acquire_owned().await.unwrap();
        tx.send(1).await.unwrap();
        let mut buf = Vec::new();
        {
            let next = next_batch(&mut rx, &mut buf, &slots);
            tokio::pin!(next);
            // Every slot is taken: no batch goes out, however long it waits.
            assert!(tokio::time::timeout(Duration::from_secs(60), &mut next).await.is_err());
            tx.send(2).await.unwrap();
            tx.send(3).await.unwrap();
            drop(held);
            assert!(next.await.is_some());
        }
        assert_eq!(buf, vec![1, 2, 3]);
    }

    #[test]
    fn runs_close_at_the_byte_budget_and_keep_their_order() {
        let sizes = [3usize, 3, 3, 10, 1, 1, 9, 2];
        let runs = by_size(sizes.to_vec(), |n| *n, 6);
        assert_eq!(runs, vec![vec![3, 3], vec![3, 10], vec![1, 1, 9], vec![2]]);
        assert_eq!(by_size(vec![1, 2, 3], |n| *n, BATCH_BYTES), vec![vec![1, 2, 3]], "under the budget: one run");
        assert_eq!(by_size(Vec::<usize>::new(), |n| *n, 6), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn a_thousand_large_writes_make_entries_every_peer_accepts() {
        // 1,024 writes of 1 MiB each (under tonic's 4 MiB request limit; here a settings
        // mask, which nothing else bounds): one entry of 1 GiB before, refused by every peer.
        let big = || -> Proposed {
            let settings = crate::pb::Pb(switchyard_proto::v1::Settings::default());
            crate::state::Command::UpdateSettings { settings, mask: vec!["x".repeat(1 << 20)] }.into()
        };
        let one = encoded_size(&big());
        assert!(one > 1 << 20, "the size counts the payload: {one}");
        let runs = by_size((0..MAX_BATCH).map(|_| big()).collect(), encoded_size, BATCH_BYTES);
        for run in &runs {
            let bytes: usize = run.iter().map(encoded_size).sum();
            assert!(bytes + 64 * 1024 < switchyard_model::limits::MAX_PEER_MESSAGE, "{bytes}");
        }
        assert_eq!(runs.iter().map(Vec::len).sum::<usize>(), MAX_BATCH);
    }

    #[tokio::test]
    async fn a_closed_channel_ends_the_loop() {
        let (tx, mut rx) = mpsc::channel::<u8>(1);
        drop(tx);
        let slots = Arc::new(Semaphore::new(1));
        assert!(next_batch(&mut rx, &mut Vec::new(), &slots).await.is_none());
    }
}
