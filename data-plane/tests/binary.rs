//! The `switchyard-proxy` binary refuses bad configuration with one clear line. (Also makes
//! `cargo test --workspace` build this binary for the end-to-end tests.)

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-proxy")).args(args).output().expect("run proxy");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn bad_configuration_is_refused_with_a_message() {
    let (code, err) = run(&["--control-plane", " , "]);
    assert_eq!(code, 1);
    assert!(err.contains("--control-plane needs at least one host:port"), "{err}");
    let (code, err) = run(&["--workers", "0", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--workers must be 1 or more"), "{err}");
    let (code, err) = run(&["--backend-unacked-timeout-ms", "4294967296", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--backend-unacked-timeout-ms 4294967296 is over 4294967295"), "{err}");
    let (code, err) = run(&["--backend-keepalive-ms", "32767001", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--backend-keepalive-ms 32767001 is over 32767000"), "{err}");
    let (code, err) = run(&["--proxy-id", "edge\u{1b}[2J", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("must be 1 to 256 bytes with no control characters"), "{err}");
    // A descriptor limit that leaves no room for one connection is said at start (it read as
    // "no cap" and the proxy accepted without limit).
    let bin = env!("CARGO_BIN_EXE_switchyard-proxy");
    let script = format!("ulimit -n 100 && exec {bin} --listen 127.0.0.1:0 --admin 127.0.0.1:0");
    let out = Command::new("sh").args(["-c", &script]).output().expect("run proxy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("file descriptor limit (100) leaves no room for a proxied connection"), "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = run(&["--listen", &addr, "--admin", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}
