//! What runs while faults are injected: admin writers and linearizable readers against the
//! control plane, WebSocket clients holding connections through the proxies, and a monitor of
//! each proxy's revision. Each records what it saw in [`Shared`]; the checks read it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use switchyard_proto::v1::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::linear::{Call, Op};
use super::rng::Rng;
use crate::{admin, query, ws_connect, ProxyProcess};
use switchyard_model::grpc::with_request_id;

/// How long one admin call may take before its outcome counts as unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Counts for one fault window.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub acked: u64,
    pub lost: u64,
    pub stale: u64,
    pub dropped: u64,
}

/// A drain or removal: (issued, applied by every proxy), microseconds since the run began.
pub type ChurnEvent = (u64, Option<u64>);

/// What every task shares: the clock, the current window, the outcome counts and the
/// violations found.
pub struct Shared {
    t0: Instant,
    /// Index of the fault window in progress.
    pub window: AtomicUsize,
    pub nodes: Vec<String>,
    pub tallies: Mutex<BTreeMap<usize, Tally>>,
    pub violations: Mutex<Vec<String>>,
    /// Bumped just before proxy i is restarted: connections through it may then close.
    pub proxy_epoch: [AtomicU64; 2],
    /// Set while proxy i is being restarted: its revision is not watched then.
    pub proxy_restarting: [AtomicBool; 2],
    /// Each proxy's latest config revision, as its `/status` says.
    pub proxy_revision: [AtomicU64; 2],
    /// Per backend address, config churn's drains and removals in the churn pool: when each
    /// was issued and when every proxy had applied it (microseconds). A connection to that
    /// backend made before the proxies applied one may be closed with 1001 once it is issued.
    pub churned: Mutex<BTreeMap<String, Vec<ChurnEvent>>>,
    /// Backend name → address, to know which backend a client reached.
    pub backend_addr: BTreeMap<String, String>,
    pub stop: AtomicBool,
    /// Connections closed for a reason the suite allows: their proxy restarted, or their
    /// backend was drained or removed (with 1001).
    pub expected_closes: AtomicU64,
    /// Session key → the backend it first reached in the affinity pool.
    homes: Mutex<BTreeMap<String, String>>,
    /// Linearizable, unless `SWITCHYARD_CHAOS_LOCAL_READS=1` asks for local reads: a check
    /// of the checker, since those may be stale and the run must then say so.
    read_consistency: Consistency,
    /// Writes carry a request id (client id and sequence number), as the CLI's do, unless
    /// `SWITCHYARD_CHAOS_NO_REQUEST_IDS=1`: then a forwarded write cut off after it committed
    /// may apply twice (documented), which the register's history shows.
    request_ids: bool,
}

impl Shared {
    pub fn new(nodes: Vec<String>, backend_addr: BTreeMap<String, String>) -> Shared {
        Shared {
            t0: Instant::now(),
            window: AtomicUsize::new(0),
            nodes,
            tallies: Mutex::new(BTreeMap::new()),
            violations: Mutex::new(Vec::new()),
            proxy_epoch: Default::default(),
            proxy_restarting: Default::default(),
            proxy_revision: Default::default(),
            churned: Mutex::new(BTreeMap::new()),
            backend_addr,
            stop: AtomicBool::new(false),
            expected_closes: AtomicU64::new(0),
            homes: Mutex::new(BTreeMap::new()),
            request_ids: std::env::var("SWITCHYARD_CHAOS_NO_REQUEST_IDS").as_deref() != Ok("1"),
            read_consistency: match std::env::var("SWITCHYARD_CHAOS_LOCAL_READS").as_deref() {
                Ok("1") => Consistency::Local,
                _ => Consistency::Linearizable,
            },
        }
    }

    /// Microseconds since the run began.
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    pub fn violation(&self, what: String) {
        eprintln!("chaos: VIOLATION [{:.1}s] {what}", self.t0.elapsed().as_secs_f64());
        self.violations.lock().unwrap().push(what);
    }

