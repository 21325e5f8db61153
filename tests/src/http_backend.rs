//! A real HTTP/1.1 backend (hyper) for the plain-HTTP tests: it names itself in every answer,
//! echoes request bodies as they stream in, holds long-polls, streams chunked answers, and
//! records the headers it was sent and how many connections it accepted (so a test can see
//! keep-alive connections being reused).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};

pub struct HttpBackend {
    pub addr: String,
    pub name: String,
    pub connections: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    pub last_headers: Arc<Mutex<Vec<(String, String)>>>,
    /// The request target of the last request, as it came.
    pub last_target: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

type Body = BoxBody<Bytes, hyper::Error>;
/// The last request's headers and target.
type Seen = (Arc<Mutex<Vec<(String, String)>>>, Arc<Mutex<String>>);

fn text(name: &str, s: String) -> Response<Body> {
    Response::builder()
        .header("x-backend", name)
        .body(Full::new(Bytes::from(s)).map_err(|e| match e {}).boxed())
        .expect("valid response")
}

async fn answer(name: Arc<str>, seen: Arc<Seen>, req: Request<Incoming>) -> Response<Body> {
    *seen.1.lock().unwrap() = req.uri().to_string();
    *seen.0.lock().unwrap() =
        req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
    match req.uri().path() {
        "/hold" => {
            let ms: u64 = param("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            // The long-poll itself: the backend holds the request this long before answering.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(&name, name.to_string())
        }
        "/echo" => {
            Response::builder().header("x-backend", &*name).body(req.into_body().boxed()).expect("valid response")
        }
        "/count" => {
            // Reads the whole body before it answers (with its length), as an upload handler does.
            let n = req.into_body().collect().await.map_or(0, |b| b.to_bytes().len());
            text(&name, n.to_string())
        }
        "/drip" => {
            // A response body streamed slowly: `n` chunks, `ms` apart.
            let ms: u64 = param("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            let n: usize = param("n").and_then(|v| v.parse().ok()).unwrap_or(1);
            let parts = futures::stream::unfold(0usize, move |i| async move {
                if i == n {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Some((Ok::<_, hyper::Error>(Frame::data(Bytes::from(format!("{i},")))), i + 1))
            });
            Response::builder()
                .header("x-backend", &*name)
                .body(StreamBody::new(parts).boxed())
                .expect("valid response")
        }
        "/big" => {
            // `n` chunks of 64 KiB, each as soon as the last is taken: only the reader paces it.
            let n: usize = param("n").and_then(|v| v.parse().ok()).unwrap_or(1);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let parts = futures::stream::iter((0..n).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))));
            Response::builder()
                .header("x-backend", &*name)
                .body(StreamBody::new(parts).boxed())
                .expect("valid response")
        }
        "/chunks" => {
            let parts = ["one,", "two,", "three"].map(|p| Ok::<_, hyper::Error>(Frame::data(Bytes::from(p))));
            let body = StreamBody::new(futures::stream::iter(parts));
            Response::builder().header("x-backend", &*name).body(body.boxed()).expect("valid response")
        }
        "/missing" => {
            let mut r = text(&name, "not here".into());
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r
        }
        _ => text(&name, name.to_string()),
    }
}

impl HttpBackend {
    pub async fn start(name: &str) -> HttpBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http backend");
        let addr = listener.local_addr().expect("addr").to_string();
        let (connections, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (last_headers, last_target) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(String::new())));
        let (c, r, n): (_, _, Arc<str>) = (connections.clone(), requests.clone(), name.into());
        let h = Arc::new((last_headers.clone(), last_target.clone()));
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                c.fetch_add(1, Relaxed);
                let (r, h, n) = (r.clone(), h.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        r.fetch_add(1, Relaxed);
                        let (h, n) = (h.clone(), n.clone());
                        async move { Ok::<_, Infallible>(answer(n, h, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(sock);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        HttpBackend { addr, name: name.to_string(), connections, requests, last_headers, last_target, task }
    }

    /// The value of header `name` in the last request this backend got.
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.last_headers.lock().unwrap().iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A kept-alive HTTP/1.1 client connection (hyper) to `addr`.
pub async fn http_client(addr: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await.expect("HTTP handshake");
    tokio::spawn(conn);
    tx
}

/// Sends `req` on `tx`: (status, headers, body as text).
pub async fn http_send(
    tx: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (u16, hyper::HeaderMap, String) {
    tx.ready().await.expect("connection ready");
    let resp = tx.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// A GET of `path` with `headers`, for [`http_send`].
pub fn get(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(path).header("host", "app.example");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("valid request")
}
