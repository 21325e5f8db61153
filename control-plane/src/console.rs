//! The web console, served by every node on its HTTP port (beside `/metrics`): the cluster,
//! its proxies, pools, backends, routes, the live change feed and the audit log, with drain,
//! enable and disable for operators. Plain HTML, CSS and JavaScript compiled into the binary.
//!
//! Callers prove themselves as on gRPC, through the same permission table: a bearer token
//! (`switchyard token create`), sent by the page in `Authorization`, never in a cookie, so
//! another site cannot make a browser act with it. A node without TLS trusts a caller with no
//! token as admin, as its gRPC port does, but only from a loopback address that also names a
//! loopback host (a page on another site that rebinds its name to 127.0.0.1 does not).

pub mod events;
pub mod view;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{header, HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use switchyard_proto::v1::admin_server::Admin;
use switchyard_proto::v1::{AdminState, SetBackendStateRequest};

use crate::api::admin::AdminService;
use crate::auth::table::{self, Access};
use crate::auth::{Auth, Authorizer, Caller, Presented};
use crate::clock::now_ms;
use crate::config::Security;
use crate::node::context::NodeCtx;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

const INDEX: &str = include_str!("console/assets/index.html");
const APP_JS: &str = include_str!("console/assets/app.js");
const APP_CSS: &str = include_str!("console/assets/app.css");

/// The gRPC methods whose rows in the permission table decide what the page may do.
const VIEW: &str = "/switchyard.v1.Query/ClusterStatus";
const OPERATE: &str = "/switchyard.v1.Admin/SetBackendState";
const AUDIT: &str = "/switchyard.v1.Access/ListAudit";
/// A request body on the console is a few names; anything larger is refused unread.
const MAX_BODY: usize = 4096;
/// A body must arrive within this, as a head must (`HEAD_TIMEOUT` of the port): a sender that
/// stalls mid-body would hold a connection slot until the connection's lifetime ends.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers a console path, or `None` when `req` is not for the console.
pub async fn answer(node: &Arc<NodeCtx>, peer: SocketAddr, req: Request<Incoming>) -> Option<Response<Body>> {
    let res = match (req.method(), req.uri().path()) {
        (&Method::GET, "/" | "/console" | "/console/") => asset(INDEX, "text/html; charset=utf-8"),
        (&Method::GET, "/console/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/console/app.css") => asset(APP_CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/console/api/state") => match authorize(node, peer, req.headers(), VIEW) {
            Ok((caller, rights)) => reply(StatusCode::OK, &view::state(node, &caller, &rights).await),
            Err(r) => r,
        },
        (&Method::GET, "/console/api/events") => match authorize(node, peer, req.headers(), VIEW) {
            Ok((caller, _)) => secured(Response::builder())
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-store")
                .body(BodyExt::boxed_unsync(events::stream(node.clone(), caller)))
                .expect("static response parts are valid"),
            Err(r) => r,
        },
        (&Method::POST, "/console/api/backend-state") => set_backend_state(node, peer, req).await,
        (_, p) if p == "/" || p.starts_with("/console") => {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method not allowed"}));
            let allow = if p == "/console/api/backend-state" { "POST" } else { "GET, HEAD" };
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
            r
        }
        _ => return None,
    };
    Some(res)
}

fn secured(b: hyper::http::response::Builder) -> hyper::http::response::Builder {
    b.header("content-security-policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'")
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
}

fn asset(body: &'static str, ct: &'static str) -> Response<Body> {
    secured(Response::builder())
        .header(header::CONTENT_TYPE, ct)
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync())
        .expect("static response parts are valid")
}

fn reply(status: StatusCode, v: &Value) -> Response<Body> {
    secured(Response::builder().status(status))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut r = reply(status, &json!({ "error": message.into() }));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    r
}

