//! Everything the CLI prints goes through here: tables for people, JSON for scripts.

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};
use switchyard_proto::v1::*;

mod access;
mod view;

#[cfg(test)]
pub(crate) use view::{algorithm, health_check_kind};
use view::{
    backend_json, backend_row, change_json, member_json, member_status_json, pool_json, pool_row, role, route_json,
    route_row, session_json, settings_json, BACKEND_HEADERS, POOL_HEADERS, ROUTE_HEADERS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// The widest a column is padded to.
const MAX_WIDTH: usize = 200;

/// Prints `rows` under `headers` with aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        // Columns are aligned up to a width; a longer cell runs past (a width over u16 panics).
        let s: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i].min(MAX_WIDTH))).collect();
        outln!("{}", s.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn print_json(v: &Value) {
    outln!("{}", serde_json::to_string_pretty(v).expect("json values print"));
}

/// Prints command results in the format the user chose; remote commands hold one in their context.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub format: Format,
}

impl Out {
    /// JSON as one pretty document, or one table.
    fn emit(&self, json: impl FnOnce() -> Value, headers: &[&str], rows: impl FnOnce() -> Vec<Vec<String>>) {
        match self.format {
            Format::Json => print_json(&json()),
            Format::Table => table(headers, &rows()),
        }
    }

    pub fn pool(&self, p: &Pool) {
        self.emit(|| pool_json(p), POOL_HEADERS, || vec![pool_row(p)]);
    }

    pub fn pools(&self, ps: &[Pool]) {
        self.emit(
            || json!(ps.iter().map(pool_json).collect::<Vec<_>>()),
            POOL_HEADERS,
            || ps.iter().map(pool_row).collect(),
        );
    }

    pub fn backend(&self, b: &Backend) {
        self.emit(|| backend_json(b), BACKEND_HEADERS, || vec![backend_row(b)]);
    }

    /// Backends with their live connection counts from `loads` (0 when a backend has none).
    pub fn backends(&self, backends: &[Backend], loads: &[BackendLoad]) {
        let conns = |b: &Backend| {
            loads.iter().find(|l| l.pool == b.pool && l.address == b.address).map_or(0, |l| l.connections)
        };
        let mut headers = BACKEND_HEADERS.to_vec();
        headers.push("CONNECTIONS");
        let json = || {
            json!(backends
                .iter()
                .map(|b| {
                    let mut v = backend_json(b);
                    v["connections"] = json!(conns(b));
                    v
                })
                .collect::<Vec<_>>())
        };
        let rows = || {
            backends
                .iter()
                .map(|b| {
                    let mut row = backend_row(b);
                    row.push(conns(b).to_string());
                    row
                })
                .collect()
        };
        self.emit(json, &headers, rows);
    }

    pub fn route(&self, r: &Route) {
        self.emit(|| route_json(r), ROUTE_HEADERS, || vec![route_row(r)]);
    }

    pub fn routes(&self, rs: &[Route]) {
        self.emit(
            || json!(rs.iter().map(route_json).collect::<Vec<_>>()),
            ROUTE_HEADERS,
            || rs.iter().map(route_row).collect(),
        );
    }

    pub fn session(&self, s: &SessionBinding) {
        self.emit(
            || session_json(s),
            &["POOL", "KEY", "BACKEND"],
            || vec![vec![s.pool.clone(), s.key.clone(), s.backend.clone()]],
        );
    }

    /// Times as a person reads them (JSON keeps the milliseconds).
    pub fn sessions(&self, ss: &[SessionBinding]) {
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let rows = || {
            ss.iter()
                .map(|s| {
                    let (seen, ttl) = (ago(s.last_seen_ms, now_ms), ms_text(s.ttl_ms));
                    vec![s.pool.clone(), s.key.clone(), s.backend.clone(), seen, ttl]
                })
                .collect()
        };
        let headers = ["POOL", "KEY", "BACKEND", "LAST SEEN", "TTL"];
        self.emit(|| json!(ss.iter().map(session_json).collect::<Vec<_>>()), &headers, rows);
    }

