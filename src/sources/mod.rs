//! Sources: where audit records come from. Each source hands the pipeline pages of records and
//! is told, per page, which records the sink acknowledged; only those it marks.
//!
//! To add a source: one file or folder here implementing [`Source`] and [`Configured`], with a
//! [`Kind`] that reads its settings, plus one line in [`KINDS`].

pub mod castai;
pub mod cato;
pub mod cdp;
pub mod django_auditlog;
pub mod s3;
pub mod single_column;

pub use crate::base::document::{Document, Record};
use crate::base::env::{one_of, Env};
use crate::base::exit::ConfigError;
use crate::base::sink::SinkTraits;
pub use crate::base::source::*;
use crate::config::Config;
use anyhow::Result;
use async_trait::async_trait;

/// One kind of source, as `AUDIT_LOGGER_TYPE` names it.
pub struct Kind {
    pub name: &'static str,
    /// Reads the kind's own settings from the environment; connects to nothing. `sink` is what
    /// the chosen kind of sink takes (default when none is configured: `monthly` needs none).
    pub configure: fn(&Env, &SinkTraits) -> Configure,
}

/// What reading a source's settings gives.
pub type Configure = std::result::Result<Box<dyn Configured>, ConfigError>;

/// A source whose settings are read and valid, not yet connected.
#[async_trait]
pub trait Configured: Send + Sync + std::fmt::Debug {
    /// A stable name of what this invocation reads, for metrics labels: the same whether or not
    /// the source could be reached.
    fn label(&self) -> String;
    /// What the run must know about the source before it connects.
    fn traits(&self) -> SourceTraits {
        SourceTraits::default()
    }
    /// Connects (one connection or client per worker).
    async fn connect(&self, run: &Config) -> Result<Box<dyn Source>>;
}

/// The one place where sources are registered: one line each.
pub const KINDS: &[Kind] = &[
    single_column::KIND,
    django_auditlog::KIND,
    castai::KIND,
    cato::KIND,
    cdp::KIND,
    s3::KIND,
];

/// The source `AUDIT_LOGGER_TYPE` names (default `SINGLE_COLUMN_JSON`), configured.
pub fn configure(
    env: &Env,
    sink: &SinkTraits,
) -> std::result::Result<Box<dyn Configured>, ConfigError> {
    let name = env.get("AUDIT_LOGGER_TYPE").unwrap_or(KINDS[0].name);
    let kind = KINDS.iter().find(|k| k.name == name).ok_or_else(|| {
        ConfigError(format!(
            "invalid AUDIT_LOGGER_TYPE {name:?}: expected {}",
            one_of(KINDS.iter().map(|k| k.name))
        ))
    })?;
    (kind.configure)(env, sink)
}
