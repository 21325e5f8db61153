//! Admin: validated writes, sent through Raft on whichever node leads. A write that carries
//! a request id in its metadata is applied at most once: a retry gets the first answer.

use std::sync::Arc;

use switchyard_model::topology::Pair;
use switchyard_proto::v1::admin_server::Admin;
use switchyard_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::audit::AuditNote;
use crate::auth::{caller_of, Caller};
use crate::node::calls::{AddNode, LeaderCall, Promote, Remove};
use crate::node::context::NodeCtx;
use crate::node::leader::{self, RunOnLeader};
use crate::pb::Pb;
use crate::seen::{Lookup, RequestId};
use crate::state::{Command, Guard, Proposed, GUARDED_LEVEL};
use crate::validate::{self, required};

pub struct AdminService(pub Arc<NodeCtx>);

fn pool_of(changes: &[Change]) -> Option<Pool> {
    changes.iter().find_map(|c| match &c.kind {
        Some(change::Kind::PoolPut(p)) => Some(p.clone()),
        _ => None,
    })
}

fn backend_of(changes: &[Change]) -> Option<Backend> {
    changes.iter().find_map(|c| match &c.kind {
        Some(change::Kind::BackendPut(b)) => Some(b.clone()),
        _ => None,
    })
}

use switchyard_model::fields::{POOL_FIELDS, SETTINGS_FIELDS};

/// The guard against taking the last backend of a served pool out of service, on a write
/// that takes one out (a drain, a disable, a weight of 0, a removal), unless forced.
fn keeps_a_backend(cmd: &Command, force: bool) -> Vec<Guard> {
    if force || !Guard::takes_out(cmd) {
        return vec![];
    }
    vec![Guard::KeepsABackend]
}

/// The request id in `req`'s metadata; none means the write is not deduplicated.
fn id_of<T>(req: &Request<T>) -> Result<Option<RequestId>, Status> {
    let id = switchyard_model::grpc::request_id(req.metadata()).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(id.map(|(client, seq)| RequestId { client, seq }))
}

/// The audit note of a write by `caller`; the leader stamps its time when it proposes it.
pub fn note(caller: &Caller, method: &str, summary: String) -> Option<Arc<AuditNote>> {
    Some(Arc::new(AuditNote {
        who: caller.who(),
        role: caller.role_name().into(),
        method: method.into(),
        summary,
        at_ms: 0,
    }))
}

impl AdminService {
    async fn backend_write(
        &self,
        id: Option<RequestId>,
        pool: String,
        address: String,
        (cmd, guards): (Command, Vec<Guard>),
        audit: Option<Arc<AuditNote>>,
    ) -> Result<Response<BackendReply>, Status> {
        validate::name("pool", &pool)?;
        validate::address(&address)?;
        let (revision, changes) = self.write(id, cmd, guards, audit).await?;
        let backend = backend_of(&changes).or_else(|| {
            // A write that changed nothing: answer with the backend as it stands.
            self.0.shared.read().state.backends.get(&Pair(&pool, &address)).cloned()
        });
        Ok(Response::new(BackendReply { revision, backend }))
    }

    /// Sends `cmd` with its guards ([`Guard`]; none for a forced write). From feature level 5
    /// the guards travel in the entry and every node checks them as it applies it, after
    /// every write before it in the log, so writes sent at once cannot together slip past
    /// them. Before level 5 (a rolling upgrade) they are judged here first: the config limit
    /// on this node's state as it has applied it, without a read from the leader (like
    /// etcd's space quota); the operator-mistake checks on a linearizable read, so a node
    /// that has not yet applied the operator's last change (the enable before this drain)
    /// does not judge by what came before it. There, writes in flight are not counted: two
    /// drains sent at once may each leave the other's backend as the last, and writes
    /// admitted together may overshoot the limit by their own size.
    async fn write(
        &self,
        id: Option<RequestId>,
        cmd: Command,
        guards: Vec<Guard>,
        audit: Option<Arc<AuditNote>>,
    ) -> Result<(u64, Vec<Change>), Status> {
        let guarded = !guards.is_empty()
            && (self.0.shared.read().state.feature_level() >= GUARDED_LEVEL
                || self.judge(id.as_ref(), &cmd, &guards).await?);
        let cmd = if guarded { Command::Guarded { guards, cmd: Box::new(cmd) } } else { cmd };
        Ok(leader::write(&self.0, Proposed { id, cmd, audit }).await?)
    }

