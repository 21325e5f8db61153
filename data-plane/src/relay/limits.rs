//! What bounds a relayed connection and how it ended: shared by the relay's parts, which
//! import it and nothing of each other's.

use std::time::Duration;

/// After the proxy decides to close, how long the peers have to finish.
#[cfg(not(test))]
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Short in unit tests, so that lingering is quick to observe.
#[cfg(test)]
pub const CLOSE_LINGER: Duration = Duration::from_millis(300);

/// After a peer's Close went by, how long the closing handshake may take before the proxy
/// ends the connection: a peer that neither answers a Close nor closes its socket would
/// otherwise hold it for good when no idle timeout is set (pings stop at a Close).
pub const PEER_CLOSING: Duration = CLOSE_LINGER.saturating_mul(5);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_message: u64,
    pub idle_timeout: Option<Duration>,
    pub ping_interval: Option<Duration>,
    /// The backend's 101 agreed an extension (`Sec-WebSocket-Extensions`): frames may carry
    /// RSV bits.
    pub extensions: bool,
}

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A peer closed (its Close frame went through, or its TCP connection ended).
    Peer,
    /// The proxy closed it with this code toward the client.
    Proxy(u16),
    /// The client stopped answering pings.
    DeadClient,
    Error,
}

/// Why the proxy decided to close, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Idle,
    /// Asked through the connection's close handle: a drain, a removed or disabled backend,
    /// or shutdown.
    Asked,
    TooBig,
    /// A peer broke RFC 6455; `Side` is the output its frames were headed for.
    Protocol(Side),
    /// One peer is lost (it stopped answering pings or reading, or its socket failed): the
    /// other hears the proxy is going away.
    PeerLost,
}

/// What went one way through a relayed connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub bytes: u64,
    pub messages: u64,
    /// The status code of the Close the sending peer sent (1005 for a Close without one).
    pub peer_close: Option<u16>,
    /// The code of the proxy's own Close on this output, if it sent one.
    pub proxy_close: Option<u16>,
}

/// How a relayed connection went.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    pub end: End,
    pub why: Option<Why>,
    /// The input whose peer ended first (a Close frame or the end of its stream), named by
    /// the output it fed.
    pub first: Option<Side>,
    pub to_backend: Flow,
    pub to_client: Flow,
    /// The relay ended on the closing handshake without the client's end of stream: its
    /// socket should be closed with [`super::Stream::linger`], not dropped.
    pub client_open: bool,
}

/// Which output a direction writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    ToBackend,
    ToClient,
}

impl Side {
    /// The opposite direction.
    pub fn other(self) -> Side {
        match self {
            Side::ToBackend => Side::ToClient,
            Side::ToClient => Side::ToBackend,
        }
    }
}
