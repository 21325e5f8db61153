//! `switchyard settings`: get, and set only the options given.

use anyhow::{bail, Result};
use switchyard_proto::v1::{ReadRequest, Settings, UpdateSettingsRequest};

use super::ctx::Ctx;
use crate::args::{SettingsCmd, SettingsOpts};

pub(super) async fn run(ctx: &mut Ctx, c: SettingsCmd) -> Result<()> {
    match c {
        SettingsCmd::Get => {
            let req = ReadRequest { consistency: ctx.consistency };
            let s = ctx.query(req, |mut c, r| async move { c.get_settings(r).await }).await?;
            ctx.out.settings(&s);
        }
        SettingsCmd::Set(opts) => {
            let (settings, update_mask) = apply_settings_opts(&opts);
            if update_mask.is_empty() {
                bail!("settings set: give at least one option to change (see --help)");
            }
            let req = UpdateSettingsRequest { settings: Some(settings), update_mask };
            let r = ctx.admin(req, |mut c, r| async move { c.update_settings(r).await }).await?;
            ctx.out.settings(&r.settings.unwrap_or_default());
        }
    }
    Ok(())
}

/// The settings to send and the update mask naming the fields the options set.
fn apply_settings_opts(o: &SettingsOpts) -> (Settings, Vec<String>) {
    let mut s = Settings::default();
    let mut mask = Vec::new();
    let ms = super::millis;
    if let Some(d) = o.handshake_timeout {
        s.handshake_timeout_ms = ms(d);
        mask.push("handshake_timeout_ms");
    }
    if let Some(v) = o.max_header_bytes {
        s.max_header_bytes = v;
        mask.push("max_header_bytes");
    }
    if let Some(v) = o.max_message_bytes {
        s.max_message_bytes = v;
        mask.push("max_message_bytes");
    }
    if let Some(d) = o.idle_timeout {
        s.idle_timeout_ms = ms(d);
        mask.push("idle_timeout_ms");
    }
    if let Some(d) = o.ping_interval {
        s.ping_interval_ms = ms(d);
        mask.push("ping_interval_ms");
    }
    if let Some(v) = o.max_connections_per_ip_per_sec {
        s.max_connections_per_ip_per_sec = v;
        mask.push("max_connections_per_ip_per_sec");
    }
    if let Some(v) = o.max_handshakes_per_sec {
        s.max_handshakes_per_sec = v;
        mask.push("max_handshakes_per_sec");
    }
    (s, mask.into_iter().map(String::from).collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_the_options_given_are_in_the_mask() {
        assert!(apply_settings_opts(&SettingsOpts::default()).1.is_empty());
        let opts =
            SettingsOpts { idle_timeout: Some(Duration::ZERO), max_header_bytes: Some(9000), ..Default::default() };
        let (s, mask) = apply_settings_opts(&opts);
        assert_eq!(mask, ["max_header_bytes", "idle_timeout_ms"]);
        assert_eq!((s.idle_timeout_ms, s.max_header_bytes), (0, 9000));
    }
}
