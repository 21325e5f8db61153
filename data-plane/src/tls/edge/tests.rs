//! The unbuffered server connection against tokio-rustls' (buffered) client, over real
//! loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

struct Pki {
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pki {
    pki_with(versions, None)
}

/// As [`pki`], with the client offering `suite` alone when one is given.
fn pki_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    suite: Option<rustls::SupportedCipherSuite>,
) -> Pki {
    switchyard_model::tls::install_provider();
    let kp = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap().self_signed(&kp).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, kp.serialize_pem()).unwrap();
    let set = crate::tls::CertSet::load(&crate::tls::CertSources { pairs: vec![(c, k)], dir: None }).unwrap();
    // The proxy's own config; the client picks the version.
    let server = crate::tls::server_config(Arc::new(crate::tls::SniResolver::new(set)));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert.der().to_vec())).unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider.cipher_suites = vec![suite];
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki { server, client: Arc::new(client) }
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (s, c)
}

/// Both ends of a connection past its handshake: ours, and tokio-rustls' client.
async fn connected(pki: &Pki) -> (EdgeTls, tokio_rustls::client::TlsStream<TcpStream>) {
    let (s, c) = pair().await;
    let connector = tokio_rustls::TlsConnector::from(pki.client.clone());
    let (tls, c) = tokio::join!(accept(s, pki.server.clone()), async {
        connector.connect(ServerName::try_from("a.example").unwrap(), c).await.unwrap()
    });
    (tls.unwrap().0, c)
}

/// A handshake, then plaintext both ways through the relay's calls and the async traits.
async fn round_trip(versions: &[&'static rustls::SupportedProtocolVersion]) {
    round_trip_with(versions, None).await
}

async fn round_trip_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    suite: Option<rustls::SupportedCipherSuite>,
) {
    let pki = pki_with(versions, suite);
    let (s, c) = pair().await;
    let connector = tokio_rustls::TlsConnector::from(pki.client.clone());
    let client = tokio::spawn(async move {
        let mut c = connector.connect(ServerName::try_from("a.example").unwrap(), c).await.unwrap();
        // More than one record, and more than one read, each way.
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        c.write_all(&big).await.unwrap();
        let mut back = vec![0u8; big.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, big);
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let (mut tls, sni) = accept(s, pki.server.clone()).await.unwrap();
    assert_eq!(sni.as_deref(), Some("a.example"));
    assert!(matches!(tls.lock().engine, Engine::Records(_)), "the keys left rustls after the handshake");
    // Echo through the async traits until the client's close_notify.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 5000];
    while got.len() < 100_000 {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "eof after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        tls.write_all(&buf[..n]).await.unwrap();
    }
    tls.flush().await.unwrap();
    assert_eq!(tls.read(&mut buf).await.unwrap(), 0, "close_notify reads as the end");
    tls.shutdown().await.unwrap();
    assert!(client.await.unwrap().is_empty());
    // Nothing is held once everything was read and sent.
    let st = tls.lock();
    assert_eq!((st.inbox.capacity(), st.plain.capacity(), st.outbox.capacity()), (0, 0, 0));
}

#[tokio::test]
async fn tls13_round_trip_holds_no_buffer_when_idle() {
    round_trip(&[&rustls::version::TLS13]).await;
}

#[tokio::test]
async fn tls12_round_trip_holds_no_buffer_when_idle() {
    round_trip(&[&rustls::version::TLS12]).await;
}

/// The relay's calls: non-blocking reads into a big buffer, writes that hold what the socket
/// does not take, and `pending` until it is all out.
#[tokio::test]
async fn relay_calls_move_large_writes_through_a_full_socket() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (tls, mut c) = connected(&pki).await;
    // 4 MiB written with nobody reading: the socket fills and the rest waits in the outbox.
    let chunk = vec![7u8; 60_000];
    let mut written = 0;
    while written < 4 << 20 {
        let n = tls.try_write(&chunk).unwrap();
        if n == 0 {
            break;
        }
        written += n;
    }
    assert!(tls.pending(), "a full socket leaves records waiting");
    let reader = tokio::spawn(async move {
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        while total < written {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0 && buf[..n].iter().all(|&b| b == 7), "the bytes written, in order");
            total += n;
        }
        total
    });
    while tls.pending() {
        tls.tcp().writable().await.unwrap();
        tls.try_write(&[]).unwrap();
    }
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap(), written);
}

#[tokio::test]
async fn garbage_instead_of_a_hello_fails_the_handshake() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (s, mut c) = pair().await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n").await.unwrap();
    let err = accept(s, pki.server.clone()).await.err().expect("garbage is refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    // The client hears why: one fatal alert record, then the end.
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    assert_eq!(&out[..], &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32], "a decode_error alert");
}

