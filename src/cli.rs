//! Command-line interface. Configuration itself comes from the environment (see `config`).

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  everything selected was delivered and marked, nothing to do, or sending disabled
  1  the run failed: source or sink unreachable after retries, authentication refused
  2  configuration or usage error (the message names the variable)
  3  partial: the run finished, but some records were rejected or are parked as failed

Configuration is read from environment variables; .env.example lists every one.";

#[derive(Debug, Parser)]
#[command(
    name = "audit-transfer",
    version,
    about = "Moves audit logs from a database or audit API to Elasticsearch/OpenSearch or JSON-lines files, one pass per invocation.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With `run`: list what the run would take (CDP archive batches and their event counts)
    /// on stdout; ship nothing, mark nothing, start no batching task.
    #[arg(long, global = true)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Transfer one batch (at most BATCH_SIZE records, CHUNK_SIZE per page) and exit. The default.
    #[command(after_help = EXIT_CODES)]
    Run,
    /// Delete entries that were sent and are older than CLEAR_AUDIT_LOG_DAYS (if CLEAR_AUDIT_LOG_ENTRIES).
    #[command(after_help = EXIT_CODES)]
    Monthly,
    /// Validate the configuration and connect to source and sink without moving anything.
    #[command(after_help = EXIT_CODES)]
    Check,
    /// Make rows parked after MAX_ATTEMPTS failed deliveries eligible again for the next run.
    #[command(name = "retry-failed", after_help = EXIT_CODES)]
    RetryFailed,
}
