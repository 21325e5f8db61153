//! The request path as routes see it and backends get it (shared: proxies normalize each
//! request's path with it, and the control plane holds route prefixes to its form). Routes match by path prefix, and a
//! route may carry authentication, so the path the proxy matches must be the path the backend
//! serves: `/x/../admin`, `//admin` and `/%61dmin` are `/admin` to most servers (ASP.NET,
//! Tomcat, Spring, Express's static files), and matched raw they would take an open route
//! past the guarded one. So the path is normalized once (RFC 3986 §6.2.2: unreserved
//! characters decoded, dot segments removed; runs of slashes merged, as NGINX's
//! `merge_slashes` and Envoy's `merge_slashes` do), matched, and sent on in that form (Envoy's
//! `normalize_path`). An encoded slash, backslash or NUL has no one meaning across servers
//! (one splits the path there, another does not), so a path with one is refused, as Envoy's
//! `path_with_escaped_slashes_action: REJECT_REQUEST` and Apache's default do; so is a raw
//! backslash, which Windows servers take for a slash.

use std::borrow::Cow;

/// `target` (an origin-form path and query) with its path normalized; borrowed when it
/// already was, which is every request a browser or WebSocket client sends in practice.
pub fn normalize(target: &str) -> Result<Cow<'_, str>, &'static str> {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let (path, rest) = target.split_at(end);
    if !path.starts_with('/') {
        // `*` (OPTIONS *): nothing to match a prefix against.
        return Ok(Cow::Borrowed(target));
    }
    let b = path.as_bytes();
    let plain = b.is_ascii()
        && !b.contains(&b'%')
        && !b.contains(&b'\\')
        && !b.windows(2).any(|w| w == b"//" || w == b"/." || w == b"/;");
    // A fragment is the client's own business (RFC 9110 §7.1); none reaches a backend.
    let rest = rest.split('#').next().unwrap_or("");
    if plain {
        return Ok(if rest.len() == target.len() - end {
            Cow::Borrowed(target)
        } else {
            Cow::Owned(format!("{path}{rest}"))
        });
    }
    let decoded = decode_unreserved(path)?;
    let mut out = String::with_capacity(target.len());
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded.split('/').skip(1).peekable();
    // Whether the path ends in a slash once resolved (`/a/`, `/a/.`, `/a/b/..`).
    let mut dir = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        // `..;x` is `..` to servers that drop a segment's parameters before resolving dot
        // segments (Tomcat, Jetty, Spring): `/open/..;/admin` is their `/admin`. Refused, as
        // an encoded slash is: it means one thing here and another there.
        let name = seg.split(';').next().unwrap_or("");
        if name != seg && (name == "." || name == "..") {
            return Err("a dot segment with parameters (`..;`) in the path");
        }
        // `/;x/admin` is `//admin`, so `/admin`, to the same servers once they drop the
        // parameters and merge slashes: matched as `/;x/admin` it would pass a guarded
        // `/admin` prefix. Refused likewise.
        if name.is_empty() && !seg.is_empty() {
            return Err("a path segment of parameters alone (`/;x/`)");
        }
        match seg {
            "" | "." => dir = last,
            ".." => {
                segments.pop();
                dir = last;
            }
            s => {
                segments.push(s);
                dir = false;
            }
        }
    }
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if dir || segments.is_empty() {
        out.push('/');
    }
    out.push_str(rest);
    Ok(if out == target { Cow::Borrowed(target) } else { Cow::Owned(out) })
}

/// `path` as routes are matched against it: each segment without its `;parameters`, as the
/// servers that drop them read it (`/admin;x/users` is `/admin/users` to Tomcat, Jetty and
/// Spring), so such a path takes the route, and the check, of the path they serve. The
/// backend still gets the path with its parameters.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    Cow::Owned(path.split('/').map(|s| s.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("/"))
}

