//! DNS rebinding: a page from another site, whose name its owner then points at this
//! machine, reads a port bound here (a proxy's `/status`, a node's `/metrics`) from an
//! operator's browser as if it were its own origin. The browser still sends that site's name
//! in `Host`, so a browser's request that names this port by a name this machine does not go
//! by is refused. Tools that are not browsers (scrapers, probes, curl) send no `Origin` or
//! `Sec-Fetch-*` header and are not asked: the attack needs a browser, and every current one
//! sends `Sec-Fetch-Site` (Safari before 16.4 sends neither header on a same-origin GET, and
//! goes unchecked).

use std::net::IpAddr;
use std::sync::OnceLock;

use http::{header, HeaderMap};

/// The name in a `Host` value: without its port, and without the brackets of an IPv6 literal.
pub fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    }
}

/// Whether a browser sent `headers` to a name other than an IP address, `localhost` or this
/// machine's host name (its first label too): the answer to send is 403.
pub fn browser_on_a_foreign_name(headers: &HeaderMap) -> bool {
    foreign(headers, own_names())
}

fn foreign(headers: &HeaderMap, own: &[String]) -> bool {
    if !headers.contains_key("sec-fetch-site") && !headers.contains_key(header::ORIGIN) {
        return false;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return true };
    let name = host_name(host).trim_end_matches('.');
    !(name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok()
        || own.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// This machine's host name and its first label, read once.
fn own_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let full = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let full = full.trim().trim_end_matches('.');
        let short = full.split('.').next().unwrap_or("");
        [full, short]
            .into_iter()
            .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case("localhost"))
            .map(String::from)
            .collect()
    })
}

/// The refusal's words, the same on every port.
pub const REFUSAL: &str = "this port answers a browser only by IP address, localhost or this machine's host name \
                           (another name may be a site rebound to it)\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse::<header::HeaderName>().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn a_browser_is_answered_by_address_or_own_name_only() {
        let own = vec!["proxy-1.internal".to_string(), "proxy-1".to_string()];
        let browser = |host: &str| headers(&[("host", host), ("sec-fetch-site", "same-origin")]);
        for h in [
            "127.0.0.1:8081",
            "10.0.0.5:8081",
            "[::1]:8081",
            "[fe80::1]",
            "LOCALHOST:8081",
            "proxy-1:8081",
            "Proxy-1.Internal.:8081",
        ] {
            assert!(!foreign(&browser(h), &own), "{h}");
        }
        for h in ["rebind.attacker.example:8081", "localhost.attacker.example", "proxy-1.attacker.example", ""] {
            assert!(foreign(&browser(h), &own), "{h}");
        }
        let by_origin = headers(&[("host", "rebind.attacker.example"), ("origin", "http://rebind.attacker.example")]);
        assert!(foreign(&by_origin, &own), "an Origin marks a browser too");
        assert!(foreign(&headers(&[("sec-fetch-site", "none")]), &own), "a browser's request with no Host");
    }

    #[test]
    fn tools_that_are_not_browsers_are_not_asked() {
        let own = Vec::new();
        assert!(!foreign(&headers(&[("host", "proxy-1.internal:8081"), ("user-agent", "Prometheus/2.53")]), &own));
        assert!(!foreign(&headers(&[("host", "anything.example")]), &own));
        assert!(!foreign(&HeaderMap::new(), &own));
    }

    #[test]
    fn a_host_name_loses_its_port_and_brackets() {
        assert_eq!(host_name("a.example:80"), "a.example");
        assert_eq!(host_name("a.example"), "a.example");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
    }
}
