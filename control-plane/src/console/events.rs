//! The console's live feed: server-sent events over the node's applied changes. A page gets
//! the recent changes first, then each change set as this node applies it, and `reset` when
//! it fell behind (or a snapshot replaced the state) and should read the whole state again.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::view::describe;
use crate::api::discovery::RECHECK;
use crate::auth::Caller;
use crate::node::context::NodeCtx;
use crate::store::sm::Notice;

/// Change sets replayed to a page that just connected.
const REPLAY: usize = 30;
/// A comment line this often keeps intermediaries (and the page) from thinking it died.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub type Events = StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// The event stream for one page; it ends when the page goes away, the node stops, or the
/// token the page was let in with is revoked or expires (the page then reconnects and is
/// refused).
pub fn stream(node: std::sync::Arc<NodeCtx>, caller: Caller) -> Events {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let (recent, notices) = {
        let (live, rx) = node.shared.subscribe();
        (live.recent(REPLAY), rx)
    };
    tokio::spawn(feed(node, caller, recent, notices, tx));
    let s = ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
    StreamBody::new(Box::pin(s) as futures::stream::BoxStream<'static, _>)
}

fn event(name: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn changes(revision: u64, set: &[switchyard_proto::v1::Change]) -> Bytes {
    let lines: Vec<String> = set.iter().map(describe).collect();
    event("change", &json!({ "revision": revision, "changes": lines }))
}

async fn feed(
    node: std::sync::Arc<NodeCtx>,
    caller: Caller,
    recent: Vec<(u64, std::sync::Arc<Vec<switchyard_proto::v1::Change>>)>,
    mut notices: broadcast::Receiver<Notice>,
    tx: mpsc::Sender<Bytes>,
) {
    if tx.send(Bytes::from_static(b"retry: 2000\n\n")).await.is_err() {
        return;
    }
    for (rev, set) in recent {
        if tx.send(changes(rev, &set)).await.is_err() {
            return;
        }
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        let out = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = recheck.tick() => {
                if let Err(why) = caller.still_holds(node.shared.read().state.tokens(), crate::clock::now_ms()) {
                    tracing::info!("ending a console feed: {why}");
                    return;
                }
                continue;
            }
            _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
            n = notices.recv() => match n {
                Ok(Notice::Changes(rev, set)) => changes(rev, &set),
                Ok(Notice::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => event("reset", &json!({})),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        // A page that does not read is not waited for: its feed ends and it reconnects.
        match tx.try_send(out) {
            Ok(()) => {}
            Err(_) => return,
        }
    }
}
