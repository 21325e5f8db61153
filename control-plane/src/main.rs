//! `switchyard-control`: parse flags, bind (or take the socket a service manager passed), run a
//! node until SIGTERM or Ctrl-C.

use std::io::Write;

use clap::{CommandFactory, FromArgMatches};
use listenfd::ListenFd;
use switchyard_control::config::Args;
use switchyard_control::Node;
use tokio_util::sync::CancellationToken;

/// One thread: Raft's core is a single task, and on a small machine cross-thread wake-ups cost
/// more than a second thread gives (measured: 64-client writes/s went up by about 15%).
/// fsyncs run on the log store's own flusher thread.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    // First, before anything else reads the environment: this also clears LISTEN_FDS so it
    // does not leak into anything the node might start.
    let passed = ListenFd::from_env().take_tcp_listener(0);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(parse_args(), passed).await {
        eprintln!("switchyard-control: error: {e:#}");
        std::process::exit(1);
    }
}

/// The flags, with socket activation added to `--listen`'s help (the flags themselves are
/// defined in the library's `config` module).
fn parse_args() -> Args {
    let mut cmd = Args::command().mut_arg("listen", |a| {
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        a.help(format!(
            "{help}. Under systemd socket activation (LISTEN_FDS=1, a listening TCP socket on fd 3) \
             the node serves that socket instead"
        ))
    });
    let matches = cmd.get_matches_mut();
    Args::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

async fn run(mut args: Args, passed: std::io::Result<Option<std::net::TcpListener>>) -> anyhow::Result<()> {
    let restore = args.restore.take();
    let mut config = args.into_config()?;
    if let Some(file) = restore {
        let r = switchyard_control::restore::restore(&config, &file).await?;
        tracing::warn!(
            revision = r.revision,
            from_cluster = r.old_cluster,
            cluster_id = r.new_cluster,
            "restored {} into {}: a NEW cluster {}; start this node without --restore from now on",
            file.display(),
            config.data_dir.display(),
            r.new_cluster
        );
    }
    let listener = match passed.map_err(|e| anyhow::anyhow!("socket passed in LISTEN_FDS: {e}"))? {
        Some(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)?
        }
        None => tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?,
    };
    // The bound address, not the asked-for one: port 0 (or a passed socket) gets a real port,
    // which a node without --initial-cluster or --advertise advertises to its peers.
    config.listen = listener.local_addr()?;
    let listen = config.listen;
    let shutdown = CancellationToken::new();
    let (metrics_at, metrics_default) = (config.metrics_listen, config.metrics_listen_default);
    let node = Node::start(config, listener, shutdown.clone()).await?;
    // Bound once the node has started, so a refusal to start is what a bad data dir reports.
    let metrics = match metrics_at {
        None => None,
        Some(a) => match tokio::net::TcpListener::bind(a).await {
            Ok(l) => Some(l),
            Err(e) if metrics_default => {
                tracing::warn!(
                    "no metrics: the default metrics address {a} is taken ({e}); give each node its own \
                     --metrics-listen (or `off`)"
                );
                None
            }
            Err(e) => return Err(anyhow::anyhow!("cannot listen on {a} for metrics (--metrics-listen): {e}")),
        },
    };
    let mut line = format!("listening grpc={listen}");
    if let Some(m) = metrics {
        let addr = m.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "metrics served on a non-loopback address, without credentials");
        }
        line.push_str(&format!(" metrics={addr}"));
        node.serve_metrics(m);
    }
    // Tests and scripts read the bound addresses from here when they asked for port 0.
    println!("{line}");
    std::io::stdout().flush()?;
    tokio::spawn(async move {
        switchyard_model::signal::wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    node.wait().await?;
    Ok(())
}
