//! Following the control plane: `Discovery.Watch` from any node, resuming from the last
//! applied revision on another node when one fails. With every node down, the proxy keeps
//! the config it has.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use switchyard_model::grpc::{self, ChannelOptions};
use switchyard_model::limits::MAX_GRPC_MESSAGE;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::WatchRequest;
use tokio::sync::watch;

use super::install::install;
use super::mirror::Mirror;
use crate::state::ProxyState;

/// How long a node may take to start a watch stream before the next one is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Follows the endpoints in turn until shutdown. Each applied revision is installed, then
/// announced on `applied` (for the reporter and the cache writer).
pub async fn run(
    state: Arc<ProxyState>,
    endpoints: Vec<String>,
    mirror: Arc<Mutex<Mirror>>,
    applied: watch::Sender<u64>,
) {
    let lock = || mirror.lock().unwrap_or_else(|e| e.into_inner());
    let shutdown = state.runtime.shutdown.clone();
    let mut backoff = BACKOFF_MIN;
    let mut next = 0usize;
    while !shutdown.is_cancelled() {
        let addr = endpoints[next % endpoints.len()].clone();
        next += 1;
        let from = lock().revision;
        let stream = match grpc::channel(&addr, &ChannelOptions::PROXY) {
            Ok(ch) => {
                let mut c = DiscoveryClient::new(ch).max_decoding_message_size(MAX_GRPC_MESSAGE);
                let req = WatchRequest { proxy_id: state.proxy_id.clone(), from_revision: from };
                tokio::time::timeout(OPEN_TIMEOUT, c.watch(req)).await.ok().and_then(Result::ok)
            }
            Err(e) => {
                tracing::warn!(node = %addr, "bad control-plane address: {e}");
                None
            }
        };
        let Some(stream) = stream else {
            state.status.set_control_plane(None);
            let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        let mut stream = stream.into_inner();
        tracing::info!(node = %addr, from, "following the control plane");
        state.status.set_control_plane(Some(addr.clone()));
        backoff = BACKOFF_MIN;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.message() => ev,
            };
            let Ok(Some(ev)) = ev else { break };
            let mut m = lock();
            let Some(delta) = m.apply(ev) else { continue };
            install(&state, &m, &delta, "control-plane", SystemTime::now());
            let rev = m.revision;
            drop(m);
            let _ = applied.send(rev);
        }
        tracing::warn!(node = %addr, revision = lock().revision, "control-plane stream ended; trying the next node");
        state.status.set_control_plane(None);
    }
}