    /// One row per setting, in the JSON's (alphabetical) order.
    pub fn settings(&self, s: &Settings) {
        let v = settings_json(s);
        let rows = || {
            let fields = v.as_object().expect("settings are an object");
            fields.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect()
        };
        self.emit(|| v.clone(), &["SETTING", "VALUE"], rows);
    }

    pub fn proxies(&self, ps: &[ProxyStatus]) {
        let json = || {
            json!(ps
                .iter()
                .map(|p| json!({
                    "proxy_id": p.proxy_id, "applied_revision": p.applied_revision,
                    "current_through": p.current_through.max(p.applied_revision),
                    "rejected_reason": p.rejected_reason, "last_report_ms": p.last_report_ms,
                    "connections": p.connections, "node": p.node,
                }))
                .collect::<Vec<_>>())
        };
        let rows = || {
            ps.iter()
                .map(|p| {
                    // What it is current through, as `cluster status` counts revisions: a
                    // proxy that has every change shows the cluster's revision.
                    let rev = p.current_through.max(p.applied_revision).to_string();
                    let conns = p.connections.to_string();
                    vec![p.proxy_id.clone(), rev, conns, p.node.clone(), p.rejected_reason.clone()]
                })
                .collect()
        };
        self.emit(json, &["PROXY", "REVISION", "CONNECTIONS", "REPORTS TO", "REJECTED"], rows);
    }

    pub fn members(&self, ms: &[Member]) {
        let rows = || {
            ms.iter()
                .map(|m| {
                    let leader = if m.leader { "*".into() } else { String::new() };
                    vec![m.id.to_string(), m.address.clone(), role(m.role).into(), leader]
                })
                .collect()
        };
        self.emit(|| json!(ms.iter().map(member_json).collect::<Vec<_>>()), &["ID", "ADDRESS", "ROLE", "LEADER"], rows);
    }

    /// A summary line over the members table, or one JSON document with both.
    pub fn cluster_status(&self, s: &ClusterStatusReply) {
        match self.format {
            Format::Json => print_json(&json!({
                "node_id": s.node_id,
                "cluster_id": s.cluster_id,
                "security": s.security,
                "leader_id": if s.leader_id == 0 { Value::Null } else { json!(s.leader_id) },
                "term": s.term,
                "applied_revision": s.applied_revision,
                "state": s.state,
                "snapshot_index": s.snapshot_index,
                "purged_index": s.purged_index,
                "feature_level": s.feature_level,
                "version": s.version,
                "protocol": s.protocol,
                "max_feature_level": s.max_feature_level,
                "joint": joint_json(s),
                "members": s.members.iter().map(member_status_json).collect::<Vec<_>>(),
            })),
            Format::Table => {
                let leader = if s.leader_id == 0 { "none".to_string() } else { s.leader_id.to_string() };
                outln!(
                    "answered by node {} ({}), leader {leader}, term {}, revision {}, cluster {}, transport {}",
                    s.node_id,
                    s.state,
                    s.term,
                    s.applied_revision,
                    if s.cluster_id.is_empty() { "unknown" } else { &s.cluster_id },
                    if s.security.is_empty() { "unknown" } else { &s.security }
                );
                // A node from before feature levels does not send one.
                let level = if s.feature_level == 0 { "unknown".to_string() } else { s.feature_level.to_string() };
                outln!("feature level {level}");
                if !s.joint_new_voters.is_empty() {
                    outln!(
                        "voter change under way: voters {} -> {}; until the leader finishes it, writes need a \
                         majority of both sets",
                        ids(&s.joint_old_voters),
                        ids(&s.joint_new_voters)
                    );
                }
                if s.security.starts_with("INSECURE") {
                    eprintln!(
                        "warning: node {} serves cleartext on a routable address (--insecure): anyone who can reach \
                         it can change the cluster",
                        s.node_id
                    );
                }
                self.member_versions(&s.members);
            }
        }
    }

