//! Query: reads that name their consistency.

use std::sync::Arc;

use switchyard_proto::v1::query_server::Query;
use switchyard_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::node::calls::{ListProxies, Loads};
use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::store::sm::Live;
use switchyard_model::Model;

pub struct QueryService(pub Arc<NodeCtx>);

/// A read guard over the applied state, so one answer reads one consistent revision.
struct View<'a>(std::sync::RwLockReadGuard<'a, Live>);

impl View<'_> {
    /// The model as of this view, and its revision, with the state lock let go. The clone
    /// shares the live maps' nodes, so copying every entity out of it (a topology with a
    /// million sessions) holds no lock that applying entries waits on.
    fn detach(self) -> (Model, u64) {
        (Model::clone(&self.0.state), self.0.revision())
    }
}

impl QueryService {
    /// Linearizable reads confirm the read index with the leader, then wait for this node to
    /// apply up to it; local reads serve what this node has.
    async fn view(&self, consistency: i32) -> Result<View<'_>, Status> {
        match Consistency::try_from(consistency) {
            Ok(Consistency::Linearizable) => leader::linearize(&self.0).await?,
            Ok(Consistency::Local) => {}
            Err(_) => return Err(Status::invalid_argument(format!("unknown consistency {consistency}"))),
        }
        Ok(View(self.0.shared.read()))
    }
}

/// The most bindings one `ListSessions` answers with.
const MAX_LISTED_SESSIONS: usize = 10_000;

#[tonic::async_trait]
impl Query for QueryService {
    async fn get_topology(&self, req: Request<ReadRequest>) -> Result<Response<Topology>, Status> {
        let (model, revision) = self.view(req.into_inner().consistency).await?.detach();
        Ok(Response::new(model.to_public_topology(revision)))
    }

    async fn list_pools(&self, req: Request<ReadRequest>) -> Result<Response<ListPoolsReply>, Status> {
        let v = self.view(req.into_inner().consistency).await?;
        Ok(Response::new(ListPoolsReply {
            revision: v.0.revision(),
            pools: v.0.state.pools.values().cloned().collect(),
        }))
    }

    async fn get_pool(&self, req: Request<GetPoolRequest>) -> Result<Response<Pool>, Status> {
        let r = req.into_inner();
        let v = self.view(r.consistency).await?;
        v.0.state
            .pools
            .get(&r.name)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("pool {:?} not found", r.name)))
    }

    async fn list_backends(&self, req: Request<ListBackendsRequest>) -> Result<Response<ListBackendsReply>, Status> {
        let r = req.into_inner();
        let (model, revision) = self.view(r.consistency).await?.detach();
        let backends: Vec<Backend> = if r.pool.is_empty() {
            model.backends.values().cloned().collect()
        } else if model.pools.contains_key(&r.pool) {
            model.backends_of(&r.pool).cloned().collect()
        } else {
            return Err(Status::not_found(format!("pool {:?} not found", r.pool)));
        };
        let loads = match tokio::time::timeout(std::time::Duration::from_secs(1), leader::execute(&self.0, Loads)).await
        {
            Ok(Ok(l)) => l.into_iter().map(|crate::pb::Pb(l)| l).collect(),
            _ => vec![],
        };
        Ok(Response::new(ListBackendsReply { revision, backends, loads }))
    }

    async fn list_routes(&self, req: Request<ReadRequest>) -> Result<Response<ListRoutesReply>, Status> {
        let v = self.view(req.into_inner().consistency).await?;
        Ok(Response::new(ListRoutesReply {
            revision: v.0.revision(),
            routes: v.0.state.routes.values().cloned().collect(),
        }))
    }

    async fn get_settings(&self, req: Request<ReadRequest>) -> Result<Response<Settings>, Status> {
        let v = self.view(req.into_inner().consistency).await?;
        Ok(Response::new(v.0.state.settings))
    }

    async fn list_sessions(&self, req: Request<ListSessionsRequest>) -> Result<Response<ListSessionsReply>, Status> {
        let r = req.into_inner();
        let v = self.view(r.consistency).await?;
        // Each listed binding is copied under the state's read lock and held until the reply
        // is sent: a caller may not ask for the whole of a client-driven table at once.
        if r.limit as usize > MAX_LISTED_SESSIONS {
            return Err(Status::invalid_argument(format!(
                "limit {} is over {MAX_LISTED_SESSIONS}; list one pool at a time, or look a session up by key",
                r.limit
            )));
        }
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let sessions =
            v.0.state
                .sessions
                .values()
                .filter(|s| r.pool.is_empty() || s.pool == r.pool)
                .take(limit)
                .cloned()
                .collect();
        Ok(Response::new(ListSessionsReply { revision: v.0.revision(), sessions }))
    }

    async fn get_session(&self, req: Request<GetSessionRequest>) -> Result<Response<SessionBinding>, Status> {
        let r = req.into_inner();
        let v = self.view(r.consistency).await?;
        v.0.state
            .sessions
            .get(&(r.pool.clone(), r.key.clone()))
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no session {:?} in pool {:?}", r.key, r.pool)))
    }

    async fn list_proxies(&self, _req: Request<ReadRequest>) -> Result<Response<ListProxiesReply>, Status> {
        let proxies = leader::execute(&self.0, ListProxies).await?;
        Ok(Response::new(ListProxiesReply { proxies: proxies.into_iter().map(|crate::pb::Pb(p)| p).collect() }))
    }

    async fn cluster_status(
        &self,
        _req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        let m = self.0.raft.metrics().borrow().clone();
        // Every member is asked what it runs (in parallel, each within half a second).
        let members = crate::features::annotate(&self.0, self.0.members()).await;
        let (joint_old_voters, joint_new_voters) = match crate::node::joint::joint_sets(&self.0) {
            Some((old, new)) => (old.into_iter().collect(), new.into_iter().collect()),
            None => (vec![], vec![]),
        };
        // A leader cut off from every majority does not claim the lead (see
        // `NodeCtx::leading_without_quorum`).
        let cut_off = self.0.leading_without_quorum();
        let state = match cut_off {
            Some(silent) => format!("Leader without quorum for {:.1}s", silent.as_secs_f64()),
            None => format!("{:?}", m.state),
        };
        Ok(Response::new(ClusterStatusReply {
            node_id: self.0.id,
            leader_id: if cut_off.is_some() { 0 } else { m.current_leader.unwrap_or(0) },
            term: m.current_term,
            applied_revision: m.last_applied.map_or(0, |l| l.index),
            // What the log store was told is committed, not the log's end (which a leader has
            // appended, maybe not even flushed).
            committed_index: self.0.metrics.committed.load(std::sync::atomic::Ordering::Relaxed),
            members,
            state,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            session_count: self.0.shared.read().state.sessions.len() as u64,
            cluster_id: self.0.cluster_id.get().unwrap_or_default(),
            security: self.0.config.security().as_str().to_string(),
            feature_level: self.0.shared.read().state.feature_level(),
            version: switchyard_model::version::VERSION.into(),
            protocol: switchyard_model::version::PROTOCOL.to_string(),
            max_feature_level: switchyard_model::version::max_feature_level(),
            joint_old_voters,
            joint_new_voters,
        }))
    }
}
