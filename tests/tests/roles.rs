//! Roles on every call, over bearer tokens on the cleartext loopback setup: each role allowed
//! and refused on a representative call of each service, the right codes and the CLI's one
//! line for each, revoked and expired tokens refused, the bootstrap admin token, and the audit
//! log naming who did what.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use switchyard_proto::raft::raft_client::RaftClient;
use switchyard_proto::raft::RaftPayload;
use switchyard_proto::v1::access_client::AccessClient;
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::{Code, Request};

/// `msg` with `authorization: Bearer <token>`.
fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    r
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err("the call should be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(needle), "{:?} should mention {needle:?}", s.message());
}

/// Runs the CLI against `addr` with extra args: (exit code, stdout, stderr).
fn cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("switchyard"))
        .args(["--endpoints", addr])
        .args(args)
        .env_remove("SWITCHYARD_TOKEN")
        .output()
        .expect("run switchyard");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The bootstrap token file the initializing node wrote, once it is there.
async fn admin_token_file(data_dir: &Path) -> std::path::PathBuf {
    let path = data_dir.join("admin.token");
    eventually("the bootstrap admin.token", Duration::from_secs(20), || async {
        std::fs::read_to_string(&path).ok().filter(|t| t.ends_with('\n')).map(|_| ())
    })
    .await;
    path
}

/// Mints a token through the CLI with the admin token file: (id, secret).
/// Waits until the node at `addr` takes `credential` (`--token X` or `--token-file F`): a
/// token written through the leader is known to a follower once it has applied that entry.
async fn until_taken(addr: &str, credential: [&str; 2]) {
    eventually("the node to take the token", Duration::from_secs(10), || async {
        (cli(addr, &[credential[0], credential[1], "pool", "list"]).0 == 0).then_some(())
    })
    .await;
}

