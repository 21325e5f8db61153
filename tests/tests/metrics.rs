//! Control-plane metrics scraped from real nodes: the exposition parses, the nodes agree on
//! term and leader, the commit index follows writes, and gRPC calls are counted by method and
//! code.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;
use tonic::Code;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses OpenMetrics text strictly enough to fail on anything but comments and
/// `name{label="value",...} value` lines.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    assert!(text.trim_end().ends_with("# EOF"), "exposition ends with # EOF");
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, r) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                    let end = r.find('"').unwrap_or_else(|| panic!("unclosed label value in {line:?}"));
                    labels.insert(k.to_string(), r[..end].to_string());
                    rest = r[end + 1..].strip_prefix(',').unwrap_or(&r[end + 1..]);
                }
                (name, labels)
            }
        };
        let ok_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        assert!(ok_name, "bad metric name in {line:?}");
        out.push((name.to_string(), labels, value));
    }
    out
}

/// The value of `name` whose labels include every pair in `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
}

async fn scrape(n: &ControlNode) -> Vec<Sample> {
    parse(&n.scrape().await.unwrap_or_else(|| panic!("node {} serves /metrics", n.id)))
}

const CALLS: &str = "switchyard_control_grpc_server_handled_total";

fn create_pool_calls(s: &[Sample], code: &str) -> f64 {
    let l = [("grpc_service", "switchyard.v1.Admin"), ("grpc_method", "CreatePool"), ("grpc_code", code)];
    value(s, CALLS, &l).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_expose_agreeing_raft_metrics_and_count_calls_by_method_and_code() {
    let _g = serial().await;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;

    // Term and leader agree on every node; exactly one says it leads, and it is the leader.
    let (term, before) = eventually("term and leader to agree in metrics", Duration::from_secs(10), || async {
        let mut terms = Vec::new();
        let mut commits = BTreeMap::new();
        for n in c.nodes.values() {
            let s = scrape(n).await;
            if value(&s, "switchyard_control_raft_leader_id", &[])? != leader as f64 {
                return None;
            }
            let leads = value(&s, "switchyard_control_raft_state", &[("state", "leader")])?;
            assert_eq!(leads == 1.0, n.id == leader, "node {} raft_state{{state=leader}}", n.id);
            terms.push(value(&s, "switchyard_control_raft_term", &[])?);
            commits.insert(n.id, value(&s, "switchyard_control_raft_commit_index", &[])?);
        }
        terms.windows(2).all(|w| w[0] == w[1]).then(|| (terms[0], commits))
    })
    .await;
    assert!(term >= 1.0);

    // Writes through node 1, and one it refuses as invalid.
    let n1 = &c.nodes[&1];
    let calls_before = scrape(n1).await;
    let mut last = 0;
    for i in 0..5 {
        let req = CreatePoolRequest { pool: Some(Pool { name: format!("m-{i}"), ..Default::default() }) };
        last = admin(&n1.addr).create_pool(req).await.expect("create pool").into_inner().revision;
    }
    let bad = CreatePoolRequest { pool: Some(Pool { name: "no spaces allowed".into(), ..Default::default() }) };
    let err = admin(&n1.addr).create_pool(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let after = scrape(n1).await;
    assert_eq!(create_pool_calls(&after, "OK") - create_pool_calls(&calls_before, "OK"), 5.0);
    assert_eq!(create_pool_calls(&after, "InvalidArgument") - create_pool_calls(&calls_before, "InvalidArgument"), 1.0);

    // Every node's commit and applied index reach the last write.
    for n in c.nodes.values() {
        eventually(&format!("node {} to commit and apply revision {last}", n.id), Duration::from_secs(10), || async {
            let s = scrape(n).await;
            let commit = value(&s, "switchyard_control_raft_commit_index", &[])?;
            let applied = value(&s, "switchyard_control_raft_applied_index", &[])?;
            (commit >= last as f64 && applied >= last as f64 && commit > before[&n.id]).then_some(())
        })
        .await;
    }

    // The leader reports both followers' progress, proposals and log flushes.
    let l = scrape(&c.nodes[&leader]).await;
    for f in c.nodes.keys().filter(|id| **id != leader) {
        let matched = value(&l, "switchyard_control_raft_follower_matched_index", &[("follower", &f.to_string())]);
        assert!(matched.is_some_and(|m| m > 0.0), "leader reports follower {f}: {matched:?}");
    }
    assert!(value(&l, "switchyard_control_proposals_total", &[]).is_some_and(|p| p >= 5.0));
    assert!(value(&l, "switchyard_control_log_flush_duration_seconds_count", &[]).is_some_and(|n| n >= 5.0));

    // An open watch stream is counted on the node serving it, and uncounted when it closes.
    let watch_on = &c.nodes[&2];
    let req = WatchRequest { proxy_id: "metrics-test".into(), from_revision: 0 };
    let mut stream = discovery(&watch_on.addr).watch(req).await.expect("watch").into_inner();
    stream.message().await.expect("first event");
    let streams = |want: f64| async move {
        let s = scrape(watch_on).await;
        (value(&s, "switchyard_control_watch_streams", &[])? == want).then_some(())
    };
    eventually("the watch stream to be counted", Duration::from_secs(5), || streams(1.0)).await;
    drop(stream);
    eventually("the closed watch stream to be uncounted", Duration::from_secs(5), || streams(0.0)).await;
    assert_eq!(value(&scrape(watch_on).await, "switchyard_control_watch_lag_revisions", &[]), Some(0.0));

    // The Grafana dashboard asks only for metrics a node exposes.
    let text = c.nodes[&leader].scrape().await.expect("scrape");
    let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/switchyard.json"))
        .expect("deploy/grafana/switchyard.json");
    // Families without samples are left out of a scrape: nothing in this test probes health
    // or runs a proxy, so those are looked up where the node registers them instead.
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../control-plane/src/metrics.rs"))
        .expect("control-plane/src/metrics.rs");
    let idle = ["health_probes", "health_flips", "proxy_applied_revision", "proxy_propagation_seconds"];
    let mut used = 0;
    for (i, _) in dashboard.match_indices("switchyard_control_") {
        let name: String = dashboard[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let family = ["_total", "_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        let short = &family["switchyard_control_".len()..];
        let registered = idle.contains(&short) && source.contains(&format!("reg.register(\"{short}\""));
        assert!(families.contains(&family) || registered, "the dashboard uses {name}, which no node exposes");
        used += 1;
    }
    assert!(used >= 15, "the dashboard queries the metrics ({used} uses found)");
}

/// A proxy following the cluster: once it has reported, each revision it moves to is timed
/// from the leader's apply to the proxy's, into the leader's propagation histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_times_writes_reaching_proxies() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    let node = &c.nodes[&1];
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::spawn(&node.addr, &dir.path().join("p.cache"), "timed");
    let count = || async {
        value(&scrape(node).await, "switchyard_control_proxy_propagation_seconds_count", &[]).unwrap_or(0.0)
    };
    eventually("the proxy's first report", Duration::from_secs(15), || async {
        let s = scrape(node).await;
        value(&s, "switchyard_control_proxy_applied_revision", &[("proxy", "timed")]).map(|_| ())
    })
    .await;
    // (A first report is never timed: it may be a restarted proxy's cache; the rule is unit
    // tested in control-plane/src/metrics.rs.)
    let before = count().await;
    let rev = route_all(&node.addr, "timed-pool", &["127.0.0.1:9"]).await;
    let applied = http_get(&proxy.admin, &format!("/applied?revision={rev}")).await;
    assert!(applied.is_some(), "the proxy runs revision {rev}");
    eventually("the move to be timed", Duration::from_secs(15), || async { (count().await > before).then_some(()) })
        .await;
    let s = scrape(node).await;
    let sum = value(&s, "switchyard_control_proxy_propagation_seconds_sum", &[]).expect("sum");
    assert!(sum.is_finite() && sum >= 0.0, "propagation sum {sum}");
}

/// Sends `GET /healthz` from `from` to `to` and reads to the end: the status line, or
/// nothing for a connection closed at accept.
async fn healthz_from(from: &str, to: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(to.parse().unwrap()).await.expect("connects");
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("answered or closed");
    String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_string()
}

/// One client holding connections open on a node's HTTP port or a proxy's admin port takes
/// a quarter of their slots, not all: an orchestrator's health probe still gets in (a probe
/// that cannot connect restarts the process, or takes a proxy out of service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holding_connections_cannot_keep_health_probes_out() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    c.leader(Duration::from_secs(10)).await;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    for port in [c.nodes[&1].metrics.clone(), proxy.admin.clone()] {
        // Sixteen idle connections from 127.0.0.1, each taken (they hold their slot until the
        // head timeout).
        let mut held = Vec::new();
        for _ in 0..16 {
            held.push(tokio::net::TcpStream::connect(&port).await.unwrap());
        }
        eventually("the 17th from the same client closed at accept", Duration::from_secs(5), || async {
            healthz_from("127.0.0.1", &port).await.is_empty().then_some(())
        })
        .await;
        // The probe, from another address, is answered.
        assert_eq!(healthz_from("127.0.0.2", &port).await, "HTTP/1.1 200 OK", "{port}");
        drop(held);
        eventually("127.0.0.1 served again once its connections went", Duration::from_secs(5), || async {
            (healthz_from("127.0.0.1", &port).await == "HTTP/1.1 200 OK").then_some(())
        })
        .await;
    }
}

/// Sends `head` (a whole request head) to `to` and returns the status line.
async fn status_of(to: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await.expect("connects");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("answered");
    String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_string()
}

/// DNS rebinding: a browser sent to a node's `/metrics` or a proxy's `/status` under another
/// site's name (rebound to this machine) is refused; the same browser by address, and a
/// scraper by any name, are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_reaching_a_port_by_a_foreign_name_is_refused_and_a_scraper_is_not() {
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    c.leader(Duration::from_secs(10)).await;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    for (port, path) in [(c.nodes[&1].metrics.clone(), "/metrics"), (proxy.admin.clone(), "/status")] {
        let req = |host: &str, extra: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
        };
        let rebound = "rebind.attacker.example:8081";
        let got = status_of(&port, &req(rebound, "Sec-Fetch-Site: same-origin\r\n")).await;
        assert_eq!(got, "HTTP/1.1 403 Forbidden", "{port}{path}");
        let got = status_of(&port, &req(rebound, "Origin: http://rebind.attacker.example:8081\r\n")).await;
        assert_eq!(got, "HTTP/1.1 403 Forbidden", "{port}{path} with an Origin");
        let got = status_of(&port, &req(&port, "Sec-Fetch-Site: same-origin\r\n")).await;
        assert_eq!(got, "HTTP/1.1 200 OK", "{port}{path}: a browser by address");
        let got = status_of(&port, &req("metrics.internal.example", "User-Agent: Prometheus/2.53\r\n")).await;
        assert_eq!(got, "HTTP/1.1 200 OK", "{port}{path}: a scraper by name");
    }
}
