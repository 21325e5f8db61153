//! Shell completions and the man page come from the CLI's own definition, so they list
//! every command the CLI has (the newest included).

use switchyard_tests::run_cli;

#[test]
fn completions_and_man_page_cover_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run_cli(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for word in ["switchyard", "snapshot", "pool", "backend"] {
            assert!(out.contains(word), "{shell} completions mention {word}");
        }
    }
    let (code, out, err) = run_cli(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".TH switchyard"), "a roff man page: {}", &out[..out.len().min(200)]);
    assert!(out.contains("snapshot") && out.contains("completions"), "the man page lists the subcommands");
    let (code, _, err) = run_cli(&["completions", "nosh"]);
    assert_ne!(code, 0, "an unknown shell is refused");
    assert!(err.contains("nosh"), "{err}");
}

/// `switchyard completions bash | head -1`: the reader closes the pipe early, and the CLI ends
/// quietly with status 0 (it panicked with a backtrace before). These scripts are larger than
/// a pipe's 64 KiB buffer, so the CLI is still writing when the pipe closes.
#[test]
fn a_reader_that_closes_the_pipe_early_ends_the_cli_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    for args in [["completions", "bash"], ["completions", "zsh"]] {
        let mut child = Command::new(switchyard_tests::bin("switchyard"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read a little, then hang up: the CLI's next writes meet a closed pipe.
        let mut first = [0u8; 16];
        child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