#[tokio::test]
async fn a_client_gone_mid_handshake_is_an_error_not_a_hang() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (s, mut c) = pair().await;
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    drop(c);
    let err = tokio::time::timeout(Duration::from_secs(5), accept(s, pki.server.clone())).await.unwrap().err();
    assert_eq!(err.expect("refused").kind(), io::ErrorKind::UnexpectedEof);
}

/// A client's KeyUpdate asks for ours: the answer rustls owes goes out before anything the
/// server encrypts after it, under the new key, or the client could not read on.
#[tokio::test]
async fn a_key_update_from_the_client_is_answered_in_order() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (mut tls, mut c) = connected(&pki).await;
    for round in 0..3u8 {
        c.get_mut().1.refresh_traffic_keys().unwrap();
        c.write_all(&[round; 100]).await.unwrap();
        let mut got = [0u8; 100];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round; 100]);
        tls.write_all(&[round + 10; 100]).await.unwrap();
        let mut back = [0u8; 100];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, [round + 10; 100]);
    }
}

#[tokio::test]
async fn every_suite_and_version_round_trips_on_our_records() {
    use rustls::crypto::ring::cipher_suite as cs;
    for suite in [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_CHACHA20_POLY1305_SHA256] {
        round_trip_with(&[&rustls::version::TLS13], Some(suite)).await;
    }
    for suite in [
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        round_trip_with(&[&rustls::version::TLS12], Some(suite)).await;
    }
}

/// The server moves to a new key before its AES-GCM limit, and the client reads on under it.
#[tokio::test]
async fn the_server_updates_its_key_at_the_record_limit() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (mut tls, mut c) = connected(&pki).await;
    match &mut tls.lock().engine {
        Engine::Records(r) => r.set_limit(3),
        _ => panic!("records after the handshake"),
    }
    for round in 0..10u8 {
        tls.write_all(&[round; 50]).await.unwrap();
        let mut back = [0u8; 50];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, [round; 50], "round {round}");
    }
    match &tls.lock().engine {
        Engine::Records(r) => assert!(r.tx_seq() <= 3, "sealed under new keys, not one key past its limit"),
        _ => unreachable!(),
    }
    // And the client's records still open.
    c.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    tls.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"still here");
}

/// A forged record fails the connection, and the client is told why in an alert it can read.
#[tokio::test]
async fn a_forged_record_fails_with_bad_record_mac() {
    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let pki = pki(versions);
        let (mut tls, mut c) = connected(&pki).await;
        // Written past the client's TLS: a record no key sealed.
        c.get_mut()
            .0
            .write_all(&[23, 3, 3, 0, 40].iter().copied().chain([0x5a; 40]).collect::<Vec<_>>())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let err = tls.read(&mut buf).await.expect_err("a forged record is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(tls.read(&mut buf).await.is_err(), "and stays failed");
        tls.flush().await.unwrap();
        let err = c.read(&mut buf).await.expect_err("the client hears an alert");
        assert!(err.to_string().contains("BadRecordMac"), "{err}");
    }
}

/// A record longer than TLS allows is refused at its header, before it is waited for.
#[tokio::test]
async fn an_oversized_record_is_refused_at_its_header() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (mut tls, mut c) = connected(&pki).await;
    c.get_mut().0.write_all(&[23, 3, 3, 0xff, 0xff]).await.unwrap();
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.unwrap().expect_err("refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

/// TLS 1.2 has no key update: at the record limit the connection ends with a close_notify,
/// after everything sealed before it, instead of sealing past the limit.
#[tokio::test]
async fn a_tls12_connection_at_the_record_limit_closes_cleanly() {
    let pki = pki(&[&rustls::version::TLS12]);
    let (tls, mut c) = connected(&pki).await;
    match &mut tls.lock().engine {
        Engine::Records(r) => r.set_limit(3),
        _ => panic!("records after the handshake"),
    }
    let mut sent = 0;
    let err = loop {
        match tls.try_write(&[9u8; 10]) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    std::future::poll_fn(|cx| tls.poll_flush_outbox(cx)).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, vec![9u8; sent], "what was sealed arrives, then a clean end");
    assert!(sent > 0);
}

/// Closing while the client's socket is full: close_notify and what was sealed before it go
/// out before the FIN, so a client that reads on sees everything, then a clean end (a FIN
/// sent at once cut the queue, and the client saw a truncated stream).
#[tokio::test]
async fn a_close_waits_for_what_is_queued_before_its_fin() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (tls, mut c) = connected(&pki).await;
    let mut sent = 0;
    while !tls.pending() {
        sent += tls.try_write(&[5u8; 16 * 1024]).unwrap();
    }
    let stream = crate::relay::Stream::Edge(Box::new(tls));
    let closing = tokio::spawn(async move { stream.linger(Duration::from_secs(10)).await });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .unwrap()
        .expect("a clean end, after close_notify");
    assert_eq!(got.len(), sent);
    assert!(got.iter().all(|&b| b == 5));
    drop(c);
    closing.await.unwrap();
}

