//! What the proxy changes in a plain request's headers: the hop-by-hop ones it drops, and the
//! forwarding ones it adds.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::handshake;

/// The headers that describe one hop (RFC 9110 §7.6.1), never forwarded. Names, not
/// strings: a string is parsed into a name on every lookup.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers, including those the Connection header names, except `Host`:
/// every HTTP/1.1 request carries one (RFC 9112 §3.2), and the proxy routed on it.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    if !h.contains_key(header::CONNECTION) {
        for n in &HOP_BY_HOP[1..] {
            h.remove(n);
        }
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named.into_iter().filter(|n| *n != header::HOST) {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// Removes what a client may not send on (see [`handshake::client_may_not_send`]): the
/// forwarding headers this proxy writes, and names with an underscore.
pub(super) fn strip_client_only(h: &mut HeaderMap) {
    if !h.keys().any(|n| handshake::client_may_not_send(n.as_str())) {
        return;
    }
    let gone: Vec<HeaderName> = h.keys().filter(|n| handshake::client_may_not_send(n.as_str())).cloned().collect();
    for n in gone {
        h.remove(n);
    }
}

/// Why a message's framing is refused, if it is: a transfer coding other than `chunked`
/// (the proxy would pass on coded bytes without the coding's name, RFC 9112 §6.1), or, when
/// `with_length` is false, a `Content-Length` beside `Transfer-Encoding` (RFC 9112 §6.3: a
/// sign of smuggling, and a length the client would frame the decoded body by). Requests
/// with both are taken as hyper takes them: the coding wins and the connection closes after.
pub(super) fn bad_framing(h: &HeaderMap, with_length: bool) -> Option<&'static str> {
    let codings = h.get_all(header::TRANSFER_ENCODING);
    let mut any = false;
    for v in codings.iter() {
        any = true;
        let Ok(v) = v.to_str() else { return Some("a transfer coding that is not text") };
        if v.split(',').any(|c| !c.trim().eq_ignore_ascii_case("chunked")) {
            return Some("a transfer coding other than chunked");
        }
    }
    (any && !with_length && h.contains_key(header::CONTENT_LENGTH))
        .then_some("both Transfer-Encoding and Content-Length")
}

/// The forwarding headers of one client connection: its address is formatted once, not for
/// every request on it (formatting it twice per request was about 2% of the proxy's CPU).
pub(super) struct Forwarding {
    client: String,
    /// The client's address as an `X-Forwarded-For` value.
    xff: HeaderValue,
    /// `Forwarded` up to the host's value.
    forwarded: String,
    proto: &'static str,
}

impl Forwarding {
    pub(super) fn new(client: IpAddr, proto: &'static str) -> Forwarding {
        let text = client.to_string();
        let for_ = match client {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        Forwarding {
            xff: HeaderValue::from_str(&text).expect("an IP address is a valid header value"),
            client: text,
            forwarded: format!("for={for_};proto={proto};host=\""),
            proto,
        }
    }

    /// `X-Forwarded-For` appended to, `X-Forwarded-Proto` and `Forwarded` set, and
    /// `Host` set from an absolute-form target's authority (RFC 9112 §3.2.2), or to the
    /// backend's address for an HTTP/1.0 request that had none (as NGINX's `$proxy_host`).
    pub(super) fn apply(&self, h: &mut HeaderMap, up: &handshake::Upgrade, backend: &str) {
        let prior: Vec<&str> = h.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
        let xff = if prior.is_empty() {
            Some(self.xff.clone())
        } else {
            HeaderValue::try_from(format!("{}, {}", prior.join(", "), self.client)).ok()
        };
        if let Some(v) = xff {
            h.insert(X_FORWARDED_FOR, v);
        }
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
        let mut fwd = String::with_capacity(self.forwarded.len() + up.host.len() + 1);
        fwd.push_str(&self.forwarded);
        fwd.push_str(&up.host);
        fwd.push('"');
        if let Ok(v) = HeaderValue::try_from(fwd) {
            h.insert(header::FORWARDED, v);
        }
        if let Some(a) = &up.authority {
            if let Ok(v) = HeaderValue::from_str(a) {
                h.insert(header::HOST, v);
            }
        }
        if !h.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(backend) {
                h.insert(header::HOST, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn only_chunked_framing_passes() {
        assert_eq!(bad_framing(&map(&[("transfer-encoding", "chunked")]), false), None);
        assert_eq!(bad_framing(&map(&[("content-length", "3")]), false), None);
        let gz = map(&[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(bad_framing(&gz, true), Some("a transfer coding other than chunked"));
        let both = map(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        assert_eq!(bad_framing(&both, false), Some("both Transfer-Encoding and Content-Length"));
        assert_eq!(bad_framing(&both, true), None);
    }

    #[test]
    fn host_survives_a_connection_header_naming_it() {
        let mut h = map(&[("host", "a"), ("connection", "host, x-a"), ("x-a", "1"), ("keep-alive", "5")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("host").map(|v| v.as_bytes()), Some(&b"a"[..]));
        assert!(h.get("x-a").is_none() && h.get("keep-alive").is_none() && h.get("connection").is_none());
    }
}
