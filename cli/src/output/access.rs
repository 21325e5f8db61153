//! Tokens and audit records, as tables and JSON.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use switchyard_proto::v1::{AuditRecord, CreateTokenReply, TokenInfo};

use super::{note, Format, Out};

/// A unix-ms time as RFC 3339 (UTC, seconds); 0 prints as `never` or `-`.
fn time(ms: u64, zero: &str) -> String {
    if ms == 0 {
        return zero.into();
    }
    // humantime fails (and `to_string` panics) from the year 10000 on: a node's clock or a
    // reply can say so.
    use std::fmt::Write;
    let mut out = String::new();
    match write!(out, "{}", humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms))) {
        Ok(()) => out,
        Err(_) => format!("{ms} ms after 1970"),
    }
}

fn token_json(t: &TokenInfo) -> serde_json::Value {
    json!({
        "id": t.id, "name": t.name, "role": t.role, "created_ms": t.created_ms,
        "expires_ms": if t.expires_ms == 0 { serde_json::Value::Null } else { json!(t.expires_ms) },
        "created_revision": t.created_revision,
    })
}

/// Writes what holds a new token's secret, and exits non-zero saying so when it cannot be
/// written (a closed pipe included, which other output ends quietly on): the token exists
/// now, and its secret is shown nowhere else.
fn secret_out(id: &str, text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|_| out.flush()) {
        super::error(format_args!(
            "token {id} was created but its secret could not be written ({e}); revoke it: switchyard token revoke {id}"
        ));
        std::process::exit(1);
    }
}

impl Out {
    /// The secret alone on stdout (so `T=$(switchyard token create ...)` works), what it is on
    /// stderr; or one JSON document with both.
    pub fn token_created(&self, r: &CreateTokenReply) {
        let t = r.token.clone().unwrap_or_default();
        match self.format {
            Format::Json => {
                let mut v = token_json(&t);
                v["secret"] = json!(r.secret);
                v["revision"] = json!(r.revision);
                secret_out(&t.id, &serde_json::to_string_pretty(&v).expect("json values print"));
            }
            Format::Table => {
                note(format_args!(
                    "token {} ({} role{}) expires {}; it is shown only now:",
                    t.id,
                    t.role,
                    if t.name.is_empty() { String::new() } else { format!(", name {}", t.name) },
                    time(t.expires_ms, "never")
                ));
                secret_out(&t.id, &r.secret);
            }
        }
    }

    pub fn tokens(&self, ts: &[TokenInfo]) {
        let rows = || {
            ts.iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.role.clone(),
                        time(t.created_ms, "-"),
                        time(t.expires_ms, "never"),
                    ]
                })
                .collect()
        };
        let json = || json!(ts.iter().map(token_json).collect::<Vec<_>>());
        self.emit(json, &["ID", "NAME", "ROLE", "CREATED", "EXPIRES"], rows);
    }

    pub fn audit(&self, rs: &[AuditRecord]) {
        let json = || {
            json!(rs
                .iter()
                .map(|r| json!({
                    "revision": r.revision, "at_ms": r.at_ms, "who": r.who, "role": r.role,
                    "method": r.method, "summary": r.summary,
                }))
                .collect::<Vec<_>>())
        };
        let rows = || {
            rs.iter()
                .map(|r| {
                    vec![
                        r.revision.to_string(),
                        time(r.at_ms, "-"),
                        r.who.clone(),
                        r.role.clone(),
                        r.method.clone(),
                        r.summary.clone(),
                    ]
                })
                .collect()
        };
        self.emit(json, &["REVISION", "TIME", "WHO", "ROLE", "METHOD", "WHAT"], rows);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_past_the_year_9999_print_as_milliseconds() {
        assert_eq!(super::time(0, "never"), "never");
        assert_eq!(super::time(1_000, "-"), "1970-01-01T00:00:01Z");
        assert_eq!(super::time(253_402_300_800_000, "-"), "253402300800000 ms after 1970");
        assert_eq!(super::time(u64::MAX, "-"), format!("{} ms after 1970", u64::MAX));
    }
}
