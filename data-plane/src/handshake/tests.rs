use super::*;

const GOOD: &str = "GET /chat?room=1 HTTP/1.1\r\nHost: Example.com:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nCookie: a=1; sid=xyz\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n";

#[test]
fn accepts_a_valid_upgrade() {
    let up = parse_request(GOOD.as_bytes()).unwrap();
    assert_eq!(up.host, "example.com");
    assert_eq!(up.path(), "/chat");
    assert_eq!(up.query_param("room").as_deref(), Some("1"));
    assert_eq!(up.cookie("sid").as_deref(), Some("xyz"));
    let fwd = String::from_utf8(forward_head(&up, "192.0.2.7".parse().unwrap(), "https")).unwrap();
    assert!(fwd.starts_with("GET /chat?room=1 HTTP/1.1\r\n"));
    assert!(fwd.contains("Sec-WebSocket-Protocol: chat, superchat\r\n"));
    assert!(fwd.contains("X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"));
    assert!(fwd.contains("X-Forwarded-Proto: https\r\n"));
    assert!(fwd.contains("Forwarded: for=192.0.2.7;proto=https;host=\"example.com\"\r\n"));
    assert!(fwd.ends_with("\r\n\r\n"));
}

#[test]
fn every_forwarded_for_line_comes_before_this_hop() {
    let head = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Forwarded-For: 6.6.6.6\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let up = parse_request(head.as_bytes()).unwrap();
    let fwd = String::from_utf8(forward_head(&up, "192.0.2.7".parse().unwrap(), "http")).unwrap();
    assert!(fwd.contains("X-Forwarded-For: 1.1.1.1, 6.6.6.6, 192.0.2.7\r\n"), "{fwd}");
    assert_eq!(fwd.matches("X-Forwarded-For").count(), 1, "{fwd}");
}

/// The client's `Connection` names its own headers away, not what the proxy routed and
/// authenticated by: `Host`, the handshake's `Sec-WebSocket-*` and the claim headers edge
/// authentication set all reach the backend.
#[test]
fn the_clients_connection_cannot_name_away_host_the_handshake_or_what_the_proxy_set() {
    let head = "GET /chat HTTP/1.1\r\nHost: tenant-a.example\r\nUpgrade: websocket\r\n\
                Connection: Upgrade, Host, X-User, Sec-WebSocket-Key, sec-websocket-version, Sec-WebSocket-Protocol, X-App\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\
                X-App: gone\r\n\r\n";
    let mut up = parse_request(head.as_bytes()).unwrap();
    // As connection.rs applies an edge-auth verdict.
    up.headers.push("X-User", b"ada");
    up.set_here.push("X-User".into());
    let fwd = String::from_utf8(forward_head(&up, "192.0.2.7".parse().unwrap(), "http")).unwrap();
    for kept in [
        "\r\nHost: tenant-a.example\r\n",
        "\r\nX-User: ada\r\n",
        "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "\r\nSec-WebSocket-Version: 13\r\n",
        "\r\nSec-WebSocket-Protocol: chat\r\n",
    ] {
        assert!(fwd.contains(kept), "{kept:?} missing from {fwd}");
    }
    assert!(!fwd.contains("X-App"), "the client's own listed header goes: {fwd}");
}

