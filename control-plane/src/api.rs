//! The gRPC services a node serves: Admin, Query and Discovery (public), Raft (peers only),
//! plus the standard health and reflection services.

pub mod access;
pub mod admin;
pub mod discovery;
pub mod peer;
pub mod query;
pub mod versions;

use std::sync::Arc;

use switchyard_proto::raft::raft_server::RaftServer;
use switchyard_proto::v1::access_server::AccessServer;
use switchyard_proto::v1::admin_server::AdminServer;
use switchyard_proto::v1::discovery_server::DiscoveryServer;
use switchyard_proto::v1::query_server::QueryServer;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

use crate::auth::layer::AuthLayer;
use crate::auth::{Auth, Authorizer};
use crate::metrics::layer::CallsLayer;
use crate::network::{MAX_MESSAGE, MAX_PEER_MESSAGE};
use crate::node::context::NodeCtx;
use versions::VersionLayer;

/// The router's layers: calls counted outermost (refusals too), then the caller's protocol
/// version, then authorization.
pub type Layers = Stack<AuthLayer, Stack<VersionLayer, Stack<CallsLayer, Identity>>>;

/// Every service behind the one authorization layer ([`crate::auth`]), in mode `auth`, and
/// behind TLS when the node has it.
pub fn router(node: Arc<NodeCtx>, auth: Auth) -> Result<Router<Layers>, crate::error::NodeError> {
    let authorizer = Arc::new(Authorizer { mode: auth, tokens: node.shared.clone() });
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchyard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("embedded descriptors are valid");
    let fatal = node.fatal.clone();
    tokio::spawn(async move {
        health_reporter.set_serving::<AdminServer<admin::AdminService>>().await;
        health_reporter.set_serving::<QueryServer<query::QueryService>>().await;
        health_reporter.set_serving::<DiscoveryServer<discovery::DiscoveryService>>().await;
        // A Raft core that stopped fatally: nothing here works any more (see `crate::fatal`).
        fatal.happened().await;
        health_reporter.set_not_serving::<AdminServer<admin::AdminService>>().await;
        health_reporter.set_not_serving::<QueryServer<query::QueryService>>().await;
        health_reporter.set_not_serving::<DiscoveryServer<discovery::DiscoveryService>>().await;
        health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    });
    let mut server = Server::builder().tcp_nodelay(true);
    if node.config.tls.enabled() {
        let tls = node.config.tls.server().map_err(|e| crate::error::NodeError::Config(e.to_string()))?;
        server = server.tls_config(tls).map_err(|e| crate::error::NodeError::Config(format!("TLS: {e}")))?;
    }
    Ok(server
        .layer(CallsLayer(node.metrics.clone()))
        .layer(VersionLayer)
        .layer(AuthLayer(authorizer))
        .add_service(health)
        .add_service(reflection)
        .add_service(AdminServer::new(admin::AdminService(node.clone())))
        .add_service(AccessServer::new(access::AccessService(node.clone())))
        .add_service(QueryServer::new(query::QueryService(node.clone())).max_encoding_message_size(MAX_MESSAGE))
        .add_service(
            DiscoveryServer::new(discovery::DiscoveryService::new(node.clone())).max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RaftServer::new(peer::PeerService::new(node))
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        ))
}
