//! The `portcullis` command line: parse arguments, load the config, hand over. No logic here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::config::{self, ProcessEnv};

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Edge auth gateway on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "conf/portcullis.toml")]
        config: PathBuf,
    },
    /// Validate the config, its key files and secrets; one line per problem.
    CheckConfig {
        #[arg(long, default_value = "conf/portcullis.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match config::load(&config, &ProcessEnv) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(problems) => report(&problems),
        },
        Command::Serve { config } => {
            init_logging();
            let loaded = match config::load(&config, &ProcessEnv) {
                Ok(c) => c,
                Err(problems) => return report(&problems),
            };
            match portcullis::build(loaded) {
                Ok(server) => {
                    portcullis::run(server);
                    ExitCode::SUCCESS
                }
                Err(e) => report(&[e]),
            }
        }
    }
}

fn report(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("error: {p}");
    }
    ExitCode::FAILURE
}

/// JSON lines on stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}
