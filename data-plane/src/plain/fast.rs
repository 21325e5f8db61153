//! The fast path for plain HTTP: a request without a body on HTTP/1.1 (the polls of
//! socket.io and kin, and most GETs) is parsed, sent to its backend and answered by this
//! connection's own task, on a bare pooled backend connection, its response passed on as the
//! backend framed it once that framing is checked ([`heads`]). hyper serves two tasks and a
//! channel per request, and rebuilds both heads into maps: more than half of the proxy's own
//! CPU per request.
//!
//! Anything else (a body, an upgrade, `Expect`, HTTP/1.0, a route with edge auth, a head
//! hyper would refuse) hands the connection, with every byte not yet taken, to hyper for the
//! rest of its life: one path for the requests that are most of the traffic, and hyper's
//! for the rest, where its answers to odd requests are worth more than speed.

mod chunked;
mod heads;
mod io;

use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use self::heads::{Framing, Taken, MAX_HEADERS};
use self::io::{poll_read_into, spare, write_all, Clock, Fail};
use super::answers::Pending;
use super::backends::{self, Conn};
use super::inflight::Held;
use super::view::needs_headers;
use crate::access_log;
use crate::handling::attempts::Attempts;
use crate::handling::streams::{connect_backend, BackendIo, ClientIo};
use crate::handling::{session_key, Ctx};
use crate::handshake::Reject;
use crate::state::ProxyState;

/// How a connection left the fast path.
pub(super) enum Outcome {
    Closed,
    /// For hyper: the connection and the bytes read from it that no request took yet.
    Hyper(ClientIo, Vec<u8>),
}

/// A backend's response head larger than this is a 502 (as for hyper's backend connections).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Bytes a client may send ahead (pipelined requests) while its response is awaited.
const MAX_AHEAD: usize = 64 * 1024;
/// Read room made before each read: a client's heads are small, a backend's bodies not.
const CLIENT_ROOM: usize = 4 * 1024;
const BACKEND_ROOM: usize = 16 * 1024;
/// Interim (1xx) responses skipped before the final one (as hyper's client skips them).
const MAX_INTERIM: usize = 8;

/// What became of one request.
enum Next {
    Again,
    Close,
    /// Left to hyper: nothing of it was taken from the buffer, or sent anywhere.
    Hyper,
}

struct Fast<'a> {
    state: &'a Arc<ProxyState>,
    ctx: &'a Ctx,
    client: ClientIo,
    peer: SocketAddr,
    hop: heads::Hop,
    /// The request being answered is a HEAD: an answer of the proxy's own has no body.
    head: bool,
    /// The client's bytes not yet taken by a request.
    buf: Vec<u8>,
    /// The backend's bytes of the response being relayed.
    rbuf: Vec<u8>,
    /// Heads on their way out.
    out: Vec<u8>,
    clock: Clock,
    head_timeout: Duration,
    stall: Duration,
    max_header: usize,
}

/// Serves requests on a plain HTTP connection whose first head (and whatever followed it) is
/// in `first`, while they are for the fast path; then gives the connection to hyper.
pub(super) async fn serve(
    state: &Arc<ProxyState>,
    ctx: &Ctx,
    client: ClientIo,
    first: Vec<u8>,
    peer: SocketAddr,
    tls: bool,
) -> Outcome {
    let super::Bounds { head_timeout, stall, max_header } = super::bounds(state);
    let sleep = Box::pin(tokio::time::sleep(head_timeout));
    let mut f = Fast {
        state,
        ctx,
        client,
        peer,
        hop: heads::Hop::new(peer.ip(), if tls { "https" } else { "http" }),
        head: false,
        buf: first,
        rbuf: Vec::new(),
        out: Vec::new(),
        clock: Clock { due: sleep.deadline(), sleep },
        head_timeout,
        stall,
        max_header,
    };
    let mut stop = Box::pin(state.runtime.shutdown.clone().cancelled_owned());
    loop {
        let Some(len) = f.head(&mut stop).await else { return Outcome::Closed };
        if len == 0 {
            return Outcome::Hyper(f.client, f.buf);
        }
        match f.one(len).await {
            Next::Again => {}
            Next::Close => {
                crate::handling::streams::linger(&mut f.client).await;
                return Outcome::Closed;
            }
            Next::Hyper => return Outcome::Hyper(f.client, f.buf),
        }
    }
}

