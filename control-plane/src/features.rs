//! The cluster's feature level, etcd's "cluster version": what the replicated log may hold.
//!
//! Every binary supports levels up to its max ([`switchyard_model::version::max_feature_level`]).
//! The level is committed in Raft (`Command::SetFeatureLevel`), starts at 1, and only rises:
//! the leader asks every member (voters and learners) what it runs, through the peer
//! `Initialized` call, and raises the level once all of them support the next one. A command
//! that needs a higher level than the cluster's is refused by the leader, so an entry an old
//! node cannot decode is never written while an old node is a member. A node that finds the
//! cluster above its max (a downgrade, or an old node joining) stops rather than apply what it
//! cannot understand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_model::version::{self, max_feature_level};
use switchyard_proto::raft::Empty;
use switchyard_proto::v1::Member;
use tonic::Code;

use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::state::Command;
use crate::types::NodeId;

/// How often the leader asks members what they run.
const TICK: Duration = Duration::from_secs(1);
/// How long one member may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Why this binary cannot run a cluster at `level`, if it cannot.
pub fn unsupported(level: u32) -> Option<String> {
    let max = max_feature_level();
    (level > max).then(|| {
        format!(
            "the cluster runs at feature level {level} and this binary ({}, protocol {}) supports at most level \
             {max}: it cannot apply the cluster's log. Run a release that supports level {level}; a feature \
             level is never lowered, so the cluster cannot be downgraded past it",
            version::VERSION,
            version::PROTOCOL
        )
    })
}

/// What one member said it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runs {
    /// "" when the member is older than protocol 1.1.
    pub version: String,
    pub protocol: String,
    /// 1 for a member that does not say (it predates feature levels).
    pub max_level: u32,
}

impl Runs {
    pub fn this_node() -> Runs {
        Runs {
            version: version::VERSION.into(),
            protocol: version::PROTOCOL.to_string(),
            max_level: max_feature_level(),
        }
    }
}

/// The leader's latest answers from members, by node id.
#[derive(Default, Clone)]
pub struct Members(Arc<Mutex<BTreeMap<NodeId, Runs>>>);

impl Members {
    fn set(&self, answers: BTreeMap<NodeId, Runs>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = answers;
    }

