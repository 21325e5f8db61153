//! `switchyard dev`: the whole system in one process on loopback: 3 control-plane nodes,
//! 3 demo echo backends in pool `demo`, and 2 proxies following the control plane.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_control::{Node, NodeConfig};
use switchyard_model::grpc::{self, ChannelOptions, ClientTls};
use switchyard_model::tls::{Role, TlsFiles};
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::{AddBackendRequest, Backend, CreatePoolRequest, Pool, Route, SetRouteRequest};
use switchyard_proxy::tls::certs::CertSources;
use switchyard_proxy::{Listeners, Proxy, ProxyConfig, TlsConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::DevArgs;
use crate::output;

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what} (see --help for other ports)"))
}

pub(super) async fn run(args: DevArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,openraft=error,switchyard_control=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (_tmp, dir) = match args.data_dir {
        Some(d) => (None, d),
        None => {
            let t = tempfile::Builder::new().prefix("switchyard-dev-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let certs = DevCerts::make(&dir.join("certs"))?;
    let shutdown = CancellationToken::new();
    // Bind every node's port before any node starts, so the first election finds its peers.
    // Nodes are told the addresses bound, which are also the ones printed.
    let mut listeners = Vec::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = bind(SocketAddr::from(([127, 0, 0, 1], args.base_port + (id as u16 - 1))), "the control plane").await?;
        addrs.insert(id, l.local_addr()?);
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    let mut metrics_urls = Vec::new();
    for ((id, addr), listener) in addrs.iter().zip(listeners) {
        let mut cfg = NodeConfig::new(*id, *addr, dir.join(format!("node-{id}")));
        cfg.initial_cluster = addrs.iter().map(|(i, a)| (*i, a.to_string())).collect();
        cfg.tls = certs.files(&format!("node-{id}"));
        // Three nodes in one process: each gets its own metrics port, 80 above the first
        // node's gRPC port (7480-7482 with the defaults), so none takes another's.
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], args.base_port + 80 + (*id as u16 - 1)));
        let metrics = bind(metrics_addr, "a node's metrics").await?;
        cfg.metrics_listen = Some(metrics_addr);
        let node = Node::start(cfg, listener, shutdown.child_token()).await?;
        node.serve_metrics(metrics);
        metrics_urls.push(format!("http://{metrics_addr}/metrics"));
        nodes.push(node);
    }
    let endpoints: Vec<String> = addrs.values().map(|a| a.to_string()).collect();
    nodes[0]
        .ctx
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "leader elected")
        .await
        .map_err(|e| anyhow::anyhow!("no leader elected: {e}"))?;

    // Demo backends and their pool.
    let admin_tls = ClientTls::from_files(&certs.files("admin"))?;
    let mut admin = AdminClient::new(grpc::channel(&endpoints[0], &ChannelOptions::CLI, &admin_tls)?);
    let pool = Pool { name: "demo".into(), ..Default::default() };
    admin.create_pool(CreatePoolRequest { pool: Some(pool) }).await?;
    let mut backends = Vec::new();
    for i in 1..=3 {
        let l = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "a demo backend").await?;
        let addr = l.local_addr()?.to_string();
        tokio::spawn(super::demo::echo_server(l, format!("echo-{i}"), true));
        let b = Backend { pool: "demo".into(), address: addr.clone(), weight: 1, ..Default::default() };
        admin.add_backend(AddBackendRequest { backend: Some(b) }).await?;
        backends.push(addr);
    }
    let route = Route { name: "default".into(), pool: "demo".into(), ..Default::default() };
    admin.set_route(SetRouteRequest { route: Some(route), force: false }).await?;

    let mut proxies = Vec::new();
    for i in 0..2u16 {
        let port = args.proxy_port + i * 10;
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], port + 1));
        let cfg = ProxyConfig {
            listen,
            admin: admin_addr,
            control_plane: endpoints.clone(),
            cache_file: Some(dir.join(format!("proxy-{}.cache", i + 1))),
            proxy_id: format!("dev-proxy-{}", i + 1),
            tuning: Default::default(),
            control_tls: ClientTls::from_files(&certs.files("proxy"))?,
            access_log: None,
        };
        // wss beside ws: 8443 and 8453 with the default ports.
        let wss = SocketAddr::from(([127, 0, 0, 1], port + 363));
        let listeners = Listeners {
            ws: Some(bind(listen, "a proxy").await?),
            wss: Some(bind(wss, "a proxy's wss port").await?),
            admin: bind(admin_addr, "a proxy's admin port").await?,
        };
        let tls = TlsConfig { wss_certs: certs.wss(), ..Default::default() };
        proxies.push(Proxy::start_with(cfg, listeners, &tls)?);
    }

    let bound: Vec<_> = proxies.iter().filter_map(|p| Some((p.ws?, p.wss?, p.admin))).collect();
    output::dev_banner(&bound, &endpoints, &backends, &dir, &certs.dir);
    output::note(format!("control-plane metrics: {}", metrics_urls.join(" ")));
    // Every node serves the console; node 1 initialized the cluster, so its data dir holds
    // the first admin token.
    let console = metrics_urls[0].trim_end_matches("metrics");
    output::note(format!(
        "web console: {console} (sign in with the token in {})",
        dir.join("node-1").join("admin.token").display()
    ));
    wait_for_signal().await;
    output::note("stopping");
    for p in proxies {
        p.shutdown(Duration::from_secs(2)).await;
    }
    shutdown.cancel();
    for n in nodes {
        n.wait().await?;
    }
    Ok(())
}

/// A throw-away CA in the dev data dir and a certificate for every part, so `dev` runs the
/// same mTLS as a real cluster. Kept across runs of the same `--data-dir`.
struct DevCerts {
    dir: std::path::PathBuf,
}

impl DevCerts {
    fn make(dir: &std::path::Path) -> Result<DevCerts> {
        if !dir.join("ca.crt").exists() {
            super::certs::init(dir)?;
        }
        let parts = [("node-1", Role::Node), ("node-2", Role::Node), ("node-3", Role::Node)];
        let parts = parts.into_iter().chain([("proxy", Role::Proxy), ("admin", Role::Admin), ("wss", Role::Proxy)]);
        for (name, role) in parts {
            if !dir.join(format!("{name}.crt")).exists() {
                super::certs::issue(dir, role, name, &[])?;
            }
        }
        Ok(DevCerts { dir: dir.to_path_buf() })
    }

    /// The certificate the proxies serve wss with (for localhost and 127.0.0.1).
    fn wss(&self) -> CertSources {
        CertSources { pairs: vec![(self.dir.join("wss.crt"), self.dir.join("wss.key"))], dir: None }
    }

    fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: Some(self.dir.join("ca.crt")),
            cert: Some(self.dir.join(format!("{name}.crt"))),
            key: Some(self.dir.join(format!("{name}.key"))),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