/// Key updates with no data between them cost work and bring nothing: past rustls' allowance
/// the connection fails instead of answering them for ever.
#[tokio::test]
async fn a_flood_of_key_updates_fails_the_connection() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (mut tls, mut c) = connected(&pki).await;
    for _ in 0..40 {
        c.get_mut().1.refresh_traffic_keys().unwrap();
    }
    c.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.unwrap().expect_err("refused");
    assert!(err.to_string().contains("too many TLS key updates"), "{err}");
}

/// Data between key updates does not make them free: a client alternating a byte of data
/// with a key update is refused as one sending key updates alone, while data sent between
/// them still arrives until then.
#[tokio::test]
async fn key_updates_between_bytes_of_data_still_fail_the_connection() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (mut tls, mut c) = connected(&pki).await;
    for _ in 0..40 {
        c.write_all(b"x").await.unwrap();
        c.get_mut().1.refresh_traffic_keys().unwrap();
    }
    c.flush().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => panic!("a clean end instead of a refusal"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return e,
            }
        }
    })
    .await
    .unwrap();
    assert!(err.to_string().contains("too many TLS key updates"), "{err}");
    assert!(got.len() <= 33 && got.iter().all(|&b| b == b'x'), "{got:?}");
}

/// `data` sealed by the client, then `tail`, in one write on its socket: both land in one read.
async fn sealed_then(c: &mut tokio_rustls::client::TlsStream<TcpStream>, data: &[u8], tail: &[u8]) {
    use std::io::Write;
    let (tcp, conn) = c.get_mut();
    conn.writer().write_all(data).unwrap();
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    wire.extend_from_slice(tail);
    tcp.write_all(&wire).await.unwrap();
}

/// Reads until an error or the end: what came, and how it ended.
async fn read_out(tls: &mut EdgeTls) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("an end, not a hang");
    (got, end)
}

/// A record that does not open, right behind one that does: the client's data before it is
/// still delivered (its last message, its Close), then the connection fails.
#[tokio::test]
async fn data_before_a_bad_record_in_the_same_read_is_delivered() {
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let pki = pki(&[v]);
        let (mut tls, mut c) = connected(&pki).await;
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        forged.extend_from_slice(&[7u8; 0x20]);
        sealed_then(&mut c, b"last words", &forged).await;
        let (got, end) = read_out(&mut tls).await;
        assert_eq!(got, b"last words", "{v:?}");
        assert_eq!(end.expect_err("the forged record fails it").kind(), io::ErrorKind::InvalidData, "{v:?}");
    }
}

/// A FIN in the middle of a record is a cut, not an end: reported as an error, so a relay
/// says the connection failed rather than closed.
#[tokio::test]
async fn a_fin_inside_a_record_is_an_error_not_a_clean_end() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (mut tls, mut c) = connected(&pki).await;
    sealed_then(&mut c, b"before", &[0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3]).await;
    c.get_mut().0.shutdown().await.unwrap();
    let (got, end) = read_out(&mut tls).await;
    assert_eq!(got, b"before");
    assert_eq!(end.expect_err("cut short").kind(), io::ErrorKind::UnexpectedEof);
    assert!(tls.lock().inbox.is_empty(), "nothing kept once the stream is over");
}

/// A connection whose client's bytes after its first flight reach the server in one piece:
/// what the client sends after its Finished (a key update, data) lands in the same read.
async fn coalescing_pair() -> (TcpStream, TcpStream) {
    let (s, relay_s) = pair().await;
    let (relay_c, c) = pair().await;
    let (mut from_c, mut to_c) = relay_c.into_split();
    let (mut from_s, mut to_s) = relay_s.into_split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut first = true;
        loop {
            if !first {
                // Everything the client wrote meanwhile goes over in one write.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            first = false;
            match from_c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_s, &mut to_c).await;
    });
    (s, c)
}

/// A key update right behind the client's Finished, in the same read as it: the keys are
/// handed over before rustls sees it, so its answer is ours and the client reads on.
#[tokio::test]
async fn a_key_update_right_after_the_handshake_survives_the_hand_over() {
    let pki = pki(&[&rustls::version::TLS13]);
    for round in 0..3u8 {
        let (s, c) = coalescing_pair().await;
        let connector = tokio_rustls::TlsConnector::from(pki.client.clone());
        let client = async {
            let mut c = connector.connect(ServerName::try_from("a.example").unwrap(), c).await.unwrap();
            c.get_mut().1.refresh_traffic_keys().unwrap();
            c.write_all(&[round; 10]).await.unwrap();
            c
        };
        let (tls, c) = tokio::join!(accept(s, pki.server.clone()), client);
        let (mut tls, mut c) = (tls.unwrap().0, c);
        let mut got = [0u8; 10];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round; 10]);
        tls.write_all(&[round; 10]).await.unwrap();
        let mut back = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, [round; 10], "round {round}");
    }
}