    fn get(&self) -> BTreeMap<NodeId, Runs> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Asks every member (this node answers for itself) what it runs; a member that does not
/// answer in time is missing from the map.
pub async fn ask(ctx: &NodeCtx, members: &[Member]) -> BTreeMap<NodeId, Runs> {
    let asks = members.iter().map(|m| async move {
        if m.id == ctx.id {
            return Some((m.id, Runs::this_node()));
        }
        let mut client = ctx.clients.get(&m.address).ok()?;
        let mut req = tonic::Request::new(Empty {});
        req.set_timeout(ASK_TIMEOUT);
        ctx.cluster_id.attach(&mut req);
        let r = tokio::time::timeout(ASK_TIMEOUT, client.initialized(req)).await.ok()?.ok()?.into_inner();
        Some((m.id, Runs { version: r.version, protocol: r.protocol, max_level: r.max_feature_level.max(1) }))
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

/// Refuses a voter change that could not commit now (etcd's strict reconfig check): a joint
/// change needs a majority of the voters before it and of the voters after it, and while it
/// cannot commit, no other change can be made and no write commits. One mistyped id (the
/// live voter removed instead of the dead one, a dead learner promoted) would otherwise stop
/// every write until the missing nodes came back, or for good.
pub async fn strict_reconfig(ctx: &NodeCtx, remove: Option<NodeId>, promote: Option<NodeId>) -> Result<(), String> {
    use switchyard_proto::v1::MemberRole;
    let members = ctx.members();
    let before: BTreeSet<NodeId> =
        members.iter().filter(|m| m.role == MemberRole::Voter as i32).map(|m| m.id).collect();
    // Only a change the leader would make is judged: an id that is no member, or no voter to
    // remove, gets the leader's own answer.
    let mut after = before.clone();
    if let Some(id) = remove {
        after.remove(&id);
    }
    if let Some(id) = promote.filter(|id| members.iter().any(|m| m.id == *id)) {
        after.insert(id);
    }
    if after == before || after.is_empty() {
        // Nothing changes among the voters (a learner, or a call the leader refuses anyway).
        return Ok(());
    }
    let answered = ask(ctx, &members).await;
    let up = |set: &BTreeSet<NodeId>| set.iter().filter(|id| answered.contains_key(id)).count();
    let majority = |set: &BTreeSet<NodeId>| up(set) > set.len() / 2;
    let list = |set: &BTreeSet<NodeId>| set.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", ");
    if !majority(&before) {
        return Err(format!(
            "only {} of the voters {} answer: no change can commit now; bring them back first",
            up(&before),
            list(&before)
        ));
    }
    if !majority(&after) {
        return Err(format!(
            "the voters after this change would be {}, and only {} of them answer: the change could not commit, and \
             no write could until they are back. Remove an unreachable node first, or pass --force",
            list(&after),
            up(&after)
        ));
    }
    Ok(())
}

/// Refuses to add a node that is not the one named: an address another member already has
/// (a second id for one node would count one disk twice toward a quorum), a node that says it
/// is another id, belongs to another cluster or refuses us, or one that says it cannot run the
/// cluster's level (it would stop at the first entry it applied). One that does not answer
/// is added: a learner catches up before it may be promoted, and it refuses by itself.
pub async fn check_joiner(ctx: &NodeCtx, id: NodeId, addr: &str) -> Result<(), String> {
    if let Some(m) = ctx.members().iter().find(|m| m.address.eq_ignore_ascii_case(addr)) {
        return Err(format!("{addr} is node {}'s address", m.id));
    }
    let Ok(mut client) = ctx.clients.get(addr) else { return Ok(()) };
    let mut req = tonic::Request::new(Empty {});
    req.set_timeout(ASK_TIMEOUT);
    ctx.cluster_id.attach(&mut req);
    let r = match tokio::time::timeout(ASK_TIMEOUT, client.initialized(req)).await {
        Err(_) => return Ok(()),
        Ok(Err(s)) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) => return Ok(()),
        Ok(Err(s)) => return Err(format!("the node at {addr} refused this cluster: {}", s.message())),
        Ok(Ok(r)) => r.into_inner(),
    };
    if r.node_id != id {
        return Err(format!("the node at {addr} is node {}, not node {id}", r.node_id));
    }
    if let (Some(ours), false) = (ctx.cluster_id.get(), r.cluster_id.is_empty()) {
        if r.cluster_id != ours {
            return Err(format!("the node at {addr} belongs to another cluster ({})", r.cluster_id));
        }
    }
    let level = ctx.shared.read().state.feature_level();
    let max_level = r.max_feature_level.max(1);
    if max_level < level {
        return Err(format!(
            "node {id} runs {}, max feature level {max_level}, and the cluster runs at {level}: upgrade it before adding it",
            if r.version.is_empty() { "a version from before feature levels" } else { &r.version },
        ));
    }
    Ok(())
}

/// `members` with what each runs filled in, as far as they answered.
pub async fn annotate(ctx: &NodeCtx, mut members: Vec<Member>) -> Vec<Member> {
    let runs = ask(ctx, &members).await;
    for m in &mut members {
        if let Some(r) = runs.get(&m.id) {
            m.version = r.version.clone();
            m.protocol = r.protocol.clone();
            m.max_feature_level = r.max_level;
        }
    }
    members
}

/// The level every member supports, when all of them answered.
fn common_level(members: &[Member], runs: &BTreeMap<NodeId, Runs>) -> Option<u32> {
    members.iter().map(|m| runs.get(&m.id).map(|r| r.max_level)).collect::<Option<Vec<_>>>()?.into_iter().min()
}

/// The leader's refusal of `cmd` at cluster level `level`, naming the members that hold it
/// back (as last heard; "did not answer" for those that did not).
pub fn refusal(ctx: &NodeCtx, cmd: &Command, level: u32) -> String {
    let needs = cmd.needs();
    let runs = ctx.features.get();
    let behind: Vec<String> = ctx
        .members()
        .iter()
        .filter_map(|m| match runs.get(&m.id) {
            Some(r) if r.max_level >= needs => None,
            Some(r) => Some(format!(
                "node {} runs {}, max level {}",
                m.id,
                if r.version.is_empty() { "a version from before feature levels" } else { &r.version },
                r.max_level
            )),
            None => Some(format!("node {} has not said what it runs", m.id)),
        })
        .collect();
    let why = if behind.is_empty() {
        "every node now supports it; it rises within seconds".into()
    } else {
        behind.join("; ")
    };
    format!(
        "{} needs feature level {needs}; the cluster runs at {level} until every node is upgraded ({why})",
        cmd.what()
    )
}

/// Runs for the node's lifetime: while this node leads, asks members what they run and
/// raises the cluster's level once every one of them supports more.
pub async fn run(ctx: Arc<NodeCtx>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if ctx.is_leader() {
            raise(&ctx).await;
        }
    }
}

/// Asks members what they run and raises the cluster's level to what all of them support.
/// Run every [`TICK`] by the leader, and at once when a write needs a level the cluster has
/// not reached: a cluster whose members all support it (a new one, in its first second)
/// takes the write instead of refusing it.
pub async fn raise(ctx: &NodeCtx) {
    let members = ctx.members();
    let runs = ask(ctx, &members).await;
    let common = common_level(&members, &runs);
    ctx.features.set(runs);
    let level = ctx.shared.read().state.feature_level();
    if let Some(n) = common.filter(|n| *n > level) {
        tracing::info!(from = level, to = n, "every member supports feature level {n}: raising the cluster's");
        if let Err(e) = leader::write(ctx, Command::SetFeatureLevel(n)).await {
            tracing::warn!("feature level {n} not committed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId) -> Member {
        Member { id, ..Default::default() }
    }

    fn runs(max_level: u32) -> Runs {
        Runs { version: "0.1.0".into(), protocol: "1.1".into(), max_level }
    }

    #[test]
    fn the_common_level_needs_every_member_and_is_the_lowest_max() {
        let members = [member(1), member(2), member(3)];
        let mut r = BTreeMap::from([(1, runs(2)), (2, runs(1)), (3, runs(2))]);
        assert_eq!(common_level(&members, &r), Some(1));
        r.insert(2, runs(2));
        assert_eq!(common_level(&members, &r), Some(2));
        r.remove(&3);
        assert_eq!(common_level(&members, &r), None, "a member that did not answer holds the level");
    }

    #[test]
    fn a_level_above_this_binary_is_refused_by_name() {
        assert_eq!(unsupported(1), None);
        let e = unsupported(max_feature_level() + 1).unwrap();
        assert!(e.contains(&format!("feature level {}", max_feature_level() + 1)), "{e}");
        assert!(e.contains(&format!("at most level {}", max_feature_level())), "{e}");
    }
}