/// The gRPC status a refusal or a failed write carries, as the HTTP status a page expects.
fn http_status(s: &tonic::Status) -> StatusCode {
    use tonic::Code::*;
    match s.code() {
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied => StatusCode::FORBIDDEN,
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        NotFound => StatusCode::NOT_FOUND,
        FailedPrecondition | AlreadyExists | Aborted => StatusCode::CONFLICT,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // As grpc-gateway maps it: a limit reached, which the caller may retry once below it.
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether `Host` names this machine's loopback (an IP literal or `localhost`).
fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = switchyard_model::rebinding::host_name(host);
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Headers a forwarder adds for the client it stands in for.
const FORWARDED_FOR: [&str; 5] = ["forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "via"];

/// Whether a token-less caller is this machine's own user, trusted as the gRPC port trusts
/// loopback on a node without TLS. A loopback peer is not proof of that when a reverse proxy
/// or tunnel on this machine forwards other users (and a client picks its own `Host`), so a
/// request carrying a forwarder's headers must show a token; a forwarder that adds none
/// opens the console as it would open the gRPC port (see the README's console section).
fn loopback_trusted(security: Security, peer: SocketAddr, headers: &HeaderMap) -> bool {
    security != Security::Mtls
        && peer.ip().is_loopback()
        && host_is_loopback(headers)
        && !FORWARDED_FOR.iter().any(|h| headers.contains_key(*h))
}

/// Whether the console answers `peer` at all. This port has no TLS, so a token sent to it
/// from another machine crossed the network in the clear, and one taken off the wire would
/// work here too: on a node whose gRPC port requires TLS, and on one that serves cleartext on
/// loopback only (whose `--metrics-listen` may still be routable, for scraping), the console
/// is for this machine (an SSH tunnel, or `kubectl port-forward`, which arrives on loopback).
/// Only `--insecure`, which opened the gRPC port to the network in the clear already, opens
/// it too.
fn open_to(security: Security, peer: SocketAddr) -> Result<(), &'static str> {
    match security {
        _ if peer.ip().is_loopback() => Ok(()),
        Security::Insecure => Ok(()),
        Security::Mtls => Err("this node requires TLS and its console port has none: open the console from this \
             machine (an SSH tunnel or kubectl port-forward to it)"),
        Security::Loopback => Err("this node serves cleartext on loopback only, and so does its console: open it \
             from this machine (an SSH tunnel or kubectl port-forward to it)"),
    }
}

/// The caller and what the page may offer them, or the refusal to send.
fn authorize(
    node: &NodeCtx,
    peer: SocketAddr,
    headers: &HeaderMap,
    path: &str,
) -> Result<(Caller, view::Rights), Response<Body>> {
    if let Err(why) = open_to(node.config.security(), peer) {
        return Err(error(StatusCode::FORBIDDEN, why));
    }
    let trusted = loopback_trusted(node.config.security(), peer, headers);
    let authz =
        Authorizer { mode: if trusted { Auth::LoopbackTrusted } else { Auth::Required }, tokens: node.shared.clone() };
    let presented =
        Presented { path, authorization: headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()), peer_certs: None };
    let caller = match authz.check(&presented, now_ms()) {
        Ok(Some(c)) => c,
        Ok(None) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "console path maps to an open method")),
        Err(s) => return Err(error(http_status(&s), s.message())),
    };
    let may = |p: &str| matches!(table::access(p), Some(Access::Roles(r)) if caller.may(r));
    let rights = view::Rights { operate: may(OPERATE), audit: may(AUDIT) };
    Ok((caller, rights))
}

