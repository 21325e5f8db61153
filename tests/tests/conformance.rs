//! The proxy changes nothing a WebSocket peer says: every conformance case (the Autobahn
//! fuzzing client's framing, fragmentation, UTF-8 and closing-handshake cases, and the
//! proxy's own protocol checks) ends for the client exactly as it does on a direct connection
//! to the same strict backend: the same frames, the same close code, the same end.

use std::time::Duration;
use switchyard_tests::conformance::{cases, describe, run_case, StrictEcho};

use switchyard_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_ends_as_on_a_direct_connection_to_a_backend_that_drops_at_once() {
    every_case_ends_as_on_a_direct_connection(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_ends_as_on_a_direct_connection_to_a_backend_that_waits_for_the_close() {
    every_case_ends_as_on_a_direct_connection(true).await;
}

async fn every_case_ends_as_on_a_direct_connection(linger: bool) {
    let _g = serial().await;
    let backend = StrictEcho::start(linger).await;
    let cluster = Cluster::start(1, &[]).await;
    let rev = route_all(&cluster.nodes[&1].addr, "conf", &[&backend.addr]).await;
    let proxy = ProxyProcess::spawn(&cluster.endpoints(), &cluster.dir.path().join("proxy.cache"), "p1");
    proxy.wait_revision(rev).await;

    let (mut differ, mut codes) = (Vec::new(), Vec::new());
    for c in cases() {
        let t = std::time::Instant::now();
        let direct = run_case(&backend.addr, &c).await.without_reasons();
        let td = t.elapsed();
        let proxied = run_case(&proxy.ws, &c).await.without_reasons();
        println!("{}: {} ({td:?} direct, {:?} proxied)", c.id, describe(&proxied), t.elapsed() - td);
        // tungstenite accepts a length not in its shortest form; RFC 6455 §5.2 says it MUST be,
        // and the proxy holds clients to it (checked below).
        let stricter = c.id.starts_with("x.len64");
        // A backend that drops the connection at once, with the client's bytes unread, resets
        // it: a direct client may then lose the backend's Close with the reset, while the
        // proxy, which reads it first, still delivers it. Equal otherwise.
        let mut lost = direct.clone();
        if !linger && direct.close_code().is_none() {
            if let Some(last) = proxied.frames.last().filter(|f| f.opcode() == 8) {
                lost.frames.push(last.clone());
            }
        }
        // The reset can also cut the direct client's last frame short (it read 64 KiB of a
        // 256 KiB message, then the reset threw the rest away): what came before it must
        // still be the same, and the proxied client's close code is checked below.
        let cut = !linger && direct.close_code().is_none() && {
            let n = direct.frames.len().saturating_sub(1);
            proxied.frames.len() > n && proxied.frames[..n] == direct.frames[..n]
        };
        if direct != proxied && lost != proxied && !stricter && !cut {
            differ.push(format!("{}: direct {} / proxied {}", c.id, describe(&direct), describe(&proxied)));
        }
        codes.push((c.id, proxied.close_code(), proxied.end));
    }
    assert!(differ.is_empty(), "{} cases differ:\n{}", differ.len(), differ.join("\n"));
    // And what the cases exist for, whatever the backend: the close code a client must get.
    for (id, code, end) in codes {
        let want = match id.as_str() {
            "3.1" | "3.7" | "4.1.1" | "4.2.5" | "5.1" | "5.9" | "5.15" | "5.18" | "7.3.2" => Some(1002),
            "x.unmasked" | "x.len64-short" | "x.len64-binary" => Some(1002),
            i if i.starts_with("7.9.") => Some(1002),
            i if i.starts_with("6.3.") || i == "6.4.1" || i == "7.5.1" => Some(1007),
            "7.3.1" => None,
            "1.1.7" | "6.2.1" | "7.1.1" | "7.3.3" => Some(1000),
            _ => continue,
        };
        assert_eq!(code, want, "{id}");
        assert_eq!(end, "closed", "{id}: the connection ends");
    }
}

/// Autobahn 7.1.6 by steps: a client sends a large message, its Close, and then (against RFC
/// 6455, but clients do: a Pong on its way, a Ping) one more frame. The backend echoes, answers
/// the Close and hangs up, so the proxy's relay ends while most of the echo still waits in its
/// socket for this client, which has not read yet. The client's late frame must not make the
/// proxy's kernel reset the connection and drop the rest: the echo and the backend's Close
/// arrive whole. (Run in one go, the case lost them in CI when the late frame came just after
/// the relay ended.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_after_the_clients_close_costs_it_nothing_it_was_sent() {
    use switchyard_tests::conformance::{close_payload, frame, outcome, upgrade, CLOSE, FIN, PING, TEXT};
    use tokio::io::AsyncWriteExt;
    let _g = serial().await;
    let backend = StrictEcho::start(false).await;
    let cluster = Cluster::start(1, &[]).await;
    let rev = route_all(&cluster.nodes[&1].addr, "conf", &[&backend.addr]).await;
    let proxy = ProxyProcess::spawn(&cluster.endpoints(), &cluster.dir.path().join("proxy.cache"), "p1");
    proxy.wait_revision(rev).await;

    let (mut s, buf) = upgrade(&proxy.ws, "late frame").await;
    // More than this unread socket's receive window takes, so the rest waits on the proxy's side.
    let len = 1 << 20;
    s.write_all(&frame(FIN | TEXT, &vec![b'x'; len])).await.unwrap();
    s.write_all(&frame(FIN | CLOSE, &close_payload(1000, b""))).await.unwrap();
    let ended = || async {
        let st = proxy.status().await?;
        let b = st["backends"].as_array()?.first()?.clone();
        (b["total"].as_u64()? >= 1 && b["active"].as_u64()? == 0).then_some(())
    };
    eventually("the relay ended, the echo written", Duration::from_secs(10), ended).await;
    s.write_all(&frame(FIN | PING, b"")).await.unwrap();
    let got = outcome(s, buf).await.without_reasons();
    assert_eq!(describe(&got), format!("[op1/{len}B, Close(1000)] then closed"));
}
