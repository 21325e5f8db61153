//! Remote commands, one file per noun. This file only dispatches; the context they share and
//! the one way to call the control plane live in `cmd/ctx.rs`.

mod audit;
mod backend;
mod cluster;
mod ctx;
mod pool;
mod proxy;
mod route;
mod session;
mod settings;
mod snapshot;
mod token;
mod watch;

/// Milliseconds, saturating: a duration past u64 milliseconds is sent as the largest, which
/// the server refuses as out of range, instead of wrapping to a small one.
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

use anyhow::Result;

use crate::args::RemoteCmd;
pub use ctx::{read_token, Ctx};

pub async fn run(ctx: &mut Ctx, cmd: RemoteCmd) -> Result<()> {
    match cmd {
        RemoteCmd::Cluster(c) => cluster::run(ctx, c).await,
        RemoteCmd::Pool(c) => pool::run(ctx, c).await,
        RemoteCmd::Backend(c) => backend::run(ctx, c).await,
        RemoteCmd::Route(c) => route::run(ctx, c).await,
        RemoteCmd::Session(c) => session::run(ctx, c).await,
        RemoteCmd::Settings(c) => settings::run(ctx, c).await,
        RemoteCmd::Proxy(c) => proxy::run(ctx, c).await,
        RemoteCmd::Watch { from } => watch::run(ctx, from).await,
        RemoteCmd::Token(c) => token::run(ctx, c).await,
        RemoteCmd::Snapshot(c) => snapshot::run(ctx, c).await,
        RemoteCmd::Audit { since } => audit::run(ctx, since).await,
    }
}
