//! Properties of the record layer, the first code to see a wss client's bytes once the
//! handshake is over: arbitrary bytes never panic or stall it, a record changed in any byte
//! never opens, and what is sealed opens to itself whatever the reads it arrives in.

use proptest::prelude::*;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;

use super::*;

/// The suites whose keys are 32 bytes (rustls' `AeadKey` is made from 32 bytes); AES-128-GCM
/// is covered by the handshakes against rustls, OpenSSL and Chromium.
fn records(tls13: bool, chacha: bool, key: u8) -> Records {
    Records::for_tests(tls13, move || {
        let (key, iv) = (AeadKey::from([key; 32]), Iv::from([key.wrapping_add(1); 12]));
        if chacha {
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
        } else {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        }
    })
}

/// Opens every whole record of `buf` as a read would, from `at`; what came out as data, and
/// whether a record failed. Each turn moves on or stops, so this ends.
fn open_all(r: &mut Records, buf: &mut [u8], at: &mut usize, data: &mut Vec<u8>) -> Result<bool, Fail> {
    let (mut outbox, mut key) = (Vec::new(), None);
    loop {
        let Some(len) = r.whole(&buf[*at..])? else { return Ok(false) };
        assert!(len >= HEADER, "a record is at least its header");
        match r.open(&mut buf[*at..*at + len], &mut outbox, &mut key)? {
            Opened::Data(range) => data.extend_from_slice(&buf[*at + range.start..*at + range.end]),
            Opened::Closed => return Ok(true),
            Opened::Nothing => {}
        }
        *at += len;
    }
}

/// Seals `plain` as application data.
fn sealed(r: &mut Records, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; plain.len() + (plain.len() / MAX_PLAIN + 2) * OVERHEAD];
    let n = r.seal_data(plain, &mut out).expect("seals");
    out.truncate(n);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_or_stall(
        tls13 in any::<bool>(),
        chacha in any::<bool>(),
        header in prop::option::of((any::<u8>(), 0u16..20_000)),
        mut bytes in prop::collection::vec(any::<u8>(), 0..3000),
    ) {
        // Half the time the bytes start with a plausible header, so they reach the AEAD.
        if let Some((typ, len)) = header {
            let mut h = vec![typ, 3, 3];
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&bytes);
            bytes = h;
        }
        let mut r = records(tls13, chacha, 7);
        let (mut at, mut data) = (0, Vec::new());
        let _ = open_all(&mut r, &mut bytes, &mut at, &mut data);
        prop_assert!(data.is_empty(), "no key sealed these bytes, so none of them is data");
    }

    #[test]
    fn a_record_changed_in_any_byte_never_opens(
        tls13 in any::<bool>(),
        chacha in any::<bool>(),
        plain in prop::collection::vec(any::<u8>(), 1..300),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let mut sealer = records(tls13, chacha, 9);
        let mut rec = sealed(&mut sealer, &plain);
        let i = at % rec.len();
        rec[i] ^= flip;
        let mut r = records(tls13, chacha, 9);
        let (mut pos, mut data) = (0, Vec::new());
        let res = open_all(&mut r, &mut rec, &mut pos, &mut data);
        prop_assert!(data.is_empty(), "byte {i} changed, yet {} bytes opened", data.len());
        // A changed length leaves the record waiting for more; anything else fails now.
        prop_assert!(matches!(res, Err(_) | Ok(false)));
    }

    #[test]
    fn sealed_records_open_to_what_was_sealed_whatever_the_reads(
        tls13 in any::<bool>(),
        chacha in any::<bool>(),
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40_000), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut sealer = records(tls13, chacha, 3);
        let mut wire = Vec::new();
        let mut plain = Vec::new();
        for m in &messages {
            wire.extend_from_slice(&sealed(&mut sealer, m));
            plain.extend_from_slice(m);
        }
        // The wire arrives in reads cut at arbitrary points; a read opens every whole record
        // it completes and keeps the rest for the next, as `EdgeTls::read_some` does.
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut r = records(tls13, chacha, 3);
        let (mut buf, mut data) = (Vec::new(), Vec::new());
        let mut from = 0;
        for p in points {
            buf.extend_from_slice(&wire[from..p]);
            from = p;
            let mut at = 0;
            prop_assert!(!open_all(&mut r, &mut buf, &mut at, &mut data).expect("opens"));
            buf.drain(..at);
        }
        prop_assert!(buf.is_empty(), "every record opened");
        prop_assert_eq!(data, plain);
    }
}

