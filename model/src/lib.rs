//! Switchyard's model, in one place for both planes: the control plane's state machine and
//! the proxy's mirror are two users of [`Model`], not two copies of it.

pub mod affinity;
pub mod backend_tls;
pub mod edge_auth;
pub mod fields;
pub mod grpc;
pub mod keyspec;
pub mod limits;
pub mod path;
pub mod rebinding;
pub mod signal;
pub mod slots;
pub mod tls;
pub mod topology;
pub mod version;

pub use affinity::AffinitySecret;
pub use keyspec::KeySpec;
pub use topology::{usable, Entity, Model};
