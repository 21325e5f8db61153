//! Keep-alive connections to backends for plain HTTP, pooled per worker thread (a worker's
//! connections live on its own runtime, so a pooled connection is never driven by another
//! thread). A connection goes back to the pool once its response has been read to the end;
//! one the backend closed, or idle for [`IDLE_FOR`], is dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::bodies::ReqBody;
use crate::handling::streams::{connect_backend, BackendFail, BackendIo};
use crate::handling::Ctx;
use crate::state::ProxyState;
use crate::tls::PoolTls;

/// An idle connection older than this is closed rather than reused. A backend that closes
/// an idle connection first races a request sent on it at that moment, which fails with 502
/// (a request written cannot be taken back and sent again). Node's HTTP server, what
/// socket.io runs on, closes after 5 s by default (`keepAliveTimeout`); so the proxy gives up
/// first. Under load a connection is reused within milliseconds, so this costs only a
/// connect after a quiet spell.
const IDLE_FOR: Duration = Duration::from_secs(4);
/// A backend's response head larger than this is a 502 (hyper's default, about 400 KiB, is
/// what a misbehaving backend could make every request hold); bodies stream whatever this is.
const MAX_RESPONSE_BUF: usize = 64 * 1024;
/// Idle connections kept per backend and worker.
const MAX_IDLE: usize = 64;

pub type Sender = SendRequest<ReqBody>;

/// A pooled backend connection: driven by hyper's client (requests with bodies, TLS to the
/// client, anything past the fast path), or the bare stream the fast path writes and reads
/// itself (see [`super::fast`]). The two are never swapped: each asks for its own kind.
pub enum Conn {
    Hyper(Sender),
    Raw(BackendIo),
}

impl Conn {
    /// Closed as far as is known without a system call.
    fn gone(&mut self) -> bool {
        match self {
            Conn::Hyper(tx) => tx.is_closed(),
            Conn::Raw(io) => stirred(io),
        }
    }

    /// Ready for a request as far as is known without a system call; see [`Conn::clean`].
    fn ready(&mut self) -> bool {
        match self {
            Conn::Hyper(tx) => tx.is_ready(),
            Conn::Raw(io) => !stirred(io),
        }
    }

    fn raw(&self) -> bool {
        matches!(self, Conn::Raw(_))
    }

