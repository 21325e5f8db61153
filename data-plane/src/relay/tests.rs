//! The relay between real loopback sockets: the test plays the client and the backend by
//! writing raw frames to the far ends of two socket pairs, and reads what the proxy sends.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::limits::{CLOSE_LINGER, PEER_CLOSING};
use super::*;
use crate::frame::{close_frame, control_frame, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// Upper bound for anything that must happen.
const WAIT: Duration = Duration::from_secs(2);
/// How long "nothing arrives" is watched.
const QUIET: Duration = Duration::from_millis(250);
const MASK: [u8; 4] = [1, 2, 3, 4];

const NO_LIMITS: Limits = Limits { max_message: 1 << 20, idle_timeout: None, ping_interval: None, extensions: false };

/// A frame as the far end reads it, payload unmasked.
#[derive(Debug, PartialEq)]
struct Frame {
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, OP_CLOSE, "{self:?}");
        u16::from_be_bytes([self.payload[0], self.payload[1]])
    }
}

/// A data frame with FIN set; `mask` as a client would send it.
fn data(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if payload.len() < 126 {
        f.push(m | payload.len() as u8);
    } else {
        f.push(m | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// One whole frame at the start of `b`, and its length.
fn parse(b: &[u8]) -> Option<(Frame, usize)> {
    let (mut len, mut i) = match *b.get(1)? & 0x7f {
        126 => (u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let masked = b[1] & 0x80 != 0;
    let mut key = [0; 4];
    if masked {
        key.copy_from_slice(b.get(i..i + 4)?);
        i += 4;
    }
    let body = b.get(i..i + len)?;
    let payload = body.iter().enumerate().map(|(j, x)| if masked { x ^ key[j % 4] } else { *x }).collect();
    len += i;
    Some((Frame { opcode: b[0] & 0x0f, masked, payload }, len))
}

/// The test's end of one side: what it reads is what the proxy sent.
struct Peer {
    s: TcpStream,
    got: Vec<u8>,
}

impl Peer {
    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut b = [0u8; 4096];
        let n = timeout(WAIT, self.s.read(&mut b)).await.expect("the proxy sent nothing").unwrap();
        self.got.extend_from_slice(&b[..n]);
        n
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some((f, n)) = parse(&self.got) {
                self.got.drain(..n);
                return f;
            }
            assert!(self.fill().await > 0, "end of stream before a whole frame: {:?}", self.got);
        }
    }

    async fn bytes(&mut self, n: usize) -> Vec<u8> {
        while self.got.len() < n {
            assert!(self.fill().await > 0, "end of stream");
        }
        self.got.drain(..n).collect()
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        let mut b = [0u8; 64];
        assert!(self.got.is_empty(), "{:?}", self.got);
        if let Ok(r) = timeout(QUIET, self.s.read(&mut b)).await {
            panic!("expected silence, got {:?}", r.map(|n| b[..n].to_vec()));
        }
    }

    /// The proxy sent nothing more and closed its side.
    async fn eof(&mut self) {
        assert!(self.got.is_empty(), "{:?}", self.got);
        let mut b = [0u8; 64];
        match timeout(WAIT, self.s.read(&mut b)).await.expect("no end of stream") {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected the end, got {:?}", &b[..n]),
        }
    }
}

async fn socket_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (inner, _) = l.accept().await.unwrap();
    (outer, inner)
}

/// A relay between a test client and a test backend.
struct Rig {
    client: Peer,
    backend: Peer,
    ctl: Arc<CloseHandle>,
    stats: Arc<BackendStats>,
    relay: tokio::task::JoinHandle<Relayed>,
}

impl Rig {
    async fn start(limits: Limits) -> Rig {
        Rig::with_early(limits, Vec::new(), Vec::new()).await
    }

    async fn with_early(limits: Limits, client_early: Vec<u8>, backend_early: Vec<u8>) -> Rig {
        let (client, client_in) = socket_pair().await;
        let (backend, backend_in) = socket_pair().await;
        let (ctl, stats) = (Arc::new(CloseHandle::default()), Arc::new(BackendStats::default()));
        let (c, s) = (ctl.clone(), stats.clone());
        let relay = tokio::spawn(async move {
            let (ci, bi) = (super::Stream::Plain(client_in), super::Stream::Plain(backend_in));
            relay(&ci, &bi, &client_early, &backend_early, limits, &c, &s).await
        });
        let (client, backend) = (Peer { s: client, got: Vec::new() }, Peer { s: backend, got: Vec::new() });
        Rig { client, backend, ctl, stats, relay }
    }

    async fn end(&mut self) -> End {
        self.relayed().await.end
    }

    async fn relayed(&mut self) -> Relayed {
        timeout(WAIT, &mut self.relay).await.expect("the relay ended").unwrap()
    }

    /// Both peers hang up (as after answering a Close); the relay then ends.
    async fn hang_up(self) -> End {
        self.hang_up_relayed().await.end
    }

    async fn hang_up_relayed(mut self) -> Relayed {
        self.client.s.shutdown().await.unwrap();
        self.backend.s.shutdown().await.unwrap();
        self.client.eof().await;
        self.backend.eof().await;
        self.relayed().await
    }
}

#[tokio::test]
async fn a_ping_due_mid_frame_goes_out_at_the_next_boundary() {
    let limits = Limits { ping_interval: Some(Duration::from_millis(100)), ..NO_LIMITS };
    let mut r = Rig::start(limits).await;
    let msg = data(OP_TEXT, b"0123456789", None);
    r.backend.send(&msg[..6]).await;
    assert_eq!(r.client.bytes(6).await, msg[..6]);
    // The ping falls due meanwhile, but the client output is mid-frame.
    r.client.quiet().await;
    r.backend.send(&msg[6..]).await;
    assert_eq!(r.client.bytes(msg.len() - 6).await, msg[6..]);
    assert_eq!(r.client.bytes(4).await, [0x89, 2, b's', b'y'], "the ping, unmasked, right after the frame");
}

#[tokio::test]
async fn the_proxys_close_goes_out_at_frame_boundaries_with_1001_each_way() {
    let mut r = Rig::start(NO_LIMITS).await;
    let msg = data(OP_BINARY, &[7; 40], None);
    r.backend.send(&msg[..10]).await;
    assert_eq!(r.client.bytes(10).await, msg[..10]);
    r.ctl.close(1001);
    let to_backend = r.backend.frame().await;
    assert!(to_backend.masked && to_backend.close_code() == 1001, "{to_backend:?}");
    // The client output is mid-frame: its Close waits for the frame to end.
    r.client.quiet().await;
    r.backend.send(&msg[10..]).await;
    assert_eq!(r.client.bytes(msg.len() - 10).await, msg[10..]);
    let to_client = r.client.frame().await;
    assert!(!to_client.masked && to_client.close_code() == 1001, "{to_client:?}");
    // The peers answer; their Close frames end there (ours already went each way).
    r.client.send(&close_frame(1001, "", Some(MASK))).await;
    r.backend.send(&close_frame(1001, "", None)).await;
    assert_eq!(r.hang_up().await, End::Proxy(1001));
}

#[tokio::test]
async fn lingering_ends_the_relay_when_the_peers_never_answer() {
    let mut r = Rig::start(NO_LIMITS).await;
    let asked = Instant::now();
    r.ctl.close(1012);
    let (to_client, to_backend) = (r.client.frame().await, r.backend.frame().await);
    assert!(!to_client.masked && to_client.close_code() == 1012, "the client hears the code asked for");
    assert!(to_backend.masked && to_backend.close_code() == 1001);
    assert_eq!(r.end().await, End::Proxy(1012));
    assert!(asked.elapsed() >= CLOSE_LINGER, "ended after {:?}", asked.elapsed());
    r.client.eof().await;
    r.backend.eof().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_1001_both_ways() {
    let limits = Limits { idle_timeout: Some(Duration::from_millis(150)), ..NO_LIMITS };
    let mut r = Rig::start(limits).await;
    let start = Instant::now();
    r.client.send(&data(OP_TEXT, b"hi", Some(MASK))).await;
    assert_eq!(r.backend.frame().await.payload, b"hi");
    let to_client = r.client.frame().await;
    assert!(start.elapsed() >= Duration::from_millis(150), "closed after {:?}", start.elapsed());
    assert!(!to_client.masked && to_client.close_code() == 1001, "{to_client:?}");
    let to_backend = r.backend.frame().await;
    assert!(to_backend.masked && to_backend.close_code() == 1001, "{to_backend:?}");
    assert_eq!(r.hang_up().await, End::Proxy(1001));
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_cut_off() {
    let limits = Limits { ping_interval: Some(Duration::from_millis(100)), ..NO_LIMITS };
    let mut r = Rig::start(limits).await;
    let start = Instant::now();
    let ping = r.client.frame().await;
    assert_eq!(ping, Frame { opcode: OP_PING, masked: false, payload: b"sy".to_vec() });
    // The backend hears the client is gone, with a Close rather than a bare end of stream.
    let to_backend = r.backend.frame().await;
    assert!(to_backend.masked && to_backend.close_code() == 1001, "{to_backend:?}");
    assert!(start.elapsed() >= Duration::from_millis(200), "cut off after {:?}", start.elapsed());
    assert_eq!(r.end().await, End::DeadClient);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_and_the_backend_hears_1001() {
    // The stall bound is a second at least; an idle timeout of one makes it that.
    let limits = Limits { idle_timeout: Some(Duration::from_secs(1)), ..NO_LIMITS };
    let mut r = Rig::start(limits).await;
    // The client never reads: the backend's messages fill the socket buffers, then the write
    // to the client waits out the bound.
    let msg = data(OP_BINARY, &[5; 16 * 1024], None);
    let backend = &mut r.backend;
    let flood = async {
        loop {
            if timeout(Duration::from_millis(200), backend.s.write_all(&msg)).await.is_err() {
                return;
            }
        }
    };
    timeout(Duration::from_secs(30), flood).await.expect("the buffers filled");
    let to_backend = timeout(Duration::from_secs(5), r.backend.frame()).await.expect("a Close for the backend");
    assert!(to_backend.masked && to_backend.close_code() == 1001, "{to_backend:?}");
    assert_eq!(timeout(Duration::from_secs(5), &mut r.relay).await.expect("ended").unwrap().end, End::Error);
}

#[tokio::test]
async fn a_closing_handshake_a_peer_never_finishes_is_ended() {
    // No idle timeout and no pings: nothing else would end it.
    let mut r = Rig::start(NO_LIMITS).await;
    let start = Instant::now();
    r.backend.send(&close_frame(1000, "", None)).await;
    assert_eq!(r.client.frame().await.close_code(), 1000);
    // The client neither answers nor closes its socket.
    let done = timeout(PEER_CLOSING + WAIT, &mut r.relay).await.expect("the relay ended").unwrap();
    assert!(start.elapsed() >= PEER_CLOSING, "ended after {:?}", start.elapsed());
    assert_eq!(done.first, Some(Side::ToClient), "the backend closed first");
    r.client.eof().await;

    // The same when the client begins it and the backend never answers.
    let mut r = Rig::start(NO_LIMITS).await;
    let start = Instant::now();
    r.client.send(&close_frame(1000, "", Some(MASK))).await;
    assert_eq!(r.backend.frame().await.close_code(), 1000);
    let done = timeout(PEER_CLOSING + WAIT, &mut r.relay).await.expect("the relay ended").unwrap();
    assert!(start.elapsed() >= PEER_CLOSING, "ended after {:?}", start.elapsed());
    assert_eq!(done.first, Some(Side::ToBackend), "the client closed first");
}

#[tokio::test]
async fn a_client_that_answers_pings_stays() {
    let limits = Limits { ping_interval: Some(Duration::from_millis(200)), ..NO_LIMITS };
    let mut r = Rig::start(limits).await;
    for _ in 0..3 {
        assert_eq!(r.client.frame().await.opcode, OP_PING);
        r.client.send(&control_frame(OP_PONG, b"sy", Some(MASK))).await;
        assert_eq!(r.backend.frame().await.opcode, OP_PONG, "pongs pass through");
    }
    r.client.send(&data(OP_TEXT, b"still here", Some(MASK))).await;
    assert_eq!(r.backend.frame().await.payload, b"still here");
    assert!(!r.relay.is_finished());
}

/// A direction that never runs out of input still keeps its timer: the backend streams
/// without a pause, so the relay's reads use up the task's budget over and over, and the pings
/// still come on time.
#[tokio::test]
async fn pings_keep_coming_while_the_backend_streams_without_a_pause() {
    let limits = Limits { ping_interval: Some(Duration::from_millis(100)), ..NO_LIMITS };
    let Rig { mut client, backend, relay, .. } = Rig::start(limits).await;
    let mut backend = backend.s;
    let stream = tokio::spawn(async move {
        let burst: Vec<u8> = (0..512).flat_map(|_| data(OP_BINARY, b"x", None)).collect();
        while backend.write_all(&burst).await.is_ok() {}
    });
    let (mut pings, mut frames) = (0, 0u64);
    let three = async {
        while pings < 3 {
            let f = client.frame().await;
            frames += 1;
            if f.opcode == OP_PING {
                pings += 1;
                client.send(&control_frame(OP_PONG, b"sy", Some(MASK))).await;
            }
        }
    };
    timeout(WAIT, three).await.expect("three pings came while the backend streamed");
    assert!(frames > 1000, "the backend's frames came between the pings: {frames}");
    stream.abort();
    relay.abort();
}

async fn too_big(from_client: bool) {
    let limits = Limits { max_message: 100, ..NO_LIMITS };
    let mut r = Rig::start(limits).await;
    let (small, big) = if from_client {
        (data(OP_TEXT, b"ok", Some(MASK)), data(OP_BINARY, &[1; 101], Some(MASK)))
    } else {
        (data(OP_TEXT, b"ok", None), data(OP_BINARY, &[1; 101], None))
    };
    let (sender, receiver) =
        if from_client { (&mut r.client, &mut r.backend) } else { (&mut r.backend, &mut r.client) };
    sender.send(&[small.clone(), big].concat()).await;
    assert_eq!(receiver.frame().await.payload, b"ok", "what came before the big message goes through");
    let (to_sender, to_receiver) = (sender.frame().await, receiver.frame().await);
    assert_eq!((to_sender.close_code(), to_receiver.close_code()), (1009, 1001));
    assert_eq!((to_sender.masked, to_receiver.masked), (!from_client, from_client));
    let side = if from_client { Side::ToBackend } else { Side::ToClient };
    assert_eq!((r.stats.traffic.bytes(side), r.stats.traffic.messages(side)), (small.len() as u64, 1));
    let code = if from_client { 1009 } else { 1001 };
    assert_eq!(r.hang_up().await, End::Proxy(code), "the code is the client's");
}

#[tokio::test]
async fn a_message_too_big_gets_1009_toward_its_sender() {
    too_big(true).await;
    too_big(false).await;
}

#[tokio::test]
async fn a_peer_that_hangs_up_leaves_the_other_a_close_then_the_end() {
    let early_up = data(OP_TEXT, b"early", Some(MASK));
    let mut r = Rig::with_early(NO_LIMITS, early_up, data(OP_TEXT, b"welcome", None)).await;
    assert_eq!(r.backend.frame().await.payload, b"early");
    assert_eq!(r.client.frame().await.payload, b"welcome");
    r.backend.s.shutdown().await.unwrap();
    let to_client = r.client.frame().await;
    assert!(!to_client.masked && to_client.close_code() == 1001, "{to_client:?}");
    r.client.eof().await;
    r.client.s.shutdown().await.unwrap();
    assert_eq!(r.end().await, End::Peer);
}

#[tokio::test]
async fn a_client_that_breaks_the_protocol_still_gets_the_replies_then_1002() {
    let mut r = Rig::start(NO_LIMITS).await;
    // A message, then a frame a client may not send (unmasked).
    r.client.send(&[data(OP_TEXT, b"ok", Some(MASK)), data(OP_TEXT, b"bad", None)].concat()).await;
    assert_eq!(r.backend.frame().await.payload, b"ok");
    let to_backend = r.backend.frame().await;
    assert!(to_backend.masked && to_backend.close_code() == 1001, "{to_backend:?}");
    // The backend answers the message, then our Close.
    r.backend.send(&[data(OP_TEXT, b"reply", None), close_frame(1001, "", None)].concat()).await;
    assert_eq!(r.client.frame().await.payload, b"reply", "the reply still reaches the client");
    let to_client = r.client.frame().await;
    assert!(!to_client.masked && to_client.close_code() == 1002, "the client hears why: {to_client:?}");
    let done = r.hang_up_relayed().await;
    assert_eq!((done.end, done.why), (End::Proxy(1002), Some(Why::Protocol(Side::ToBackend))));
    assert_eq!((done.to_client.proxy_close, done.to_backend.proxy_close), (Some(1002), Some(1001)));
    assert_eq!((done.to_backend.messages, done.to_client.messages), (1, 1));
}

/// A peer that resets (no Close, no FIN) is gone like one that hung up: the other side gets
/// Close 1001, not a dropped connection.
#[tokio::test]
async fn a_peer_that_resets_leaves_the_other_a_close_too() {
    let mut r = Rig::start(NO_LIMITS).await;
    r.backend.s.write_all(&data(OP_TEXT, b"hi", None)).await.unwrap();
    assert_eq!(r.client.frame().await.payload, b"hi");
    // A zero linger: the backend's close is a reset, as from a host that rebooted.
    socket2::SockRef::from(&r.backend.s).set_linger(Some(Duration::ZERO)).unwrap();
    let (stand_in, _other_end) = socket_pair().await;
    drop(std::mem::replace(&mut r.backend.s, stand_in));
    let to_client = r.client.frame().await;
    assert!(!to_client.masked && to_client.close_code() == 1001, "{to_client:?}");
    r.client.eof().await;
    r.client.s.shutdown().await.unwrap();
    assert_eq!(r.end().await, End::Error);
}

/// After the closing handshake neither peer may send more: the first to hang up ends the
/// relay at once (as NGINX does) instead of the relay waiting up to `CLOSE_LINGER` for the
/// other's FIN. The client's socket is left for `Stream::linger` to close.
#[tokio::test]
async fn once_both_closes_went_by_the_first_hang_up_ends_the_relay() {
    let mut r = Rig::start(NO_LIMITS).await;
    r.client.send(&close_frame(1000, "", Some(MASK))).await;
    assert_eq!(r.backend.frame().await.close_code(), 1000);
    r.backend.send(&close_frame(1000, "", None)).await;
    assert_eq!(r.client.frame().await.close_code(), 1000);
    // The backend hangs up; the client, which has its Close, does not.
    r.backend.s.shutdown().await.unwrap();
    let done = timeout(QUIET, &mut r.relay).await.expect("the relay ended without waiting for the client").unwrap();
    assert_eq!((done.end, done.first), (End::Peer, Some(Side::ToBackend)));
    assert!(done.client_open, "the client has not hung up: its socket is to be closed by lingering");
    r.client.eof().await;
}

/// A backend that hangs up without answering the client's Close: the client gets the proxy's
/// 1001 in its place, has then sent and got a Close, and the relay ends at once.
#[tokio::test]
async fn a_client_that_closed_is_let_go_when_the_backend_drops_without_answering() {
    let mut r = Rig::start(NO_LIMITS).await;
    r.client.send(&close_frame(1000, "", Some(MASK))).await;
    assert_eq!(r.backend.frame().await.close_code(), 1000);
    r.backend.s.shutdown().await.unwrap();
    assert_eq!(r.client.frame().await.close_code(), 1001);
    let done = timeout(QUIET, &mut r.relay).await.expect("the relay ended without waiting for the client").unwrap();
    assert_eq!(done.to_client.proxy_close, Some(1001));
    r.client.eof().await;
}

#[tokio::test]
async fn nothing_after_a_peers_close_is_passed_on() {
    let mut r = Rig::start(NO_LIMITS).await;
    let close = close_frame(1000, "", Some(MASK));
    r.client.send(&[close.clone(), data(OP_TEXT, b"late", Some(MASK))].concat()).await;
    assert_eq!(r.backend.frame().await.close_code(), 1000);
    r.client.send(&data(OP_TEXT, b"later", Some(MASK))).await;
    r.backend.quiet().await;
    r.backend.send(&close_frame(4000, "", None)).await;
    assert_eq!(r.client.frame().await.close_code(), 4000, "the backend's Close, byte for byte");
    let done = r.hang_up_relayed().await;
    assert_eq!((done.end, done.first), (End::Peer, Some(Side::ToBackend)), "the client ended first");
    let to_backend = Flow { bytes: close.len() as u64, messages: 0, peer_close: Some(1000), proxy_close: None };
    assert_eq!(done.to_backend, to_backend, "what came after the client's Close is not counted");
    assert_eq!(done.to_client.peer_close, Some(4000));
}

#[tokio::test]
async fn a_relay_that_ends_on_the_clients_hang_up_leaves_nothing_to_linger_on() {
    let mut r = Rig::start(NO_LIMITS).await;
    r.client.send(&close_frame(1000, "", Some(MASK))).await;
    assert_eq!(r.backend.frame().await.close_code(), 1000);
    r.backend.send(&close_frame(1000, "", None)).await;
    assert_eq!(r.client.frame().await.close_code(), 1000);
    r.client.s.shutdown().await.unwrap();
    let done = timeout(QUIET, &mut r.relay).await.expect("the relay ended without waiting for the backend").unwrap();
    assert_eq!((done.end, done.first), (End::Peer, Some(Side::ToBackend)));
    assert!(!done.client_open, "the client hung up itself");
}

/// Lingering reads what the client still sends, so that its late bytes do not reset the
/// connection, but only up to its bound: a client that never closes is let go.
#[tokio::test]
async fn lingering_sends_our_fin_and_gives_up_on_a_peer_that_never_closes() {
    let (mut peer, ours) = socket_pair().await;
    let ours = super::Stream::Plain(ours);
    let bound = Duration::from_millis(200);
    let linger = tokio::spawn(async move {
        let t = Instant::now();
        ours.linger(bound).await;
        t.elapsed()
    });
    peer.write_all(b"late").await.unwrap();
    let mut b = [0u8; 16];
    assert_eq!(timeout(WAIT, peer.read(&mut b)).await.expect("our FIN").unwrap(), 0, "our side is closed first");
    let took = timeout(WAIT, linger).await.expect("lingering ended").unwrap();
    assert!(took >= bound, "lingering ended after {took:?}, before its bound, with the peer still open");
}

#[tokio::test]
async fn lingering_ends_when_the_peer_closes_its_side() {
    let (mut peer, ours) = socket_pair().await;
    let ours = super::Stream::Plain(ours);
    let linger = tokio::spawn(async move { ours.linger(Duration::from_secs(600)).await });
    peer.write_all(b"late").await.unwrap();
    let mut b = [0u8; 16];
    assert_eq!(timeout(WAIT, peer.read(&mut b)).await.expect("our FIN").unwrap(), 0);
    peer.shutdown().await.unwrap();
    timeout(WAIT, linger).await.expect("lingering ended with the peer's FIN, not its bound").unwrap();
}

/// RSV bits are the agreed extensions' (permessage-deflate sets RSV1 on compressed messages);
/// with none agreed, a frame carrying one breaks the protocol and is not passed on.
#[tokio::test]
async fn reserved_bits_pass_only_when_an_extension_was_agreed() {
    let mut compressed = data(OP_TEXT, b"deflated", Some(MASK));
    compressed[0] |= 0x40;
    let mut r = Rig::start(Limits { extensions: true, ..NO_LIMITS }).await;
    r.client.send(&compressed).await;
    assert_eq!(r.backend.bytes(compressed.len()).await, compressed, "passed through untouched");

    let mut r = Rig::start(NO_LIMITS).await;
    r.client.send(&compressed).await;
    assert_eq!(r.client.frame().await.close_code(), 1002, "the client hears why");
    assert_eq!(r.backend.frame().await.close_code(), 1001, "the backend got the Close, not the frame");
}