fn create_token(addr: &str, admin_file: &Path, role: &str, ttl: &str, name: &str) -> (String, String) {
    let file = admin_file.to_str().unwrap();
    let args = ["--token-file", file, "-o", "json", "token", "create", "--role", role, "--ttl", ttl, "--name", name];
    let (code, out, err) = cli(addr, &args);
    assert_eq!(code, 0, "token create: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    (v["id"].as_str().unwrap().to_string(), v["secret"].as_str().unwrap().to_string())
}

fn pool(name: &str) -> CreatePoolRequest {
    CreatePoolRequest { pool: Some(Pool { name: name.into(), ..Default::default() }) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_allowed_and_refused_per_service_with_tokens() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let admin_file = admin_token_file(&c.nodes[&1].data_dir).await;
    let (viewer_id, viewer) = create_token(&addr, &admin_file, "viewer", "1h", "dash");
    let (_, operator) = create_token(&addr, &admin_file, "operator", "1h", "oncall");
    let (admin_id, adm) = create_token(&addr, &admin_file, "admin", "1h", "ci");

    // Admin write (admin only).
    let mut a = admin(&addr);
    refused(a.create_pool(bearer(pool("chat"), &viewer)).await, Code::PermissionDenied, "needs role admin");
    refused(a.create_pool(bearer(pool("chat"), &operator)).await, Code::PermissionDenied, "has role operator");
    a.create_pool(bearer(pool("chat"), &adm)).await.expect("admin creates a pool");
    let b = Backend { pool: "chat".into(), address: "10.0.0.1:80".into(), weight: 1, ..Default::default() };
    a.add_backend(bearer(AddBackendRequest { backend: Some(b) }, &adm)).await.unwrap();

    // Admin operator write: drain.
    let drain = || SetBackendStateRequest {
        pool: "chat".into(),
        address: "10.0.0.1:80".into(),
        state: AdminState::Draining as i32,
        force: false,
    };
    refused(a.set_backend_state(bearer(drain(), &viewer)).await, Code::PermissionDenied, "operator or admin");
    a.set_backend_state(bearer(drain(), &operator)).await.expect("an operator drains");

    // Admin membership (admin only): past the check, node 99 is simply not a member.
    let remove = || RemoveNodeRequest { id: 99, force: false };
    refused(a.remove_node(bearer(remove(), &operator)).await, Code::PermissionDenied, "Admin/RemoveNode");
    refused(a.remove_node(bearer(remove(), &adm)).await, Code::NotFound, "not a member");

    // Query read: every person's role.
    let mut q = query(&addr);
    for t in [&viewer, &operator, &adm] {
        let r = q.list_pools(bearer(ReadRequest::default(), t)).await.expect("a read");
        assert_eq!(r.into_inner().pools.len(), 1);
    }

    // Discovery: a viewer may watch; only a proxy may report.
    let mut d = discovery(&addr);
    let mut stream = d.watch(bearer(WatchRequest::default(), &viewer)).await.expect("a viewer watches").into_inner();
    assert!(matches!(stream.next().await, Some(Ok(_))), "the watch's first event");
    let report = || ProxyReport { proxy_id: "p".into(), ..Default::default() };
    refused(d.report(bearer(report(), &viewer)).await, Code::PermissionDenied, "needs role proxy");
    refused(d.report(bearer(report(), &adm)).await, Code::PermissionDenied, "needs role proxy");

    // The peer service: node certificates only; no token can be one.
    let mut peer = RaftClient::new(channel(&addr));
    let vote = || RaftPayload { data: vec![1, 2, 3] };
    refused(peer.vote(bearer(vote(), &adm)).await, Code::PermissionDenied, "Raft/Vote needs role node");
    refused(peer.forward(bearer(vote(), &operator)).await, Code::PermissionDenied, "Raft/Forward needs role node");

    // Credentials: admin only.
    let mut acc = AccessClient::new(channel(&addr));
    refused(acc.list_tokens(bearer(ListTokensRequest {}, &operator)).await, Code::PermissionDenied, "needs role admin");
    let listed = acc.list_tokens(bearer(ListTokensRequest {}, &adm)).await.unwrap().into_inner().tokens;
    assert_eq!(listed.len(), 4, "bootstrap + three: {listed:?}");

    // The CLI says each refusal in one line.
    let (code, _, err) = cli(&addr, &["--token", &viewer, "pool", "create", "web"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("switchyard: permission denied: Admin/CreatePool needs role admin"), "{err:?}");
    let unknown = format!("sy_{}", "0".repeat(64));
    let (code, _, err) = cli(&addr, &["--token", &unknown, "pool", "list"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim_end(), "switchyard: not authenticated: unknown or revoked token");

    // A stream outlives its call's check: the viewer's watch, open all along, ends once its
    // token is revoked.
    let (code, _, err) = cli(&addr, &["--token", &adm, "token", "revoke", &viewer_id]);
    assert_eq!(code, 0, "{err}");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ends within seconds of the revocation");
    let status = ended.expect("it ends with a status").unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    assert!(status.message().contains(&format!("token {viewer_id} was revoked")), "{status}");

    // Revoked: refused from then on.
    let (code, out, err) = cli(&addr, &["--token", &adm, "token", "revoke", &admin_id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("token {admin_id} revoked")), "{out}");
    refused(a.create_pool(bearer(pool("web"), &adm)).await, Code::Unauthenticated, "unknown or revoked");
    let (code, _, err) = cli(&addr, &["--token", &adm, "pool", "list"]);
    assert_eq!((code, err.trim_end()), (1, "switchyard: not authenticated: unknown or revoked token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused_and_listings_never_show_secrets() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let addr = c.nodes[&1].addr.clone();
    let admin_file = admin_token_file(&c.nodes[&1].data_dir).await;
    let (short_id, short) = create_token(&addr, &admin_file, "admin", "4s", "brief");
    let mut q = query(&addr);
    // Valid at first (created with seconds to live), then refused once they have passed.
    q.list_pools(bearer(ReadRequest::default(), &short)).await.expect("a token valid at first");
    let s = eventually("the short token to expire", Duration::from_secs(20), || {
        let mut q = q.clone();
        let short = short.clone();
        async move { q.list_pools(bearer(ReadRequest::default(), &short)).await.err() }
    })
    .await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(s.message(), format!("token {short_id} has expired"));

    // Listings show ids, names, roles and expiry: never a secret or a hash.
    let file = admin_file.to_str().unwrap();
    let (code, out, err) = cli(&addr, &["--token-file", file, "-o", "json", "token", "list"]);
    assert_eq!(code, 0, "{err}");
    let admin_secret = std::fs::read_to_string(&admin_file).unwrap();
    assert!(!out.contains(&short) && !out.contains(admin_secret.trim()), "{out}");
    let tokens: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for t in &tokens {
        let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["created_ms", "created_revision", "expires_ms", "id", "name", "role"], "{t}");
    }
    let bootstrap = tokens.iter().find(|t| t["name"] == "bootstrap-admin").expect("the bootstrap token");
    assert_eq!(bootstrap["role"], "admin");
    assert!(bootstrap["expires_ms"].is_null(), "the bootstrap token does not expire: {bootstrap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initializing_node_writes_an_owner_only_admin_token_and_the_audit_log_says_who_did_what() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let addr = c.nodes[&2].addr.clone();
    // Node 1 (the lowest id) initializes the cluster; only it writes the token.
    let admin_file = admin_token_file(&c.nodes[&1].data_dir).await;
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    for id in [2, 3] {
        assert!(!c.nodes[&id].data_dir.join("admin.token").exists(), "node {id} wrote a token too");
    }
    let log = std::fs::read_to_string(c.nodes[&1].data_dir.with_extension("log")).unwrap();
    let secret = std::fs::read_to_string(&admin_file).unwrap().trim().to_string();
    assert!(log.contains("admin.token") && !log.contains(&secret), "the log names the file, not the token");

    // The token works on any node (a follower here), once it has applied it.
    let file = admin_file.to_str().unwrap();
    until_taken(&addr, ["--token-file", file]).await;
    let (op_id, operator) = create_token(&addr, &admin_file, "operator", "1h", "oncall");
    until_taken(&addr, ["--token", &operator]).await;
    assert_eq!(cli(&addr, &["--token-file", file, "pool", "create", "chat"]).0, 0);
    assert_eq!(cli(&addr, &["--token-file", file, "backend", "add", "chat", "10.0.0.1:80"]).0, 0);
    assert_eq!(cli(&addr, &["--token", &operator, "backend", "drain", "chat", "10.0.0.1:80"]).0, 0);
    // Without a token, the cleartext loopback node trusts the caller as admin, and says so.
    assert_eq!(cli(&addr, &["route", "set", "all", "--pool", "chat"]).0, 0);
    // A refused write is not audited.
    assert_eq!(cli(&addr, &["--token", &operator, "pool", "delete", "chat"]).0, 1);
    // Membership changes are audited too, each in the entry after its own.
    assert_eq!(cli(&addr, &["--token-file", file, "cluster", "add-node", "9", "127.0.0.1:9"]).0, 0);
    assert_eq!(cli(&addr, &["--token-file", file, "cluster", "remove-node", "9"]).0, 0);

    let (code, out, err) = cli(&addr, &["--token-file", file, "-o", "json", "audit"]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let seen: Vec<(String, String)> =
        records.iter().map(|r| (r["who"].as_str().unwrap().into(), r["method"].as_str().unwrap().into())).collect();
    let bootstrap_id = {
        let (_, out, _) = cli(&addr, &["--token-file", file, "-o", "json", "token", "list"]);
        let ts: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        ts.iter().find(|t| t["name"] == "bootstrap-admin").unwrap()["id"].as_str().unwrap().to_string()
    };
    let by_admin = format!("token {bootstrap_id} (bootstrap-admin)");
    let want = [
        ("bootstrap".to_string(), "Access/CreateToken".to_string()),
        (by_admin.clone(), "Access/CreateToken".into()),
        (by_admin.clone(), "Admin/CreatePool".into()),
        (by_admin.clone(), "Admin/AddBackend".into()),
        (format!("token {op_id} (oncall)"), "Admin/SetBackendState".into()),
        ("loopback".into(), "Admin/SetRoute".into()),
        (by_admin.clone(), "Admin/AddNode".into()),
        (by_admin.clone(), "Admin/RemoveNode".into()),
    ];
    assert_eq!(seen, want, "{out}");
    assert!(!out.contains(&secret) && !out.contains(&operator), "no secret in the audit log");
    let drained = &records[4];
    assert_eq!(drained["summary"], "backend 10.0.0.1:80 in pool chat: draining");
    assert_eq!(drained["role"], "operator");
    assert!(drained["at_ms"].as_u64().unwrap() > 0 && drained["revision"].as_u64().unwrap() > 0);

    // --since: records at that revision or later.
    let since = records[4]["revision"].as_u64().unwrap().to_string();
    let (_, out, _) = cli(&addr, &["--token-file", file, "-o", "json", "audit", "--since", &since]);
    let later: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(later.len(), 4, "{out}");
    let added = records[6]["summary"].as_str().unwrap();
    assert!(added.starts_with("node 9 at 127.0.0.1:9 (membership entry "), "{out}");
    // The table names the columns.
    let (_, out, _) = cli(&addr, &["--token-file", file, "audit"]);
    assert!(out.starts_with("REVISION") && out.contains("loopback"), "{out}");
}
