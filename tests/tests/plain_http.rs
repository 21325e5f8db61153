//! Plain HTTP/1.1 through real proxies to real hyper backends: routed and balanced like
//! WebSocket, sticky by the same affinity cookie from any proxy, kept alive on both sides,
//! bodies streamed both ways, hop-by-hop headers dropped and this hop described; and the
//! limits: 413, 504 for a pool's response timeout while a long-poll under the default is not
//! cut (the timeout counted once the backend has the whole request, and bounding the silences
//! inside a response body too), 404, 503, 400, 431, and an upgrade on a reused connection refused; and the handshake
//! timeout bounding the wait for a kept-alive connection's next head and for a request body
//! the client stops sending (408); a held long-poll counted on its backend while it waits.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::Request;
use switchyard_proto::v1::{Settings, UpdateSettingsRequest};
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(15);

/// Writes `raw` on a new connection to `addr` and reads until the peer closes or 5 s pass.
async fn raw(addr: &str, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// POSTs a 100-byte body to `/count` on `host` in ten pieces `gap` apart, and reads the
/// answer until the proxy closes (or 5 s pass).
async fn upload_in_pieces(addr: &str, host: &str, gap: Duration) -> String {
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
    let head = format!("POST /count HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 100\r\n\r\n");
    wr.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(gap).await;
        wr.write_all(b"0123456789").await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await.expect("answered").ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET for `path` on `host`.
fn get_on(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", host).body(Full::new(Bytes::new())).expect("valid request")
}

fn cookie_of(h: &hyper::HeaderMap) -> Option<String> {
    h.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        let pair = v.split(';').next()?;
        pair.starts_with("sy=").then(|| pair.to_string())
    })
}

