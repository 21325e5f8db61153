//! `switchyard`: the admin CLI. Errors are one line on stderr and a non-zero exit.

mod args;
mod client;
mod demo;
mod dev;
mod output;
mod run;
mod run_more;

use clap::Parser;

use switchyard_proto::v1::Consistency;

#[tokio::main]
async fn main() {
    let cli = match args::Cli::try_parse() {
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
            eprintln!("switchyard: {first} (see 'switchyard --help')");
            std::process::exit(2);
        }
    };
    let res = match cli.command {
        args::Command::Dev(a) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn,openraft=error,switchyard_control=info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            dev::run(a).await
        }
        args::Command::DemoBackend { listen, name, no_greeting } => match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => {
                println!("demo backend {name} on ws://{listen}");
                demo::echo_server(l, name, !no_greeting).await;
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("cannot listen on {listen}: {e}")),
        },
        command => match client::Client::new(&cli.endpoints) {
            Ok(client) => {
                let consistency = if cli.local { Consistency::Local } else { Consistency::Linearizable } as i32;
                run::Ctx { client, format: cli.output, consistency }.run(command).await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = res {
        eprintln!("switchyard: {}", one_line(&e));
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
            tonic::Code::Unavailable => "unavailable",
            _ => "error",
        };
        return format!("{code}: {}", s.message().replace('\n', " "));
    }
    format!("{e:#}").replace('\n', " ")
}