    /// Judges `guards` here, before a write is sent (see [`Self::write`]). A request retried
    /// after it was applied (its id already seen) is not judged again: it is answered as the
    /// first time. Returns whether the guards should travel after all: this node caught up
    /// with level 5 while it read, so writes in flight may not have been judged here.
    async fn judge(&self, id: Option<&RequestId>, cmd: &Command, guards: &[Guard]) -> Result<bool, Status> {
        if guards.iter().any(|g| !matches!(g, Guard::Room { .. })) {
            leader::linearize(&self.0).await?;
        }
        let live = self.0.shared.read();
        if live.state.feature_level() >= GUARDED_LEVEL {
            return Ok(true);
        }
        if id.is_some_and(|id| !matches!(live.state.seen().lookup(id), Lookup::New)) {
            return Ok(false);
        }
        for g in guards {
            g.check(&live.state, cmd, u64::MAX)?;
        }
        Ok(false)
    }

    /// The config limit's guard: every node's `--max-config-bytes` should be the same, and
    /// the one that takes a write is the one that holds it to it.
    fn room(&self) -> Guard {
        Guard::Room { limit: self.0.config.max_config_bytes }
    }

    /// Membership changes are Raft's own entries, not commands, so the seen table does not
    /// cover them; a request id on one is checked and otherwise ignored. A repeat does no
    /// harm: it is refused (already a member, already a voter, not a member).
    /// The change is audited in an entry of its own right after it (it is not a command).
    async fn membership<C: RunOnLeader + LeaderCall<Reply = u64>>(
        &self,
        caller: &Caller,
        method: &str,
        summary: String,
        call: C,
    ) -> Result<Response<MembershipReply>, Status> {
        let revision = leader::execute(&self.0, call).await?;
        let audit = note(caller, method, format!("{summary} (membership entry {revision})"));
        if let Err(e) = leader::write(&self.0, Proposed { id: None, cmd: Command::Note, audit }).await {
            tracing::warn!(method, "membership change at revision {revision} was made but not audited: {e}");
        }
        Ok(Response::new(MembershipReply { revision, members: self.0.members() }))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_pool(&self, req: Request<CreatePoolRequest>) -> Result<Response<PoolReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let pool = validate::admin_pool(required(req.into_inner().pool, "pool")?)?;
        let audit = note(&caller, "Admin/CreatePool", format!("pool {}", pool.name));
        let (revision, changes) = self.write(id, Command::CreatePool(Pb(pool)), vec![self.room()], audit).await?;
        Ok(Response::new(PoolReply { revision, pool: pool_of(&changes) }))
    }

