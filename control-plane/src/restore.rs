//! `switchyard-control --restore FILE`: a new cluster from a backup, as etcd's `snapshot
//! restore` does it. Each founding member restores the same file into its own empty data dir,
//! with the same `--initial-cluster`; every one of them then holds the backup's state as a
//! Raft snapshot at the backup's revision, with the new members as its membership, and a log
//! that starts right after it. No member needs to initialize anything: they elect a leader
//! among themselves as after a restart, and the log's indexes (the revisions) continue from
//! the backup's, so they never go backwards.
//!
//! The new cluster id is derived from the file's checksum and the member list, so members
//! restored apart agree on it without talking, and it differs from the old cluster's: a node
//! or proxy of the old cluster is refused (a proxy that followed it is let in, but sent the
//! state whole; see [`crate::cluster_id::ClusterId::check_watch`]). The same file restored
//! twice with the same members gives the same id (and the same state at the same revision).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, CommittedLeaderId, Membership};
use ring::digest::{digest, SHA256};

use crate::backup::Backup;
use crate::cluster_id::ClusterId;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::store::{self, sm::StateMachineStore};
use crate::types::{LogId, NodeId, SnapshotMeta, StoredMembership};

/// What a restore set up, for the node's log.
#[derive(Debug)]
pub struct Restored {
    pub revision: u64,
    pub old_cluster: String,
    pub new_cluster: String,
}

/// The restored cluster's id: SHA-256 of the file's checksum and the sorted member list.
pub fn derived_cluster_id(checksum: &str, members: &BTreeMap<NodeId, String>) -> String {
    let mut text = format!("switchyard restore\n{checksum}\n");
    for (id, addr) in members {
        text.push_str(&format!("{id}={addr}\n"));
    }
    digest(&SHA256, text.as_bytes()).as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn refuse(config: &NodeConfig, reason: String) -> NodeError {
    NodeError::DataDir { path: config.data_dir.display().to_string(), reason }
}

/// Restores `file` into `config`'s data dir, which must be missing or empty.
pub async fn restore(config: &NodeConfig, file: &Path) -> Result<Restored, NodeError> {
    let bytes = std::fs::read(file)
        .map_err(|e| NodeError::Config(format!("--restore {}: cannot read it: {e}", file.display())))?;
    let backup =
        Backup::decode(&bytes).map_err(|e| NodeError::Config(format!("--restore {}: refused: {e}", file.display())))?;
    if config.join {
        return Err(NodeError::Config("--restore makes a new cluster: give --initial-cluster, not --join".into()));
    }
    let dir = &config.data_dir;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(refuse(
            config,
            "is not empty: --restore only fills an empty or new data dir (move the old one aside; \
             after a restore, start the node without --restore)"
                .into(),
        ));
    }
    let members = if config.initial_cluster.is_empty() {
        BTreeMap::from([(config.id, config.advertise_addr())])
    } else {
        config.initial_cluster.clone()
    };
    let new_cluster = derived_cluster_id(&Backup::checksum(&bytes), &members);

    let db = store::open_with(dir, config.id, false)?;
    let failed = |e: &dyn std::fmt::Display| refuse(config, format!("restore failed: {e}"));
    // Until the last step below is on disk, a start refuses this dir (`store::RESTORING`).
    let marker = dir.join(store::RESTORING);
    let sync_dir = || std::fs::File::open(dir).and_then(|d| d.sync_all());
    std::fs::File::create(&marker).and_then(|f| f.sync_all()).and_then(|()| sync_dir()).map_err(|e| failed(&e))?;
    // Term 0, as openraft's own first entry: any leader's first entry comes after it.
    let at = LogId::new(CommittedLeaderId::new(0, 0), backup.revision);
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
    let membership = StoredMembership::new(Some(at), Membership::new(vec![voters], nodes));
    let data = store::sm::rebase_snapshot(&backup.data, at, membership.clone()).map_err(|e| failed(&e))?;
    let meta = SnapshotMeta {
        last_log_id: Some(at),
        last_membership: membership,
        snapshot_id: format!("restore-{}-{}", backup.revision, &new_cluster[..8]),
    };
    {
        let mut sm = StateMachineStore::open(db.clone(), dir).map_err(|e| failed(&e))?;
        sm.install_snapshot(&meta, Box::new(Cursor::new(data))).await.map_err(|e| failed(&e))?;
    }
    store::log::start_after(&db, at).map_err(|e| failed(&e))?;
    ClusterId::record_restored_from(&db, &backup.cluster_id).map_err(|e| failed(&e))?;
    ClusterId::open(&db).and_then(|ids| ids.adopt(&new_cluster)).map_err(|e| failed(&e))?;
    db.flush_async().await.map_err(|e| failed(&e))?;
    std::fs::remove_file(&marker).and_then(|()| sync_dir()).map_err(|e| failed(&e))?;
    Ok(Restored { revision: backup.revision, old_cluster: backup.cluster_id, new_cluster })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_id_depends_on_the_file_and_the_members() {
        let m = crate::config::parse_initial_cluster("1=h:1,2=h:2").unwrap();
        let n = crate::config::parse_initial_cluster("1=h:1,2=h:3").unwrap();
        let a = derived_cluster_id("aa", &m);
        assert!(crate::cluster_id::valid(&a), "{a}");
        assert_eq!(a, derived_cluster_id("aa", &m));
        assert_ne!(a, derived_cluster_id("ab", &m));
        assert_ne!(a, derived_cluster_id("aa", &n));
    }
}
