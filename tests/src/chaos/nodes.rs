//! Control-plane nodes in their own namespaces, their fault relays, and what the suite asks
//! of them: who leads, and signals (kill -9, SIGSTOP, SIGCONT) sent to the real process.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use switchyard_proto::v1::ClusterStatusReply;

use super::net::{self, Net};
use super::relay::{Faults, Relay};
use crate::process::{bin, Proc};
use crate::{status, test_flags};

/// The port every node serves on inside its namespace (each namespace has its own ports).
pub const PORT: u16 = 7400;

/// One `switchyard-control` process, run in namespace `sych-n{id}` through `ip netns exec`
/// (which execs in place, so the process's pid is the node's and signals reach it).
pub struct NsNode {
    pub id: u64,
    /// Where clients and proxies reach it (its own address, over the bridge).
    pub addr: String,
    /// Where peers reach it (its relay).
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    pub stopped: bool,
    proc: Proc,
}

impl NsNode {
    fn new(id: u64, data_dir: PathBuf, args: Vec<String>) -> NsNode {
        NsNode {
            id,
            addr: format!("{}:{PORT}", net::node_addr(id)),
            peer_addr: format!("{}:{PORT}", net::relay_addr(id)),
            data_dir,
            args,
            stopped: false,
            proc: Proc::default(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net::namespace(self.id)]).arg(bin("switchyard-control")).args(&self.args);
        cmd
    }

    /// Starts the process with its flags and waits until it serves.
    pub fn start(&mut self) {
        let log_path = self.data_dir.with_extension("log");
        let (log, filter) = match crate::kept_log(&format!("node{}", self.id)) {
            Some(kept) => kept,
            None => (
                std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file"),
                "warn,openraft=error".into(),
            ),
        };
        let mut cmd = self.command();
        cmd.env("RUST_LOG", filter).stderr(log);
        let what = format!("switchyard-control node {} (log: {})", self.id, log_path.display());
        // Waits (up to 30 s) for the first line without holding up the runtime's other tasks.
        let line = tokio::task::block_in_place(|| self.proc.start_reporting(&mut cmd, &what));
        // `listening grpc=ADDR`, then the metrics address (each namespace has its own loopback).
        assert_eq!(line.split_whitespace().nth(1), Some(format!("grpc={}", self.addr).as_str()), "{what}: {line}");
        self.stopped = false;
    }

    /// Runs the node with its flags until it exits by itself (it is expected to refuse to
    /// start); its success and stderr.
    pub fn run_to_exit(&self) -> (bool, String) {
        let log = self.data_dir.with_extension("refused.log");
        let mut proc = Proc::default();
        let child = self
            .command()
            .env("RUST_LOG", "warn,openraft=error")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn a node");
        proc.set(child);
        let status = tokio::task::block_in_place(|| proc.wait_exit(Duration::from_secs(20)));
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            Some(s) => (s.success(), stderr),
            None => (true, format!("still running after 20 s:\n{stderr}")),
        }
    }

    pub fn kill9(&mut self) {
        if self.stopped {
            self.signal("CONT");
        }
        self.proc.kill9();
        self.stopped = false;
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// SIGSTOP: the process stays, holding its sockets, and answers nothing.
    pub fn stop(&mut self) {
        self.signal("STOP");
        self.stopped = true;
    }

    pub fn resume(&mut self) {
        self.signal("CONT");
        self.stopped = false;
    }

    fn signal(&self, name: &str) {
        let pid = self.proc.pid().expect("node running");
        let ok = Command::new("kill").args([format!("-{name}"), pid.to_string()]).status().expect("run kill");
        assert!(ok.success(), "kill -{name} {pid}");
    }
}

/// Three (or more) nodes in namespaces, with a relay in front of each for its peers. Fields
/// drop in order: processes first, then relays, then the namespaces.
pub struct NsCluster {
    pub nodes: BTreeMap<u64, NsNode>,
    pub relays: BTreeMap<u64, Relay>,
    /// The relays' own runtime (one thread), shut down when dropped.
    _relay_rt: RelayRuntime,
    pub net: Net,
}

struct RelayRuntime(Option<tokio::runtime::Runtime>);

impl Drop for RelayRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl NsCluster {
    /// Starts nodes `1..=n` in `net`'s namespaces with data dirs under `dir`.
    ///
    /// The nodes serve cleartext on routable addresses, so they run with `--insecure`: the
    /// suite is about faults, and the bridge is private to this run.
    pub async fn start(net: Net, n: u64, dir: &std::path::Path, seed: u64) -> NsCluster {
        let initial = (1..=n).map(|i| format!("{i}={}:{PORT}", net::relay_addr(i))).collect::<Vec<_>>().join(",");
        let rt = super::relay::runtime();
        let mut relays = BTreeMap::new();
        for i in 1..=n {
            let listen = SocketAddr::new(IpAddr::V4(net::relay_addr(i)), PORT);
            let target = SocketAddr::new(IpAddr::V4(net::node_addr(i)), PORT);
            let source = IpAddr::V4(net::RELAY_SOURCE);
            let r = Relay::start(rt.handle(), listen, source, target, seed ^ i).expect("start a relay");
            relays.insert(i, r);
        }
        let mut nodes = BTreeMap::new();
        for i in 1..=n {
            let mut args = test_flags();
            args.extend([
                "--id".into(),
                i.to_string(),
                "--listen".into(),
                format!("{}:{PORT}", net::node_addr(i)),
                "--data-dir".into(),
                dir.join(format!("node-{i}")).display().to_string(),
                "--initial-cluster".into(),
                initial.clone(),
                "--insecure".into(),
            ]);
            let mut node = NsNode::new(i, dir.join(format!("node-{i}")), args);
            node.start();
            nodes.insert(i, node);
        }
        NsCluster { nodes, relays, _relay_rt: RelayRuntime(Some(rt)), net }
    }

    /// Every node's client address, for proxies.
    pub fn endpoints(&self) -> String {
        self.nodes.values().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// Nodes that are running and not stopped.
    pub fn live(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.is_running() && !n.stopped).map(|n| n.id).collect()
    }

    /// The leader every live node agrees on (with the status of one of them), if there is one
    /// right now.
    pub async fn leader_now(&self) -> Option<(u64, ClusterStatusReply)> {
        let mut agreed = None;
        for id in self.live() {
            let s = tokio::time::timeout(Duration::from_secs(2), status(&self.nodes[&id].addr)).await.ok()??;
            if s.leader_id == 0 || agreed.as_ref().is_some_and(|(l, _)| *l != s.leader_id) {
                return None;
            }
            agreed = Some((s.leader_id, s));
        }
        agreed.filter(|(l, _)| self.live().contains(l))
    }

    /// Waits for [`Self::leader_now`] up to `timeout`.
    pub async fn leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((l, _)) = self.leader_now().await {
                return Some(l);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn set_relays(&self, f: Faults) {
        for r in self.relays.values() {
            r.set(f);
        }
    }

    pub fn relay_cuts(&self) -> u64 {
        self.relays.values().map(Relay::cuts).sum()
    }
}
