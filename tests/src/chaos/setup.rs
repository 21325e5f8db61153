//! What a run starts from: its pools, backends and routes, and the admin writes config
//! churn repeats.

use switchyard_proto::v1::*;

use super::workload;
use crate::{admin, EchoBackend};

pub async fn add_backend(node: String, pool: &str, address: String) -> Option<u64> {
    let b = Backend { pool: pool.into(), address, weight: 1, ..Default::default() };
    admin(&node).add_backend(AddBackendRequest { backend: Some(b) }).await.ok().map(|r| r.into_inner().revision)
}

pub async fn remove_backend(node: String, pool: &str, address: String) -> Option<u64> {
    let req = RemoveBackendRequest { pool: pool.into(), address, force: false };
    admin(&node).remove_backend(req).await.ok().map(|r| r.into_inner().revision)
}

/// The pools, backends and routes of a run; the route's revision.
pub async fn configure(leader: &str, backends: &[EchoBackend]) -> u64 {
    let mut a = admin(leader);
    let chat = Pool {
        name: "chat".into(),
        algorithm: Algorithm::ConsistentHash as i32,
        hash_key: "header:X-Session".into(),
        affinity: "header:X-Session".into(),
        affinity_ttl_ms: 600_000,
        ..Default::default()
    };
    let churn = Pool { name: "churn".into(), drain_timeout_ms: 1000, ..Default::default() };
    for p in [chat, churn, Pool { name: workload::REGISTER_POOL.into(), ..Default::default() }] {
        a.create_pool(CreatePoolRequest { pool: Some(p) }).await.expect("create pool");
    }
    for name in [workload::DURABLE_POOL, "marker"] {
        let p = Pool { name: name.into(), ..Default::default() };
        a.create_pool(CreatePoolRequest { pool: Some(p) }).await.expect("create pool");
    }
    for b in backends {
        add_backend(leader.into(), "chat", b.addr.clone()).await.expect("add a chat backend");
    }
    for b in &backends[..2] {
        add_backend(leader.into(), "churn", b.addr.clone()).await.expect("add a churn backend");
    }
    let churn =
        Route { name: "churn".into(), path_prefix: "/churn".into(), pool: "churn".into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(churn), force: false }).await.expect("set route");
    let all = Route { name: "all".into(), pool: "chat".into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(all), force: false }).await.expect("set route").into_inner().revision
}
