//! Backup and restore: `switchyard snapshot save` from a running cluster, every node wiped,
//! `switchyard-control --restore` into fresh data dirs, and everything found again in a NEW
//! cluster, with a proxy that followed the old cluster taking the restored state whole
//! instead of keeping config the backup does not hold.

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard_model::AffinitySecret;
use switchyard_proto::v1::access_client::AccessClient;
use switchyard_proto::v1::*;
use switchyard_tests::*;

fn linear() -> i32 {
    Consistency::Linearizable as i32
}

async fn session(addr: &str, secret: &AffinitySecret, key: &str) -> Option<SessionBinding> {
    let key = secret.hash(key.as_bytes()).expect("a secret");
    let req = GetSessionRequest { consistency: Consistency::Local as i32, pool: "chat".into(), key };
    query(addr).get_session(req).await.ok().map(|r| r.into_inner())
}

async fn pool_names(addr: &str) -> Option<BTreeSet<String>> {
    let r = query(addr).list_pools(ReadRequest { consistency: linear() }).await.ok()?;
    Some(r.into_inner().pools.into_iter().map(|p| p.name).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_cluster_restored_into_wiped_nodes_has_everything_under_a_new_cluster_id() {
    let _g = serial().await;
    let backends = [EchoBackend::start("b1").await, EchoBackend::start("b2").await];
    let late = EchoBackend::start("late").await;
    let mut c = Cluster::start(3, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let secret = affinity_secret(&addr).await;
    let old_id = status(&addr).await.expect("status").cluster_id;

    // Pools, backends, a route, a token and a session binding (made by a real proxy).
    let mut a = admin(&addr);
    let pool = Pool {
        name: "chat".into(),
        affinity: "header:X-Session".into(),
        affinity_ttl_ms: 600_000,
        ..Default::default()
    };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    for (b, weight) in backends.iter().zip([1, 3]) {
        let backend = Backend { pool: "chat".into(), address: b.addr.clone(), weight, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap();
    }
    let route = Route { name: "chat".into(), pool: "chat".into(), path_prefix: "/chat".into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap();
    let token = CreateTokenRequest { name: "ci-bot".into(), role: "operator".into(), ttl_ms: 3_600_000 };
    let rev = AccessClient::new(channel(&addr)).create_token(token).await.unwrap().into_inner().revision;
    let proxy_cache = c.dir.path().join("proxy.cache");
    let mut proxy = ProxyProcess::spawn(&c.endpoints(), &proxy_cache, "p1");
    proxy.wait_revision(rev).await;
    let (_ws, home) = ws_connect(&proxy.ws, "/chat", &[("X-Session", "alice")]).await.unwrap();
    let bound = eventually("alice's binding to commit", Duration::from_secs(10), || async {
        session(&addr, &secret, "alice").await
    })
    .await;

    // Saved through a follower: any node answers with every acknowledged write.
    let leader = c.leader(Duration::from_secs(10)).await;
    let via = c.nodes.values().find(|n| n.id != leader).expect("a follower").addr.clone();
    let file = c.dir.path().join("backup.snap");
    let f = file.to_str().unwrap();
    let (code, out, err) = run_cli(&["--endpoints", &via, "-o", "json", "snapshot", "save", f]);
    assert_eq!(code, 0, "snapshot save: {err}");
    let saved: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let saved_rev = saved["revision"].as_u64().expect("revision");
    assert!(saved_rev >= rev, "{saved}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "the backup is 0600");

    // A write after the backup, which the proxy applies: the restored cluster must not keep it.
    let late_pool = Pool { name: "late".into(), ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(late_pool) }).await.unwrap();
    let lb = Backend { pool: "late".into(), address: late.addr.clone(), weight: 1, ..Default::default() };
    a.add_backend(AddBackendRequest { backend: Some(lb) }).await.unwrap();
    let lr = Route { name: "late".into(), pool: "late".into(), path_prefix: "/late".into(), ..Default::default() };
    let late_rev = a.set_route(SetRouteRequest { route: Some(lr), force: false }).await.unwrap().into_inner().revision;
    proxy.wait_revision(late_rev).await;
    assert_eq!(ws_connect(&proxy.ws, "/late", &[]).await.unwrap().1, "late");

    // Every node dies and loses its data dir; each restores the same file into a fresh one,
    // with the same --initial-cluster (and the same addresses: the proxy keeps its endpoints).
    for n in c.nodes.values_mut() {
        n.kill9();
    }
    for n in c.nodes.values_mut() {
        std::fs::remove_dir_all(&n.data_dir).expect("wipe the data dir");
        n.args.extend(["--restore".to_string(), f.to_string()]);
    }
    for n in c.nodes.values_mut() {
        n.start();
    }
    let new_leader = c.leader(Duration::from_secs(15)).await;
    let new_addr = c.nodes[&new_leader].addr.clone();
    let new_id = status(&new_addr).await.expect("status").cluster_id;
    assert!(new_id.len() == 32 && new_id != old_id, "a new cluster id: {new_id} (old {old_id})");

    for n in c.nodes.values() {
        let s = status(&n.addr).await.expect("status");
        assert_eq!(s.cluster_id, new_id, "node {} agrees on the cluster id", n.id);
        assert!(
            s.applied_revision >= saved_rev,
            "revisions continue from the backup's: {} < {saved_rev}",
            s.applied_revision
        );
        assert_eq!(pool_names(&n.addr).await.expect("pools"), BTreeSet::from(["chat".to_string()]), "node {}", n.id);
        let bs = query(&n.addr)
            .list_backends(ListBackendsRequest { consistency: linear(), pool: "chat".into() })
            .await
            .unwrap()
            .into_inner()
            .backends;
        let got: BTreeSet<(String, u32)> = bs.into_iter().map(|b| (b.address, b.weight)).collect();
        let want: BTreeSet<(String, u32)> = [(backends[0].addr.clone(), 1), (backends[1].addr.clone(), 3)].into();
        assert_eq!(got, want, "node {}", n.id);
        let routes = query(&n.addr).list_routes(ReadRequest { consistency: linear() }).await.unwrap().into_inner();
        assert_eq!(routes.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["chat"], "node {}", n.id);
        let b = eventually("alice's binding", Duration::from_secs(5), || session(&n.addr, &secret, "alice")).await;
        assert_eq!(b.backend, bound.backend, "node {}", n.id);
        let tokens = AccessClient::new(channel(&n.addr)).list_tokens(ListTokensRequest {}).await.unwrap().into_inner();
        assert!(tokens.tokens.iter().any(|t| t.name == "ci-bot" && t.role == "operator"), "node {}", n.id);
    }
    // Writes go on in the new cluster.
    let after = admin(&new_addr)
        .create_pool(CreatePoolRequest { pool: Some(Pool { name: "fresh".into(), ..Default::default() }) })
        .await
        .expect("a write to the restored cluster")
        .into_inner()
        .revision;

    // The proxy that followed the old cluster takes the restored state whole: the late route
    // is gone, the new write is there, and alice still reaches her backend.
    eventually("the proxy to follow the restored cluster", Duration::from_secs(20), || async {
        let s = proxy.status().await?;
        let names: Vec<&str> = s["backends"].as_array()?.iter().filter_map(|b| b["pool"].as_str()).collect();
        (s["config"]["revision"].as_u64()? >= after && !names.contains(&"late")).then_some(())
    })
    .await;
    assert!(ws_connect(&proxy.ws, "/late", &[]).await.map(|(_, n)| n != "late").unwrap_or(true), "no stale route");
    let (_ws, again) = ws_connect(&proxy.ws, "/chat", &[("X-Session", "alice")]).await.unwrap();
    assert_eq!(again, home, "alice's session survives the restore");
    // Written once the restored state is applied and cached (a crash before must not leave
    // the new id beside the old cluster's config).
    eventually("the proxy to follow the new cluster", Duration::from_secs(5), || async {
        let followed = std::fs::read_to_string(format!("{}.cluster-id", proxy_cache.display())).ok()?;
        (followed.trim() == new_id).then_some(())
    })
    .await;
    proxy.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_misplaced_restore_is_refused_with_one_clear_line() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let dir = c.dir.path();
    let file = dir.join("good.snap");
    let (code, _, err) = run_cli(&["--endpoints", &c.nodes[&1].addr, "snapshot", "save", file.to_str().unwrap()]);
    assert_eq!(code, 0, "snapshot save: {err}");
    let restore = |file: &std::path::Path, data: &std::path::Path| {
        let args: Vec<String> = ["--id", "1", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--restore"]
            .iter()
            .map(|s| s.to_string())
            .chain([file.display().to_string(), "--data-dir".into(), data.display().to_string()])
            .collect();
        let out = std::process::Command::new(bin("switchyard-control")).args(&args).output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    // One flipped byte in the middle.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let corrupt = dir.join("corrupt.snap");
    std::fs::write(&corrupt, &bytes).unwrap();
    let (code, err) = restore(&corrupt, &dir.join("r1"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("checksum mismatch") && err.contains("corrupt"), "{err}");
    assert_eq!(err.trim().lines().filter(|l| l.contains("error")).count(), 1, "one error line: {err}");
    assert!(!dir.join("r1").exists(), "nothing written for a refused file");

    // Not a backup at all, and a truncated one.
    std::fs::write(dir.join("junk.snap"), b"hello").unwrap();
    let (code, err) = restore(&dir.join("junk.snap"), &dir.join("r2"));
    assert_eq!(code, Some(1));
    assert!(err.contains("not a Switchyard snapshot file"), "{err}");
    std::fs::write(dir.join("short.snap"), &std::fs::read(&file).unwrap()[..100]).unwrap();
    let (code, err) = restore(&dir.join("short.snap"), &dir.join("r3"));
    assert_eq!(code, Some(1));
    assert!(err.contains("truncated"), "{err}");

    // A good file into a data dir that is in use is refused too.
    let (code, err) = restore(&file, &c.nodes[&1].data_dir);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not empty"), "{err}");
}
