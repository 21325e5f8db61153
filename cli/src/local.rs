//! Commands that run in this process and need no control plane: `dev`, `demo-backend`,
//! `certs`, and the shell completions and man page generated from the CLI's own definition.

pub mod certs;
mod demo;
mod dev;

use anyhow::Result;

use clap::CommandFactory;

use crate::args::{CertsCmd, Cli, LocalCmd};

pub async fn run(cmd: LocalCmd) -> Result<()> {
    match cmd {
        LocalCmd::Dev(a) => dev::run(a).await,
        LocalCmd::DemoBackend(a) => demo::run(a).await,
        LocalCmd::Certs(CertsCmd::Init { dir }) => {
            certs::init(&dir)?;
            outln!("wrote {} and {}", dir.join("ca.crt").display(), dir.join("ca.key").display());
            Ok(())
        }
        LocalCmd::Certs(CertsCmd::Issue { dir, role, name, sans }) => {
            let (crt, key) = certs::issue(&dir, role, &name, &sans)?;
            outln!("wrote {} and {} ({role} {name:?})", crt.display(), key.display());
            Ok(())
        }
        // Made whole first: clap_complete panics when its writer fails (a closed pipe).
        LocalCmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "switchyard", &mut script);
            crate::output::write_bytes_out(&script);
            Ok(())
        }
        LocalCmd::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            crate::output::write_bytes_out(&page);
            Ok(())
        }
    }
}
