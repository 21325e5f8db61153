//! Commands that run in this process and need no control plane: `dev` and `demo-backend`.

mod demo;
mod dev;

use anyhow::Result;

use crate::args::LocalCmd;

pub async fn run(cmd: LocalCmd) -> Result<()> {
    match cmd {
        LocalCmd::Dev(a) => dev::run(a).await,
        LocalCmd::DemoBackend(a) => demo::run(a).await,
    }
}
