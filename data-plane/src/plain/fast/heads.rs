//! The heads of the fast path: which client requests it takes, the head each becomes for its
//! backend, and what a backend's response head says of its body and its connection.

use std::io::Write;
use std::net::IpAddr;

use super::chunked::Chunked;
use crate::handshake::{self, client_may_not_send, has_token, Upgrade};

/// Headers a head may have for the fast path; hyper's limit, so that a head with more goes
/// to hyper and gets its answer (431).
pub(super) const MAX_HEADERS: usize = 100;

/// Hop-by-hop headers (RFC 9110 §7.6.1): never passed on, in either direction. A response's
/// `Transfer-Encoding` is not among them: the fast path passes a chunked body on as it came.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authenticate"];

/// A request the fast path takes: what it needs of it once its head is gone from the buffer.
pub(super) struct Taken {
    pub(super) up: Upgrade,
    /// The client asked to close after this response.
    pub(super) close: bool,
    /// A HEAD request: its response has no body, whatever its framing says.
    pub(super) head: bool,
    /// Safe to send twice (RFC 9110 §9.2.2), and without a body: sent again on a new
    /// connection when a reused one turns out closed.
    pub(super) idempotent: bool,
}

/// The request in `req` as the fast path would take it, or `None` for hyper to take: a body,
/// an upgrade or `Expect`, HTTP/1.0, an absolute-form or `*` target, a head hyper refuses
/// (no or two Hosts, a bad one, a bad path).
pub(super) fn take(req: &httparse::Request<'_, '_>) -> Option<Taken> {
    let (method, target) = (req.method?, req.path?);
    if req.version != Some(1) || method == "CONNECT" || !target.starts_with('/') {
        return None;
    }
    let (mut host, mut close) = (None, false);
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return None;
            }
            host = Some(std::str::from_utf8(h.value).ok()?.trim());
        } else if n.eq_ignore_ascii_case("content-length") {
            // A body of none, said out loud, is still none.
            if h.value.trim_ascii() != b"0" {
                return None;
            }
        } else if ["transfer-encoding", "upgrade", "expect"].iter().any(|x| n.eq_ignore_ascii_case(x)) {
            return None;
        } else if n.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, "close");
        }
    }
    let host = host?;
    if !handshake::valid_authority(host) {
        return None;
    }
    // Bytes hyper's URI parser refuses (`<`, `"`, a backtick...) get hyper's 400.
    hyper::http::uri::PathAndQuery::try_from(target).ok()?;
    let normal = handshake::normalize(target).ok()?;
    let mut name = handshake::strip_port(host).to_ascii_lowercase();
    handshake::trim_root_dot(&mut name);
    let up = Upgrade {
        target: normal.into_owned(),
        host: name,
        headers: Default::default(),
        authority: None,
        claims: None,
        set_here: Vec::new(),
    };
    let idempotent = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"].contains(&method);
    Some(Taken { up, close, head: method == "HEAD", idempotent })
}

/// The forwarding headers' parts that are the same for every request on a connection,
/// formatted once when it opens (formatting the address per request was a few per cent of
/// the proxy's CPU).
pub(super) struct Hop {
    /// The client's address, as `X-Forwarded-For` ends.
    client: String,
    /// `X-Forwarded-Proto` and `Forwarded` up to the host's value.
    lines: String,
}

impl Hop {
    pub(super) fn new(client: IpAddr, proto: &str) -> Hop {
        let for_ = match client {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("\"[{a}]\""),
        };
        Hop {
            client: client.to_string(),
            lines: format!("X-Forwarded-Proto: {proto}\r\nForwarded: for={for_};proto={proto};host=\""),
        }
    }
}

