//! `switchyard-proxy`: parse flags, bind, run until SIGTERM, then close connections over
//! the grace period and exit 0.

use clap::Parser;
use switchyard_proxy::config::Args;
use switchyard_proxy::{Listeners, Proxy};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("switchyard-proxy: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (cfg, tls) = args.into_config()?;
    let bind = |addr: std::net::SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}{what}: {e}"))
    };
    let ws = if tls.no_ws { None } else { Some(bind(cfg.listen, "").await?) };
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
