//! One way to build a gRPC channel to a Switchyard node, and the metadata keys that carry
//! what clients must not infer from an error's text, or a write's identity.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::tls::{TlsError, TlsFiles};
use crate::version::Versioned;

/// A channel to a node that stamps this build's version on every call
/// ([`crate::version`]): every client of a node is built on one.
pub type Channel = InterceptedService<tonic::transport::Channel, Versioned>;

/// Set to [`OUTCOME_UNKNOWN`] on an UNAVAILABLE status when the write may still commit (it
/// reached the leader but no quorum answered in time): retrying it could apply it twice.
pub const WRITE_OUTCOME_KEY: &str = "switchyard-write-outcome";
pub const OUTCOME_UNKNOWN: &str = "unknown";

/// Whether a status says a write's outcome is unknown.
pub fn outcome_unknown(s: &tonic::Status) -> bool {
    s.metadata().get(WRITE_OUTCOME_KEY).is_some_and(|v| v.as_bytes() == OUTCOME_UNKNOWN.as_bytes())
}

/// Marks a status as "this write may still commit".
pub fn mark_outcome_unknown(mut s: tonic::Status) -> tonic::Status {
    s.metadata_mut().insert(WRITE_OUTCOME_KEY, tonic::metadata::MetadataValue::from_static(OUTCOME_UNKNOWN));
    s
}

/// The cluster a peer call, a watch request or a watch stream belongs to (32 hex digits).
pub const CLUSTER_ID_KEY: &str = "switchyard-cluster-id";

/// A write's identity, sent as metadata so every Admin write carries it without a field in
/// each request message. The control plane applies a write with a given (client id, seq) at
/// most once and answers a repeat with the first answer, so the same write may be retried.
pub const CLIENT_ID_KEY: &str = "switchyard-client-id";
pub const REQUEST_SEQ_KEY: &str = "switchyard-request-seq";
/// Longest client id: the table of seen requests keeps one row per client id.
pub const MAX_CLIENT_ID: usize = 64;

/// Why a write's identity metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequestId {
    #[error("{CLIENT_ID_KEY} must be 1 to {MAX_CLIENT_ID} printable ASCII characters")]
    ClientId,
    #[error("{REQUEST_SEQ_KEY} must be a whole number of 1 or more")]
    Seq,
    #[error("{CLIENT_ID_KEY} and {REQUEST_SEQ_KEY} go together; one was sent without the other")]
    Half,
}

/// Checks a write's identity; the server checks ids from clients and from peers alike.
pub fn check_request_id(client_id: &str, seq: u64) -> Result<(), BadRequestId> {
    let printable = client_id.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID || !printable {
        return Err(BadRequestId::ClientId);
    }
    if seq == 0 {
        return Err(BadRequestId::Seq);
    }
    Ok(())
}

/// The (client id, seq) a request carries: `None` when it carries neither (no dedup).
pub fn request_id(md: &tonic::metadata::MetadataMap) -> Result<Option<(String, u64)>, BadRequestId> {
    let (client, seq) = match (md.get(CLIENT_ID_KEY), md.get(REQUEST_SEQ_KEY)) {
        (None, None) => return Ok(None),
        (Some(c), Some(s)) => (c, s),
        _ => return Err(BadRequestId::Half),
    };
    let client = client.to_str().map_err(|_| BadRequestId::ClientId)?;
    let seq = seq.to_str().ok().and_then(|s| s.parse::<u64>().ok()).ok_or(BadRequestId::Seq)?;
    check_request_id(client, seq)?;
    Ok(Some((client.to_string(), seq)))
}

/// `req` with a write's identity attached.
pub fn with_request_id<T>(req: T, client_id: &str, seq: u64) -> Result<tonic::Request<T>, BadRequestId> {
    check_request_id(client_id, seq)?;
    let mut r = tonic::Request::new(req);
    let client = client_id.parse().map_err(|_| BadRequestId::ClientId)?;
    r.metadata_mut().insert(CLIENT_ID_KEY, client);
    r.metadata_mut().insert(REQUEST_SEQ_KEY, seq.into());
    Ok(r)
}

/// How a channel behaves; each kind of caller has its constant.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOptions {
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive pings, so a dead peer is noticed without traffic.
    pub keep_alive: Option<Duration>,
    /// Keep pinging while no call is open (a proxy's watch must notice a silent node).
    pub keep_alive_while_idle: bool,
    /// A deadline for every call made on the channel.
    pub request_timeout: Option<Duration>,
}

impl ChannelOptions {
    /// Between control-plane nodes: Raft's own timers decide what is slow.
    pub const PEER: ChannelOptions = ChannelOptions {
        connect_timeout: Duration::from_millis(500),
        keep_alive: Some(Duration::from_secs(5)),
        keep_alive_while_idle: false,
        request_timeout: None,
    };
    /// A proxy following the control plane: a silent node is left within seconds.
    pub const PROXY: ChannelOptions = ChannelOptions {
        connect_timeout: Duration::from_secs(1),
        keep_alive: Some(Duration::from_secs(2)),
        keep_alive_while_idle: true,
        request_timeout: None,
    };
    /// The CLI: one request at a time, each with a deadline.
    pub const CLI: ChannelOptions = ChannelOptions {
        connect_timeout: Duration::from_secs(1),
        // A frozen or cut-off node still takes connections (its kernel does), so only an
        // unanswered HTTP/2 ping shows it, within 2 s, and the CLI moves to the next node.
        keep_alive: Some(Duration::from_secs(1)),
        keep_alive_while_idle: false,
        request_timeout: Some(Duration::from_secs(15)),
    };
}

