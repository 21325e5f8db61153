//! Reaching a backend for an upgrade: pick one, connect, forward the head, read its answer.
//!
//! A backend that fails at any step is ejected locally, as NGINX counts an error, a timeout
//! or an invalid head against `max_fails` whatever `proxy_next_upstream` says. One that fails
//! before answering anything (refused, reset, closed) is passed over for the next, as NGINX's
//! default `proxy_next_upstream error timeout` does: the upgrade is a GET and nothing of the
//! client's beyond its head has been sent. One that takes the head and never answers is not
//! waited on twice: the client gets 504 once the handshake timeout has passed, and the
//! backend's ejection sends the next clients elsewhere (it took every Nth client for the
//! whole timeout, then answered 502, for as long as it hung).

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;

use super::{read_head, MAX_RESPONSE_HEAD};
use crate::handling::attempts::Attempts;
use crate::handling::streams::{connect_backend, eject_locally, BackendFail, BackendIo};
use crate::handling::Ctx;
use crate::handshake::{self, Reject, Upgrade};
use crate::state::ProxyState;
use crate::table::PoolTable;

/// A backend that answered the upgrade: its index in the pool, its connection, and what it
/// sent (its answer's head is `resp[..head]`; any bytes after are its first frames).
pub(super) struct Reached {
    pub idx: usize,
    /// Counted against the backend since it was picked.
    pub counted: crate::stats::Counted,
    pub backend: BackendIo,
    pub resp: Vec<u8>,
    pub head: usize,
}

/// How asking one backend failed.
enum Failed {
    /// Before a byte of an answer: the next backend may be asked.
    Unanswered(&'static str),
    /// A head that cannot be relayed.
    Invalid,
}

/// The upgrade for `up` (already forwarded as `fwd`) answered by the first backend that
/// answers, bound by `timeout` (the handshake timeout) for the whole exchange. A backend is
/// ejected for not answering in time only if it had at least half of that to answer: one
/// asked late, after another backend used up the time, is not to blame.
#[allow(clippy::too_many_arguments)]
pub(super) async fn reach(
    state: &ProxyState,
    ctx: &Ctx,
    pool: &PoolTable,
    session: Option<&str>,
    bound: Option<&str>,
    up: &Upgrade,
    peer: SocketAddr,
    fwd: &[u8],
    timeout: std::time::Duration,
) -> Result<Reached, Reject> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tuning = &ctx.tuning;
    let mut attempts = Attempts::new(state, pool, tuning, session, bound);
    loop {
        let i = attempts.next(up, peer.ip())?;
        let b = &pool.backends[i];
        let mut backend = match connect_backend(&b.backend.address, &pool.tls, ctx).await {
            Ok(s) => s,
            Err(why) => {
                attempts.failed(i, &why)?;
                continue;
            }
        };
        let mut resp = Vec::with_capacity(512);
        let given = deadline.saturating_duration_since(tokio::time::Instant::now());
        let asked = tokio::time::timeout_at(deadline, ask(&mut backend, fwd, &mut resp)).await;
        let why = match asked {
            Ok(Ok(head)) => {
                b.stats.hangups.store(0, std::sync::atomic::Ordering::Relaxed);
                return Ok(Reached { idx: i, counted: attempts.take(), backend, resp, head });
            }
            Ok(Err(Failed::Unanswered(why))) => why,
            Ok(Err(Failed::Invalid)) => {
                eject_locally(state, b, &pool.pool.name, tuning, &BackendFail::Upgrade("an invalid answer"));
                return Err(Reject::BadGateway);
            }
            Err(_) => {
                if given >= timeout / 2 {
                    let why = BackendFail::Upgrade("no answer within the handshake timeout");
                    eject_locally(state, b, &pool.pool.name, tuning, &why);
                }
                return Err(Reject::GatewayTimeout);
            }
        };
        attempts.failed(i, &BackendFail::Hangup(why))?;
    }
}

/// Forwards the upgrade on `backend` and reads its answer's head into `resp`, skipping
/// interim `100`/`103` heads; returns the head's length.
async fn ask(backend: &mut BackendIo, fwd: &[u8], resp: &mut Vec<u8>) -> Result<usize, Failed> {
    backend.write_all(fwd).await.map_err(|_| Failed::Unanswered("the connection failed while the upgrade was sent"))?;
    backend.flush().await.map_err(|_| Failed::Unanswered("the connection failed while the upgrade was sent"))?;
    let mut answered = false;
    loop {
        let n = match read_head(backend, resp, MAX_RESPONSE_HEAD).await {
            Ok(n) => n,
            Err(_) if !answered && resp.is_empty() => return Err(Failed::Unanswered("closed without answering")),
            Err(_) => return Err(Failed::Invalid),
        };
        answered = true;
        match handshake::response_status(&resp[..n]) {
            // 100 Continue, 103 Early Hints: not the answer to the upgrade.
            Some(s) if (100..200).contains(&s) && s != 101 => drop(resp.drain(..n)),
            _ => return Ok(n),
        }
    }
}
