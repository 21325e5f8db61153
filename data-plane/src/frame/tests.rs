use super::*;

fn frame(fin: bool, op: u8, len: usize, masked: bool) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | op];
    let m = if masked { 0x80 } else { 0 };
    if len < 126 {
        f.push(m | len as u8);
    } else if len < 65536 {
        f.push(m | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(m | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        f.extend_from_slice(&[1, 2, 3, 4]);
    }
    f.extend(std::iter::repeat_n(7u8, len));
    f
}

/// A Close whose code may not be sent, split so that its start went out with an earlier
/// read: the output is mid-frame, and stays so (no proxy frame may follow that part).
#[test]
fn a_bad_close_split_across_reads_leaves_the_output_mid_frame() {
    let bad = close_frame(1005, "", Some([1, 2, 3, 4]));
    let mut t = Tracker::new(1 << 20, Peer::Client);
    assert_eq!(t.feed(&bad[..bad.len() - 1]), Ok(bad.len() - 1));
    assert!(matches!(t.feed(&bad[bad.len() - 1..]), Err((0, Violation::Protocol(_)))));
    assert!(!t.at_boundary());
    assert_eq!(t.feed(&frame(true, OP_TEXT, 3, true)), Ok(0), "nothing more passes");
    assert!(!t.at_boundary());
}

#[test]
fn boundaries_across_any_split() {
    let mut stream = frame(true, OP_TEXT, 5, true);
    stream.extend(frame(false, OP_BINARY, 300, true));
    stream.extend(frame(true, OP_PING, 3, true));
    stream.extend(frame(true, OP_CONTINUATION, 70_000, true));
    stream.extend(close_frame(1000, "", Some([1, 2, 3, 4])));
    for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
        let mut t = Tracker::new(1 << 20, Peer::Client);
        for c in stream.chunks(chunk) {
            t.feed(c).unwrap();
        }
        assert!(t.at_boundary(), "chunk {chunk}");
        assert_eq!(t.messages, 2, "chunk {chunk}");
        assert!(t.saw_close);
    }
    let mut t = Tracker::new(1 << 20, Peer::Client);
    t.feed(&stream[..10]).unwrap();
    assert!(!t.at_boundary());
}

#[test]
fn message_limit_counts_fragments_and_reports_the_safe_prefix() {
    let mut stream = frame(true, OP_TEXT, 10, false);
    let first = stream.len();
    stream.extend(frame(false, OP_BINARY, 60, false));
    stream.extend(frame(true, OP_CONTINUATION, 60, false));
    let mut t = Tracker::new(100, Peer::Server);
    let (ok, v) = t.feed(&stream).unwrap_err();
    assert_eq!(v, Violation::MessageTooBig);
    assert_eq!(ok, first + 2 + 60, "bytes before the frame that broke the limit");
}

#[test]
fn protocol_errors() {
    let mut t = Tracker::new(1 << 20, Peer::Server);
    assert!(t.feed(&frame(true, OP_CONTINUATION, 1, false)).is_err());
    let mut t = Tracker::new(1 << 20, Peer::Server);
    assert!(t.feed(&frame(true, OP_PING, 126, false)).is_err());
    let mut t = Tracker::new(1 << 20, Peer::Server);
    assert!(t.feed(&frame(true, 0x3, 1, false)).is_err());
}

#[test]
fn reserved_bits_are_an_agreed_extensions_only() {
    for rsv in [0x40, 0x20, 0x10] {
        let mut f = frame(true, OP_TEXT, 5, true);
        f[0] |= rsv;
        let mut none = Tracker::new(1 << 20, Peer::Client);
        assert_eq!(none.feed(&f), Err((0, Violation::Protocol("reserved bits set with no extension agreed"))));
        let mut agreed = Tracker::new(1 << 20, Peer::Client).with_extensions(true);
        assert_eq!(agreed.feed(&f), Ok(f.len()), "permessage-deflate's compressed frames, say");
    }
}

#[test]
fn proxy_frames_parse_back() {
    let mut t = Tracker::new(10, Peer::Client);
    t.feed(&close_frame(CLOSE_GOING_AWAY, "bye", Some([9, 8, 7, 6]))).unwrap();
    assert!(t.saw_close && t.at_boundary());
    let f = close_frame(1001, "", None);
    for mask in [None, Some([9, 8, 7, 6])] {
        assert_eq!(&*code_close(1002, mask), close_frame(1002, "", mask).as_slice(), "{mask:?}");
    }
    assert_eq!(f, vec![0x88, 2, 0x03, 0xE9]);
}

#[test]
fn masking_must_match_the_sender() {
    let mut t = Tracker::new(1 << 20, Peer::Client);
    assert_eq!(t.feed(&frame(true, OP_TEXT, 3, false)), Err((0, Violation::Protocol("unmasked frame from a client"))));
    let mut t = Tracker::new(1 << 20, Peer::Server);
    assert!(t.feed(&frame(true, OP_TEXT, 3, true)).is_err());
}

#[test]
fn lengths_must_be_minimal() {
    let ok = frame(true, OP_TEXT, 2, false);
    let mut long16 = vec![0x81, 126, 0, 5];
    long16.extend_from_slice(b"hello");
    let mut long64 = vec![0x82, 127];
    long64.extend_from_slice(&300u64.to_be_bytes());
    let mut huge = vec![0x82, 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    for bad in [long16, long64, huge] {
        let mut t = Tracker::new(u64::MAX, Peer::Server);
        let stream = [ok.clone(), bad].concat();
        assert_eq!(t.feed(&stream).unwrap_err().0, ok.len(), "the frame before goes through");
    }
}

#[test]
fn close_frames_are_checked_and_end_the_stream() {
    let mask = Some([9, 8, 7, 6]);
    for (payload, ok) in [
        (vec![], true),
        (vec![0x03], false),
        (1000u16.to_be_bytes().to_vec(), true),
        (4999u16.to_be_bytes().to_vec(), true),
        (1005u16.to_be_bytes().to_vec(), false),
        (999u16.to_be_bytes().to_vec(), false),
        (2000u16.to_be_bytes().to_vec(), false),
    ] {
        let f = control_frame(OP_CLOSE, &payload, mask);
        let mut t = Tracker::new(10, Peer::Client);
        // Byte by byte, so the code is read across chunks.
        let r: Result<Vec<usize>, _> = f.chunks(1).map(|c| t.feed(c)).collect();
        assert_eq!(r.is_ok(), ok, "{payload:?}");
    }
    let text = control_frame(OP_TEXT, b"hi", mask);
    let close = close_frame(1000, "bye", mask);
    let mut t = Tracker::new(10, Peer::Client);
    let stream = [text.clone(), close.clone(), text.clone()].concat();
    assert_eq!(t.feed(&stream), Ok(text.len() + close.len()), "nothing after the Close");
    assert_eq!(t.close_start, Some(text.len()));
    assert_eq!(t.feed(&text), Ok(0));
    assert_eq!(t.close_start, None);
}
