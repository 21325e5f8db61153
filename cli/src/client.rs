//! Talks to the control plane: tries each endpoint in turn, sticks with the one that
//! answers. Any node accepts writes (followers forward them to the leader), so following the
//! leader is the server's job; the client only moves on when a node cannot be reached, or,
//! for a write the server applies once (it carries a request id), when its outcome is unknown.

use std::time::Duration;

use anyhow::{bail, Result};
use switchyard_model::grpc::Channel;
use switchyard_model::grpc::{self, ChannelOptions, ClientTls};
use switchyard_model::limits::MAX_GRPC_MESSAGE;
use switchyard_proto::v1::access_client::AccessClient;
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::query_client::QueryClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Code, Request, Status};

/// Adds `authorization: Bearer <token>` to every call, when the CLI was given a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header value for `token`; refused (without echoing it) if it is not plain text.
    pub fn new(token: Option<&str>) -> Result<Bearer> {
        let value = token
            .map(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| anyhow::anyhow!("the bearer token holds characters a header cannot carry"))?;
        Ok(Bearer(value))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel to one node that sends the CLI's credential on every call.
pub type Chan = InterceptedService<Channel, Bearer>;

/// Which failures a call is tried again on, at the next endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Writes without a request id: only when the node did not take the call.
    NotTaken,
    /// Writes with a request id, resent with the same id: any UNAVAILABLE, even when the
    /// write may have committed, and UNKNOWN, which is how a connection that broke mid-call
    /// shows (the server itself never answers it), since the server applies an id once and
    /// answers a repeat with the first answer.
    Deduplicated,
    /// Reads: asking again changes nothing, so the same failures as [`Retry::Deduplicated`].
    Read,
}

pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Chan>,
    current: usize,
    tls: bool,
}

/// Set, a token may go to another host in cleartext (a network the operator trusts).
const CLEARTEXT_TOKEN: &str = "SWITCHYARD_ALLOW_CLEARTEXT_TOKEN";

