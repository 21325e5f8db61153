//! `switchyard dev`: the whole system in one process on loopback: 3 control-plane nodes,
//! 3 demo echo backends in pool `demo`, and 2 proxies following the control plane.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_control::{Node, NodeConfig};
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::{AddBackendRequest, Backend, CreatePoolRequest, Pool, Route, SetRouteRequest};
use switchyard_proxy::{Proxy, ProxyConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::DevArgs;

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what} (see --help for other ports)"))
}

pub async fn run(args: DevArgs) -> Result<()> {
    let (_tmp, dir) = match args.data_dir {
        Some(d) => (None, d),
        None => {
            let t = tempfile::Builder::new().prefix("switchyard-dev-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let shutdown = CancellationToken::new();
    let addrs: BTreeMap<u64, SocketAddr> =
        (1..=3u64).map(|id| (id, SocketAddr::from(([127, 0, 0, 1], args.base_port + (id as u16 - 1))))).collect();
    // Bind every node's port before any node starts, so the first election finds its peers.
    let mut listeners = Vec::new();
    for addr in addrs.values() {
        listeners.push(bind(*addr, "the control plane").await?);
    }
    let mut nodes = Vec::new();
    for ((id, addr), listener) in addrs.iter().zip(listeners) {
        let mut cfg = NodeConfig::new(*id, *addr, dir.join(format!("node-{id}")));
        cfg.initial_cluster = addrs.iter().map(|(i, a)| (*i, a.to_string())).collect();
        nodes.push(Node::start(cfg, listener, shutdown.child_token()).await?);
    }
    let endpoints: Vec<String> = addrs.values().map(|a| a.to_string()).collect();
    nodes[0]
        .inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "leader elected")
        .await
        .map_err(|e| anyhow::anyhow!("no leader elected: {e}"))?;

    // Demo backends and their pool.
    let mut admin = AdminClient::connect(format!("http://{}", endpoints[0])).await?;
    let pool = Pool { name: "demo".into(), ..Default::default() };
    admin.create_pool(CreatePoolRequest { pool: Some(pool) }).await?;
    let mut backends = Vec::new();
    for i in 1..=3 {
        let l = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "a demo backend").await?;
        let addr = l.local_addr()?.to_string();
        tokio::spawn(crate::demo::echo_server(l, format!("echo-{i}"), true));
        let b = Backend { pool: "demo".into(), address: addr.clone(), weight: 1, ..Default::default() };
        admin.add_backend(AddBackendRequest { backend: Some(b) }).await?;
        backends.push(addr);
    }
    let route = Route { name: "default".into(), pool: "demo".into(), ..Default::default() };
    admin.set_route(SetRouteRequest { route: Some(route) }).await?;

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
        };
        let p = Proxy::start(cfg, bind(listen, "a proxy").await?, bind(admin_addr, "a proxy's admin port").await?)?;
        proxies.push(p);
    }

    println!("Switchyard dev is up: 3 control-plane nodes, 2 proxies, 3 echo backends (pool \"demo\").");
    for p in &proxies {
        println!("  ws://{}/     proxy (status: http://{}/status, metrics: /metrics)", p.listen, p.admin);
    }
    println!("  control plane: {}", endpoints.join(","));
    println!("  backends:      {}", backends.join(", "));
    println!("  data:          {}", dir.display());
    println!();
    println!("Try:");
    println!("  export SWITCHYARD_ENDPOINTS={}", endpoints.join(","));
    println!("  switchyard cluster status");
    println!("  switchyard backend list demo");
    println!("  switchyard proxy list");
    println!("  switchyard watch");
    println!(
        "Connect any WebSocket client to ws://{}/ : the backend greets with its name and echoes.",
        proxies[0].listen
    );
    println!();
    println!("Ctrl-C stops it.");
    wait_for_signal().await;
    eprintln!("stopping");
    for p in proxies {
        p.shutdown(Duration::from_secs(2)).await;
    }
    shutdown.cancel();
    for n in nodes {
        n.wait().await?;
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