/// How a client reaches nodes: in cleartext (a loopback setup) or over TLS verified against
/// the cluster CA, showing its own certificate if it has one.
#[derive(Clone, Default)]
pub struct ClientTls(Option<(ClientTlsConfig, Arc<dyn ServerCertVerifier>)>);

/// Says which, never what: tonic's own `Debug` prints the client's private key.
impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.enabled() { "ClientTls(tls)" } else { "ClientTls(cleartext)" })
    }
}

impl ClientTls {
    /// Cleartext: only `host:port` and `http://` endpoints.
    pub fn cleartext() -> ClientTls {
        ClientTls(None)
    }

    /// TLS when any TLS material was given, cleartext otherwise.
    pub fn from_files(files: &TlsFiles) -> Result<ClientTls, TlsError> {
        Ok(ClientTls(if files.enabled() { Some(files.node_client()?) } else { None }))
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}: an https:// endpoint needs the cluster CA (--tls-ca); it is never tried in cleartext")]
    HttpsWithoutTls(String),
    #[error("{0}: an http:// endpoint was given but TLS is configured; use host:port or https://")]
    HttpWithTls(String),
    #[error("{0}: {1}")]
    Transport(String, tonic::transport::Error),
}

/// The URI for `addr`: `host:port` gets the scheme the transport speaks; an explicit scheme
/// must agree with it, so `https://` never falls back to cleartext.
pub fn uri(addr: &str, tls: &ClientTls) -> Result<String, ChannelError> {
    match (addr.split_once("://").map(|(s, _)| s), tls.enabled()) {
        (None, false) => Ok(format!("http://{addr}")),
        (None, true) => Ok(format!("https://{addr}")),
        (Some("https"), false) => Err(ChannelError::HttpsWithoutTls(addr.to_string())),
        (Some("http"), true) => Err(ChannelError::HttpWithTls(addr.to_string())),
        (Some(_), _) => Ok(addr.to_string()),
    }
}

/// A lazily connected channel: nothing is dialled until the first call. Every call on it
/// carries this build's version headers.
pub fn channel(addr: &str, o: &ChannelOptions, tls: &ClientTls) -> Result<Channel, ChannelError> {
    let err = |e| ChannelError::Transport(addr.to_string(), e);
    let mut e =
        Endpoint::from_shared(uri(addr, tls)?).map_err(err)?.connect_timeout(o.connect_timeout).tcp_nodelay(true);
    if let Some((t, verifier)) = &tls.0 {
        e = e.tls_config_with_verifier(t.clone(), verifier.clone()).map_err(err)?;
    }
    if let Some(k) = o.keep_alive {
        e = e.http2_keep_alive_interval(k).keep_alive_timeout(k).keep_alive_while_idle(o.keep_alive_while_idle);
    }
    if let Some(t) = o.request_timeout {
        e = e.timeout(t);
    }
    Ok(InterceptedService::new(e.connect_lazy(), Versioned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_marker_round_trips() {
        let s = tonic::Status::unavailable("no quorum");
        assert!(!outcome_unknown(&s));
        assert!(outcome_unknown(&mark_outcome_unknown(s)));
    }

    #[test]
    fn request_ids_round_trip_and_bad_ones_are_refused() {
        let r = with_request_id((), "cli-1f", 7).unwrap();
        assert_eq!(request_id(r.metadata()), Ok(Some(("cli-1f".to_string(), 7))));
        assert_eq!(request_id(tonic::Request::new(()).metadata()), Ok(None));
        assert_eq!(with_request_id((), "c", 0).unwrap_err(), BadRequestId::Seq);
        assert_eq!(with_request_id((), &"x".repeat(65), 1).unwrap_err(), BadRequestId::ClientId);
        assert_eq!(check_request_id("tab\there", 1), Err(BadRequestId::ClientId));
        assert_eq!(check_request_id(&"x".repeat(64), 1), Ok(()));
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert(CLIENT_ID_KEY, "c".parse().unwrap());
        assert_eq!(request_id(r.metadata()), Err(BadRequestId::Half));
        r.metadata_mut().insert(REQUEST_SEQ_KEY, "-3".parse().unwrap());
        assert_eq!(request_id(r.metadata()), Err(BadRequestId::Seq));
    }

    #[tokio::test]
    async fn addresses_become_uris_and_https_never_falls_back_to_cleartext() {
        let clear = ClientTls::cleartext();
        crate::tls::install_provider();
        let dir = std::env::temp_dir().join(format!("sy-grpc-uri-{}", std::process::id()));
        let files = TlsFiles { ca: Some(crate::tls::tests::pki(&dir)), cert: None, key: None };
        let tls = ClientTls::from_files(&files).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(uri("127.0.0.1:7400", &clear).unwrap(), "http://127.0.0.1:7400");
        assert_eq!(uri("127.0.0.1:7400", &tls).unwrap(), "https://127.0.0.1:7400");
        assert_eq!(uri("https://a:1", &tls).unwrap(), "https://a:1");
        let e = uri("https://a:1", &clear).unwrap_err().to_string();
        assert!(e.contains("needs the cluster CA (--tls-ca)"), "{e}");
        assert!(matches!(uri("http://a:1", &tls), Err(ChannelError::HttpWithTls(_))));
        assert!(channel("127.0.0.1:7400", &ChannelOptions::PEER, &clear).is_ok());
        assert!(channel("not a uri", &ChannelOptions::CLI, &clear).is_err());
    }
}
