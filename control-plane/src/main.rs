//! `switchyard-control`: parse flags, bind, run a node until SIGTERM or Ctrl-C.

use clap::Parser;
use switchyard_control::config::Args;
use switchyard_control::Node;
use tokio_util::sync::CancellationToken;

/// One thread: Raft's core is a single task, and on a small machine cross-thread wake-ups cost
/// more than a second thread gives (measured: 64-client writes/s went up by about 15%).
/// fsyncs run on the log store's own flusher thread.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("switchyard-control: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let shutdown = CancellationToken::new();
    let node = Node::start(config, listener, shutdown.clone()).await?;
    tokio::spawn(async move {
        switchyard_model::signal::wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    node.wait().await?;
    Ok(())
}
