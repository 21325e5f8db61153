//! A request on its way to a backend: what it holds of the backend while it is out, what is
//! logged and given back when its response ends, and the wait for the response head.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::backends;
use super::bodies::{self, Counts};
use super::client::Busy;
use crate::access_log;
use crate::state::ProxyState;
use crate::stats::Counted;
use crate::table::PoolTable;

/// Lasts from the moment a request is sent to a backend until its response ends: the
/// request counts as a connection to its backend (for least connections, power of two
/// choices, `max_connections` and `/status`) and keeps its session binding live, also while a
/// long-poll waits for its response head.
pub(super) struct Held {
    pub(super) pool: Arc<PoolTable>,
    pub(super) backend: usize,
    pub(super) state: Arc<ProxyState>,
    pub(super) session: Option<crate::affinity::LiveKey>,
    /// Counted since the backend was picked, before its connection was taken or made.
    _counted: Counted,
}

impl Held {
    pub(super) fn new(state: &Arc<ProxyState>, pool: &Arc<PoolTable>, backend: usize, counted: Counted) -> Held {
        Held { pool: pool.clone(), backend, state: state.clone(), session: None, _counted: counted }
    }

    /// [`Held::new`] for a request whose session (hashed key) is `session`, bound to `bound`:
    /// a session already bound to this backend is kept live from here, since a long-poll is
    /// held by its backend before any response head comes.
    pub(super) fn request(
        state: &Arc<ProxyState>,
        pool: &Arc<PoolTable>,
        backend: usize,
        counted: Counted,
        session: Option<&str>,
        bound: Option<&str>,
    ) -> Held {
        let mut held = Held::new(state, pool, backend, counted);
        let address = pool.backends[backend].backend.address.as_str();
        if let Some(k) = session.filter(|_| bound == Some(address)) {
            held.session = Some(state.affinity.hold_live(&pool.pool.name, k, address));
        }
        held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(k) = &self.session {
            self.state.affinity.unbind_live(k);
        }
    }
}

/// Lasts as long as a response: holds the backend ([`Held`]) and is logged when it ends.
pub(super) struct InFlight {
    /// The backend connection, pooled again once the response is over.
    pub(super) idle: Option<backends::Sender>,
    pub(super) held: Held,
    pub(super) rec: Option<Box<access_log::Record>>,
    pub(super) started: tokio::time::Instant,
    pub(super) counts: Arc<Counts>,
    pub(super) _busy: Busy,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let (pool, state) = (&self.held.pool, &self.held.state);
        let b = &pool.backends[self.held.backend];
        if let Some(tx) = self.idle.take() {
            backends::checkin(&pool.pool.name, pool.tls.tag(), &b.backend.address, backends::Conn::Hyper(tx), state);
        }
        if let (Some(log), Some(mut r)) = (state.runtime.access_log.get(), self.rec.take()) {
            r.duration = self.started.elapsed();
            r.to_backend.bytes = self.counts.to_backend.load(Relaxed);
            r.to_client.bytes = self.counts.to_client.load(Relaxed);
            if self._busy.silent() {
                r.termination = "backend_timeout";
            }
            log.log(*r);
        }
    }
}

/// Sends `req` on `sender` and waits for the response head, for at most `limit` from when the
/// backend has the whole request: an upload that takes longer than the limit is the client's
/// pace, not the backend's delay (the client's own stalls are `Limited`'s to bound). A
/// backend that stops reading the body is bound by the same limit (NGINX's
/// `proxy_send_timeout`): it would otherwise hold the client, its connection and its count
/// for as long as it liked.
pub(super) async fn send_within(
    sender: &mut backends::Sender,
    req: Request<bodies::ReqBody>,
    limit: Duration,
    counts: &Counts,
    started: tokio::time::Instant,
) -> Result<
    Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<bodies::ReqBody>>>,
    tokio::time::error::Elapsed,
> {
    let send = sender.try_send_request(req);
    tokio::pin!(send);
    let mut deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, send.as_mut()).await {
            Err(elapsed) => match counts.body_sent_at(started) {
                Some(at) if at + limit <= tokio::time::Instant::now() => return Err(elapsed),
                Some(at) => deadline = at + limit,
                None => match counts.unread_since(started) {
                    Some(at) if at + limit <= tokio::time::Instant::now() => return Err(elapsed),
                    Some(at) => deadline = at + limit,
                    None => deadline = tokio::time::Instant::now() + limit,
                },
            },
            answered => return answered,
        }
    }
}
