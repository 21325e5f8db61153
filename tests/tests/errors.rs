//! Bad input gets a clear answer and costs nothing else: admin requests, CLI arguments, and
//! data dirs that are foreign or corrupt.

use std::process::Command;
use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err("request should fail");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(needle), "message {:?} should mention {needle:?}", s.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_get_the_right_codes_and_reasons() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let mut a = admin(&addr);
    let pool = |name: &str| CreatePoolRequest { pool: Some(Pool { name: name.into(), ..Default::default() }) };

    expect_code(a.create_pool(pool("Bad Name")).await, Code::InvalidArgument, "pool name");
    expect_code(a.create_pool(CreatePoolRequest { pool: None }).await, Code::InvalidArgument, "pool is required");
    let mut p = Pool { name: "p".into(), hash_key: "body:x".into(), ..Default::default() };
    expect_code(a.create_pool(CreatePoolRequest { pool: Some(p.clone()) }).await, Code::InvalidArgument, "hash key");
    p.hash_key = String::new();
    p.health_check = Some(HealthCheck {
        kind: HealthCheckKind::HealthCheckTcp as i32,
        interval_ms: 10,
        timeout_ms: 5,
        rise: 1,
        fall: 1,
        ..Default::default()
    });
    expect_code(a.create_pool(CreatePoolRequest { pool: Some(p) }).await, Code::InvalidArgument, "interval");

    a.create_pool(pool("chat")).await.unwrap();
    expect_code(a.create_pool(pool("chat")).await, Code::AlreadyExists, "already exists");

    let backend = |pool: &str, addr: &str, weight| AddBackendRequest {
        backend: Some(Backend { pool: pool.into(), address: addr.into(), weight, ..Default::default() }),
    };
    expect_code(a.add_backend(backend("chat", "10.0.0.1", 1)).await, Code::InvalidArgument, "no port");
    expect_code(a.add_backend(backend("chat", "10.0.0.1:99999", 1)).await, Code::InvalidArgument, "port");
    expect_code(a.add_backend(backend("chat", "10.0.0.1:80", 1_000_000)).await, Code::InvalidArgument, "weight");
    expect_code(a.add_backend(backend("nope", "10.0.0.1:80", 1)).await, Code::NotFound, "pool \"nope\" not found");
    a.add_backend(backend("chat", "10.0.0.1:80", 1)).await.unwrap();
    expect_code(a.add_backend(backend("chat", "10.0.0.1:80", 1)).await, Code::AlreadyExists, "already exists");
    expect_code(
        a.set_backend_weight(SetBackendWeightRequest {
            pool: "chat".into(),
            address: "10.0.0.9:80".into(),
            weight: 2,
            force: false,
        })
        .await,
        Code::NotFound,
        "10.0.0.9:80",
    );
    expect_code(
        a.set_backend_state(SetBackendStateRequest {
            pool: "chat".into(),
            address: "10.0.0.1:80".into(),
            state: 42,
            force: false,
        })
        .await,
        Code::InvalidArgument,
        "state",
    );
    expect_code(a.delete_pool(DeletePoolRequest { name: "chat".into() }).await, Code::FailedPrecondition, "backend");

    let route = |name: &str, pool: &str, prefix: &str| SetRouteRequest {
        route: Some(Route { name: name.into(), pool: pool.into(), path_prefix: prefix.into(), ..Default::default() }),
        force: false,
    };
    expect_code(a.set_route(route("r", "chat", "no-slash")).await, Code::InvalidArgument, "must start with '/'");
    expect_code(a.set_route(route("r", "ghost", "/")).await, Code::NotFound, "ghost");
    a.set_route(route("r", "chat", "/ws")).await.unwrap();
    expect_code(a.set_route(route("r2", "chat", "/ws")).await, Code::AlreadyExists, "already matches");
    expect_code(
        a.update_pool(UpdatePoolRequest {
            pool: Some(Pool { name: "chat".into(), ..Default::default() }),
            update_mask: vec!["name".into()],
            force: false,
        })
        .await,
        Code::InvalidArgument,
        "cannot be updated",
    );
    expect_code(
        a.update_settings(UpdateSettingsRequest {
            settings: Some(Settings { max_header_bytes: 1, ..Default::default() }),
            update_mask: vec!["max_header_bytes".into()],
        })
        .await,
        Code::InvalidArgument,
        "max header bytes",
    );
    // Masks and key names are checked before the log: these refusals commit no entry (an
    // unknown settings field used to be refused only when its entry was applied).
    let committed = || async { status(&addr).await.expect("status").committed_index };
    let before = committed().await;
    let settings_mask = |mask: &[&str]| UpdateSettingsRequest {
        settings: Some(Settings::default()),
        update_mask: mask.iter().map(|m| m.to_string()).collect(),
    };
    expect_code(a.update_settings(settings_mask(&["bogus"])).await, Code::InvalidArgument, "cannot be updated");
    let twice = settings_mask(&["idle_timeout_ms", "idle_timeout_ms"]);
    expect_code(a.update_settings(twice).await, Code::InvalidArgument, "named twice");
    let pool_twice = UpdatePoolRequest {
        pool: Some(Pool { name: "chat".into(), ..Default::default() }),
        update_mask: vec!["algorithm".into(), "algorithm".into()],
        force: false,
    };
    expect_code(a.update_pool(pool_twice).await, Code::InvalidArgument, "named twice");
    let long_key = Pool { name: "long".into(), affinity: format!("cookie:{}", "a".repeat(200)), ..Default::default() };
    expect_code(
        a.create_pool(CreatePoolRequest { pool: Some(long_key) }).await,
        Code::InvalidArgument,
        "over the limit",
    );
    assert_eq!(committed().await, before, "a refused request reached the log");

    expect_code(a.promote_node(PromoteNodeRequest { id: 9, force: false }).await, Code::NotFound, "not a member");
    expect_code(a.remove_node(RemoveNodeRequest { id: 1, force: false }).await, Code::FailedPrecondition, "last voter");
    expect_code(
        a.add_node(AddNodeRequest { id: 1, address: "127.0.0.1:1".into() }).await,
        Code::AlreadyExists,
        "already a member",
    );
    expect_code(a.add_node(AddNodeRequest { id: 5, address: "nope".into() }).await, Code::InvalidArgument, "host:port");
    // A second id for a member's address would count one node twice toward a quorum.
    expect_code(
        a.add_node(AddNodeRequest { id: 5, address: addr.clone() }).await,
        Code::FailedPrecondition,
        "is node 1's address",
    );

    // None of that changed anything but what succeeded.
    let t = query(&addr).get_topology(ReadRequest::default()).await.unwrap().into_inner();
    assert_eq!(t.pools.len(), 1);
    assert_eq!(t.backends.len(), 1);
    assert_eq!(t.routes.len(), 1);
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("switchyard")).args(args).output().expect("run switchyard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_error_line(stderr: &str, needle: &str) {
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line, got {stderr:?}");
    assert!(stderr.starts_with("switchyard: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{stderr:?} should mention {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cli_arguments_get_one_line_and_a_nonzero_exit() {
    let _g = serial().await;
    let (code, _, err) = cli(&["pool", "create"]);
    assert_eq!(code, 2);
    one_error_line(&err, "<NAME>");
    let (code, _, err) = cli(&["pool", "create", "x", "--algorithm", "random"]);
    assert_eq!(code, 2);
    one_error_line(&err, "random");
    let (code, _, err) = cli(&["pool", "list", "--output", "yaml"]);
    assert_eq!(code, 2);
    one_error_line(&err, "yaml");
    let (code, _, err) = cli(&["--endpoints", "", "pool", "list"]);
    assert_eq!(code, 1);
    one_error_line(&err, "endpoint");
    let closed = ClosedPort::new();
    let (code, _, err) = cli(&["--endpoints", &closed.addr, "pool", "list"]);
    assert_eq!(code, 1);
    one_error_line(&err, "unavailable");

    // Against a live node: server-side errors are one line too, and global flags go anywhere.
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let (code, _, err) = cli(&["backend", "add", "ghost", "127.0.0.1:9000", "--endpoints", &ep]);
    assert_eq!(code, 1);
    one_error_line(&err, "not found: pool \"ghost\" not found");
    let (code, _, err) = cli(&["--endpoints", &ep, "backend", "add", "ghost", "not-an-address"]);
    assert_eq!(code, 1);
    one_error_line(&err, "invalid argument");
    let (code, out, _) = cli(&[
        "pool",
        "create",
        "chat",
        "--algorithm",
        "consistent-hash",
        "--hash-key",
        "header:X-User",
        "--endpoints",
        &ep,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["algorithm"], "consistent-hash");
    assert_eq!(v["hash_key"], "header:X-User");
    let (code, _, err) = cli(&["--endpoints", &ep, "pool", "update", "chat"]);
    assert_eq!(code, 1);
    one_error_line(&err, "at least one option");
}

/// Starts a node on `dir` and expects it to refuse, with `needle` in its one error line.
fn refuses(id: u64, dir: &std::path::Path, needle: &str) {
    let out = Command::new(bin("switchyard-control"))
        .args(["--id", &id.to_string(), "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run switchyard-control");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"), "a message, not a panic: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_or_corrupt_data_dir_stops_the_node_with_a_message() {
    let _g = serial().await;
    let tmp = tempfile::tempdir().unwrap();

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "not a database").unwrap();
    refuses(1, &foreign, "not a Switchyard data dir");

    // A real node's dir, written to and stopped cleanly.
    let dir = tmp.path().join("node");
    let mut n = ControlNode::spawn(1, reserve(), &dir, &[]);
    let addr = n.addr.clone();
    eventually("node to lead", Duration::from_secs(10), || async {
        (status(&addr).await?.leader_id == 1).then_some(())
    })
    .await;
    admin(&addr)
        .create_pool(CreatePoolRequest { pool: Some(Pool { name: "keep".into(), ..Default::default() }) })
        .await
        .unwrap();
    assert!(n.terminate().success(), "clean exit on SIGTERM");
    // The harness keeps the stopped node's port, but a client still fails at once.
    let t = std::time::Instant::now();
    assert!(status(&addr).await.is_none(), "a stopped node answers nothing");
    assert!(t.elapsed() < Duration::from_secs(2), "failed after {:?}", t.elapsed());

    refuses(2, &dir, "belongs to node 1");

    // Restart recovers the write from disk.
    n.start();
    eventually("restart to recover its data", Duration::from_secs(10), || async {
        let t = query(&addr).get_topology(ReadRequest { consistency: Consistency::Local as i32 }).await.ok()?;
        t.into_inner().pools.iter().any(|p| p.name == "keep").then_some(())
    })
    .await;
    n.kill9();

    // Damage in the log's first record, whole records after it: not a crash's torn write,
    // which would only ever be the tail, so the node stops rather than drop what follows.
    let seg = std::fs::read_dir(dir.join("wal")).unwrap().next().unwrap().unwrap().path();
    let whole = std::fs::read(&seg).unwrap();
    let mut damaged = whole.clone();
    damaged[8..12].copy_from_slice(&[0xa5; 4]);
    std::fs::write(&seg, &damaged).unwrap();
    refuses(1, &dir, "damage, not a write cut short");
    std::fs::write(&seg, &whole).unwrap();

    // Overwrite the database file with garbage.
    let db = dir.join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&db, garbage).unwrap();
    refuses(1, &dir, "corrupt");
}

/// A mistyped `--cache-file` naming someone else's file stops the proxy with the path and
/// leaves the file as it was; a proxy whose control-plane nodes all fail to answer says so;
/// the CLI given a proxy's port says that is what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_keeps_off_a_file_not_its_cache_and_says_when_no_node_answers() {
    let dir = tempfile::tempdir().unwrap();
    let dead = reserve().local_addr().unwrap().to_string(); // closed once the listener drops
    let foreign = dir.path().join("proxy.toml");
    let text = "# someone's config\nlisten = \"0.0.0.0:8080\"\n";
    std::fs::write(&foreign, text).unwrap();
    let args = |cache: &std::path::Path| {
        ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--control-plane", &dead, "--cache-file"]
            .map(String::from)
            .into_iter()
            .chain([cache.display().to_string()])
            .collect::<Vec<_>>()
    };
    let (ok, err) = run_to_exit("switchyard-proxy", &args(&foreign));
    assert!(!ok, "{err}");
    assert!(err.contains(&foreign.display().to_string()) && err.contains("not a Switchyard config cache"), "{err}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), text, "the file is untouched");

    let log = dir.path().join("proxy.log");
    let mut proxy = Proc::default();
    proxy.set(
        Command::new(bin("switchyard-proxy"))
            .args(args(&dir.path().join("cache.pb")))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the proxy"),
    );
    eventually("the proxy to say no node answers", Duration::from_secs(15), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("no control-plane node answers").then_some(())
    })
    .await;

    // The CLI pointed at a proxy's port says what it found there, not that TLS may be needed.
    let p = ProxyProcess::spawn(&dead, &dir.path().join("other.pb"), "p2");
    let (code, _, err) = cli(&["--endpoints", &p.ws, "cluster", "status"]);
    assert_ne!(code, 0);
    assert!(err.contains("answered HTTP/1.1, not gRPC") && !err.contains("TLS"), "{err}");
}
