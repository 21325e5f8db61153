//! What the proxy reads from a client's request before it is forwarded: the routing view a
//! WebSocket handshake gives too, whether its headers are needed, and its head's size.

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Version};

use crate::handshake::{self, Reject};

/// The size of `req`'s head as the client sent it, near enough: request line, header lines,
/// the blank line (hyper keeps names and values byte for byte, names lower-cased).
pub(super) fn head_size<B>(req: &Request<B>) -> usize {
    // The target as sent, measured without writing it out: origin form, or absolute form.
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n".len() + 1;
    let fields: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    line + fields + 2
}

/// Whether balancing, affinity or the route's auth will look at the request's headers: only
/// then are they copied into the view.
pub(super) fn needs_headers(pool: &crate::table::PoolTable, auth: bool) -> bool {
    use switchyard_model::KeySpec;
    let reads = |k: Option<&KeySpec>| matches!(k, Some(KeySpec::Header(_) | KeySpec::Cookie(_)));
    auth || reads(pool.affinity_key.as_ref()) || reads(pool.hash_key())
}

/// What the routing and affinity code reads from a request (the same view a WebSocket
/// handshake gives it), or why the request is refused.
pub(super) fn view(req: &Request<Incoming>) -> Result<handshake::Upgrade, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host");
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let host = match (&authority, first) {
        (Some(a), _) => a.as_str(),
        (None, Some(h)) => h.to_str().map_err(|_| "bad Host")?.trim(),
        (None, None) if req.version() == Version::HTTP_11 => return Err("missing Host"),
        (None, None) => "",
    };
    if !host.is_empty() && !handshake::valid_authority(host) {
        return Err("bad Host");
    }
    // Routed and sent on normalized (see `handshake::normalize`).
    let raw = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = handshake::normalize(raw).map_err(|r| match r {
        Reject::BadRequest(why) => why,
        _ => "bad path",
    })?;
    let mut host = handshake::strip_port(host).to_ascii_lowercase();
    handshake::trim_root_dot(&mut host);
    // Headers are copied only for a request that needs them looked at (see `needs_headers`).
    let headers = handshake::Headers::default();
    Ok(handshake::Upgrade { target: target.into_owned(), host, headers, authority, claims: None, set_here: Vec::new() })
}