    /// For a bare connection about to be used (after [`Conn::ready`]): nothing waits to be
    /// read on it. Bytes there are the backend's close, or bytes no request asked for; sent
    /// on, they would be read as the next client's answer. The readiness tokio has is what
    /// its worker last heard from the kernel, as NGINX's cached upstream connections and
    /// hyper's idle ones go by what their event loop last heard; it is not looked at when the
    /// task's budget is spent, and then the kernel is asked (a system call per request, were
    /// it always asked: a sixth of the fast path's calls).
    fn clean(&mut self) -> bool {
        let Conn::Raw(io) = self else { return true };
        let tcp = match io {
            tokio_util::either::Either::Left(t) => &*t,
            tokio_util::either::Either::Right(t) => {
                let (tcp, tls) = t.get_mut();
                // Plaintext rustls holds already, or the backend's close_notify.
                match tls.process_new_packets() {
                    Ok(s) if s.plaintext_bytes_to_read() == 0 && !s.peer_has_closed() => &*tcp,
                    _ => return false,
                }
            }
        };
        if tokio::task::coop::has_budget_remaining() {
            return true;
        }
        let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(socket2::SockRef::from(tcp).peek(&mut one), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Whether an idle bare connection is known to have something to read (its backend closed
/// it, or sent bytes no request asked for): the readiness tokio already has, no system call.
fn stirred(io: &mut BackendIo) -> bool {
    let tcp = match io {
        tokio_util::either::Either::Left(t) => t,
        tokio_util::either::Either::Right(t) => t.get_ref().0,
    };
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    tcp.poll_read_ready(&mut cx).is_ready()
}

/// Per pool: the TLS its idle connections were made with (see [`PoolTls::tag`]) and them, by
/// backend address. Pools differ in TLS, so one address in two pools shares nothing, and a
/// pool whose TLS changed reuses none made before.
type Idle = HashMap<String, (u64, HashMap<String, Vec<(Conn, Instant)>>)>;

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(HashMap::new());
    /// Whether this worker's sweeper runs.
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// An idle connection to `backend` of `pool` (made with TLS `tag`) that is open and ready, if
/// this worker has one. One just given back may not be ready yet (its connection task has
/// not run since the response ended): it stays for the next request. `pooled` counts the
/// idle connections of every worker (see [`crate::fds::reserve`]). `raw`: the kind wanted.
pub fn checkout(pool: &str, tag: u64, backend: &str, pooled: &AtomicUsize, raw: bool) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let (made_with, backends) = idle.get_mut(pool)?;
        if *made_with != tag {
            return None;
        }
        let list = backends.get_mut(backend)?;
        // One clock read for the whole list (a read per entry was 3% of the proxy's CPU).
        expire(list, Instant::now(), pooled, false);
        loop {
            let i = list.iter_mut().rposition(|(c, _)| c.raw() == raw && c.ready())?;
            pooled.fetch_sub(1, Relaxed);
            let mut c = list.swap_remove(i).0;
            if c.clean() {
                return Some(c);
            }
        }
    })
}

/// Drops the connections of `list` idle too long or closed by their backend; bare ones are
/// looked at only when `look_at_raw` (a look at each is a poll of its readiness, with a waker
/// registered: at every checkout, that was a few per cent of the proxy's CPU; the one taken
/// is looked at anyway).
fn expire(list: &mut Vec<(Conn, Instant)>, now: Instant, pooled: &AtomicUsize, look_at_raw: bool) {
    let before = list.len();
    list.retain_mut(|(c, since)| {
        now.saturating_duration_since(*since) < IDLE_FOR && ((c.raw() && !look_at_raw) || !c.gone())
    });
    if list.len() < before {
        pooled.fetch_sub(before - list.len(), Relaxed);
    }
}

/// Gives `tx` back for the next request to `backend` of `pool`, once its response is over
/// (one cut short closes, and is dropped at the next checkout). The names are copied only
/// the first time this worker pools a connection to them. The first connection a worker
/// pools starts its sweeper.
pub fn checkin(pool: &str, tag: u64, backend: &str, mut tx: Conn, state: &Arc<ProxyState>) {
    if tx.gone() {
        return;
    }
    let pooled = &state.runtime.pooled;
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        if !idle.contains_key(pool) {
            idle.insert(pool.to_string(), (tag, HashMap::new()));
        }
        let (made_with, backends) = idle.get_mut(pool).expect("inserted above");
        if *made_with != tag {
            // The pool's TLS changed: what was made before goes.
            *made_with = tag;
            pooled.fetch_sub(backends.values().map(Vec::len).sum(), Relaxed);
            backends.clear();
        }
        if !backends.contains_key(backend) {
            backends.insert(backend.to_string(), Vec::new());
        }
        let list = backends.get_mut(backend).expect("inserted above");
        if list.len() < MAX_IDLE {
            list.push((tx, Instant::now()));
            pooled.fetch_add(1, Relaxed);
        }
    });
    sweep_here(state);
}

/// Starts this worker's sweeper, if it has none yet: the first connection it pools, to a
/// backend or an auth endpoint (see `edge_auth::pool`), does.
pub fn sweep_here(state: &Arc<ProxyState>) {
    if !SWEEPING.get() {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(state.clone()));
            SWEEPING.set(true);
        }
    }
}

/// Closes this worker's idle connections past [`IDLE_FOR`] every so often, so that a pool no
/// request comes back to does not hold its descriptors (and backend slots) for good; and all
/// of them when the descriptor budget runs short (see [`crate::fds::reserve`]).
async fn sweep(state: Arc<ProxyState>) {
    let rt = &state.runtime;
    loop {
        tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            _ = rt.close_idle.notified() => {
                close_idle(&rt.pooled);
                crate::edge_auth::pool::close_idle(&rt.pooled);
                continue;
            }
            _ = tokio::time::sleep(IDLE_FOR / 2) => {}
        }
        let now = Instant::now();
        IDLE.with(|idle| {
            for (_, backends) in idle.borrow_mut().values_mut() {
                backends.values_mut().for_each(|list| expire(list, now, &rt.pooled, true));
                backends.retain(|_, list| !list.is_empty());
            }
        });
        crate::edge_auth::pool::expire(now, &rt.pooled);
    }
}

/// Closes every idle connection this worker holds (the descriptor budget is short).
pub fn close_idle(pooled: &AtomicUsize) {
    IDLE.with(|idle| {
        for (_, backends) in idle.borrow_mut().values_mut() {
            pooled.fetch_sub(backends.values().map(Vec::len).sum(), Relaxed);
            backends.clear();
        }
    })
}

/// A new connection to `backend`, with the TLS its pool asks for, driven on this worker.
pub async fn connect(backend: &str, tls: &PoolTls, ctx: &Ctx) -> Result<Sender, BackendFail> {
    let io = connect_backend(backend, tls, ctx).await?;
    let (tx, conn) = http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_BUF)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| BackendFail::Connect(format!("HTTP/1.1 handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("backend connection ended: {e}");
        }
    });
    Ok(tx)
}
