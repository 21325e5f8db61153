//! Discovery: the config stream proxies follow, and the reports they send back.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use switchyard_proto::v1::discovery_server::Discovery;
use switchyard_proto::v1::*;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use crate::clock::now_ms;
use crate::node::calls::Report;
use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::store::sm::Notice;

pub struct DiscoveryService(pub Arc<NodeCtx>);

/// How long a Watch waits for this node to reach the revision a proxy already has.
const CATCH_UP: Duration = Duration::from_secs(3);

fn snapshot_event(node: &NodeCtx) -> WatchEvent {
    let live = node.shared.read();
    let rev = live.revision();
    WatchEvent { revision: rev, kind: Some(watch_event::Kind::Snapshot(live.state.to_topology(rev))) }
}

fn changes_event(rev: u64, changes: &[Change]) -> WatchEvent {
    WatchEvent { revision: rev, kind: Some(watch_event::Kind::Changes(ChangeSet { changes: changes.to_vec() })) }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let req = req.into_inner();
        let node = self.0.clone();
        let from = req.from_revision;
        if from > node.shared.read().revision() {
            // This node is behind what the watcher already has; never send it backwards.
            node.raft.wait(Some(CATCH_UP)).applied_index_at_least(Some(from), "watch resume").await.map_err(|_| {
                Status::unavailable(format!("this node has not reached revision {from} yet; try another"))
            })?;
        }
        let (first, mut rx, mut last) = {
            let (live, rx) = node.shared.subscribe();
            let rev = live.revision();
            let first: Vec<WatchEvent> = match (from > 0).then(|| live.changes_since(from)).flatten() {
                Some(changes) => changes.iter().map(|(r, c)| changes_event(*r, c)).collect(),
                None => vec![WatchEvent {
                    revision: rev,
                    kind: Some(watch_event::Kind::Snapshot(live.state.to_topology(rev))),
                }],
            };
            (first, rx, rev.max(from))
        };
        tracing::debug!(proxy = %req.proxy_id, from, "watch started");
        let (tx, out) = mpsc::channel::<Result<WatchEvent, Status>>(256);
        let shutdown = node.shutdown.clone();
        tokio::spawn(async move {
            for ev in first {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                let notice = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    n = rx.recv() => n,
                };
                let ev = match notice {
                    Ok(Notice::Changes(rev, changes)) if rev > last => changes_event(rev, &changes),
                    Ok(Notice::Changes(..)) => continue,
                    // Fell behind the broadcast, or the state was replaced: resend it whole.
                    Ok(Notice::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let ev = snapshot_event(&node);
                        if ev.revision < last {
                            continue;
                        }
                        ev
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                last = ev.revision;
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    async fn report(&self, req: Request<ProxyReport>) -> Result<Response<ReportReply>, Status> {
        let r = req.into_inner();
        if r.proxy_id.is_empty() {
            return Err(Status::invalid_argument("proxy_id is required"));
        }
        let status = ProxyStatus {
            proxy_id: r.proxy_id.clone(),
            applied_revision: r.applied_revision,
            rejected_reason: r.rejected_reason,
            last_report_ms: now_ms(),
            connections: r.loads.iter().map(|l| l.connections).sum(),
            node: self.0.advertise.clone(),
        };
        // Reports are kept on the leader, which answers `proxy list` for the whole cluster. A
        // report that cannot reach it is dropped: the proxy sends a fresh one within seconds.
        let bindings: Vec<_> = r
            .bindings
            .into_iter()
            .filter(|b| !b.pool.is_empty() && !b.key.is_empty() && !b.backend.is_empty())
            .map(crate::pb::Pb)
            .collect();
        let loads = r.loads.into_iter().map(crate::pb::Pb).collect();
        let call = Report { status: crate::pb::Pb(status), bindings, loads };
        // Kept on the leader; a report that cannot reach it is dropped (the next one comes
        // within seconds) rather than held.
        let cluster_loads =
            match tokio::time::timeout(std::time::Duration::from_secs(1), leader::execute(&self.0, call)).await {
                Ok(Ok(l)) => l.into_iter().map(|crate::pb::Pb(l)| l).collect(),
                _ => vec![],
            };
        Ok(Response::new(ReportReply { revision: self.0.shared.read().revision(), cluster_loads }))
    }
}
