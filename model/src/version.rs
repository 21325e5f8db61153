//! Versions on the wire: every gRPC call between Switchyard's parts (CLI → node, proxy →
//! node, node → node) carries the caller's protocol and crate version as metadata, and every
//! reply the server's, so a mixed-version cluster says what it runs instead of failing on a
//! message it half understands.
//!
//! **Protocol `major.minor`.** A minor bump adds things an older peer can ignore: new fields
//! (prost skips unknown fields, and a missing one decodes as its default) and new RPCs or
//! commands that are refused until the cluster's feature level admits them. A major bump is a
//! change an older peer would misread (a field's meaning changed, a message renumbered, a
//! payload re-encoded); servers refuse a caller of another major with FAILED_PRECONDITION.
//! A call without the header (grpcurl, a client from before versions) is served as "unknown".
//!
//! **Feature level.** What the replicated log may hold is versioned apart from the wire: a
//! cluster-wide level committed in Raft, raised by the leader once every member supports it
//! (see the control plane's `features` module).

use std::fmt;
use std::sync::OnceLock;

/// Metadata key of the sender's protocol version (`1.1`).
pub const PROTOCOL_KEY: &str = "switchyard-protocol";
/// Metadata key of the sender's crate version (`0.1.0`).
pub const VERSION_KEY: &str = "switchyard-version";

/// This build's wire protocol. 1.0: the protocol before versions were sent. 1.1: versions in
/// metadata, member versions and the feature level in `ClusterStatusReply` and
/// `InitializedReply`, `DeleteSessionRequest.all`.
pub const PROTOCOL: Protocol = Protocol { major: 1, minor: 1 };

/// This build's crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The highest cluster feature level this build can apply. 1: everything before feature
/// levels. 2: `DeleteSessions` (every binding of a pool at once). 3: pools' `backend_tls`.
/// 4: health checks' `close_on_failure`. 5: guarded writes, whose checks (the last backend in
/// service, the config limit) every node repeats as it applies them.
pub const MAX_FEATURE_LEVEL: u32 = 5;

/// TEST ONLY: lowers the feature level this binary advertises and accepts, to play an older
/// release in an upgrade test without building two. Never set it in production: a node that
/// claims less than it runs only holds the cluster back.
pub const TEST_MAX_FEATURE_LEVEL_ENV: &str = "SWITCHYARD_TEST_MAX_FEATURE_LEVEL";

/// The highest feature level this process supports: [`MAX_FEATURE_LEVEL`], or lower when
/// [`TEST_MAX_FEATURE_LEVEL_ENV`] says so (read once).
pub fn max_feature_level() -> u32 {
    static MAX: OnceLock<u32> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var(TEST_MAX_FEATURE_LEVEL_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map_or(MAX_FEATURE_LEVEL, |n| n.clamp(1, MAX_FEATURE_LEVEL))
    })
}

/// What a proxy's or the CLI's `--version` prints after the program's name: `0.1.0 (protocol
/// 1.1)`. They apply no log, so they have no feature level.
pub fn protocol_line() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| format!("{VERSION} (protocol {PROTOCOL})"))
}

/// What a node's `--version` prints after the program's name: `0.1.0 (protocol 1.1, max
/// feature level 2)`.
pub fn build_line() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| format!("{VERSION} (protocol {PROTOCOL}, max feature level {})", max_feature_level()))
}

/// A protocol version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Protocol {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for Protocol {
    type Err = ();
    fn from_str(s: &str) -> Result<Protocol, ()> {
        let (a, b) = s.trim().split_once('.').ok_or(())?;
        Ok(Protocol { major: a.parse().map_err(|_| ())?, minor: b.parse().map_err(|_| ())? })
    }
}

/// What a caller (or a server, in a reply) says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `None` when the header is absent ("unknown": an old client, grpcurl).
    pub protocol: Option<Protocol>,
    pub version: Option<String>,
}

