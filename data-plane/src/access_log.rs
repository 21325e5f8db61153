//! Access logs: one line per connection when it ends, and one per refused handshake, as
//! JSON or logfmt, to stdout or a file. Connections hand a finished record to a bounded
//! queue and go on; one thread formats and writes, so the relay never waits on the disk. A
//! full queue drops the record and counts it (`access_log_dropped`) rather than slow traffic.
//! SIGUSR1 reopens the file, for log rotation.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::relay::Flow;

/// Records waiting for the writer; past this the newest are dropped.
const QUEUE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Logfmt,
}

/// Where lines go: `-` is stdout.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub format: Format,
}

/// One connection, or one refused handshake.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub client: Option<SocketAddr>,
    /// For wss: the TLS version and the server name the client asked for.
    pub tls: Option<(&'static str, Option<String>)>,
    pub host: Option<String>,
    /// For plain HTTP requests: the method (WebSocket connections are all GET upgrades).
    pub method: Option<String>,
    /// The request path, without the query (it may carry credentials).
    pub path: Option<String>,
    pub route: Option<String>,
    pub pool: Option<String>,
    pub backend: Option<String>,
    /// The session key's keyed hash (never the key).
    pub session: Option<String>,
    /// The status the client got: 101, or the refusal's.
    pub status: u16,
    pub handshake: Duration,
    pub duration: Duration,
    pub to_backend: Flow,
    pub to_client: Flow,
    /// Who ended it and why: `client_closed`, `backend_closed`, `idle_timeout`,
    /// `ping_timeout`, `drain`, `shutdown`, `message_too_big`, `client_protocol_error`,
    /// `backend_protocol_error`, `io_error`, `backend_timeout`, or a refusal's reason (`no_route`,
    /// `no_backend`, `backend_refused`, `over_capacity`, ...).
    pub termination: &'static str,
}

pub struct AccessLog {
    tx: SyncSender<(SystemTime, Record)>,
    pub dropped: AtomicU64,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn start(target: Target) -> std::io::Result<Arc<AccessLog>> {
        let out = open(&target.path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let r = reopen.clone();
        std::thread::Builder::new().name("sy-access-log".into()).spawn(move || write_loop(rx, out, target, r))?;
        Ok(Arc::new(AccessLog { tx, dropped: AtomicU64::new(0), reopen }))
    }

    /// Queues a record; never waits.
    pub fn log(&self, r: Record) {
        match self.tx.try_send((SystemTime::now(), r)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// The file is reopened before the next line (after a rotation moved it away).
    pub fn reopen(&self) {
        self.reopen.store(true, Relaxed);
    }
}

fn open(path: &PathBuf) -> std::io::Result<Box<dyn Write + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Box::new(f))
}

fn write_loop(rx: Receiver<(SystemTime, Record)>, out: Box<dyn Write + Send>, target: Target, reopen: Arc<AtomicBool>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    loop {
        // Block for the next record; flush whenever the queue runs dry, so lines show up
        // promptly when traffic is light and in big writes when it is heavy.
        let (at, r) = match rx.try_recv() {
            Ok(x) => x,
            Err(_) => {
                let _ = out.flush();
                match rx.recv() {
                    Ok(x) => x,
                    Err(_) => return,
                }
            }
        };
        if reopen.swap(false, Relaxed) {
            let _ = out.flush();
            match open(&target.path) {
                Ok(f) => out = std::io::BufWriter::with_capacity(64 * 1024, f),
                Err(e) => tracing::error!("access log: cannot reopen {}: {e}", target.path.display()),
            }
        }
        line.clear();
        match target.format {
            Format::Json => json(&mut line, at, &r),
            Format::Logfmt => logfmt(&mut line, at, &r),
        }
        line.push('\n');
        if let Err(e) = out.write_all(line.as_bytes()) {
            tracing::error!("access log: {e}");
        }
    }
}

/// RFC 3339 in UTC with milliseconds, without a date library: days to a civil date.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-from-civil, inverted.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The fields of a record in order, as (name, value) with values already strings or numbers.
enum V<'a> {
    S(&'a str),
    N(u64),
    F(f64),
}

fn fields<'a>(r: &'a Record, time: &'a str, client: &'a str) -> Vec<(&'static str, Option<V<'a>>)> {
    let code = |c: Option<u16>| c.map(|c| V::N(c.into()));
    vec![
        ("time", Some(V::S(time))),
        ("client", Some(V::S(client))),
        ("status", Some(V::N(r.status.into()))),
        ("termination", Some(V::S(r.termination))),
        ("host", r.host.as_deref().map(V::S)),
        ("method", r.method.as_deref().map(V::S)),
        ("path", r.path.as_deref().map(V::S)),
        ("route", r.route.as_deref().map(V::S)),
        ("pool", r.pool.as_deref().map(V::S)),
        ("backend", r.backend.as_deref().map(V::S)),
        ("session", r.session.as_deref().map(V::S)),
        ("tls", r.tls.as_ref().map(|(v, _)| V::S(v))),
        ("sni", r.tls.as_ref().and_then(|(_, s)| s.as_deref()).map(V::S)),
        ("handshake_ms", Some(V::F(r.handshake.as_secs_f64() * 1e3))),
        ("duration_ms", Some(V::F(r.duration.as_secs_f64() * 1e3))),
        ("bytes_in", Some(V::N(r.to_backend.bytes))),
        ("bytes_out", Some(V::N(r.to_client.bytes))),
        ("messages_in", Some(V::N(r.to_backend.messages))),
        ("messages_out", Some(V::N(r.to_client.messages))),
        ("close_client", code(r.to_backend.peer_close)),
        ("close_backend", code(r.to_client.peer_close)),
        ("close_proxy_to_client", code(r.to_client.proxy_close)),
        ("close_proxy_to_backend", code(r.to_backend.proxy_close)),
    ]
}

