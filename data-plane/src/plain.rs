//! Plain HTTP/1.1 on the WebSocket listeners, for applications that start with long-polling
//! (socket.io, SockJS, SignalR) or serve a few plain requests beside their WebSocket. A
//! request that is not an upgrade is routed by the same routes, balanced by the same pools
//! and bound by the same session affinity as a WebSocket connection, so a long-polling
//! session and its later upgrade land on the same backend from any proxy.
//!
//! hyper parses and serves: the client's connection is handed over with the bytes already
//! read for its first head, and every request is rebuilt for the backend from parsed parts,
//! so no byte of a client's framing reaches a backend (no request smuggling through the
//! proxy). The WebSocket path is untouched: it is chosen from the first head before hyper
//! is involved.

mod answers;
mod backends;
pub(crate) use backends::sweep_here;
pub mod bodies;
mod client;
mod fast;
mod headers;
mod inflight;
mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use self::answers::{own, own_closing, refusal, too_large, Pending};
use self::bodies::{Counts, Limited, Relayed};
use self::client::{Activity, Busy, Prefixed};
use self::headers::{strip_client_only, strip_hop_by_hop, Forwarding};
use self::inflight::{send_within, Held, InFlight};
use self::view::{head_size, needs_headers, view};
use crate::access_log;
use crate::handling::attempts::Attempts;
use crate::handling::streams::ClientIo;
use crate::handling::{handshake_timeout, relay_limits, session_key, Ctx};
use crate::handshake::{self, Reject};
use crate::state::ProxyState;

/// The response body sent to a client: the proxy's own short answer, or a backend's body on
/// its way (not boxed: every response would pay an allocation for it).
type RespBody = Either<Full<Bytes>, Relayed<InFlight>>;

/// Defaults for pools that do not set their own limits. Long-polling requests are held by
/// the backend for tens of seconds (socket.io's default ping interval is 25 s), so the
/// response timeout is generous; NGINX's `proxy_read_timeout` default of 60 s cuts
/// SignalR's 90-110 s polls.
pub const DEFAULT_MAX_BODY: u64 = 10 << 20;
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// hyper's smallest read buffer.
const MIN_BUF: usize = 8192;

/// A plain connection's bounds, from the settings when it opens.
struct Bounds {
    /// For a head, counted from the last response's end (or the connection's start).
    head_timeout: Duration,
    /// How long a client may leave a response unread: the relay's bound for a peer that stops
    /// reading (60 s, or sooner by the idle timeout or pings).
    stall: Duration,
    max_header: usize,
}

fn bounds(state: &ProxyState) -> Bounds {
    let table = state.table.load();
    let s = &table.settings;
    let max_header = match s.max_header_bytes {
        0 => 16 * 1024,
        n => n as usize,
    };
    Bounds { head_timeout: handshake_timeout(s), stall: crate::relay::write_stall(relay_limits(s)), max_header }
}

/// How long a pool's backend may take to answer, or go silent inside an answer.
fn response_timeout(pool: &crate::table::PoolTable) -> Duration {
    match pool.pool.response_timeout_ms {
        0 => DEFAULT_RESPONSE_TIMEOUT,
        ms => Duration::from_millis(ms),
    }
}

/// Serves plain HTTP on a client connection whose first head (and whatever followed it) is
/// in `first`, until the client closes, the connection idles out, or the proxy shuts down:
/// the fast path while it takes the requests, then hyper.
pub async fn serve(
    state: Arc<ProxyState>,
    ctx: Arc<Ctx>,
    client: ClientIo,
    first: Vec<u8>,
    peer: SocketAddr,
    tls: bool,
) {
    match fast::serve(&state, &ctx, client, first, peer, tls).await {
        fast::Outcome::Closed => {}
        fast::Outcome::Hyper(client, rest) => Box::pin(serve_hyper(state, ctx, client, rest, peer, tls)).await,
    }
}

