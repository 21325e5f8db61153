//! The node's HTTP port: `GET /metrics` (unauthenticated and read-only, like etcd's
//! `--listen-metrics-urls`), `/healthz` for a plain liveness probe, and the web console
//! ([`crate::console`], which checks credentials itself). It serves on loopback unless told
//! otherwise.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use switchyard_model::rebinding;
use tokio::net::TcpListener;

use crate::console::{self, Body};
use crate::node::context::NodeCtx;

/// Scrapers, probes and a few console pages: past this many connections at once, or past
/// [`MAX_PER_CLIENT`] from one address, new ones are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// A quarter of the port for any one address, so that no client can keep the liveness
/// probe out (a console behind one ingress has every user on one address: pages use two or
/// three connections each).
const MAX_PER_CLIENT: usize = 16;
/// A request head must arrive within this, so idle or slow clients hold nothing for long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed gracefully after this, busy or not: a client that stops reading a
/// response, or a console feed left open, would otherwise hold its slot for good. Scrapers
/// reconnect, and the console's feed reconnects by itself.
const LIFETIME: Duration = Duration::from_secs(300);

/// Serves until the node's shutdown token is cancelled.
pub async fn serve(listener: TcpListener, node: Arc<NodeCtx>) {
    let slots = switchyard_model::slots::Slots::new(MAX_CONNECTIONS, MAX_PER_CLIENT);
    loop {
        let (sock, peer, slot) = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            a = slots.accept(&listener, "http port") => a,
        };
        let node = node.clone();
        let stop = node.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(answer(&node, peer, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(sock);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEAD_TIMEOUT, conn).await;
                }
            }
        });
    }
}

async fn answer(node: &Arc<NodeCtx>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let (status, ct, body) = match (req.method(), req.uri().path()) {
        // The console judges names itself (a loopback one is trusted, another needs a token).
        (&Method::GET, "/metrics") if rebinding::browser_on_a_foreign_name(req.headers()) => {
            (StatusCode::FORBIDDEN, "text/plain", rebinding::REFUSAL.into())
        }
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", super::render(node))
        }
        (&Method::GET, "/healthz") => match node.fatal.reason() {
            None => (StatusCode::OK, "text/plain", "ok\n".into()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("fatal: {why}\n")),
        },
        (&Method::GET, _) | (&Method::POST, _) => match console::answer(node, peer, req).await {
            Some(r) => return r,
            None => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or / (the console)\n".into()),
        },
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET (and POST for console actions)\n".into()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("static response parts are valid")
}
