//! One way to build a gRPC channel to a Switchyard node, and the metadata keys that carry
//! what clients must not infer from an error's text.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

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
        keep_alive: None,
        keep_alive_while_idle: false,
        request_timeout: Some(Duration::from_secs(15)),
    };
}

/// `host:port` gets `http://`; a full URI is taken as it is.
pub fn uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// A lazily connected channel: nothing is dialled until the first call.
pub fn channel(addr: &str, o: &ChannelOptions) -> Result<Channel, tonic::transport::Error> {
    let mut e = Endpoint::from_shared(uri(addr))?.connect_timeout(o.connect_timeout).tcp_nodelay(true);
    if let Some(k) = o.keep_alive {
        e = e.http2_keep_alive_interval(k).keep_alive_timeout(k).keep_alive_while_idle(o.keep_alive_while_idle);
    }
    if let Some(t) = o.request_timeout {
        e = e.timeout(t);
    }
    Ok(e.connect_lazy())
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

    #[tokio::test]
    async fn addresses_become_uris() {
        assert_eq!(uri("127.0.0.1:7400"), "http://127.0.0.1:7400");
        assert_eq!(uri("https://a:1"), "https://a:1");
        assert!(channel("127.0.0.1:7400", &ChannelOptions::PEER).is_ok());
        assert!(channel("not a uri", &ChannelOptions::CLI).is_err());
    }
}
