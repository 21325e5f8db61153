//! Discovery: the config stream proxies follow, and the reports they send back. A quiet
//! stream carries a progress event every [`WATCH_PROGRESS_EVERY`] with the leader's revision,
//! so a watcher can tell a quiet stream from a stale one; a node that is not serving
//! (see [`crate::node::serving`]) ends its streams with UNAVAILABLE.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use switchyard_model::limits::WATCH_PROGRESS_EVERY;
use switchyard_model::Model;
use switchyard_proto::v1::discovery_server::Discovery;
use switchyard_proto::v1::*;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::{Request, Response, Status};

use switchyard_model::tls::Role;

use crate::auth::Caller;
use crate::clock::now_ms;
use crate::node::calls::{ReadIndex, Report};
use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::node::serving::Health;
use crate::store::sm::Notice;

/// Longest proxy name kept (a host name and a port fit).
const MAX_PROXY_ID: usize = 256;
/// Longest reason a proxy gives for refusing a config, as kept for `proxy list`.
const MAX_REASON: usize = 1024;

pub struct DiscoveryService {
    node: Arc<NodeCtx>,
    /// The leader's revision, renewed every [`WATCH_PROGRESS_EVERY`] while there are streams.
    leader_revision: watch::Receiver<u64>,
}

impl DiscoveryService {
    pub fn new(node: Arc<NodeCtx>) -> DiscoveryService {
        let (tx, leader_revision) = watch::channel(0);
        tokio::spawn(leader_revisions(node.clone(), tx));
        DiscoveryService { node, leader_revision }
    }
}

/// Asks the leader for its commit index (a read index) once a tick for all of this node's
/// streams. A tick without an answer in time is skipped, so its streams get no progress: a
/// watcher hears silence, not a stale revision dressed as fresh.
async fn leader_revisions(node: Arc<NodeCtx>, tx: watch::Sender<u64>) {
    let mut tick = tokio::time::interval(WATCH_PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The service keeps one receiver; more means open streams.
        if tx.receiver_count() <= 1 {
            continue;
        }
        if let Ok(Ok(index)) = tokio::time::timeout(WATCH_PROGRESS_EVERY, leader::execute(&node, ReadIndex)).await {
            tx.send_modify(|r| *r = index);
        }
    }
}

fn progress_event(sent: u64, leader_revision: u64) -> WatchEvent {
    let p = Progress { leader_revision, node_revision: sent };
    WatchEvent { revision: sent, kind: Some(watch_event::Kind::Progress(p)) }
}

/// How long a Watch waits for this node to reach the revision a proxy already has.
const CATCH_UP: Duration = Duration::from_secs(3);
/// How often an open watch asks whether its caller's token still holds (revoked or expired
/// tokens end it, see [`Caller::still_holds`]).
pub const RECHECK: Duration = Duration::from_secs(1);

fn snapshot_event(node: &NodeCtx) -> WatchEvent {
    let (model, rev) = {
        let live = node.shared.read();
        (Model::clone(&live.state), live.revision())
    };
    snapshot_of(&model, rev)
}

/// The whole model as one event. Built from a clone (which shares the live maps' nodes), so
/// the state lock is held only for the clone, not for the copy of every entity.
fn snapshot_of(model: &Model, rev: u64) -> WatchEvent {
    WatchEvent { revision: rev, kind: Some(watch_event::Kind::Snapshot(model.to_topology(rev))) }
}

/// Whether a watcher gets the affinity hashing secret: proxies need it to hash keys, and a
/// node's trusted loopback caller may do anything. Viewers, operators and admins watch the
/// config without it (with it, anyone could test a guessed credential against a hash).
fn may_see_affinity_secret(caller: Option<&Caller>) -> bool {
    caller.is_some_and(|c| matches!(c.role(), None | Some(Role::Proxy | Role::Node)))
}

/// `ev` as this watcher may see it.
fn shown(mut ev: WatchEvent, secret: bool) -> WatchEvent {
    if secret {
        return ev;
    }
    match &mut ev.kind {
        Some(watch_event::Kind::Snapshot(t)) => t.affinity_secret.clear(),
        Some(watch_event::Kind::Changes(set)) => {
            set.changes.retain(|c| !matches!(c.kind, Some(change::Kind::AffinitySecret(_))))
        }
        _ => {}
    }
    ev
}

fn changes_event(rev: u64, changes: &[Change]) -> WatchEvent {
    WatchEvent { revision: rev, kind: Some(watch_event::Kind::Changes(ChangeSet { changes: changes.to_vec() })) }
}

