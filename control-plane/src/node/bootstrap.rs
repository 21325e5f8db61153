//! Cluster formation: the lowest id of the initial cluster initializes it, once, only when
//! its own store is empty and no peer answers that it already holds a cluster (so a wiped
//! node 1 cannot split off a second cluster).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;

use super::context::NodeCtx;
use crate::network;
use crate::types::NodeId;

pub async fn form_cluster(node: Arc<NodeCtx>) {
    let members = &node.config.initial_cluster;
    let members = if members.is_empty() && !node.config.join {
        BTreeMap::from([(node.id, node.advertise.clone())])
    } else {
        members.clone()
    };
    if members.keys().next() != Some(&node.id) {
        return;
    }
    match node.raft.is_initialized().await {
        Ok(false) => {}
        _ => return,
    }
    for (id, addr) in members.iter().filter(|(id, _)| **id != node.id) {
        if let Ok(mut c) = network::client(addr) {
            let ask = c.initialized(switchyard_proto::raft::Empty {});
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), ask).await {
                if r.into_inner().initialized {
                    tracing::warn!(peer = id, "peer already holds a cluster; not initializing a new one");
                    return;
                }
            }
        }
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
    match node.raft.initialize(nodes).await {
        Ok(()) => tracing::info!(members = ?members, "initialized a new cluster"),
        Err(e) => tracing::info!("cluster already initialized: {e}"),
    }
}
