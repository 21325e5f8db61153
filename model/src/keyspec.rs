//! Where a hash or affinity key comes from in a request: `header:NAME`, `cookie:NAME`,
//! `query:NAME`, `claim:NAME` (a claim of the JWT the route verified) or `ip`. Parsed once, when a pool is validated or a routing table is built,
//! never per request.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySpec {
    Header(String),
    Cookie(String),
    Query(String),
    /// A claim of the token the route's JWT check verified (absent on routes without one).
    Claim(String),
    /// The client's IP address.
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    #[error("{0:?} must be header:NAME, cookie:NAME, query:NAME, claim:NAME or ip")]
    Form(String),
    #[error("{spec:?}: {name:?} is not a valid {kind} name")]
    BadName { spec: String, name: String, kind: &'static str },
}

impl FromStr for KeySpec {
    type Err = KeySpecError;

    fn from_str(s: &str) -> Result<KeySpec, KeySpecError> {
        if s == "ip" {
            return Ok(KeySpec::ClientIp);
        }
        let form = || KeySpecError::Form(s.to_string());
        let (kind, name) = s.split_once(':').ok_or_else(form)?;
        let (kind, make): (&'static str, fn(String) -> KeySpec) = match kind {
            "header" => ("header", KeySpec::Header),
            "cookie" => ("cookie", KeySpec::Cookie),
            "query" => ("query", KeySpec::Query),
            "claim" => ("claim", KeySpec::Claim),
            _ => return Err(form()),
        };
        if name.is_empty() {
            return Err(form());
        }
        // An HTTP token (RFC 9110 §5.6.2): what header, cookie and parameter names may be.
        let token = name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !token {
            return Err(KeySpecError::BadName { spec: s.to_string(), name: name.to_string(), kind });
        }
        Ok(make(name.to_string()))
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Header(n) => write!(f, "header:{n}"),
            KeySpec::Cookie(n) => write!(f, "cookie:{n}"),
            KeySpec::Query(n) => write!(f, "query:{n}"),
            KeySpec::Claim(n) => write!(f, "claim:{n}"),
            KeySpec::ClientIp => f.write_str("ip"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_and_prints_it_back() {
        for (s, want) in [
            ("header:X-User", KeySpec::Header("X-User".into())),
            ("cookie:sid", KeySpec::Cookie("sid".into())),
            ("query:room", KeySpec::Query("room".into())),
            ("claim:sub", KeySpec::Claim("sub".into())),
            ("ip", KeySpec::ClientIp),
        ] {
            let k: KeySpec = s.parse().unwrap();
            assert_eq!(k, want);
            assert_eq!(k.to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_forms_and_names() {
        for bad in ["", "body:x", "cookie:", "header", "IP", "query:a b", "header:a:b"] {
            assert!(bad.parse::<KeySpec>().is_err(), "{bad}");
        }
        let e = "cookie:a;b".parse::<KeySpec>().unwrap_err();
        assert_eq!(e.to_string(), r#""cookie:a;b": "a;b" is not a valid cookie name"#);
    }
}
