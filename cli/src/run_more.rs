//! Sessions, settings, proxies and the live watch.

use anyhow::Result;
use futures::StreamExt;
use serde_json::json;
use switchyard_proto::v1::*;

use crate::args::*;
use crate::client::Client;
use crate::output::{self as out, Format};
use crate::run::Ctx;

pub async fn session(ctx: &mut Ctx, s: SessionCmd) -> Result<()> {
    let consistency = ctx.consistency;
    match s {
        SessionCmd::List { pool, limit } => {
            let pool = pool.unwrap_or_default();
            let r = ctx
                .client
                .call(|c| {
                    let req = ListSessionsRequest { consistency, pool: pool.clone(), limit };
                    async move { Client::query(c).list_sessions(req).await }
                })
                .await?
                .into_inner();
            match ctx.format {
                Format::Json => out::print_json(&json!(r.sessions.iter().map(out::session_json).collect::<Vec<_>>())),
                Format::Table => {
                    let rows: Vec<Vec<String>> = r
                        .sessions
                        .iter()
                        .map(|s| {
                            vec![
                                s.pool.clone(),
                                s.key.clone(),
                                s.backend.clone(),
                                s.last_seen_ms.to_string(),
                                s.ttl_ms.to_string(),
                            ]
                        })
                        .collect();
                    out::table(&["POOL", "KEY", "BACKEND", "LAST SEEN (ms)", "TTL (ms)"], &rows);
                }
            }
        }
        SessionCmd::Get { pool, key } => {
            let s = ctx
                .client
                .call(|c| {
                    let req = GetSessionRequest { consistency, pool: pool.clone(), key: key.clone() };
                    async move { Client::query(c).get_session(req).await }
                })
                .await?
                .into_inner();
            match ctx.format {
                Format::Json => out::print_json(&out::session_json(&s)),
                Format::Table => out::table(&["POOL", "KEY", "BACKEND"], &[vec![s.pool, s.key, s.backend]]),
            }
        }
        SessionCmd::Delete { pool, key } => {
            let r = ctx
                .client
                .call(|c| {
                    let req = DeleteSessionRequest { pool: pool.clone(), key: key.clone() };
                    async move { Client::admin(c).delete_session(req).await }
                })
                .await?
                .into_inner();
            match ctx.format {
                Format::Json => out::print_json(&json!({"revision": r.revision})),
                Format::Table => println!("session {key} deleted (revision {})", r.revision),
            }
        }
    }
    Ok(())
}

fn print_settings(ctx: &Ctx, s: &Settings) {
    let v = out::settings_json(s);
    match ctx.format {
        Format::Json => out::print_json(&v),
        Format::Table => {
            let rows: Vec<Vec<String>> = v
                .as_object()
                .expect("settings are an object")
                .iter()
                .map(|(k, v)| vec![k.clone(), v.to_string()])
                .collect();
            out::table(&["SETTING", "VALUE"], &rows);
        }
    }
}

