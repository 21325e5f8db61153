//! Switchyard's control plane: a Raft-replicated (openraft) store of backend topology and
//! session affinity, kept in sled, served over gRPC to the CLI and to proxies.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod clock;
pub mod cluster_id;
pub mod config;
pub mod console;
pub mod error;
pub mod fatal;
pub mod features;
pub mod health;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pb;
pub mod restore;
pub mod seen;
pub mod sessions;
pub mod state;
pub mod store;
pub mod types;
pub mod validate;

pub use config::NodeConfig;
pub use error::{ApiError, NodeError};
pub use node::Node;