/// Whether an endpoint (as [`normalize`] gives it) is on this machine: `localhost`, or a
/// loopback address.
fn loopback(e: &str) -> bool {
    let uri = if e.contains("://") { e.to_string() } else { format!("http://{e}") };
    let Ok(parsed) = uri.parse::<tonic::transport::Uri>() else { return false };
    let host = parsed.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Accepts `host:port`, `http://host:port` or `https://host:port`; the scheme of a bare
/// `host:port` follows the transport (TLS when a CA was given).
pub fn normalize(e: &str) -> Result<String> {
    let e = e.trim().trim_end_matches('/');
    if e.is_empty() {
        bail!("empty endpoint in --endpoints");
    }
    let uri = if e.contains("://") { e.to_string() } else { format!("http://{e}") };
    let parsed: tonic::transport::Uri = uri.parse().map_err(|_| anyhow::anyhow!("endpoint {e:?} is not host:port"))?;
    if parsed.port_u16().is_none() || parsed.host().is_none_or(str::is_empty) {
        bail!("endpoint {e:?} needs a host and a port (host:port)");
    }
    Ok(e.to_string())
}

impl Client {
    pub fn new(endpoints: &str, tls: ClientTls, bearer: Bearer) -> Result<Client> {
        let endpoints: Vec<String> = endpoints.split(',').map(normalize).collect::<Result<_>>()?;
        // The token goes out with the first request, before any answer could say the node
        // wants TLS: in cleartext, only to this machine.
        if bearer.0.is_some() && !tls.enabled() && std::env::var_os(CLEARTEXT_TOKEN).is_none() {
            if let Some(e) = endpoints.iter().find(|e| !loopback(e)) {
                bail!(
                    "{e}: a token is not sent in cleartext to another host; give the cluster CA (--tls-ca), or set \
                     {CLEARTEXT_TOKEN}=1 on a network you trust"
                );
            }
        }
        let channels = endpoints
            .iter()
            .map(|e| Ok(InterceptedService::new(grpc::channel(e, &ChannelOptions::CLI, &tls)?, bearer.clone())))
            .collect::<Result<_>>()?;
        Ok(Client { endpoints, channels, current: 0, tls: tls.enabled() })
    }

    /// `s` with the endpoint that gave it and, when the failure looks like one side speaking
    /// TLS and the other not, what to change (a bare "h2 protocol error" tells nobody that).
    fn explained(&self, at: usize, s: &Status) -> Status {
        let hint = transport_mismatch(s, self.tls).map(|h| format!(" ({h})")).unwrap_or_default();
        Status::new(s.code(), format!("{}: {}{hint}", self.endpoints[at], s.message()))
    }

    /// [`Self::explained`], and when the hint is that the node may require TLS, a look at
    /// what the endpoint answers to an HTTP/1.1 request: a TLS alert confirms the hint, an
    /// HTTP/1 reply means the endpoint is no control-plane node at all (a proxy's listener or
    /// admin port, say), which the hint would have hidden.
    async fn diagnosed(&self, at: usize, s: &Status) -> Status {
        // A port that holds an HTTP/2 preface without a word (an HTTP/1.1 server waiting for
        // the rest of a head) looks like a frozen node: the probe tells them apart.
        let unsure = transport_mismatch(s, self.tls).is_some() || s.message() == UNRESPONSIVE;
        if self.tls || !unsure {
            return self.explained(at, s);
        }
        let endpoint = &self.endpoints[at];
        let hint = match probe(endpoint).await {
            Some(Answer::Http1) => {
                "it answered HTTP/1.1, not gRPC: is this a proxy's port? Give the \
                                   control plane's gRPC address (--listen of switchyard-control)"
            }
            Some(Answer::Tls) => "the node requires TLS: pass --tls-ca, with --tls-cert/--tls-key or a token",
            None => return self.explained(at, s),
        };
        Status::new(s.code(), format!("{endpoint}: {} ({hint})", s.message()))
    }

    /// Runs `f` against the endpoints in turn until one answers; a node that is down or has no
    /// leader yet is skipped, for up to a few seconds in all.
    pub async fn call<T, F, Fut>(&mut self, retry: Retry, f: F) -> Result<T, Status>
    where
        F: Fn(Chan) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        // The last failure, and the endpoint that gave it.
        let mut last: Option<(usize, Status)> = None;
        // The first failure after which a write may have been applied: what the caller must
        // hear if no later attempt settles it, not the last node's "connection refused".
        let mut maybe_applied: Option<Status> = None;
        loop {
            for _ in 0..self.channels.len() {
                let at = self.current;
                match f(self.channels[at].clone()).await.map_err(unresponsive) {
                    Ok(v) => return Ok(v),
                    Err(s) if retryable(&s, retry) => {
                        if maybe_applied.is_none() && may_have_applied(&s, retry) {
                            maybe_applied = Some(self.explained(at, &s));
                        }
                        last = Some((at, s));
                        self.current = (at + 1) % self.channels.len();
                    }
                    Err(s) if transport_mismatch(&s, self.tls).is_some() => return Err(self.diagnosed(at, &s).await),
                    Err(s) if s.message() == UNRESPONSIVE => {
                        let s = self.diagnosed(at, &s).await;
                        let m = format!("{} (the write may have been applied: read before retrying)", s.message());
                        return Err(grpc::mark_outcome_unknown(Status::unavailable(m)));
                    }
                    Err(s) => return Err(s),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let last = match last {
                    Some((at, s)) => self.diagnosed(at, &s).await,
                    None => Status::unavailable("no endpoint answered"),
                };
                return Err(match maybe_applied {
                    Some(first) => unsettled(first, &last),
                    None => last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn admin(c: Chan) -> AdminClient<Chan> {
        // A backup (`snapshot save`) is one message as large as the state.
        AdminClient::new(c).max_decoding_message_size(MAX_GRPC_MESSAGE)
    }
    pub fn access(c: Chan) -> AccessClient<Chan> {
        AccessClient::new(c).max_decoding_message_size(MAX_GRPC_MESSAGE)
    }
    pub fn query(c: Chan) -> QueryClient<Chan> {
        QueryClient::new(c).max_decoding_message_size(MAX_GRPC_MESSAGE)
    }
    pub fn discovery(c: Chan) -> DiscoveryClient<Chan> {
        DiscoveryClient::new(c).max_decoding_message_size(MAX_GRPC_MESSAGE)
    }
}

/// What an endpoint sent back to an HTTP/1.1 request, when that tells what it is.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Http1,
    Tls,
}

/// Connects to `endpoint` (host:port, or with a scheme) and reads the first bytes it answers
/// an HTTP/1.1 request with (a gRPC server answers none, or HTTP/2), within a second each way.
async fn probe(endpoint: &str) -> Option<Answer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.split_once("://").map_or(endpoint, |(_, a)| a);
    let second = Duration::from_secs(1);
    let mut s = tokio::time::timeout(second, tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
    tokio::time::timeout(second, s.write_all(b"GET / HTTP/1.1\r\nHost: switchyard\r\nConnection: close\r\n\r\n"))
        .await
        .ok()?
        .ok()?;
    let mut buf = [0u8; 5];
    let n = tokio::time::timeout(second, s.read(&mut buf)).await.ok()?.ok()?;
    classify(&buf[..n])
}

fn classify(first: &[u8]) -> Option<Answer> {
    match first {
        [b'H', b'T', b'T', b'P', b'/', ..] => Some(Answer::Http1),
        // A TLS record: an alert (21) or a handshake (22), version 3.x.
        [21 | 22, 3, ..] => Some(Answer::Tls),
        _ => None,
    }
}

/// A hint for the human when a call failed the way a TLS/cleartext mismatch fails. It only
/// adds words to the message; no decision is taken on the text.
fn transport_mismatch(s: &Status, tls: bool) -> Option<&'static str> {
    // The message and its sources: tonic says "transport error" and keeps the cause below.
    let mut m = s.message().to_string();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        m.push_str(&format!(": {e}"));
        src = e.source();
    }
    // A TLS server answers an HTTP/2 preface with an alert and a close: the client sees a
    // frame of invalid size, or the connection closed, reset (a close with the preface still
    // unread) or its pipe broken under its first call.
    let m = m.to_ascii_lowercase();
    if !tls && ["http2 error", "connection closed", "connection reset", "broken pipe"].iter().any(|c| m.contains(c)) {
        return Some("the node may require TLS: pass --tls-ca, with --tls-cert/--tls-key or a token");
    }
    if tls && (m.contains("invalidcontenttype") || m.contains("corrupt message") || m.contains("tls handshake")) {
        return Some("the node may not speak TLS: drop --tls-ca/--tls-cert/--tls-key");
    }
    None
}

const UNRESPONSIVE: &str = "no answer to HTTP/2 pings within 2 s: the node is stopped, overloaded or cut off";

/// A call that failed because its node stopped answering HTTP/2 pings, as a frozen, cut-off
/// or swamped node does (its kernel still takes connections, so nothing else shows it): an
/// UNAVAILABLE that says so, marked outcome unknown, since the node may have taken the call.
/// Reads and deduplicated writes are asked again at the next node; other writes are not.
fn unresponsive(s: Status) -> Status {
    let mut src = std::error::Error::source(&s);
    while let Some(e) = src {
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
            return grpc::mark_outcome_unknown(Status::unavailable(UNRESPONSIVE));
        }
        src = e.source();
    }
    s
}

/// Unreachable nodes are retried elsewhere; a write whose outcome is unknown is not, because
/// it may still commit and must not be applied twice, unless the server deduplicates it.
fn retryable(s: &Status, retry: Retry) -> bool {
    match (s.code(), retry) {
        (Code::Unavailable | Code::Unknown, Retry::Deduplicated | Retry::Read) => true,
        (Code::Unavailable, Retry::NotTaken) => !grpc::outcome_unknown(s),
        _ => false,
    }
}

/// Whether a write that failed with `s` may still have been applied.
fn may_have_applied(s: &Status, retry: Retry) -> bool {
    retry != Retry::Read && (grpc::outcome_unknown(s) || s.code() == Code::Unknown)
}

/// The answer when every attempt failed but `first` may have been applied: unavailable,
/// marked outcome unknown, saying so and what the last attempt met.
fn unsettled(first: Status, last: &Status) -> Status {
    let m = format!(
        "{} (the write may have been applied: read before retrying; last attempt: {})",
        first.message(),
        last.message()
    );
    grpc::mark_outcome_unknown(Status::unavailable(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_outcome(code: Code, message: &str) -> Status {
        grpc::mark_outcome_unknown(Status::new(code, message))
    }

    #[test]
    fn unavailable_is_retried_unless_the_write_may_commit() {
        assert!(retryable(&Status::unavailable("connection refused"), Retry::NotTaken));
        assert!(!retryable(&with_outcome(Code::Unavailable, "timed out waiting for a quorum"), Retry::NotTaken));
    }

    #[test]
    fn a_deduplicated_write_is_retried_even_when_it_may_have_committed() {
        assert!(retryable(&with_outcome(Code::Unavailable, "timed out waiting for a quorum"), Retry::Deduplicated));
        assert!(retryable(&Status::unavailable("connection refused"), Retry::Deduplicated));
        let broken = Status::unknown("h2 protocol error: connection reset");
        assert!(retryable(&broken, Retry::Deduplicated));
        assert!(!retryable(&broken, Retry::NotTaken), "without an id a broken call may have committed");
    }

    /// The message text plays no part, whatever it says.
    #[test]
    fn message_text_is_ignored() {
        assert!(retryable(&Status::unavailable("no quorum: leader lost"), Retry::NotTaken));
        assert!(!retryable(&with_outcome(Code::Unavailable, ""), Retry::NotTaken));
    }

    #[test]
    fn reads_are_retried_on_a_broken_connection() {
        assert!(retryable(&Status::unknown("h2 protocol error: connection reset"), Retry::Read));
        assert!(retryable(&Status::unavailable("connection refused"), Retry::Read));
        assert!(!may_have_applied(&Status::unknown("reset"), Retry::Read));
    }

    #[test]
    fn an_unsettled_write_says_so_whatever_the_last_node_said() {
        let first = with_outcome(Code::Unavailable, "n1: no quorum");
        assert!(may_have_applied(&first, Retry::Deduplicated));
        assert!(may_have_applied(&Status::unknown("reset"), Retry::Deduplicated));
        assert!(!may_have_applied(&Status::unavailable("connection refused"), Retry::Deduplicated));
        let s = unsettled(first, &Status::unavailable("n2: connection refused"));
        assert!(grpc::outcome_unknown(&s));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("n1: no quorum") && s.message().contains("may have been applied"), "{s:?}");
        assert!(s.message().contains("n2: connection refused"), "{s:?}");
    }

    #[test]
    fn first_bytes_tell_http1_from_tls() {
        assert_eq!(classify(b"HTTP/1.1 400 Bad Request"), Some(Answer::Http1));
        assert_eq!(classify(&[21, 3, 3, 0, 2]), Some(Answer::Tls));
        assert_eq!(classify(&[0, 0, 18, 4, 0]), None, "an HTTP/2 settings frame");
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn other_codes_are_never_retried() {
        for code in [Code::InvalidArgument, Code::NotFound, Code::FailedPrecondition, Code::DeadlineExceeded] {
            for retry in [Retry::NotTaken, Retry::Deduplicated, Retry::Read] {
                assert!(!retryable(&Status::new(code, "x"), retry), "{code:?}");
            }
        }
        assert!(!retryable(&with_outcome(Code::Internal, "x"), Retry::Deduplicated));
    }
}