impl Fast<'_> {
    /// The length of the next whole head in `buf` once there is one; `Some(0)` when hyper is
    /// to take the connection from here (a head too large or malformed: hyper answers it);
    /// `None` when the client closed, idled out, or the proxy is shutting down.
    async fn head(&mut self, stop: &mut Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>) -> Option<usize> {
        self.clock.set(Instant::now() + self.head_timeout);
        spare::give_back(&mut self.rbuf);
        spare::give_back(&mut self.out);
        // Parsed again only once a line more has come (or the limit is reached): a head
        // trickled a byte at a time is not parsed whole for every byte.
        let mut parsed_to = 0;
        loop {
            if newline_since(&self.buf, parsed_to) || self.buf.len() >= self.max_header {
                parsed_to = self.buf.len();
                let mut h = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                match httparse::Request::new(&mut []).parse_with_uninit_headers(&self.buf, &mut h) {
                    Ok(httparse::Status::Complete(n)) if n <= self.max_header => return Some(n),
                    Ok(httparse::Status::Partial) if self.buf.len() < self.max_header => {}
                    _ => return Some(0),
                }
            }
            let (client, buf, clock) = (&mut self.client, &mut self.buf, &mut self.clock);
            let read = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = poll_read_into(client, buf, CLIENT_ROOM, cx) {
                    return Poll::Ready(r);
                }
                // Shutting down: no request is in flight here (a head not yet whole is not one).
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Fail::Gone));
                }
                clock.poll(cx).map(|()| Err(Fail::Timeout))
            })
            .await;
            match read {
                Ok(0) | Err(_) => {
                    tracing::debug!(peer = %self.peer, "plain HTTP connection closed, idle, or its head unfinished in time");
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    /// Serves the request whose head is `buf[..len]`, or leaves it to hyper.
    async fn one(&mut self, len: usize) -> Next {
        let state = self.state;
        let started = Instant::now();
        let table = state.table.load_full();
        let mut h = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        if !matches!(req.parse_with_uninit_headers(&self.buf[..len], &mut h), Ok(httparse::Status::Complete(_))) {
            return Next::Hyper;
        }
        let Some(mut t) = heads::take(&req) else { return Next::Hyper };
        self.head = t.head;
        let Some((route, pool)) = table.route_named(&t.up.host, t.up.path()) else { return Next::Hyper };
        if table.route_auth(route).is_some() {
            return Next::Hyper;
        }
        let pool = pool.clone();
        if needs_headers(&pool, false) {
            for h in req.headers.iter() {
                t.up.headers.push(h.name, h.value);
            }
        }
        let (raw, set_cookie) = session_key(pool.affinity_key.as_ref(), &t.up, self.peer.ip());
        let session = raw.and_then(|k| table.affinity_secret.hash(k.as_bytes()));
        spare::lend(&mut self.out);
        spare::lend(&mut self.rbuf);
        let mut up_head = std::mem::take(&mut self.out);
        heads::upstream(&mut up_head, &req, &t, &self.hop);
        let mut rec = Pending(state, None, started);
        rec.1 = state.runtime.access_log.get().map(|_| {
            Box::new(access_log::Record {
                client: Some(self.peer),
                method: req.method.map(str::to_string),
                // Without the query: it may carry credentials.
                path: req.path.map(|p| p.split(['?', '#']).next().unwrap_or("/").to_string()),
                host: Some(t.up.host.clone()),
                route: Some(route.to_string()),
                pool: Some(pool.pool.name.clone()),
                session: session.clone(),
                ..Default::default()
            })
        });
        self.buf.drain(..len);
        let bound = session.as_deref().and_then(|k| state.affinity.backend_for(&pool.pool.name, k));
        if session.is_some() && bound.is_none() {
            if let Err(r) = state.runtime.admission.admit(self.peer.ip(), table.settings.max_handshakes_per_sec, 0) {
                return self.refuse(&mut rec, r.into(), t.close, up_head).await;
            }
        }
        let mut attempts = Attempts::new(state, &pool, &self.ctx.tuning, session.as_deref(), bound.as_deref())
            .keeping_draining_sessions();
        let (idx, mut io, mut reused) = loop {
            let i = match attempts.next(&t.up, self.peer.ip()) {
                Ok(i) => i,
                Err(r) => return self.refuse(&mut rec, r, t.close, up_head).await,
            };
            let b = &pool.backends[i];
            let pooled = &state.runtime.pooled;
            if let Some(Conn::Raw(io)) =
                backends::checkout(&pool.pool.name, pool.tls.tag(), &b.backend.address, pooled, true)
            {
                break (i, io, true);
            }
            match connect_backend(&b.backend.address, &pool.tls, self.ctx).await {
                Ok(io) => break (i, io, false),
                Err(why) => {
                    if let Err(r) = attempts.failed(i, &why) {
                        return self.refuse(&mut rec, r, t.close, up_head).await;
                    }
                }
            }
        };
        let entry = &pool.backends[idx];
        let address = entry.backend.address.as_str();
        let mut held = Held::request(state, &pool, idx, attempts.take(), session.as_deref(), bound.as_deref());
        if let Some(r) = &mut rec.1 {
            r.backend = Some(address.to_string());
            r.handshake = started.elapsed();
        }
        let response_timeout = super::response_timeout(&pool);

        // The request, and the response head; once more on a new connection when a reused one
        // turns out closed (the backend closed it as the request went).
        let head_len = loop {
            match self.exchange(&mut io, &up_head, &t, response_timeout).await {
                Ok(n) => break n,
                Err(Exchange::Closed) if reused => match connect_backend(address, &pool.tls, self.ctx).await {
                    Ok(fresh) => (io, reused) = (fresh, false),
                    Err(_) => return self.own(&mut rec, 502, "bad_gateway", "backend failed", t.close, up_head).await,
                },
                Err(e) if !matches!(e, Exchange::Timeout | Exchange::ClientGone) => {
                    if let Exchange::Bad(why) = e {
                        tracing::debug!(backend = %address, "plain HTTP request failed: {why}");
                    }
                    return self.own(&mut rec, 502, "bad_gateway", "backend failed", t.close, up_head).await;
                }
                Err(Exchange::Timeout) => {
                    let why = "backend did not answer in time";
                    return self.own(&mut rec, 504, "gateway_timeout", why, t.close, up_head).await;
                }
                Err(_) => return Next::Close,
            }
        };

        let mut out = up_head;
        // Shutting down since the request came: this answer is the connection's last.
        let closing = t.close || state.runtime.shutdown.is_cancelled();
        let (answer, close) =
            match heads::respond(&self.rbuf[..head_len], t.head, set_cookie.as_deref(), closing, &mut out) {
                Ok(a) => a,
                Err(why) => {
                    tracing::debug!(backend = %address, "plain HTTP response refused: {why}");
                    return self.own(&mut rec, 502, "bad_gateway", "backend failed", t.close, out).await;
                }
            };
        // The body: what came with the head, then the rest as it comes.
        let status = answer.status;
        let mut answered = false;
        let mut framing = answer.framing;
        let mut reusable = answer.reusable;
        let mut from = head_len;
        let mut sent = 0u64;
        let ended = loop {
            let (n, end) = match framing.take(&self.rbuf[from..]) {
                Ok(x) => x,
                Err(why) => {
                    tracing::debug!(backend = %address, "plain HTTP response body refused: {why}");
                    if !answered {
                        // Nothing has gone to the client yet: it gets a 502 instead.
                        out.clear();
                        return self.own(&mut rec, 502, "bad_gateway", "backend failed", t.close, out).await;
                    }
                    break Err("backend_protocol_error");
                }
            };
            if end && from + n < self.rbuf.len() {
                // Bytes past the response's end: nothing asked for them.
                reusable = false;
            }
            if !answered {
                // The backend's answer goes to the client (not a 502 for its first bytes): a
                // session is begun by one that took the request, as for hyper's requests.
                answered = true;
                if let (Some(k), None, true) = (&session, &held.session, status < 400) {
                    held.session = Some(state.affinity.bind_live(&pool.pool.name, k, address));
                }
                entry.stats.total.fetch_add(1, Relaxed);
                if let Some(r) = &mut rec.1 {
                    r.status = status;
                    r.termination = "http";
                }
            }
            out.extend_from_slice(&self.rbuf[from..from + n]);
            sent += n as u64;
            self.clock.set(Instant::now() + self.stall);
            if write_all(&mut self.client, &out, &mut self.clock).await.is_err() {
                break Err("client_closed");
            }
            out.clear();
            if end {
                break Ok(());
            }
            self.rbuf.clear();
            from = 0;
            self.clock.set(Instant::now() + response_timeout);
            match self.read_backend(&mut io).await {
                Ok(0) if matches!(framing, Framing::UntilClose) => break Ok(()),
                Err(Fail::Gone) => break Err("client_closed"),
                Ok(0) | Err(Fail::Io) => break Err("backend_closed"),
                Err(Fail::Timeout) => break Err("backend_timeout"),
                Ok(_) => {}
            }
        };
        self.out = out;
        if let Some(mut r) = rec.1.take() {
            r.duration = started.elapsed();
            r.to_client.bytes = sent;
            if let Err(why) = ended {
                r.termination = why;
            }
            if let Some(log) = state.runtime.access_log.get() {
                log.log(*r);
            }
        }
        match ended {
            Ok(()) => {
                if reusable {
                    backends::checkin(&pool.pool.name, pool.tls.tag(), address, Conn::Raw(io), state);
                }
                if close {
                    Next::Close
                } else {
                    Next::Again
                }
            }
            Err(why) => {
                tracing::debug!(backend = %address, peer = %self.peer, "plain HTTP response cut short: {why}");
                Next::Close
            }
        }
    }

    /// Sends the request head and reads the response head into `rbuf`: its length.
    async fn exchange(
        &mut self,
        io: &mut BackendIo,
        head: &[u8],
        t: &Taken,
        limit: Duration,
    ) -> Result<usize, Exchange> {
        self.clock.set(Instant::now() + limit);
        match write_all(io, head, &mut self.clock).await {
            Ok(()) => {}
            Err(Fail::Timeout) => return Err(Exchange::Timeout),
            Err(_) => return Err(Exchange::Closed),
        }
        self.rbuf.clear();
        let mut interim = 0;
        let mut parsed_to = 0;
        loop {
            if newline_since(&self.rbuf, parsed_to) || self.rbuf.len() >= MAX_RESPONSE_HEAD {
                parsed_to = self.rbuf.len();
                let mut h = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut resp, &self.rbuf, &mut h)
                {
                    // An interim answer (100, 102, 103) goes; the final one follows.
                    Ok(httparse::Status::Complete(n)) if resp.code.is_some_and(|c| c < 200 && c != 101) => {
                        interim += 1;
                        if interim > MAX_INTERIM {
                            return Err(Exchange::Bad("too many interim responses"));
                        }
                        self.rbuf.drain(..n);
                        parsed_to = 0;
                        continue;
                    }
                    Ok(httparse::Status::Complete(n)) => return Ok(n),
                    Ok(httparse::Status::Partial) if self.rbuf.len() < MAX_RESPONSE_HEAD => {}
                    Ok(httparse::Status::Partial) => return Err(Exchange::Bad("response head too large")),
                    Err(_) => return Err(Exchange::Bad("malformed response head")),
                }
            }
            match self.read_backend(io).await {
                // Closed or reset before a byte of the answer: the request is sent again,
                // when sending it twice is safe.
                Ok(0) | Err(Fail::Io) if self.rbuf.is_empty() && t.idempotent && interim == 0 => {
                    return Err(Exchange::Closed)
                }
                Ok(0) | Err(Fail::Io) => return Err(Exchange::Bad("closed before its response head ended")),
                Err(Fail::Timeout) => return Err(Exchange::Timeout),
                Err(Fail::Gone) => return Err(Exchange::ClientGone),
                Ok(_) => {}
            }
        }
    }

    /// Reads what the backend has into `rbuf`, before the clock is due. The client is read
    /// meanwhile (into `buf`, what it sends ahead), so that one that leaves is noticed, and
    /// its backend given back, rather than waited on through a long-poll or a stream.
    async fn read_backend(&mut self, io: &mut BackendIo) -> Result<usize, Fail> {
        let (client, buf, rbuf, clock) = (&mut self.client, &mut self.buf, &mut self.rbuf, &mut self.clock);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = poll_read_into(io, rbuf, BACKEND_ROOM, cx) {
                return Poll::Ready(r);
            }
            if buf.len() < MAX_AHEAD {
                match poll_read_into(client, buf, CLIENT_ROOM, cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Fail::Gone)),
                    Poll::Ready(Ok(_)) => cx.waker().wake_by_ref(),
                    Poll::Pending => {}
                }
            }
            clock.poll(cx).map(|()| Err(Fail::Timeout))
        })
        .await
    }

    /// The proxy's own answer to the request, logged and counted by its reason.
    async fn own(
        &mut self,
        rec: &mut Pending<'_>,
        status: u16,
        termination: &'static str,
        text: &str,
        close: bool,
        mut out: Vec<u8>,
    ) -> Next {
        // Shutting down: this answer is the connection's last (looked at here and before the
        // backend's answer, not per request: the token's look takes a lock).
        let close = close || self.state.runtime.shutdown.is_cancelled();
        let retry = (status == 503).then(|| format!("Retry-After: {}\r\n", 1 + rand::random::<u64>() % 5));
        self.state.runtime.count_failure(termination);
        if let (Some(log), Some(mut r)) = (self.state.runtime.access_log.get(), rec.1.take()) {
            r.status = status;
            r.termination = termination;
            r.duration = rec.2.elapsed();
            log.log(*r);
        }
        heads::own(&mut out, status, text, retry.as_deref().unwrap_or("").as_bytes(), close, self.head);
        self.clock.set(Instant::now() + self.stall);
        let written = write_all(&mut self.client, &out, &mut self.clock).await;
        out.clear();
        self.out = out;
        match written {
            Ok(()) if !close => Next::Again,
            _ => Next::Close,
        }
    }

    async fn refuse(&mut self, rec: &mut Pending<'_>, r: Reject, close: bool, out: Vec<u8>) -> Next {
        self.own(rec, r.status(), r.reason(), &r.to_string(), close, out).await
    }
}

enum Exchange {
    /// A reused connection the backend had closed: the request may go again.
    Closed,
    Bad(&'static str),
    Timeout,
    ClientGone,
}

/// Whether `buf` has a line end past `from`: only then can a head parsed at `from` bytes and
/// found partial be whole, or newly malformed, now.
fn newline_since(buf: &[u8], from: usize) -> bool {
    buf.get(from..).is_some_and(|new| new.contains(&b'\n'))
}
