use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::Vote;
use switchyard_proto::raft::raft_server::{Raft, RaftServer};
use switchyard_proto::raft::{Empty, InitializedReply, LeaderReply, LeaderRequest};
use tonic::{Request, Response};

use super::*;
#[test]
fn an_append_over_the_message_limit_asks_openraft_for_fewer_entries() {
    let limit = 1024 * 1024;
    assert!(oversized(limit / 2, 100, limit).is_none());
    // 100 entries in twice the limit: about half of them fit.
    let hint = oversized(2 * limit, 100, limit).expect("too large").entries_hint();
    assert!((40..50).contains(&hint), "hint {hint}");
    // Never zero, never all of them; one entry alone cannot be split.
    assert_eq!(oversized(1000 * limit, 100, limit).unwrap().entries_hint(), 1);
    assert_eq!(oversized(limit, 2, limit).unwrap().entries_hint(), 1);
    assert!(oversized(2 * limit, 1, limit).is_none());
}

/// A peer's Raft service as far as appends go: counts what it was sent, answers every append
/// with success, and may not know AppendStream (as a build from before it) or may refuse
/// every `fail_every`th request on a stream.
#[derive(Clone, Default)]
struct Appends {
    streams: bool,
    fail_every: u64,
    /// An append whose prev_log_id has this index is answered late, and with a conflict.
    late: Option<u64>,
    opened: Arc<AtomicU64>,
    on_streams: Arc<AtomicU64>,
    unary: Arc<AtomicU64>,
}

fn success() -> RaftPayload {
    RaftPayload { data: encode(&Ok::<_, RaftError<NodeId>>(AppendEntriesResponse::<NodeId>::Success)) }
}

type Replies<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Raft for Appends {
    type AppendStreamStream = Replies<RaftPayload>;
    type HoldStream = Replies<Empty>;

    async fn append_entries(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, tonic::Status> {
        self.unary.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(success()))
    }

    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Replies<RaftPayload>>, tonic::Status> {
        if !self.streams {
            return Err(tonic::Status::unimplemented("no AppendStream here"));
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let replies = req.into_inner().then(move |r| {
            let me = me.clone();
            async move {
                let r = r?;
                let n = me.on_streams.fetch_add(1, Ordering::Relaxed) + 1;
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&r.data).unwrap();
                if me.late.is_some() && rpc.prev_log_id.map(|p| p.index) == me.late {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let conflict = AppendEntriesResponse::<NodeId>::Conflict;
                    return Ok(RaftPayload { data: encode(&Ok::<_, RaftError<NodeId>>(conflict)) });
                }
                match me.fail_every {
                    f if f > 0 && n.is_multiple_of(f) => Err(tonic::Status::internal("refused")),
                    _ => Ok(success()),
                }
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn install_snapshot(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn forward(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn initialized(&self, _: Request<Empty>) -> Result<Response<InitializedReply>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn hold(&self, _: Request<Empty>) -> Result<Response<Replies<Empty>>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn leader(&self, _: Request<LeaderRequest>) -> Result<Response<LeaderReply>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
}

/// A [`Peer`] of a real gRPC server on a loopback port serving `appends`.
async fn peer_of(appends: Appends) -> (Peer, tempfile::TempDir) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(appends))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let tmp = tempfile::tempdir().unwrap();
    let db = sled::open(tmp.path()).unwrap();
    let mut net = Network(ClusterId::open(&db).unwrap(), ClientTls::cleartext(), Durable::default());
    let peer = net.new_client(2, &BasicNode::new(addr.to_string())).await;
    (peer, tmp)
}

/// An empty append after `prev` (`None`: from the start of the log).
async fn append_after(
    peer: &mut Peer,
    prev: Option<u64>,
) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
    let rpc = AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: prev.map(|i| openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i)),
        entries: vec![],
        leader_commit: None,
    };
    peer.append_entries(rpc, RPCOption::new(Duration::from_secs(5))).await
}

/// openraft drops an append when its own timeout fires first: the reply owed on that stream
/// must never be taken for the next append's.
#[tokio::test]
async fn an_append_dropped_midway_leaves_no_reply_behind_for_the_next() {
    let appends = Appends { streams: true, late: Some(2), ..Default::default() };
    let (mut peer, _tmp) = peer_of(appends.clone()).await;
    assert!(matches!(append_after(&mut peer, Some(1)).await, Ok(AppendEntriesResponse::Success)));
    let dropped = tokio::time::timeout(Duration::from_millis(50), append_after(&mut peer, Some(2))).await;
    assert!(dropped.is_err(), "the second append is dropped before its (late) reply");
    assert!(
        matches!(append_after(&mut peer, Some(3)).await, Ok(AppendEntriesResponse::Success)),
        "the third gets its own reply, not the second's conflict"
    );
    assert_eq!(appends.opened.load(Ordering::Relaxed), 2, "on a stream of its own");
}

#[tokio::test]
async fn appends_share_one_held_stream_and_a_failure_opens_the_next() {
    let appends = Appends { streams: true, fail_every: 3, ..Default::default() };
    let (mut peer, _tmp) = peer_of(appends.clone()).await;
    for _ in 0..2 {
        assert!(matches!(append_after(&mut peer, None).await, Ok(AppendEntriesResponse::Success)));
    }
    assert_eq!(appends.opened.load(Ordering::Relaxed), 1, "the second append went on the first's stream");
    assert!(append_after(&mut peer, None).await.is_err(), "the peer refused the third");
    assert!(matches!(append_after(&mut peer, None).await, Ok(AppendEntriesResponse::Success)));
    assert_eq!(appends.opened.load(Ordering::Relaxed), 2, "after a failure the next append opens a stream");
    assert_eq!(appends.unary.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_peer_without_append_stream_gets_unary_appends() {
    let appends = Appends::default();
    let (mut peer, _tmp) = peer_of(appends.clone()).await;
    for _ in 0..3 {
        assert!(matches!(append_after(&mut peer, None).await, Ok(AppendEntriesResponse::Success)));
    }
    assert_eq!(appends.unary.load(Ordering::Relaxed), 3, "every append arrived, unary");
    assert!(peer.unary, "and the stream is not asked for again");
}
