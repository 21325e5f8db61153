//! The HTTP/1.1 side of a WebSocket connection: reading a request head under a byte limit and
//! checking it is a valid upgrade (RFC 6455 §4.2.1), here; rewriting it for the backend with
//! forwarding headers in `forward`; the backend's answer and the proxy's own in `answer`.

use std::sync::Arc;

mod answer;
mod forward;
mod headers;
pub mod path;
pub use answer::{accept_key, add_header, check_101, error_response, response_head, response_status};
pub use forward::{client_may_not_send, forward_head};
pub use headers::Headers;
pub use path::normalize;

/// The claims of a token a route's JWT check verified (see `crate::edge_auth`).
pub type Claims = Arc<serde_json::Map<String, serde_json::Value>>;

/// Why a handshake was refused; each maps to the status an operator would expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("not a websocket upgrade")]
    UpgradeRequired,
    #[error("unsupported websocket version")]
    UnsupportedVersion,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("no route")]
    NotFound,
    #[error("no usable backend")]
    Unavailable,
    #[error("too many new connections; retry later")]
    OverCapacity,
    #[error("too many new connections from this address; retry later")]
    ClientRate,
    #[error("handshake timed out")]
    Timeout,
    #[error("backend failed")]
    BadGateway,
    #[error("backend did not answer in time")]
    GatewayTimeout,
    /// The route's edge authentication said no (401, 403), or could not decide (5xx).
    #[error("{why}")]
    Auth { status: u16, why: &'static str, challenge: Option<String> },
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::UpgradeRequired | Reject::UnsupportedVersion => 426,
            Reject::HeadersTooLarge => 431,
            Reject::NotFound => 404,
            Reject::Unavailable | Reject::OverCapacity | Reject::ClientRate => 503,
            Reject::Timeout => 408,
            Reject::BadGateway => 502,
            Reject::GatewayTimeout => 504,
            Reject::Auth { status, .. } => *status,
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "bad_request",
            Reject::UpgradeRequired => "upgrade_required",
            Reject::UnsupportedVersion => "unsupported_version",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::NotFound => "no_route",
            Reject::Unavailable => "no_backend",
            Reject::OverCapacity => "over_capacity",
            Reject::ClientRate => "client_rate",
            Reject::Timeout => "timeout",
            Reject::BadGateway => "bad_gateway",
            Reject::GatewayTimeout => "gateway_timeout",
            Reject::Auth { status: 401, .. } => "unauthorized",
            Reject::Auth { status: 403, .. } => "forbidden",
            Reject::Auth { .. } => "auth_failed",
        }
    }
}

/// A parsed, valid upgrade request.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub target: String,
    /// Host without port, lower case.
    pub host: String,
    pub headers: Headers,
    /// The authority of an absolute-form target (`GET http://host/path`): it replaces the
    /// Host header (RFC 9112 §3.2.2), so the backend gets it as Host.
    pub authority: Option<String>,
    /// The claims of the token the route's JWT check verified, for `claim:NAME` keys.
    pub claims: Option<Claims>,
    /// Headers the proxy set itself (edge authentication's claim headers): the client's
    /// `Connection` cannot name them away.
    pub set_here: Vec<String>,
}

impl Upgrade {
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("/")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(""))
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers.all("cookie").find_map(|v| {
            std::str::from_utf8(v).ok()?.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        })
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    }
}

/// Where the request head ends (index just past the blank line), if it is complete. A head
/// that ends in bare LFs ends here too, so that it is refused at once instead of waiting for
/// a CRLF that never comes; an empty line before the request line is skipped (RFC 9112 §2.2).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    HeadScan::default().end(buf)
}

/// [`head_end`] for a head that arrives in pieces: each call looks only at the bytes that
/// came since the last, so a head trickled a byte at a time costs its length once, not its
/// length squared.
#[derive(Default)]
pub struct HeadScan {
    pos: usize,
    line_start: usize,
}

impl HeadScan {
    /// The head's length once `buf` (the same buffer as before, grown) holds all of it.
    pub fn end(&mut self, buf: &[u8]) -> Option<usize> {
        while let Some(i) = buf.get(self.pos..).and_then(|rest| rest.iter().position(|b| *b == b'\n')) {
            let i = self.pos + i;
            self.pos = i + 1;
            let line = &buf[self.line_start..i];
            if (line.is_empty() || line == b"\r") && self.line_start > 0 {
                return Some(i + 1);
            }
            self.line_start = i + 1;
        }
        self.pos = self.pos.max(buf.len());
        None
    }
}

/// A line ending that is LF alone: RFC 9112 §2.2 allows servers to accept it, but a proxy
/// that does while the backend does not (or the reverse) is how requests get smuggled.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter().enumerate().any(|(i, b)| *b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// A Host value the proxy can route on and repeat in `Forwarded`: a DNS name or IPv4 address,
/// or an IPv6 literal in brackets, and an optional port. Anything else (quotes, semicolons,
/// spaces, userinfo) is refused rather than escaped.
pub(crate) fn valid_authority(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", port),
                None => return false,
            },
        }
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (h, "0"),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    host_ok && port_ok
}

/// `example.com.` is `example.com` (the root label made explicit): matched raw, it would miss
/// the routes for its host and fall through to a catch-all.
pub fn trim_root_dot(host: &mut String) {
    if host.len() > 1 && host.ends_with('.') {
        host.pop();
    }
}

/// Splits an absolute-form target into its authority and the origin-form rest.
fn absolute_form(target: &str) -> Option<Result<(String, String), Reject>> {
    let (scheme, rest) = target.split_once("://")?;
    if !["http", "https", "ws", "wss"].iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
        return Some(Err(Reject::BadRequest("request target must be a path or an http(s) URI")));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') || !valid_authority(authority) {
        return Some(Err(Reject::BadRequest("bad authority in the request target")));
    }
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    Some(Ok((authority.to_string(), path)))
}

