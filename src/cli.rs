//! Command-line interface. Configuration itself comes from the environment (see `config`).

use clap::{Parser, Subcommand};
use std::time::Duration;

/// `--version`: the crate version and the git revision it was built from (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("AUDIT_TRANSFER_GIT_REV"),
    ")"
);

const EXIT_CODES: &str = "\
Exit codes:
  0  everything selected was delivered and marked, nothing to do, or sending disabled
  1  the run failed: source or sink unreachable after retries, authentication refused
  2  configuration or usage error (the message names the variable)
  3  partial: the run finished, but some records were rejected or are parked as failed,
     files are missing from an S3 sequence, or a target of TARGETS still lacks records

Configuration is read from environment variables; .env.example lists every one.";

#[derive(Debug, Parser)]
#[command(
    name = "audit-transfer",
    version = VERSION,
    about = "Moves audit logs from a database, an audit API or a bucket to Elasticsearch/OpenSearch, Splunk, OpenTelemetry, Kafka or files, one pass per invocation.",
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

#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
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
    /// Print backlog, age of the oldest unsent record, parked records and the last runs (SQL
    /// sources: from their tables; CAST AI, Cato and S3: from their state file, backlog unknown).
    /// Exit 0 when healthy, 1 when not (parked records, last run failed, or an age limit
    /// exceeded) or when the state cannot be read, 2 on configuration errors.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Unhealthy when the oldest unsent record is older than this (e.g. 30m, 2h, 1d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        max_age: Option<Duration>,
        /// Unhealthy when no successful run ended within this time (e.g. 1h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        max_since_success: Option<Duration>,
    },
    /// Read back the documents of the records the source marked sent (SQL sources): from
    /// Elasticsearch/OpenSearch by id, from files and buckets by content; compare each with the
    /// document the record produces today. With --chain, walk the integrity chain there instead
    /// (SQL sources, CASTAI, CATO). Exit 0 when every one is there unchanged (the chain whole),
    /// 1 when any is missing, altered or unexpected (a link or checkpoint broken), 2 on
    /// configuration errors.
    Verify {
        /// Only records created at or after WHEN: a time (2024-05-01T10:00:00Z), a date
        /// (2024-05-01, midnight UTC) or an age (7d: seven days ago).
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only records created before WHEN (same forms as --since).
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Walk the integrity chain (INTEGRITY_CHAIN) in the destination instead: every link
        /// from the first to the source's head, and every checkpoint.
        #[arg(long, conflicts_with_all = ["since", "until"])]
        chain: bool,
        /// With --chain: the Ed25519 public key checkpoints must be signed with (base64, a PEM
        /// block, or a file holding either). Default: the public half of INTEGRITY_SIGNING_KEY.
        #[arg(long, value_name = "KEY", requires = "chain")]
        public_key: Option<String>,
    },
    /// Create the Elasticsearch/OpenSearch index with the audit mapping, if it does not exist
    /// (an index template instead when the index name has placeholders, e.g. {topic}).
    #[command(name = "init-index", after_help = EXIT_CODES)]
    InitIndex,
    /// Create the index the SQL sources read their queue by, if the table lacks it (PostgreSQL:
    /// CREATE INDEX CONCURRENTLY). `check` and every run name the statement when it is missing.
    #[command(name = "init-queue", after_help = EXIT_CODES)]
    InitQueue,
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: audit-transfer man > audit-transfer.1
    Man,
}

/// `90s`, `30m`, `2h`, `1d`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::base::env::duration(s.trim())
        .ok_or_else(|| format!("{s:?}: expected a duration such as 90s, 30m, 2h or 1d"))
}

/// A point in time: RFC 3339, a date (midnight UTC), or a duration before now.
fn parse_when(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    if let Some(ago) = crate::base::env::duration(s) {
        if let Ok(ago) = chrono::Duration::from_std(ago) {
            return Ok(chrono::Utc::now() - ago);
        }
    }
    Err(format!(
        "{s:?}: expected a time (2024-05-01T10:00:00Z), a date (2024-05-01) or an age (7d)"
    ))
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "audit-transfer", out);
}

/// Writes the man page to `out`.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd).render(out)
}
