//! What bounds a relayed connection and how it ended: shared by the relay's parts, which
//! import it and nothing of each other's.

use std::time::Duration;

/// After the proxy decides to close, how long the peers have to finish.
#[cfg(not(test))]
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Short in unit tests, so that lingering is quick to observe.
#[cfg(test)]
pub const CLOSE_LINGER: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_message: u64,
    pub idle_timeout: Option<Duration>,
    pub ping_interval: Option<Duration>,
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

/// Which output a direction writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    ToBackend,
    ToClient,
}