pub async fn settings(ctx: &mut Ctx, s: SettingsCmd) -> Result<()> {
    let consistency = ctx.consistency;
    match s {
        SettingsCmd::Get => {
            let s = ctx
                .client
                .call(|c| async move { Client::query(c).get_settings(ReadRequest { consistency }).await })
                .await?
                .into_inner();
            print_settings(ctx, &s);
        }
        SettingsCmd::Set {
            handshake_timeout,
            max_header_bytes,
            max_message_bytes,
            idle_timeout,
            ping_interval,
            max_connections_per_ip_per_sec,
            max_handshakes_per_sec,
        } => {
            let mut s = Settings::default();
            let mut mask = Vec::new();
            let ms = |d: std::time::Duration| d.as_millis() as u64;
            if let Some(d) = handshake_timeout {
                s.handshake_timeout_ms = ms(d);
                mask.push("handshake_timeout_ms");
            }
            if let Some(v) = max_header_bytes {
                s.max_header_bytes = v;
                mask.push("max_header_bytes");
            }
            if let Some(v) = max_message_bytes {
                s.max_message_bytes = v;
                mask.push("max_message_bytes");
            }
            if let Some(d) = idle_timeout {
                s.idle_timeout_ms = ms(d);
                mask.push("idle_timeout_ms");
            }
            if let Some(d) = ping_interval {
                s.ping_interval_ms = ms(d);
                mask.push("ping_interval_ms");
            }
            if let Some(v) = max_connections_per_ip_per_sec {
                s.max_connections_per_ip_per_sec = v;
                mask.push("max_connections_per_ip_per_sec");
            }
            if let Some(v) = max_handshakes_per_sec {
                s.max_handshakes_per_sec = v;
                mask.push("max_handshakes_per_sec");
            }
            if mask.is_empty() {
                anyhow::bail!("settings set: give at least one option to change (see --help)");
            }
            let mask: Vec<String> = mask.into_iter().map(String::from).collect();
            let r = ctx
                .client
                .call(|c| {
                    let req = UpdateSettingsRequest { settings: Some(s), update_mask: mask.clone() };
                    async move { Client::admin(c).update_settings(req).await }
                })
                .await?
                .into_inner();
            print_settings(ctx, &r.settings.unwrap_or_default());
        }
    }
    Ok(())
}

pub async fn proxies(ctx: &mut Ctx) -> Result<()> {
    let consistency = ctx.consistency;
    let r = ctx
        .client
        .call(|c| async move { Client::query(c).list_proxies(ReadRequest { consistency }).await })
        .await?
        .into_inner();
    match ctx.format {
        Format::Json => out::print_json(&json!(r
            .proxies
            .iter()
            .map(|p| json!({"proxy_id": p.proxy_id, "applied_revision": p.applied_revision, "rejected_reason": p.rejected_reason, "last_report_ms": p.last_report_ms, "connections": p.connections, "node": p.node}))
            .collect::<Vec<_>>())),
        Format::Table => {
            let rows: Vec<Vec<String>> = r
                .proxies
                .iter()
                .map(|p| vec![p.proxy_id.clone(), p.applied_revision.to_string(), p.connections.to_string(), p.node.clone(), p.rejected_reason.clone()])
                .collect();
            out::table(&["PROXY", "REVISION", "CONNECTIONS", "REPORTS TO", "REJECTED"], &rows);
        }
    }
    Ok(())
}

/// Follows the change stream; on a cut stream, resumes from the last revision on the next
/// endpoint, so nothing is missed or printed twice.
pub async fn watch(ctx: &mut Ctx, from: u64) -> Result<()> {
    let mut last = from;
    loop {
        let stream = ctx
            .client
            .call(|c| async move {
                Client::discovery(c).watch(WatchRequest { proxy_id: String::new(), from_revision: last }).await
            })
            .await?;
        let mut stream = stream.into_inner();
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { break };
            last = ev.revision;
            match (&ev.kind, ctx.format) {
                (Some(watch_event::Kind::Snapshot(t)), Format::Json) => println!(
                    "{}",
                    json!({"revision": ev.revision, "snapshot": {"pools": t.pools.len(), "backends": t.backends.len(), "routes": t.routes.len(), "sessions": t.sessions.len()}})
                ),
                (Some(watch_event::Kind::Snapshot(t)), Format::Table) => println!(
                    "{:>8}  state: {} pools, {} backends, {} routes, {} sessions",
                    ev.revision,
                    t.pools.len(),
                    t.backends.len(),
                    t.routes.len(),
                    t.sessions.len()
                ),
                (Some(watch_event::Kind::Changes(cs)), Format::Json) => println!(
                    "{}",
                    json!({"revision": ev.revision, "changes": cs.changes.iter().map(out::change_json).collect::<Vec<_>>()})
                ),
                (Some(watch_event::Kind::Changes(cs)), Format::Table) => {
                    for c in &cs.changes {
                        println!("{:>8}  {}", ev.revision, out::change_json(c));
                    }
                }
                (None, _) => {}
            }
        }
        eprintln!("switchyard: watch stream ended at revision {last}; resuming");
    }
}
