use super::*;
use crate::handling::Tuning;

#[tokio::test]
async fn accepting_waits_for_a_config_but_not_past_the_limit() {
    let state = ProxyState::new("p".into());
    let t = std::time::Instant::now();
    configured(&state, Duration::from_millis(150)).await;
    assert!(t.elapsed() >= Duration::from_millis(150), "returned without a config after {:?}", t.elapsed());

    let s = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.status.record("cache", 7, std::time::SystemTime::now());
    });
    let t = std::time::Instant::now();
    configured(&state, Duration::from_secs(10)).await;
    assert!(t.elapsed() < Duration::from_secs(2), "still waiting {:?} after the config came", t.elapsed());
}

/// An idle connection's memory is mostly its task's future: this keeps the handshake's
/// state out of it (see [`handle`]). The bound has room for compiler changes, not for
/// the handshake's ~1.5 KiB coming back.
#[tokio::test]
async fn an_established_connection_keeps_no_handshake_state() {
    let state = ProxyState::new("p".into());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let ctx = Arc::new(Ctx { tuning: Tuning::default(), wss: None, backend_tls: None });
    let task = handle(state.clone(), client, "127.0.0.1:1".parse().unwrap(), ctx.clone(), false);
    let mut rec: Log = None;
    let other = Either::Left(TcpStream::connect(l.local_addr().unwrap()).await.unwrap());
    let handshake = open(&state, &mut rec, other, "127.0.0.1:1".parse().unwrap(), &ctx, false);
    let (task, handshake) = (std::mem::size_of_val(&task), std::mem::size_of_val(&handshake));
    assert!(handshake > 1024, "the handshake's state is {handshake} bytes: this test no longer tells anything");
    assert!(task < 1500, "a connection's task is {task} bytes");
}

/// What `accept::start` counts on to save a `setsockopt` per connection (each worker checks
/// its first connection and sets the option itself if it was not inherited).
#[tokio::test]
async fn accepted_sockets_inherit_nodelay_from_their_listener() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    socket2::SockRef::from(&l).set_tcp_nodelay(true).unwrap();
    let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    assert!(s.nodelay().unwrap(), "an accepted socket without TCP_NODELAY");
}
