//! The heads of the fast path: which client requests it takes, the head each becomes for its
//! backend, and what a backend's response head says of its body and its connection.

use std::io::Write;
use std::net::IpAddr;

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
    pub(super) method: String,
    /// The raw path, without the query, for the access log.
    pub(super) path: String,
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
    let normal = handshake::normalize(target).ok()?;
    let mut name = handshake::strip_port(host).to_ascii_lowercase();
    handshake::trim_root_dot(&mut name);
    let up =
        Upgrade { target: normal.into_owned(), host: name, headers: Default::default(), authority: None, claims: None };
    let idempotent = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"].contains(&method);
    Some(Taken {
        up,
        close,
        head: method == "HEAD",
        idempotent,
        method: method.to_string(),
        path: target.split(['?', '#']).next().unwrap_or("/").to_string(),
    })
}

/// The request's head as its backend gets it, into `out`: the routed target, the client's
/// headers without the hop-by-hop ones, those its `Connection` names and those it may not
/// send; `X-Forwarded-For` appended to, `X-Forwarded-Proto` and `Forwarded` set (as
/// [`super::super::headers::Forwarding`] does for hyper's requests).
pub(super) fn upstream(out: &mut Vec<u8>, req: &httparse::Request<'_, '_>, t: &Taken, client: IpAddr, proto: &str) {
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
                let _ = write!(out, "{client}\r\n");
                xff = true;
            }
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !xff {
        let _ = write!(out, "X-Forwarded-For: {client}\r\n");
    }
    let _ = write!(out, "X-Forwarded-Proto: {proto}\r\n");
    let _ = match client {
        IpAddr::V4(a) => write!(out, "Forwarded: for={a}"),
        IpAddr::V6(a) => write!(out, "Forwarded: for=\"[{a}]\""),
    };
    let _ = write!(out, ";proto={proto};host=\"{}\"\r\n\r\n", t.up.host);
}