    pub fn tally(&self, window: usize, f: impl FnOnce(&mut Tally)) {
        f(self.tallies.lock().unwrap().entry(window).or_default());
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Affinity: session `key` reached backend `name` through proxy `proxy`; it must be the
    /// backend it reached first (the pool's backends stay fit the whole run).
    fn home(&self, key: &str, name: &str, proxy: usize) {
        let mut homes = self.homes.lock().unwrap();
        let home = homes.entry(key.to_string()).or_insert_with(|| name.to_string()).clone();
        drop(homes);
        if home != name {
            self.violation(format!("affinity: session {key} moved from {home} to {name} (via proxy {proxy})"));
        }
    }

    /// `req` as a write from `client`'s `seq`-th request (ids left off if asked).
    fn identified<T>(&self, req: T, client: &str, seq: u64) -> tonic::Request<T> {
        if self.request_ids {
            with_request_id(req, client, seq).expect("a valid request id")
        } else {
            tonic::Request::new(req)
        }
    }

    /// Whether a drain or removal of `addr` allows closing a connection made at `connected`.
    fn churned_since(&self, addr: &str, connected: u64) -> bool {
        let now = self.now_us();
        let churned = self.churned.lock().unwrap();
        churned.get(addr).is_some_and(|events| {
            events.iter().any(|(issued, applied)| *issued <= now && applied.is_none_or(|a| a >= connected))
        })
    }
}

/// A register the suite reads and writes: the weight of a backend no route uses.
pub fn register_address(window: usize) -> String {
    format!("10.9.{}.{}:80", window / 250, window % 250 + 1)
}

pub const REGISTER_POOL: &str = "reg";
pub const DURABLE_POOL: &str = "durable";

/// One register's writers and readers for one window; `stop` ends them.
pub async fn register_history(shared: Arc<Shared>, window: usize, stop: Arc<AtomicBool>, seed: u64) -> Vec<Call> {
    let address = register_address(window);
    let next_value = Arc::new(AtomicU64::new(2));
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (shared, stop, address, next_value) = (shared.clone(), stop.clone(), address.clone(), next_value.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ (w + 1).wrapping_mul(0x1000_0001));
            let mut calls = Vec::new();
            let (client, mut seq) = (format!("chaos-reg-{window}-{w}"), 0);
            while !stop.load(Ordering::Relaxed) {
                let node = rng.pick(&shared.nodes).clone();
                let call = if w < 2 {
                    let v = next_value.fetch_add(1, Ordering::Relaxed) as u32;
                    seq += 1;
                    Some(write(&shared, window, &node, &address, v, (&client, seq)).await)
                } else {
                    read(&shared, &node, &address).await
                };
                calls.extend(call);
                // Pacing, not a wait: keeps each history short enough to check quickly.
                tokio::time::sleep(Duration::from_millis(60 + rng.below(120))).await;
            }
            calls
        }));
    }
    let mut calls = Vec::new();
    for t in tasks {
        calls.extend(t.await.expect("register worker"));
    }
    calls
}

async fn write(shared: &Shared, window: usize, node: &str, address: &str, weight: u32, id: (&str, u64)) -> Call {
    let invoked = shared.now_us();
    let req = SetBackendWeightRequest { pool: REGISTER_POOL.into(), address: address.into(), weight, force: false };
    let req = shared.identified(req, id.0, id.1);
    let r = tokio::time::timeout(CALL_TIMEOUT, admin(node).set_backend_weight(req)).await;
    let completed = match r {
        Ok(Ok(_)) => {
            shared.tally(window, |t| t.acked += 1);
            Some(shared.now_us())
        }
        // Any failure may still have committed: its outcome is unknown.
        _ => None,
    };
    Call { op: Op::Write(weight), invoked, completed }
}

/// A linearizable read of the register through `node`; `None` when it failed.
pub async fn read(shared: &Shared, node: &str, address: &str) -> Option<Call> {
    let invoked = shared.now_us();
    let req = ListBackendsRequest { consistency: shared.read_consistency as i32, pool: REGISTER_POOL.into() };
    let r = tokio::time::timeout(CALL_TIMEOUT, query(node).list_backends(req)).await.ok()?.ok()?;
    let completed = shared.now_us();
    let b = r.into_inner().backends.into_iter().find(|b| b.address == address)?;
    Some(Call { op: Op::Read(b.weight), invoked, completed: Some(completed) })
}

/// Adds backends with fresh addresses to the durable pool until told to stop; returns the
/// acknowledged ones with the window each was acknowledged in.
pub async fn durable_writer(shared: Arc<Shared>, seed: u64) -> Vec<(String, usize)> {
    let mut rng = Rng::new(seed);
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !shared.stopping() {
        n += 1;
        let address = format!("10.8.{}.{}:80", n / 250, n % 250 + 1);
        let node = rng.pick(&shared.nodes).clone();
        let b = Backend { pool: DURABLE_POOL.into(), address: address.clone(), weight: 1, ..Default::default() };
        let mut client = admin(&node);
        let req = shared.identified(AddBackendRequest { backend: Some(b) }, "chaos-durable", n);
        let r = tokio::time::timeout(CALL_TIMEOUT, client.add_backend(req)).await;
        if let Ok(Ok(_)) = r {
            let w = shared.window.load(Ordering::Relaxed);
            shared.tally(w, |t| t.acked += 1);
            acked.push((address, w));
        }
        // Pacing between writes.
        tokio::time::sleep(Duration::from_millis(100 + rng.below(100))).await;
    }
    acked
}

/// Which pool a client uses and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Affinity on X-Session: the same key must keep reaching the same backend.
    Chat,
    /// Config churn drains and removes its backends: a 1001 close then is expected.
    Churn,
}

