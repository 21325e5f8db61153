//! `switchyard-proxy`: parse flags, bind, run until SIGTERM, then close connections over
//! the grace period and exit 0.
//!
//! A restart without refusing anyone: a supervisor that holds the ws listening socket (systemd
//! socket activation, `LISTEN_FDS=1` with the socket on fd 3) passes it to the new process
//! before it sends the old one SIGTERM. Both accept from the one socket until the old one
//! stops; nothing queued on it is lost, unlike two processes each binding with SO_REUSEPORT.

use clap::Parser;
use switchyard_proxy::config::Args;
use switchyard_proxy::{Listeners, Proxy};

#[tokio::main]
async fn main() {
    // First, before anything else reads the environment: this also clears LISTEN_FDS so it
    // does not leak into anything the proxy might start.
    let passed = listenfd::ListenFd::from_env().take_tcp_listener(0);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse(), passed).await {
        eprintln!("switchyard-proxy: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args, passed: std::io::Result<Option<std::net::TcpListener>>) -> anyhow::Result<()> {
    let (mut cfg, tls) = args.into_config()?;
    let passed = passed.map_err(|e| anyhow::anyhow!("socket passed in LISTEN_FDS: {e}"))?;
    // Handed a socket, this process may be replacing one that still holds the wss and admin
    // ports: those it binds beside it (SO_REUSEPORT, which the one it replaces set too, and
    // only a process of the same user can) rather than fail to start. The wss port is then
    // served by both until the old one stops; unlike the handed-over ws socket, a wss
    // connection still queued on the old process's socket when it closes is reset.
    let handed_over = passed.is_some();
    let bind = |addr: std::net::SocketAddr, what: &'static str| async move {
        let bound = if handed_over { shared_bind(addr) } else { tokio::net::TcpListener::bind(addr).await };
        bound.map_err(|e| anyhow::anyhow!("cannot listen on {addr}{what}: {e}"))
    };
    let ws = match passed {
        // The supervisor's socket serves as the ws listener, whatever --listen says. It may
        // still be served by the process this one replaces: accept once there is a config.
        Some(l) => {
            cfg.tuning.accept_when_configured = Some(std::time::Duration::from_secs(10));
            l.set_nonblocking(true)?;
            Some(tokio::net::TcpListener::from_std(l)?)
        }
        None if tls.no_ws => None,
        None => Some(bind(cfg.listen, "").await?),
    };
    let wss = match tls.wss_listen {
        Some(a) => Some(bind(a, " (wss)").await?),
        None => None,
    };
    let admin = bind(cfg.admin, " (admin)").await?;
    let grace = cfg.tuning.shutdown_grace;
    let proxy = Proxy::start_with(cfg, Listeners { ws, wss, admin }, &tls)?;
    // Tests and scripts read the bound addresses from here when they asked for port 0:
    // `ws=` and `wss=` for the listeners there are, then `admin=`.
    let mut line = String::from("listening");
    if let Some(a) = proxy.ws {
        line.push_str(&format!(" ws={a}"));
    }
    if let Some(a) = proxy.wss {
        line.push_str(&format!(" wss={a}"));
    }
    println!("{line} admin={}", proxy.admin);
    switchyard_model::signal::wait_for_signal().await;
    tracing::info!("shutting down");
    proxy.shutdown(grace).await;
    Ok(())
}

/// A listening socket on `addr` that other processes of this user may bind too.
fn shared_bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}
