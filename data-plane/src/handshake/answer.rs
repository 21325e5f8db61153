//! Answers: the backend's to the upgrade (checked before the client sees it), and the
//! proxy's own when it refuses a handshake.

use super::{has_token, header_room, Reject, Upgrade, STACK_HEADERS};

/// Adds the header `line` (without its line ending) at the end of the complete head in `head`,
/// whatever line endings the head used: the head is rewritten to end in CRLF CRLF.
pub fn add_header(head: &mut Vec<u8>, line: &[u8]) {
    while matches!(head.last(), Some(b'\r' | b'\n')) {
        head.pop();
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(line);
    head.extend_from_slice(b"\r\n\r\n");
}

/// The status code of a complete response head.
pub fn response_status(head: &[u8]) -> Option<u16> {
    response_head(head).map(|(code, _)| code)
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim_ascii());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Checks a backend's `101` as the client would (RFC 6455 §4.1): `Upgrade: websocket`,
/// `Connection: Upgrade`, the `Sec-WebSocket-Accept` for the key sent, and an extension only
/// when the client offered one (an extension the client did not ask for would have it read
/// compressed frames as garbage, and the relay let reserved bits through). The client would
/// fail such an answer itself; the proxy answers 502 instead and says which backend.
pub fn check_101(head: &[u8], up: &Upgrade) -> Result<(), &'static str> {
    let lines = head.iter().filter(|b| **b == b'\n').count();
    let (mut stack, mut heap) = ([httparse::EMPTY_HEADER; STACK_HEADERS], Vec::new());
    let mut resp = httparse::Response::new(header_room(lines, &mut stack, &mut heap));
    if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err("malformed 101");
    }
    let all = |name: &'static str| resp.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    if !all("upgrade").any(|h| has_token(h.value, "websocket")) {
        return Err("101 without Upgrade: websocket");
    }
    if !all("connection").any(|h| has_token(h.value, "upgrade")) {
        return Err("101 without Connection: Upgrade");
    }
    let key = up.header("sec-websocket-key").unwrap_or_default();
    let mut accepts = all("sec-websocket-accept");
    match (accepts.next(), accepts.next()) {
        (Some(a), None) if a.value.trim_ascii() == accept_key(key).as_bytes() => {}
        _ => return Err("101 with a wrong Sec-WebSocket-Accept"),
    }
    let offered = up.headers.all("sec-websocket-extensions").any(|v| !v.trim_ascii().is_empty());
    if !offered && all("sec-websocket-extensions").any(|h| !h.value.trim_ascii().is_empty()) {
        return Err("101 with an extension the client did not offer");
    }
    Ok(())
}

/// The status code of a complete response head, and whether it agrees a WebSocket extension
/// (a non-empty `Sec-WebSocket-Extensions`).
pub fn response_head(head: &[u8]) -> Option<(u16, bool)> {
    let lines = head.iter().filter(|b| **b == b'\n').count();
    let (mut stack, mut heap) = ([httparse::EMPTY_HEADER; STACK_HEADERS], Vec::new());
    let mut resp = httparse::Response::new(header_room(lines, &mut stack, &mut heap));
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let extensions = resp
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions") && !h.value.trim_ascii().is_empty());
            Some((resp.code?, extensions))
        }
        _ => None,
    }
}

/// The proxy's own answer to a refused handshake; `retry_after` for 503s.
pub fn error_response(r: &Reject, retry_after: Option<u64>) -> Vec<u8> {
    let status = r.status();
    let text = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Service Unavailable",
    };
    let body = format!("{r}\n");
    let mut extra = String::new();
    if status == 426 {
        extra.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
    }
    if let Some(s) = retry_after {
        extra.push_str(&format!("Retry-After: {s}\r\n"));
    }
    if let Reject::Auth { challenge: Some(c), .. } = r {
        extra.push_str(&format!("WWW-Authenticate: {c}\r\n"));
    }
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}
