//! mTLS between every part, for real: a CA and certificates made by `switchyard certs`, three
//! nodes serving TLS only, the CLI and a proxy with their own certificates, and the ways a
//! wrong setup fails: a cleartext client, an `https://` endpoint without a CA, a part given a
//! certificate of another role, a node without TLS on a routable address.

use std::time::Duration;

use switchyard_model::grpc::ClientTls;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::{watch_event, WatchRequest};
use switchyard_tests::*;

fn eps_first(eps: &str) -> String {
    eps.split(',').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_mtls_serves_its_cli_and_proxy_and_refuses_cleartext() {
    let _g = serial().await;
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    make_certs(c, &[("node", "node"), ("edge", "proxy"), ("ops", "admin")]);
    let node_flags = cert_flags(c, "node");
    let node_flags: Vec<&str> = node_flags.iter().map(String::as_str).collect();
    let admin_tls = ClientTls::from_files(&cert_files(c, "ops")).unwrap();
    let cluster = Cluster::start_with(3, &node_flags, admin_tls.clone()).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let s = status_with(&cluster.nodes[&leader].addr, &admin_tls).await.unwrap();
    assert_eq!(s.security, "mtls");

    // The CLI, with the admin's certificate, configures a pool behind the proxy.
    let backend = EchoBackend::start("tls-b1").await;
    let eps = cluster.endpoints();
    let admin_flags = cert_flags(c, "ops");
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = vec!["--endpoints", &eps];
        all.extend(admin_flags.iter().map(String::as_str));
        all.extend(args);
        run_cli(&all)
    };
    for args in [
        vec!["pool", "create", "chat"],
        vec!["backend", "add", "chat", &backend.addr],
        vec!["route", "set", "all", "--pool", "chat"],
    ] {
        let (code, _, err) = cli(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let (code, out, err) = cli(&["cluster", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("transport mtls"), "{out}");

    // A proxy with its own certificate follows the cluster over TLS and routes.
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::spawn_with(&eps, &dir.path().join("p.cache"), "edge", &cert_flags(c, "edge"));
    eventually("the proxy to route over its TLS-fed config", Duration::from_secs(15), || async {
        ws_connect(&proxy.ws, "/", &[]).await.ok().filter(|(_, hello)| hello == "tls-b1")
    })
    .await;

    // The affinity hashing secret reaches proxies' watches, never an admin's.
    let proxy_tls = ClientTls::from_files(&cert_files(c, "edge")).unwrap();
    let secret = affinity_secret_with(&eps_first(&eps), &proxy_tls).await;
    assert!(secret.is_set());
    let req = WatchRequest { proxy_id: String::new(), from_revision: 0 };
    let mut w = DiscoveryClient::new(tls_channel(&eps_first(&eps), &admin_tls)).watch(req).await.unwrap().into_inner();
    match w.message().await.unwrap().and_then(|e| e.kind) {
        Some(watch_event::Kind::Snapshot(t)) => {
            assert!(t.affinity_secret.is_empty(), "an admin's watch got the secret")
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }

    // A cleartext client fails at once, and is told why.
    let (code, _, err) = run_cli(&["--endpoints", &eps, "cluster", "status"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("the node requires TLS: pass --tls-ca"), "{err}");
    // An https:// endpoint is never tried in cleartext.
    let https = format!("https://{}", cluster.nodes[&leader].addr);
    let (code, _, err) = run_cli(&["--endpoints", &https, "cluster", "status"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs the cluster CA (--tls-ca)"), "{err}");
    // Nor does the test's own cleartext channel get an answer.
    assert!(status(&cluster.nodes[&leader].addr).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_refuse_certificates_of_another_role_and_cleartext_off_loopback() {
    let _g = serial().await;
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    make_certs(c, &[("viewer-1", "viewer"), ("node", "node")]);
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["--id".to_string(), "1".into(), "--listen".into(), "127.0.0.1:0".into()];
    args.extend(["--data-dir".into(), data.path().join("n").display().to_string()]);

    let mut viewer = args.clone();
    viewer.extend(cert_flags(c, "viewer-1"));
    let (ok, err) = run_to_exit("switchyard-control", &viewer);
    assert!(!ok);
    assert!(err.contains("a node needs one issued with --role node") && err.contains("viewer"), "{err}");

    let mut half = args.clone();
    half.extend(["--tls-ca".into(), c.join("ca.crt").display().to_string()]);
    let (ok, err) = run_to_exit("switchyard-control", &half);
    assert!(!ok);
    assert!(err.contains("all three of --tls-ca, --tls-cert and --tls-key"), "{err}");

    let mut open = args.clone();
    open[3] = "0.0.0.0:0".into();
    let (ok, err) = run_to_exit("switchyard-control", &open);
    assert!(!ok);
    assert!(err.contains("not a loopback address") && err.contains("--insecure"), "{err}");

    let mut proxy = vec!["--listen".to_string(), "127.0.0.1:0".into(), "--admin".into(), "127.0.0.1:0".into()];
    proxy.extend(cert_flags(c, "node"));
    let (ok, err) = run_to_exit("switchyard-proxy", &proxy);
    assert!(!ok);
    assert!(err.contains("a proxy needs one issued with --role proxy"), "{err}");
}

/// A server holding a certificate the cluster CA issued to another role (a viewer's key on a
/// host a node is reached by) is not taken for a node: the CLI refuses it before it sends a
/// call, and says why, in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_node_certificate_is_not_taken_for_a_node() {
    let _g = serial().await;
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    make_certs(c, &[("dash", "viewer"), ("ops", "admin")]);
    switchyard_model::tls::install_provider();
    let files = cert_files(c, "dash");
    let (chain, key) = (
        switchyard_model::tls::load_certs(files.cert.as_ref().unwrap()).unwrap(),
        switchyard_model::tls::load_key(files.key.as_ref().unwrap()).unwrap(),
    );
    let mut cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = handshakes.clone();
    let rogue = tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                if acceptor.accept(sock).await.is_ok() {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    let mut args = vec!["--endpoints", &addr];
    let admin = cert_flags(c, "ops");
    args.extend(admin.iter().map(String::as_str));
    args.extend(["cluster", "status"]);
    let (code, _, err) = run_cli(&args);
    rogue.abort();
    assert_ne!(code, 0);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("issued to viewer \"dash\", not to a control-plane node"), "{err}");
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 0, "no handshake completed with it");
}
