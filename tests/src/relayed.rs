//! A loopback cluster whose peer links pass through fault relays (see
//! [`chaos::relay`](crate::chaos::relay)): each node advertises its relay's address, so every
//! connection to it from a peer takes the relay's latency, while the test reaches the nodes
//! directly. No namespaces or root needed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::chaos::relay::{Faults, Relay};
use crate::control::{reserve, status, ControlNode};
use crate::process::eventually;

pub struct RelayedCluster {
    /// Declared first: processes die before their relays stop.
    pub nodes: BTreeMap<u64, ControlNode>,
    pub relays: BTreeMap<u64, Relay>,
    rt: Option<tokio::runtime::Runtime>,
    pub dir: tempfile::TempDir,
}

impl RelayedCluster {
    /// Starts nodes `1..=n` with `flags` (timings; `--initial-cluster` is added) and waits for a
    /// leader all of them agree on.
    pub async fn start(n: u64, flags: &[&str]) -> RelayedCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        // The relays' own thread: their timing must not wait on the test's runtime.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-relay")
            .enable_all()
            .build()
            .expect("the relays' runtime");
        let sockets: BTreeMap<u64, std::net::TcpListener> = (1..=n).map(|i| (i, reserve())).collect();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let relays: BTreeMap<u64, Relay> = sockets
            .iter()
            .map(|(i, l)| {
                let target = l.local_addr().expect("local addr");
                let r = Relay::start(rt.handle(), SocketAddr::new(loopback, 0), loopback, target, *i)
                    .expect("start a relay");
                (*i, r)
            })
            .collect();
        let initial = relays.iter().map(|(i, r)| format!("{i}={}", r.addr)).collect::<Vec<_>>().join(",");
        let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        args.extend(["--initial-cluster".to_string(), initial]);
        let nodes = sockets
            .into_iter()
            .map(|(i, l)| (i, ControlNode::spawn(i, l, &dir.path().join(format!("node-{i}")), &args)))
            .collect();
        let c = RelayedCluster { nodes, relays, rt: Some(rt), dir };
        c.leader(Duration::from_secs(15)).await;
        c
    }

    /// The leader every node agrees on.
    pub async fn leader(&self, timeout: Duration) -> u64 {
        eventually("a leader all nodes agree on", timeout, || async {
            let mut leader = None;
            for n in self.nodes.values() {
                let s = status(&n.addr).await?;
                if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                    return None;
                }
                leader = Some(s.leader_id);
            }
            leader
        })
        .await
    }

    /// Sets what every peer link does from now on.
    pub fn set_links(&self, f: Faults) {
        for r in self.relays.values() {
            r.set(f);
        }
    }
}

impl Drop for RelayedCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        self.relays.clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
