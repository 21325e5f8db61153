//! `switchyard dev`: a whole control plane in one process on loopback, for trying things out.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use switchyard_control::{Node, NodeConfig};
use tokio_util::sync::CancellationToken;

use crate::args::DevArgs;

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
    let ids = [1u64, 2, 3];
    let addrs: BTreeMap<u64, SocketAddr> =
        ids.iter().map(|id| (*id, SocketAddr::from(([127, 0, 0, 1], args.base_port + (*id as u16 - 1))))).collect();
    let mut nodes = Vec::new();
    for (id, addr) in &addrs {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (use --base-port to pick other ports)"))?;
        let mut cfg = NodeConfig::new(*id, *addr, dir.join(format!("node-{id}")));
        cfg.initial_cluster = addrs.iter().map(|(i, a)| (*i, a.to_string())).collect();
        nodes.push(Node::start(cfg, listener, shutdown.child_token()).await?);
    }
    let endpoints: Vec<String> = addrs.values().map(|a| a.to_string()).collect();
    let leader = nodes[0]
        .inner
        .raft
        .wait(Some(std::time::Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "leader elected")
        .await
        .map_err(|e| anyhow::anyhow!("no leader elected: {e}"))?
        .current_leader;
    println!("Switchyard dev cluster is up: 3 control-plane nodes, leader node {}", leader.unwrap_or(0));
    println!("  data:      {}", dir.display());
    println!("  endpoints: {}", endpoints.join(","));
    println!();
    println!("Try:");
    println!("  export SWITCHYARD_ENDPOINTS={}", endpoints.join(","));
    println!("  switchyard cluster status");
    println!("  switchyard pool create chat --algorithm least-connections");
    println!("  switchyard backend add chat 127.0.0.1:9001");
    println!("  switchyard watch");
    println!();
    println!("Ctrl-C stops it.");
    wait_for_signal().await;
    eprintln!("stopping");
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
