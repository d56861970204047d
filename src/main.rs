//! The `sluice` binary: parses the command line, loads the config, and hands over to
//! [`sluice::app`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::Config;

const DEFAULT_CONFIG: &str = "config/sluice.toml";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Job-orchestration server for LLM workloads"
)]
struct Cli {
    /// Config file (default: config/sluice.toml; missing is fine when not named explicitly).
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the worker pool (the default).
    Serve {
        /// Validate the configuration and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Dead letters (failed and timed-out runs): list, export or requeue them, as JSON
    /// lines, straight from the database.
    Dlq {
        #[command(subcommand)]
        command: sluice::operator::DlqCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = sluice::telemetry::init() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let explicit = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = match Config::load(&path, explicit, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve {
        check_config: false,
    });
    if let Command::Serve { check_config: true } = command {
        if let Err(e) = sluice::providers::Providers::from_config(&config) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        println!(
            "config OK: {} provider(s), {}, storage {}",
            config.providers.len(),
            match config.tenants.len() {
                0 => "open mode (no tenants)".to_string(),
                n => format!("{n} tenant(s)"),
            },
            if config.database.url.is_some() {
                "postgres".to_string()
            } else {
                format!("sqlite ({})", config.database.sqlite_path.display())
            }
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Migrate => {
                let store = sluice::app::open_store(&config).await?;
                println!("migrations applied ({})", store.backend());
                store.close().await;
                Ok(())
            }
            Command::Dlq { command } => {
                sluice::operator::dlq(&config, command, &mut std::io::stdout().lock()).await
            }
            Command::Serve { .. } => {
                let clock = std::sync::Arc::new(sluice::clock::SystemClock);
                sluice::app::serve(config, clock, sluice::app::shutdown_signal(), |_| {}).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
