//! The config's pools, backends and routes are bounded (`--max-config-bytes`): every proxy
//! receives all of them in one message, so a write that would grow them past the limit is
//! refused with RESOURCE_EXHAUSTED and the reason, and costs nothing else. Writes that shrink
//! the config, or drain a backend, still go through at the limit.

use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;

/// A backend of about 3 KiB: a 1,000-byte zone and two 1,000-byte labels.
fn big(i: usize) -> Backend {
    let text = |c: char| std::iter::repeat_n(c, 1000).collect::<String>();
    Backend {
        pool: "chat".into(),
        address: format!("10.0.{}.{}:80", i / 200, i % 200 + 1),
        weight: 1,
        zone: text('z'),
        labels: [("a".to_string(), text('a')), ("b".to_string(), text('b'))].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_config_limit_are_refused_and_shrinking_ones_are_not() {
    let _g = serial().await;
    let c = Cluster::start(1, &["--max-config-bytes", "65536"]).await;
    let eps = c.endpoints();
    let cli = |args: &[&str]| {
        let mut all = vec!["--endpoints", eps.as_str()];
        all.extend(args);
        run_cli(&all)
    };
    let ok = |args: &[&str]| {
        let (code, out, err) = cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    ok(&["pool", "create", "chat"]);
    ok(&["route", "set", "all", "--pool", "chat"]);
    let node = c.nodes.values().next().expect("one node").addr.clone();
    let mut adm = admin(&node);

    // Backends go in until the next one would pass 64 KiB; that one is refused, saying why.
    let mut added = 0;
    let refusal = loop {
        match adm.add_backend(AddBackendRequest { backend: Some(big(added)) }).await {
            Ok(_) => added += 1,
            Err(e) => break e,
        }
        assert!(added < 100, "64 KiB of 3 KiB backends must run out well before 100");
    };
    assert!((15..=22).contains(&added), "{added} backends of about 3 KiB under 64 KiB");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    let msg = refusal.message();
    assert!(msg.contains("limit of 65536") && msg.contains("--max-config-bytes") && msg.contains("Remove"), "{msg}");

    // Refused, it changed nothing; a pool or a route is refused the same way, and the CLI
    // says so in one line.
    let count = || async {
        let t = query(&node).get_topology(ReadRequest::default()).await.expect("topology").into_inner();
        (t.backends.len(), t.pools.len(), t.routes.len())
    };
    assert_eq!(count().await, (added, 1, 1));
    let zone = "z".repeat(1000);
    let (code, _, err) =
        cli(&["backend", "add", "chat", "10.9.9.9:80", "--zone", &zone, "--label", &format!("x={zone}")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--max-config-bytes") && err.trim().lines().count() == 1, "{err}");
    // Routes of about 1 KiB: less than one big backend's room is left, so at most three fit.
    let long_path = format!("/{}", "p".repeat(1000));
    let mut routed = 0;
    for (name, host) in (0..8).map(|i| (format!("r{i}"), format!("h{i}.example.com"))) {
        let (code, _, err) =
            cli(&["route", "set", &name, "--pool", "chat", "--host", &host, "--path-prefix", &long_path]);
        if code == 0 {
            routed += 1;
        } else {
            assert!(err.contains("--max-config-bytes"), "{err}");
        }
    }
    assert!(routed <= 3, "{routed} routes of 1 KiB fit in less than 3 KiB");
    assert_eq!(count().await, (added, 1, 1 + routed));

    // At the limit, an operator can still drain, reweigh and remove; removing makes room.
    let first = big(0).address;
    ok(&["backend", "drain", "chat", &first]);
    ok(&["backend", "set-weight", "chat", &big(1).address, "5"]);
    ok(&["backend", "remove", "chat", &first]);
    adm.add_backend(AddBackendRequest { backend: Some(big(500)) }).await.expect("room again after a removal");
}
