//! Plain HTTP framing through a real proxy, to a backend that answers exactly the bytes a test
//! chooses and records exactly the bytes it gets: what would let a client and a backend
//! disagree on where a message ends is refused (CL beside TE, codings other than chunked, a
//! 101 nobody asked for, a malformed chunked body), a body is never dropped, every request
//! reaches the backend with a Host; and a backend's refusal of a WebSocket upgrade reaches the
//! client whole, interim answers skipped, with `Connection: close`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that records each request's bytes and answers by path (see [`answer`]).
struct Scripted {
    addr: String,
    got: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer to a request for `path`, in parts written 300 ms apart.
fn answer(path: &str) -> Vec<&'static [u8]> {
    match path {
        "/both" => vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
        ],
        "/gzip" => vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
        "/switch" => vec![b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"],
        "/refuse" => vec![
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 16\r\n\r\n0123",
            b"456789abcdef",
        ],
        "/chunked" => {
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", b"lo\r\n6\r\n world\r\n0\r\n\r\n"]
        }
        "/early" => vec![
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly",
        ],
        "/garbage" => vec![b"NOT HTTP AT ALL\r\n\r\n"],
        "/badchunk" => vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!!\r\n0\r\n\r\n"],
        // The backend closes after these (see `Scripted::start`).
        "/until-close" => vec![b"HTTP/1.1 200 OK\r\n\r\nall of it"],
        "/close-after" => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        _ => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    }
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let g = g.clone();
                tokio::spawn(async move {
                    // Requests one after another, as a keep-alive backend takes them.
                    while let Some(text) = read_request(&mut s).await {
                        let path = text.split(' ').nth(1).unwrap_or("/").to_string();
                        g.lock().unwrap().push(text);
                        for (i, part) in answer(&path).into_iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            if s.write_all(part).await.is_err() {
                                return;
                            }
                        }
                        if path == "/until-close" || path == "/close-after" {
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, got, task }
    }

    fn last(&self) -> String {
        self.got.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

/// A request's bytes: its head, and a chunked body up to its last chunk (or what came in
/// 2 s); `None` once the connection ends.
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let waiting_body = match text.find("\r\n\r\n") {
            None => false,
            Some(end) if !text[..end].contains("transfer-encoding: chunked") => break,
            Some(end) if text.len() > end + 4 && text.ends_with("0\r\n\r\n") => break,
            Some(_) => true,
        };
        let read = s.read(&mut chunk);
        let n = if waiting_body {
            match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(r) => r.ok()?,
                Err(_) => break,
            }
        } else {
            read.await.ok()?
        };
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Writes `raw` on a new connection and reads until the proxy closes it (5 s at most).
async fn exchange(addr: &str, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until what came ends with `tail` (5 s at most): one answer or several on a
/// kept-alive connection.
async fn read_until(s: &mut tokio::net::TcpStream, tail: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.ends_with(tail.as_bytes()) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A one-node cluster and a proxy routing everything to a [`Scripted`] backend.
async fn scripted_behind_a_proxy() -> (Cluster, Scripted, ProxyProcess) {
    let c = Cluster::start(1, &[]).await;
    let b = Scripted::start().await;
    let rev = route_all(&c.nodes[&1].addr, "p", &[&b.addr]).await;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;
    (c, b, proxy)
}

fn status(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_a_client_and_a_backend_could_read_differently_is_refused() {
    let _g = serial().await;
    let (_c, b, proxy) = scripted_behind_a_proxy().await;
    let p = proxy.ws.as_str();
    let ok = exchange(p, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok"), "{ok}");

    // The backend's framing: CL beside TE, a coding other than chunked, a 101 unasked: 502.
    for path in ["/both", "/gzip", "/switch"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let got = exchange(p, req.as_bytes()).await;
        assert_eq!(status(&got), "502", "{path}: {got}");
    }

    // The client's: a coding other than chunked and CONNECT get 501, a bad chunk 400; the
    // backend never hears of the first two.
    let before = b.got.lock().unwrap().len();
    let gz = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
    let got = exchange(p, gz).await;
    assert_eq!(status(&got), "501", "{got}");
    assert!(got.to_ascii_lowercase().contains("connection: close"), "{got}");
    let got = exchange(p, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").await;
    assert_eq!(status(&got), "501", "{got}");
    assert_eq!(b.got.lock().unwrap().len(), before, "refused before any backend");
    let bad = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n";
    let got = exchange(p, bad).await;
    assert_eq!(status(&got), "400", "{got}");

    // A GET's chunked body reaches the backend (hyper alone would send it as no body).
    let get = b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let got = exchange(p, get).await;
    assert_eq!(status(&got), "200", "{got}");
    assert!(b.last().contains("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "the body went on: {}", b.last());

    // Every request reaches the backend with a Host: one the Connection header names, and
    // an HTTP/1.0 request's that had none (the backend's address, as NGINX sends).
    let got = exchange(p, b"GET /named HTTP/1.1\r\nHost: app.example\r\nConnection: close, host\r\n\r\n").await;
    assert_eq!(status(&got), "200", "{got}");
    assert!(b.last().to_ascii_lowercase().contains("host: app.example\r\n"), "{}", b.last());
    let got = exchange(p, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&got), "200", "{got}");
    let host = format!("host: {}\r\n", b.addr);
    assert!(b.last().to_ascii_lowercase().contains(&host), "{}", b.last());

    // A backend's refusal of an upgrade: the 103 before it skipped, its body whole though it
    // comes 300 ms later, and the connection closed with it although the backend keeps its own.
    let up = "GET /refuse HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let got = exchange(p, up.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{got}");
    assert!(got.contains("\r\nConnection: close\r\n\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n0123456789abcdef"), "{got}");

    // The proxy serves on.
    let ok = exchange(p, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// A backend that takes the connection and the head but stops reading the body (a blocked
/// event loop, say) gets the pool's response timeout to read it, as NGINX's
/// `proxy_send_timeout`: the client gets 504, instead of holding its connection, the backend
/// connection and the backend's count for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reading_the_body_is_bounded_by_the_response_timeout() {
    use switchyard_proto::v1::*;
    let _g = serial().await;
    let c = Cluster::start(1, &[]).await;
    // Accepts and holds every connection, reading nothing.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = stuck.accept().await {
            socks.push(s);
        }
    });
    let mut a = admin(&c.nodes[&1].addr);
    let pool = Pool { name: "stuck".into(), response_timeout_ms: 500, max_body_bytes: 1 << 30, ..Default::default() };
    a.create_pool(CreatePoolRequest { pool: Some(pool) }).await.unwrap();
    let b = Backend { pool: "stuck".into(), address: stuck_addr, weight: 1, ..Default::default() };
    a.add_backend(AddBackendRequest { backend: Some(b) }).await.unwrap();
    let route = Route { name: "all".into(), pool: "stuck".into(), ..Default::default() };
    let rev = a.set_route(SetRouteRequest { route: Some(route), force: false }).await.unwrap().into_inner().revision;
    let proxy = ProxyProcess::spawn(&c.endpoints(), &c.dir.path().join("p.cache"), "p1");
    proxy.wait_revision(rev).await;

    let body_len: usize = 256 << 20;
    let s = tokio::net::TcpStream::connect(&proxy.ws).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {body_len}\r\n\r\n");
    let writer = tokio::spawn(async move {
        w.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..body_len / chunk.len() {
            w.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(w)
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(15), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    held.abort();
    assert!(answered.is_ok(), "no answer while the backend read nothing");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
}

/// Requests without a body take the proxy's fast path: a backend's answer reaches the client
/// framed as the backend framed it (a chunked body byte for byte, interim answers skipped), on
/// one kept-alive client connection whatever the backend does with its own; a request the
/// fast path does not take (one with a body, pipelined behind others) is served by hyper on
/// the same connection; a body framed until the backend closes closes the client's too; and
/// chunked framing that does not add up is a 502, never the bytes past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_requests_get_answers_framed_as_sent_on_one_kept_alive_connection() {
    let _g = serial().await;
    let (_c, b, proxy) = scripted_behind_a_proxy().await;
    let mut s = tokio::net::TcpStream::connect(&proxy.ws).await.unwrap();

    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let got = read_until(&mut s, "0\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("\r\nTransfer-Encoding: chunked\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "byte for byte: {got}");

    s.write_all(b"GET /early HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let got = read_until(&mut s, "early").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nearly"), "103 skipped: {got}");

    // The backend closes its connection after this answer; the client's goes on, and its
    // next request gets a new backend connection, not a 502.
    s.write_all(b"GET /close-after HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let got = read_until(&mut s, "ok").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let got = read_until(&mut s, "ok").await;
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok"), "{got}");

    // The proxy's own answer to a HEAD has no body: the next answer on the connection is
    // read from its first byte.
    s.write_all(b"HEAD /garbage HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let got = read_until(&mut s, "\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 502") && got.contains("\r\nContent-Length: 15\r\n"), "{got}");
    s.write_all(b"GET /after-head HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let got = read_until(&mut s, "ok").await;
    assert!(got.starts_with("HTTP/1.1 200"), "no body after the 502's head: {got}");

    // Three requests in one write: the POST's body goes to hyper with the rest of the
    // connection, and every answer comes back in order.
    let pipelined = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /three HTTP/1.1\r\nHost: a\r\n\r\n";
    s.write_all(pipelined).await.unwrap();
    let got = read_until(&mut s, "ok").await;
    let got = if got.matches("HTTP/1.1 200").count() < 3 { got + &read_until(&mut s, "ok").await } else { got };
    let got = if got.matches("HTTP/1.1 200").count() < 3 { got + &read_until(&mut s, "ok").await } else { got };
    assert_eq!(got.matches("HTTP/1.1 200").count(), 3, "{got}");
    let seen = b.got.lock().unwrap().clone();
    let two = seen.iter().find(|r| r.starts_with("POST /two ")).expect("the POST reached the backend");
    assert!(two.ends_with("\r\n\r\nhello"), "{two}");
    let order: Vec<&str> = seen.iter().rev().take(3).map(|r| r.split(' ').nth(1).unwrap_or("")).collect();
    assert_eq!(order, ["/three", "/two", "/one"]);

    // A body that lasts until the backend closes: the client's connection closes after it.
    let got = exchange(&proxy.ws, b"GET /until-close HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nall of it"), "{got}");
    assert!(got.contains("\r\nConnection: close\r\n"), "{got}");

    // Chunk data longer than its size, in the first bytes of the body: a 502, never the
    // bytes after.
    let got = exchange(&proxy.ws, b"GET /badchunk HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&got), "502", "{got}");
    assert!(!got.contains("hello"), "{got}");

    let ok = exchange(&proxy.ws, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok"), "{ok}");
}
