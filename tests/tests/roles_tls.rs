//! Roles on every call with certificates made by `switchyard certs`: each role allowed and
//! refused on a representative call of each service over mTLS, a caller with no certificate
//! and no token refused as unauthenticated, the CLI's one line for each, and the bootstrap
//! token standing in for a certificate.

use std::time::Duration;

use futures::StreamExt;
use switchyard_model::grpc::Channel;
use switchyard_model::grpc::ClientTls;
use switchyard_model::tls::TlsFiles;
use switchyard_proto::raft::raft_client::RaftClient;
use switchyard_proto::raft::Empty;
use switchyard_proto::v1::access_client::AccessClient;
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::query_client::QueryClient;
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err("the call should be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(needle), "{:?} should mention {needle:?}", s.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_role_is_allowed_and_refused_per_service() {
    let _g = serial().await;
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    let parts = [("node", "node"), ("edge", "proxy"), ("ops", "admin"), ("oncall", "operator"), ("dash", "viewer")];
    make_certs(c, &parts);
    let node_flags = cert_flags(c, "node");
    let node_flags: Vec<&str> = node_flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(1, &node_flags, ClientTls::from_files(&cert_files(c, "ops")).unwrap()).await;
    let addr = cluster.nodes[&1].addr.clone();
    let ch = |name: &str| tls_channel(&addr, &ClientTls::from_files(&cert_files(c, name)).unwrap());
    // The CA to verify the node with, and no certificate of its own.
    let ca_only = TlsFiles { ca: Some(c.join("ca.crt")), cert: None, key: None };
    let anon: Channel = tls_channel(&addr, &ClientTls::from_files(&ca_only).unwrap());
    let admin = |name: &str| AdminClient::new(ch(name));
    let pool = |name: &str| CreatePoolRequest { pool: Some(Pool { name: name.into(), ..Default::default() }) };

    // Admin write: admin only.
    for (name, role) in [("dash", "viewer"), ("oncall", "operator"), ("edge", "proxy"), ("node", "node")] {
        let r = admin(name).create_pool(pool("chat")).await;
        refused(r, Code::PermissionDenied, &format!("Admin/CreatePool needs role admin; cert {name} has role {role}"));
    }
    refused(AdminClient::new(anon.clone()).create_pool(pool("chat")).await, Code::Unauthenticated, "no credential");
    admin("ops").create_pool(pool("chat")).await.expect("the admin creates a pool");
    let b = Backend { pool: "chat".into(), address: "10.0.0.1:80".into(), weight: 1, ..Default::default() };
    admin("ops").add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();

    // Admin operator write: drain.
    let drain = || SetBackendStateRequest {
        pool: "chat".into(),
        address: "10.0.0.1:80".into(),
        state: AdminState::Draining as i32,
        force: false,
    };
    refused(admin("dash").set_backend_state(drain()).await, Code::PermissionDenied, "needs role operator or admin");
    admin("oncall").set_backend_state(drain()).await.expect("the operator drains");

    // Admin membership: admin only (past the check, node 99 is not a member).
    refused(
        admin("oncall").remove_node(RemoveNodeRequest { id: 99, force: false }).await,
        Code::PermissionDenied,
        "RemoveNode",
    );
    refused(admin("ops").remove_node(RemoveNodeRequest { id: 99, force: false }).await, Code::NotFound, "not a member");

    // Query read: people, not proxies or nodes.
    for name in ["dash", "oncall", "ops"] {
        QueryClient::new(ch(name)).list_pools(ReadRequest::default()).await.expect("a person reads");
    }
    refused(
        QueryClient::new(ch("edge")).list_pools(ReadRequest::default()).await,
        Code::PermissionDenied,
        "role proxy",
    );
    refused(QueryClient::new(ch("node")).list_pools(ReadRequest::default()).await, Code::PermissionDenied, "role node");
    refused(
        QueryClient::new(anon.clone()).list_pools(ReadRequest::default()).await,
        Code::Unauthenticated,
        "no credential",
    );

    // Discovery: the proxy watches and reports; a viewer may only watch.
    for name in ["edge", "dash"] {
        let mut s = DiscoveryClient::new(ch(name)).watch(WatchRequest::default()).await.expect("a watch").into_inner();
        assert!(matches!(s.next().await, Some(Ok(_))), "{name}'s watch gets its first event");
    }
    let report = || ProxyReport { proxy_id: "edge".into(), ..Default::default() };
    DiscoveryClient::new(ch("edge")).report(report()).await.expect("the proxy reports");
    refused(DiscoveryClient::new(ch("dash")).report(report()).await, Code::PermissionDenied, "needs role proxy");
    refused(DiscoveryClient::new(ch("ops")).report(report()).await, Code::PermissionDenied, "needs role proxy");

    // The peer service: nodes only.
    RaftClient::new(ch("node")).initialized(Empty {}).await.expect("a peer asks");
    for (name, role) in [("ops", "admin"), ("edge", "proxy")] {
        let r = RaftClient::new(ch(name)).initialized(Empty {}).await;
        refused(r, Code::PermissionDenied, &format!("Raft/Initialized needs role node; cert {name} has role {role}"));
    }
    refused(RaftClient::new(anon.clone()).initialized(Empty {}).await, Code::Unauthenticated, "no credential");

    // Credentials: admin only.
    refused(AccessClient::new(ch("oncall")).list_tokens(ListTokensRequest {}).await, Code::PermissionDenied, "admin");

    // The CLI: one line for each refusal.
    let cli = |name: Option<&str>, args: &[&str]| {
        let mut all = vec!["--endpoints".to_string(), addr.clone()];
        match name {
            Some(n) => all.extend(cert_flags(c, n)),
            None => all.extend(["--tls-ca".into(), c.join("ca.crt").display().to_string()]),
        }
        all.extend(args.iter().map(|s| s.to_string()));
        run_cli(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, _, err) = cli(Some("dash"), &["pool", "create", "web"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        "switchyard: permission denied: Admin/CreatePool needs role admin; cert dash has role viewer"
    );
    let (code, _, err) = cli(None, &["pool", "list"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("switchyard: not authenticated: no credential"), "{err}");

    // The bootstrap token stands in for a certificate over TLS.
    let token_file = cluster.nodes[&1].data_dir.join("admin.token");
    eventually("the bootstrap admin.token", Duration::from_secs(20), || async { token_file.exists().then_some(()) })
        .await;
    let tf = token_file.to_str().unwrap();
    let (code, out, err) = cli(None, &["--token-file", tf, "-o", "json", "audit"]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let seen: Vec<(&str, &str)> =
        records.iter().map(|r| (r["who"].as_str().unwrap(), r["method"].as_str().unwrap())).collect();
    assert_eq!(
        seen,
        [
            ("bootstrap", "Access/CreateToken"),
            ("cert ops", "Admin/CreatePool"),
            ("cert ops", "Admin/AddBackend"),
            ("cert oncall", "Admin/SetBackendState"),
        ],
        "{out}"
    );
}
