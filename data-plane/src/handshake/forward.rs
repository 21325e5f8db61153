//! The request as the backend gets it: which of the client's headers go on, and the
//! forwarding headers the proxy writes for this hop.

use std::net::IpAddr;

use super::Upgrade;

/// Forwarding headers other than `X-Forwarded-For` (which is appended to): they describe this
/// hop, and are the proxy's to write. Frameworks read their first value (Spring's
/// `Forwarded`, Rack's `X-Forwarded-Ssl`), so a client's own would say what it liked. The
/// client-address headers CDNs and edge proxies set (`X-Real-IP`, `True-Client-IP`,
/// `X-Client-IP`) go too: many applications take the client's address from them, and a
/// client's own would name any address it liked (`X-Forwarded-For`'s last entry is this
/// proxy's word).
const FORWARDING: [&str; 10] = [
    "forwarded",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-url-scheme",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
];

/// Headers some frameworks take as the request's real path (Symfony's and Zend's trusted
/// `X-Original-URL`, IIS rewrites' `X-Rewrite-URL`), set by a proxy in front of them, never
/// by a client: from a client they would route the application around the path this proxy
/// routed (and authenticated) by.
const PATH_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Whether a client's request header is dropped rather than sent on: a forwarding header the
/// proxy writes itself ([`FORWARDING`]), a path override ([`PATH_OVERRIDES`]), or a name with
/// an underscore, which CGI-style servers (WSGI, Rack, uWSGI) read as the dash spelling
/// (`X_User` is `HTTP_X_USER`, as `X-User` is): it could stand in for a header the proxy
/// strips or sets. NGINX drops those by default (`underscores_in_headers off`).
pub fn client_may_not_send(name: &str) -> bool {
    name.contains('_') || FORWARDING.iter().chain(&PATH_OVERRIDES).any(|f| name.eq_ignore_ascii_case(f))
}

/// Headers that describe the client's hop (RFC 9110 §7.6.1), never sent on; the proxy writes
/// its own `Connection: Upgrade`.
const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"];

/// The request as the backend sees it: the client's head (subprotocols, extensions and
/// application headers pass through) without its hop-by-hop headers, those its `Connection`
/// names, and those it may not send ([`client_may_not_send`]), plus `X-Forwarded-For`
/// (appended to), and `X-Forwarded-Proto` and `Forwarded` describing this hop. `Connection`
/// names only the client's own end-to-end headers away: never `Host`, the handshake's
/// `Sec-WebSocket-*` or a header the proxy set ([`Upgrade::set_here`]); the proxy was routed
/// and authenticated by those, and the backend must see the same (the client's `Connection`
/// itself is not sent on: the proxy writes its own).
///
/// `proto` is `http` for ws clients and `https` for wss clients, not `ws`/`wss`: the upgrade
/// request is an HTTP request, and backends decide "was this secure?" by comparing these
/// headers with `https` (Rails, Django's `SECURE_PROXY_SSL_HEADER`, Express' `trust proxy`,
/// Spring), as NGINX's `$scheme` and HAProxy's `ssl_fc` configurations send them.
pub fn forward_head(up: &Upgrade, client: IpAddr, proto: &str) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(up.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff_done = false;
    let kept = |n: &str| {
        n.eq_ignore_ascii_case("upgrade")
            || n.eq_ignore_ascii_case("host")
            || n.get(..14).is_some_and(|p| p.eq_ignore_ascii_case("sec-websocket-"))
            || up.set_here.iter().any(|s| s.eq_ignore_ascii_case(n))
    };
    // The names `Connection` lists, gathered once: a head of thousands of headers under the
    // byte limit, with a `Connection` listing thousands of names, costs their sum, not their
    // product.
    let named: Vec<&str> = up
        .headers
        .all("connection")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("upgrade"))
        .collect();
    let set: std::collections::HashSet<String> =
        if named.len() > 8 { named.iter().map(|t| t.to_ascii_lowercase()).collect() } else { Default::default() };
    let listed = |n: &str| {
        !named.is_empty()
            && !kept(n)
            && if set.is_empty() {
                named.iter().any(|t| t.eq_ignore_ascii_case(n))
            } else {
                set.contains(&n.to_ascii_lowercase())
            }
    };
    for (n, v) in up.headers.iter() {
        if client_may_not_send(n)
            || HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h))
            || listed(n)
            || n.eq_ignore_ascii_case("upgrade")
        {
            continue;
        }
        if let (Some(a), true) = (&up.authority, n.eq_ignore_ascii_case("host")) {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
            continue;
        }
        if n.eq_ignore_ascii_case("x-forwarded-for") {
            // Every line the client sent, joined in order in the first one's place, then
            // this hop: a second line must not come after the address the proxy vouches for.
            if !xff_done {
                out.extend_from_slice(b"X-Forwarded-For: ");
                for v in up.headers.all("x-forwarded-for") {
                    out.extend_from_slice(v);
                    out.extend_from_slice(b", ");
                }
                let _ = write!(out, "{client}\r\n");
                xff_done = true;
            }
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if !xff_done {
        let _ = write!(out, "X-Forwarded-For: {client}\r\n");
    }
    // Exactly the protocol the proxy relays: a client's `Upgrade: websocket, h2c` must not
    // let a backend switch to another.
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    let _ = write!(out, "X-Forwarded-Proto: {proto}\r\n");
    // Written in place (writes to a Vec cannot fail): no string per header.
    let _ = match client {
        IpAddr::V4(a) => write!(out, "Forwarded: for={a}"),
        IpAddr::V6(a) => write!(out, "Forwarded: for=\"[{a}]\""),
    };
    let _ = write!(out, ";proto={proto};host=\"{}\"\r\n\r\n", up.host);
    out
}
