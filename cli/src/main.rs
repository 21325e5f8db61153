//! `switchyard`: the admin CLI. Errors are one line on stderr and a non-zero exit.

/// `println!` for the CLI's results: a reader that went away (`switchyard backend list |
/// head -1`) ends the command quietly, where `println!` panics.
macro_rules! outln {
    () => { $crate::output::write_out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::write_out(format_args!("{}\n", format_args!($($t)*))) };
}

mod args;
mod client;
mod cmd;
mod local;
mod output;

use clap::Parser;

use args::{Cli, Command};

#[tokio::main]
async fn main() {
    switchyard_model::tls::install_provider();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // One line: clap's first line, without the usage block that follows it.
            let text = e.render().to_string();
            let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let first = first.join(" ");
            let first = first.trim_start_matches("error: ");
            output::error(format_args!("{first} (see 'switchyard --help')"));
            std::process::exit(2);
        }
    };
    let res = match cli.command {
        Command::Local(c) => local::run(c).await,
        Command::Remote(c) => {
            async {
                let tls = switchyard_model::tls::TlsFiles { ca: cli.tls_ca, cert: cli.tls_cert, key: cli.tls_key };
                let token = cmd::read_token(cli.token, cli.token_file.as_deref())?;
                let mut ctx = cmd::Ctx::connect(&cli.endpoints, cli.output, cli.local, &tls, token)?;
                cmd::run(&mut ctx, c).await
            }
            .await
        }
    };
    if let Err(e) = res {
        output::error(one_line(&e));
        std::process::exit(1);
    }
}

/// A gRPC status prints as its code and message; anything else as its chain, on one line.
fn one_line(e: &anyhow::Error) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        let code = match s.code() {
            tonic::Code::InvalidArgument => "invalid argument",
            tonic::Code::NotFound => "not found",
            tonic::Code::AlreadyExists => "already exists",
            tonic::Code::FailedPrecondition => "failed precondition",
            tonic::Code::ResourceExhausted => "resource exhausted",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::Unauthenticated => "not authenticated",
            tonic::Code::PermissionDenied => "permission denied",
            _ => "error",
        };
        return format!("{code}: {}", s.message().replace('\n', " "));
    }
    format!("{e:#}").replace('\n', " ")
}
