//! The `portcullis` command line: parse arguments, load the config, hand over. No logic here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc (the default feature `mimalloc`): under load glibc's
/// malloc/free were a tenth of the CPU profile and its arena locks met between worker threads
/// freeing each other's memory; mimalloc frees across threads without a lock. Built with
/// `no_thp`, so that its arenas are not backed by transparent huge pages, which held 20 MiB
/// more (docs/PERFORMANCE.md, optimisation 12).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
    /// Apply pending migrations to the configured store, then exit.
    Migrate {
        #[arg(long, default_value = "conf/portcullis.toml")]
        config: PathBuf,
    },
    /// Zero-setup demo: gateway, admin, echo upstream and an embedded store under ./data/.
    Demo,
    /// Own users in the configured store.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Set the roles of the user with EMAIL (no ROLE clears them). Tokens minted from then on
    /// carry them as the `roles` claim; tokens already out keep theirs until they expire.
    Roles {
        email: String,
        roles: Vec<String>,
        #[arg(long, default_value = "conf/portcullis.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match config::load(&config, &ProcessEnv)
            .and_then(|c| portcullis::assemble(&c).map(drop))
        {
            Ok(()) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(problems) => report(&problems),
        },
        Command::Serve { config } => match config::load(&config, &ProcessEnv) {
            Ok(c) => {
                let _logs = portcullis::ops::logging::init(c.log_format);
                serve(&c, Some(&config))
            }
            Err(problems) => report(&problems),
        },
        Command::Migrate { config } => {
            let _logs = portcullis::ops::logging::init(None);
            let (_, opened) = match open_store(&config) {
                Ok(o) => o,
                Err(code) => return code,
            };
            match portcullis::migrate_now(&opened, Duration::from_secs(60)) {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => report(&[format!("migrate: {e}")]),
            }
        }
        Command::Users {
            command:
                UsersCommand::Roles {
                    email,
                    roles,
                    config,
                },
        } => {
            let _logs = portcullis::ops::logging::init(None);
            let (loaded, opened) = match open_store(&config) {
                Ok(o) => o,
                Err(code) => return code,
            };
            match portcullis::set_roles_now(
                &opened,
                loaded.store.auto_migrate,
                &email,
                &roles,
                Duration::from_secs(60),
            ) {
                Ok(user) if user.roles.is_empty() => {
                    println!("{}: no roles", user.email);
                    ExitCode::SUCCESS
                }
                Ok(user) => {
                    println!("{}: {}", user.email, user.roles.join(" "));
                    ExitCode::SUCCESS
                }
                Err(e) => report(&[format!("users roles: {e}")]),
            }
        }
        Command::Demo => {
            let echo = portcullis::demo::echo::spawn();
            match portcullis::demo::config(echo) {
                Ok(c) => {
                    let _logs = portcullis::ops::logging::init(c.log_format);
                    println!("{}", portcullis::demo::banner(echo));
                    serve(&c, None)
                }
                Err(problems) => report(&problems),
            }
        }
    }
}

fn serve(config: &config::Config, path: Option<&std::path::Path>) -> ExitCode {
    match portcullis::build(config, path) {
        Ok(server) => {
            portcullis::run(server);
            ExitCode::SUCCESS
        }
        Err(problems) => report(&problems),
    }
}

/// The config at `path` and its store, opened (not yet connected); or the problems, reported.
fn open_store(
    path: &std::path::Path,
) -> Result<(config::Config, portcullis::accounts::store::Opened), ExitCode> {
    let loaded = config::load(path, &ProcessEnv).map_err(|problems| report(&problems))?;
    let opened = portcullis::accounts::store::open(&loaded.store.url).map_err(|e| report(&[e]))?;
    Ok((loaded, opened))
}

fn report(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("error: {p}");
    }
    ExitCode::FAILURE
}