/// A WebSocket client through proxy `home` (the other one while that is down): holds its
/// connection and echoes on it; a close it cannot explain is a violation.
pub async fn ws_client(shared: Arc<Shared>, proxies: [String; 2], home: usize, pool: Pool, key: String) -> u64 {
    let path = if pool == Pool::Chat { "/" } else { "/churn" };
    let mut reconnects = 0u64;
    let mut p = home;
    while !shared.stopping() {
        let epoch = shared.proxy_epoch[p].load(Ordering::SeqCst);
        let connected = shared.now_us();
        let (mut ws, name) = match ws_connect(&proxies[p], path, &[("X-Session", &key)]).await {
            Ok(c) => c,
            Err(_) => {
                p = 1 - p;
                // Pacing of reconnect attempts while a proxy restarts.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        reconnects += 1;
        let addr = shared.backend_addr.get(&name).cloned().unwrap_or_default();
        if pool == Pool::Chat {
            shared.home(&key, &name, p);
        }
        let why = hold(&shared, &mut ws).await;
        let Some(why) = why else { break };
        let proxy_restarted = shared.proxy_epoch[p].load(Ordering::SeqCst) != epoch;
        let drained =
            pool == Pool::Churn && matches!(why, Closed::By(CloseCode::Away)) && shared.churned_since(&addr, connected);
        if proxy_restarted || drained {
            shared.expected_closes.fetch_add(1, Ordering::Relaxed);
        } else {
            let w = shared.window.load(Ordering::Relaxed);
            shared.tally(w, |t| t.dropped += 1);
            let why = match why {
                Closed::By(code) => format!("closed with {code}"),
                Closed::Error(e) => e,
            };
            shared.violation(format!("connection {key} through proxy {p} to {name} dropped: {why}"));
        }
        p = home;
    }
    reconnects
}

/// New sessions all the time: a connection with one of 24 session keys, through either
/// proxy, every 250 ms, closed at once; each key must keep reaching its first backend.
pub async fn affinity_prober(shared: Arc<Shared>, proxies: [String; 2], seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mut probes = 0;
    while !shared.stopping() {
        let p = rng.below(2) as usize;
        let key = format!("a-{}", rng.below(24));
        if let Ok((mut ws, name)) = ws_connect(&proxies[p], "/", &[("X-Session", &key)]).await {
            shared.home(&key, &name, p);
            let _ = ws.close(None).await;
            probes += 1;
        }
        // Pacing of new sessions.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    probes
}

#[derive(Debug)]
enum Closed {
    By(CloseCode),
    Error(String),
}

/// Echoes on `ws` every 300 ms until the run stops (`None`) or the connection ends.
async fn hold(shared: &Shared, ws: &mut crate::Ws) -> Option<Closed> {
    let mut n = 0u64;
    loop {
        if shared.stopping() {
            let _ = ws.close(None).await;
            return None;
        }
        n += 1;
        let m = Message::text(format!("ping {n}"));
        if let Err(e) = ws.send(m.clone()).await {
            return Some(Closed::Error(e.to_string()));
        }
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => return Some(Closed::Error("no echo within 10 s".into())),
            Ok(None) => return Some(Closed::Error("stream ended".into())),
            Ok(Some(Err(e))) => return Some(Closed::Error(e.to_string())),
            Ok(Some(Ok(Message::Close(f)))) => return Some(Closed::By(f.map_or(CloseCode::Status, |f| f.code))),
            Ok(Some(Ok(back))) if back == m => {}
            Ok(Some(Ok(other))) => return Some(Closed::Error(format!("echo mismatch: {other:?}"))),
        }
        // Pacing: a client that talks every 300 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Polls each proxy's `/status` every 100 ms: its revision must never go backwards while
/// the same process runs.
pub async fn proxy_monitor(shared: Arc<Shared>, admins: [String; 2]) {
    let mut max = [(0u64, 0u64); 2]; // (epoch, highest revision seen)
    while !shared.stopping() {
        for (i, admin) in admins.iter().enumerate() {
            let epoch = shared.proxy_epoch[i].load(Ordering::SeqCst);
            if shared.proxy_restarting[i].load(Ordering::SeqCst) {
                continue;
            }
            let probe = ProxyProcess::status_at(admin);
            let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), probe).await else { continue };
            let Some(rev) = s["config"]["revision"].as_u64() else { continue };
            // An answer that may have come from the process before a restart is not used.
            if shared.proxy_restarting[i].load(Ordering::SeqCst)
                || shared.proxy_epoch[i].load(Ordering::SeqCst) != epoch
            {
                continue;
            }
            if max[i].0 != epoch {
                max[i] = (epoch, 0);
            }
            if rev < max[i].1 {
                shared.violation(format!("proxy {i}'s revision went back from {} to {rev}", max[i].1));
            }
            max[i].1 = max[i].1.max(rev);
            shared.proxy_revision[i].store(rev, Ordering::SeqCst);
        }
        // Polling interval.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