pub(crate) fn has_token(v: &[u8], token: &str) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether a complete head asks for a WebSocket upgrade (an `Upgrade` header naming
/// `websocket`): such a head goes the WebSocket way, and any other is a plain HTTP request.
pub fn wants_websocket(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        let Some(colon) = line.iter().position(|b| *b == b':') else { return false };
        line[..colon].trim_ascii().eq_ignore_ascii_case(b"upgrade") && has_token(&line[colon + 1..], "websocket")
    })
}

/// Headers parsed into an array on the stack; a head with more lines gets a vector.
const STACK_HEADERS: usize = 32;

/// Room for as many headers as the head has lines: on the stack when they fit (no allocation
/// for a usual head), else in `heap`.
fn header_room<'a, 'h>(
    lines: usize,
    stack: &'a mut [httparse::Header<'h>; STACK_HEADERS],
    heap: &'a mut Vec<httparse::Header<'h>>,
) -> &'a mut [httparse::Header<'h>] {
    if lines <= STACK_HEADERS {
        &mut stack[..]
    } else {
        heap.resize(lines, httparse::EMPTY_HEADER);
        &mut heap[..]
    }
}

/// Checks a complete request head.
pub fn parse_request(head: &[u8]) -> Result<Upgrade, Reject> {
    if has_bare_lf(head) {
        return Err(Reject::BadRequest("line ending without CR"));
    }
    // Room for as many headers as the head has lines: the byte limit is the only limit.
    let lines = head.iter().filter(|b| **b == b'\n').count();
    let (mut stack, mut heap) = ([httparse::EMPTY_HEADER; STACK_HEADERS], Vec::new());
    let mut req = httparse::Request::new(header_room(lines, &mut stack, &mut heap));
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Reject::BadRequest("incomplete request")),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadersTooLarge),
        Err(_) => return Err(Reject::BadRequest("malformed request")),
    }
    if req.version != Some(1) {
        return Err(Reject::BadRequest("websocket needs HTTP/1.1"));
    }
    let headers = Headers::from_parsed(req.headers);
    let get = |name: &str| headers.get(name);
    let count = |name: &str| headers.all(name).count();
    // One of each, or the backend may read another than the proxy checked (RFC 9112 §3.2).
    for (name, why) in [
        ("host", "more than one Host"),
        ("sec-websocket-key", "more than one Sec-WebSocket-Key"),
        ("sec-websocket-version", "more than one Sec-WebSocket-Version"),
    ] {
        if count(name) > 1 {
            return Err(Reject::BadRequest(why));
        }
    }
    // An upgrade request has no body; one that says otherwise would have its body taken for
    // frames by the backend and for a body by a server in between.
    if count("transfer-encoding") > 0 || headers.all("content-length").any(|v| v.trim_ascii() != b"0") {
        return Err(Reject::BadRequest("a websocket upgrade has no body"));
    }
    let upgrade = get("upgrade").is_some_and(|v| has_token(v, "websocket"));
    let connection = headers.all("connection").any(|v| has_token(v, "upgrade"));
    if !upgrade || !connection {
        return Err(Reject::UpgradeRequired);
    }
    if req.method != Some("GET") {
        return Err(Reject::BadRequest("websocket upgrade must be GET"));
    }
    if get("sec-websocket-version") != Some(b"13") {
        return Err(Reject::UnsupportedVersion);
    }
    let key = get("sec-websocket-key").ok_or(Reject::BadRequest("missing Sec-WebSocket-Key"))?;
    if !valid_key(key) {
        return Err(Reject::BadRequest("Sec-WebSocket-Key is not 16 bytes in base64"));
    }
    let host = get("host").ok_or(Reject::BadRequest("missing Host"))?;
    let host = std::str::from_utf8(host).map_err(|_| Reject::BadRequest("bad Host"))?.trim().to_ascii_lowercase();
    if !valid_authority(&host) {
        return Err(Reject::BadRequest("bad Host"));
    }
    let target = req.path.unwrap_or("/");
    let (authority, target) = match absolute_form(target) {
        Some(r) => {
            let (a, t) = r?;
            (Some(a), t)
        }
        None if target.starts_with('/') => (None, target.to_string()),
        None => return Err(Reject::BadRequest("request target must be a path or an http(s) URI")),
    };
    // Routed and sent on normalized (see `path`).
    let normal = match normalize(&target)? {
        std::borrow::Cow::Owned(t) => Some(t),
        std::borrow::Cow::Borrowed(_) => None,
    };
    let target = normal.unwrap_or(target);
    let mut host = match &authority {
        Some(a) => strip_port(a).to_ascii_lowercase(),
        // Already lower case: cut the port off in place rather than copy it.
        None => {
            // `strip_port` keeps a prefix, or what is inside the brackets of an IPv6 literal.
            let (start, len) = (usize::from(host.starts_with('[')), strip_port(&host).len());
            let mut host = host;
            host.truncate(start + len);
            host.drain(..start);
            host
        }
    };
    trim_root_dot(&mut host);
    Ok(Upgrade { target, host, headers, authority, claims: None, set_here: Vec::new() })
}

/// A base64 encoding of 16 bytes: 22 characters and "==", the last character's four spare
/// bits zero (so one key has one spelling: RFC 4648 section 3.5, which the backend's own
/// decoder may hold it to).
fn valid_key(k: &[u8]) -> bool {
    let k = k.trim_ascii();
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        && b"AQgw".contains(&k[21])
}

pub(crate) fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

#[cfg(test)]
mod tests;
