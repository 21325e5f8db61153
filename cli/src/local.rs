//! Commands that run in this process and need no control plane: `dev` and `demo-backend`.

pub mod certs;
mod demo;
mod dev;

use anyhow::Result;

use crate::args::{CertsCmd, LocalCmd};

pub async fn run(cmd: LocalCmd) -> Result<()> {
    match cmd {
        LocalCmd::Dev(a) => dev::run(a).await,
        LocalCmd::DemoBackend(a) => demo::run(a).await,
        LocalCmd::Certs(CertsCmd::Init { dir }) => {
            certs::init(&dir)?;
            println!("wrote {} and {}", dir.join("ca.crt").display(), dir.join("ca.key").display());
            Ok(())
        }
        LocalCmd::Certs(CertsCmd::Issue { dir, role, name, sans }) => {
            let (crt, key) = certs::issue(&dir, role, &name, &sans)?;
            println!("wrote {} and {} ({role} {name:?})", crt.display(), key.display());
            Ok(())
        }
    }
}
