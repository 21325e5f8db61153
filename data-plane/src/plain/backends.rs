//! Keep-alive connections to backends for plain HTTP, pooled per worker thread (a worker's
//! connections live on its own runtime, so a pooled connection is never driven by another
//! thread). A connection goes back to the pool once its response has been read to the end;
//! one the backend closed, or idle for [`IDLE_FOR`], is dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::bodies::ReqBody;
use crate::connection::streams::{connect_backend, BackendFail};
use crate::connection::Ctx;
use crate::tls::PoolTls;

/// An idle connection older than this is closed rather than reused: backends commonly close
/// keep-alive connections after 60-75 s, and a request sent on one they just closed is lost.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// A backend's response head larger than this is a 502 (hyper's default, about 400 KiB, is
/// what a misbehaving backend could make every request hold); bodies stream whatever this is.
const MAX_RESPONSE_BUF: usize = 64 * 1024;
/// Idle connections kept per backend and worker.
const MAX_IDLE: usize = 64;

pub type Sender = SendRequest<ReqBody>;

/// Per pool: the TLS its idle connections were made with (see [`PoolTls::tag`]) and them, by
/// backend address. Pools differ in TLS, so one address in two pools shares nothing, and a
/// pool whose TLS changed reuses none made before.
type Idle = HashMap<String, (u64, HashMap<String, Vec<(Sender, Instant)>>)>;

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(HashMap::new());
}

/// An idle connection to `backend` of `pool` (made with TLS `tag`) that is open and ready, if
/// this worker has one. One just given back may not be ready yet (its connection task has
/// not run since the response ended): it stays for the next request.
pub fn checkout(pool: &str, tag: u64, backend: &str) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let (made_with, backends) = idle.get_mut(pool)?;
        if *made_with != tag {
            return None;
        }
        let list = backends.get_mut(backend)?;
        // One clock read for the whole list (a read per entry was 3% of the proxy's CPU).
        let now = Instant::now();
        list.retain(|(tx, since)| now.saturating_duration_since(*since) < IDLE_FOR && !tx.is_closed());
        let i = list.iter().rposition(|(tx, _)| tx.is_ready())?;
        Some(list.swap_remove(i).0)
    })
}

/// Gives `tx` back for the next request to `backend` of `pool`, once its response is over
/// (one cut short closes, and is dropped at the next checkout). The names are copied only
/// the first time this worker pools a connection to them.
pub fn checkin(pool: &str, tag: u64, backend: &str, tx: Sender) {
    if tx.is_closed() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        if !idle.contains_key(pool) {
            idle.insert(pool.to_string(), (tag, HashMap::new()));
        }
        let (made_with, backends) = idle.get_mut(pool).expect("inserted above");
        if *made_with != tag {
            // The pool's TLS changed: what was made before goes.
            *made_with = tag;
            backends.clear();
        }
        if !backends.contains_key(backend) {
            backends.insert(backend.to_string(), Vec::new());
        }
        let list = backends.get_mut(backend).expect("inserted above");
        if list.len() < MAX_IDLE {
            list.push((tx, Instant::now()));
        }
    });
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
