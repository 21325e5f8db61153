//! The errors the control plane answers with, and how each maps to a gRPC status.

use serde::{Deserialize, Serialize};

/// An error from an admin or query request. Serializable because a follower forwards writes
/// to the leader and relays the leader's answer unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// Unavailable, and the write may still commit: retrying it blindly could apply it twice.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Internal(String),
    /// Past a size limit. New at feature level 5: it travels in Raft responses and the table
    /// of requests seen, where a variant is its index.
    #[error("{0}")]
    ResourceExhausted(String),
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ApiError::NotFound(m) => tonic::Status::not_found(m),
            ApiError::AlreadyExists(m) => tonic::Status::already_exists(m),
            ApiError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            ApiError::Unavailable(m) => tonic::Status::unavailable(m),
            ApiError::OutcomeUnknown(m) => switchyard_model::grpc::mark_outcome_unknown(tonic::Status::unavailable(m)),
            ApiError::Internal(m) => tonic::Status::internal(m),
            ApiError::ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
        }
    }
}

/// Why a node could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("storage: {0}")]
    Storage(String),
    #[error("config: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    /// The Raft core stopped on its own while the node ran.
    #[error("fatal: {0}")]
    Fatal(String),
    /// The cluster runs at a feature level this binary cannot apply.
    #[error("{0}")]
    FeatureLevel(String),
    /// The data dir does not fit the cluster its peers hold (amnesia, another cluster's).
    #[error("{0}")]
    Membership(String),
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
