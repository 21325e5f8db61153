//! Switchyard's gRPC API: `switchyard.v1` (Admin, Query, Discovery) and the peer-only
//! `switchyard.raft.v1` service, generated at build time with a vendored `protoc`.

/// The public API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("switchyard.v1");
}

/// The peer-only Raft transport.
pub mod raft {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("switchyard.raft.v1");
}

/// Encoded descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));