/// [`serve`] by hyper.
async fn serve_hyper(
    state: Arc<ProxyState>,
    ctx: Arc<Ctx>,
    client: ClientIo,
    first: Vec<u8>,
    peer: SocketAddr,
    tls: bool,
) {
    let Bounds { head_timeout, stall, max_header } = bounds(&state);
    let io = hyper_util::rt::TokioIo::new(Prefixed::new(Bytes::from(first), client));
    let st = state.clone();
    let fwd = Arc::new(Forwarding::new(peer.ip(), if tls { "https" } else { "http" }));
    let activity = Arc::new(Activity::new());
    let act = activity.clone();
    // hyper holds every head to at least its smallest buffer; a lower limit is checked on
    // each request here (the first head was checked before hyper had it).
    let small_limit = (max_header < MIN_BUF).then_some(max_header);
    let svc = hyper::service::service_fn(move |req| {
        let (st, ctx, fwd, busy) = (st.clone(), ctx.clone(), fwd.clone(), act.begin());
        async move {
            if small_limit.is_some_and(|max| head_size(&req) > max) {
                let mut too_large = refusal(&st, None, Reject::HeadersTooLarge);
                too_large.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Ok::<_, Infallible>(too_large);
            }
            Ok::<_, Infallible>(handle(&st, &ctx, req, peer, &fwd, busy).await)
        }
    });
    // No `header_read_timeout`: hyper arms a new timer for every request head with it (an
    // allocation, a timer-wheel insert and removal, and often a wake-up of the driver: about
    // one extra syscall in four requests); the one timer below does its work. Turned off by
    // name and no timer given: with a timer, hyper's default is 30 s.
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .max_buf_size(max_header.max(MIN_BUF))
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let stop = state.runtime.shutdown.clone();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let idle = tokio::time::sleep(head_timeout);
    tokio::pin!(idle);
    enum Next {
        Ended(hyper::Result<()>),
        Stop,
        Due,
    }
    loop {
        let next = std::future::poll_fn(|cx| {
            use std::future::Future;
            use std::task::Poll;
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Next::Ended(r));
            }
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Next::Stop);
            }
            // A response body just began to wait on its backend: the timer moves up if the
            // backend's bound ends before it would fire.
            if let Some(at) = activity.backend_deadline() {
                if at < idle.deadline() {
                    idle.as_mut().reset(at);
                }
            }
            if idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Next::Due);
            }
            Poll::Pending
        })
        .await;
        match next {
            Next::Ended(r) => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "plain HTTP connection: {e}");
                }
                return;
            }
            Next::Stop => {
                // Requests in flight finish; the connection then closes instead of idling.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                return;
            }
            Next::Due => match activity.due(head_timeout, stall) {
                Some(at) => idle.as_mut().reset(at),
                None if activity.silent() => {
                    tracing::debug!(%peer, "plain HTTP backend sent nothing of its response body in time: closed");
                    return;
                }
                None if activity.in_flight() => {
                    tracing::debug!(%peer, "plain HTTP client left its response unread for {stall:?}: closed");
                    return;
                }
                None => {
                    tracing::debug!(%peer, "plain HTTP connection idle, or its next head unfinished, for {head_timeout:?}: closed");
                    return;
                }
            },
        }
    }
}

/// Closes this worker's idle backend connections at once and asks every other worker to close
/// its own: they are the descriptors the proxy can give back (see [`crate::fds::reserve`]).
pub fn close_idle(rt: &crate::state::Runtime) {
    backends::close_idle(&rt.pooled);
    crate::edge_auth::pool::close_idle(&rt.pooled);
    rt.close_idle.notify_waiters();
}

