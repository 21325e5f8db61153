//! The proxy's own answers to plain requests (the backend never saw the request, or failed
//! it), and the access-log record of a request until its answer is decided.

use http_body_util::Either;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::RespBody;
use crate::access_log;
use crate::handshake::Reject;
use crate::state::ProxyState;

pub(super) fn refusal(state: &ProxyState, rec: Option<Box<access_log::Record>>, r: Reject) -> Response<RespBody> {
    let retry = (r.status() == 503).then(|| 1 + rand::random::<u64>() % 5);
    if let Reject::Auth { challenge: Some(c), .. } = &r {
        let mut resp = own(
            state,
            rec,
            StatusCode::from_u16(r.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            r.reason(),
            &r.to_string(),
            None,
        );
        if let Ok(v) = HeaderValue::from_str(c) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return resp;
    }
    own(
        state,
        rec,
        StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_GATEWAY),
        r.reason(),
        &r.to_string(),
        retry,
    )
}

/// The proxy's own answer (the backend never saw the request, or failed it), counted by its
/// reason with the refused handshakes (`/status`, `/metrics`), so a 502 or 504 on plain HTTP
/// is as visible as on WebSocket.
pub(super) fn own(
    state: &ProxyState,
    rec: Option<Box<access_log::Record>>,
    status: StatusCode,
    termination: &'static str,
    text: &str,
    retry_after: Option<u64>,
) -> Response<RespBody> {
    state.runtime.count_failure(termination);
    if let (Some(log), Some(mut r)) = (state.runtime.access_log.get(), rec) {
        r.status = status.as_u16();
        r.termination = termination;
        log.log(*r);
    }
    let mut b = Response::builder().status(status).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if let Some(s) = retry_after {
        b = b.header(header::RETRY_AFTER, s.to_string());
    }
    b.body(Either::Left(http_body_util::Full::new(Bytes::from(format!("{text}\n")))))
        .expect("static response parts are valid")
}

/// [`own`], with `Connection: close`: after this answer the connection's framing can no
/// longer be trusted (a body left unread, or broken).
pub(super) fn own_closing(
    state: &ProxyState,
    rec: Option<Box<access_log::Record>>,
    status: StatusCode,
    termination: &'static str,
    text: &str,
) -> Response<RespBody> {
    let mut r = own(state, rec, status, termination, text, None);
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A request's access-log record until its answer is decided: a client that leaves first
/// (its connection closed before the backend answered) is logged as `client_closed`, with
/// NGINX's 499.
pub(super) struct Pending<'a>(
    pub(super) &'a ProxyState,
    pub(super) Option<Box<access_log::Record>>,
    pub(super) tokio::time::Instant,
);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let (Some(log), Some(mut r)) = (self.0.runtime.access_log.get(), self.1.take()) {
            r.status = 499;
            r.termination = "client_closed";
            r.duration = self.2.elapsed();
            log.log(*r);
        }
    }
}

/// 413: a body over the pool's limit, declared or streamed.
pub(super) fn too_large(state: &ProxyState, rec: Option<Box<access_log::Record>>) -> Response<RespBody> {
    own(state, rec, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body too large", None)
}
