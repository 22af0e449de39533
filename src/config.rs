//! Configuration from environment variables.
//!
//! Variable names and defaults are those of City of Helsinki's structured-log-transfer, so an
//! existing deployment works unchanged; new variables are additive. Every invalid value is a
//! one-line [`ConfigError`] naming the variable and what it accepts.

use crate::base::env::Env;
use crate::base::exit::ConfigError;

type Result<T> = std::result::Result<T, ConfigError>;

/// What every run uses, whatever its source and sink: the budget, paging, attempts, purging,
/// and routing. Each source and sink reads its own settings in its own module.
#[derive(Debug, Clone)]
pub struct Config {
    pub enable_send: bool,
    pub batch_size: usize,
    pub chunk_size: usize,
    /// Pages in flight at once (workers), for sources that allow it.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub clear_entries: bool,
    pub clear_days: u32,
    /// Warnings found while reading (e.g. BATCH_SIZE and BATCH_LIMIT disagree), logged at start.
    pub warnings: Vec<String>,
    /// Topics, routing keys and which of them this run ships; set once source and sink are
    /// configured (their defaults and needs shape it).
    pub routing: crate::routing::Routing,
    /// The sink stores each named unit of the source as one file (OUTPUT_LAYOUT=cdp-archive):
    /// the source ships units whole.
    pub units_as_files: bool,
}

impl Config {
    pub fn from_env(raw: &Env) -> Result<Self> {
        let mut warnings = Vec::new();
        // BATCH_SIZE is the README's name, BATCH_LIMIT what the original's code read.
        let batch_size = raw.positive("BATCH_SIZE")?;
        let batch_limit = raw.positive("BATCH_LIMIT")?;
        let batch_size = match (batch_size, batch_limit) {
            (Some(s), Some(l)) => {
                if s != l {
                    warnings.push(format!(
                        "BATCH_SIZE={s} and BATCH_LIMIT={l} differ; using BATCH_SIZE"
                    ));
                }
                s
            }
            (Some(s), None) => s,
            (None, Some(l)) => l,
            (None, None) => 5000,
        };
        let chunk_size = raw.positive("CHUNK_SIZE")?.unwrap_or(500);
        let concurrency = raw.positive("SINK_CONCURRENCY")?.unwrap_or(2);
        if concurrency > 16 {
            return Err(ConfigError(format!(
                "invalid SINK_CONCURRENCY {concurrency}: expected 1 to 16 pages in flight"
            )));
        }
        let max_attempts = raw
            .number("MAX_ATTEMPTS", 1..=u32::MAX, "a positive whole number")?
            .unwrap_or(5);
        let clear_days = raw
            .number(
                "CLEAR_AUDIT_LOG_DAYS",
                0..=u32::MAX,
                "a whole number of days (0 or more)",
            )?
            .unwrap_or(30);
        Ok(Config {
            enable_send: raw.boolean("ENABLE_SEND_AUDIT_LOG")?.unwrap_or(true),
            batch_size,
            chunk_size,
            concurrency,
            max_attempts,
            clear_entries: raw.boolean("CLEAR_AUDIT_LOG_ENTRIES")?.unwrap_or(true),
            clear_days,
            warnings,
            routing: crate::routing::Routing::default(),
            units_as_files: false,
        })
    }
}