    async fn update_pool(&self, req: Request<UpdatePoolRequest>) -> Result<Response<PoolReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let req = req.into_inner();
        let pool = required(req.pool, "pool")?;
        validate::name("pool", &pool.name)?;
        if req.update_mask.is_empty() {
            return Err(Status::invalid_argument(format!("update_mask is empty; name fields from {POOL_FIELDS:?}")));
        }
        validate::update_mask("pool", &req.update_mask, POOL_FIELDS)?;
        // Check the new values on their own; the merged pool is checked again when applied.
        validate::admin_pool(pool.clone())?;
        let mut guards = Vec::new();
        if !req.force && req.update_mask.iter().any(|f| f == "affinity") {
            guards.push(Guard::KeepsSessions);
        }
        guards.push(self.room());
        let audit = note(&caller, "Admin/UpdatePool", format!("pool {}: {}", pool.name, req.update_mask.join(",")));
        let cmd = Command::UpdatePool { pool: Pb(pool), mask: req.update_mask };
        let (revision, changes) = self.write(id, cmd, guards, audit).await?;
        Ok(Response::new(PoolReply { revision, pool: pool_of(&changes) }))
    }

    async fn delete_pool(&self, req: Request<DeletePoolRequest>) -> Result<Response<WriteReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let name = req.into_inner().name;
        validate::name("pool", &name)?;
        let audit = note(&caller, "Admin/DeletePool", format!("pool {name}"));
        let (revision, _) = leader::write(&self.0, Proposed { id, cmd: Command::DeletePool { name }, audit }).await?;
        Ok(Response::new(WriteReply { revision }))
    }

    async fn add_backend(&self, req: Request<AddBackendRequest>) -> Result<Response<BackendReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let b = validate::backend(required(req.into_inner().backend, "backend")?)?;
        let what = format!("backend {} in pool {} (weight {})", b.address, b.pool, b.weight);
        let audit = note(&caller, "Admin/AddBackend", what);
        let (revision, changes) = self.write(id, Command::AddBackend(Pb(b)), vec![self.room()], audit).await?;
        Ok(Response::new(BackendReply { revision, backend: backend_of(&changes) }))
    }

    async fn set_backend_weight(
        &self,
        req: Request<SetBackendWeightRequest>,
    ) -> Result<Response<BackendReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let r = req.into_inner();
        validate::weight(r.weight)?;
        let what = format!("backend {} in pool {}: weight {}", r.address, r.pool, r.weight);
        let audit = note(&caller, "Admin/SetBackendWeight", what);
        let cmd = Command::SetBackendWeight { pool: r.pool.clone(), address: r.address.clone(), weight: r.weight };
        let guards = keeps_a_backend(&cmd, r.force);
        self.backend_write(id, r.pool, r.address, (cmd, guards), audit).await
    }

    async fn set_backend_state(&self, req: Request<SetBackendStateRequest>) -> Result<Response<BackendReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let r = req.into_inner();
        validate::admin_state(r.state)?;
        let state = AdminState::try_from(r.state).map_or("?".into(), |s| s.as_str_name().to_lowercase());
        let audit =
            note(&caller, "Admin/SetBackendState", format!("backend {} in pool {}: {state}", r.address, r.pool));
        let cmd = Command::SetBackendState { pool: r.pool.clone(), address: r.address.clone(), state: r.state };
        let guards = keeps_a_backend(&cmd, r.force);
        self.backend_write(id, r.pool, r.address, (cmd, guards), audit).await
    }

    async fn remove_backend(&self, req: Request<RemoveBackendRequest>) -> Result<Response<WriteReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let r = req.into_inner();
        validate::name("pool", &r.pool)?;
        validate::address(&r.address)?;
        let audit = note(&caller, "Admin/RemoveBackend", format!("backend {} in pool {}", r.address, r.pool));
        let cmd = Command::RemoveBackend { pool: r.pool, address: r.address };
        let guards = keeps_a_backend(&cmd, r.force);
        let (revision, _) = self.write(id, cmd, guards, audit).await?;
        Ok(Response::new(WriteReply { revision }))
    }

    async fn set_route(&self, req: Request<SetRouteRequest>) -> Result<Response<RouteReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let SetRouteRequest { route, force } = req.into_inner();
        let route = validate::route(required(route, "route")?)?;
        let mut guards = Vec::new();
        if !force {
            if route.auth.is_none() {
                guards.push(Guard::KeepsRouteAuth);
            }
            guards.push(Guard::KeepsARouteServed);
        }
        guards.push(self.room());
        let what = format!(
            "route {} (host {:?}, path {:?}) to pool {}",
            route.name, route.host, route.path_prefix, route.pool
        );
        let audit = note(&caller, "Admin/SetRoute", what);
        let (revision, changes) = self.write(id, Command::SetRoute(Pb(route)), guards, audit).await?;
        let route = changes.iter().find_map(|c| match &c.kind {
            Some(change::Kind::RoutePut(r)) => Some(r.clone()),
            _ => None,
        });
        Ok(Response::new(RouteReply { revision, route }))
    }

    async fn delete_route(&self, req: Request<DeleteRouteRequest>) -> Result<Response<WriteReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let name = req.into_inner().name;
        validate::name("route", &name)?;
        let audit = note(&caller, "Admin/DeleteRoute", format!("route {name}"));
        let (revision, _) = leader::write(&self.0, Proposed { id, cmd: Command::DeleteRoute { name }, audit }).await?;
        Ok(Response::new(WriteReply { revision }))
    }

    async fn update_settings(&self, req: Request<UpdateSettingsRequest>) -> Result<Response<SettingsReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let r = req.into_inner();
        let settings = required(r.settings, "settings")?;
        if r.update_mask.is_empty() {
            validate::settings(&settings)?;
        }
        validate::update_mask("settings", &r.update_mask, SETTINGS_FIELDS)?;
        let fields = if r.update_mask.is_empty() { "every field".to_string() } else { r.update_mask.join(",") };
        let audit = note(&caller, "Admin/UpdateSettings", format!("settings: {fields}"));
        let cmd = Command::UpdateSettings { settings: Pb(settings), mask: r.update_mask };
        let (revision, changes) = leader::write(&self.0, Proposed { id, cmd, audit }).await?;
        let settings = changes.iter().find_map(|c| match &c.kind {
            Some(change::Kind::SettingsPut(s)) => Some(*s),
            _ => None,
        });
        Ok(Response::new(SettingsReply { revision, settings }))
    }

    async fn delete_session(&self, req: Request<DeleteSessionRequest>) -> Result<Response<WriteReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let r = req.into_inner();
        validate::name("pool", &r.pool)?;
        let (cmd, what) = match (r.all, r.key.is_empty()) {
            (true, true) => (Command::DeleteSessions { pool: r.pool.clone() }, "every session"),
            (true, false) => return Err(Status::invalid_argument("give a session key or `all`, not both")),
            (false, true) => return Err(Status::invalid_argument("session key must not be empty")),
            // Bindings hold keyed hashes only; a raw key (a cookie pasted in, say) may be a
            // client's credential, and would be written to the log, a snapshot and backups.
            (false, false) if !switchyard_model::affinity::is_hashed(&r.key) => {
                return Err(Status::invalid_argument(
                    "session key must be as `session list` shows it (its keyed hash, 32 lower-case hex digits), not the raw cookie or header value",
                ))
            }
            (false, false) => (Command::DeleteSession { pool: r.pool.clone(), key: r.key }, "one session"),
        };
        // The key itself is left out: an affinity key may be a client's credential.
        let audit = note(&caller, "Admin/DeleteSession", format!("{what} of pool {}", r.pool));
        let (revision, _) = leader::write(&self.0, Proposed { id, cmd, audit }).await?;
        Ok(Response::new(WriteReply { revision }))
    }

    async fn add_node(&self, req: Request<AddNodeRequest>) -> Result<Response<MembershipReply>, Status> {
        id_of(&req)?;
        let caller = caller_of(&req)?;
        let r = req.into_inner();
        validate::new_node(r.id, &r.address)?;
        let what = format!("node {} at {}", r.id, r.address);
        self.membership(&caller, "Admin/AddNode", what, AddNode { id: r.id, addr: r.address }).await
    }

    async fn promote_node(&self, req: Request<PromoteNodeRequest>) -> Result<Response<MembershipReply>, Status> {
        id_of(&req)?;
        let caller = caller_of(&req)?;
        let PromoteNodeRequest { id, force } = req.into_inner();
        if !force {
            crate::features::strict_reconfig(&self.0, None, Some(id)).await.map_err(Status::failed_precondition)?;
        }
        self.membership(&caller, "Admin/PromoteNode", format!("node {id}"), Promote { id }).await
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<MembershipReply>, Status> {
        id_of(&req)?;
        let caller = caller_of(&req)?;
        let RemoveNodeRequest { id, force } = req.into_inner();
        if !force {
            crate::features::strict_reconfig(&self.0, Some(id), None).await.map_err(Status::failed_precondition)?;
        }
        self.membership(&caller, "Admin/RemoveNode", format!("node {id}"), Remove { id }).await
    }

    async fn save_snapshot(&self, _: Request<SaveSnapshotRequest>) -> Result<Response<SaveSnapshotReply>, Status> {
        leader::linearize(&self.0).await?;
        let cluster_id = self.0.cluster_id.get().ok_or_else(|| Status::unavailable("this node has no cluster yet"))?;
        // One read guard: the data is the state at exactly this revision. Encoded off the
        // lock and off the runtime.
        let view = self.0.shared.read().snapshot_view();
        let revision = view.revision();
        let data = crate::store::sm::off_runtime(move || view.encode())
            .await
            .map_err(|e| Status::internal(format!("cannot encode the state: {e}")))?;
        let file = crate::backup::Backup { format: crate::store::SNAPSHOT_FORMAT, revision, cluster_id, data }.encode();
        tracing::info!(revision, bytes = file.len(), "backup taken");
        Ok(Response::new(SaveSnapshotReply { revision, file }))
    }
}
