//! Active health checks, run by the leader only: TCP connect, or a WebSocket handshake plus
//! ping, per the pool's spec (interval, timeout, rise, fall). A backend's health flips only
//! after `rise` successes or `fall` failures in a row, and each flip is a Raft command, so every
//! proxy sees the same health. A new leader starts probing within one interval, each backend
//! at a random point of it, at most [`MAX_PROBES`] at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use switchyard_model::topology::Pair;
use switchyard_proto::v1::{Health, HealthCheck, HealthCheckKind, Pool};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::state::Command;

const TICK: Duration = Duration::from_millis(50);
/// WebSocket probe handshakes at once (TLS and HTTP each). They run on the node's one thread
/// beside Raft: thousands at once would delay heartbeats into elections. A TCP connect takes
/// no turn, so backends that time out do not hold up the probes of others.
const MAX_PROBES: usize = 64;

#[derive(Default)]
struct Track {
    ok_streak: u32,
    fail_streak: u32,
    next_probe: Option<Instant>,
    /// A probe of this backend is queued or running: no second one beside it.
    probing: bool,
    /// The last probe could not be made (said once, until one is made again).
    not_tried: bool,
    /// A flip of this backend is being written: no second one until it is done (the probe
    /// after it judges against the state it left).
    writing: Arc<std::sync::atomic::AtomicBool>,
}

/// TLS to a pool's backends, compiled once per setting (see `run`).
#[derive(Clone)]
pub struct ProbeTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
}

/// One probe: whether the backend answered within the timeout; `None` when this node could
/// not try (out of descriptors or buffers: no fault of the backend's, which must not be
/// marked down for it). A WebSocket check of a pool with backend TLS speaks wss and verifies
/// the backend as the proxies do. Its handshake waits for one of `permits` once connected (a
/// connect to a dead backend holds none while it times out), and has the timeout again from
/// then: the wait is the node's, not the backend's.
pub async fn probe(address: &str, hc: &HealthCheck, tls: Option<&ProbeTls>, permits: &Semaphore) -> Option<bool> {
    let timeout = Duration::from_millis(hc.timeout_ms.max(1) as u64);
    let kind = HealthCheckKind::try_from(hc.kind).unwrap_or(HealthCheckKind::HealthCheckNone);
    if kind == HealthCheckKind::HealthCheckNone {
        return Some(true);
    }
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if local_shortage(&e) => return None,
        _ => return Some(false),
    };
    if kind == HealthCheckKind::HealthCheckTcp {
        return Some(true);
    }
    let Ok(_permit) = permits.acquire().await else { return None };
    let path = if hc.path.is_empty() { "/" } else { hc.path.as_str() };
    // A probe reads a handshake and a pong: small buffers, not tungstenite's 128 KiB per
    // probe; a message past the cap before the pong still shows a backend that answers.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(PROBE_MESSAGE))
        .max_frame_size(Some(PROBE_MESSAGE));
    let attempt = async {
        match tls {
            None => {
                let url = format!("ws://{address}{path}");
                ws_ping(tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await).await
            }
            Some(t) => {
                let Ok(name) = switchyard_model::backend_tls::name_for(&t.server_name, address) else { return false };
                let connector = tokio_rustls::TlsConnector::from(t.config.clone());
                let Ok(s) = connector.connect(name, tcp).await else { return false };
                let url = format!("wss://{address}{path}");
                ws_ping(tokio_tungstenite::client_async_with_config(url, s, Some(config)).await).await
            }
        }
    };
    Some(tokio::time::timeout(timeout, attempt).await.unwrap_or(false))
}

/// The largest message a probe reads whole (one past it still counts as an answer).
const PROBE_MESSAGE: usize = 64 << 10;

/// A connect that failed for want of this node's own resources. (Not `EADDRNOTAVAIL`: that
/// can be the backend's own, an IPv6 address on a host without IPv6.)
fn local_shortage(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let local = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM];
    e.raw_os_error().is_some_and(|n| local.iter().any(|l| l.raw_os_error() == n))
}

/// After a handshake: whether a ping comes back as its pong.
async fn ws_ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, R>(
    handshake: Result<(tokio_tungstenite::WebSocketStream<S>, R), tokio_tungstenite::tungstenite::Error>,
) -> bool {
    let Ok((mut ws, _)) = handshake else { return false };
    if ws.send(Message::Ping(b"switchyard-health".to_vec().into())).await.is_err() {
        return false;
    }
    let mut ok = false;
    loop {
        match ws.next().await {
            Some(Ok(Message::Pong(p))) => {
                ok = p.as_ref() == b"switchyard-health";
                break;
            }
            Some(Ok(_)) => {}
            // A greeting or snapshot larger than a probe reads: the backend is talking.
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                ok = true;
                break;
            }
            _ => break,
        }
    }
    let _ = ws.close(None).await;
    ok
}

/// What probing a pool's backends takes: `Err` for TLS that does not compile, so no probe can
/// pass.
type PoolTls = Result<Option<ProbeTls>, ()>;

/// Compiles pools' backend TLS once per pool revision, not once per probe (nor compares a CA
/// bundle every tick).
#[derive(Default)]
struct TlsCache(HashMap<String, (u64, PoolTls)>);

