//! The proxy's admin port: Prometheus `/metrics`, a JSON `/status`, and a page showing that
//! status at `/` (HTML and a little JavaScript compiled in, no external assets).

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use switchyard_model::rebinding;
use tokio::net::TcpListener;

use crate::relay::Side;
use crate::state::ProxyState;

/// The admin port is for scrapers and operators, a handful of connections: past this many at
/// once, new ones are closed at accept.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// A quarter of them for any one address: no client can keep the readiness and liveness
/// probes out (a probe that cannot connect takes the proxy out of service, or restarts it).
pub const MAX_ADMIN_PER_CLIENT: usize = 16;
/// A request head must arrive within this (slow or idle clients hold nothing for long).
const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept-alive admin connection is closed gracefully after this, idle or not; scrapers
/// reconnect.
const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) {
    let slots = switchyard_model::slots::Slots::new(MAX_ADMIN_CONNECTIONS, MAX_ADMIN_PER_CLIENT);
    loop {
        let (sock, _, slot) = tokio::select! {
            _ = state.runtime.shutdown.cancelled() => return,
            a = slots.accept(&listener, "admin port") => a,
        };
        let st = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let st = st.clone();
                async move {
                    if req.method() != Method::GET && req.method() != Method::HEAD {
                        return Ok::<_, Infallible>(not_allowed());
                    }
                    if rebinding::browser_on_a_foreign_name(req.headers()) {
                        return Ok::<_, Infallible>(foreign_name());
                    }
                    if req.uri().path() == "/applied" {
                        return Ok::<_, Infallible>(applied(&st, req.uri().query().unwrap_or("")).await);
                    }
                    Ok::<_, Infallible>(route(&st, req))
                }
            });
            let io = hyper_util::rt::TokioIo::new(sock);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEAD_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = tokio::time::sleep(ADMIN_CONNECTION_LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(ADMIN_HEAD_TIMEOUT, conn).await;
                }
            }
        });
    }
}

/// What a browser gets that named this port by a name that may be another site's (see
/// [`rebinding`]): `/status` lists every backend address and the control plane's.
fn foreign_name() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::FORBIDDEN)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(rebinding::REFUSAL.as_bytes())))
        .expect("static response parts are valid")
}

fn not_allowed() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::METHOD_NOT_ALLOWED)
        .header("allow", "GET, HEAD")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"the admin port is read-only: GET or HEAD\n")))
        .expect("static response parts are valid")
}

const PAGE: &str = include_str!("admin/page.html");
const PAGE_JS: &str = include_str!("admin/status.js");

/// Whether the proxy should be sent traffic: it runs a config (from the control plane or its
/// cache) and is not shutting down.
fn ready(state: &ProxyState) -> Result<(), &'static str> {
    if state.runtime.shutdown.is_cancelled() {
        return Err("shutting down");
    }
    if state.status.config().source == "none" {
        return Err("no config yet (from the control plane or the cache)");
    }
    Ok(())
}