#[test]
fn the_backend_gets_no_hop_header_and_no_forwarding_header_of_the_clients_own() {
    let head = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Forwarded-For, X-User, Keep-Alive\r\n\
                Keep-Alive: 5\r\nX-User: ada\r\nForwarded: for=10.0.0.1;proto=https;host=admin.internal\r\n\
                X-Forwarded-Ssl: on\r\nX-Forwarded-Host: admin.internal\r\nX_Forwarded_Proto: https\r\nX_User: root\r\n\
                X-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 10.9.9.9\r\nTrue-Client-IP: 10.9.9.9\r\nX-App: kept\r\n\
                X-Original-URL: /admin\r\nx-rewrite-url: /admin\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                Sec-WebSocket-Version: 13\r\n\r\n";
    let up = parse_request(head.as_bytes()).unwrap();
    let fwd = String::from_utf8(forward_head(&up, "192.0.2.7".parse().unwrap(), "http")).unwrap();
    // Named by the client's Connection (the next RFC 9110 proxy would drop them, this hop's
    // X-Forwarded-For with them): gone, and the proxy's own Connection sent.
    assert!(!fwd.contains("X-User") && !fwd.contains("Keep-Alive"), "{fwd}");
    assert_eq!(fwd.matches("Connection:").count(), 1, "{fwd}");
    assert!(fwd.contains("\r\nConnection: Upgrade\r\nX-Forwarded-Proto: http\r\n"), "{fwd}");
    // The client's own X-Forwarded-For went with its Connection; this hop's is written.
    assert!(fwd.contains("X-Forwarded-For: 192.0.2.7\r\n") && !fwd.contains("1.1.1.1"), "{fwd}");
    // The forwarding headers are this proxy's alone; underscore names go (CGI reads them as
    // the dash spelling).
    assert_eq!(fwd.matches("Forwarded:").count(), 1, "{fwd}");
    assert!(fwd.contains("Forwarded: for=192.0.2.7;proto=http;host=\"a\"\r\n"), "{fwd}");
    for gone in
        ["X-Forwarded-Ssl", "X-Forwarded-Host", "X_Forwarded_Proto", "X_User", "admin.internal", "10.9.9.9", "/admin"]
    {
        assert!(!fwd.contains(gone), "{gone} in {fwd}");
    }
    assert!(fwd.contains("Upgrade: websocket\r\n") && fwd.contains("X-App: kept\r\n"), "{fwd}");
}

