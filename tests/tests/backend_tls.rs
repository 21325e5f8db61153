//! TLS to backends set per pool, end to end: pools created with the real CLI, a real control
//! plane and proxy process, TLS echo backends with certificates from a test CA (and one from a
//! CA nobody trusts), a plain backend beside them, and the leader's WebSocket health checks
//! speaking wss to the same backends.

use std::time::Duration;

use serde_json::Value;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;

const LONG: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pool_speaks_the_tls_it_names_to_its_backends_and_health_checks_follow() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (rogue, rogue_dir) = TestCa::untrusted(dir.path());
    let (gc, gk, _) = ca.issue(dir.path(), "good", &["127.0.0.1"]);
    // Valid only for a name, not for the address it is reached at.
    let (nc, nk, _) = ca.issue(dir.path(), "named", &["backend.internal"]);
    let (rc, rk, _) = rogue.issue(&rogue_dir, "stranger", &["127.0.0.1"]);
    let good = TlsEchoBackend::start("tls-good", &gc, &gk).await;
    let named = TlsEchoBackend::start("tls-named", &nc, &nk).await;
    let stranger = TlsEchoBackend::start("tls-stranger", &rc, &rk).await;
    let plain = EchoBackend::start("plain-1").await;

    let cluster = Cluster::start(1, &[]).await;
    let eps = cluster.endpoints();
    // A new cluster starts at feature level 1: the first write that needs level 3 (the next
    // one) has the leader ask its members and raise the level on the spot, not refuse it.
    let cli = Cli(eps.clone());
    let ca_file = ca.ca_file.display().to_string();
    // A CA bundle alone turns TLS on, verifying against each backend's host (its IP here).
    cli.ok(&["pool", "create", "secure", "--backend-tls-ca", &ca_file]);
    cli.ok(&["pool", "create", "named", "--backend-tls", "on", "--backend-tls-ca", &ca_file]);
    cli.ok(&["pool", "update", "named", "--backend-tls-server-name", "backend.internal"]);
    cli.ok(&["pool", "create", "rogue", "--backend-tls-ca", &ca_file]);
    cli.ok(&["pool", "create", "plain"]);
    for (pool, backend) in
        [("secure", &good.addr), ("named", &named.addr), ("rogue", &stranger.addr), ("plain", &plain.addr)]
    {
        cli.ok(&["backend", "add", pool, backend]);
        cli.ok(&["route", "set", pool, "--pool", pool, "--host", &format!("{pool}.example")]);
    }

    // What the control plane refuses, each with one clear line and nothing stored.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.display().to_string();
    let refused: [(&[&str], &str); 4] = [
        (&["pool", "create", "x", "--backend-tls", "on"], "CA bundle"),
        (&["pool", "create", "x", "--backend-tls-ca", &garbage], "no PEM certificate"),
        (
            &["pool", "create", "x", "--backend-tls-ca", &ca_file, "--backend-tls-server-name", "bad name!"],
            "not a host name",
        ),
        (&["pool", "create", "x", "--backend-tls", "off", "--backend-tls-ca", &ca_file], "go with --backend-tls on"),
    ];
    for (args, why) in refused {
        let (code, _, err) = cli.run(args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(why), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
    let (code, _, _) = cli.run(&["pool", "get", "x"]);
    assert_ne!(code, 0, "no refused pool was stored");
    let shown: Value = serde_json::from_str(&cli.ok(&["--output", "json", "pool", "get", "named"])).unwrap();
    assert_eq!(shown["backend_tls"]["enabled"], true, "{shown}");
    assert_eq!(shown["backend_tls"]["server_name"], "backend.internal", "{shown}");
    assert_eq!(shown["backend_tls"]["ca_certificates"], 1, "{shown}");

    // The proxy has no backend TLS of its own: each pool's setting is all it follows.
    let proxy = ProxyProcess::spawn(&eps, &dir.path().join("proxy.cache"), "p1");
    for (host, greeting) in
        [("secure.example", "tls-good"), ("named.example", "tls-named"), ("plain.example", "plain-1")]
    {
        let (mut ws, hello) = eventually(&format!("a connection through {host}"), LONG, || async {
            ws_connect(&proxy.ws, "/", &[("host", host)]).await.ok()
        })
        .await;
        assert_eq!(hello, greeting, "{host}");
        echo(&mut ws, Message::text(format!("through {host}"))).await.unwrap();
    }
    // A backend whose certificate the pool's CA did not sign is never spoken to.
    assert_eq!(upgrade_status(&proxy.ws, "rogue.example").await, "HTTP/1.1 502 Bad Gateway");
    assert_eq!(stranger.upgrades(), 0, "the unverified backend saw no WebSocket handshake");

    // The leader's WebSocket health checks verify as the proxies do.
    let health = |pool: &'static str| {
        let out = cli.ok(&["--output", "json", "backend", "list", pool]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["health"].as_str().unwrap_or_default().to_string()
    };
    for pool in ["secure", "named", "rogue"] {
        cli.ok(&[
            "pool",
            "update",
            pool,
            "--health-check",
            "websocket",
            "--health-interval",
            "300ms",
            "--health-timeout",
            "250ms",
            "--health-rise",
            "1",
        ]);
    }
    for (pool, want) in [("secure", "healthy"), ("named", "healthy"), ("rogue", "unhealthy")] {
        eventually(&format!("{pool}'s backend {want}"), LONG, || async { (health(pool) == want).then_some(()) }).await;
    }
    let still_on: Value = serde_json::from_str(&cli.ok(&["--output", "json", "pool", "get", "named"])).unwrap();
    assert_eq!(still_on["backend_tls"]["server_name"], "backend.internal", "a health-check update keeps TLS");

    // Trusting the other CA (only the bundle changes; TLS stays on) heals the pool live.
    let rogue_ca = rogue.ca_file.display().to_string();
    cli.ok(&["pool", "update", "rogue", "--backend-tls-ca", &rogue_ca]);
    eventually("rogue's backend healthy", LONG, || async { (health("rogue") == "healthy").then_some(()) }).await;
    let (mut ws, hello) = eventually("a connection through rogue.example", LONG, || async {
        ws_connect(&proxy.ws, "/", &[("host", "rogue.example")]).await.ok()
    })
    .await;
    assert_eq!(hello, "tls-stranger");
    echo(&mut ws, Message::binary(vec![7u8; 100_000])).await.unwrap();

    // Off: plain TCP to a TLS backend, which then fails its handshake (the proxy answers 502).
    cli.ok(&["pool", "update", "secure", "--backend-tls", "off"]);
    eventually("secure's TLS off on the proxy", LONG, || async {
        (upgrade_status(&proxy.ws, "secure.example").await.starts_with("HTTP/1.1 50")).then_some(())
    })
    .await;
}
