//! The `eventd` command: `run` the daemon or `check-config` a file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eventd::config::{Config, EXIT_CONFIG};

#[derive(Parser)]
#[command(
    name = "eventd",
    version,
    about = "Kafka engagement-event daemon: consume, route to handlers, produce"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (TOML, YAML or JSON); EVENTD__SECTION__KEY variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file: print `ok`, or every error with its key (exit 78).
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(Some(&file)) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(error) => {
                for line in error.lines() {
                    println!("{line}");
                }
                ExitCode::from(EXIT_CONFIG as u8)
            }
        },
        Command::Run { config: path } => {
            let config = match Config::load(path.as_deref()) {
                Ok(config) => config,
                Err(error) => {
                    for line in error.lines() {
                        eprintln!("eventd: bad configuration: {line}");
                    }
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            eventd::logging::init(&config.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("eventd: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let code = runtime.block_on(eventd::daemon::run(config, path));
            // Exit without waiting for clients that may block on an unreachable broker.
            std::process::exit(code);
        }
    }
}
