//! The metrics port: a small hyper HTTP/1.1 server answering `GET /metrics` (and `/healthz`
//! for a plain liveness probe). Read-only and unauthenticated, like etcd's
//! `--listen-metrics-urls`: it serves on loopback unless told otherwise.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::node::context::NodeCtx;

/// Serves until the node's shutdown token is cancelled.
pub async fn serve(listener: TcpListener, node: Arc<NodeCtx>) {
    loop {
        let sock = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let node = node.clone();
        let stop = node.shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(answer(&node, &req)) }
            });
            let io = hyper_util::rt::TokioIo::new(sock);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn answer(node: &NodeCtx, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ct, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", super::render(node))
        }
        (&Method::GET, "/healthz") => match node.fatal.reason() {
            None => (StatusCode::OK, "text/plain", "ok\n".into()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("fatal: {why}\n")),
        },
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics\n".into()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
