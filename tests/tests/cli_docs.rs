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
