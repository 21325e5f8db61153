//! Sizes and defaults both planes must agree on.

use switchyard_proto::v1::Settings;

/// Largest gRPC message any Switchyard part sends or accepts: snapshots, whole topologies
/// with their session bindings, Raft log batches. Well above tonic's 4 MiB default so a
/// large state never wedges replication or a proxy's resync.
pub const MAX_GRPC_MESSAGE: usize = 256 * 1024 * 1024;

/// Largest request the peer service (Raft RPCs, `Forward`) accepts. Replication splits its
/// batches under it and snapshots travel in 1 MiB chunks, so peers never need more; anything
/// bigger is refused from its length prefix, before the body is read (tonic answers
/// OUT_OF_RANGE), so a forged giant request costs no memory. One Raft entry must fit whole.
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// How often a quiet `Discovery.Watch` stream carries a progress event. Proxies judge a
/// stream silent after a few of these go missing, so both planes take it from here.
pub const WATCH_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The proxy-wide settings a fresh cluster starts with.
pub fn default_settings() -> Settings {
    Settings {
        handshake_timeout_ms: 10_000,
        max_header_bytes: 16 * 1024,
        max_message_bytes: 16 * 1024 * 1024,
        idle_timeout_ms: 300_000,
        ping_interval_ms: 30_000,
        max_connections_per_ip_per_sec: 0,
        max_handshakes_per_sec: 0,
    }
}
