//! A proxy that starts from its config cache takes the cluster's state whole on its first
//! stream, so a cache that is wrong at the very revision it claims is repaired.

use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;

/// The cluster's whole state, as a watch from revision 0 first sends it, once at `revision`.
async fn snapshot(addr: &str, revision: u64) -> Topology {
    eventually("a snapshot at the route's revision", Duration::from_secs(10), || async {
        let req = WatchRequest { proxy_id: String::new(), from_revision: 0 };
        let mut stream = discovery(addr).watch(req).await.ok()?.into_inner();
        match stream.message().await.ok()??.kind? {
            watch_event::Kind::Snapshot(t) if t.revision >= revision => Some(t),
            _ => None,
        }
    })
    .await
}

fn backends(status: &serde_json::Value) -> Option<Vec<String>> {
    let list = status["backends"].as_array()?;
    Some(list.iter().filter_map(|b| b["address"].as_str().map(String::from)).collect())
}

/// A one-node cluster routing everything to `b1`, its state at that revision, and the same
/// state with a backend nothing listens on in place of b1's, written as the proxy's cache at
/// `revision_ahead` revisions past the cluster's.
struct Wrong {
    c: Cluster,
    addr: String,
    b1: EchoBackend,
    truth: Topology,
    wrong: Topology,
    cache: std::path::PathBuf,
    _ghost: ClosedPort,
}

async fn wrong_cache(revision_ahead: u64) -> Wrong {
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let b1 = EchoBackend::start("b1").await;
    let rev = route_all(&addr, "chat", &[b1.addr.as_str()]).await;
    let truth = snapshot(&addr, rev).await;
    let ghost = ClosedPort::new();
    let mut wrong = truth.clone();
    wrong.revision += revision_ahead;
    for b in &mut wrong.backends {
        b.address = ghost.addr.clone();
    }
    let cache = c.dir.path().join("p.cache");
    switchyard_proxy::watch::cache::write(&cache, &wrong).expect("write the cache");
    Wrong { c, addr, b1, truth, wrong, cache, _ghost: ghost }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_from_a_wrong_cache_converges_to_the_cluster() {
    let _g = serial().await;
    // Same revision, same cluster, but a backend the cluster never had in place of b1.
    let Wrong { c, addr, b1, truth, wrong, cache, _ghost } = wrong_cache(0).await;

    // The proxy loads it as it is (no checksum or framing to refuse it by).
    let (loaded, _) = switchyard_proxy::watch::cache::load(&cache).expect("a usable cache");
    assert_eq!(loaded, wrong);

    let p = ProxyProcess::spawn(&c.endpoints(), &cache, "p");

    // Generous: the machine may be busy, and without the resync this never happens at all.
    eventually("the proxy to take the cluster's backends", Duration::from_secs(20), || async {
        let s = p.status().await?;
        (backends(&s)? == vec![b1.addr.clone()] && s["config"]["revision"].as_u64()? >= truth.revision).then_some(())
    })
    .await;
    let (_ws, name) = ws_connect(&p.ws, "/", &[]).await.expect("routed by the cluster's config");
    assert_eq!(name, "b1");
    // Later changes still arrive as they happen.
    let b2 = EchoBackend::start("b2").await;
    let req = AddBackendRequest {
        backend: Some(Backend { pool: "chat".into(), address: b2.addr.clone(), weight: 1, ..Default::default() }),
    };
    let rev = admin(&addr).add_backend(req).await.expect("add b2").into_inner().revision;
    p.wait_revision(rev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_beside_no_cluster_id_is_replaced_by_the_clusters_state_whatever_its_revision() {
    let _g = serial().await;
    // Another cluster's config, far ahead in revisions, and the file naming its cluster lost
    // (or a cache from a build before cluster ids).
    let Wrong { c, b1, truth, wrong: other, cache, _ghost, .. } = wrong_cache(1000).await;
    let id_file = switchyard_proxy::watch::follow::cluster_file(&cache);
    assert!(!id_file.exists());

    let p = ProxyProcess::spawn(&c.endpoints(), &cache, "p");
    eventually("the proxy to take this cluster's config", Duration::from_secs(20), || async {
        let s = p.status().await?;
        let revision = s["config"]["revision"].as_u64()?;
        (backends(&s)? == vec![b1.addr.clone()] && revision >= truth.revision && revision < other.revision)
            .then_some(())
    })
    .await;
    let (_ws, name) = ws_connect(&p.ws, "/", &[]).await.expect("routed by this cluster's config");
    assert_eq!(name, "b1");
    // The cluster's id is written beside a cache that holds its config, never beside the other.
    eventually("the cluster id and its config on disk", Duration::from_secs(10), || async {
        let (held, _) = switchyard_proxy::watch::cache::load(&cache)?;
        (id_file.exists() && held.revision < other.revision).then_some(())
    })
    .await;
}
