//! `ws-bench`: WebSocket load against any target (Switchyard's proxy, NGINX, HAProxy or the
//! backend directly), and config-propagation timing for Switchyard. Prints one JSON line per
//! run; `bench/proxy.sh` puts them side by side.

mod secret;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod propagation;
mod wstls;

use propagation::{http_get, propagation};
use wstls::Ws;

#[derive(Parser)]
struct Args {
    /// wss: the CA bundle to verify the target against (connections are ws without it).
    #[arg(long, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// wss: the name to send as SNI and verify.
    #[arg(long, global = true, default_value = "localhost")]
    sni: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo round trips on `conns` connections for `seconds`: as fast as each connection can
    /// (one in flight), or at a fixed total rate.
    Throughput {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Messages per second through the target, counted as in `messages_per_sec` (an echo
        /// is two): each connection sends on its own fixed schedule, the connections' schedules
        /// spread over the period, and a late echo does not delay the next send's slot.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Open, then close, connections as fast as `concurrency` clients can.
    Handshakes {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Open `conns` connections, print "ready", hold them `hold` seconds.
    Idle {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 9000)]
        conns: usize,
        #[arg(long, default_value_t = 30)]
        hold: u64,
    },
    /// New sessions, each with a fresh affinity key, opened through the proxies in turn; then
    /// waits until every binding is committed.
    Sessions {
        #[arg(long, value_delimiter = ',')]
        targets: Vec<String>,
        #[arg(long)]
        control_plane: String,
        #[arg(long, default_value = "chat")]
        pool: String,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Open each session with a plain HTTP GET carrying this Host (as a long-polling
        /// client's first request does), on kept-alive connections, instead of a WebSocket
        /// handshake on a new connection.
        #[arg(long)]
        http_host: Option<String>,
    },
    /// From a new session's handshake to its binding being applied on every proxy.
    Visibility {
        /// WebSocket address of the proxy the sessions go through.
        #[arg(long)]
        target: String,
        /// Every proxy's admin address.
        #[arg(long, value_delimiter = ',')]
        proxies: Vec<String>,
        #[arg(long)]
        control_plane: String,
        #[arg(long, default_value = "chat")]
        pool: String,
        #[arg(long, default_value_t = 500)]
        sessions: usize,
    },
    /// Binding reports straight to the control plane, as many proxies would send them.
    Reports {
        #[arg(long, value_delimiter = ',')]
        control_plane: Vec<String>,
        #[arg(long, default_value = "chat")]
        pool: String,
        #[arg(long)]
        backend: String,
        #[arg(long, default_value_t = 8)]
        reporters: usize,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Timing from a write's acknowledgement to its application on every proxy.
    Propagation {
        /// Control-plane node to write through.
        #[arg(long)]
        control_plane: String,
        /// Proxies' admin addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        proxies: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        writes: usize,
        /// Pool and backend whose weight the writes toggle.
        #[arg(long)]
        pool: String,
        #[arg(long)]
        backend: String,
    },
}

async fn connect(target: &str) -> Result<Ws> {
    wstls::connect(target, None).await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let size = match &args.cmd {
        Cmd::Throughput { size, .. } => *size,
        _ => 0,
    };
    wstls::init(args.tls_ca, &args.sni, size)?;
    match args.cmd {
        Cmd::Throughput { target, conns, seconds, size, rate } => throughput(&target, conns, seconds, size, rate).await,
        Cmd::Handshakes { target, concurrency, seconds } => handshakes(&target, concurrency, seconds).await,
        Cmd::Idle { target, conns, hold } => idle(&target, conns, hold).await,
        Cmd::Propagation { control_plane, proxies, writes, pool, backend } => {
            propagation(&control_plane, &proxies, writes, &pool, &backend).await
        }
        Cmd::Sessions { targets, control_plane, pool, concurrency, seconds, http_host } => {
            sessions(&targets, &control_plane, &pool, concurrency, seconds, http_host.as_deref()).await
        }
        Cmd::Visibility { target, proxies, control_plane, pool, sessions } => {
            visibility(&target, &proxies, &control_plane, &pool, sessions).await
        }
        Cmd::Reports { control_plane, pool, backend, reporters, batch, seconds } => {
            reports(&control_plane, &pool, &backend, reporters, batch, seconds).await
        }
    }
}

async fn throughput(target: &str, conns: usize, seconds: u64, size: usize, rate: Option<f64>) -> Result<()> {
    if let Some(r) = rate {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be a positive number of messages per second");
    }
    let mut wss = Vec::new();
    for _ in 0..conns {
        wss.push(connect(target).await?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let payload = vec![b'x'; size];
    // Each connection's period between sends: `rate` counts both directions of an echo.
    let period = rate.map(|r| Duration::from_secs_f64(conns as f64 * 2.0 / r));
    let tasks: Vec<_> = wss
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let payload = payload.clone();
            let mut ticks = period.map(|p| {
                let first = tokio::time::Instant::from_std(start) + p.mul_f64(i as f64 / conns as f64);
                let mut t = tokio::time::interval_at(first, p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                loop {
                    if let Some(t) = ticks.as_mut() {
                        t.tick().await;
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    if ws.send(Message::binary(payload.clone())).await.is_err() {
                        break;
                    }
                    match ws.next().await {
                        Some(Ok(_)) => h.record(t.elapsed().as_micros() as u64).expect("record"),
                        _ => break,
                    }
                }
                let _ = ws.close(None).await;
                h
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"phase": "throughput", "target": target, "conns": conns, "size": size, "rate": rate,
            "round_trips": all.len(), "round_trips_per_sec": all.len() as f64 / secs,
            "messages_per_sec": 2.0 * all.len() as f64 / secs,
            "p50_ms": all.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": all.value_at_quantile(0.99) as f64 / 1000.0})
    );
    Ok(())
}

async fn handshakes(target: &str, concurrency: usize, seconds: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (t, ok, failed) = (target.to_string(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match connect(&t).await {
                        Ok(mut ws) => {
                            ok.fetch_add(1, Relaxed);
                            let _ = ws.close(None).await;
                            // Wait for the server's side of the close so sockets do not pile up.
                            while let Some(Ok(_)) = ws.next().await {}
                        }
                        Err(_) => {
                            failed.fetch_add(1, Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"phase": "handshakes", "target": target, "concurrency": concurrency,
            "handshakes": ok.load(Relaxed), "failed": failed.load(Relaxed), "per_sec": ok.load(Relaxed) as f64 / secs})
    );
    Ok(())
}

async fn idle(target: &str, conns: usize, hold: u64) -> Result<()> {
    let mut wss = Vec::with_capacity(conns);
    let mut pending = futures::stream::iter((0..conns).map(|_| connect(target))).buffer_unordered(64);
    while let Some(ws) = pending.next().await {
        wss.push(ws?);
    }
    println!("{}", json!({"phase": "idle", "target": target, "open": wss.len()}));
    println!("ready");
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(wss);
    Ok(())
}

async fn connect_with(target: &str, header: (&str, &str)) -> Result<Ws> {
    wstls::connect(target, Some(header)).await
}

/// Bindings on one node (all pools; the benches use one).
async fn session_count(cp: &str, _pool: &str) -> Result<usize> {
    use switchyard_proto::v1::{query_client::QueryClient, ClusterStatusRequest};
    let mut q = QueryClient::connect(format!("http://{cp}")).await?;
    Ok(q.cluster_status(ClusterStatusRequest {}).await?.into_inner().session_count as usize)
}

async fn sessions(
    targets: &[String],
    cp: &str,
    pool: &str,
    concurrency: usize,
    seconds: u64,
    http_host: Option<&str>,
) -> Result<()> {
    let before = session_count(cp, pool).await?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let opened = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (targets, opened) = (targets.to_vec(), opened.clone());
            let http_host = http_host.map(str::to_string);
            tokio::spawn(async move {
                if let Some(host) = http_host {
                    let t = &targets[w % targets.len()];
                    let _ = http_sessions(t, &host, w, deadline, &opened).await;
                    return;
                }
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = format!("s-{w}-{i}-{}", std::process::id());
                    let t = &targets[(i as usize + w) % targets.len()];
                    i += 1;
                    if let Ok(mut ws) = connect_with(t, ("X-Session", &key)).await {
                        opened.fetch_add(1, Relaxed);
                        let _ = ws.close(None).await;
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let opened = opened.load(Relaxed) as usize;
    let open_secs = start.elapsed().as_secs_f64();
    // Every binding committed, however long that takes after the last handshake.
    let mut bound = 0;
    let wait_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < wait_until {
        bound = session_count(cp, pool).await? - before;
        if bound >= opened {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"phase": "sessions", "over": if http_host.is_some() { "http" } else { "ws" },
            "proxies": targets.len(), "concurrency": concurrency, "opened": opened,
            "bound": bound, "handshakes_per_sec": opened as f64 / open_secs,
            "bound_sessions_per_sec": bound as f64 / all_secs, "seconds_until_all_bound": all_secs})
    );
    Ok(())
}

/// One kept-alive connection, one GET after another, each with a fresh session key: every
/// 2xx answer is a session the proxy bound.
async fn http_sessions(target: &str, host: &str, w: usize, deadline: Instant, opened: &AtomicU64) -> Result<()> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let sock = tokio::net::TcpStream::connect(target).await?;
    let _ = sock.set_nodelay(true);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await?;
    tokio::spawn(conn);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let key = format!("h-{w}-{i}-{}", std::process::id());
        i += 1;
        let req =
            hyper::Request::get("/poll").header("host", host).header("x-session", key).body(Empty::<Bytes>::new())?;
        tx.ready().await?;
        let r = tx.send_request(req).await?;
        let ok = r.status().is_success();
        r.into_body().collect().await?;
        if ok {
            opened.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}

async fn visibility(target: &str, proxies: &[String], cp: &str, pool: &str, n: usize) -> Result<()> {
    use switchyard_proto::v1::{query_client::QueryClient, GetSessionRequest};
    let mut q = QueryClient::connect(format!("http://{cp}")).await?;
    let mut h = Histogram::<u64>::new(3)?;
    // Bindings are stored under the key's keyed hash.
    let secret = secret::affinity_secret(cp).await?;
    for i in 0..n {
        let raw = format!("vis-{i}-{}", std::process::id());
        let mut ws = connect_with(target, ("X-Session", &raw)).await?;
        let key = secret.hash(raw.as_bytes()).context("no affinity secret")?;
        let opened = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_micros() as i64;
        let rev = loop {
            let req = GetSessionRequest { consistency: 1, pool: pool.into(), key: key.clone() };
            if let Ok(s) = q.get_session(req).await {
                break s.into_inner().created_revision;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        let path = format!("/applied?revision={rev}");
        let mut last = i64::MIN;
        for body in futures::future::join_all(proxies.iter().map(|p| http_get(p, &path))).await {
            let v: serde_json::Value = serde_json::from_str(&body?)?;
            last = last.max(v["applied_unix_us"].as_i64().context("binding not applied within 5s")?);
        }
        h.record((last - opened).max(0) as u64)?;
        let _ = ws.close(None).await;
    }
    println!(
        "{}",
        json!({"phase": "visibility", "proxies": proxies.len(), "sessions": n,
            "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max_ms": h.max() as f64 / 1000.0})
    );
    Ok(())
}

async fn reports(
    cps: &[String],
    pool: &str,
    backend: &str,
    reporters: usize,
    batch: usize,
    seconds: u64,
) -> Result<()> {
    use switchyard_proto::v1::{discovery_client::DiscoveryClient, ProxyReport, SessionBinding};
    let before = session_count(&cps[0], pool).await?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..reporters)
        .map(|r| {
            let (cp, pool, backend, sent) =
                (cps[r % cps.len()].clone(), pool.to_string(), backend.to_string(), sent.clone());
            tokio::spawn(async move {
                let mut c = DiscoveryClient::connect(format!("http://{cp}")).await?;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let bindings = (0..batch)
                        .map(|_| {
                            n += 1;
                            SessionBinding {
                                pool: pool.clone(),
                                // Keys travel hashed (32 hex digits); the control plane drops
                                // any other shape. Unique per reporter, report and run.
                                key: format!("{:08x}{:08x}{:016x}", std::process::id(), r, n),
                                backend: backend.clone(),
                                ..Default::default()
                            }
                        })
                        .collect();
                    let report = ProxyReport { proxy_id: format!("bench-{r}"), bindings, ..Default::default() };
                    if c.report(report).await.is_ok() {
                        sent.fetch_add(batch as u64, Relaxed);
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let sent = sent.load(Relaxed) as usize;
    let send_secs = start.elapsed().as_secs_f64();
    let mut bound = 0;
    let wait_until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < wait_until {
        bound = session_count(&cps[0], pool).await? - before;
        if bound >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"phase": "reports", "reporters": reporters, "batch": batch, "sent": sent, "committed": bound,
            "sent_per_sec": sent as f64 / send_secs, "committed_per_sec": bound as f64 / all_secs,
            "seconds_until_all_committed": all_secs})
    );
    Ok(())
}