#[test]
fn rejects_with_the_right_status() {
    let swap = |from: &str, to: &str| parse_request(GOOD.replace(from, to).as_bytes()).unwrap_err().status();
    assert_eq!(swap("Upgrade: websocket\r\n", ""), 426);
    assert_eq!(swap("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426);
    assert_eq!(swap("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400);
    assert_eq!(swap("GET /chat", "POST /chat"), 400);
    assert_eq!(swap("HTTP/1.1", "HTTP/1.0"), 400);
    assert_eq!(swap("Host: Example.com:8080\r\n", ""), 400);
    assert_eq!(parse_request(b"\x16\x03\x01garbage\r\n\r\n").unwrap_err().status(), 400);
}

#[test]
fn error_responses_are_http() {
    let r = String::from_utf8(error_response(&Reject::Unavailable, Some(3))).unwrap();
    assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    assert!(r.contains("Retry-After: 3\r\n"));
    assert_eq!(response_status(r.as_bytes()), Some(503));
    let agreed = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: \
                  permessage-deflate; client_max_window_bits=15\r\n\r\n";
    assert_eq!(response_head(agreed.as_bytes()), Some((101, true)));
    let empty = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions:  \r\n\r\n";
    assert_eq!(response_head(empty.as_bytes()), Some((101, false)));
}

/// A backend's 101 is held to what the client would hold it to (RFC 6455 §4.1).
#[test]
fn a_backends_101_is_checked_as_the_client_would_check_it() {
    assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455's example");
    let up = parse_request(GOOD.as_bytes()).unwrap();
    let answer = |extra: &str| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
    };
    assert_eq!(check_101(answer("").as_bytes(), &up), Ok(()));
    let odd = answer("")
        .replace("Upgrade: websocket", "Upgrade: WebSocket")
        .replace("Connection: Upgrade", "Connection: keep-alive, upgrade");
    assert_eq!(check_101(odd.as_bytes(), &up), Ok(()), "tokens in any case, in a list");
    for (what, head) in [
        ("no Upgrade", answer("").replace("Upgrade: websocket\r\n", "")),
        ("another protocol", answer("").replace("Upgrade: websocket", "Upgrade: h2c")),
        ("no Connection", answer("").replace("Connection: Upgrade\r\n", "")),
        ("a wrong accept", answer("").replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
        ("no accept", answer("").replace("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", "")),
        ("two accepts", answer("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n")),
        ("an extension not offered", answer("Sec-WebSocket-Extensions: permessage-deflate\r\n")),
    ] {
        assert!(check_101(head.as_bytes(), &up).is_err(), "{what}: {head}");
    }
    let offering = GOOD.replace("Cookie:", "Sec-WebSocket-Extensions: permessage-deflate\r\nCookie:");
    let up = parse_request(offering.as_bytes()).unwrap();
    assert_eq!(check_101(answer("Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(), &up), Ok(()));
}

/// The backend is asked for exactly WebSocket, whatever else the client's `Upgrade` lists.
#[test]
fn the_backend_is_asked_to_upgrade_to_websocket_alone() {
    let up = parse_request(GOOD.replace("Upgrade: websocket", "Upgrade: websocket, h2c").as_bytes()).unwrap();
    let fwd = String::from_utf8(forward_head(&up, "192.0.2.7".parse().unwrap(), "http")).unwrap();
    assert_eq!(fwd.matches("Upgrade:").count(), 1, "{fwd}");
    assert!(fwd.contains("\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n") && !fwd.contains("h2c"), "{fwd}");
}

fn refused(head: &str) -> Reject {
    parse_request(head.as_bytes()).unwrap_err()
}

#[test]
fn one_host_one_key_one_version() {
    let twice = |h: &str| GOOD.replace("\r\n\r\n", &format!("\r\n{h}\r\n\r\n"));
    assert_eq!(refused(&twice("Host: other.example")), Reject::BadRequest("more than one Host"));
    assert_eq!(refused(&twice("host: example.com")), Reject::BadRequest("more than one Host"));
    let key = "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==";
    assert_eq!(refused(&twice(key)), Reject::BadRequest("more than one Sec-WebSocket-Key"));
    assert_eq!(refused(&twice("Sec-WebSocket-Version: 13")), Reject::BadRequest("more than one Sec-WebSocket-Version"));
}

#[test]
fn a_key_is_sixteen_bytes_in_canonical_base64() {
    let with = |k: &str| GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", k);
    let bad = Reject::BadRequest("Sec-WebSocket-Key is not 16 bytes in base64");
    for k in [
        "dGhlIHNhbXBsZSBub25jZR==",
        "dGhlIHNhbXBsZSBub25jZQ=",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25j*Q==",
        "dGhlIHNhbXBsZSBub25jZQ==AA",
    ] {
        assert_eq!(refused(&with(k)), bad, "{k}");
    }
    for k in ["AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w==", "dGhlIHNhbXBsZSBub25jZg=="] {
        assert!(parse_request(with(k).as_bytes()).is_ok(), "{k}");
    }
}

#[test]
fn only_heads_naming_websocket_in_upgrade_take_the_websocket_path() {
    assert!(wants_websocket(GOOD.as_bytes()));
    assert!(wants_websocket(b"GET / HTTP/1.1\r\nupgrade :  h2c, WebSocket\r\n\r\n"));
    assert!(!wants_websocket(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(!wants_websocket(b"POST /upgrade HTTP/1.1\r\nUpgrade: h2c\r\nX-Note: websocket\r\n\r\n"));
    // The request line is not a header, whatever it says.
    assert!(!wants_websocket(b"GET /upgrade:websocket HTTP/1.1\r\nHost: x\r\n\r\n"));
}

#[test]
fn a_host_that_could_inject_into_forwarded_is_refused() {
    for bad in ["a\";for=6.6.6.6", "a;b", "a b", "user@host", "[::1", "[zz]", "host:", "host:99999x", ""] {
        let head = GOOD.replace("Host: Example.com:8080", &format!("Host: {bad}"));
        assert_eq!(refused(&head).status(), 400, "{bad:?}");
    }
    // Routed on the host alone: lower case, without port or brackets.
    for (good, host) in [
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("10.0.0.1", "10.0.0.1"),
        ("A-b.example_x.com", "a-b.example_x.com"),
        ("localhost:1", "localhost"),
    ] {
        let head = GOOD.replace("Host: Example.com:8080", &format!("Host: {good}"));
        assert_eq!(parse_request(head.as_bytes()).map(|u| u.host).ok().as_deref(), Some(host), "{good:?}");
    }
}

#[test]
fn an_upgrade_with_a_body_is_refused() {
    let with = |h: &str| GOOD.replace("\r\n\r\n", &format!("\r\n{h}\r\n\r\n"));
    assert_eq!(refused(&with("Content-Length: 5")).status(), 400);
    assert_eq!(refused(&with("Transfer-Encoding: chunked")).status(), 400);
    assert!(parse_request(with("Content-Length: 0").as_bytes()).is_ok());
}

#[test]
fn bare_lf_heads_end_at_once_and_are_refused() {
    let lf = GOOD.replace("\r\n", "\n");
    assert_eq!(head_end(lf.as_bytes()), Some(lf.len()), "the head is complete, not awaited");
    assert_eq!(refused(&lf), Reject::BadRequest("line ending without CR"));
    let mixed = GOOD.replacen("\r\n", "\n", 2);
    assert_eq!(refused(&mixed).status(), 400);
    assert_eq!(head_end(GOOD.as_bytes()), Some(GOOD.len()));
    assert_eq!(head_end(&GOOD.as_bytes()[..GOOD.len() - 1]), None);
}

/// A head that arrives in pieces ends where the whole one does, however it is split, with
/// bytes after it (a pipelined request, early frames) left alone.
#[test]
fn a_head_scanned_as_it_arrives_ends_where_the_whole_one_does() {
    for head in [GOOD.to_string(), GOOD.replace("\r\n", "\n"), format!("\r\n{GOOD}")] {
        let whole = format!("{head}\x01\x05hello");
        let want = head_end(whole.as_bytes());
        for step in [1, 2, 3, 7, 64, whole.len()] {
            let mut scan = HeadScan::default();
            let mut got = None;
            for end in (step..whole.len() + step).step_by(step) {
                got = scan.end(&whole.as_bytes()[..end.min(whole.len())]);
                if got.is_some() {
                    break;
                }
            }
            assert_eq!(got, want, "in pieces of {step}: {head:?}");
        }
    }
}

#[test]
fn absolute_form_targets_are_accepted_and_their_authority_wins() {
    let head = GOOD.replace("GET /chat?room=1", "GET http://Chat.Example:9000/chat?room=1");
    let up = parse_request(head.as_bytes()).unwrap();
    assert_eq!((up.host.as_str(), up.path(), up.query()), ("chat.example", "/chat", Some("room=1")));
    let fwd = String::from_utf8(forward_head(&up, "192.0.2.7".parse().unwrap(), "http")).unwrap();
    assert!(fwd.starts_with("GET /chat?room=1 HTTP/1.1\r\nHost: Chat.Example:9000\r\n"), "{fwd}");
    let bare = GOOD.replace("GET /chat?room=1", "GET wss://chat.example");
    assert_eq!(parse_request(bare.as_bytes()).unwrap().target, "/");
    for bad in ["GET ftp://x/ ", "GET http://u@x/ ", "GET http://x\"y/ ", "GET chat "] {
        assert_eq!(refused(&GOOD.replace("GET /chat?room=1 ", bad)).status(), 400, "{bad}");
    }
}

#[test]
fn the_header_count_is_bounded_by_bytes_only() {
    let many: String = (0..2000).map(|i| format!("X-{i}: v\r\n")).collect();
    let head = GOOD.replace("\r\n\r\n", &format!("\r\n{many}\r\n"));
    assert_eq!(parse_request(head.as_bytes()).unwrap().headers.len(), 2008);
}

/// Thousands of headers, and a `Connection` naming thousands of names, are forwarded in time
/// proportional to their size: the listed names are gathered once, not rescanned per header.
#[test]
fn a_connection_naming_thousands_of_headers_drops_exactly_those() {
    let many: String = (0..3000).map(|i| format!("X-{i}: v\r\n")).collect();
    let names: Vec<String> = (0..3000).filter(|i| i % 2 == 0).map(|i| format!("x-{i}")).collect();
    let head = GOOD
        .replace("Connection: keep-alive, Upgrade", &format!("Connection: Upgrade, {}", names.join(", ")))
        .replace("\r\n\r\n", &format!("\r\n{many}\r\n"));
    let up = parse_request(head.as_bytes()).unwrap();
    let fwd = String::from_utf8(forward_head(&up, "192.0.2.7".parse().unwrap(), "http")).unwrap();
    for i in [0, 2, 1998, 2998] {
        assert!(!fwd.contains(&format!("\r\nX-{i}: v\r\n")), "X-{i} was listed");
    }
    for i in [1, 3, 1999, 2999] {
        assert!(fwd.contains(&format!("\r\nX-{i}: v\r\n")), "X-{i} was not listed");
    }
}

#[test]
fn a_header_added_to_a_head_ends_it_in_crlf_whatever_it_ended_in() {
    for head in ["HTTP/1.1 401 No\r\nA: 1\r\n\r\n", "HTTP/1.1 401 No\nA: 1\n\n", "HTTP/1.1 401 No\r\nA: 1\r\n\n"] {
        let mut h = head.as_bytes().to_vec();
        add_header(&mut h, b"Connection: close");
        assert_eq!(
            String::from_utf8(h).unwrap().replace("\r\n", "|").replace('\n', "|"),
            "HTTP/1.1 401 No|A: 1|Connection: close||"
        );
    }
}
