//! Active health checks on the leader: a backend that stops answering is marked unhealthy
//! after `fall` probes, healthy again after `rise`, and a new leader carries on.

use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;

async fn health_of(addr: &str, backend: &str) -> Option<i32> {
    let r = query(addr)
        .list_backends(ListBackendsRequest { consistency: Consistency::Local as i32, pool: "p".into() })
        .await
        .ok()?;
    r.into_inner().backends.into_iter().find(|b| b.address == backend).map(|b| b.health)
}

async fn wait_health(c: &Cluster, backend: &str, want: Health, within: Duration) {
    eventually(&format!("{backend} to be {want:?} on every node"), within, || async {
        for n in c.nodes.values().filter(|n| n.is_running()) {
            if health_of(&n.addr, backend).await? != want as i32 {
                return None;
            }
        }
        Some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_flip_health_after_rise_and_fall_probes_and_a_new_leader_takes_over() {
    let _g = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let mut tcp_backend = DemoBackend::spawn("tcp");
    let mut ws_backend = DemoBackend::spawn("ws");
    let addr = c.nodes[&1].addr.clone();
    let mut a = admin(&addr);
    // interval 200 ms, rise 2, fall 2: transitions within about 400 ms of the change.
    let hc = |kind: HealthCheckKind| HealthCheck {
        kind: kind as i32,
        interval_ms: 200,
        timeout_ms: 150,
        rise: 2,
        fall: 2,
        path: "/".into(),
    };
    let pool = Pool { name: "p".into(), health_check: Some(hc(HealthCheckKind::HealthCheckTcp)), ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    for b in [&tcp_backend, &ws_backend] {
        let backend = Backend { pool: "p".into(), address: b.addr.clone(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(backend) }).await.unwrap();
    }
    let bound = Duration::from_secs(3);
    wait_health(&c, &tcp_backend.addr, Health::Healthy, bound).await;

    tcp_backend.kill9();
    wait_health(&c, &tcp_backend.addr, Health::Unhealthy, bound).await;
    tcp_backend.start();
    wait_health(&c, &tcp_backend.addr, Health::Healthy, bound).await;

    // The WebSocket check: a real handshake and a ping answered with a pong.
    let pool =
        Pool { name: "p".into(), health_check: Some(hc(HealthCheckKind::HealthCheckWebsocket)), ..Default::default() };
    a.update_pool(UpdatePoolRequest { pool: Some(pool), update_mask: vec!["health_check".into()] }).await.unwrap();
    ws_backend.kill9();
    wait_health(&c, &ws_backend.addr, Health::Unhealthy, bound).await;
    ws_backend.start();
    wait_health(&c, &ws_backend.addr, Health::Healthy, bound).await;

    // Kill the leader: the next one probes within an interval and keeps the states true.
    let leader = c.leader(Duration::from_secs(5)).await;
    c.node(leader).kill9();
    c.leader(Duration::from_secs(10)).await;
    ws_backend.kill9();
    wait_health(&c, &ws_backend.addr, Health::Unhealthy, Duration::from_secs(5)).await;
    ws_backend.start();
    wait_health(&c, &ws_backend.addr, Health::Healthy, Duration::from_secs(5)).await;
}
