//! What handling a client connection needs, whatever it turns out to carry (a WebSocket, for
//! [`crate::connection`], or plain HTTP, for [`crate::plain`]): the proxy's context and knobs,
//! the client and backend sockets, picking backends in turn, the session key, and what the
//! replicated settings say of limits.

use std::sync::Arc;
use std::time::Duration;

use crate::handshake;
use crate::relay::Limits;
use crate::tls::BackendTls;

pub(crate) mod attempts;
pub(crate) mod streams;

/// What every connection's handling needs besides the shared state.
pub struct Ctx {
    pub tuning: Tuning,
    /// For connections from the wss listener.
    pub wss: Option<Arc<rustls::ServerConfig>>,
    pub backend_tls: Option<BackendTls>,
}

/// Proxy-local knobs that are not part of the replicated settings.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub connect_timeout: Duration,
    /// How long a backend that refused a connection gets no new ones from this proxy.
    pub eject_for: Duration,
    /// `TCP_USER_TIMEOUT` on backend connections: how long data sent to a backend may go
    /// unacknowledged before the kernel gives the connection up. Without it a backend host
    /// that vanished (powered off, cut off by the network: no RST comes) holds its clients
    /// for the kernel's retransmission budget, about 15 minutes, their messages going
    /// nowhere; the idle timeout never fires while they keep sending.
    pub backend_unacked: Option<Duration>,
    /// TCP keepalive on backend connections: a probe once nothing has come from the backend
    /// this long (whole seconds, the kernel's unit). The unacknowledged-data bound above
    /// only sees a vanished host while data goes to it; a quiet WebSocket (a client waiting
    /// for pushes) sends nothing, and without probes would wait on a dead backend forever.
    pub backend_keepalive: Option<Duration>,
    /// Backends tried per handshake before answering 503.
    pub max_attempts: usize,
    /// On SIGTERM, closes are spread over this long.
    pub shutdown_grace: Duration,
    /// Connection worker threads.
    pub workers: usize,
    /// Workers yield their core before they park after work (`connection::accept`).
    pub park_yield: bool,
    /// The operator's cap on open client connections (the descriptor limit caps it too).
    pub max_connections: Option<usize>,
    /// Accept only once a config is in use (from the cache or a node), waiting at most this
    /// long: a process taking over a listening socket that an old one still serves would
    /// otherwise answer its share of new clients with 404s until its first config arrives.
    pub accept_when_configured: Option<Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            connect_timeout: Duration::from_secs(3),
            eject_for: Duration::from_secs(10),
            backend_unacked: Some(Duration::from_secs(60)),
            backend_keepalive: Some(Duration::from_secs(30)),
            max_attempts: 3,
            shutdown_grace: Duration::from_secs(10),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            park_yield: true,
            max_connections: None,
            accept_when_configured: None,
        }
    }
}

const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the replicated settings say a relayed connection may do.
pub(crate) fn relay_limits(s: &switchyard_proto::v1::Settings) -> Limits {
    Limits {
        max_message: if s.max_message_bytes > 0 { s.max_message_bytes } else { 16 << 20 },
        idle_timeout: (s.idle_timeout_ms > 0).then(|| Duration::from_millis(s.idle_timeout_ms)),
        ping_interval: (s.ping_interval_ms > 0).then(|| Duration::from_millis(s.ping_interval_ms)),
        extensions: false,
    }
}

pub(crate) fn handshake_timeout(s: &switchyard_proto::v1::Settings) -> Duration {
    if s.handshake_timeout_ms > 0 {
        Duration::from_millis(s.handshake_timeout_ms)
    } else {
        DEFAULT_HANDSHAKE_TIMEOUT
    }
}

/// The session key for a pool's affinity spec, and the `Set-Cookie` line to add to the 101
/// when the spec is a cookie the client does not have yet.
pub(crate) fn session_key(
    spec: Option<&switchyard_model::KeySpec>,
    up: &handshake::Upgrade,
    client: std::net::IpAddr,
) -> (Option<String>, Option<String>) {
    let Some(spec) = spec else { return (None, None) };
    if let Some(key) = crate::table::request_value(spec, up, client) {
        return (Some(key), None);
    }
    match spec {
        switchyard_model::KeySpec::Cookie(name) => {
            let key = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
            let line = format!("Set-Cookie: {name}={key}; Path=/; HttpOnly; SameSite=Lax\r\n");
            (Some(key), Some(line))
        }
        // No key in this request (header or query parameter missing): balance it as usual.
        _ => (None, None),
    }
}
