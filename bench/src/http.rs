//! `http-bench`: plain HTTP/1.1 load for bench/http.sh. `backend` serves a small fixed answer
//! on kept-alive connections; `load` keeps N connections each sending one small GET after
//! another for a while, and prints requests per second and latency as one JSON line.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer every request with a 2-byte body.
    Backend {
        #[arg(long)]
        listen: String,
    },
    /// Keep `conns` connections busy with GETs for `seconds`.
    Load {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 64)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value = "bench.example")]
        host: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Backend { listen } => backend(&listen).await,
        Cmd::Load { target, conns, seconds, host } => load(&target, conns, Duration::from_secs(seconds), &host).await,
    }
}

async fn backend(listen: &str) -> Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
        });
    }
}

async fn load(target: &str, conns: usize, run: Duration, host: &str) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (target, host, stop) = (target.to_string(), host.to_string(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut errors = 0u64;
            let sock = tokio::net::TcpStream::connect(&target).await?;
            let _ = sock.set_nodelay(true);
            let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await?;
            tokio::spawn(conn);
            while !stop.load(Relaxed) {
                let req = hyper::Request::get("/").header("host", &host).body(Empty::<Bytes>::new())?;
                let t0 = Instant::now();
                tx.ready().await?;
                match tx.send_request(req).await {
                    Ok(r) if r.status().is_success() => {
                        r.into_body().collect().await?;
                        h.record(t0.elapsed().as_micros() as u64).ok();
                    }
                    _ => errors += 1,
                }
            }
            anyhow::Ok((h, errors))
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(run).await;
    stop.store(true, Relaxed);
    let mut all = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        all.add(&h)?;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "phase": "http", "conns": conns, "seconds": secs, "requests": all.len(), "errors": errors,
        "requests_per_s": all.len() as f64 / secs,
        "p50_us": all.value_at_quantile(0.5), "p99_us": all.value_at_quantile(0.99),
    });
    println!("{line}");
    Ok(())
}