fn route(state: &ProxyState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (ct, body, status) = match req.uri().path() {
        "/" => ("text/html; charset=utf-8", PAGE.into(), StatusCode::OK),
        "/status.js" => ("text/javascript; charset=utf-8", PAGE_JS.into(), StatusCode::OK),
        "/metrics" => ("application/openmetrics-text; version=1.0.0; charset=utf-8", metrics(state), StatusCode::OK),
        "/status" => ("application/json", status_json(state).to_string(), StatusCode::OK),
        "/healthz" => ("text/plain", "ok\n".into(), StatusCode::OK),
        // For a load balancer's readiness check: traffic only once there are routes to send
        // it by, and none while shutting down (liveness stays on /healthz).
        "/readyz" => match ready(state) {
            Ok(()) => ("text/plain", "ready\n".into(), StatusCode::OK),
            Err(why) => ("text/plain", format!("not ready: {why}\n"), StatusCode::SERVICE_UNAVAILABLE),
        },
        _ => ("text/plain", "not found: try /, /metrics, /status, /healthz or /readyz\n".into(), StatusCode::NOT_FOUND),
    };
    Response::builder()
        .status(status)
        .header("content-type", ct)
        .header(
            "content-security-policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        )
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// `/applied?revision=N`: waits (up to 5 s) until this proxy runs revision N or later, then
/// says when it started to, in Unix microseconds. Benchmarks use it to time propagation.
async fn applied(state: &ProxyState, query: &str) -> Response<Full<Bytes>> {
    let want: u64 =
        query.split('&').find_map(|kv| kv.strip_prefix("revision=")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let found = loop {
        let notified = state.status.applied_changed.notified();
        if let Some(x) = state.status.applied_at(want) {
            break Some(x);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break None;
        }
    };
    let (status, body) = match found {
        Some((rev, at)) => {
            let us = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
            (StatusCode::OK, json!({"revision": rev, "applied_unix_us": us}).to_string())
        }
        None => (StatusCode::GATEWAY_TIMEOUT, json!({"error": "not applied within 5s"}).to_string()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn age_secs(t: SystemTime) -> f64 {
    SystemTime::now().duration_since(t).map_or(0.0, |d| d.as_secs_f64())
}

pub fn status_json(state: &ProxyState) -> serde_json::Value {
    let cfg = state.status.config();
    let cp = state.status.control_plane();
    let backends: Vec<_> = state
        .registry
        .all()
        .into_iter()
        .map(|((pool, addr), s)| {
            json!({
                "pool": pool, "address": addr,
                "active": s.active.load(Relaxed), "total": s.total.load(Relaxed),
                "active_elsewhere": s.cluster_active.load(Relaxed),
                "messages_to_backend": s.traffic.messages(Side::ToBackend),
                "messages_to_client": s.traffic.messages(Side::ToClient),
                "bytes_to_backend": s.traffic.bytes(Side::ToBackend),
                "bytes_to_client": s.traffic.bytes(Side::ToClient),
                "connect_failures": s.connect_failures.load(Relaxed),
                "ejected": s.ejected_until_ms.load(Relaxed) > state.registry.now_ms(),
            })
        })
        .collect();
    let failures = state.runtime.failures();
    json!({
        "proxy_id": state.proxy_id,
        "config": {"source": cfg.source, "revision": cfg.revision, "age_seconds": age_secs(cfg.applied_at)},
        "control_plane": {
            "connected": cp.connected.is_some(),
            "node": cp.connected,
            "state_for_seconds": cp.since.elapsed().as_secs_f64(),
            "leader_revision": cp.leader_revision,
            "behind": state.status.behind(),
            "last_heard_seconds": cp.last_heard.map(|t| t.elapsed().as_secs_f64()),
        },
        "accepted": state.runtime.accepted.load(Relaxed),
        "open_connections": state.runtime.open.load(Relaxed),
        "max_connections": state.runtime.max_open.load(Relaxed),
        "idle_backend_connections": state.runtime.pooled.load(Relaxed),
        "active": backends.iter().map(|b| b["active"].as_u64().unwrap_or(0)).sum::<u64>(),
        "handshake_failures": failures,
        "edge_auth": state.compiled.keys.status(),
        "versions": state.status.versions(),
        "backends": backends,
    })
}

type Labels = Vec<(String, String)>;

fn metrics(state: &ProxyState) -> String {
    let mut reg = Registry::with_prefix("switchyard_proxy");
    let active = Family::<Labels, Gauge>::default();
    let total = Family::<Labels, Counter>::default();
    let msgs = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let fails = Family::<Labels, Counter>::default();
    for ((pool, addr), s) in state.registry.all() {
        let l = vec![("pool".to_string(), pool.clone()), ("backend".to_string(), addr.clone())];
        active.get_or_create(&l).set(s.active.load(Relaxed) as i64);
        total.get_or_create(&l).inc_by(s.total.load(Relaxed));
        for (dir, side) in [("to_backend", Side::ToBackend), ("to_client", Side::ToClient)] {
            let mut ld = l.clone();
            ld.push(("direction".into(), dir.into()));
            msgs.get_or_create(&ld).inc_by(s.traffic.messages(side));
            bytes.get_or_create(&ld).inc_by(s.traffic.bytes(side));
        }
    }
    for (reason, n) in state.runtime.failures().iter() {
        fails.get_or_create(&vec![("reason".into(), reason.to_string())]).inc_by(*n);
    }
    reg.register("active_connections", "Connections being relayed", active);
    reg.register("connections", "Connections relayed since start", total);
    reg.register("messages", "WebSocket messages relayed", msgs);
    reg.register("bytes", "Bytes relayed after the handshake", bytes);
    reg.register(
        "handshake_failures",
        "Handshakes refused or failed, by reason (tls_error and tls_timeout: wss clients' TLS handshakes)",
        fails,
    );
    let reloads = Family::<Labels, Counter>::default();
    reloads.get_or_create(&vec![("result".into(), "ok".into())]).inc_by(state.runtime.tls_reloads.load(Relaxed));
    reloads
        .get_or_create(&vec![("result".into(), "failed".into())])
        .inc_by(state.runtime.tls_reload_failures.load(Relaxed));
    reg.register("tls_certificate_reloads", "wss certificate reloads (failed: the previous set kept)", reloads);
    let cfg = state.status.config();
    let rev = Gauge::<i64>::default();
    rev.set(cfg.revision as i64);
    reg.register("config_revision", "Revision of the config in use", rev);
    let age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    age.set(age_secs(cfg.applied_at));
    reg.register("config_age_seconds", "Seconds since the config in use was applied", age);
    let cp = state.status.control_plane();
    let up = Gauge::<i64>::default();
    up.set(cp.connected.is_some() as i64);
    reg.register("control_plane_connected", "1 while following a control-plane node", up);
    let behind = Gauge::<i64>::default();
    behind.set(state.status.behind() as i64);
    reg.register("config_behind_revisions", "Revisions the config in use trails the leader's, as last heard", behind);
    let heard = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    // Never heard from any node: counted from when this proxy started.
    heard.set(cp.last_heard.unwrap_or(state.status.started).elapsed().as_secs_f64());
    reg.register("control_plane_last_heard_seconds", "Seconds since a control-plane node last spoke", heard);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
