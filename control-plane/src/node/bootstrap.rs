//! Cluster formation and the checks before a node takes part. The lowest id of the initial
//! cluster initializes it, once, with a new cluster id, when its own store is empty, every
//! founder has answered that it holds no cluster (or a bound passed), and no peer holds one
//! (so a wiped node 1 cannot split off a second cluster). Before Raft starts, a node asks its
//! founding peers whether its data dir still fits the cluster they hold.

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
/// How long the initializer waits for every founder to be up before it initializes with
/// those it has (a founder that comes up later finds the cluster formed and must be re-added).
const FOUNDERS_WAIT: Duration = Duration::from_secs(10);

/// The answers of the other founding members that answered within [`ASK_TIMEOUT`].
async fn ask_founders(config: &NodeConfig) -> Vec<InitializedReply> {
    let asks = config.initial_cluster.iter().filter(|(id, _)| **id != config.id).map(|(_, addr)| async move {
        let mut c = network::client(addr).ok()?;
        tokio::time::timeout(ASK_TIMEOUT, c.initialized(Empty {})).await.ok()?.ok().map(|r| r.into_inner())
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

pub async fn form_cluster(node: Arc<NodeCtx>) {
    let members = &node.config.initial_cluster;
    let single = members.is_empty() && !node.config.join;
    let members = if single { BTreeMap::from([(node.id, node.advertise.clone())]) } else { members.clone() };
    if members.keys().next() != Some(&node.id) {
        return;
    }
    match node.raft.is_initialized().await {
        Ok(false) => {}
        _ => return,
    }
    let deadline = Instant::now() + FOUNDERS_WAIT;
    loop {
        let replies = ask_founders(&node.config).await;
        if let Some(r) = replies.iter().find(|r| r.initialized) {
            tracing::warn!(peer = r.node_id, "peer already holds a cluster; not initializing a new one");
            return;
        }
        if replies.len() + 1 >= members.len() {
            break;
        }
        if Instant::now() >= deadline || node.shutdown.is_cancelled() {
            tracing::warn!(up = replies.len() + 1, of = members.len(), "not every founder is up; initializing anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = node.cluster_id.get().unwrap_or_else(cluster_id::mint);
    if let Err(e) = node.cluster_id.adopt(&id) {
        tracing::error!("cannot store the new cluster id: {e}");
        return;
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
    match node.raft.initialize(nodes).await {
        Ok(()) if single => {
            tracing::info!(cluster_id = id, "no --initial-cluster or --join: initialized a NEW one-node cluster {id}")
        }
        Ok(()) => tracing::info!(members = ?members, cluster_id = id, "initialized a new cluster {id}"),
        Err(e) => tracing::info!("cluster already initialized: {e}"),
    }
}
