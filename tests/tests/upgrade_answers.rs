//! How the proxy takes a backend's answer to an upgrade: a backend counts a connection from
//! the moment it is picked (a burst of upgrades still in flight sees each other), and frames
//! with reserved bits pass only when the backend agreed an extension. The backends here are
//! raw sockets that answer as the test says, when it says.

use std::time::Duration;

use switchyard_proto::v1::*;
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that takes `delay` to answer each upgrade with its 101, then holds the
/// connection until the proxy closes it.
async fn slow_to_upgrade(delay: Duration) -> (String, tokio::task::JoinHandle<()>) {
    upgrading_backend(delay, |acc| good_101(acc, None)).await
}

/// Reads an upgrade request's head from `s`: the `Sec-WebSocket-Accept` its key calls for,
/// or `None` if the connection ends first.
async fn read_upgrade(s: &mut tokio::net::TcpStream) -> Option<String> {
    let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let key = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-key:"))
        .and_then(|l| l.split_once(':'))
        .map_or("", |(_, v)| v.trim());
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The 101 a backend that agrees `extension` (if any) sends, with the right `accept`.
fn good_101(accept: &str, extension: Option<&str>) -> String {
    let agreed = extension.map_or(String::new(), |e| format!("Sec-WebSocket-Extensions: {e}\r\n"));
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{agreed}\r\n"
    )
}

/// A backend that answers each upgrade after `delay` with `answer(accept)` (`accept` being the
/// right `Sec-WebSocket-Accept` for the key it got), then sends every frame it gets back
/// unmasked, its first byte (FIN, RSV bits, opcode) kept.
async fn upgrading_backend(
    delay: Duration,
    answer: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let answer = std::sync::Arc::new(answer);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let Some(accept) = read_upgrade(&mut s).await else { return };
                tokio::time::sleep(delay).await;
                let _ = s.write_all(answer(&accept).as_bytes()).await;
                // Short masked frames (payload under 126 bytes) back as the server sends them.
                let mut got = Vec::new();
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    got.extend_from_slice(&buf[..n]);
                    while got.len() >= 6 && got.len() >= 6 + (got[1] & 0x7f) as usize {
                        let len = (got[1] & 0x7f) as usize;
                        let key = [got[2], got[3], got[4], got[5]];
                        let mut back = vec![got[0], len as u8];
                        back.extend(got[6..6 + len].iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
                        got.drain(..6 + len);
                        if s.write_all(&back).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Pool `name` with `backend` alone, routed from host `name.example`: the revision of the route.
async fn routed_pool(cluster: &Cluster, name: &str, backend: &str) -> u64 {
    let mut a = admin(&cluster.nodes[&1].addr);
    a.create_pool(CreatePoolRequest { pool: Some(Pool { name: name.into(), ..Default::default() }) }).await.unwrap();
    let b = Backend { pool: name.into(), address: backend.into(), weight: 1, ..Default::default() };
    a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    let route = Route { name: name.into(), host: format!("{name}.example"), pool: name.into(), ..Default::default() };
    a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision
}

/// A backend counts a connection from the moment it is picked, not from its 101: a burst of
/// upgrades in flight together sees each other, so least connections spreads it and the
/// per-backend cap holds (all six got 101 when the count began at the 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_in_flight_count_against_their_backend() {
    let _g = serial().await;
    let cluster = Cluster::start(1, &[]).await;
    let addr = cluster.nodes[&1].addr.clone();
    let (one, t1) = slow_to_upgrade(Duration::from_millis(600)).await;
    let (two, t2) = slow_to_upgrade(Duration::from_millis(600)).await;
    let mut a = admin(&addr);
    let pool = Pool {
        name: "capped".into(),
        algorithm: Algorithm::LeastConnections as i32,
        max_connections_per_backend: 2,
        ..Default::default()
    };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    for address in [&one, &two] {
        let b = Backend { pool: "capped".into(), address: address.clone(), weight: 1, ..Default::default() };
        a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    }
    let route = Route { name: "capped".into(), pool: "capped".into(), ..Default::default() };
    let rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    let proxy = ProxyProcess::spawn(&cluster.endpoints(), &cluster.dir.path().join("proxy.cache"), "p1");
    proxy.wait_revision(rev).await;

    let burst = (0..6).map(|_| upgrade_status(&proxy.ws, "capped.example"));
    let mut answers = futures::future::join_all(burst).await;
    answers.sort();
    let statuses: Vec<&str> = answers.iter().map(|a| a.split(' ').nth(1).unwrap_or("none")).collect();
    assert_eq!(statuses, ["101", "101", "101", "101", "503", "503"], "{answers:?}");
    // Every count was given back: the refused ones at once, the others as they closed.
    eventually("the counts back at zero", Duration::from_secs(10), || async {
        let s = proxy.status().await?;
        let active: u64 = s["backends"].as_array()?.iter().map(|b| b["active"].as_u64().unwrap_or(0)).sum();
        (active == 0).then_some(())
    })
    .await;
    t1.abort();
    t2.abort();
}

/// Frames with RSV bits pass when the backend agreed an extension (permessage-deflate sets
/// RSV1 on every compressed message: browsers offer it on every connection), and are refused
/// with 1002 when it did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bits_pass_when_the_backend_agreed_an_extension() {
    let _g = serial().await;
    let cluster = Cluster::start(1, &[]).await;
    let (deflate, t1) = upgrading_backend(Duration::ZERO, |acc| good_101(acc, Some("permessage-deflate"))).await;
    let (plain, t2) = upgrading_backend(Duration::ZERO, |acc| good_101(acc, None)).await;
    let mut rev = 0;
    for (name, backend) in [("deflate", &deflate), ("plain", &plain)] {
        rev = routed_pool(&cluster, name, backend).await;
    }
    let proxy = ProxyProcess::spawn(&cluster.endpoints(), &cluster.dir.path().join("proxy.cache"), "p1");
    proxy.wait_revision(rev).await;

    let mut compressed = vec![0x80 | 0x40 | 0x1, 0x80 | 4, 1, 2, 3, 4];
    compressed.extend(b"zzzz".iter().enumerate().map(|(i, b)| b ^ (i as u8 + 1)));
    for (host, want) in [("deflate.example", vec![0xc1, 4, b'z', b'z', b'z', b'z']), ("plain.example", vec![])] {
        let mut c = tokio::net::TcpStream::connect(&proxy.ws).await.unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&compressed).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n @ 1..) = c.read(&mut buf).await {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).position(|w| w == b"\r\n\r\n").is_some_and(|at| out.len() >= at + 4 + 4) {
                    break;
                }
            }
        })
        .await;
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a 101") + 4;
        assert!(out.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&out));
        let frames = &out[end..];
        if want.is_empty() {
            // The proxy's Close 1002: the frame broke the protocol with no extension agreed.
            assert!(frames.starts_with(&[0x88, 2, 0x03, 0xea]), "{frames:?}");
        } else {
            assert!(frames.starts_with(&want), "the compressed frame came back, RSV1 kept: {frames:?}");
        }
    }
    t1.abort();
    t2.abort();
}