/// A cluster with pool "web" (two backends, cookie affinity, a 1000-byte body limit) for
/// app.example, and pool "slow" (a 400 ms response timeout) for slow.example.
async fn setup() -> (Cluster, HttpBackend, HttpBackend, HttpBackend, String) {
    let c = Cluster::start(1, &[]).await;
    let eps = c.endpoints();
    let (b1, b2, slow) =
        (HttpBackend::start("b1").await, HttpBackend::start("b2").await, HttpBackend::start("s1").await);
    for args in [
        vec!["pool", "create", "web", "--affinity", "cookie:sy", "--max-body", "1000"],
        vec!["backend", "add", "web", &b1.addr],
        vec!["backend", "add", "web", &b2.addr],
        vec!["route", "set", "web", "--pool", "web", "--host", "app.example"],
        vec!["pool", "create", "slow", "--response-timeout", "400ms"],
        vec!["backend", "add", "slow", &slow.addr],
        vec!["route", "set", "slow", "--pool", "slow", "--host", "slow.example"],
        vec!["pool", "create", "empty"],
        vec!["route", "set", "empty", "--pool", "empty", "--host", "empty.example"],
    ] {
        let mut all = vec!["--endpoints", &eps];
        all.extend(args.iter());
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    (c, b1, b2, slow, eps)
}

async fn until_routed(proxy: &ProxyProcess) {
    eventually("the proxy to route plain HTTP", LONG, || async {
        let mut tx = http_client(&proxy.ws).await;
        let (code, _, body) = http_send(&mut tx, get("/", &[])).await;
        (code == 200 && body.starts_with('b')).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_balanced_sticky_kept_alive_and_streamed() {
    let _g = serial().await;
    let (_c, b1, b2, _slow, eps) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let p1 = ProxyProcess::spawn(&eps, &dir.path().join("p1.cache"), "http-1");
    let p2 = ProxyProcess::spawn(&eps, &dir.path().join("p2.cache"), "http-2");
    until_routed(&p1).await;
    until_routed(&p2).await;

    // Without the cookie, requests are balanced over both backends, and each answer sets one.
    let mut seen = std::collections::BTreeSet::new();
    let mut tx = http_client(&p1.ws).await;
    // Each new session's backend is its random key's consistent-hash choice: 8 requests all
    // went to one backend in 1 run of 128 (CI saw it), 24 in 1 of 8 million.
    for _ in 0..24 {
        let (code, h, body) = http_send(&mut tx, get("/", &[])).await;
        assert_eq!(code, 200);
        assert!(cookie_of(&h).is_some(), "a cookie on a response without one asked: {h:?}");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "both backends served: {seen:?}");
    // A backend's error begins no session: no cookie (and no binding) for a 404.
    let (code, h, _) = http_send(&mut tx, get("/missing", &[])).await;
    assert_eq!(code, 404);
    assert!(cookie_of(&h).is_none(), "a cookie on a 404: {h:?}");

    // With the cookie, every request sticks to one backend, through either proxy, on one
    // kept-alive connection each.
    let (_, h, first) = http_send(&mut tx, get("/", &[])).await;
    let cookie = cookie_of(&h).expect("cookie");
    let connections_before = b1.connections.load(Relaxed) + b2.connections.load(Relaxed);
    let mut tx2 = http_client(&p2.ws).await;
    for i in 0..20 {
        let via = if i % 2 == 0 { &mut tx } else { &mut tx2 };
        let (code, h, body) = http_send(via, get("/", &[("cookie", &cookie)])).await;
        assert_eq!((code, body.as_str()), (200, first.as_str()), "request {i} stuck to {first}");
        assert!(cookie_of(&h).is_none(), "no new cookie for a client that has one");
    }
    let opened = b1.connections.load(Relaxed) + b2.connections.load(Relaxed) - connections_before;
    assert!(opened <= 2, "20 requests over kept-alive backend connections opened {opened} new ones");

    // Hop-by-hop headers stay on their hop; the backend learns who asked and how.
    let (code, _, _) = http_send(
        &mut tx,
        get(
            "/",
            &[
                ("cookie", &cookie),
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("x-app", "kept"),
                ("x-forwarded-for", "10.9.8.7"),
                ("forwarded", "for=10.0.0.1;proto=https;host=admin.internal"),
                ("x-forwarded-ssl", "on"),
                ("x_app", "underscored"),
            ],
        ),
    )
    .await;
    assert_eq!(code, 200);
    let backend = if first == "b1" { &b1 } else { &b2 };
    assert_eq!(backend.last_header("x-app").as_deref(), Some("kept"));
    assert_eq!(backend.last_header("x-secret"), None, "a header named in Connection was forwarded");
    assert_eq!(backend.last_header("x-forwarded-for").as_deref(), Some("10.9.8.7, 127.0.0.1"));
    assert_eq!(backend.last_header("x-forwarded-proto").as_deref(), Some("http"));
    // The client's own forwarding headers, and names with an underscore (`x_app` is
    // `HTTP_X_APP` to a CGI-style server, as `x-app` is), do not reach the backend.
    assert_eq!(backend.last_header("forwarded").as_deref(), Some("for=127.0.0.1;proto=http;host=\"app.example\""));
    assert_eq!((backend.last_header("x-forwarded-ssl"), backend.last_header("x_app")), (None, None));
    assert_eq!(backend.last_header("host").as_deref(), Some("app.example"));

    // Bodies stream both ways: a chunked upload is echoed, a chunked answer arrives whole.
    let chunks = futures::stream::iter(
        ["ab", "cd", "ef"].map(|s| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(s)))),
    );
    let sock = tokio::net::TcpStream::connect(&p1.ws).await.unwrap();
    let (mut stx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await.unwrap();
    tokio::spawn(conn);
    let req =
        Request::post("/echo").header("host", "app.example").body(http_body_util::StreamBody::new(chunks)).unwrap();
    let resp = stx.send_request(req).await.expect("echo");
    let echoed = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert_eq!(&echoed[..], b"abcdef");
    let (code, _, body) = http_send(&mut tx, get("/chunks", &[])).await;
    assert_eq!((code, body.as_str()), (200, "one,two,three"));

    // WebSocket on the same listener still takes its own path (the frame-checking relay).
    let ws_backend = EchoBackend::start("ws-1").await;
    for args in [
        vec!["pool", "create", "ws"],
        vec!["backend", "add", "ws", &ws_backend.addr],
        vec!["route", "set", "ws", "--pool", "ws", "--host", "ws.example"],
    ] {
        let mut all = vec!["--endpoints", &eps];
        all.extend(args.iter());
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let (mut ws, hello) = eventually("a WebSocket through the same listener", LONG, || async {
        ws_connect(&p1.ws, "/", &[("host", "ws.example")]).await.ok()
    })
    .await;
    assert_eq!(hello, "ws-1");
    echo(&mut ws, tokio_tungstenite::tungstenite::Message::text("still a websocket")).await.expect("echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_limits_answer_with_the_right_status_and_idle_connections_close() {
    let _g = serial().await;
    let (c, b1, b2, slow, eps) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let extra = vec!["--access-log".to_string(), log.display().to_string()];
    let p = ProxyProcess::spawn_with(&eps, &dir.path().join("p.cache"), "http-limits", &extra);
    until_routed(&p).await;
    let mut tx = http_client(&p.ws).await;
    let before = b1.requests.load(Relaxed) + b2.requests.load(Relaxed);

    // 413: a declared body over the pool's limit is refused before any backend sees it; a
    // chunked one is cut when it passes the limit.
    let big =
        Request::post("/echo").header("host", "app.example").body(Full::new(Bytes::from(vec![b'x'; 2000]))).unwrap();
    let (code, _, _) = http_send(&mut tx, big).await;
    assert_eq!(code, 413);
    assert_eq!(b1.requests.load(Relaxed) + b2.requests.load(Relaxed), before, "a backend saw the oversized request");
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        3000,
        "y".repeat(3000)
    );
    let answer = raw(&p.ws, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A client still sending its body when the 413 comes (8 MiB, more than the sockets between
    // it and the proxy hold) finishes its write and reads the answer: the proxy lingers, where
    // closing at once on the unread body reset the connection and failed the client's write.
    let mut post =
        format!("POST /echo HTTP/1.1\r\nHost: app.example\r\nContent-Length: {}\r\n\r\n", 8 << 20).into_bytes();
    post.resize(post.len() + (8 << 20), b'z');
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(&p.ws).await.unwrap().into_split();
    let wrote = tokio::time::timeout(LONG, wr.write_all(&post)).await.expect("the body written");
    assert!(wrote.is_ok(), "the client's write failed: {wrote:?}");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LONG, rd.read_to_end(&mut answer)).await.expect("the connection closed");
    assert!(read.is_ok(), "the client's read failed: {read:?}");
    assert!(answer.starts_with(b"HTTP/1.1 413"), "{}", String::from_utf8_lossy(&answer));

    // A pool's response timeout answers 504; a long-poll under the default one is not cut.
    let mut slow_tx = http_client(&p.ws).await;
    let req = Request::get("/hold?ms=3000").header("host", "slow.example").body(Full::new(Bytes::new())).unwrap();
    let (code, _, _) = http_send(&mut slow_tx, req).await;
    assert_eq!(code, 504);
    // Counted, as a refused handshake is.
    let s = p.status().await.expect("status");
    assert_eq!(s["handshake_failures"]["gateway_timeout"].as_u64(), Some(1), "{}", s["handshake_failures"]);
    let (code, _, body) = http_send(&mut tx, get("/hold?ms=2500", &[])).await;
    assert_eq!(code, 200, "{body}");
    // Pool "slow" answers within 400 ms or not at all, counted from when the backend has the
    // whole request: an upload that takes 1 s (a chunk every 100 ms) is the client's pace, and
    // is answered (it got 504 when the timeout ran from the start of the upload).
    let out = upload_in_pieces(&p.ws, "slow.example", Duration::from_millis(100)).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\n100"), "{out}");
    // The same bound holds between the pieces of a response body (NGINX's
    // `proxy_read_timeout`): a body whose pieces come 150 ms apart arrives whole, one whose
    // backend falls silent for 1.5 s is cut there, the client seeing an unfinished body (it
    // waited for the rest for as long as the backend liked before).
    let (code, _, body) = http_send(&mut http_client(&p.ws).await, get_on("slow.example", "/drip?ms=150&n=6")).await;
    assert_eq!((code, body.as_str()), (200, "0,1,2,3,4,5,"));
    let cut = raw(&p.ws, b"GET /drip?ms=1500&n=2 HTTP/1.1\r\nHost: slow.example\r\n\r\n").await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(!cut.contains("1,") && !cut.ends_with("0\r\n\r\n"), "the body was cut, not finished: {cut:?}");

    drop(slow);

    // 404 without a route, 503 with no backend (and a Retry-After), 400 for two Hosts, 431
    // for a head over the limit.
    let req = Request::get("/").header("host", "nowhere.example").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(http_send(&mut tx, req).await.0, 404);
    let req = Request::get("/").header("host", "empty.example").body(Full::new(Bytes::new())).unwrap();
    let (code, h, _) = http_send(&mut tx, req).await;
    assert_eq!(code, 503);
    assert!(h.contains_key("retry-after"));
    let answer = raw(&p.ws, b"GET / HTTP/1.1\r\nHost: app.example\r\nHost: evil.example\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let huge = format!("GET / HTTP/1.1\r\nHost: app.example\r\nX-Big: {}\r\n\r\n", "z".repeat(40_000));
    let answer = raw(&p.ws, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A WebSocket upgrade after a plain request on the same connection is refused, and the
    // connection closed; the proxy keeps serving.
    let two =
        "GET / HTTP/1.1\r\nHost: app.example\r\n\r\nGET / HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let answer = raw(&p.ws, two.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(http_send(&mut http_client(&p.ws).await, get("/", &[])).await.0, 200);

    // Each request has an access-log line: method, status, how it ended.
    let lines = eventually("access-log lines", LONG, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        lines.iter().any(|l| l["termination"] == "gateway_timeout").then_some(lines)
    })
    .await;
    let has = |status: u64, termination: &str, method: &str| {
        lines.iter().any(|l| l["status"] == status && l["termination"] == termination && l["method"] == method)
    };
    assert!(has(413, "body_too_large", "POST"), "{lines:?}");
    assert!(has(504, "gateway_timeout", "GET"), "{lines:?}");
    assert!(has(200, "http", "GET"), "{lines:?}");
    assert!(has(404, "no_route", "GET"), "{lines:?}");

    // The handshake timeout bounds a plain connection's wait for its next head, counted from
    // the end of its last response: a kept-alive connection left idle is closed, and so is one
    // whose next head comes too slowly (slowloris on a reused connection). A request in flight
    // (a long-poll the backend holds past the timeout) is not cut by it.
    let s = Settings { handshake_timeout_ms: 1000, ..Default::default() };
    let req = UpdateSettingsRequest { settings: Some(s), update_mask: vec!["handshake_timeout_ms".into()] };
    let rev = admin(&c.nodes[&1].addr).update_settings(req).await.unwrap().into_inner().revision;
    p.wait_revision(rev).await;

    // A long-poll held 2.5 s by its backend is answered; its connection stays usable.
    let mut tx = http_client(&p.ws).await;
    let (code, _, body) = http_send(&mut tx, get("/hold?ms=2500", &[])).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(http_send(&mut tx, get("/", &[])).await.0, 200);

    // Left idle after one answered request: closed by the proxy (the read ends) within 5 s,
    // where the default timeout (10 s) would have kept it open.
    let one = "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n";
    let mut idle = tokio::net::TcpStream::connect(&p.ws).await.unwrap();
    idle.write_all(one.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut out))
        .await
        .expect("idle connection closed")
        .ok();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200") && out.matches("HTTP/1.1").count() == 1, "{out}");

    // The next head begun, then a header line every 300 ms: progress, but the head never
    // ends. Closed too, with the first answer only.
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(&p.ws).await.unwrap().into_split();
    wr.write_all(format!("{one}GET / HTTP/1.1\r\n").as_bytes()).await.unwrap();
    let drip = tokio::spawn(async move {
        while wr.write_all(b"X-Slow: 1\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await.expect("slow head closed").ok();
    drip.abort();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200") && out.matches("HTTP/1.1").count() == 1, "{out}");

    // A request body the client stops sending gets 408 (its connection closed); one that
    // keeps coming, a chunk every 200 ms for 2 s, is taken whole: the bound is between reads.
    let stalled = "POST /count HTTP/1.1\r\nHost: app.example\r\nContent-Length: 100\r\n\r\n0123456789";
    let answer = raw(&p.ws, stalled.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{answer}");
    let out = upload_in_pieces(&p.ws, "app.example", Duration::from_millis(200)).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\n100"), "{out}");

    // A response body the backend streams for longer than the timeout (8 chunks 200 ms
    // apart) arrives whole: the request is in flight until its body has ended.
    let (code, _, body) = http_send(&mut http_client(&p.ws).await, get("/drip?ms=200&n=8", &[])).await;
    assert_eq!((code, body.as_str()), (200, "0,1,2,3,4,5,6,7,"));

    // A client that stops reading a long response is let go once it has left it unread for
    // the relay's write-stall bound (NGINX's `send_timeout`; 1 s here, from a 1 s idle
    // timeout): its request no longer holds its backend. It held it for good before.
    let s = Settings { idle_timeout_ms: 1000, ..Default::default() };
    let req = UpdateSettingsRequest { settings: Some(s), update_mask: vec!["idle_timeout_ms".into()] };
    let rev = admin(&c.nodes[&1].addr).update_settings(req).await.unwrap().into_inner().revision;
    p.wait_revision(rev).await;
    let mut reader = tokio::net::TcpStream::connect(&p.ws).await.unwrap();
    reader.write_all(b"GET /big?n=2048 HTTP/1.1\r\nHost: app.example\r\n\r\n").await.unwrap();
    let mut head = [0u8; 512];
    let n = reader.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    let active = |s: &serde_json::Value| {
        s["backends"].as_array().map_or(0, |all| all.iter().map(|b| b["active"].as_u64().unwrap_or(0)).sum::<u64>())
    };
    assert_eq!(active(&p.status().await.unwrap()), 1, "the unread response is in flight");
    eventually("the unread response to be let go", Duration::from_secs(10), || async {
        (active(&p.status().await?) == 0).then_some(())
    })
    .await;
    drop(reader);

    // A head limit under hyper's smallest buffer (8 KiB) holds for every request on a
    // kept-alive connection, not only its first: a 4 KiB head after a small one gets 431.
    let s = Settings { max_header_bytes: 2048, ..Default::default() };
    let req = UpdateSettingsRequest { settings: Some(s), update_mask: vec!["max_header_bytes".into()] };
    let rev = admin(&c.nodes[&1].addr).update_settings(req).await.unwrap().into_inner().revision;
    p.wait_revision(rev).await;
    let second = format!("{one}GET / HTTP/1.1\r\nHost: app.example\r\nX-Big: {}\r\n\r\n", "z".repeat(4096));
    let answer = raw(&p.ws, second.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 431"), "{answer}");
    let fits = format!("{one}GET / HTTP/1.1\r\nHost: app.example\r\nX-Small: {}\r\n\r\n", "z".repeat(1500));
    assert_eq!(raw(&p.ws, fits.as_bytes()).await.matches("HTTP/1.1 200").count(), 2);

    // The proxy serves on.
    assert_eq!(http_send(&mut http_client(&p.ws).await, get("/", &[])).await.0, 200);
}

/// A long-poll the backend holds counts as a connection to it from the moment it is sent,
/// not from its response head: least connections sends everything else to the other backend
/// meanwhile (it spread them evenly when a held request counted for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_long_poll_counts_as_a_connection_while_it_waits() {
    let _g = serial().await;
    let (_c, b1, b2, _slow, eps) = setup().await;
    for args in [
        vec!["pool", "create", "lc", "--algorithm", "least-connections"],
        vec!["backend", "add", "lc", &b1.addr],
        vec!["backend", "add", "lc", &b2.addr],
        vec!["route", "set", "lc", "--pool", "lc", "--host", "lc.example"],
    ] {
        let mut all = vec!["--endpoints", &eps];
        all.extend(args.iter());
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = ProxyProcess::spawn(&eps, &dir.path().join("p.cache"), "http-lc");
    let lc = |path: &str| Request::get(path).header("host", "lc.example").body(Full::new(Bytes::new())).unwrap();
    eventually("the proxy to route lc.example", LONG, || async {
        let mut tx = http_client(&p.ws).await;
        (http_send(&mut tx, lc("/")).await.0 == 200).then_some(())
    })
    .await;

    let mut held_tx = http_client(&p.ws).await;
    let req = lc("/hold?ms=5000");
    let held = tokio::spawn(async move { http_send(&mut held_tx, req).await });
    let busy = eventually("the held request counted on its backend", LONG, || async {
        let s = p.status().await?;
        let pool = s["backends"].as_array()?.iter().filter(|b| b["pool"] == "lc").cloned().collect::<Vec<_>>();
        // The held request alone: an earlier request whose count has not yet been given
        // back would make its backend look like the busy one. And no load from elsewhere.
        let total: u64 = pool.iter().map(|b| b["active"].as_u64().unwrap_or(0)).sum();
        if total != 1 || pool.iter().any(|b| b["active_elsewhere"] != 0) {
            return None;
        }
        let busy = pool.iter().find(|b| b["active"] == 1)?;
        Some(busy["address"].as_str()?.to_string())
    })
    .await;
    let other = if busy == b1.addr { "b2" } else { "b1" };
    let mut tx = http_client(&p.ws).await;
    for i in 0..6 {
        let (code, _, body) = http_send(&mut tx, lc("/")).await;
        assert_eq!((code, body.as_str()), (200, other), "request {i} went to the backend holding the long-poll");
    }
    let (code, _, body) = held.await.unwrap();
    let held_by = if busy == b1.addr { "b1" } else { "b2" };
    assert_eq!((code, body.as_str()), (200, held_by));
}