/// Percent-escapes of unreserved characters decoded, the others kept (hex in upper case),
/// and raw bytes past ASCII escaped (`/café` is `/caf%C3%A9`, as browsers send it and route
/// prefixes are written: servers decode both to one path); a malformed escape, or one that
/// stands for a slash, backslash or NUL, refused.
fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, &'static str> {
    if path.contains('\\') {
        return Err("a backslash in the path");
    }
    if !path.contains('%') && path.is_ascii() {
        return Ok(Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 16);
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii() {
            out.push_str(&format!("%{:02X}", b[i]));
            i += 1;
            continue;
        }
        if b[i] != b'%' {
            // Up to the next escape or byte past ASCII.
            let next = path[i..].find(|c: char| c == '%' || !c.is_ascii()).map_or(b.len(), |n| i + n);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        let (Some(hi), Some(lo)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) else {
            return Err("a malformed percent-escape in the path");
        };
        let c = (hi * 16 + lo) as u8;
        match c {
            b'/' | b'\\' | 0 => return Err("an encoded slash, backslash or NUL in the path"),
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => out.push(c as char),
            c => {
                out.push('%');
                out.push_str(&format!("{c:02X}"));
            }
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(t: &str) -> String {
        normalize(t).unwrap_or_else(|e| panic!("{t}: {e}")).into_owned()
    }

    #[test]
    fn paths_already_normal_are_kept_as_they_are() {
        for t in ["/", "/chat", "/chat/", "/a/b?x=1&y=/../z", "/.well-known/x", "/a.b/c..d/...", "*"] {
            assert!(matches!(normalize(t), Ok(Cow::Borrowed(s)) if s == t), "{t}");
        }
    }

    #[test]
    fn dot_segments_runs_of_slashes_and_unreserved_escapes_resolve_to_the_path_servers_serve() {
        for (t, want) in [
            ("/x/../admin", "/admin"),
            ("/x/../admin/users?q=1", "/admin/users?q=1"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/./admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/%2E/b", "/a/b"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/a/b/", "/a/b/"),
            ("/a%7eb", "/a~b"),
            ("/a%20b%3f", "/a%20b%3F"),
            ("/a?x#frag", "/a?x"),
            ("/a#frag", "/a"),
            ("/caf%C3%A9", "/caf%C3%A9"),
        ] {
            assert_eq!(n(t), want, "{t}");
        }
    }

    #[test]
    fn escapes_with_no_one_meaning_across_servers_are_refused() {
        for t in ["/admin%2fusers", "/a%2F..%2Fadmin", "/a%5cb", "/a%00", "/a\\..\\admin", "/a%", "/a%4", "/a%zz"] {
            assert!(normalize(t).is_err(), "{t}: {:?}", normalize(t));
        }
        // `..;` is `..` to Tomcat, Jetty and Spring, a name to everyone else.
        for t in ["/open/..;/admin", "/open/..;jsessionid=1/admin", "/open/%2e%2e;/admin", "/a/.;x/b", "/..;"] {
            assert!(normalize(t).is_err(), "{t}: {:?}", normalize(t));
        }
        assert_eq!(n("/app;jsessionid=1/chat"), "/app;jsessionid=1/chat", "other parameters are the backend's");
        // Raw UTF-8 is escaped, as a browser sends it and a route prefix is written.
        assert_eq!(n("/café/x"), "/caf%C3%A9/x");
        assert_eq!(n("/caf%c3%a9/x"), "/caf%C3%A9/x");
        // A segment of parameters alone would be an empty one, merged away, to those servers.
        for t in ["/;x/admin/users", "/;/admin", "/a/;x/b", "/admin/;x", "/%61/;x/b"] {
            assert!(normalize(t).is_err(), "{t}: {:?}", normalize(t));
        }
    }

    #[test]
    fn routes_see_each_segment_without_its_parameters() {
        assert!(matches!(without_params("/admin/users"), Cow::Borrowed("/admin/users")));
        assert_eq!(without_params("/admin;x=1/users"), "/admin/users");
        assert_eq!(without_params("/a;b;c/d;/e"), "/a/d/e");
        assert_eq!(without_params("/;x"), "/");
    }
}
