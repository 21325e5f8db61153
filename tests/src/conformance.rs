//! WebSocket conformance through the proxy: a strict echo backend, a raw client that sends
//! exactly the bytes a case names, and the cases of the Autobahn|Testsuite fuzzing client that
//! a proxy can get wrong (framing, reserved bits and opcodes, fragmentation, UTF-8, the closing
//! handshake). A case's outcome is everything the client receives until the connection ends;
//! the proxy is conformant when every outcome through it equals the outcome of a direct
//! connection to the same backend.
//!
//! The Autobahn suite itself is Python 2 and does not run here, so its cases that matter are
//! written out below by their numbers.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};

/// How long a case may take to end before its outcome says the connection hung.
const CASE_DEADLINE: Duration = Duration::from_secs(4);
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An echo server that fails the connection the way RFC 6455 §7.1.7 says: on a protocol error
/// it sends Close with the code that names the error (1002, 1007, 1009); then, by `linger`,
/// it either drops the connection at once (unread input makes that a reset) or waits for the
/// client's Close first, as the RFC prefers.
pub struct StrictEcho {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl StrictEcho {
    pub async fn start(linger: bool) -> StrictEcho {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind strict echo");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_strict(sock, linger));
            }
        });
        StrictEcho { addr, task }
    }
}

impl Drop for StrictEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_strict(sock: TcpStream, linger: bool) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else { return };
    loop {
        let code = match ws.next().await {
            None => return,
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
                continue;
            }
            // Pongs to pings and the reply to a Close are tungstenite's own.
            Some(Ok(_)) => continue,
            Some(Err(Error::Utf8(_))) => CloseCode::Invalid,
            Some(Err(Error::Capacity(_))) => CloseCode::Size,
            Some(Err(Error::Protocol(_))) => CloseCode::Protocol,
            Some(Err(_)) => return,
        };
        let _ = ws.close(Some(CloseFrame { code, reason: "".into() })).await;
        if linger {
            // Until the client ends its side (it half-closes after answering the Close), within
            // a bound. Read raw: after a protocol error tungstenite reads no further, and input
            // left unread when the socket closes would turn the close into a reset that can
            // take the Close frame with it.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let raw = ws.get_mut();
                let mut sink = [0u8; 4096];
                while matches!(raw.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        return;
    }
}

/// One frame as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    /// FIN, RSV and opcode bits.
    pub first: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Got {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == 8 && self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Everything a case's client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub frames: Vec<Got>,
    /// How it ended: "closed" (the peer closed or reset TCP) or "hung" (nothing ended it
    /// within the case deadline).
    pub end: &'static str,
}

impl Outcome {
    /// The outcome with Close reasons left out: a reason is free text, and the proxy's own
    /// Close (when it fails a connection itself) has none.
    pub fn without_reasons(&self) -> Outcome {
        let frames = self
            .frames
            .iter()
            .map(|f| {
                let mut f = f.clone();
                if f.opcode() == 8 {
                    f.payload.truncate(2);
                }
                f
            })
            .collect();
        Outcome { frames, end: self.end }
    }

    /// The close code the client received, if a Close came.
    pub fn close_code(&self) -> Option<u16> {
        self.frames.iter().find(|f| f.opcode() == 8).and_then(Got::close_code)
    }
}

/// A client-to-server frame with the given first byte (FIN, RSV, opcode) and payload,
/// masked and with the minimal length encoding.
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// A frame with its payload length in the 64-bit form whatever its size (not minimal when
/// the payload is short).
pub fn frame_len64(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first, 0x80 | 127];
    f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// A frame sent without a mask, which a client must never do.
pub fn frame_unmasked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A case: what the client sends, write by write.
pub struct Case {
    pub id: String,
    pub writes: Vec<Vec<u8>>,
}

pub const FIN: u8 = 0x80;
pub const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONT: u8 = 0;
pub const CLOSE: u8 = 8;
pub const PING: u8 = 9;
const PONG: u8 = 10;

fn case(id: impl Into<String>, writes: Vec<Vec<u8>>) -> Case {
    Case { id: id.into(), writes }
}

