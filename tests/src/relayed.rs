//! A loopback cluster whose peer links pass through fault relays (see
//! [`chaos::relay`](crate::chaos::relay)): each node advertises its relay's address, so every
//! connection to it from a peer takes the relay's latency, while the test reaches the nodes
//! directly. No namespaces or root needed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::chaos::relay::{Faults, Relay};
use crate::control::{agreed_leader, reserve, ControlNode};
use switchyard_model::grpc::ClientTls;

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
        let rt = crate::chaos::relay::runtime();
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
        let addrs: Vec<&str> = self.nodes.values().map(|n| n.addr.as_str()).collect();
        agreed_leader(&addrs, &ClientTls::cleartext(), timeout).await
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
