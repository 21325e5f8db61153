//! The `switchyard` binary's own contract: help and version work, bad arguments get one line
//! and exit 2. (Also makes `cargo test --workspace` build this binary for the end-to-end tests.)

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
}

#[test]
fn unknown_command_is_one_line() {
    let (code, _, err) = run(&["frobnicate"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("frobnicate"), "{err}");
}
