//! `switchyard watch`: follows the change stream until interrupted.

use anyhow::Result;
use futures::StreamExt;
use switchyard_proto::v1::WatchRequest;

use super::ctx::Ctx;
use crate::output;

/// On a cut stream, resumes after the last revision printed (on whichever endpoint answers),
/// so nothing is missed or printed twice.
pub(super) async fn run(ctx: &mut Ctx, from: u64) -> Result<()> {
    let mut last = from;
    loop {
        let req = WatchRequest { proxy_id: String::new(), from_revision: last };
        let mut stream = ctx.discovery(req, |mut c, r| async move { c.watch(r).await }).await?;
        while let Some(Ok(ev)) = stream.next().await {
            last = ev.revision;
            ctx.out.watch_event(&ev);
        }
        output::error(format_args!("watch stream ended at revision {last}; resuming"));
    }
}
