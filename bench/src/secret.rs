//! The cluster's affinity hashing secret, read as a proxy reads it (the first event of a
//! watch), so the bench can look up the binding of a raw session key by its hash.

use std::time::Duration;

use anyhow::{bail, Result};
use switchyard_model::AffinitySecret;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::{watch_event, WatchRequest};

pub async fn affinity_secret(cp: &str) -> Result<AffinitySecret> {
    let mut d = DiscoveryClient::connect(format!("http://{cp}"))
        .await?
        .max_decoding_message_size(switchyard_model::limits::MAX_GRPC_MESSAGE);
    for _ in 0..100 {
        let req = WatchRequest { proxy_id: String::new(), from_revision: 0 };
        if let Some(ev) = d.watch(req).await?.into_inner().message().await? {
            if let Some(watch_event::Kind::Snapshot(t)) = ev.kind {
                let secret = AffinitySecret::from_bytes(&t.affinity_secret);
                if secret.is_set() {
                    return Ok(secret);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the cluster at {cp} has minted no affinity secret yet")
}