fn json(out: &mut String, at: SystemTime, r: &Record) {
    out.push('{');
    write_fields(
        out,
        at,
        r,
        ",",
        |out, k| {
            let _ = write!(out, "\"{k}\":");
        },
        |_| false,
    );
    out.push('}');
}

fn logfmt(out: &mut String, at: SystemTime, r: &Record) {
    write_fields(
        out,
        at,
        r,
        " ",
        |out, k| {
            let _ = write!(out, "{k}=");
        },
        |s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'='),
    );
}

/// The fields that are set, each as `key` then its value, `sep` between them; a string goes
/// bare when `bare` says it may, else quoted (see [`quoted`]).
fn write_fields(
    out: &mut String,
    at: SystemTime,
    r: &Record,
    sep: &str,
    key: impl Fn(&mut String, &str),
    bare: impl Fn(&str) -> bool,
) {
    let (time, client) = (rfc3339(at), r.client.map(|c| c.to_string()).unwrap_or_default());
    let mut first = true;
    for (k, v) in fields(r, &time, &client) {
        let Some(v) = v else { continue };
        if !first {
            out.push_str(sep);
        }
        first = false;
        key(out, k);
        let _ = match v {
            V::S(s) if bare(s) => write!(out, "{s}"),
            V::S(s) => {
                quoted(out, s);
                Ok(())
            }
            V::N(n) => write!(out, "{n}"),
            V::F(f) => write!(out, "{f:.3}"),
        };
    }
}

/// `s` as a JSON string, with every character escaped that could act on an operator's
/// terminal or log viewer, not only those JSON requires: a request path may hold any UTF-8,
/// so C1 controls (U+009B is a terminal's CSI), Unicode line and paragraph separators (a
/// new line to many log tools) and bidirectional overrides (a line that reads other than it
/// is) would otherwise reach them raw.
fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_could_act_on_a_terminal_or_split_a_line_is_escaped() {
        let raw = "/a\u{9b}2J\u{1b}[0m\u{85}b\u{2028}c\u{202e}d\u{7f}\n\"\\é✓";
        let mut s = String::new();
        quoted(&mut s, raw);
        assert_eq!(s, r#""/a\u009b2J\u001b[0m\u0085b\u2028c\u202ed\u007f\n\"\\é✓""#);
        assert!(s.chars().all(|c| !c.is_control() && !('\u{2028}'..='\u{2069}').contains(&c)));
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), raw, "still JSON, and reads back as it was");
    }

    fn record() -> Record {
        Record {
            client: Some("192.0.2.7:5000".parse().unwrap()),
            host: Some("chat.example".into()),
            path: Some("/a \"b\"".into()),
            pool: Some("chat".into()),
            status: 101,
            termination: "client_closed",
            to_backend: Flow { bytes: 10, messages: 2, peer_close: Some(1000), proxy_close: None },
            ..Default::default()
        }
    }

    #[test]
    fn json_lines_parse_back_with_every_field_set() {
        let mut s = String::new();
        json(&mut s, SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_115_200_123), &record());
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["time"], "2025-11-26T00:00:00.123Z");
        assert_eq!(v["path"], "/a \"b\"");
        assert_eq!(
            (v["status"].as_u64(), v["messages_in"].as_u64(), v["close_client"].as_u64()),
            (Some(101), Some(2), Some(1000))
        );
        assert!(v.get("backend").is_none(), "fields not known are left out");
    }

    #[test]
    fn logfmt_quotes_what_needs_it() {
        let mut s = String::new();
        logfmt(&mut s, SystemTime::UNIX_EPOCH, &record());
        assert!(
            s.starts_with("time=1970-01-01T00:00:00.000Z client=192.0.2.7:5000 status=101 termination=client_closed"),
            "{s}"
        );
        assert!(s.contains(r#"path="/a \"b\"""#), "{s}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_799)), "2099-12-31T23:59:59.000Z");
    }
}
