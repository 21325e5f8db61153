//! Accepting clients: the handshake under limits, routing, picking and connecting a backend
//! (ejecting the ones that fail), forwarding the upgrade, then relaying.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::access_log;
use crate::handshake::{self, Reject};
use crate::relay::{self, CloseHandle, Limits, Stream};
use crate::state::ProxyState;

mod accept;
mod live;
mod refused;
mod upgrade;
pub use accept::{configured, start, Listen};
use live::Live;

use crate::handling::streams::{self, accept_tls, backend_stream, client_stream, eject_locally, BackendFail, ClientIo};
use crate::handling::{handshake_timeout, relay_limits, session_key, Ctx};

/// Defaults for settings a fresh control plane has not set.
const DEFAULT_MAX_HEADER: usize = 16 * 1024;
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

async fn reject_none(state: &ProxyState, rec: &mut Log, sock: ClientIo, r: Reject) -> Opened {
    if let Some(rec) = rec {
        rec.status = r.status();
        rec.termination = r.reason();
    }
    reject(state, sock, r).await;
    Opened::Done
}

/// The access-log record of a connection, when access logging is on (boxed: a connection's
/// future holds a pointer, not the record, when it is off).
type Log = Option<Box<access_log::Record>>;

async fn reject(state: &ProxyState, mut sock: ClientIo, r: Reject) {
    state.runtime.count_failure(r.reason());
    let retry = (r.status() == 503).then(|| 1 + rand::random::<u64>() % 5);
    let _ = tokio::time::timeout(Duration::from_secs(2), sock.write_all(&handshake::error_response(&r, retry))).await;
    if r == Reject::Timeout {
        // A client too slow to send its head is not waited for a second time.
        let _ = sock.shutdown().await;
        return;
    }
    // The client may still be sending what the answer refuses (a head over the limit).
    streams::linger(&mut sock).await;
}

/// Reads up to the end of an HTTP head; returns the head length (the buffer may hold more).
async fn read_head<S: AsyncRead + Unpin>(sock: &mut S, buf: &mut Vec<u8>, max: usize) -> Result<usize, Reject> {
    let mut scan = handshake::HeadScan::default();
    loop {
        if let Some(end) = scan.end(buf) {
            return Ok(end);
        }
        if buf.len() > max {
            return Err(Reject::HeadersTooLarge);
        }
        buf.reserve(1024.min(max + 1 - buf.len().min(max)));
        match sock.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Reject::BadRequest("connection closed during handshake")),
            Ok(_) => {}
        }
    }
}

/// How a connection's first request went. Returned once per connection and taken apart at
/// once, so the WebSocket variant is not boxed (that would be an allocation per handshake).
#[allow(clippy::large_enum_variant)]
enum Opened {
    /// A WebSocket, past its handshake.
    Ws(Established),
    /// A plain HTTP request: the connection and the bytes read so far, for [`crate::plain`].
    Plain(ClientIo, Vec<u8>),
    /// Refused, answered, or gone.
    Done,
}

/// A connection past its handshake: what the relay needs, and nothing else.
struct Established {
    client: Stream,
    backend: Stream,
    client_early: Vec<u8>,
    backend_early: Vec<u8>,
    pool: String,
    address: String,
    stats: Arc<crate::stats::BackendStats>,
    counted: crate::stats::Counted,
    limits: Limits,
    /// The live session binding this connection keeps fresh.
    session: Option<(String, String, String)>,
}

#[allow(clippy::manual_async_fn)] // an `async fn` keeps its arguments twice in its state
fn handle(
    state: Arc<ProxyState>,
    client: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    tls: bool,
) -> impl std::future::Future<Output = ()> {
    // Two phases, so that an established connection's task holds only what relaying needs.
    // The handshake (TLS, the head, routing, the backend connect) runs in a box, made here so
    // that it takes the socket and the rest with it and is freed when it ends. The relay
    // phase owns its few fields. Not an `async fn`: that would keep every argument for the
    // connection's whole life.
    let handshake = Box::pin(establish(state.clone(), client, peer, ctx, tls));
    async move {
        // The slot taken at accept, given back however this ends.
        let _slot = crate::fds::Slot::adopt(&state.runtime);
        if let Some(live) = handshake.await {
            live.run(&state).await;
        }
    }
}

