//! A cluster CA and its certificates made by the real `switchyard certs`, and the flags or
//! client TLS that point a part at them.

use std::path::Path;
use std::process::Command;

use switchyard_model::tls::TlsFiles;

use crate::process::bin;

/// Runs the `switchyard` CLI (with no token from the environment) and returns its exit code,
/// stdout and stderr.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(bin("switchyard")).args(args).env_remove("SWITCHYARD_TOKEN").output().expect("run switchyard");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The CLI pointed at a cluster's endpoints.
pub struct Cli(pub String);

impl Cli {
    /// `switchyard --endpoints ENDPOINTS ARGS...`: exit code, stdout and stderr.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["--endpoints", self.0.as_str()];
        all.extend_from_slice(args);
        run_cli(&all)
    }

    /// [`Cli::run`], which must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    }
}

/// A CA in `dir` with one certificate per (name, role), valid for 127.0.0.1.
pub fn make_certs(dir: &Path, parts: &[(&str, &str)]) {
    let d = dir.to_str().expect("a UTF-8 path");
    let (code, _, err) = run_cli(&["certs", "init", d]);
    assert_eq!(code, 0, "certs init: {err}");
    for (name, role) in parts {
        let (code, _, err) = run_cli(&["certs", "issue", d, "--role", role, "--name", name, "--san", "127.0.0.1"]);
        assert_eq!(code, 0, "certs issue {name}: {err}");
    }
}

/// The CA and `name`'s certificate and key in `dir`.
pub fn cert_files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: Some(dir.join("ca.crt")),
        cert: Some(dir.join(format!("{name}.crt"))),
        key: Some(dir.join(format!("{name}.key"))),
    }
}

/// `--tls-ca`, `--tls-cert` and `--tls-key` for `name`.
pub fn cert_flags(dir: &Path, name: &str) -> Vec<String> {
    let f = cert_files(dir, name);
    let p = |p: Option<std::path::PathBuf>| p.expect("set above").display().to_string();
    vec!["--tls-ca".into(), p(f.ca), "--tls-cert".into(), p(f.cert), "--tls-key".into(), p(f.key)]
}