    /// Members with what each runs ("?" for one that did not answer).
    fn member_versions(&self, ms: &[Member]) {
        let rows = || {
            ms.iter()
                .map(|m| {
                    let leader = if m.leader { "*".into() } else { String::new() };
                    let or_q = |s: &str| if s.is_empty() { "?".to_string() } else { s.to_string() };
                    let max = if m.max_feature_level == 0 { "?".into() } else { m.max_feature_level.to_string() };
                    let (version, protocol) = (or_q(&m.version), or_q(&m.protocol));
                    vec![m.id.to_string(), m.address.clone(), role(m.role).into(), leader, version, protocol, max]
                })
                .collect()
        };
        let heads = ["ID", "ADDRESS", "ROLE", "LEADER", "VERSION", "PROTOCOL", "MAX LEVEL"];
        self.emit(|| json!(ms.iter().map(member_status_json).collect::<Vec<_>>()), &heads, rows);
    }

    /// For writes that return no object: "`what` (revision N)", or `{"revision": N}`.
    pub fn revision(&self, what: &str, revision: u64) {
        match self.format {
            Format::Json => print_json(&json!({"revision": revision})),
            Format::Table => outln!("{what} (revision {revision})"),
        }
    }

    /// A saved backup.
    pub fn backup_saved(&self, file: &Path, revision: u64, bytes: usize, sha256: &str) {
        match self.format {
            Format::Json => print_json(
                &json!({"file": file.display().to_string(), "revision": revision, "bytes": bytes, "sha256": sha256}),
            ),
            Format::Table => {
                outln!("saved revision {revision} to {} ({bytes} bytes, sha256 {sha256})", file.display())
            }
        }
    }

    /// A stream: one compact JSON line per event, or one line per change, so it can be piped.
    pub fn watch_event(&self, ev: &WatchEvent) {
        match (&ev.kind, self.format) {
            (Some(watch_event::Kind::Snapshot(t)), Format::Json) => outln!(
                "{}",
                json!({"revision": ev.revision, "snapshot": {"pools": t.pools.len(), "backends": t.backends.len(), "routes": t.routes.len(), "sessions": t.sessions.len()}})
            ),
            (Some(watch_event::Kind::Snapshot(t)), Format::Table) => outln!(
                "{:>8}  state: {} pools, {} backends, {} routes, {} sessions",
                ev.revision,
                t.pools.len(),
                t.backends.len(),
                t.routes.len(),
                t.sessions.len()
            ),
            (Some(watch_event::Kind::Changes(cs)), Format::Json) => outln!(
                "{}",
                json!({"revision": ev.revision, "changes": cs.changes.iter().map(change_json).collect::<Vec<_>>()})
            ),
            (Some(watch_event::Kind::Changes(cs)), Format::Table) => {
                for c in &cs.changes {
                    outln!("{:>8}  {}", ev.revision, change_json(c));
                }
            }
            // Progress says the stream is alive; it carries no change to show.
            (Some(watch_event::Kind::Progress(_)) | None, _) => {}
        }
    }
}

/// Writes to standard output (see `outln!`): a closed pipe ends the command with status 0, as
/// the reader asked for no more; any other failure is one line and status 1.
pub fn write_out(args: std::fmt::Arguments) {
    let r = std::io::stdout().lock().write_fmt(args);
    if let Err(e) = r {
        stdout_failed(e);
    }
}

/// [`write_out`] for bytes made elsewhere (completion scripts, the man page).
pub fn write_bytes_out(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|_| out.flush()) {
        stdout_failed(e);
    }
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    error(format_args!("cannot write to standard output: {e}"));
    std::process::exit(1);
}

