//! openraft's type configuration for Switchyard.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Batch, Written};

/// What `apply` hands back for one entry: the revision and outcome of each command in its
/// batch (none for Raft's own entries: blank, membership). The revision is the entry's, or
/// for a repeated request the one it was first applied at.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Response(pub Vec<Written>);

openraft::declare_raft_types!(
    /// Switchyard's Raft types.
    pub TypeConfig:
        D = Batch,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