/// The handshake phase of [`handle`]: a WebSocket connection ready to relay, or `None` once
/// the connection was refused, served as plain HTTP, or gone.
async fn establish(
    state: Arc<ProxyState>,
    client: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    tls: bool,
) -> Option<Box<Live>> {
    let started = tokio::time::Instant::now();
    let log = state.runtime.access_log.get();
    let mut rec: Log = log.map(|_| Box::new(access_log::Record { client: Some(peer), ..Default::default() }));
    let client = if tls {
        match accept_tls(&state, &ctx, client, peer).await {
            Ok((c, sni)) => {
                if let (Some(r), Either::Right(t)) = (&mut rec, &c) {
                    let version = match t.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                        _ => "TLS",
                    };
                    r.tls = Some((version, sni));
                }
                c
            }
            Err(why) => {
                if let (Some(log), Some(mut r)) = (log, rec) {
                    r.termination = why;
                    r.duration = started.elapsed();
                    log.log(*r);
                }
                return None;
            }
        }
    } else {
        Either::Left(client)
    };
    let e = match open(&state, &mut rec, client, peer, &ctx, tls).await {
        Opened::Ws(e) => e,
        Opened::Plain(client, first) => {
            // Boxed: hyper's connection state would otherwise widen the handshake's future.
            Box::pin(crate::plain::serve(state.clone(), ctx.clone(), client, first, peer, tls)).await;
            return None;
        }
        Opened::Done => {
            if let (Some(log), Some(mut r)) = (log, rec) {
                // A client that connected and left without a request is not a request.
                if r.status != 0 {
                    r.duration = started.elapsed();
                    r.handshake = r.duration;
                    log.log(*r);
                }
            }
            return None;
        }
    };
    let handshake = started.elapsed();
    let Established { client, backend, client_early, backend_early, pool, address, stats, counted, limits, session } =
        e;
    let id = state.runtime.conn_id();
    let ctl = Arc::new(CloseHandle::default());
    stats.register(id, ctl.clone());
    stats.total.fetch_add(1, Relaxed);
    // A connection that arrives while shutting down is closed like the others, and so is one
    // whose backend was removed, disabled or set draining while its handshake was in flight
    // (the change's closes only reach connections registered before it).
    let still_admitted =
        state.table.load().pools.get(&pool).is_some_and(|p| {
            p.backends.iter().find(|b| b.backend.address == address).is_some_and(|b| p.takes(&b.backend))
        });
    if state.runtime.shutdown.is_cancelled() || !still_admitted {
        ctl.close(crate::frame::CLOSE_GOING_AWAY);
    }
    Some(Box::new(Live {
        client,
        backend,
        client_early,
        backend_early,
        stats,
        counted: Some(counted),
        limits,
        session,
        id,
        ctl,
        rec,
        started,
        handshake,
    }))
}

/// Who ended a relayed connection and why, in the access log's words.
fn termination(r: &relay::Relayed, shutting_down: bool) -> &'static str {
    use relay::{End, Side, Why};
    match (r.end, r.why) {
        (End::DeadClient, _) => "ping_timeout",
        (End::Proxy(_), Some(Why::Idle)) => "idle_timeout",
        (End::Proxy(_), Some(Why::Asked)) if shutting_down => "shutdown",
        (End::Proxy(_), Some(Why::Asked)) => "drain",
        (End::Proxy(_), Some(Why::TooBig)) => "message_too_big",
        (End::Proxy(_), Some(Why::Protocol(Side::ToBackend))) => "client_protocol_error",
        (End::Proxy(_), Some(Why::Protocol(Side::ToClient))) => "backend_protocol_error",
        (End::Error, _) => "io_error",
        _ => match r.first {
            Some(Side::ToBackend) => "client_closed",
            Some(Side::ToClient) => "backend_closed",
            None => "closed",
        },
    }
}

