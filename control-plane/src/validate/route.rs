//! Routes: a host a proxy can match (a name, a `*.` wildcard or an address, no port), a path
//! prefix in the form proxies match request paths in, and an authentication that checks
//! something.

use std::net::IpAddr;

use switchyard_model::path;
use switchyard_proto::v1::Route;

use super::{hostname, invalid, key_spec_length, name, text};
use crate::error::ApiError;

/// Whether a path prefix is already what proxies make of a request's path before matching it
/// ([`path::normalize`], and each segment without its `;parameters`). A prefix in another
/// form would never match, and its requests would fall through to a broader route, perhaps one
/// without its authentication; the refusal gives the form to write instead.
fn normal_prefix(p: &str) -> Result<(), String> {
    let normal = path::normalize(p).map_err(|why| format!("would be refused in a request: {why}"))?;
    let normal = path::without_params(&normal);
    if normal != p {
        return Err(format!("is not in the form proxies match a request's path in: write it as {normal:?}"));
    }
    Ok(())
}

pub fn route(mut r: Route) -> Result<Route, ApiError> {
    name("route", &r.name)?;
    name("pool", &r.pool)?;
    r.host = r.host.to_ascii_lowercase();
    // One spelling for an address, the one proxies compare a request's host in.
    if let Ok(ip) = r.host.parse::<IpAddr>() {
        r.host = ip.to_string();
    }
    if !r.host.is_empty() {
        let h = r.host.strip_prefix("*.").unwrap_or(&r.host);
        if h.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && h.parse::<IpAddr>().is_err() {
            // Proxies match the host on any port, so a port here was ignored, yet made the
            // route outrank the same host without it (and skip that one's authentication).
            return Err(invalid(format!(
                "route host {:?} names a port: a route matches its host on any port the proxy listens on; give the \
                 name alone",
                r.host
            )));
        }
        if hostname(h).is_err() && h.parse::<IpAddr>().is_err() {
            return Err(invalid(format!("route host {:?} is not a host name", r.host)));
        }
    }
    text("path prefix", &r.path_prefix)?;
    if !r.path_prefix.is_empty() && !r.path_prefix.starts_with('/') {
        return Err(invalid(format!("path prefix {:?} must start with '/'", r.path_prefix)));
    }
    if r.path_prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(invalid("path prefix must not contain spaces or control characters"));
    }
    if !r.path_prefix.is_empty() {
        normal_prefix(&r.path_prefix).map_err(|why| invalid(format!("path prefix {:?} {why}", r.path_prefix)))?;
    }
    // An auth with no kind checks nothing: stored as none, since a proxy takes an auth whose
    // kind it cannot read for a newer one's and refuses every client of the route.
    if r.auth.as_ref().is_some_and(|a| a.kind.is_none()) {
        r.auth = None;
    }
    if let Some(a) = &r.auth {
        if let Some(switchyard_proto::v1::route_auth::Kind::Jwt(j)) = &a.kind {
            key_spec_length("route auth token_from", &j.token_from)?;
        }
        switchyard_model::edge_auth::validate(a).map_err(|e| invalid(format!("route auth: {e}")))?;
    }
    r.updated_revision = 0;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes_are_in_the_form_proxies_match() {
        for ok in ["/", "/admin", "/admin/", "/caf%C3%A9", "/a%20b", "/~user", "/v1.2/x"] {
            normal_prefix(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, form) in [
            ("/données", "/donn%C3%A9es"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%7Euser", "/~user"),
            ("/a/../b", "/b"),
            ("//x", "/x"),
            ("/a;b", "/a"),
            ("/a/./b", "/a/b"),
        ] {
            let e = normal_prefix(bad).unwrap_err();
            assert!(e.contains(&format!("write it as {form:?}")), "{bad}: {e}");
        }
        for bad in ["/a%2Fb", "/a%zz", "/a%4", "/;x/admin"] {
            let e = normal_prefix(bad).unwrap_err();
            assert!(e.contains("would be refused in a request"), "{bad}: {e}");
        }
    }

    #[test]
    fn route_hosts_are_names_or_addresses_without_a_port() {
        let r =
            |host: &str| route(Route { name: "r".into(), pool: "p".into(), host: host.into(), ..Default::default() });
        for ok in ["api.example.com", "*.example.com", "10.0.0.1", "::1", "API.Example.com"] {
            r(ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for bad in ["api.example.com:9443", "*.example.com:1", "10.0.0.1:80"] {
            let e = format!("{:?}", r(bad).unwrap_err());
            assert!(e.contains("names a port"), "{bad}: {e}");
        }
        assert_eq!(r("0:0:0:0:0:0:0:1").unwrap().host, "::1", "an address in one spelling");
        let empty = Route { auth: Some(switchyard_proto::v1::RouteAuth { kind: None }), ..r("a.example").unwrap() };
        assert_eq!(route(empty).unwrap().auth, None, "an auth of no kind is no auth");
    }
}
