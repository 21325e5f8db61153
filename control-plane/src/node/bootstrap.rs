//! Cluster formation and the checks before a node takes part. A founder initializes the
//! cluster, once, with a new cluster id, when its store is empty, it has the lowest id among
//! the founders that answer (all of them, or those up after a bound), they were all given the
//! same list, and no peer holds a cluster (so a wiped node 1 cannot split off a second one).
//! Before Raft starts, a node asks its founding peers whether its data dir still fits the
//! cluster they hold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::BasicNode;
use switchyard_proto::raft::{Empty, InitializedReply};

use super::context::NodeCtx;
use crate::cluster_id::{self, ClusterId};
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::network;
use crate::types::NodeId;

/// How long one peer gets to answer `Initialized`.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long founders wait for each other before the lowest one up initializes without the
/// rest (a founder that comes up later finds the cluster formed and must be re-added).
const FOUNDERS_WAIT: Duration = Duration::from_secs(5);

/// The answers of the other founding members that answered within [`ASK_TIMEOUT`].
async fn ask_founders(config: &NodeConfig) -> Vec<InitializedReply> {
    // The files were checked at startup; a file removed since makes the peers unreachable.
    let tls = config.peer_tls().unwrap_or_default();
    let tls = &tls;
    let asks = config.initial_cluster.iter().filter(|(id, _)| **id != config.id).map(|(id, addr)| async move {
        let mut c = network::client(addr, tls).ok()?;
        tokio::time::timeout(ASK_TIMEOUT, c.initialized(Empty {}))
            .await
            .ok()?
            .ok()
            .map(|r| r.into_inner())
            .filter(|r| r.node_id == *id)
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

/// Refuses to start a founding member whose data dir does not fit the cluster its peers
/// hold: empty while the cluster counts it as a member (amnesia: it could vote again in a
/// term it already voted in, or help elect a leader without committed entries), or holding
/// another cluster's id. When no peer answers, it is a new cluster and this passes.
pub async fn check_peers(config: &NodeConfig, empty: bool, ids: &ClusterId) -> Result<(), NodeError> {
    if config.initial_cluster.is_empty() {
        return Ok(());
    }
    let ours = ids.get();
    for r in ask_founders(config).await {
        if !r.initialized || !cluster_id::valid(&r.cluster_id) {
            continue;
        }
        if let Some(ours) = &ours {
            if *ours != r.cluster_id {
                return Err(NodeError::Membership(format!(
                    "node {}'s data dir belongs to cluster {ours}, but peer {} belongs to cluster {}: \
                     this data dir is from another cluster; point --data-dir at this node's own",
                    config.id, r.node_id, r.cluster_id
                )));
            }
        }
        if empty && r.members.contains(&config.id) {
            let (id, addr) = (config.id, config.advertise_addr());
            return Err(NodeError::Membership(format!(
                "node {id} has an empty data dir but cluster {} already counts it as a member \
                 (peer {} says so): it may have voted or acknowledged entries it no longer has. \
                 Remove it (`switchyard cluster remove-node {id}`), then start it with --join \
                 and add it again (`switchyard cluster add-node {id} {addr}`, then \
                 `switchyard cluster promote {id}`)",
                r.cluster_id, r.node_id
            )));
        }
    }
    Ok(())
}

/// FNV-1a over the sorted `id=addr` list ("" for none), so founders can tell they were given
/// the same list.
pub fn members_hash(members: &BTreeMap<NodeId, String>) -> String {
    if members.is_empty() {
        return String::new();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, addr) in members {
        for b in format!("{id}={addr}\n").bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Forms the cluster once. Any founder may initialize it: the lowest id among the founders
/// that answer, once all have, or after [`FOUNDERS_WAIT`] without them. Two founders that saw
/// different peers may both initialize, but then with different cluster ids, and a member
/// follows the first leader it accepts and refuses the other's calls, so no second quorum forms.
pub async fn form_cluster(node: Arc<NodeCtx>) {
    let members = &node.config.initial_cluster;
    if members.is_empty() {
        if !node.config.join {
            let one = BTreeMap::from([(node.id, node.advertise.clone())]);
            initialize(&node, one, true).await;
        }
        return;
    }
    let hash = members_hash(members);
    let deadline = Instant::now() + FOUNDERS_WAIT;
    loop {
        if !matches!(node.raft.is_initialized().await, Ok(false)) || node.shutdown.is_cancelled() {
            return;
        }
        let replies = ask_founders(&node.config).await;
        if let Some(r) = replies.iter().find(|r| r.initialized) {
            tracing::info!(peer = r.node_id, "peer already holds a cluster; not initializing a new one");
            return;
        }
        if let Some(r) = replies.iter().find(|r| !r.members_hash.is_empty() && r.members_hash != hash) {
            tracing::error!(
                peer = r.node_id,
                "--initial-cluster differs from node {}'s (list hash {} here, {} there): not \
                 initializing; give every founder the same list",
                r.node_id,
                hash,
                r.members_hash
            );
            return;
        }
        let lowest = replies.iter().map(|r| r.node_id).chain([node.id]).min();
        let all = replies.len() + 1 >= members.len();
        if lowest == Some(node.id) && (all || Instant::now() >= deadline) {
            if !all {
                tracing::warn!(
                    up = replies.len() + 1,
                    of = members.len(),
                    "not every founder is up; initializing anyway"
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    initialize(&node, members.clone(), false).await;
}

async fn initialize(node: &NodeCtx, members: BTreeMap<NodeId, String>, single: bool) {
    match node.raft.is_initialized().await {
        Ok(false) => {}
        _ => return,
    }
    let id = node.cluster_id.get().unwrap_or_else(cluster_id::mint);
    if let Err(e) = node.cluster_id.adopt(&id) {
        tracing::error!("cannot store the new cluster id: {e}");
        return;
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
    match node.raft.initialize(nodes).await {
        Ok(()) => {
            if single {
                tracing::info!(
                    cluster_id = id,
                    "no --initial-cluster or --join: initialized a NEW one-node cluster {id}"
                )
            } else {
                tracing::info!(members = ?members, cluster_id = id, "initialized a new cluster {id}")
            }
            crate::auth::issue::bootstrap_admin_token(node).await;
        }
        Err(e) => tracing::info!("cluster already initialized: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_hash_depends_on_the_list_not_its_order() {
        let a = crate::config::parse_initial_cluster("1=h:1,2=h:2,3=h:3").unwrap();
        let b = crate::config::parse_initial_cluster("3=h:3,1=h:1,2=h:2").unwrap();
        let c = crate::config::parse_initial_cluster("1=h:1,2=h:2,3=h:4").unwrap();
        assert_eq!(members_hash(&a), members_hash(&b));
        assert_ne!(members_hash(&a), members_hash(&c));
        assert_eq!(members_hash(&BTreeMap::new()), "");
    }
}