impl TlsCache {
    fn get(&mut self, pool: &Pool) -> PoolTls {
        let Some(t) = pool.backend_tls.as_ref().filter(|t| t.enabled) else { return Ok(None) };
        if let Some((rev, compiled)) = self.0.get(&pool.name) {
            if *rev == pool.updated_revision {
                return compiled.clone();
            }
        }
        // Checked when written; a setting that still does not compile probes as failing.
        let compiled = switchyard_model::backend_tls::roots(&t.ca_pem)
            .map(|roots| {
                Some(ProbeTls {
                    config: switchyard_model::backend_tls::client_config(roots),
                    server_name: t.server_name.clone(),
                })
            })
            .map_err(|e| tracing::warn!(pool = pool.name, "backend TLS of the pool does not compile: {e}"));
        self.0.insert(pool.name.clone(), (pool.updated_revision, compiled.clone()));
        compiled
    }
}

/// Runs for the node's lifetime; probes only while this node leads.
pub async fn run(node: Arc<NodeCtx>) {
    let mut tracks: HashMap<(String, String), Track> = HashMap::new();
    let mut tls = TlsCache::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<((String, String), Option<bool>)>();
    let permits = Arc::new(Semaphore::new(MAX_PROBES));
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            Some((key, ok)) = rx.recv() => {
                record(&node, &mut tracks, key, ok);
                continue;
            }
        }
        if !node.is_leader() {
            // Followers forget: a node that becomes leader starts from fresh streaks.
            tracks.clear();
            continue;
        }
        let now = Instant::now();
        let targets: Vec<((String, String), HealthCheck, PoolTls)> = {
            let live = node.shared.read();
            // Per checked pool once, then its backends (a range of the map): pools without a
            // check cost nothing per tick, however many backends they have.
            let mut targets = Vec::new();
            for p in live.state.pools.values() {
                let Some(hc) = p.health_check.as_ref() else { continue };
                if hc.kind == HealthCheckKind::HealthCheckNone as i32 {
                    continue;
                }
                let t = tls.get(p);
                for b in live.state.backends_of(&p.name) {
                    targets.push(((p.name.clone(), b.address.clone()), hc.clone(), t.clone()));
                }
            }
            targets
        };
        // Sets, not scans: with thousands of backends a scan per entry is millions of
        // comparisons every tick.
        let keys: HashSet<&(String, String)> = targets.iter().map(|(k, _, _)| k).collect();
        let pools: HashSet<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        tls.0.retain(|pool, _| pools.contains(pool.as_str()));
        tracks.retain(|k, _| keys.contains(k));
        for (key, hc, tls) in targets {
            let t = tracks.entry(key.clone()).or_default();
            let interval = Duration::from_millis(hc.interval_ms.max(1) as u64);
            // A backend first seen (at start, or by a new leader) is probed at a random point
            // of its first interval: backends seen together would otherwise be probed together,
            // all of them, every interval, for as long as this node leads.
            let Some(at) = t.next_probe else {
                t.next_probe = Some(now + interval.mul_f64(rand::random::<f64>()));
                continue;
            };
            if now < at || t.probing {
                continue;
            }
            t.next_probe = Some(now + interval);
            t.probing = true;
            let (tx, permits) = (tx.clone(), permits.clone());
            tokio::spawn(async move {
                let ok = match tls {
                    Ok(tls) => probe(&key.1, &hc, tls.as_ref(), &permits).await,
                    Err(()) => Some(false),
                };
                let _ = tx.send((key, ok));
            });
        }
    }
}

fn record(node: &Arc<NodeCtx>, tracks: &mut HashMap<(String, String), Track>, key: (String, String), ok: Option<bool>) {
    let Some(t) = tracks.get_mut(&key) else { return };
    t.probing = false;
    let Some(ok) = ok else {
        node.metrics.probes.get_or_create(&vec![("result", "not_tried".to_string())]).inc();
        if !std::mem::replace(&mut t.not_tried, true) {
            tracing::warn!(pool = %key.0, backend = %key.1, "health probe not made: this node is short of descriptors or buffers; the backend's health stays as it was");
        }
        return;
    };
    t.not_tried = false;
    let result = if ok { "ok" } else { "failed" };
    node.metrics.probes.get_or_create(&vec![("result", result.to_string())]).inc();
    if ok {
        t.ok_streak += 1;
        t.fail_streak = 0;
    } else {
        t.fail_streak += 1;
        t.ok_streak = 0;
    }
    let (current, hc) = {
        let live = node.shared.read();
        let Some(b) = live.state.backends.get(&Pair(&key.0, &key.1)) else { return };
        let Some(hc) = live.state.pools.get(&key.0).and_then(|p| p.health_check.clone()) else { return };
        (b.health, hc)
    };
    let want = if t.ok_streak >= hc.rise.max(1) && current != Health::Healthy as i32 {
        Health::Healthy
    } else if t.fail_streak >= hc.fall.max(1) && current != Health::Unhealthy as i32 {
        Health::Unhealthy
    } else {
        return;
    };
    if t.writing.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let cmd = Command::SetBackendHealth { pool: key.0.clone(), address: key.1.clone(), health: want as i32 };
    // Written beside the probing, not in its way: flips due together (a rack lost) share the
    // leader's group commit, and probes of every other backend go on meanwhile. Awaited here,
    // each flip was its own entry, and probing stopped while it committed. Said and counted
    // once written: a write that fails (no quorum) is tried again at the next probe.
    let (node, writing) = (node.clone(), t.writing.clone());
    tokio::spawn(async move {
        match leader::write(&node, cmd).await {
            Ok(_) => {
                tracing::info!(pool = %key.0, backend = %key.1, health = ?want, "health changed");
                let to = if want == Health::Healthy { "healthy" } else { "unhealthy" };
                node.metrics.flips.get_or_create(&vec![("to", to.to_string())]).inc();
            }
            Err(e) => tracing::warn!(backend = %key.1, "could not record health: {e}"),
        }
        writing.store(false, std::sync::atomic::Ordering::Release);
    });
}
