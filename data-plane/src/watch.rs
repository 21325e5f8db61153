//! Following the control plane and keeping its config: a mirror of the model, moved by the
//! watch stream ([`follow`]), put in force by [`install::install`], written to the cache file
//! ([`cache`]) and acknowledged with reports ([`report`]); a node that goes silent or stale
//! is left for the next ([`freshness`]).

pub mod cache;
pub mod follow;
pub mod freshness;
pub mod install;
pub mod mirror;
pub mod report;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use switchyard_model::grpc::ClientTls;
use tokio::sync::watch;

use self::mirror::Mirror;
use crate::state::ProxyState;

pub struct WatchConfig {
    pub endpoints: Vec<String>,
    pub cache_file: Option<PathBuf>,
    pub tls: ClientTls,
}

/// Starts following, reporting and caching. `mirror` is what the proxy starts from (the
/// cache, already installed, or empty).
pub fn start(state: Arc<ProxyState>, cfg: WatchConfig, mirror: Mirror) {
    let (applied_tx, applied_rx) = watch::channel(mirror.revision);
    let mirror = Arc::new(Mutex::new(mirror));
    let cluster_file = cfg.cache_file.clone();
    if let Some(path) = cfg.cache_file {
        tokio::spawn(cache::writer(path, applied_rx.clone(), mirror.clone()));
    }
    tokio::spawn(report::run(state.clone(), cfg.endpoints.clone(), applied_rx, cfg.tls.clone()));
    tokio::spawn(follow::run(state, cfg.endpoints, mirror, applied_tx, cluster_file, cfg.tls));
}