/// A proxy's name as it is logged, kept on the leader for `proxy list` and shown by the
/// console: bounded like any name, and no escape sequences or line breaks from a proxy (or
/// any watcher) reach an operator's terminal.
fn check_proxy_id(id: &str) -> Result<(), Status> {
    if id.len() > MAX_PROXY_ID {
        return Err(Status::invalid_argument(format!("proxy_id is over {MAX_PROXY_ID} bytes")));
    }
    if id.chars().any(char::is_control) {
        return Err(Status::invalid_argument("proxy_id holds a control character"));
    }
    Ok(())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        // A proxy that followed another cluster must not be handed this one's config, unless
        // this cluster was restored from that one: then it gets the state whole.
        let resync = self.node.cluster_id.check_watch(&req)?;
        let secret = may_see_affinity_secret(req.extensions().get::<Caller>());
        let caller = req.extensions().get::<Caller>().cloned();
        let req = req.into_inner();
        // Logged when the watch starts and ends (a watcher need not name itself).
        check_proxy_id(&req.proxy_id)?;
        let node = self.node.clone();
        node.serving.check().map_err(Status::unavailable)?;
        let from = if resync { 0 } else { req.from_revision };
        if from > node.shared.read().revision() {
            // This node is behind what the watcher already has; never send it backwards.
            node.raft.wait(Some(CATCH_UP)).applied_index_at_least(Some(from), "watch resume").await.map_err(|_| {
                Status::unavailable(format!("this node has not reached revision {from} yet; try another"))
            })?;
        }
        let (first, mut rx, mut last) = {
            let (live, rx) = node.shared.subscribe();
            let rev = live.revision();
            let first = match (from > 0).then(|| live.changes_since(from)).flatten() {
                Some(changes) => Ok(changes),
                None => Err((Model::clone(&live.state), rev)),
            };
            (first, rx, rev.max(from))
        };
        let first: Vec<WatchEvent> = match first {
            Ok(changes) => changes.iter().map(|(r, c)| changes_event(*r, c)).collect(),
            Err((model, rev)) => vec![snapshot_of(&model, rev)],
        };
        tracing::debug!(proxy = %req.proxy_id, from, "watch started");
        let (tx, out) = mpsc::channel::<Result<WatchEvent, Status>>(256);
        let shutdown = node.shutdown.clone();
        let mut health = node.serving.subscribe();
        // Look at it once in the loop: it may have changed since the check above.
        health.mark_changed();
        let mut ticks = self.leader_revision.clone();
        ticks.borrow_and_update();
        let open = node.metrics.watch_stream();
        tokio::spawn(async move {
            // Whether an event went out since the last tick: then no progress is due.
            let mut sent_since_tick = true;
            let mut recheck = tokio::time::interval(RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for ev in first {
                if tx.send(Ok(shown(ev, secret))).await.is_err() {
                    return;
                }
            }
            open.sent(last);
            loop {
                let notice = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = recheck.tick() => {
                        let holds = caller.as_ref().map_or(Ok(()), |c| {
                            c.still_holds(node.shared.read().state.tokens(), crate::clock::now_ms())
                        });
                        if let Err(why) = holds {
                            tracing::info!(proxy = %req.proxy_id, "ending watch: {why}");
                            let _ = tx.send(Err(Status::unauthenticated(why))).await;
                            return;
                        }
                        continue;
                    }
                    r = health.changed() => {
                        let why = match (r, &*health.borrow_and_update()) {
                            (Err(_), _) => return,
                            (Ok(()), Health::Serving) => continue,
                            (Ok(()), Health::Unavailable(why)) => why.clone(),
                        };
                        tracing::info!(proxy = %req.proxy_id, "ending watch: {why}");
                        let _ = tx.send(Err(Status::unavailable(why))).await;
                        return;
                    }
                    r = ticks.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let leader_revision = *ticks.borrow_and_update();
                        if std::mem::replace(&mut sent_since_tick, false) {
                            continue;
                        }
                        // Entries without changes (an election's blank entry, membership)
                        // advance the revision too; with no notice waiting, this stream has
                        // sent every change up to what is applied (notices go out under the
                        // state's write lock), so it is current through that.
                        {
                            let live = node.shared.read();
                            if rx.is_empty() {
                                last = last.max(live.revision());
                            }
                        }
                        if tx.send(Ok(progress_event(last, leader_revision))).await.is_err() {
                            return;
                        }
                        open.sent(last);
                        continue;
                    }
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
                sent_since_tick = true;
                if tx.send(Ok(shown(ev, secret))).await.is_err() {
                    return;
                }
                open.sent(last);
            }
        });
        let mut res: Response<WatchStream> = Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)));
        self.node.cluster_id.attach_reply(&mut res);
        self.node.cluster_id.attach_lineage(&mut res);
        Ok(res)
    }

    async fn report(&self, req: Request<ProxyReport>) -> Result<Response<ReportReply>, Status> {
        self.node.cluster_id.check(&req)?;
        let mut r = req.into_inner();
        // A node that cannot reach the leader would drop the report anyway; saying so sends
        // the proxy to a node that can.
        self.node.serving.check().map_err(Status::unavailable)?;
        if r.proxy_id.is_empty() {
            return Err(Status::invalid_argument("proxy_id is required"));
        }
        check_proxy_id(&r.proxy_id)?;
        if r.rejected_reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !r.rejected_reason.is_char_boundary(end) {
                end -= 1;
            }
            r.rejected_reason.truncate(end);
        }
        if r.rejected_reason.chars().any(char::is_control) {
            r.rejected_reason = r.rejected_reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        }
        let status = ProxyStatus {
            proxy_id: r.proxy_id.clone(),
            applied_revision: r.applied_revision,
            rejected_reason: r.rejected_reason,
            last_report_ms: now_ms(),
            connections: r.loads.iter().fold(0u64, |n, l| n.saturating_add(l.connections)),
            node: self.node.advertise.clone(),
            handshake_failures: r.handshake_failures,
            applied_unix_ms: r.applied_unix_ms,
            // A proxy before this field sends 0.
            current_through: r.current_through.max(r.applied_revision),
        };
        // Reports are kept on the leader, which answers `proxy list` for the whole cluster. A
        // report that cannot reach it is dropped: the proxy sends a fresh one within seconds.
        let bindings: Vec<_> = r
            .bindings
            .into_iter()
            .filter(|b| !b.pool.is_empty() && !b.key.is_empty() && !b.backend.is_empty())
            // A binding lives at most as long as a pool's TTL may be set to: `u64::MAX` from
            // a proxy would make one that never expires.
            .map(|mut b| {
                b.ttl_ms = b.ttl_ms.min(crate::validate::MAX_AFFINITY_TTL_MS);
                crate::pb::Pb(b)
            })
            .collect();
        let loads = r.loads.into_iter().map(crate::pb::Pb).collect();
        let call = Report { status: crate::pb::Pb(status), bindings, loads };
        // Kept on the leader. A report that is not kept in time says so: the proxy takes an
        // answer as its bindings' commit and would not send them again for a third of their
        // TTL, while other proxies bound the same sessions elsewhere.
        let kept = tokio::time::timeout(std::time::Duration::from_secs(1), leader::execute(&self.node, call)).await;
        let cluster_loads = match kept {
            Ok(Ok(l)) => l.into_iter().map(|crate::pb::Pb(l)| l).collect(),
            Ok(Err(e)) => {
                tracing::debug!(proxy = %r.proxy_id, error = %e, "report not kept");
                return Err(Status::unavailable(format!("report not kept: {e}")));
            }
            Err(_) => {
                tracing::debug!(proxy = %r.proxy_id, "report not kept within 1 s");
                return Err(Status::unavailable("report not kept within 1 s; send it again"));
            }
        };
        Ok(Response::new(ReportReply { revision: self.node.shared.read().revision(), cluster_loads }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::tls::Identity;

    #[test]
    fn only_proxies_nodes_and_trusted_loopback_see_the_affinity_secret() {
        let cert = |role| Caller::Certificate(Identity { name: "x".into(), role });
        assert!(may_see_affinity_secret(Some(&cert(Role::Proxy))));
        assert!(may_see_affinity_secret(Some(&cert(Role::Node))));
        assert!(may_see_affinity_secret(Some(&Caller::Loopback)));
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert!(!may_see_affinity_secret(Some(&cert(r))));
            let token = Caller::Token { id: "t".into(), name: String::new(), role: r };
            assert!(!may_see_affinity_secret(Some(&token)));
        }
        assert!(!may_see_affinity_secret(None));

        let topology = Topology { affinity_secret: vec![7; 32], ..Default::default() };
        let snap = WatchEvent { revision: 3, kind: Some(watch_event::Kind::Snapshot(topology)) };
        let hidden = shown(snap.clone(), false);
        assert!(matches!(hidden.kind, Some(watch_event::Kind::Snapshot(t)) if t.affinity_secret.is_empty()));
        assert_eq!(shown(snap.clone(), true), snap);
        let c = Change { kind: Some(change::Kind::AffinitySecret(vec![7; 32])) };
        let hidden = shown(changes_event(4, &[c]), false);
        assert!(matches!(hidden.kind, Some(watch_event::Kind::Changes(s)) if s.changes.is_empty()));
    }
}