async fn open(
    state: &Arc<ProxyState>,
    rec: &mut Log,
    mut client: ClientIo,
    peer: SocketAddr,
    ctx: &Ctx,
    tls: bool,
) -> Opened {
    // Only the settings the head is read under; the table itself is taken once the head is in.
    let s = state.table.load().settings;
    let hs_timeout = handshake_timeout(&s);
    let max_header = if s.max_header_bytes > 0 { s.max_header_bytes as usize } else { DEFAULT_MAX_HEADER };
    let mut buf = Vec::with_capacity(1024);
    let head_len = match tokio::time::timeout(hs_timeout, read_head(&mut client, &mut buf, max_header)).await {
        Ok(Ok(n)) if n <= max_header => n,
        Ok(Ok(_)) => return reject_none(state, rec, client, Reject::HeadersTooLarge).await,
        Ok(Err(Reject::BadRequest(_))) if buf.is_empty() => return Opened::Done, // connected and left
        Ok(Err(r)) => return reject_none(state, rec, client, r).await,
        Err(_) => return reject_none(state, rec, client, Reject::Timeout).await,
    };
    if !handshake::wants_websocket(&buf[..head_len]) {
        return Opened::Plain(client, buf);
    }
    let mut up = match handshake::parse_request(&buf[..head_len]) {
        Ok(u) => u,
        Err(r) => return reject_none(state, rec, client, r).await,
    };
    // The config in force now, not when the connection came: the head may take up to the
    // handshake timeout, and a route given authentication (or a backend removed) meanwhile
    // must not be served as it was.
    let table = state.table.load_full();
    let s = table.settings;
    // Admission: the caps in force come with the config; over them, 503 and a jittered
    // Retry-After so a storm of reconnects spreads out.
    // (The per-IP rate was checked at accept.)
    if let Err(r) = state.runtime.admission.admit(peer.ip(), s.max_handshakes_per_sec, 0) {
        return reject_none(state, rec, client, r.into()).await;
    }
    let early = buf.split_off(head_len);
    drop(buf);

    if let Some(r) = rec {
        r.host = Some(up.host.clone());
        r.path = Some(up.path().to_string());
    }
    let Some((route, pool)) = table.route_named(&up.host, up.path()) else {
        return reject_none(state, rec, client, Reject::NotFound).await;
    };
    // Session affinity: the key the pool names; a client without the cookie gets a new one.
    // Only the key's hash is looked up, reported and cached: it may be a credential. Until
    // the cluster's secret arrives there is no affinity.
    let pool = pool.clone();
    if let Some(r) = rec {
        r.route = Some(route.to_string());
        r.pool = Some(pool.pool.name.clone());
    }
    // Edge authentication, before any backend is contacted.
    if let Some(auth) = table.route_auth(route) {
        // Boxed: an auth subrequest's state would otherwise widen every connection's future.
        match Box::pin(crate::edge_auth::check(auth, &up, peer.ip(), state)).await {
            crate::edge_auth::Verdict::Allow { headers, claims } => {
                for (name, value) in headers {
                    up.headers.remove(&name);
                    if let Some(v) = value {
                        up.headers.push(&name, v.as_bytes());
                    }
                    up.set_here.push(name);
                }
                up.claims = claims;
            }
            crate::edge_auth::Verdict::Deny { status, why, challenge } => {
                return reject_none(state, rec, client, Reject::Auth { status, why, challenge }).await;
            }
        }
    }
    let (raw, set_cookie) = session_key(pool.affinity_key.as_ref(), &up, peer.ip());
    let session = raw.and_then(|k| table.affinity_secret.hash(k.as_bytes()));
    if let Some(r) = rec {
        r.session = session.clone();
    }
    let bound = session.as_deref().and_then(|k| state.affinity.backend_for(&pool.pool.name, k));
    let fwd = handshake::forward_head(&up, peer.ip(), if tls { "https" } else { "http" });
    let reached =
        upgrade::reach(state, ctx, &pool, session.as_deref(), bound.as_deref(), &up, peer, &fwd, hs_timeout).await;
    let upgrade::Reached { idx, counted, mut backend, mut resp, head: resp_len } = match reached {
        Ok(r) => r,
        Err(r) => return reject_none(state, rec, client, r).await,
    };
    let entry = &pool.backends[idx];
    let stats = entry.stats.clone();
    if let Some(r) = rec {
        r.backend = Some(entry.backend.address.clone());
    }
    let (status, extensions) = match handshake::response_head(&resp[..resp_len]) {
        Some((code, ext)) => (code, ext),
        None => {
            // Ejected, as a head that never ends is (see `upgrade::reach`): nothing a client
            // sends makes a working backend answer so, and the next clients go elsewhere.
            let why = BackendFail::Upgrade("a malformed answer head (502)");
            eject_locally(state, entry, &pool.pool.name, &ctx.tuning, &why);
            return reject_none(state, rec, client, Reject::BadGateway).await;
        }
    };
    if status == 101 {
        if let Err(why) = handshake::check_101(&resp[..resp_len], &up) {
            tracing::warn!(backend = %entry.backend.address, "backend's upgrade answer refused: {why}: 502");
            eject_locally(
                state,
                entry,
                &pool.pool.name,
                &ctx.tuning,
                &BackendFail::Upgrade("a 101 that fails its checks"),
            );
            return reject_none(state, rec, client, Reject::BadGateway).await;
        }
    }
    if status != 101 {
        // The backend said no: its answer is the client's answer.
        state.runtime.count_failure("backend_refused");
        if let Some(r) = rec {
            r.status = status;
            r.termination = "backend_refused";
        }
        refused::relay(&mut client, &mut backend, resp, resp_len, hs_timeout).await;
        return Opened::Done;
    }
    // Frames the backend sent right behind its 101 go through the relay, which tracks them.
    let backend_early = resp.split_off(resp_len);
    if let Some(cookie) = &set_cookie {
        handshake::add_header(&mut resp, cookie.trim_end().as_bytes());
    }
    // Flushed: TLS may hold the 101's record until then, and the relay starts clean.
    if client.write_all(&resp).await.is_err() || client.flush().await.is_err() {
        return Opened::Done;
    }
    drop(resp);
    let limits = Limits { extensions, ..relay_limits(&s) };
    let session = session.map(|k| state.affinity.bind_live(&pool.pool.name, &k, &entry.backend.address));
    // Bytes the client sent behind its head go through the relay, which tracks their frames.
    Opened::Ws(Established {
        client: client_stream(client),
        backend: backend_stream(backend),
        client_early: early,
        backend_early,
        stats,
        counted,
        limits,
        session,
        pool: pool.pool.name.clone(),
        address: entry.backend.address.clone(),
    })
}

#[cfg(test)]
mod tests;