/// How a response's body is framed, from its head.
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes: the client's connection closes after it too.
    UntilClose,
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
    let (mut length, mut chunked, mut reusable) = (None, false, resp.version == Some(1));
    for h in resp.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("transfer-encoding") {
            let v = std::str::from_utf8(h.value).map_err(|_| "a transfer coding that is not text")?;
            if v.split(',').any(|c| !c.trim().eq_ignore_ascii_case("chunked")) {
                return Err("a transfer coding other than chunked");
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
            if has_token(h.value, "close") {
                reusable = false;
            } else if has_token(h.value, "keep-alive") && resp.version == Some(0) {
                reusable = true;
            }
        }
    }
    if chunked && length.is_some() {
        return Err("both Transfer-Encoding and Content-Length");
    }
    let framing = if head || status == 204 || status == 304 {
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
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    let connection = || resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection"));
    let named = |n: &str| connection().any(|c| has_token(c.value, n));
    let mut dated = false;
    for h in resp.headers.iter() {
        let n = h.name;
        if HOP_BY_HOP.iter().any(|x| n.eq_ignore_ascii_case(x)) || named(n) {
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
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut h);
    if !matches!(resp.parse(raw), Ok(httparse::Status::Complete(_))) {
        return Err("malformed response head");
    }
    let a = answer(&resp, head)?;
    let close = closing || matches!(a.framing, Framing::UntilClose);
    let cookie = cookie.filter(|_| a.status < 400).unwrap_or("");
    downstream(out, &resp, cookie.as_bytes(), close);
    Ok((a, close))
}

/// The proxy's own short answer (as `answers::own` makes for hyper's requests), into `out`.
pub(super) fn own(out: &mut Vec<u8>, status: u16, text: &str, extra: &[u8], close: bool) {
    out.clear();
    let reason = hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n");
    let _ = write!(out, "Content-Length: {}\r\n", text.len() + 1);
    date(out);
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    let _ = write!(out, "\r\n{text}\n");
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

/// Longest chunk-size line (extensions included) and all trailer lines together.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits of a chunk size: 15 keep it below 2^60.
const MAX_DIGITS: u8 = 15;

/// Follows a chunked body byte by byte (RFC 9112 §7.1), strictly: CRLF line endings only, a
/// size in at most 15 hex digits, no control bytes in extensions or trailers. The body is
/// passed on as it came, so this is what keeps a backend's framing from being read one way
/// here and another by the client.
#[derive(Default)]
pub(super) struct Chunked {
    st: St,
    size: u64,
    digits: u8,
    line: usize,
    trailers: usize,
}

#[derive(Default, Clone, Copy)]
enum St {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    LastLf,
    Done,
}

impl Chunked {
    /// How many of `b` belong to the body, and whether it ends with them.
    pub(super) fn scan(&mut self, b: &[u8]) -> Result<(usize, bool), &'static str> {
        let text = |c: u8| c == b'\t' || (c >= 0x20 && c != 0x7f);
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            i += 1;
            self.st = match self.st {
                St::Size => match (c as char).to_digit(16) {
                    Some(_) if self.digits == MAX_DIGITS => return Err("chunk size too large"),
                    Some(d) => {
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                        St::Size
                    }
                    None if self.digits == 0 => return Err("bad chunk size"),
                    None if c == b'\r' => St::SizeLf,
                    None if matches!(c, b';' | b' ' | b'\t') => {
                        self.line = 0;
                        St::Ext
                    }
                    None => return Err("bad chunk size"),
                },
                St::Ext if c == b'\r' => St::SizeLf,
                St::Ext if text(c) && self.line < MAX_CHUNK_LINE => {
                    self.line += 1;
                    St::Ext
                }
                St::Ext => return Err("bad chunk extension"),
                St::SizeLf if c != b'\n' => return Err("bad chunk size line"),
                St::SizeLf if self.size == 0 => {
                    self.line = 0;
                    St::Trailer
                }
                St::SizeLf => {
                    self.digits = 0;
                    St::Data
                }
                // `c` is the first byte of the data; the rest of it that is here goes at once.
                St::Data => {
                    let n = (self.size - 1).min((b.len() - i) as u64);
                    i += n as usize;
                    self.size -= n + 1;
                    if self.size == 0 {
                        St::DataCr
                    } else {
                        St::Data
                    }
                }
                St::DataCr if c == b'\r' => St::DataLf,
                St::DataLf if c == b'\n' => St::Size,
                St::DataCr | St::DataLf => return Err("chunk data longer than its size"),
                St::Trailer if c == b'\r' && self.line == 0 => St::LastLf,
                St::Trailer if c == b'\r' => St::TrailerLf,
                St::Trailer if text(c) && self.trailers < MAX_TRAILERS => {
                    self.line += 1;
                    self.trailers += 1;
                    St::Trailer
                }
                St::Trailer => return Err("bad trailer"),
                St::TrailerLf if c == b'\n' => {
                    self.line = 0;
                    St::Trailer
                }
                St::TrailerLf => return Err("bad trailer line"),
                St::LastLf if c == b'\n' => {
                    self.st = St::Done;
                    return Ok((i, true));
                }
                St::LastLf => return Err("bad end of chunked body"),
                St::Done => return Ok((i - 1, true)),
            };
        }
        Ok((i, matches!(self.st, St::Done)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<(usize, bool), &'static str> {
        Chunked::default().scan(body)
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok((body.len() - 4, true)));
        assert_eq!(whole(b"0\r\n\r\n"), Ok((5, true)));
        assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n"), Ok((20, true)));
    }

    #[test]
    fn a_chunked_body_split_anywhere_ends_in_the_same_place() {
        let body = b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nA: b\r\n\r\n";
        for cut in 0..=body.len() {
            for cut2 in cut..=body.len() {
                let mut c = Chunked::default();
                let (a, end_a) = c.scan(&body[..cut]).unwrap();
                assert_eq!((a, end_a), (cut, cut == body.len()), "first part to {cut}");
                let (b, end_b) = c.scan(&body[cut..cut2]).unwrap();
                assert_eq!(b, cut2 - cut);
                assert!(!end_b || cut2 == body.len());
                let (r, end) = c.scan(&body[cut2..]).unwrap();
                assert_eq!((cut2 + r, end || end_b), (body.len(), true), "split at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn chunked_framing_that_could_be_read_two_ways_is_refused() {
        assert!(whole(b"5\nhello\r\n0\r\n\r\n").is_err(), "bare LF after the size");
        assert!(whole(b"5\r\nhello!\r\n").is_err(), "data longer than its size");
        assert!(whole(b"x\r\n").is_err());
        assert!(whole(b"\r\n").is_err(), "no size");
        assert!(whole(b"1000000000000000\r\n").is_err(), "16 hex digits");
        assert!(whole(b"0\r\nA: b\n\r\n").is_err(), "bare LF in a trailer");
        assert!(whole(b"1;a\x00b\r\nx\r\n").is_err(), "control byte in an extension");
        assert!(whole(b"-1\r\n").is_err());
    }

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
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
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
        let raw = b"HTTP/1.1 200 Fine\r\nConnection: x-a, keep-alive\r\nX-A: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n";
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
    }

    #[test]
    fn the_backend_gets_no_hop_by_hop_or_forged_forwarding_header() {
        let raw = b"GET /a/../b HTTP/1.1\r\nHost: x\r\nConnection: x-a\r\nX-A: 1\r\nX-Forwarded-For: 1.1.1.1\r\nForwarded: for=evil\r\nX_User: y\r\nTE: trailers\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut h);
        assert!(r.parse(raw).unwrap().is_complete());
        let t = take(&r).unwrap();
        let mut out = Vec::new();
        upstream(&mut out, &r, &t, "10.0.0.1".parse().unwrap(), "http");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /b HTTP/1.1\r\nHost: x\r\n"), "{text}");
        assert!(text.contains("\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.1\r\n"), "{text}");
        assert!(text.contains("\r\nForwarded: for=10.0.0.1;proto=http;host=\"x\"\r\n"), "{text}");
        for gone in ["X-A", "Connection", "for=evil", "X_User", "TE:"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
    }
}
