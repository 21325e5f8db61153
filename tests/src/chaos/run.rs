//! One chaos run: the topology is built, the workload started, faults injected one window at
//! a time (each healed and recovered from before the next), and the invariants checked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_proto::v1::*;

use super::faults::{Fault, Schedule};
use super::linear::{self, Call};
use super::net::{Net, NetError};
use super::nodes::NsCluster;
use super::relay::Faults;
use super::report::Report;
use super::setup::{add_backend, configure, remove_backend};
use super::workload::{self, Pool as ClientPool, Shared};
use crate::{admin, affinity_secret, query, EchoBackend, ProxyProcess};

/// How long every proxy may take, after a fault is healed, to run the leader's revision.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(20);
/// How long the cluster may take to elect a leader and take a write after a heal.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

/// What a run is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Faults are started until this much time has passed.
    pub duration: Duration,
    pub seed: u64,
    /// Only these faults (a mask over [`Fault::ALL`]), when not all.
    pub only: Option<u16>,
}

/// The seed of the schedule `cargo test` runs (one a 4-minute soak passed with).
const DEFAULT_SEED: u64 = 1_795_661_404_269_649_149;

impl Settings {
    /// `SWITCHYARD_CHAOS_SECS` (default `default_secs`), `SWITCHYARD_CHAOS_SEED` (default: a
    /// fixed one) and `SWITCHYARD_CHAOS_ONLY` (fault names as in the code, comma-separated:
    /// `PauseLeader,KillLeader`), for chasing one fault's failure.
    pub fn from_env(default_secs: u64) -> Settings {
        let secs = std::env::var("SWITCHYARD_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_secs);
        // A fixed schedule unless a seed is given, so `cargo test` runs the same faults every
        // time (bench/chaos.sh picks a new seed per soak).
        let seed = std::env::var("SWITCHYARD_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
        let only = std::env::var("SWITCHYARD_CHAOS_ONLY").ok().map(|names| {
            names.split(',').map(str::trim).fold(0u16, |mask, name| {
                let i = Fault::ALL.iter().position(|f| format!("{f:?}") == name);
                let i = i.unwrap_or_else(|| panic!("SWITCHYARD_CHAOS_ONLY: no fault {name:?} in {:?}", Fault::ALL));
                mask | 1 << i
            })
        });
        Settings { duration: Duration::from_secs(secs), seed, only }
    }
}

/// The result of a run: the table and every violation found.
pub struct Outcome {
    pub report: Report,
    pub violations: Vec<String>,
}

/// Runs the suite; `Err` when this machine cannot host it (the caller skips).
pub async fn run(settings: Settings) -> Result<Outcome, NetError> {
    let t = Instant::now();
    let net = Net::create(3)?;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut chaos = Chaos::start(net, dir.path(), settings).await;
    println!("chaos: set up in {:.1}s", t.elapsed().as_secs_f64());
    let outcome = chaos.run().await;
    let t = Instant::now();
    drop(chaos);
    println!("chaos: torn down in {:.1}s", t.elapsed().as_secs_f64());
    Ok(outcome)
}

struct Chaos {
    // Dropped in this order: proxies, then nodes, relays and namespaces.
    proxies: Vec<ProxyProcess>,
    cluster: NsCluster,
    _backends: Vec<EchoBackend>,
    shared: Arc<Shared>,
    schedule: Schedule,
    settings: Settings,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    durable: Option<tokio::task::JoinHandle<Vec<(String, usize)>>>,
    report: Report,
    markers: u64,
    extra_pools: u64,
}

impl Chaos {
    async fn start(net: Net, dir: &std::path::Path, settings: Settings) -> Chaos {
        let t = Instant::now();
        crate::bin("switchyard-control");
        let built = t.elapsed();
        let cluster = NsCluster::start(net, 3, dir, settings.seed).await;
        let started = t.elapsed();
        let leader = cluster.leader(RECOVERY_BOUND).await.expect("a first leader");
        let leader = cluster.nodes[&leader].addr.clone();
        affinity_secret(&leader).await;
        println!(
            "chaos: binaries ready after {:.1}s, nodes up after {:.1}s, leader after {:.1}s",
            built.as_secs_f64(),
            started.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        let backends =
            vec![EchoBackend::start("b1").await, EchoBackend::start("b2").await, EchoBackend::start("b3").await];
        let rev = configure(&leader, &backends).await;
        let proxies: Vec<ProxyProcess> = (0..2)
            .map(|i| ProxyProcess::spawn(&cluster.endpoints(), &dir.join(format!("p{i}.cache")), &format!("p{i}")))
            .collect();
        for p in &proxies {
            p.wait_revision(rev).await;
        }
        let names = backends.iter().map(|b| (b.name.clone(), b.addr.clone())).collect();
        let nodes = cluster.nodes.values().map(|n| n.addr.clone()).collect();
        let shared = Arc::new(Shared::new(nodes, names));
        let ws = [proxies[0].ws.clone(), proxies[1].ws.clone()];
        let admins = [proxies[0].admin.clone(), proxies[1].admin.clone()];
        let mut tasks = vec![tokio::spawn(workload::proxy_monitor(shared.clone(), admins))];
        for i in 0..10 {
            let (pool, key) =
                if i < 6 { (ClientPool::Chat, format!("s-{i}")) } else { (ClientPool::Churn, format!("c-{i}")) };
            let (shared, ws) = (shared.clone(), ws.clone());
            tasks.push(tokio::spawn(async move {
                workload::ws_client(shared, ws, i % 2, pool, key).await;
            }));
        }
        let prober = workload::affinity_prober(shared.clone(), ws, settings.seed ^ 0xaf);
        tasks.push(tokio::spawn(async move {
            let probes = prober.await;
            println!("chaos: {probes} new sessions checked for affinity");
        }));
        let durable = Some(tokio::spawn(workload::durable_writer(shared.clone(), settings.seed ^ 0xd0)));
        println!(
            "chaos: seed {} (replay with SWITCHYARD_CHAOS_SEED={}), {} s of faults",
            settings.seed,
            settings.seed,
            settings.duration.as_secs()
        );
        Chaos {
            proxies,
            cluster,
            _backends: backends,
            shared,
            schedule: Schedule::new(settings.seed, settings.only),
            settings,
            tasks,
            durable,
            report: Report::default(),
            markers: 0,
            extra_pools: 0,
        }
    }

    async fn run(&mut self) -> Outcome {
        let started = Instant::now();
        let mut window = 0usize;
        while started.elapsed() < self.settings.duration {
            window += 1;
            let fault = self.schedule.next_fault();
            self.window(window, fault).await;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        let t = Instant::now();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        let acked = self.durable.take().expect("durable writer").await.expect("durable writer");
        self.check_durable(&acked).await;
        println!(
            "chaos: {} held connections closed by their proxy's restart or their backend's drain/removal (allowed)",
            self.shared.expected_closes.load(Ordering::Relaxed)
        );
        println!("chaos: workload stopped and checked in {:.1}s", t.elapsed().as_secs_f64());
        let tallies = self.shared.tallies.lock().unwrap().clone();
        for (w, t) in tallies {
            self.report.add_tally(w, &t);
        }
        let violations = self.shared.violations.lock().unwrap().clone();
        Outcome { report: std::mem::take(&mut self.report), violations }
    }

    /// One fault: a fresh register for it, the fault, its heal, the recovery, the checks.
    async fn window(&mut self, window: usize, fault: Fault) {
        let t = Instant::now();
        self.shared.window.store(window, Ordering::SeqCst);
        self.report.begin(window, fault);
        let register = workload::register_address(window);
        self.write_until_ok("create the register", |node| {
            let b = Backend {
                pool: workload::REGISTER_POOL.into(),
                address: register.clone(),
                weight: 1,
                ..Default::default()
            };
            async move {
                match admin(&node).add_backend(AddBackendRequest { backend: Some(b) }).await {
                    Ok(r) => Some(r.into_inner().revision),
                    // A retry of a create that worked.
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Some(0),
                    Err(_) => None,
                }
            }
        })
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let seed = self.schedule.rng().next_u64();
        let history = tokio::spawn(workload::register_history(self.shared.clone(), window, stop.clone(), seed));

        println!("chaos: [{:.1}s] window {window}: {}", self.shared.now_us() as f64 / 1e6, fault.name());
        self.inject(fault).await;
        let healed = Instant::now();
        self.recover(window, fault, healed).await;

        stop.store(true, Ordering::SeqCst);
        let mut calls = history.await.expect("register history");
        self.final_reads(&register, &mut calls).await;
        // The search is CPU work: off the runtime that drives the clients.
        let (verdict, calls) =
            tokio::task::spawn_blocking(move || (linear::check(1, &calls), calls)).await.expect("the checker");
        if let Err(e) = verdict {
            self.shared.tally(window, |t| t.stale += 1);
            self.shared.violation(format!("window {window} ({}): register {register}: {e}", fault.name()));
        }
        println!("chaos:   {} calls on the register, window took {:.1}s", calls.len(), t.elapsed().as_secs_f64());
    }

    /// Injects `fault`, holds it (a paced sleep: how long the fault lasts), and heals it.
    async fn inject(&mut self, fault: Fault) {
        let leader = self.cluster.leader(RECOVERY_BOUND).await.expect("a leader before the fault");
        let follower = self.pick_follower(leader);
        println!("chaos:   leader {leader}, follower picked {follower}");
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let id = if fault == Fault::KillLeader { leader } else { follower };
                self.cluster.nodes.get_mut(&id).expect("node").kill9();
                self.hold(1000, 3000).await;
                self.cluster.nodes.get_mut(&id).expect("node").start();
            }
            Fault::KillAll => {
                for n in self.cluster.nodes.values_mut() {
                    n.kill9();
                }
                self.hold(1000, 2000).await;
                for n in self.cluster.nodes.values_mut() {
                    n.start();
                }
            }
            Fault::PauseLeader => {
                self.cluster.nodes.get_mut(&leader).expect("node").stop();
                self.hold(2000, 4000).await;
                self.cluster.nodes.get_mut(&leader).expect("node").resume();
            }
            Fault::IsolateLeader => {
                self.cluster.net.isolate(leader);
                self.hold(3000, 5000).await;
                self.cluster.net.heal();
            }
            Fault::MinorityPartition => {
                self.cluster.net.cut_from_peers(follower);
                self.hold(3000, 5000).await;
                self.cluster.net.heal();
            }
            Fault::OneWayPartition => {
                self.cluster.net.blackhole(leader, super::net::relay_addr(follower));
                self.hold(3000, 5000).await;
                self.cluster.net.heal();
            }
            Fault::LatencyLoss => {
                let before = self.cluster.relay_cuts();
                self.cluster.set_relays(Faults::lossy());
                self.hold(4000, 6000).await;
                self.cluster.set_relays(Faults::default());
                println!("chaos:   the relays cut {} peer connections", self.cluster.relay_cuts() - before);
            }
            Fault::ProxyRestart => self.restart_proxy().await,
            Fault::ConfigChurn => self.churn().await,
            Fault::WipedDataDir => self.wipe_and_re_add(follower).await,
        }
    }

    /// A paced sleep: how long a fault is left in place.
    async fn hold(&mut self, lo: u64, hi: u64) {
        tokio::time::sleep(Duration::from_millis(self.schedule.hold_ms(lo, hi))).await;
    }

    fn pick_follower(&mut self, leader: u64) -> u64 {
        let followers: Vec<u64> = self.cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
        *self.schedule.rng().pick(&followers)
    }

    async fn restart_proxy(&mut self) {
        let i = self.schedule.rng().below(2) as usize;
        let graceful = self.schedule.rng().chance(0.5);
        self.shared.proxy_restarting[i].store(true, Ordering::SeqCst);
        self.shared.proxy_epoch[i].fetch_add(1, Ordering::SeqCst);
        if graceful {
            tokio::task::block_in_place(|| self.proxies[i].terminate());
        } else {
            self.proxies[i].kill9();
        }
        self.hold(300, 1000).await;
        tokio::task::block_in_place(|| self.proxies[i].start());
        self.shared.proxy_epoch[i].fetch_add(1, Ordering::SeqCst);
        self.shared.proxy_restarting[i].store(false, Ordering::SeqCst);
        println!("chaos:   proxy {i} {}", if graceful { "terminated and restarted" } else { "killed and restarted" });
    }

    /// Config churn while clients connect: a pool added, weights changed, a backend added to
    /// the churn pool, one drained then removed then added back, the added one removed.
    async fn churn(&mut self) {
        let addr = |name: &str| self.shared.backend_addr[name].clone();
        let (b1, b2, b3) = (addr("b1"), addr("b2"), addr("b3"));
        self.extra_pools += 1;
        let name = format!("extra-{}", self.extra_pools);
        self.write_until_ok("create a pool", |node| {
            let p = Pool { name: name.clone(), ..Default::default() };
            async move {
                admin(&node)
                    .create_pool(CreatePoolRequest { pool: Some(p) })
                    .await
                    .ok()
                    .map(|r| r.into_inner().revision)
            }
        })
        .await;
        self.write_until_ok("add b3 to the churn pool", |node| add_backend(node, "churn", b3.clone())).await;
        for b in [&b1, &b2, &b3] {
            let w = 1 + self.schedule.rng().below(5) as u32;
            self.write_until_ok("change a weight", |node| {
                let req = SetBackendWeightRequest { pool: "churn".into(), address: b.clone(), weight: w, force: false };
                async move { admin(&node).set_backend_weight(req).await.ok().map(|r| r.into_inner().revision) }
            })
            .await;
        }
        let victim = if self.schedule.rng().chance(0.5) { b1 } else { b2 };
        let event = self.churn_issued(&victim);
        self.write_until_ok("drain a backend", |node| {
            let req = SetBackendStateRequest {
                pool: "churn".into(),
                address: victim.clone(),
                state: AdminState::Draining as i32,
                force: false,
            };
            async move { admin(&node).set_backend_state(req).await.ok().map(|r| r.into_inner().revision) }
        })
        .await;
        // Pacing: the drain window (1 s) runs before the backend is removed.
        self.hold(1200, 1500).await;
        let rev = self
            .write_until_ok("remove the drained backend", |node| remove_backend(node, "churn", victim.clone()))
            .await;
        self.churn_applied(&victim, event, rev).await;
        self.write_until_ok("add it back", |node| add_backend(node, "churn", victim.clone())).await;
        let event = self.churn_issued(&b3);
        let rev = self
            .write_until_ok("remove b3 from the churn pool", |node| remove_backend(node, "churn", b3.clone()))
            .await;
        self.churn_applied(&b3, event, rev).await;
    }

    /// Notes that a drain or removal of `addr` is about to be issued; its index.
    fn churn_issued(&self, addr: &str) -> usize {
        let mut churned = self.shared.churned.lock().unwrap();
        let events = churned.entry(addr.to_string()).or_default();
        events.push((self.shared.now_us(), None));
        events.len() - 1
    }

    /// Waits until every proxy runs `rev` (the removal), then notes when.
    async fn churn_applied(&self, addr: &str, event: usize, rev: Option<u64>) {
        let deadline = Instant::now() + CONVERGENCE_BOUND;
        while let Some(rev) = rev {
            if self.shared.proxy_revision.iter().all(|r| r.load(Ordering::SeqCst) >= rev) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Left open (any later close allowed) when the removal's revision is unknown.
        if rev.is_some() {
            self.shared.churned.lock().unwrap().get_mut(addr).expect("issued")[event].1 = Some(self.shared.now_us());
        }
    }

    /// A follower's data dir is wiped: restarted with the same flags it must be refused;
    /// then it is re-added the documented way (removed, started with `--join`, added as a
    /// learner, promoted).
    async fn wipe_and_re_add(&mut self, id: u64) {
        let node = self.cluster.nodes.get_mut(&id).expect("node");
        node.kill9();
        std::fs::remove_dir_all(&node.data_dir).expect("wipe the data dir");
        let (ok, stderr) = node.run_to_exit();
        let want = "has an empty data dir but cluster";
        if ok || !stderr.contains(want) {
            self.shared
                .violation(format!("node {id} with a wiped data dir was not refused (exit ok: {ok}):\n{stderr}"));
        }
        let _ = std::fs::remove_dir_all(&node.data_dir);
        let peer_addr = node.peer_addr.clone();
        let i = node.args.iter().position(|a| a == "--initial-cluster").expect("founding flags");
        node.args.drain(i..i + 2);
        node.args.extend(["--join".into(), "--advertise".into(), peer_addr.clone()]);
        self.write_until_ok("remove the wiped node", |n| async move {
            admin(&n).remove_node(RemoveNodeRequest { id, force: true }).await.ok().map(|r| r.into_inner().revision)
        })
        .await;
        self.cluster.nodes.get_mut(&id).expect("node").start();
        self.write_until_ok("add it as a learner", |n| {
            let address = peer_addr.clone();
            async move { admin(&n).add_node(AddNodeRequest { id, address }).await.ok().map(|r| r.into_inner().revision) }
        })
        .await;
        self.write_until_ok("promote it", |n| async move {
            admin(&n).promote_node(PromoteNodeRequest { id, force: true }).await.ok().map(|r| r.into_inner().revision)
        })
        .await;
        println!("chaos:   node {id} refused with a wiped data dir, then re-added and promoted");
    }

    /// Runs `f` against a random live node until it answers with a revision, within the
    /// recovery bound (else a violation).
    async fn write_until_ok<F, Fut>(&mut self, what: &str, mut f: F) -> Option<u64>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Option<u64>>,
    {
        let deadline = Instant::now() + RECOVERY_BOUND;
        while Instant::now() < deadline {
            let live = self.cluster.live();
            let node = self.cluster.nodes[self.schedule.rng().pick(&live)].addr.clone();
            if let Ok(Some(rev)) = tokio::time::timeout(Duration::from_secs(3), f(node)).await {
                return Some(rev);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shared.violation(format!("could not {what} within {RECOVERY_BOUND:?}"));
        None
    }

    /// After a heal: a leader, a write at revision R, and every proxy at R or later.
    async fn recover(&mut self, window: usize, fault: Fault, healed: Instant) {
        if self.cluster.leader(RECOVERY_BOUND).await.is_none() {
            let mut seen = Vec::new();
            for n in self.cluster.nodes.values() {
                let s = tokio::time::timeout(Duration::from_secs(2), crate::status(&n.addr)).await.ok().flatten();
                seen.push(s.map_or(format!("node {}: no answer", n.id), |s| {
                    format!("node {}: {} in term {}, leader {}", n.id, s.state, s.term, s.leader_id)
                }));
            }
            self.shared.violation(format!(
                "window {window} ({}): no leader all nodes agree on {RECOVERY_BOUND:?} after the heal: {}",
                fault.name(),
                seen.join("; ")
            ));
            return;
        }
        self.markers += 1;
        let address = format!("10.7.{}.{}:80", self.markers / 250, self.markers % 250 + 1);
        let Some(rev) = self.write_until_ok("write a marker", |n| add_backend(n, "marker", address.clone())).await
        else {
            return;
        };
        let deadline = healed + CONVERGENCE_BOUND;
        loop {
            let at: Vec<u64> = self.shared.proxy_revision.iter().map(|r| r.load(Ordering::SeqCst)).collect();
            if at.iter().all(|r| *r >= rev) {
                break;
            }
            if Instant::now() > deadline {
                self.shared.violation(format!(
                    "window {window} ({}): proxies at revisions {at:?}, not {rev}, {CONVERGENCE_BOUND:?} after the heal",
                    fault.name()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = healed.elapsed();
        let leader = self.cluster.leader_now().await.map_or(0, |(l, _)| l);
        println!(
            "chaos:   healed; leader {leader}, proxies at revision {rev} {:.2}s after the heal",
            took.as_secs_f64()
        );
        self.report.converged(window, took);
    }

    /// A linearizable read of the register through every node, once the writers stopped:
    /// each must see the last write (the checker says whether it does).
    async fn final_reads(&mut self, register: &str, calls: &mut Vec<Call>) {
        for node in self.shared.nodes.clone() {
            let deadline = Instant::now() + RECOVERY_BOUND;
            loop {
                if let Some(c) = workload::read(&self.shared, &node, register).await {
                    calls.push(c);
                    break;
                }
                if Instant::now() > deadline {
                    self.shared.violation(format!("no linearizable read of {register} through {node}"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Every acknowledged durable write is on every node (a linearizable read through each).
    async fn check_durable(&mut self, acked: &[(String, usize)]) {
        for node in self.shared.nodes.clone() {
            let req = ListBackendsRequest {
                consistency: Consistency::Linearizable as i32,
                pool: workload::DURABLE_POOL.into(),
            };
            let mut have = None;
            let deadline = Instant::now() + RECOVERY_BOUND;
            while have.is_none() && Instant::now() < deadline {
                have = query(&node).list_backends(req.clone()).await.ok().map(|r| r.into_inner().backends);
            }
            let Some(have) = have else {
                self.shared.violation(format!("no linearizable read of the durable pool through {node}"));
                continue;
            };
            let have: std::collections::BTreeSet<String> = have.into_iter().map(|b| b.address).collect();
            let mut lost: BTreeMap<usize, u64> = BTreeMap::new();
            for (a, w) in acked {
                if !have.contains(a) {
                    *lost.entry(*w).or_default() += 1;
                    self.shared.violation(format!("acknowledged write {a} (window {w}) is missing on {node}"));
                }
            }
            for (w, n) in lost {
                self.shared.tally(w, |t| t.lost = t.lost.max(n));
            }
        }
        println!("chaos: {} acknowledged durable writes checked on every node", acked.len());
    }
}
