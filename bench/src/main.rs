//! `cp-bench`: the same write load against Switchyard's control plane and against etcd, each
//! a 3-member cluster on loopback that this tool starts, kills and restarts itself.
//!
//! Phases: puts/s and latency at each client count; then leader failover trials under steady
//! write load (kill -9 the leader, time until a write issued after the kill is acknowledged),
//! reading every acknowledged write back after each trial.

mod procs;
mod target;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::procs::Cluster;
use crate::target::{Conn, Key};

#[derive(Parser, Debug)]
struct Args {
    /// switchyard or etcd.
    #[arg(long)]
    system: String,
    /// Name the results carry [default: the system]; e.g. `switchyard-baseline` for an older
    /// build's binaries measured in the same run.
    #[arg(long)]
    label: Option<String>,
    /// Directory with switchyard-control (for --system switchyard).
    #[arg(long, default_value = "target/release")]
    bin_dir: std::path::PathBuf,
    /// Where data dirs and logs go.
    #[arg(long, default_value = "bench/out")]
    out_dir: std::path::PathBuf,
    /// Client counts for the put phase.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Seconds per put phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Skip the put phases (run failover trials only).
    #[arg(long)]
    skip_put: bool,
    /// Failover trials.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Cluster size (1 or 3); failover trials need 3.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Both systems serve mTLS (members to each other, and to the clients), with certificates
    /// from this build's `switchyard certs`.
    #[arg(long)]
    tls: bool,
    /// etcd's `--heartbeat-interval` and `--election-timeout` in ms (e.g. `50,250`, Switchyard's
    /// defaults), so failover is compared at the same election timing as well as at etcd's own.
    #[arg(long, value_delimiter = ',')]
    etcd_timing: Option<Vec<u64>>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let label = args.label.clone().unwrap_or_else(|| args.system.clone());
    if args.etcd_timing.as_ref().is_some_and(|t| t.len() != 2) {
        anyhow::bail!("--etcd-timing takes HEARTBEAT_MS,ELECTION_MS");
    }
    let pki = if args.tls { Some(procs::make_pki(&args.out_dir.join(format!("{label}-pki")))?) } else { None };
    if let Some(p) = &pki {
        switchyard_model::tls::install_provider();
        let _ = target::TLS.set(
            switchyard_model::tls::TlsFiles {
                ca: Some(p.join("ca.crt")),
                cert: Some(p.join("bench.crt")),
                key: Some(p.join("bench.key")),
            }
            .client()?,
        );
    }
    let mut cluster = Cluster::start(
        &args.system,
        &args.bin_dir,
        &args.out_dir,
        args.members,
        pki.as_deref(),
        args.etcd_timing.as_deref(),
    )?;
    cluster.wait_ready().await?;
    let value = vec![b'x'; args.value_size];
    target::prepare(&cluster.system, &cluster.client_addrs).await?;

    for &n in args.clients.iter().filter(|_| !args.skip_put) {
        let (cpu, mine) = (cluster.cpu_seconds(), own_cpu_seconds());
        let term = highest_term(&cluster).await;
        let r = put_phase(&cluster, n, Duration::from_secs(args.seconds), &value).await;
        let (cpu, mine) = (cluster.cpu_seconds() - cpu, own_cpu_seconds() - mine);
        // Elections during the phase (not the one that follows the kills when the run ends).
        let elections = highest_term(&cluster).await.saturating_sub(term);
        println!(
            "{}",
            json!({"system": label, "phase": "put", "clients": n, "seconds": args.seconds,
            "ops": r.0, "ops_per_sec": r.0 as f64 / args.seconds as f64, "p50_ms": r.1, "p99_ms": r.2, "errors": r.3,
            "cpu_us_per_op": cpu * 1e6 / r.0.max(1) as f64, "client_cpu_us_per_op": mine * 1e6 / r.0.max(1) as f64,
            "elections": elections})
        );
    }