/// The cases, numbered as in the Autobahn fuzzing client where one matches.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let close_normal = frame(FIN | CLOSE, &close_payload(1000, b""));
    // 1.*: framing of text and binary messages of every length class.
    for (i, n) in [0usize, 125, 126, 127, 128, 65535, 65536].into_iter().enumerate() {
        v.push(case(format!("1.1.{}", i + 1), vec![frame(FIN | TEXT, &vec![b'*'; n]), close_normal.clone()]));
        v.push(case(format!("1.2.{}", i + 1), vec![frame(FIN | BINARY, &vec![0xfe; n]), close_normal.clone()]));
    }
    // 2.*: pings and pongs.
    v.push(case("2.1", vec![frame(FIN | PING, b""), close_normal.clone()]));
    v.push(case("2.2", vec![frame(FIN | PING, b"Hello, world!"), close_normal.clone()]));
    v.push(case("2.3", vec![frame(FIN | PING, &[0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0, 0xff]), close_normal.clone()]));
    v.push(case("2.4", vec![frame(FIN | PING, &[0xfe; 125]), close_normal.clone()]));
    v.push(case("2.5", vec![frame(FIN | PING, &[0xfe; 126]), close_normal.clone()]));
    v.push(case("2.6", vec![frame(FIN | PING, &[0xfe; 125]), close_normal.clone()]));
    v.push(case("2.7", vec![frame(FIN | PONG, b""), close_normal.clone()]));
    v.push(case("2.8", vec![frame(FIN | PONG, b"unsolicited pong payload"), close_normal.clone()]));
    v.push(case(
        "2.9",
        vec![frame(FIN | PONG, b"ping payload"), frame(FIN | PING, b"ping payload"), close_normal.clone()],
    ));
    let mut pings: Vec<_> = (0..10).map(|i| frame(FIN | PING, format!("payload-{i}").as_bytes())).collect();
    pings.push(close_normal.clone());
    v.push(case("2.10", pings));
    // 3.*: reserved bits with no extension negotiated.
    v.push(case("3.1", vec![frame(FIN | 0x40 | TEXT, b"Hello, world!"), close_normal.clone()]));
    v.push(case(
        "3.2",
        vec![frame(FIN | TEXT, b"Hello, world!"), frame(FIN | 0x20 | TEXT, b"Hello, world!"), frame(FIN | PING, b"")],
    ));
    v.push(case("3.4", vec![frame(FIN | 0x30 | TEXT, b"Hello, world!"), frame(FIN | PING, b"")]));
    v.push(case("3.5", vec![frame(FIN | 0x50 | BINARY, &[0, 0xff, 0xfe])]));
    v.push(case("3.6", vec![frame(FIN | 0x60 | PING, b"Hello, world!")]));
    v.push(case("3.7", vec![frame(FIN | 0x70 | CLOSE, &close_payload(1000, b""))]));
    // 4.*: reserved opcodes.
    for (i, op) in [3u8, 4, 5, 6, 7].into_iter().enumerate() {
        v.push(case(format!("4.1.{}", i + 1), vec![frame(FIN | op, b"reserved"), frame(FIN | PING, b"")]));
    }
    for (i, op) in [0xbu8, 0xc, 0xd, 0xe, 0xf].into_iter().enumerate() {
        v.push(case(format!("4.2.{}", i + 1), vec![frame(FIN | op, b"reserved"), frame(FIN | PING, b"")]));
    }
    // 5.*: fragmentation.
    v.push(case("5.1", vec![frame(PING, b"frag"), frame(FIN | CONT, b"ment")]));
    v.push(case("5.2", vec![frame(PONG, b"frag"), frame(FIN | CONT, b"ment")]));
    v.push(case("5.3", vec![frame(TEXT, b"frag"), frame(FIN | CONT, b"ment"), close_normal.clone()]));
    v.push(case(
        "5.6",
        vec![frame(TEXT, b"frag"), frame(FIN | PING, b"in between"), frame(FIN | CONT, b"ment"), close_normal.clone()],
    ));
    v.push(case("5.9", vec![frame(FIN | CONT, b"no start"), frame(FIN | TEXT, b"after")]));
    v.push(case("5.10", vec![frame(CONT, b"no start"), frame(FIN | CONT, b"end")]));
    v.push(case(
        "5.15",
        vec![frame(TEXT, b"a"), frame(FIN | CONT, b"b"), frame(FIN | CONT, b"c"), frame(FIN | TEXT, b"d")],
    ));
    v.push(case("5.18", vec![frame(TEXT, b"first"), frame(FIN | TEXT, b"second")]));
    v.push(case(
        "5.19",
        vec![
            frame(TEXT, b"f1"),
            frame(CONT, b"f2"),
            frame(FIN | PING, b"p1"),
            frame(CONT, b"f3"),
            frame(FIN | PING, b"p2"),
            frame(FIN | CONT, b"f4"),
            close_normal.clone(),
        ],
    ));
    // 6.*: UTF-8 in text messages.
    v.push(case("6.1.1", vec![frame(FIN | TEXT, b""), close_normal.clone()]));
    v.push(case("6.2.1", vec![frame(FIN | TEXT, "Hello-µ@ßöäüàá-UTF-8!!".as_bytes()), close_normal.clone()]));
    let bad: [&[u8]; 6] = [
        &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80, 0x65, 0x64],
        &[0xff],
        &[0xc0, 0xaf],
        &[0xed, 0xa0, 0x80],
        &[0xf4, 0x90, 0x80, 0x80],
        &[0x80, 0x65],
    ];
    for (i, b) in bad.iter().enumerate() {
        v.push(case(format!("6.3.{}", i + 1), vec![frame(FIN | TEXT, b), close_normal.clone()]));
    }
    // Invalid UTF-8 split across fragments, the bad byte in the last one.
    v.push(case("6.4.1", vec![frame(TEXT, "κόσμε".as_bytes()), frame(FIN | CONT, &[0xf4, 0x90, 0x80, 0x80])]));
    // 7.*: the closing handshake.
    v.push(case("7.1.1", vec![frame(FIN | TEXT, b"Hello World!"), close_normal.clone()]));
    v.push(case("7.1.2", vec![close_normal.clone(), close_normal.clone()]));
    v.push(case("7.1.3", vec![close_normal.clone(), frame(FIN | PING, b"")]));
    v.push(case("7.1.4", vec![close_normal.clone(), frame(FIN | TEXT, b"after close")]));
    v.push(case("7.1.5", vec![frame(TEXT, b"fragment1"), close_normal.clone(), frame(FIN | CONT, b"fragment2")]));
    v.push(case(
        "7.1.6",
        vec![frame(FIN | TEXT, &vec![b'x'; 256 << 10]), close_normal.clone(), frame(FIN | PING, b"")],
    ));
    v.push(case("7.3.1", vec![frame(FIN | CLOSE, b"")]));
    v.push(case("7.3.2", vec![frame(FIN | CLOSE, b"a")]));
    v.push(case("7.3.3", vec![frame(FIN | CLOSE, &close_payload(1000, b""))]));
    v.push(case("7.3.4", vec![frame(FIN | CLOSE, &close_payload(1000, b"Hello World!"))]));
    v.push(case("7.3.5", vec![frame(FIN | CLOSE, &close_payload(1000, &[b'*'; 123]))]));
    v.push(case("7.3.6", vec![frame(FIN | CLOSE, &close_payload(1000, &[b'*'; 124]))]));
    v.push(case(
        "7.5.1",
        vec![frame(FIN | CLOSE, &close_payload(1000, &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xed, 0xa0, 0x80]))],
    ));
    let valid = [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999];
    for (i, code) in valid.into_iter().enumerate() {
        v.push(case(format!("7.7.{}", i + 1), vec![frame(FIN | CLOSE, &close_payload(code, b""))]));
    }
    let invalid = [0u16, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999];
    for (i, code) in invalid.into_iter().enumerate() {
        v.push(case(format!("7.9.{}", i + 1), vec![frame(FIN | CLOSE, &close_payload(code, b""))]));
    }
    // Beyond Autobahn: what the proxy itself owes the protocol (RFC 6455 §5.1, §5.2).
    v.push(case("x.unmasked", vec![frame_unmasked(FIN | TEXT, b"unmasked"), close_normal.clone()]));
    v.push(case("x.len64-short", vec![frame_len64(FIN | TEXT, b"non-minimal"), close_normal.clone()]));
    v.push(case("x.len64-binary", vec![frame_len64(FIN | BINARY, &[1; 200]), close_normal.clone()]));
    v.push(case("x.bytewise", vec![[frame(FIN | TEXT, b"split byte by byte"), close_normal].concat()]));
    v
}