/// The request's head as its backend gets it, into `out`: the routed target, the client's
/// headers without the hop-by-hop ones, those its `Connection` names and those it may not
/// send; `X-Forwarded-For` appended to, `X-Forwarded-Proto` and `Forwarded` set (as
/// [`super::super::headers::Forwarding`] does for hyper's requests).
pub(super) fn upstream(out: &mut Vec<u8>, req: &httparse::Request<'_, '_>, t: &Taken, hop: &Hop) {
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(t.up.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection = || req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection"));
    let named = |n: &str| !n.eq_ignore_ascii_case("host") && connection().any(|c| has_token(c.value, n));
    let mut xff = false;
    for h in req.headers.iter() {
        let n = h.name;
        if client_may_not_send(n) || HOP_BY_HOP.iter().any(|x| n.eq_ignore_ascii_case(x)) || named(n) {
            continue;
        }
        if n.eq_ignore_ascii_case("x-forwarded-for") {
            // Every line the client sent, joined in order in the first one's place, then
            // this hop's.
            if !xff {
                out.extend_from_slice(b"X-Forwarded-For: ");
                for v in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")) {
                    out.extend_from_slice(v.value.trim_ascii());
                    out.extend_from_slice(b", ");
                }
                xff = true;
                line_end(out, &hop.client);
            }
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !xff {
        out.extend_from_slice(b"X-Forwarded-For: ");
        line_end(out, &hop.client);
    }
    out.extend_from_slice(hop.lines.as_bytes());
    out.extend_from_slice(t.up.host.as_bytes());
    out.extend_from_slice(b"\"\r\n\r\n");
}

fn line_end(out: &mut Vec<u8>, last: &str) {
    out.extend_from_slice(last.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `HTTP/1.1 NNN ` (a status has three digits: httparse reads no other).
fn status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let s = status.min(999);
    out.extend_from_slice(&[b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8, b' ']);
    line_end(out, reason);
}

/// How a response's body is framed, from its head.
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes: the client's connection closes after it too.
    UntilClose,
}

impl Framing {
    /// How many of `b` belong to the response body, and whether it ends with them.
    pub(super) fn take(&mut self, b: &[u8]) -> Result<(usize, bool), &'static str> {
        Ok(match self {
            Framing::None => (0, true),
            Framing::Length(left) => {
                let n = (*left).min(b.len() as u64);
                *left -= n;
                (n as usize, *left == 0)
            }
            Framing::Chunked(c) => c.scan(b)?,
            Framing::UntilClose => (b.len(), false),
        })
    }
}

/// A backend's response head, checked: its framing, whether its connection may be reused,
/// and the head the client gets.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) framing: Framing,
    pub(super) reusable: bool,
}

/// Reads a parsed response head to a request (`head`: a HEAD request), or why it is refused
/// (the client gets a 502, as from NGINX): an interim or 101 answer to a request that asked
/// for neither, a transfer coding other than `chunked`, a length beside it, or lengths that
/// disagree or do not parse.
pub(super) fn answer(resp: &httparse::Response<'_, '_>, head: bool) -> Result<Answer, &'static str> {
    let status = resp.code.ok_or("no status")?;
    if status < 200 {
        return Err("an interim or 101 response to a plain request");
    }
    let (mut length, mut chunked) = (None, false);
    let (mut close, mut keep_alive) = (false, false);
    for h in resp.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("transfer-encoding") {
            let v = std::str::from_utf8(h.value).map_err(|_| "a transfer coding that is not text")?;
            if v.split(',').any(|c| !c.trim().eq_ignore_ascii_case("chunked")) {
                return Err("a transfer coding other than chunked");
            }
            // Passed on as it came: `chunked` twice would be decoded twice by some clients.
            if chunked || v.split(',').count() > 1 {
                return Err("chunked more than once");
            }
            chunked = true;
        } else if n.eq_ignore_ascii_case("content-length") {
            let v = h.value.trim_ascii();
            if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Err("a Content-Length that does not parse");
            }
            let n: u64 = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or("bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("two Content-Lengths that differ");
            }
            length = Some(n);
        } else if n.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, "close");
            keep_alive |= has_token(h.value, "keep-alive");
        }
    }
    // `close` wins, on whichever line it came.
    let mut reusable = (resp.version == Some(1) || keep_alive) && !close;
    if chunked && length.is_some() {
        return Err("both Transfer-Encoding and Content-Length");
    }
    let framing = if head || status == 204 || status == 304 {
        // A 204 may not declare a body (RFC 9110 §15.3.5): one that does may send it, to be
        // read as the next answer on this connection. (A HEAD's or a 304's length is the
        // resource's, as it should be.)
        if status == 204 && (chunked || length.is_some_and(|l| l > 0)) {
            reusable = false;
        }
        Framing::None
    } else if chunked {
        Framing::Chunked(Chunked::default())
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    Ok(Answer { status, framing, reusable })
}

