//! audit-transfer: one pass of moving audit records from a source to a sink, then exit.

mod app;
mod atomic;
mod cli;
mod config;
mod db;
mod error;
mod failpoint;
mod logging;
mod pipeline;
mod sinks;
mod sources;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let command = cli.command.unwrap_or(cli::Command::Run);
    let exit = app::main(command, cli.dry_run);
    ExitCode::from(exit.code())
}
