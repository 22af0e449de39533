//! audit-transfer: one pass of moving audit records from a source to a sink, then exit.

mod app;
mod base;
mod cli;
mod config;
mod db;
mod http;
mod integrity;
mod logging;
mod metrics;
mod pipeline;
mod progress;
mod registry;
mod routing;
mod sinks;
mod sources;
mod status;
mod verify;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let command = cli.command.unwrap_or(cli::Command::Run);
    // Generated from the command line alone: no configuration needed.
    match command {
        cli::Command::Completions { shell } => {
            cli::completions(shell, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        cli::Command::Man => {
            return match cli::man(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("audit-transfer: error: cannot write the man page: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    let exit = app::main(command, cli.dry_run);
    ExitCode::from(exit.code())
}