/// The response head the client gets, into `out`: the backend's status and headers without
/// the hop-by-hop ones (and those its `Connection` names), a `Date` when it had none (RFC 9110
/// §6.6.1), `extra` lines, and `Connection: close` when the client's connection ends after.
pub(super) fn downstream(out: &mut Vec<u8>, resp: &httparse::Response<'_, '_>, extra: &[u8], close: bool) {
    out.clear();
    let status = resp.code.unwrap_or(502);
    status_line(out, status, resp.reason.unwrap_or(""));
    let connection = || resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection"));
    // The body is passed on framed by these: they stay, whatever `Connection` names.
    let framing = |n: &str| n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding");
    let named = |n: &str| !framing(n) && connection().any(|c| has_token(c.value, n));
    // `Trailer` announces the trailers, which are passed on with the body.
    let hop = |n: &str| !n.eq_ignore_ascii_case("trailer") && HOP_BY_HOP.iter().any(|x| n.eq_ignore_ascii_case(x));
    let mut dated = false;
    for h in resp.headers.iter() {
        let n = h.name;
        if hop(n) || named(n) {
            continue;
        }
        dated |= n.eq_ignore_ascii_case("date");
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        date(out);
    }
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The answer to the client from the backend's complete response head in `raw`, written to
/// `out`, and whether the client's connection closes after it (`closing`: it does anyway). A
/// session's `Set-Cookie` line goes with an answer that took the request (below 400), as a
/// WebSocket's goes with its 101.
pub(super) fn respond(
    raw: &[u8],
    head: bool,
    cookie: Option<&str>,
    closing: bool,
    out: &mut Vec<u8>,
) -> Result<(Answer, bool), &'static str> {
    let mut h = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, raw, &mut h);
    if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
        return Err("malformed response head");
    }
    let a = answer(&resp, head)?;
    let close = closing || matches!(a.framing, Framing::UntilClose);
    let cookie = cookie.filter(|_| a.status < 400).unwrap_or("");
    downstream(out, &resp, cookie.as_bytes(), close);
    Ok((a, close))
}

/// The proxy's own short answer (as `answers::own` makes for hyper's requests), into `out`;
/// without its body when it answers a HEAD request (`head`).
pub(super) fn own(out: &mut Vec<u8>, status: u16, text: &str, extra: &[u8], close: bool, head: bool) {
    out.clear();
    let reason = hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    status_line(out, status, reason);
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    let _ = write!(out, "Content-Length: {}\r\n", text.len() + 1);
    date(out);
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        let _ = writeln!(out, "{text}");
    }
}

