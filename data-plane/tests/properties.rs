//! Properties of the two parsers that see hostile bytes first: the handshake reader and the
//! frame tracker. Arbitrary bytes, split at arbitrary points, never panic or stall them; on
//! every valid stream the tracker agrees with a straightforward decoder of the whole buffer.

use proptest::prelude::*;
use switchyard_proxy::frame::{Peer, Tracker, Violation};
use switchyard_proxy::handshake::{head_end, normalize, parse_request};

/// Cuts `len` bytes into chunks at the given points (each taken modulo the length).
fn chunks(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut at: Vec<usize> = cuts.iter().map(|c| if len == 0 { 0 } else { c % len }).collect();
    at.push(0);
    at.push(len);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| (w[0], w[1])).collect()
}

/// A frame as a client sends it (masked), with the minimal length encoding.
fn encode(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// What the reference decoder makes of a whole buffer of valid frames.
#[derive(Debug, PartialEq)]
struct Decoded {
    /// Offsets just past each frame.
    frame_ends: Vec<usize>,
    messages: u64,
    close: bool,
}

/// Decodes frame by frame, reading lengths the obvious way (no state across reads).
fn reference(b: &[u8]) -> Decoded {
    let (mut i, mut frame_ends, mut messages, mut close) = (0, Vec::new(), 0, false);
    while i < b.len() && !close {
        let (fin, op) = (b[i] & 0x80 != 0, b[i] & 0x0f);
        let masked = b[i + 1] & 0x80 != 0;
        let (len, hdr) = match b[i + 1] & 0x7f {
            126 => (u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize, 4),
            127 => (u64::from_be_bytes(b[i + 2..i + 10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        i += hdr + if masked { 4 } else { 0 } + len;
        frame_ends.push(i);
        match op {
            0x8 => close = true,
            0x0..=0x2 if fin => messages += 1,
            _ => {}
        }
    }
    Decoded { frame_ends, messages, close }
}

/// One data message in fragments, with control frames between them, as a strategy.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let size = prop_oneof![8 => 0usize..130, 3 => 126usize..400, 1 => Just(65_541usize)];
    let fragment = (size, any::<u8>(), any::<[u8; 4]>());
    let control = (prop_oneof![Just(0x9u8), Just(0xAu8)], 0usize..=125, any::<[u8; 4]>());
    (any::<bool>(), prop::collection::vec(fragment, 1..4), prop::collection::vec(prop::option::of(control), 3))
        .prop_map(|(text, frags, controls)| {
            let mut out = Vec::new();
            let n = frags.len();
            for (k, (len, fill, mask)) in frags.into_iter().enumerate() {
                let op = if k == 0 {
                    if text {
                        0x1
                    } else {
                        0x2
                    }
                } else {
                    0x0
                };
                let fin = if k + 1 == n { 0x80 } else { 0 };
                out.extend(encode(fin | op, &vec![fill; len], mask));
                if let Some(Some((cop, clen, cmask))) = controls.get(k) {
                    if k + 1 < n {
                        out.extend(encode(0x80 | cop, &vec![7; *clen], *cmask));
                    }
                }
            }
            out
        })
}

fn valid_stream() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let close_code = prop_oneof![Just(1000u16), Just(1001), Just(1011), 3000u16..5000];
    (
        prop::collection::vec(message(), 0..6),
        prop::option::of((close_code, 0usize..20, any::<[u8; 4]>())),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(msgs, close, tail)| {
            let mut s: Vec<u8> = msgs.concat();
            let closed = close.is_some();
            if let Some((code, reason, mask)) = close {
                let mut p = code.to_be_bytes().to_vec();
                p.extend(std::iter::repeat_n(b'r', reason));
                s.extend(encode(0x88, &p, mask));
                // Whatever follows a Close must not be passed on.
                s.extend(tail);
            }
            (s, closed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_tracker_agrees_with_the_reference_on_valid_streams(
        (stream, closed) in valid_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let want = reference(&stream);
        prop_assert_eq!(want.close, closed);
        let end = *want.frame_ends.last().unwrap_or(&0);
        let mut t = Tracker::new(u64::MAX, Peer::Client);
        let mut passed = 0;
        for (a, b) in chunks(stream.len(), &cuts) {
            let n = t.feed(&stream[a..b]).map_err(|e| TestCaseError::fail(format!("{e:?} at {a}")))?;
            prop_assert!(n <= b - a);
            passed += n;
            // Between frames exactly where the reference has a frame end (or before any).
            if b <= end {
                prop_assert_eq!(t.at_boundary(), b == 0 || want.frame_ends.contains(&b), "at {}", b);
            }
        }
        prop_assert_eq!(passed, if closed { end } else { stream.len() });
        prop_assert_eq!(t.messages, want.messages);
        prop_assert_eq!(t.saw_close, want.close);
        prop_assert!(t.at_boundary());
    }

    #[test]
    fn the_tracker_takes_any_bytes_at_any_split_the_same_way(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        client in any::<bool>(),
        limit in prop_oneof![Just(u64::MAX), 0u64..300],
    ) {
        let peer = if client { Peer::Client } else { Peer::Server };
        let mut whole = Tracker::new(limit, peer);
        let once = whole.feed(&bytes);
        let mut split = Tracker::new(limit, peer);
        let mut passed = 0;
        let mut failed: Option<(usize, Violation)> = None;
        for (a, b) in chunks(bytes.len(), &cuts) {
            match split.feed(&bytes[a..b]) {
                Ok(n) => passed += n,
                Err((n, v)) => {
                    failed = Some((passed + n, v));
                    break;
                }
            }
        }
        match (once, failed) {
            (Ok(n), None) => prop_assert_eq!(n, passed),
            // The same violation; when the bad frame began in an earlier chunk the split
            // feed reports the start of its own chunk, which is later.
            (Err((k, v)), Some((at, w))) => {
                prop_assert_eq!(v, w);
                prop_assert!(at >= k);
            }
            (a, b) => prop_assert!(false, "whole {:?} vs split {:?}", a, b),
        }
    }

    #[test]
    fn the_head_reader_takes_any_bytes_at_any_split(
        bytes in prop::collection::vec(any::<u8>(), 0..1500),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let whole = head_end(&bytes);
        let mut seen = None;
        for (_, b) in chunks(bytes.len(), &cuts) {
            if let Some(e) = head_end(&bytes[..b]) {
                prop_assert!(e <= b);
                seen.get_or_insert(e);
                prop_assert_eq!(Some(e), seen, "the end never moves once found");
            }
        }
        prop_assert_eq!(seen, whole);
        if let Some(e) = whole {
            let _ = parse_request(&bytes[..e]);
        }
        let _ = parse_request(&bytes);
    }

    #[test]
    fn a_valid_upgrade_parses_however_it_arrives(
        // Paths already normal (no dot segment, no empty one): kept exactly.
        path in prop::collection::vec("[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,8}", 0..6)
            .prop_flat_map(|segs| (Just(segs), any::<bool>()))
            .prop_map(|(segs, slash)| format!("/{}{}", segs.join("/"), if slash && !segs.is_empty() { "/" } else { "" })),
        host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,5})?(:[0-9]{1,5})?",
        extra in prop::collection::vec(("X-[A-Za-z]{1,10}", "[ -~]{0,30}"), 0..200),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (n, v) in &extra {
            head.push_str(&format!("{n}: {}\r\n", v.trim()));
        }
        head.push_str("\r\n");
        let b = head.as_bytes();
        for (_, end) in chunks(b.len(), &cuts) {
            prop_assert_eq!(head_end(&b[..end]), (end == b.len()).then_some(b.len()));
        }
        let up = parse_request(b).map_err(|e| TestCaseError::fail(format!("{e}: {head}")))?;
        prop_assert_eq!(up.path(), path.as_str());
        prop_assert_eq!(up.headers.len(), 5 + extra.len());
    }

    #[test]
    fn a_normalized_path_has_no_dot_segment_or_empty_one_and_normalizing_again_keeps_it(
        parts in prop::collection::vec(prop_oneof![
            Just("."), Just(".."), Just(""), Just("%2e"), Just("%2E%2e"), Just("%61"), Just("a"), Just("b.c"), Just("%20"),
        ], 0..10),
        query in prop::option::of("[a-z=&/.]{0,10}"),
    ) {
        let target = format!("/{}{}", parts.join("/"), query.map(|q| format!("?{q}")).unwrap_or_default());
        let once = normalize(&target).map_err(|e| TestCaseError::fail(format!("{e}: {target}")))?.into_owned();
        let path = once.split('?').next().unwrap_or("");
        prop_assert!(path.starts_with('/'), "{target} -> {once}");
        // Every segment but the last is a name; the last may be empty (a trailing slash).
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let (last, init) = segs.split_last().expect("a path has a segment");
        for seg in init {
            prop_assert!(!seg.is_empty() && *seg != "." && *seg != "..", "{target} -> {once}");
        }
        prop_assert!(*last != "." && *last != "..", "{target} -> {once}");
        prop_assert!(!path.to_ascii_lowercase().contains("%2e") && !path.contains("%61"), "{target} -> {once}");
        let again = normalize(&once).map_err(|e| TestCaseError::fail(format!("{e}: {once}")))?;
        prop_assert_eq!(again.as_ref(), once.as_str(), "{} is not a fixed point", once);
        // The query is the application's: passed on as it came.
        prop_assert_eq!(once.split_once('?').map(|(_, q)| q), target.split_once('?').map(|(_, q)| q));
    }
}