impl Peer {
    /// Reads the version headers; an unreadable protocol header is an error, not "unknown".
    pub fn from_headers(h: &http::HeaderMap) -> Result<Peer, Mismatch> {
        let protocol = match h.get(PROTOCOL_KEY) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Mismatch::Unreadable(String::from_utf8_lossy(v.as_bytes()).into_owned()))?,
            ),
        };
        let version = h.get(VERSION_KEY).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Peer { protocol, version })
    }

    /// `0.1.0 (protocol 1.1)`, or `an unknown version`.
    pub fn describe(&self) -> String {
        match (&self.version, self.protocol) {
            (Some(v), Some(p)) => format!("{v} (protocol {p})"),
            (None, Some(p)) => format!("protocol {p}"),
            _ => "an unknown version".into(),
        }
    }
}

/// Why a server refuses a caller's version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error(
        "protocol version mismatch: the caller speaks {caller} and this server speaks {} (protocol {PROTOCOL}); \
         only the same major version is served, so upgrade or downgrade one side",
        VERSION
    )]
    Major { caller: String },
    #[error("unreadable {PROTOCOL_KEY} header {0:?}: expected MAJOR.MINOR")]
    Unreadable(String),
}

/// Whether a server of [`PROTOCOL`] serves a caller with these headers: any minor of the
/// same major, and a caller that sends no version at all.
pub fn check(h: &http::HeaderMap) -> Result<Peer, Mismatch> {
    let peer = Peer::from_headers(h)?;
    match peer.protocol {
        Some(p) if p.major != PROTOCOL.major => Err(Mismatch::Major { caller: peer.describe() }),
        _ => Ok(peer),
    }
}

/// Adds this build's version headers to `h` (a request's, or a reply's).
pub fn stamp(h: &mut http::HeaderMap) {
    static VALUES: OnceLock<(http::HeaderValue, http::HeaderValue)> = OnceLock::new();
    let (p, v) = VALUES.get_or_init(|| {
        (
            http::HeaderValue::from_str(&PROTOCOL.to_string()).expect("digits and a dot"),
            http::HeaderValue::from_static(VERSION),
        )
    });
    h.insert(PROTOCOL_KEY, p.clone());
    h.insert(VERSION_KEY, v.clone());
}

/// The interceptor every client channel goes through ([`crate::grpc::channel`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Versioned;

impl tonic::service::Interceptor for Versioned {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut h = std::mem::take(req.metadata_mut()).into_headers();
        stamp(&mut h);
        *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(h);
        Ok(req)
    }
}

/// The version a server stated in a reply's metadata.
pub fn of_reply(md: &tonic::metadata::MetadataMap) -> Peer {
    Peer::from_headers(&md.clone().into_headers())
        .unwrap_or(Peer { protocol: None, version: md.get(VERSION_KEY).and_then(|v| v.to_str().ok()).map(Into::into) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(protocol: Option<&str>, version: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(p) = protocol {
            h.insert(PROTOCOL_KEY, p.parse().unwrap());
        }
        if let Some(v) = version {
            h.insert(VERSION_KEY, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn another_minor_and_no_header_are_served_another_major_is_refused_naming_both() {
        assert!(check(&headers(Some(&format!("{}.{}", PROTOCOL.major, PROTOCOL.minor + 7)), Some("9.9.9"))).is_ok());
        assert_eq!(check(&headers(None, None)).unwrap().describe(), "an unknown version");
        let e = check(&headers(Some("2.0"), Some("0.9.0"))).unwrap_err().to_string();
        assert!(e.contains("0.9.0 (protocol 2.0)") && e.contains(&format!("{VERSION} (protocol {PROTOCOL})")), "{e}");
        assert!(matches!(check(&headers(Some("two"), None)), Err(Mismatch::Unreadable(_))));
    }

    #[test]
    fn the_interceptor_stamps_both_headers() {
        use tonic::service::Interceptor;
        let r = Versioned.call(tonic::Request::new(())).unwrap();
        let peer = of_reply(r.metadata());
        assert_eq!(peer.protocol, Some(PROTOCOL));
        assert_eq!(peer.version.as_deref(), Some(VERSION));
    }
}