/// A raw upgrade answer, given the right `Sec-WebSocket-Accept`.
type Answer = fn(&str) -> String;

/// A 101 the client would fail (a wrong accept, no `Upgrade: websocket`, an extension it did
/// not offer, or no valid head at all) is answered 502 by the proxy, which keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_the_client_would_fail_is_answered_502() {
    let _g = serial().await;
    let cluster = Cluster::start(1, &[]).await;
    let answers: [(&str, Answer); 5] = [
        ("good", |acc| good_101(acc, None)),
        ("wrong-accept", |_| {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".into()
        }),
        ("no-upgrade", |acc| {
            format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {acc}\r\n\r\n")
        }),
        ("unoffered", |acc| {
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {acc}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
        }),
        ("garbage", |_| "HTTP/1.1 1O1 Switching\r\n\0\r\n\r\n".into()),
    ];
    let mut tasks = Vec::new();
    let mut rev = 0;
    for (name, answer) in answers {
        let (backend, task) = upgrading_backend(Duration::ZERO, answer).await;
        tasks.push(task);
        rev = routed_pool(&cluster, name, &backend).await;
    }
    let proxy = ProxyProcess::spawn(&cluster.endpoints(), &cluster.dir.path().join("proxy.cache"), "p1");
    proxy.wait_revision(rev).await;
    for (host, want) in [
        ("good.example", "101"),
        ("wrong-accept.example", "502"),
        ("no-upgrade.example", "502"),
        ("unoffered.example", "502"),
        ("garbage.example", "502"),
        ("good.example", "101"),
    ] {
        let status = upgrade_status(&proxy.ws, host).await;
        assert_eq!(status.split(' ').nth(1), Some(want), "{host}: {status}");
    }
    for t in tasks {
        t.abort();
    }
}