/// A `Date` header line, formatted once a second per worker.
fn date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{Duration, SystemTime};
    thread_local! {
        static NOW: RefCell<(SystemTime, String)> = const { RefCell::new((SystemTime::UNIX_EPOCH, String::new())) };
    }
    NOW.with(|n| {
        let mut n = n.borrow_mut();
        let now = SystemTime::now();
        if now.duration_since(n.0).map_or(true, |d| d >= Duration::from_secs(1)) {
            let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            *n = (SystemTime::UNIX_EPOCH + Duration::from_secs(secs), httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(n.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_resp<'h, 'b>(raw: &'b [u8], h: &'h mut [httparse::Header<'b>]) -> httparse::Response<'h, 'b> {
        let mut r = httparse::Response::new(h);
        assert!(r.parse(raw).unwrap().is_complete());
        r
    }

    #[test]
    fn a_response_head_gives_its_framing_and_whether_its_connection_is_reused() {
        let mut h = [httparse::EMPTY_HEADER; 16];
        let r = parse_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", &mut h);
        let a = answer(&r, false).unwrap();
        assert!(matches!(a.framing, Framing::Length(12)) && a.reusable);
        assert!(matches!(answer(&r, true).unwrap().framing, Framing::None), "HEAD");
        let mut h = [httparse::EMPTY_HEADER; 16];
        let r = parse_resp(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", &mut h);
        let a = answer(&r, false).unwrap();
        assert!(matches!(a.framing, Framing::UntilClose) && !a.reusable);
        let mut h = [httparse::EMPTY_HEADER; 16];
        let r = parse_resp(b"HTTP/1.0 204 No Content\r\n\r\n", &mut h);
        let a = answer(&r, false).unwrap();
        assert!(matches!(a.framing, Framing::None) && !a.reusable, "1.0 without keep-alive");
        let mut h = [httparse::EMPTY_HEADER; 16];
        let raw = b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert!(!answer(&parse_resp(raw, &mut h), false).unwrap().reusable, "close wins");
        let mut h = [httparse::EMPTY_HEADER; 16];
        let r = parse_resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", &mut h);
        assert!(answer(&r, false).unwrap().reusable, "a 304's length is the resource's");
        let mut h = [httparse::EMPTY_HEADER; 16];
        let r = parse_resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", &mut h);
        assert!(!answer(&r, false).unwrap().reusable, "a 204 that declares a body");
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            let mut h = [httparse::EMPTY_HEADER; 16];
            let r = parse_resp(bad, &mut h);
            assert!(answer(&r, false).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_client_gets_no_hop_by_hop_header_and_a_date() {
        let mut h = [httparse::EMPTY_HEADER; 16];
        // A Connection naming the framing header does not take it away.
        let raw = b"HTTP/1.1 200 Fine\r\nConnection: x-a, keep-alive, transfer-encoding\r\nX-A: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n";
        let r = parse_resp(raw, &mut h);
        let mut out = Vec::new();
        downstream(&mut out, &r, b"Set-Cookie: a=b\r\n", true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 Fine\r\n"), "{text}");
        assert!(text.contains("\r\nTransfer-Encoding: chunked\r\n") && text.contains("\r\nX-B: 2\r\n"), "{text}");
        assert!(!text.contains("X-A") && !text.contains("Keep-Alive") && !text.contains("x-a"), "{text}");
        assert!(
            text.contains("\r\nDate: ") && text.ends_with("Set-Cookie: a=b\r\nConnection: close\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn requests_with_a_body_an_upgrade_or_an_odd_head_are_left_to_hyper() {
        let taken = |raw: &[u8]| {
            let mut h = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Request::new(&mut h);
            assert!(r.parse(raw).unwrap().is_complete());
            take(&r).is_some()
        };
        assert!(taken(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(taken(b"DELETE /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
        assert!(!taken(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"));
        assert!(!taken(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!taken(b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n"));
        assert!(!taken(b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"));
        assert!(!taken(b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n"));
        assert!(!taken(b"GET /a HTTP/1.1\r\n\r\n"), "no Host");
        assert!(!taken(b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"));
        assert!(!taken(b"GET /a HTTP/1.1\r\nHost: x y\r\n\r\n"));
        assert!(!taken(b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!taken(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!taken(b"GET /a<b> HTTP/1.1\r\nHost: x\r\n\r\n"), "hyper refuses these bytes");
    }

    #[test]
    fn the_backend_gets_no_hop_by_hop_or_forged_forwarding_header() {
        let raw = b"GET /a/../b HTTP/1.1\r\nHost: x\r\nConnection: x-a\r\nX-A: 1\r\nX-Forwarded-For: 1.1.1.1\r\nForwarded: for=evil\r\nX_User: y\r\nTE: trailers\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut h);
        assert!(r.parse(raw).unwrap().is_complete());
        let t = take(&r).unwrap();
        let mut out = Vec::new();
        upstream(&mut out, &r, &t, &Hop::new("10.0.0.1".parse().unwrap(), "http"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /b HTTP/1.1\r\nHost: x\r\n"), "{text}");
        assert!(text.contains("\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.1\r\n"), "{text}");
        assert!(text.contains("\r\nForwarded: for=10.0.0.1;proto=http;host=\"x\"\r\n"), "{text}");
        for gone in ["X-A", "Connection", "for=evil", "X_User", "TE:"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn the_proxys_own_answer_to_a_head_request_has_no_body() {
        let mut out = Vec::new();
        own(&mut out, 502, "backend failed", b"", false, true);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 502 Bad Gateway\r\n") && text.contains("\r\nContent-Length: 15\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        own(&mut out, 502, "backend failed", b"", false, false);
        assert!(String::from_utf8(out).unwrap().ends_with("\r\n\r\nbackend failed\n"));
    }
}
