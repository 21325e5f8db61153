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
        let channels = endpoints
            .iter()
            .map(|e| Ok(InterceptedService::new(grpc::channel(e, &ChannelOptions::CLI, &tls)?, bearer.clone())))
            .collect::<Result<_>>()?;
        Ok(Client { endpoints, channels, current: 0, tls: tls.enabled() })
    }

    /// `s` with the endpoint that gave it and, when the failure looks like one side speaking
    /// TLS and the other not, what to change (a bare "h2 protocol error" tells nobody that).
    fn explained(&self, s: &Status) -> Status {
        let hint = transport_mismatch(s, self.tls).map(|h| format!(" ({h})")).unwrap_or_default();
        Status::new(s.code(), format!("{}: {}{hint}", self.endpoints[self.current], s.message()))
    }

    /// Runs `f` against the endpoints in turn until one answers; a node that is down or has no
    /// leader yet is skipped, for up to a few seconds in all.
    pub async fn call<T, F, Fut>(&mut self, retry: Retry, f: F) -> Result<T, Status>
    where
        F: Fn(Chan) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        let mut last = None;
        // The first failure after which a write may have been applied: what the caller must
        // hear if no later attempt settles it, not the last node's "connection refused".
        let mut maybe_applied: Option<Status> = None;
        loop {
            for _ in 0..self.channels.len() {
                match f(self.channels[self.current].clone()).await {
                    Ok(v) => return Ok(v),
                    Err(s) if retryable(&s, retry) => {
                        let s = self.explained(&s);
                        if maybe_applied.is_none() && may_have_applied(&s, retry) {
                            maybe_applied = Some(s.clone());
                        }
                        last = Some(s);
                        self.current = (self.current + 1) % self.channels.len();
                    }
                    Err(s) if transport_mismatch(&s, self.tls).is_some() => return Err(self.explained(&s)),
                    Err(s) => return Err(s),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let last = last.unwrap_or_else(|| Status::unavailable("no endpoint answered"));
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
    // frame of invalid size, or the connection closed (or its pipe broken) under its first call.
    if !tls && ["http2 error", "connection closed", "broken pipe"].iter().any(|c| m.contains(c)) {
        return Some("the node may require TLS: pass --tls-ca, with --tls-cert/--tls-key or a token");
    }
    if tls && (m.contains("InvalidContentType") || m.contains("corrupt message") || m.contains("tls handshake")) {
        return Some("the node may not speak TLS: drop --tls-ca/--tls-cert/--tls-key");
    }
    None
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
    fn other_codes_are_never_retried() {
        for code in [Code::InvalidArgument, Code::NotFound, Code::FailedPrecondition, Code::DeadlineExceeded] {
            for retry in [Retry::NotTaken, Retry::Deduplicated, Retry::Read] {
                assert!(!retryable(&Status::new(code, "x"), retry), "{code:?}");
            }
        }
        assert!(!retryable(&with_outcome(Code::Internal, "x"), Retry::Deduplicated));
    }
}
