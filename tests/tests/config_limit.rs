//! The config's pools, backends and routes are bounded (`--max-config-bytes`): every proxy
//! receives all of them in one message, so a write that would grow them past the limit is
//! refused with RESOURCE_EXHAUSTED and the reason, and costs nothing else. Writes that shrink
//! the config, repoint a route, or drain a backend still go through at the limit.

use switchyard_model::grpc::with_request_id;
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;

/// A backend of about 3 KiB (a 1,000-byte zone and two 1,000-byte labels), or a plain one.
fn backend(i: usize, big: bool) -> Backend {
    let text = |c: char| if big { std::iter::repeat_n(c, 1000).collect::<String>() } else { String::new() };
    Backend {
        pool: "chat".into(),
        address: format!("10.{}.{}.{}:80", u8::from(big), i / 200, i % 200 + 1),
        weight: 1,
        zone: text('z'),
        labels: if big { [("a".to_string(), text('a')), ("b".to_string(), text('b'))].into() } else { [].into() },
        ..Default::default()
    }
}

/// A pool with a health check whose path is `len` bytes long.
fn pool_with_check(name: &str, len: usize) -> Pool {
    let check = HealthCheck {
        kind: HealthCheckKind::HealthCheckWebsocket as i32,
        path: format!("/{}", "h".repeat(len - 1)),
        interval_ms: 1000,
        timeout_ms: 500,
        rise: 1,
        fall: 1,
        ..Default::default()
    };
    Pool { name: name.into(), health_check: Some(check), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_config_limit_are_refused_and_shrinking_ones_are_not() {
    let _g = serial().await;
    let c = Cluster::start(1, &["--max-config-bytes", "65536"]).await;
    let cli = Cli(c.endpoints());
    // Two pools with names of one length, so repointing the route between them grows nothing.
    cli.ok(&["pool", "create", "chat"]);
    cli.ok(&["pool", "create", "talk"]);
    cli.ok(&["backend", "add", "talk", "10.9.0.1:80"]);
    cli.ok(&["route", "set", "all", "--pool", "chat"]);
    let node = c.nodes.values().next().expect("one node").addr.clone();
    let mut adm = admin(&node);
    let first_try = adm
        .add_backend(with_request_id(AddBackendRequest { backend: Some(backend(0, false)) }, "alice", 1).unwrap())
        .await
        .expect("room for one")
        .into_inner();

    // Big backends go in until the next would pass 64 KiB; that one is refused, saying why.
    // Then plain ones, until less room is left than one of those takes.
    let fill = |big: bool| {
        let mut adm = adm.clone();
        async move {
            let mut added = 0;
            loop {
                match adm.add_backend(AddBackendRequest { backend: Some(backend(added + 1, big)) }).await {
                    Ok(_) => added += 1,
                    Err(e) => break (added, e),
                }
                assert!(added < 2000, "64 KiB must run out before 2,000 backends");
            }
        }
    };
    let (big, refusal) = fill(true).await;
    assert!((15..=22).contains(&big), "{big} backends of about 3 KiB under 64 KiB");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    let msg = refusal.message();
    assert!(msg.contains("limit of 65536") && msg.contains("--max-config-bytes") && msg.contains("Remove"), "{msg}");
    let (plain, refusal) = fill(false).await;
    assert!(plain >= 1, "a 3 KiB backend was refused with room for plain ones");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");

    // Refused, each write changed nothing: a new route (the CLI says so in one line), a new
    // pool, a pool grown by an update.
    let count = || async {
        let t = query(&node).get_topology(ReadRequest::default()).await.expect("topology").into_inner();
        (t.backends.len(), t.pools.len(), t.routes.len())
    };
    let before = count().await;
    assert_eq!(before, (2 + big + plain, 2, 1));
    let (code, _, err) = cli.run(&["route", "set", "more", "--pool", "chat", "--path-prefix", "/more"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("resource exhausted: the config") && err.contains("--max-config-bytes"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let created = adm.create_pool(CreatePoolRequest { pool: Some(pool_with_check("extra", 200)) }).await;
    assert_eq!(created.expect_err("a new pool").code(), Code::ResourceExhausted);
    let update = UpdatePoolRequest {
        pool: Some(pool_with_check("chat", 200)),
        update_mask: vec!["health_check".into()],
        force: false,
    };
    assert_eq!(adm.update_pool(update).await.expect_err("a grown pool").code(), Code::ResourceExhausted);
    assert_eq!(count().await, before);
    // What exists already is answered as such, not as a lack of room.
    let again = adm.add_backend(AddBackendRequest { backend: Some(backend(1, true)) }).await;
    assert_eq!(again.expect_err("a duplicate").code(), Code::AlreadyExists);

    // A retry of a write applied before the limit was reached is answered as the first time.
    let retried = adm
        .add_backend(with_request_id(AddBackendRequest { backend: Some(backend(0, false)) }, "alice", 1).unwrap())
        .await
        .expect("the retry is answered, not refused")
        .into_inner();
    assert_eq!(retried.revision, first_try.revision);

    // At the limit an operator can still repoint the route, drain and remove; removing makes
    // room again.
    cli.ok(&["route", "set", "all", "--pool", "talk"]);
    cli.ok(&["route", "set", "all", "--pool", "chat"]);
    let gone = backend(1, true).address;
    cli.ok(&["backend", "drain", "chat", &gone]);
    cli.ok(&["backend", "remove", "chat", &gone]);
    adm.add_backend(AddBackendRequest { backend: Some(backend(1, true)) }).await.expect("room again after a removal");
}

/// Forty backends of about 3 KiB sent at once through three nodes, against a 64 KiB limit:
/// each, judged alone on the state before any of them, has room. The limit travels in each
/// Raft entry and is checked again as every node applies it, so the config stops short of
/// the limit and the rest are refused. (Judged only where each arrived, all forty went in:
/// about 120 KiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_at_once_never_take_the_config_past_the_limit() {
    use switchyard_control::state::snapshot_len;
    let _g = serial().await;
    let c = Cluster::start(3, &["--max-config-bytes", "65536"]).await;
    let addrs: Vec<String> = c.nodes.values().map(|n| n.addr.clone()).collect();
    let top = switchyard_model::version::MAX_FEATURE_LEVEL;
    eventually("the cluster at the top feature level", std::time::Duration::from_secs(10), || async {
        for a in &addrs {
            if status(a).await.map(|s| s.feature_level) != Some(top) {
                return None;
            }
        }
        Some(())
    })
    .await;
    Cli(c.endpoints()).ok(&["pool", "create", "chat"]);
    let adds = (0..40).map(|i| {
        let mut adm = admin(&addrs[i % addrs.len()]);
        async move { adm.add_backend(AddBackendRequest { backend: Some(backend(i, true)) }).await }
    });
    let answers = futures::future::join_all(adds).await;
    // A write that timed out on a loaded machine may or may not have gone in: the stored
    // config is what is counted.
    let (mut refused, mut timed_out) = (0, 0);
    for e in answers.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(e.code(), Code::ResourceExhausted | Code::Unavailable), "{e:?}");
        refused += usize::from(e.code() == Code::ResourceExhausted);
        timed_out += usize::from(e.code() == Code::Unavailable);
    }
    let t = query(&addrs[0]).get_topology(ReadRequest::default()).await.expect("topology").into_inner();
    let taken = t.backends.len();
    assert!((15..=22).contains(&taken), "{taken} of 40 backends of about 3 KiB under 64 KiB");
    // Every write that is not in the config was refused for the limit (or timed out).
    assert!(refused + timed_out >= 40 - taken, "{refused} refused for the limit, {timed_out} timed out, {taken} taken");
    let size: u64 = t.pools.iter().map(snapshot_len).sum::<u64>()
        + t.backends.iter().map(snapshot_len).sum::<u64>()
        + t.routes.iter().map(snapshot_len).sum::<u64>();
    assert!(size <= 65536, "the config takes {size} bytes, past the limit");
}
