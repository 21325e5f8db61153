//! `switchyard-proxy`: parse flags, bind, run until SIGTERM, then close connections over
//! the grace period and exit 0.

use clap::Parser;
use switchyard_proxy::config::Args;
use switchyard_proxy::Proxy;

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
    let cfg = args.into_config()?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let admin = tokio::net::TcpListener::bind(cfg.admin)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", cfg.admin))?;
    let grace = cfg.tuning.shutdown_grace;
    let proxy = Proxy::start(cfg, listener, admin)?;
    // Tests and scripts read the bound addresses from here when they asked for port 0.
    println!("listening ws={} admin={}", proxy.listen, proxy.admin);
    switchyard_model::signal::wait_for_signal().await;
    tracing::info!("shutting down");
    proxy.shutdown(grace).await;
    Ok(())
}
