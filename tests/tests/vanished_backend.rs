//! A backend host that vanishes (powered off, cut off: no RST, no FIN, nothing) while clients
//! are relayed to it. The backend runs in a network namespace of its own behind a veth pair,
//! and a blackhole route makes it vanish for real. Without a bound on unacknowledged data
//! the kernel retransmits for about 15 minutes, and a client that keeps sending is held on a
//! dead backend all that time (the idle timeout never fires while it talks): its messages go
//! nowhere. The proxy sets `TCP_USER_TIMEOUT` on backend connections, so the kernel gives the
//! connection up, and the client gets Close 1001 and can reconnect elsewhere. A client that
//! sends nothing (waiting for pushes) is found the same way by TCP keepalive probes.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use switchyard_proto::v1::*;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;

const NS: &str = "sybv-ns";
const HOST_VETH: &str = "sybv-h";
const NS_VETH: &str = "sybv-b";
const HOST_ADDR: &str = "10.78.0.1";
const BACKEND_ADDR: &str = "10.78.0.2";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The backend's namespace and link; removed (with the blackhole) when dropped.
struct FarHost;

impl FarHost {
    /// `Err` when this machine cannot make a namespace (not root, no `ip`): the test is
    /// skipped. Past that, a step that fails fails the test.
    fn create() -> Result<FarHost, String> {
        FarHost::remove();
        ip(&["netns", "add", NS])?;
        let host = FarHost;
        let (host_net, backend_net) = (format!("{HOST_ADDR}/30"), format!("{BACKEND_ADDR}/30"));
        for step in [
            &["link", "add", HOST_VETH, "type", "veth", "peer", "name", NS_VETH][..],
            &["link", "set", NS_VETH, "netns", NS],
            &["addr", "add", &host_net, "dev", HOST_VETH],
            &["link", "set", HOST_VETH, "up"],
            &["-n", NS, "addr", "add", &backend_net, "dev", NS_VETH],
            &["-n", NS, "link", "set", NS_VETH, "up"],
            &["-n", NS, "link", "set", "lo", "up"],
        ] {
            ip(step).unwrap_or_else(|e| panic!("building the backend's network: {e}"));
        }
        Ok(host)
    }

    /// The host stops answering: every packet toward it is dropped, none refused.
    fn vanish(&self) {
        ip(&["route", "add", "blackhole", &format!("{BACKEND_ADDR}/32")]).expect("the blackhole route");
    }

    fn remove() {
        let _ = ip(&["route", "del", "blackhole", &format!("{BACKEND_ADDR}/32")]);
        if let Ok(out) = Command::new("ip").args(["netns", "pids", NS]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", NS]);
        let _ = ip(&["link", "del", HOST_VETH]);
    }
}

impl Drop for FarHost {
    fn drop(&mut self) {
        FarHost::remove();
    }
}

/// The next Close the client gets, past other frames; `None` if the stream ends without one.
async fn next_close(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

/// A backend host in its own namespace, a one-node cluster routing everything to it, and a
/// proxy started with `args`, in use; `None` when this machine cannot make a namespace.
async fn far_backend(args: &[&str]) -> Option<(FarHost, Proc, Cluster, ProxyProcess)> {
    let far = match FarHost::create() {
        Ok(f) => f,
        Err(why) => {
            println!("skipped: this test needs network namespaces (root and `ip`): {why}");
            return None;
        }
    };
    // The backend runs inside the namespace (`ip netns exec` runs it in place, so the guard
    // kills the backend itself).
    let mut backend = Proc::default();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", NS]).arg(bin("switchyard")).args([
        "demo-backend",
        "--listen",
        &format!("{BACKEND_ADDR}:9000"),
        "--name",
        "far",
    ]);
    cmd.stderr(std::process::Stdio::null());
    backend.start_reporting(&mut cmd, "the backend in its namespace");

    let c = Cluster::start(1, &[]).await;
    let mut a = admin(&c.nodes[&1].addr);
    a.create_pool(CreatePoolRequest { pool: Some(Pool { name: "far".into(), ..Default::default() }) }).await.unwrap();
    let b = Backend { pool: "far".into(), address: format!("{BACKEND_ADDR}:9000"), weight: 1, ..Default::default() };
    a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    let route = Route { name: "all".into(), pool: "far".into(), ..Default::default() };
    let rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let p = ProxyProcess::spawn_with(&c.endpoints(), &c.dir.path().join("p.cache"), "p", &args);
    p.wait_revision(rev).await;
    Some((far, backend, c, p))
}

/// The connection is let go (its client had 2 s to answer the Close), and the proxy keeps
/// no trace of it.
async fn let_go(p: &ProxyProcess) {
    eventually("the connection to end on the proxy", Duration::from_secs(10), || async {
        let s = p.status().await?;
        let far = s["backends"].as_array()?.iter().find(|b| b["pool"] == "far")?.clone();
        (far["active"] == 0 && s["open_connections"] == 0).then_some(())
    })
    .await;
}

/// A client connected through a proxy started with `args` to the far backend, which then
/// vanishes; `talk` says whether the client keeps sending. It must get Close 1001 within
/// 15 s, and the proxy must let the connection go.
async fn closed_once_the_host_vanishes(args: &[&str], talk: bool) {
    let Some((far, _backend, _c, p)) = far_backend(args).await else { return };
    let (mut ws, name) = ws_connect(&p.ws, "/", &[]).await.expect("connect through the proxy");
    assert_eq!(name, "far");
    echo(&mut ws, Message::text("before")).await.expect("an echo while the host is there");

    far.vanish();
    let cut = Instant::now();
    if talk {
        // As a chat client would: the message is relayed into a connection nobody
        // acknowledges any more.
        ws.send(Message::text("into the void")).await.expect("the proxy takes the message");
    }
    let close = tokio::time::timeout(Duration::from_secs(15), next_close(&mut ws)).await;
    let waited = cut.elapsed();
    let code = close.unwrap_or_else(|_| panic!("no Close within 15 s of the host vanishing (talking: {talk})"));
    assert_eq!(code, Some(1001), "the client is told the backend went away (after {waited:?})");
    let_go(&p).await;
    println!("closed {waited:?} after the host vanished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_a_vanished_backend_host_is_closed_once_its_data_goes_unacknowledged() {
    let _g = serial().await;
    // Keepalive off: only the data the client sends finds the host gone.
    closed_once_the_host_vanishes(&["--backend-unacked-timeout-ms", "1000", "--backend-keepalive-ms", "0"], true).await;
}

/// Both sides fall silent, as a client waiting for pushes and a backend with none to send do:
/// nothing is sent that could go unacknowledged, but the keepalive probes are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_client_on_a_vanished_backend_host_is_closed_by_keepalive_probes() {
    let _g = serial().await;
    closed_once_the_host_vanishes(&["--backend-unacked-timeout-ms", "2000", "--backend-keepalive-ms", "1000"], false)
        .await;
}