/// One application data record with nothing in it (`seal` makes none for no data).
fn empty(r: &mut Records) -> Vec<u8> {
    let mut out = vec![0u8; OVERHEAD];
    let n = r.seal_one(APPLICATION_DATA, b"", &mut out, None).expect("seals");
    out.truncate(n);
    out
}

/// Empty records are taken a few at a time, as OpenSSL takes them, but not without end: a
/// stream of them would cost an open each and carry nothing.
#[test]
fn empty_records_in_a_row_are_refused_past_a_few_and_data_resets_the_count() {
    for (tls13, chacha) in [(true, false), (false, false), (true, true)] {
        let mut sealer = records(tls13, chacha, 9);
        let mut r = records(tls13, chacha, 9);
        let mut wire = Vec::new();
        for _ in 0..EMPTY_IN_A_ROW {
            wire.extend_from_slice(&empty(&mut sealer));
        }
        wire.extend_from_slice(&sealed(&mut sealer, b"x"));
        for _ in 0..EMPTY_IN_A_ROW {
            wire.extend_from_slice(&empty(&mut sealer));
        }
        let (mut at, mut data) = (0, Vec::new());
        assert!(!open_all(&mut r, &mut wire, &mut at, &mut data).expect("as many as allowed, twice"));
        assert_eq!(data, b"x");
        let mut more = empty(&mut sealer);
        let (mut at, mut data) = (0, Vec::new());
        let e = open_all(&mut r, &mut more, &mut at, &mut data).expect_err("one more is refused");
        assert_eq!(e.alert, Some(AlertDescription::UnexpectedMessage), "tls13 {tls13}");
    }
}

/// A connection moving records finds its built keys kept on its thread, and they go when it
/// does (see `keys`).
#[test]
fn a_busy_connection_keeps_its_keys_on_its_thread_until_it_ends() {
    let mut sealer = records(true, false, 5);
    let mut r = records(true, false, 5);
    let mut wire = sealed(&mut sealer, b"hello");
    let (sealer_tx, r_rx) = (sealer.tx.id(), r.rx.id());
    assert!(keys::is_kept(sealer_tx), "the key that sealed is kept for the next write");
    let (mut at, mut data) = (0, Vec::new());
    open_all(&mut r, &mut wire, &mut at, &mut data).expect("opens");
    assert_eq!(data, b"hello");
    assert!(keys::is_kept(r_rx), "the key that opened is kept for the next read");
    drop((r, sealer));
    assert!(!keys::is_kept(r_rx) && !keys::is_kept(sealer_tx), "an ended connection's keys are dropped");
}

/// Keys are kept in a table of a few slots per thread, so directions share slots: one never
/// opens or seals with another's key, whatever the order they take turns in.
#[test]
fn directions_that_share_a_kept_slot_never_use_each_others_keys() {
    for (tls13, chacha) in [(true, false), (false, false), (true, true)] {
        let (mut a_tx, mut a_rx) = (records(tls13, chacha, 1), records(tls13, chacha, 1));
        let (mut b_tx, mut b_rx) = (records(tls13, chacha, 2), records(tls13, chacha, 2));
        // b's directions fall in a's slots, under other secrets.
        let secrets = |k: u8| {
            let (key, iv) = (AeadKey::from([k; 32]), Iv::from([k.wrapping_add(1); 12]));
            if chacha {
                ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
            } else {
                ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            }
        };
        b_tx.tx = keys::same_slot(&a_tx.tx, secrets(2));
        b_rx.rx = keys::same_slot(&a_rx.rx, secrets(2));
        for i in 0..6u8 {
            let (mut wa, mut wb) = (sealed(&mut a_tx, &[i; 10]), sealed(&mut b_tx, &[i + 100; 10]));
            let (mut at, mut data) = (0, Vec::new());
            open_all(&mut b_rx, &mut wb, &mut at, &mut data).expect("b opens what b sealed");
            let (mut at2, mut data2) = (0, Vec::new());
            open_all(&mut a_rx, &mut wa, &mut at2, &mut data2).expect("a opens what a sealed");
            assert_eq!((data, data2), (vec![i + 100; 10], vec![i; 10]), "tls13 {tls13} chacha {chacha}");
        }
    }
}