/// Runs one case against `addr` (a backend or a proxy in front of it): upgrades, sends the
/// case's writes, answers a Close with the same payload (as a well-behaved client does) and
/// collects what arrives until the peer ends the connection.
pub async fn run_case(addr: &str, c: &Case) -> Outcome {
    let (mut s, buf) = upgrade(addr, &c.id).await;
    let bytewise = c.id == "x.bytewise";
    for w in &c.writes {
        let r = if bytewise {
            let mut r = Ok(());
            for b in w {
                r = s.write_all(std::slice::from_ref(b)).await;
                if r.is_err() {
                    break;
                }
            }
            r
        } else {
            s.write_all(w).await
        };
        // The peer may already have failed the connection; what it said is still read below.
        if r.is_err() {
            break;
        }
    }
    outcome(s, buf).await
}

/// Connects to `addr` and upgrades; returns the socket and what came after the `101`'s head.
pub async fn upgrade(addr: &str, id: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let req = format!(
        "GET /conformance HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write upgrade");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read 101");
        assert!(n > 0, "{id}: closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert!(buf.starts_with(b"HTTP/1.1 101"), "{id}: {}", String::from_utf8_lossy(&buf));
    buf.drain(..head_end);
    (s, buf)
}

/// Reads frames until the connection ends (or the case deadline passes), answering a Close
/// as a browser does: the code echoed, then the FIN. `buf` holds what was read already.
pub async fn outcome(mut s: TcpStream, mut buf: Vec<u8>) -> Outcome {
    let mut frames = Vec::new();
    let mut replied = false;
    let deadline = tokio::time::Instant::now() + CASE_DEADLINE;
    let end = loop {
        while let Some((f, used)) = parse_frame(&buf) {
            buf.drain(..used);
            if f.opcode() == 8 && !replied {
                replied = true;
                let mut p = f.payload.clone();
                // Echo the code, not the reason (a reason may be invalid UTF-8).
                p.truncate(2);
                let _ = s.write_all(&frame(FIN | CLOSE, &p)).await;
                // Nothing follows a Close: say so at the TCP level too, as browsers do.
                let _ = s.shutdown().await;
            }
            frames.push(f);
        }
        let mut chunk = vec![0u8; 64 << 10];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => break "hung",
            Ok(Ok(0)) | Ok(Err(_)) => break "closed",
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    // Anything after the last whole frame is a torn frame: shown as such.
    if !buf.is_empty() {
        frames.push(Got { first: 0xff, masked: false, payload: buf });
    }
    Outcome { frames, end }
}

fn parse_frame(b: &[u8]) -> Option<(Got, usize)> {
    let (len, mut i) = match *b.get(1)? & 0x7f {
        126 => (u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let masked = b[1] & 0x80 != 0;
    let mut key = [0u8; 4];
    if masked {
        key.copy_from_slice(b.get(i..i + 4)?);
        i += 4;
    }
    let body = b.get(i..i + len)?;
    let payload = body.iter().enumerate().map(|(j, x)| if masked { x ^ key[j % 4] } else { *x }).collect();
    Some((Got { first: b[0], masked, payload }, i + len))
}

/// A one-line description of an outcome for a failure message.
pub fn describe(o: &Outcome) -> String {
    let frames: Vec<String> = o
        .frames
        .iter()
        .map(|f| match f.close_code() {
            Some(c) => format!("Close({c})"),
            None => format!("op{:x}/{}B{}", f.opcode(), f.payload.len(), if f.masked { "/masked" } else { "" }),
        })
        .collect();
    format!("[{}] then {}", frames.join(", "), o.end)
}