/// Drain, enable or disable a backend: the Admin call itself, with the page's caller, so the
/// same validation, audit record and replies apply as from the CLI.
async fn set_backend_state(node: &Arc<NodeCtx>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let (caller, _) = match authorize(node, peer, req.headers(), OPERATE) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // A JSON body makes a cross-site form post impossible without a CORS preflight, which
    // this port never grants; a page from another origin is refused outright.
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json_body {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the request as application/json");
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req.headers().get(header::HOST).map(|h| h.as_bytes()).unwrap_or_default();
        let same = [&b"http://"[..], b"https://"]
            .iter()
            .any(|s| origin.as_bytes().strip_prefix(*s).is_some_and(|rest| rest == host));
        if !same {
            return error(StatusCode::FORBIDDEN, "a request from another origin is refused");
        }
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_BODY} bytes")),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time"),
    };
    #[derive(serde::Deserialize)]
    struct Wanted {
        pool: String,
        address: String,
        state: String,
        /// Past the last-backend check, as the CLI's `--force`: the page asks again first.
        #[serde(default)]
        force: bool,
    }
    let w: Wanted = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected {{pool, address, state}}: {e}")),
    };
    let state = match w.state.as_str() {
        "active" => AdminState::Active,
        "draining" => AdminState::Draining,
        "disabled" => AdminState::Disabled,
        other => {
            return error(StatusCode::BAD_REQUEST, format!("state {other:?}: expected active, draining or disabled"))
        }
    };
    let mut call = tonic::Request::new(SetBackendStateRequest {
        pool: w.pool,
        address: w.address,
        state: state as i32,
        force: w.force,
    });
    call.extensions_mut().insert(caller);
    match AdminService(node.clone()).set_backend_state(call).await {
        Ok(r) => reply(StatusCode::OK, &json!({ "revision": r.into_inner().revision })),
        Err(s) => error(http_status(&s), s.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, h.parse().unwrap());
        m
    }

    #[test]
    fn only_loopback_names_count_as_loopback_hosts() {
        for h in ["127.0.0.1:7480", "localhost:7480", "LOCALHOST", "[::1]:7480", "127.1.2.3"] {
            assert!(host_is_loopback(&host(h)), "{h}");
        }
        for h in ["evil.example:7480", "10.0.0.1:7480", "[fe80::1]:80", "localhost.evil.example", ""] {
            assert!(!host_is_loopback(&host(h)), "{h}");
        }
        assert!(!host_is_loopback(&HeaderMap::new()));
    }

    /// On a node without TLS, a token-less caller on loopback is trusted, unless a
    /// forwarder's header says it stands in for someone else; with TLS, never.
    #[test]
    fn a_forwarded_request_is_not_trusted_as_this_machines_user() {
        let here: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(loopback_trusted(Security::Loopback, here, &host("localhost:7480")));
        assert!(loopback_trusted(Security::Insecure, here, &host("127.0.0.1:7480")));
        assert!(!loopback_trusted(Security::Mtls, here, &host("localhost:7480")));
        assert!(!loopback_trusted(Security::Loopback, "10.0.0.7:5000".parse().unwrap(), &host("localhost:7480")));
        assert!(!loopback_trusted(Security::Loopback, here, &host("evil.example")));
        for (k, v) in [
            ("X-Forwarded-For", "203.0.113.9"),
            ("Forwarded", "for=203.0.113.9"),
            ("X-Forwarded-Host", "console.example"),
            ("X-Real-IP", "203.0.113.9"),
            ("Via", "1.1 edge"),
        ] {
            let mut h = host("localhost:7480");
            h.insert(k.parse::<header::HeaderName>().unwrap(), v.parse().unwrap());
            assert!(!loopback_trusted(Security::Loopback, here, &h), "{k}");
        }
    }

    /// The console port has no TLS: from another machine it answers only a node that serves
    /// cleartext to the network already (`--insecure`), never one whose gRPC port is held to
    /// TLS or to loopback.
    #[test]
    fn the_console_answers_another_machine_only_on_an_insecure_node() {
        let (here, there): (SocketAddr, SocketAddr) =
            ("127.0.0.1:5000".parse().unwrap(), "10.0.0.7:5000".parse().unwrap());
        for s in [Security::Mtls, Security::Loopback, Security::Insecure] {
            assert!(open_to(s, here).is_ok(), "{s:?}");
        }
        assert!(open_to(Security::Insecure, there).is_ok());
        assert!(open_to(Security::Mtls, there).unwrap_err().contains("requires TLS"));
        assert!(open_to(Security::Loopback, there).unwrap_err().contains("loopback only"));
        assert!(open_to(Security::Loopback, "[::1]:5000".parse().unwrap()).is_ok());
    }
}
