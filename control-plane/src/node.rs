//! One control-plane node: opens its storage, starts Raft, and wires the shared context to
//! the gRPC services and the leader's background tasks (health checks, session expiry).
//! The parts live in `node/`; this file only puts them together.

pub mod batch;
pub mod bootstrap;
pub mod calls;
pub mod compaction;
pub mod context;
pub mod election;
pub mod forward;
pub mod heartbeat;
pub mod joint;
pub mod leader;
pub mod proxies;
pub mod serving;

use std::sync::Arc;

use futures::StreamExt;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::context::NodeCtx;
use self::forward::{Forwarder, LeaderClients};
use crate::cluster_id::ClusterId;
use crate::config::{NodeConfig, Security};
use crate::error::NodeError;
use crate::network::Network;
use crate::store::{self, log::LogStore, sm::StateMachineStore};
use crate::types::Raft;

/// A running node. Dropping it does not stop it; cancel the token given to [`Node::start`].
pub struct Node {
    pub ctx: Arc<NodeCtx>,
    server: tokio::task::JoinHandle<Result<(), NodeError>>,
}

impl Node {
    /// Opens the data dir, starts Raft and serves gRPC on `listener` until `shutdown`.
    pub async fn start(
        config: NodeConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Node, NodeError> {
        config.validate()?;
        switchyard_model::tls::install_provider();
        let (db, blobs) = {
            let dir = config.data_dir.clone();
            let id = config.id;
            tokio::task::spawn_blocking(move || {
                let db = store::open(&dir, id)?;
                let blobs = store::blobs::Blobs::watch(&dir).map_err(|e| NodeError::DataDir {
                    path: dir.display().to_string(),
                    reason: format!("cannot watch its blobs/ directory: {e}"),
                })?;
                Ok::<_, NodeError>((db, blobs))
            })
            .await
            .map_err(|e| NodeError::Storage(e.to_string()))??
        };
        let data_err = |e: crate::types::StorageError| NodeError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: format!("corrupt: {e}"),
        };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let log = LogStore::with_metrics(db.clone(), &config.data_dir, blobs, metrics.clone()).map_err(data_err)?;
        let cluster_id = ClusterId::open(&db)
            .map_err(|e| NodeError::DataDir { path: config.data_dir.display().to_string(), reason: e })?;
        bootstrap::check_peers(&config, log.is_empty().map_err(data_err)?, &cluster_id).await?;
        let sm = StateMachineStore::open(db, &config.data_dir)
            .and_then(|sm| sm.with_purge_gate(log.purge_gate()))
            .map_err(data_err)?
            .with_metrics(metrics.clone())
            .with_durable(log.durable());
        // After the state machine set the purge gate: the log is checked from its snapshot on.
        log.check().map_err(data_err)?;
        let shared = sm.shared();
        let level = shared.read().state.feature_level();
        if let Some(why) = crate::features::unsupported(level) {
            return Err(NodeError::FeatureLevel(why));
        }

        let raft_config = openraft::Config {
            cluster_name: "switchyard".into(),
            heartbeat_interval: config.replication_deadline_ms(),
            enable_heartbeat: false,
            // Elections are called by `election::run`; openraft takes the max as the lease.
            enable_elect: false,
            election_timeout_min: config.openraft_election_ms().0,
            election_timeout_max: config.openraft_election_ms().1,
            install_snapshot_timeout: 10_000,
            // Triggered by `compaction::run`, which weighs the log against the snapshot too.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.keep_logs,
            snapshot_max_chunk_size: 1024 * 1024,
            max_payload_entries: 1000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let peer_tls = config.peer_tls()?;
        let log_ends = log.clone();
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            Network(cluster_id.clone(), peer_tls.clone(), log.durable()),
            log,
            sm,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        let (proposals, proposals_rx) = mpsc::channel(64 * 1024);
        tokio::spawn(batch::propose_loop(raft.clone(), proposals_rx, metrics.clone()));
        let clients = Arc::new(LeaderClients::new(cluster_id.clone(), peer_tls));
        let ctx = Arc::new(NodeCtx {
            id: config.id,
            advertise: config.advertise_addr(),
            raft: raft.clone(),
            cluster_id,
            shared,
            shutdown: shutdown.clone(),
            proxies: Default::default(),
            forwarder: Forwarder::start(clients.clone()),
            clients,
            proposals,
            serving: serving::Serving::start(raft.clone(), &config, shutdown.clone()),
            fatal: Default::default(),
            metrics,
            features: Default::default(),
            log: log_ends,
            minting: Default::default(),
            config,
        });

        let auth = ctx.config.auth_mode();
        if auth == crate::auth::Auth::LoopbackTrusted {
            tracing::warn!(
                "no TLS: every caller without a bearer token is trusted as admin and as a peer; \
                 give the node --tls-ca/--tls-cert/--tls-key to require certificates or tokens"
            );
        }
        let router = crate::api::router(ctx.clone(), auth)?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        });
        let token = shutdown.clone();
        let raft = ctx.raft.clone();
        let server = tokio::spawn(async move {
            let res = router.serve_with_incoming_shutdown(incoming, token.cancelled()).await;
            let _ = raft.shutdown().await;
            res.map_err(NodeError::from)
        });
        tokio::spawn(heartbeat::run(ctx.clone()));
        tokio::spawn(election::run(ctx.clone()));
        tokio::spawn(compaction::run(ctx.clone()));
        tokio::spawn(joint::run(ctx.clone()));
        tokio::spawn(crate::fatal::watch(ctx.raft.clone(), ctx.fatal.clone(), shutdown.clone()));
        tokio::spawn(bootstrap::form_cluster(ctx.clone()));
        tokio::spawn(crate::health::run(ctx.clone()));
        tokio::spawn(crate::sessions::expire(ctx.clone()));
        tokio::spawn(crate::features::run(ctx.clone()));
        let security = ctx.config.security();
        match security {
            Security::Mtls => {
                tracing::info!(id = ctx.id, addr = %ctx.advertise, security = security.as_str(), "control-plane node started")
            }
            Security::Loopback => tracing::warn!(
                id = ctx.id,
                addr = %ctx.advertise,
                security = security.as_str(),
                "control-plane node started WITHOUT TLS: only this machine can reach it, and anything on it may \
                 change the cluster"
            ),
            Security::Insecure => tracing::error!(
                id = ctx.id,
                addr = %ctx.advertise,
                security = security.as_str(),
                "control-plane node started INSECURE (--insecure): cleartext on a routable address; anyone who \
                 can reach it may change the cluster"
            ),
        }
        Ok(Node { ctx, server })
    }

    /// Serves Prometheus metrics on `listener` until shutdown (see [`crate::metrics`]).
    pub fn serve_metrics(&self, listener: TcpListener) {
        tokio::spawn(crate::metrics::serve(listener, self.ctx.clone()));
    }

    /// Waits until the server stops (after the shutdown token is cancelled, or after the
    /// Raft core stopped fatally, which is an error).
    pub async fn wait(self) -> Result<(), NodeError> {
        tokio::select! {
            r = self.server => r.map_err(|e| NodeError::Raft(e.to_string()))??,
            // A graceful stop waits for every open stream; a fatal one does not wait long.
            _ = self.ctx.fatal.exit_due() => {}
        }
        match self.ctx.fatal.reason() {
            Some(reason) => Err(NodeError::Fatal(reason.to_string())),
            None => Ok(()),
        }
    }
}