async fn handle(
    state: &Arc<ProxyState>,
    ctx: &Ctx,
    req: Request<Incoming>,
    peer: SocketAddr,
    fwd: &Forwarding,
    busy: Busy,
) -> Response<RespBody> {
    let started = tokio::time::Instant::now();
    let mut rec = Pending(state, None, started);
    rec.1 = state.runtime.access_log.get().map(|_| {
        Box::new(access_log::Record {
            client: Some(peer),
            method: Some(req.method().to_string()),
            path: Some(req.uri().path().to_string()),
            ..Default::default()
        })
    });
    let mut up = match view(&req) {
        Ok(u) => u,
        Err(why) => return refusal(state, rec.1.take(), Reject::BadRequest(why)),
    };
    if let Some(r) = &mut rec.1 {
        r.host = Some(up.host.clone());
    }
    // Not a forward proxy; and a body in a coding the proxy cannot pass on by name.
    let unsupported = if req.method() == hyper::Method::CONNECT {
        Some("CONNECT is not proxied")
    } else {
        headers::bad_framing(req.headers(), true)
    };
    if let Some(why) = unsupported {
        return own_closing(state, rec.1.take(), StatusCode::NOT_IMPLEMENTED, "not_implemented", why);
    }
    if req.headers().get_all(header::UPGRADE).iter().any(|v| handshake::has_token(v.as_bytes(), "websocket")) {
        // A WebSocket upgrade is taken on a connection's first request only, where it gets
        // the frame-checking relay; browsers and WebSocket clients always open a new
        // connection for one.
        let mut r = refusal(
            state,
            rec.1.take(),
            Reject::BadRequest("a WebSocket upgrade must be a connection's first request"),
        );
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let table = state.table.load_full();
    let Some((route, pool)) = table.route_named(&up.host, up.path()) else {
        return refusal(state, rec.1.take(), Reject::NotFound);
    };
    let pool = pool.clone();
    if let Some(r) = &mut rec.1 {
        r.route = Some(route.to_string());
        r.pool = Some(pool.pool.name.clone());
    }
    if needs_headers(&pool, table.route_auth(route).is_some()) {
        for (n, v) in req.headers() {
            up.headers.push(n.as_str(), v.as_bytes());
        }
    }
    // Edge authentication, before any backend is contacted.
    let mut passed = Vec::new();
    if let Some(auth) = table.route_auth(route) {
        match crate::edge_auth::check(auth, &up, peer.ip(), state).await {
            crate::edge_auth::Verdict::Allow { headers, claims } => {
                passed = headers;
                up.claims = claims;
            }
            crate::edge_auth::Verdict::Deny { status, why, challenge } => {
                return refusal(state, rec.1.take(), Reject::Auth { status, why, challenge });
            }
        }
    }
    let max_body = match pool.pool.max_body_bytes {
        0 => DEFAULT_MAX_BODY,
        n => n,
    };
    let response_timeout = response_timeout(&pool);
    // The client's stall bound, for its request body as for its heads.
    let stall = handshake_timeout(&table.settings);
    if req.body().size_hint().lower() > max_body {
        return too_large(state, rec.1.take());
    }

    // Session affinity, exactly as for a WebSocket handshake.
    let (raw, set_cookie) = session_key(pool.affinity_key.as_ref(), &up, peer.ip());
    let session = raw.and_then(|k| table.affinity_secret.hash(k.as_bytes()));
    if let Some(r) = &mut rec.1 {
        r.session = session.clone();
    }
    let bound = session.as_deref().and_then(|k| state.affinity.backend_for(&pool.pool.name, k));
    // A request that would begin a session is admitted as a WebSocket handshake is (the
    // proxy's handshake rate, when set): one kept-alive connection can carry any number.
    if session.is_some() && bound.is_none() {
        if let Err(r) = state.runtime.admission.admit(peer.ip(), table.settings.max_handshakes_per_sec, 0) {
            return refusal(state, rec.1.take(), r.into());
        }
    }

    // A backend and a connection to it: a pooled one when this worker has one.
    let mut attempts =
        Attempts::new(state, &pool, &ctx.tuning, session.as_deref(), bound.as_deref()).keeping_draining_sessions();
    let (idx, mut sender, reused) = loop {
        let i = match attempts.next(&up, peer.ip()) {
            Ok(i) => i,
            Err(r) => return refusal(state, rec.1.take(), r),
        };
        let b = &pool.backends[i];
        let pooled = &state.runtime.pooled;
        if let Some(backends::Conn::Hyper(tx)) =
            backends::checkout(&pool.pool.name, pool.tls.tag(), &b.backend.address, pooled, false)
        {
            break (i, tx, true);
        }
        match backends::connect(&b.backend.address, &pool.tls, ctx).await {
            Ok(tx) => break (i, tx, false),
            Err(why) => {
                if let Err(r) = attempts.failed(i, &why) {
                    return refusal(state, rec.1.take(), r);
                }
            }
        }
    };
    let entry = &pool.backends[idx];
    let address = entry.backend.address.as_str();
    // Counted since it was picked.
    let mut held = Held::request(state, &pool, idx, attempts.take(), session.as_deref(), bound.as_deref());
    if let Some(r) = &mut rec.1 {
        r.backend = Some(address.to_string());
        r.handshake = started.elapsed();
    }

    // The request as the backend gets it: parsed parts, hop-by-hop headers gone, this hop
    // described in X-Forwarded-* and Forwarded as for WebSocket.
    let (parts, body) = req.into_parts();
    let client_version = parts.version;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    strip_client_only(&mut headers);
    fwd.apply(&mut headers, &up, address);
    // A body of unknown length goes chunked, whatever the method: hyper would send a GET's
    // as no body at all.
    if !body.is_end_stream() && body.size_hint().exact().is_none() {
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    for (name, value) in passed {
        let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else { continue };
        headers.remove(&n);
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(n, v);
        }
    }
    let counts = Arc::new(Counts::default());
    let body = Limited::new(body, max_body, counts.clone(), stall, started, busy.again());
    let mut fwd = Request::new(body);
    *fwd.method_mut() = parts.method;
    // The path as routed: the client's own when it was already normal.
    let uri = match parts.uri.path_and_query() {
        Some(p) if p.as_str() == up.target => p.clone().into(),
        _ => match hyper::Uri::try_from(up.target.as_str()) {
            Ok(u) => u,
            Err(_) => return refusal(state, rec.1.take(), Reject::BadRequest("bad path")),
        },
    };
    *fwd.uri_mut() = uri;
    *fwd.headers_mut() = headers;
    let mut sent = send_within(&mut sender, fwd, response_timeout, &counts, started).await;
    // A pooled connection the backend closed just now fails before the request was written;
    // hyper hands it back, and it goes once more on a new connection.
    if let (Ok(Err(e)), true) = (&mut sent, reused) {
        if let Some(again) = e.take_message() {
            if let Ok(tx) = backends::connect(address, &pool.tls, ctx).await {
                sender = tx;
                sent = send_within(&mut sender, again, response_timeout, &counts, started).await;
            }
        }
    }
    let sent = sent.map(|r| r.map_err(|e| e.into_error()));
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(_)) if counts.over.load(Relaxed) => return too_large(state, rec.1.take()),
        Ok(Err(_)) if counts.stalled.load(Relaxed) => {
            let why = "request body not sent in time";
            return own_closing(state, rec.1.take(), StatusCode::REQUEST_TIMEOUT, "body_timeout", why);
        }
        Ok(Err(_)) if counts.malformed.load(Relaxed) => {
            let why = "malformed request body";
            return own_closing(state, rec.1.take(), StatusCode::BAD_REQUEST, "bad_request", why);
        }
        Ok(Err(_)) if counts.client_gone.load(Relaxed) => {
            // The client's connection ended inside its body: a client that only half-closed
            // reads a 400 (its body was incomplete); the log says who ended it.
            let why = "request body cut short";
            return own_closing(state, rec.1.take(), StatusCode::BAD_REQUEST, "client_closed", why);
        }
        Ok(Err(e)) => {
            tracing::debug!(backend = %address, "plain HTTP request failed: {e}");
            return own(state, rec.1.take(), StatusCode::BAD_GATEWAY, "bad_gateway", "backend failed", None);
        }
        Err(_) => {
            return own(
                state,
                rec.1.take(),
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "backend did not answer in time",
                None,
            )
        }
    };

    // A 101 to a request that asked for no upgrade, or framing the client would misread:
    // the backend failed (NGINX answers these 502 too). Its connection is not pooled.
    let broken = if resp.status().is_informational() {
        Some("an interim or 101 response to a plain request")
    } else {
        headers::bad_framing(resp.headers(), false)
    };
    if let Some(why) = broken {
        tracing::debug!(backend = %address, "plain HTTP response refused: {why}");
        return own(state, rec.1.take(), StatusCode::BAD_GATEWAY, "bad_gateway", "backend failed", None);
    }
    let (mut parts, body) = resp.into_parts();
    // This hop's version is the client's, whatever the backend spoke.
    parts.version = client_version;
    strip_hop_by_hop(&mut parts.headers);
    // A session is begun by an answer that took the request (below 400), as a WebSocket's by
    // its 101: every error answered to a client without the cookie (a 404 for each made-up
    // path, say) would otherwise be a binding replicated to every node and proxy.
    let begun = parts.status.as_u16() < 400;
    if let Some(line) = set_cookie.as_ref().filter(|_| begun) {
        // `session_key` gives the header line of the 101; here it is a header value.
        let v = line.trim_end().strip_prefix("Set-Cookie: ").unwrap_or(line.trim_end());
        if let Ok(v) = HeaderValue::from_str(v) {
            parts.headers.append(header::SET_COOKIE, v);
        }
    }
    // A new binding is made only once the backend answered.
    if let (Some(k), None, true) = (&session, &held.session, begun) {
        held.session = Some(state.affinity.bind_live(&pool.pool.name, k, address));
    }
    entry.stats.total.fetch_add(1, Relaxed);
    if let Some(r) = &mut rec.1 {
        r.status = parts.status.as_u16();
        r.termination = "http";
    }
    let activity = busy.activity();
    activity.responding(response_timeout);
    let hold = InFlight { idle: Some(sender), held, rec: rec.1.take(), started, counts: counts.clone(), _busy: busy };
    Response::from_parts(parts, Either::Right(Relayed { inner: body, counts, hold: Some(hold), activity }))
}
