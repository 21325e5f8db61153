//! The chaos suite's network: one namespace per control-plane node, each joined by a veth
//! pair to a bridge in the root namespace, so a partition is a real route or a real link
//! going down, not a flag inside the product.
//!
//! Addresses (all on 10.77.0.0/24, the bridge is the hub):
//! - node i listens on 10.77.0.i inside its own namespace `sych-n{i}`;
//! - the fault relay in front of node i listens on 10.77.0.(100+i) in the root namespace, and
//!   peers reach node i only there (it is node i's address in `--initial-cluster`);
//! - relays dial nodes from 10.77.0.200, everything else in the root namespace (proxies, the
//!   test's clients) from 10.77.0.254, so a route inside a node's namespace can cut its peers
//!   and leave its clients alone, or the reverse.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

/// Every name this suite creates starts with it, so a crashed run's leftovers can be found.
const PREFIX: &str = "sych-";
const BRIDGE: &str = "sych-br";
/// Where proxies and test clients come from.
pub const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
/// Where relays dial nodes from.
pub const RELAY_SOURCE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// This machine cannot host the topology (not root, no `ip`): the suite is skipped.
    #[error("network namespaces are not available here: {0}")]
    Unavailable(String),
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
}

pub fn node_addr(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, id as u8)
}

pub fn relay_addr(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 100 + id as u8)
}

pub fn namespace(id: u64) -> String {
    format!("{PREFIX}n{id}")
}

fn host_veth(id: u64) -> String {
    format!("{PREFIX}h{id}")
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Ip { args: args.join(" "), stderr: format!("cannot run ip: {e}") })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// The namespaces, veths and bridge of one run; all removed when dropped.
pub struct Net {
    nodes: u64,
    /// (namespace's node, destination) pairs with a blackhole route in place.
    blackholes: BTreeSet<(u64, Ipv4Addr)>,
    /// Nodes whose link to the bridge is down.
    isolated: BTreeSet<u64>,
}

impl Net {
    /// Checks that namespaces can be made here, removes what a crashed run left, and builds
    /// the topology for nodes `1..=nodes`.
    pub fn create(nodes: u64) -> Result<Net, NetError> {
        probe()?;
        remove_stale();
        let net = Net { nodes, blackholes: BTreeSet::new(), isolated: BTreeSet::new() };
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        ip(&["addr", "add", &format!("{HUB}/24"), "dev", BRIDGE])?;
        ip(&["addr", "add", &format!("{RELAY_SOURCE}/32"), "dev", BRIDGE])?;
        for i in 1..=nodes {
            let (ns, veth) = (namespace(i), host_veth(i));
            ip(&["addr", "add", &format!("{}/32", relay_addr(i)), "dev", BRIDGE])?;
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", node_addr(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Takes node `id`'s link down: nothing reaches it or leaves it, peers or clients.
    pub fn isolate(&mut self, id: u64) {
        ip(&["link", "set", &host_veth(id), "down"]).expect("take a veth down");
        self.isolated.insert(id);
    }

    /// A blackhole route in node `id`'s namespace: what it sends to `dst` is dropped.
    pub fn blackhole(&mut self, id: u64, dst: Ipv4Addr) {
        ip(&["-n", &namespace(id), "route", "add", "blackhole", &format!("{dst}/32")]).expect("add a blackhole route");
        self.blackholes.insert((id, dst));
    }

    /// Cuts node `id` off from its peers, both ways, while its clients still reach it: it
    /// cannot send to any relay, nor answer what relays bring it.
    pub fn cut_from_peers(&mut self, id: u64) {
        self.blackhole(id, RELAY_SOURCE);
        for j in (1..=self.nodes).filter(|j| *j != id) {
            self.blackhole(id, relay_addr(j));
        }
    }

    /// Undoes every partition.
    pub fn heal(&mut self) {
        for id in std::mem::take(&mut self.isolated) {
            ip(&["link", "set", &host_veth(id), "up"]).expect("bring a veth up");
        }
        for (id, dst) in std::mem::take(&mut self.blackholes) {
            ip(&["-n", &namespace(id), "route", "del", "blackhole", &format!("{dst}/32")])
                .expect("remove a blackhole route");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_stale();
    }
}

/// Root, `ip`, and a namespace that can really be made (and is removed again).
fn probe() -> Result<(), NetError> {
    let probe = format!("{PREFIX}probe");
    let _ = ip(&["netns", "del", &probe]);
    ip(&["netns", "add", &probe]).map_err(|e| NetError::Unavailable(e.to_string()))?;
    ip(&["netns", "del", &probe]).map_err(|e| NetError::Unavailable(e.to_string()))
}

/// Removes every namespace and link of this suite's naming (an earlier run's, if it crashed).
fn remove_stale() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) {
                // A node a crashed run left behind still runs in it: stop it first.
                if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-KILL", pid]).status();
                    }
                }
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `7: sych-h1@if2: <...`
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if name.starts_with(PREFIX) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}
