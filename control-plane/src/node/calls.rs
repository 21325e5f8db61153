//! Operations only the leader can carry out, as typed calls: each request type names its
//! reply type, so a caller gets exactly the reply its request produces and the compiler, not
//! a run-time "unexpected reply" arm, keeps them paired. Followers send them to the leader as
//! an [`Envelope`] over the peer service.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use switchyard_proto::v1::{BackendLoad, ProxyStatus, SessionBinding};

use crate::error::ApiError;
use crate::pb::Pb;
use crate::state::Proposed;
pub use crate::state::Written;
use crate::types::NodeId;

/// Why the leader side did not carry out a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExecError {
    /// This node is not the leader; the leader's address when known.
    NotLeader(Option<String>),
    Api(ApiError),
}

/// A request for the leader and the type of its answer.
pub trait LeaderCall: Clone + Send + Sync + 'static {
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// Whether a call that timed out may still take effect (a client must not blindly retry).
    const MUTATES: bool;
    fn into_envelope(self) -> Envelope;
}

/// Writes a follower gathered and sends in one call, each with its request id; one result
/// per command, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Writes(pub Vec<Proposed>);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddNode {
    pub id: NodeId,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Promote {
    pub id: NodeId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remove {
    pub id: NodeId,
}

/// The leader's commit index, confirmed by a quorum: the point a linearizable read waits for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadIndex;

/// A proxy's report, collected on the leader so any node can list every proxy; its session
/// bindings are proposed in the leader's next batch. Answered with cluster-wide loads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub status: Pb<ProxyStatus>,
    pub bindings: Vec<Pb<SessionBinding>>,
    pub loads: Vec<Pb<BackendLoad>>,
}

/// The cluster-wide connection counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loads;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListProxies;

/// What crosses the wire: which call, with its request. The reply travels as the call's own
/// `Result<Reply, ExecError>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Envelope {
    Writes(Writes),
    AddNode(AddNode),
    Promote(Promote),
    Remove(Remove),
    ReadIndex(ReadIndex),
    Report(Report),
    Loads(Loads),
    ListProxies(ListProxies),
}

macro_rules! leader_call {
    ($t:ident, $reply:ty, $mutates:expr) => {
        impl LeaderCall for $t {
            type Reply = $reply;
            const MUTATES: bool = $mutates;
            fn into_envelope(self) -> Envelope {
                Envelope::$t(self)
            }
        }
    };
}

leader_call!(Writes, Vec<Result<Written, ExecError>>, true);
// Membership changes answer with the revision of the membership entry.
leader_call!(AddNode, u64, true);
leader_call!(Promote, u64, true);
leader_call!(Remove, u64, true);
leader_call!(ReadIndex, u64, false);
leader_call!(Report, Vec<Pb<BackendLoad>>, false);
leader_call!(Loads, Vec<Pb<BackendLoad>>, false);
leader_call!(ListProxies, Vec<Pb<ProxyStatus>>, false);