/// One line on stderr, prefixed with the program's name.
pub fn error(line: impl Display) {
    eprintln!("switchyard: {line}");
}

/// A progress note on stderr, unprefixed; stdout stays for results.
pub fn note(line: impl Display) {
    eprintln!("{line}");
}

/// The address actually bound, flushed: scripts and tests read it through a pipe.
pub fn demo_backend(name: &str, addr: SocketAddr) {
    outln!("demo backend {name} on ws://{addr}");
    flush();
}

/// What `switchyard dev` started, and what to try with it.
pub fn dev_banner(
    proxies: &[(SocketAddr, SocketAddr, SocketAddr)],
    endpoints: &[String],
    backends: &[String],
    data: &Path,
    certs: &Path,
) {
    outln!("Switchyard dev is up: 3 control-plane nodes, 2 proxies, 3 echo backends (pool \"demo\").");
    for (ws, wss, admin) in proxies {
        outln!(
            "  ws://{ws}/  wss://localhost:{}/  proxy (status: http://{admin}/status, metrics: /metrics)",
            wss.port()
        );
    }
    outln!("  control plane: {}", endpoints.join(","));
    outln!("  backends:      {}", backends.join(", "));
    outln!("  data:          {}", data.display());
    outln!("  cluster CA:    {} (every part talks mTLS)", certs.join("ca.crt").display());
    outln!();
    outln!("Try:");
    outln!("  export SWITCHYARD_ENDPOINTS={}", endpoints.join(","));
    outln!("  export SWITCHYARD_TLS_CA={}", certs.join("ca.crt").display());
    outln!("  export SWITCHYARD_TLS_CERT={}", certs.join("admin.crt").display());
    outln!("  export SWITCHYARD_TLS_KEY={}", certs.join("admin.key").display());
    outln!("  switchyard cluster status");
    outln!("  switchyard backend list demo");
    outln!("  switchyard proxy list");
    outln!("  switchyard watch");
    if let Some((ws, wss, _)) = proxies.first() {
        outln!("Connect any WebSocket client to ws://{ws}/ : the backend greets with its name and echoes.");
        outln!("Plain HTTP goes through the same listener: `curl http://{ws}/` answers with a backend's name.");
        outln!("Or over TLS to wss://localhost:{}/ , trusting the CA {}.", wss.port(), certs.join("ca.crt").display());
    }
    outln!();
    outln!("Ctrl-C stops it.");
    flush();
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// Node ids as "1,2,3".
fn ids(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// A voter change under way as `{"old_voters": [..], "new_voters": [..]}`, or null.
fn joint_json(s: &ClusterStatusReply) -> Value {
    if s.joint_new_voters.is_empty() {
        return Value::Null;
    }
    json!({"old_voters": s.joint_old_voters, "new_voters": s.joint_new_voters})
}

/// `ms` milliseconds as "1m 30s" (whole seconds; "0s" below one).
fn ms_text(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

/// How long before `now_ms` the time `at_ms` was: "12s ago" ("just now" within a second, or
/// when the clocks disagree).
fn ago(at_ms: u64, now_ms: u64) -> String {
    match now_ms.saturating_sub(at_ms) {
        0..=999 => "just now".into(),
        d => format!("{} ago", ms_text(d)),
    }
}

#[cfg(test)]
mod width_tests {
    #[test]
    fn times_read_as_ages_and_durations() {
        assert_eq!(super::ago(1_000, 1_500), "just now");
        assert_eq!(super::ago(5_000, 1_000), "just now", "a clock ahead of ours");
        assert_eq!(super::ago(0, 90_500), "1m 30s ago");
        assert_eq!(super::ms_text(1_800_000), "30m");
    }

    /// A cell wider than a format width may be (u16) is printed, not a panic.
    #[test]
    fn a_cell_wider_than_any_format_width_prints() {
        super::table(&["ZONE"], &[vec!["z".repeat(70_000)]]);
    }
}