    let mut times = Vec::new();
    let mut lost_total = 0;
    for trial in 0..args.trials {
        let (t, acked, lost) = failover_trial(&mut cluster, trial, &value).await?;
        lost_total += lost;
        println!(
            "{}",
            json!({"system": label, "phase": "failover", "trial": trial, "failover_ms": t.as_secs_f64() * 1000.0, "acked": acked, "lost": lost})
        );
        times.push(t);
    }
    if !times.is_empty() {
        times.sort();
        let p50 = times[times.len() / 2];
        let max = *times.last().unwrap();
        println!(
            "{}",
            json!({"system": label, "phase": "failover-summary", "trials": times.len(),
            "p50_ms": p50.as_secs_f64() * 1000.0, "max_ms": max.as_secs_f64() * 1000.0, "lost": lost_total})
        );
    }
    cluster.stop();
    Ok(())
}

/// The highest Raft term any member answers with.
async fn highest_term(cluster: &Cluster) -> u64 {
    let mut highest = 0;
    for addr in &cluster.client_addrs {
        highest = highest.max(Conn::new(&cluster.system, addr).term().await.unwrap_or(0));
    }
    highest
}

/// CPU seconds this process (the load generator) has used so far.
fn own_cpu_seconds() -> f64 {
    procs::cpu_seconds_of("self").unwrap_or(0.0)
}

/// Returns (ops, p50 ms, p99 ms, errors).
async fn put_phase(cluster: &Cluster, clients: usize, dur: Duration, value: &[u8]) -> (u64, f64, f64, u64) {
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let endpoint = cluster.client_addrs[c % cluster.client_addrs.len()].clone();
        let system = cluster.system.clone();
        let value = value.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut errors = 0;
            let conn = Conn::new(&system, &endpoint);
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let key = Key { client: 1000 + c as u64 + clients as u64 * 10_000, seq };
                seq += 1;
                let t = Instant::now();
                match conn.put(&key, &value).await {
                    Ok(()) => h.record(t.elapsed().as_micros() as u64).expect("record"),
                    Err(_) => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.expect("client task");
        all.add(h).expect("merge");
        errors += e;
    }
    (all.len(), all.value_at_quantile(0.5) as f64 / 1000.0, all.value_at_quantile(0.99) as f64 / 1000.0, errors)
}

/// One trial: steady writes through every endpoint, kill -9 the leader, measure until the
/// cluster acknowledges writes again; then verify and restart the killed member.
async fn failover_trial(cluster: &mut Cluster, trial: usize, value: &[u8]) -> Result<(Duration, usize, usize)> {
    const WRITERS: usize = 8;
    // Like a client library with a short per-request deadline: a write stuck on a member
    // that lost its leader is abandoned and retried on the next endpoint.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
    let acked: Arc<Mutex<Vec<(Key, Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let conns: Vec<Conn> = cluster.client_addrs.iter().map(|a| Conn::new(&cluster.system, a)).collect();
        let acked = acked.clone();
        let stop = stop.clone();
        let value = value.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = Key { client: (trial * 100 + w) as u64, seq };
                seq += 1;
                let start = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, conns[i % conns.len()].put(&key, &value)).await {
                    Ok(Ok(())) => acked.lock().unwrap().push((key, start, Instant::now())),
                    _ => {
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cluster.leader().await?;
    let killed_at = Instant::now();
    cluster.kill9(leader);
    let deadline = killed_at + Duration::from_secs(15);
    let failover = loop {
        // The first acknowledgement that a leader elected after the kill must have given: any
        // ack more than 10 ms after the kill (the old leader's in-flight acks land sooner), or
        // one for a write issued after the kill. Writes queued during the election count.
        let settled = killed_at + Duration::from_millis(10);
        let first =
            acked.lock().unwrap().iter().filter(|(_, s, a)| *s >= killed_at || *a >= settled).map(|(_, _, a)| *a).min();
        if let Some(a) = first {
            break a - killed_at;
        }
        anyhow::ensure!(Instant::now() < deadline, "no write acknowledged within 15s of killing the leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let keys: Vec<Key> = acked.lock().unwrap().iter().map(|(k, _, _)| *k).collect();
    let survivor = cluster.client_addrs[(leader + 1) % cluster.client_addrs.len()].clone();
    let lost = Conn::new(&cluster.system, &survivor).count_missing(&keys).await?;
    cluster.restart(leader)?;
    cluster.wait_ready().await?;
    Ok((failover, keys.len(), lost))
}
