//! Admin: validated writes, sent through Raft on whichever node leads. A write that carries
//! a request id in its metadata is applied at most once: a retry gets the first answer.

use std::sync::{Arc, RwLockReadGuard};

use switchyard_model::topology::{in_service, Pair};
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
use crate::state::{snapshot_len, Command, Proposed, State};
use crate::store::sm::Live;
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

/// Whether two affinity keys name the same thing: header names are matched without regard
/// to case (as the proxy reads them), everything else as written.
fn same_key(a: &str, b: &str) -> bool {
    match (a.strip_prefix("header:"), b.strip_prefix("header:")) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => a == b,
    }
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
        cmd: Command,
        audit: Option<Arc<AuditNote>>,
    ) -> Result<Response<BackendReply>, Status> {
        validate::name("pool", &pool)?;
        validate::address(&address)?;
        let (revision, changes) = leader::write(&self.0, Proposed { id, cmd, audit }).await?;
        let backend = backend_of(&changes).or_else(|| {
            // A write that changed nothing: answer with the backend as it stands.
            self.0.shared.read().state.backends.get(&Pair(&pool, &address)).cloned()
        });
        Ok(Response::new(BackendReply { revision, backend }))
    }

    /// Refuses a write that would grow the pools, backends and routes past this node's
    /// `--max-config-bytes`: every proxy receives all of them in one message, and a config
    /// past what that message may hold would reach no proxy at all (new proxies would start
    /// with nothing). `growth` is what the write adds, judged on this node's state as it has
    /// applied it, without a read from the leader (like etcd's space quota): writes in flight,
    /// and on a follower those it has not applied yet, are not counted, so together they may
    /// overshoot by their own size. Writes that shrink the config or change a backend's weight
    /// or state are never refused, so an operator at the limit can still drain and remove. A
    /// retried request whose first try this node has applied is answered as the first time.
    fn has_room(&self, id: Option<&RequestId>, growth: impl FnOnce(&State) -> u64) -> Result<(), Status> {
        let live = self.0.shared.read();
        let st = &live.state;
        if id.is_some_and(|id| !matches!(st.seen().lookup(id), Lookup::New)) {
            return Ok(());
        }
        let (now, limit) = (st.topology_bytes(), self.0.config.max_config_bytes);
        let after = now.saturating_add(growth(st));
        if after <= limit {
            return Ok(());
        }
        Err(Status::resource_exhausted(format!(
            "the config (pools, backends, routes) would grow to {after} bytes, over this node's limit of {limit} \
             (--max-config-bytes; it holds {now}): every proxy receives the whole config in one message. Remove \
             pools, backends or routes no longer needed, or raise the limit on every node"
        )))
    }

    /// Refuses, unless `force`, a change (`what`: "draining it", say) that takes away the last
    /// backend of `pool` taking new connections while a route sends clients to the pool:
    /// every new client of the pool would get 503 (a disruption budget at its smallest).
    /// Checked on a linearizable read, so a node that has not yet applied the operator's last
    /// change (the enable before this drain) does not judge by what came before it. A request
    /// retried after it was applied (its id already seen) is not judged again: it is answered
    /// as the first time. Not atomic with the write: two changes sent at once may each leave
    /// the other's backend as the last.
    async fn keeps_a_backend(
        &self,
        id: Option<&RequestId>,
        (pool, address): (&str, &str),
        what: &str,
        force: bool,
    ) -> Result<(), Status> {
        if force {
            return Ok(());
        }
        // A malformed request is answered as such, not after a read of the leader's.
        validate::name("pool", pool)?;
        validate::address(address)?;
        let Some(live) = self.judging(id).await? else { return Ok(()) };
        let st = &live.state;
        let Some(me) = st.backends.get(&Pair(pool, address)) else { return Ok(()) };
        if !in_service(me) || st.backends_of(pool).any(|b| b.address != address && in_service(b)) {
            return Ok(());
        }
        let Some(route) = st.routes.values().find(|r| r.pool == pool) else { return Ok(()) };
        Err(Status::failed_precondition(format!(
            "backend {address} is the last of pool {pool} taking new connections and route {} sends clients to \
             the pool: {what} would answer every new client 503; enable or add another backend first, or force \
             it (the CLI's --force)",
            route.name
        )))
    }

    /// The state an operator-mistake check judges a request by: read linearizably, or `None`
    /// for a request whose id was already applied (it is answered from the table of requests
    /// seen, as the first time, and not judged again).
    async fn judging(&self, id: Option<&RequestId>) -> Result<Option<RwLockReadGuard<'_, Live>>, Status> {
        leader::linearize(&self.0).await?;
        let live = self.0.shared.read();
        if id.is_some_and(|id| !matches!(live.state.seen().lookup(id), Lookup::New)) {
            return Ok(None);
        }
        Ok(Some(live))
    }

    /// Refuses a route repointed from a pool with a backend taking new connections to one
    /// with none (a typo'd pool, one not yet filled): every new client of the route would get
    /// 503. A new route, or one whose pool serves nobody already, is not judged. Judged as
    /// [`Self::keeps_a_backend`] is.
    async fn keeps_a_route_served(&self, id: Option<&RequestId>, new: &Route) -> Result<(), Status> {
        let Some(live) = self.judging(id).await? else { return Ok(()) };
        let st = &live.state;
        let Some(cur) = st.routes.get(new.name.as_str()) else { return Ok(()) };
        let serves = |pool: &str| st.backends_of(pool).any(in_service);
        if cur.pool == new.pool || !st.pools.contains_key(new.pool.as_str()) || !serves(&cur.pool) || serves(&new.pool)
        {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "route {} sends clients to pool {}, and pool {} has no backend taking new connections: every new \
             client of the route would get 503; add or enable a backend in {} first, or force it (the CLI's --force)",
            new.name, cur.pool, new.pool, new.pool
        )))
    }

    /// Refuses, unless `force`, a new affinity key for a pool that holds session bindings:
    /// they are keyed by the old one, so every session is bound afresh at once, most to
    /// another backend (a long-polling client's server session is then unknown where it
    /// lands); the old bindings stay unused until they expire. Judged as
    /// [`Self::keeps_a_backend`] is.
    async fn keeps_sessions(&self, id: Option<&RequestId>, new: &Pool, force: bool) -> Result<(), Status> {
        if force {
            return Ok(());
        }
        let Some(live) = self.judging(id).await? else { return Ok(()) };
        let st = &live.state;
        let Some(cur) = st.pools.get(new.name.as_str()) else { return Ok(()) };
        let bound = st.sessions.range(Pair(&new.name, "")..).next().is_some_and(|((p, _), _)| *p == new.name);
        if same_key(&cur.affinity, &new.affinity) || !bound {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "pool {} holds session bindings keyed by its affinity {:?}: a new key would bind every session afresh \
             at once, most to another backend; force it (the CLI's --force) to do so",
            new.name, cur.affinity
        )))
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
        // One that exists adds nothing: the state machine answers it ALREADY_EXISTS. A new one
        // is measured with the revisions it will be stamped with at their longest.
        self.has_room(id.as_ref(), |st| {
            if st.pools.contains_key(pool.name.as_str()) {
                return 0;
            }
            snapshot_len(&Pool { created_revision: u64::MAX, updated_revision: u64::MAX, ..pool.clone() })
        })?;
        let audit = note(&caller, "Admin/CreatePool", format!("pool {}", pool.name));
        let (revision, changes) =
            leader::write(&self.0, Proposed { id, cmd: Command::CreatePool(Pb(pool)), audit }).await?;
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
        let checked = validate::admin_pool(pool.clone())?;
        if req.update_mask.iter().any(|f| f == "affinity") {
            self.keeps_sessions(id.as_ref(), &checked, req.force).await?;
        }
        // The pool as it would be stored, measured at its old revisions (a new revision adds
        // a byte or two at most).
        self.has_room(id.as_ref(), |st| {
            let Some(cur) = st.pools.get(pool.name.as_str()) else { return 0 };
            let merged = switchyard_model::fields::merge_pool(cur, &pool, &req.update_mask).ok();
            let Some(mut merged) = merged.and_then(|m| validate::pool(m).ok()) else { return 0 };
            (merged.created_revision, merged.updated_revision) = (cur.created_revision, cur.updated_revision);
            snapshot_len(&merged).saturating_sub(snapshot_len(cur))
        })?;
        let audit = note(&caller, "Admin/UpdatePool", format!("pool {}: {}", pool.name, req.update_mask.join(",")));
        let cmd = Command::UpdatePool { pool: Pb(pool), mask: req.update_mask };
        let (revision, changes) = leader::write(&self.0, Proposed { id, cmd, audit }).await?;
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
        self.has_room(id.as_ref(), |st| {
            if !st.pools.contains_key(b.pool.as_str()) || st.backends.contains_key(&Pair(&b.pool, &b.address)) {
                return 0;
            }
            snapshot_len(&Backend { updated_revision: u64::MAX, ..b.clone() })
        })?;
        let what = format!("backend {} in pool {} (weight {})", b.address, b.pool, b.weight);
        let audit = note(&caller, "Admin/AddBackend", what);
        let (revision, changes) =
            leader::write(&self.0, Proposed { id, cmd: Command::AddBackend(Pb(b)), audit }).await?;
        Ok(Response::new(BackendReply { revision, backend: backend_of(&changes) }))
    }

    async fn set_backend_weight(
        &self,
        req: Request<SetBackendWeightRequest>,
    ) -> Result<Response<BackendReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let r = req.into_inner();
        validate::weight(r.weight)?;
        if r.weight == 0 {
            self.keeps_a_backend(id.as_ref(), (&r.pool, &r.address), "a weight of 0", r.force).await?;
        }
        let what = format!("backend {} in pool {}: weight {}", r.address, r.pool, r.weight);
        let audit = note(&caller, "Admin/SetBackendWeight", what);
        let cmd = Command::SetBackendWeight { pool: r.pool.clone(), address: r.address.clone(), weight: r.weight };
        self.backend_write(id, r.pool, r.address, cmd, audit).await
    }

    async fn set_backend_state(&self, req: Request<SetBackendStateRequest>) -> Result<Response<BackendReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let r = req.into_inner();
        validate::admin_state(r.state)?;
        let to = AdminState::try_from(r.state);
        let taking_out = match to {
            Ok(AdminState::Draining) => Some("draining it"),
            Ok(AdminState::Disabled) => Some("disabling it"),
            _ => None,
        };
        if let Some(what) = taking_out {
            self.keeps_a_backend(id.as_ref(), (&r.pool, &r.address), what, r.force).await?;
        }
        let state = to.map_or("?".into(), |s| s.as_str_name().to_lowercase());
        let audit =
            note(&caller, "Admin/SetBackendState", format!("backend {} in pool {}: {state}", r.address, r.pool));
        let cmd = Command::SetBackendState { pool: r.pool.clone(), address: r.address.clone(), state: r.state };
        self.backend_write(id, r.pool, r.address, cmd, audit).await
    }

    async fn remove_backend(&self, req: Request<RemoveBackendRequest>) -> Result<Response<WriteReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let r = req.into_inner();
        validate::name("pool", &r.pool)?;
        validate::address(&r.address)?;
        self.keeps_a_backend(id.as_ref(), (&r.pool, &r.address), "removing it", r.force).await?;
        let audit = note(&caller, "Admin/RemoveBackend", format!("backend {} in pool {}", r.address, r.pool));
        let cmd = Command::RemoveBackend { pool: r.pool, address: r.address };
        let (revision, _) = leader::write(&self.0, Proposed { id, cmd, audit }).await?;
        Ok(Response::new(WriteReply { revision }))
    }

    async fn set_route(&self, req: Request<SetRouteRequest>) -> Result<Response<RouteReply>, Status> {
        let (id, caller) = (id_of(&req)?, caller_of(&req)?);
        let SetRouteRequest { route, force } = req.into_inner();
        let route = validate::route(required(route, "route")?)?;
        // A route is replaced whole: repointing one, or rotating its keys, without its auth
        // flags would open it to every client, and pass client-sent claim headers on.
        if !force && route.auth.is_none() {
            let guarded = self.0.shared.read().state.routes.get(route.name.as_str()).is_some_and(|r| r.auth.is_some());
            if guarded {
                return Err(Status::failed_precondition(format!(
                    "route {} has edge authentication and this request has none: it would open the route to every \
                     client; give its auth flags again, or --force to remove it",
                    route.name
                )));
            }
        }
        if !force {
            self.keeps_a_route_served(id.as_ref(), &route).await?;
        }
        // A replaced route is measured at its old revision: repointing one (a failover) at the
        // limit grows nothing.
        self.has_room(id.as_ref(), |st| match st.routes.get(route.name.as_str()) {
            Some(old) => {
                let new = Route { updated_revision: old.updated_revision, ..route.clone() };
                snapshot_len(&new).saturating_sub(snapshot_len(old))
            }
            None if !st.pools.contains_key(route.pool.as_str()) => 0,
            None => snapshot_len(&Route { updated_revision: u64::MAX, ..route.clone() }),
        })?;
        let what = format!(
            "route {} (host {:?}, path {:?}) to pool {}",
            route.name, route.host, route.path_prefix, route.pool
        );
        let audit = note(&caller, "Admin/SetRoute", what);
        let (revision, changes) =
            leader::write(&self.0, Proposed { id, cmd: Command::SetRoute(Pb(route)), audit }).await?;
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
