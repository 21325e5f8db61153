//! The `switchyard` binary's own contract: help and version work, bad arguments get one line
//! and exit 2, `demo-backend` reports the address it bound. (Also makes
//! `cargo test --workspace` build this binary for the end-to-end tests.)

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().expect("run switchyard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("cluster") && out.contains("dev"), "{out}");
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("switchyard "), "{out}");
    let protocol = switchyard_model::version::PROTOCOL;
    assert!(out.contains(&format!("(protocol {protocol})")), "{out}");
}

#[test]
fn unknown_command_is_one_line() {
    let (code, _, err) = run(&["frobnicate"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("frobnicate"), "{err}");
}

#[test]
fn unknown_algorithm_is_one_line() {
    let (code, _, err) = run(&["pool", "create", "p", "--algorithm", "random"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("random") && err.contains("round-robin"), "{err}");
}

/// With port 0 the line names the port actually bound, and arrives while the server runs.
#[test]
fn demo_backend_prints_the_bound_address() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo-backend", "--listen", "127.0.0.1:0", "--name", "t"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run switchyard");
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    let addr =
        line.trim_end().strip_prefix("demo backend t on ws://").and_then(|a| a.parse::<std::net::SocketAddr>().ok());
    let connected = addr.map(std::net::TcpStream::connect);
    let _ = child.kill();
    let _ = child.wait();
    read.expect("read stdout");
    let addr = addr.unwrap_or_else(|| panic!("not `demo backend t on ws://ADDR`: {line:?}"));
    assert_ne!(addr.port(), 0, "{line:?}");
    connected.expect("address parsed above").expect("the printed address accepts connections");
}

/// A token goes out with the first request, before a node could say it wants TLS: without
/// the cluster CA it is sent only to this machine. Refused before anything is dialled (the
/// address is one nothing answers).
#[test]
fn a_token_is_not_sent_in_cleartext_to_another_host() {
    let secret = "sy_0123456789abcdef";
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--endpoints", "127.0.0.1:1,192.0.2.1:7400", "pool", "list"])
        .env("SWITCHYARD_TOKEN", secret)
        .env_remove("SWITCHYARD_ALLOW_CLEARTEXT_TOKEN")
        .env_remove("SWITCHYARD_TLS_CA")
        .output()
        .expect("run switchyard");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("192.0.2.1:7400") && err.contains("--tls-ca") && !err.contains(secret), "{err}");
}
